"""Config of experiments/verify_cost.py (defaults live with the benchmark)."""

from experiments.benchmarks.verify_cost import default_config


def get_config():
    return default_config()
