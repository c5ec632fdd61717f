"""Config of experiments/memory_plan.py (defaults live with the benchmark)."""

from experiments.benchmarks.memory_plan import default_config


def get_config():
    return default_config()
