"""Config of experiments/memory_upkeep.py (defaults live with the benchmark)."""

from experiments.benchmarks.memory_upkeep import default_config


def get_config():
    return default_config()
