"""Config of experiments/compile_cost.py (defaults live with the benchmark)."""

from experiments.benchmarks.compile_cost import default_config


def get_config():
    return default_config()
