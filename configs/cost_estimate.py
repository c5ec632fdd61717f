"""Config of experiments/cost_estimate.py (defaults live with the benchmark)."""

from experiments.benchmarks.cost_estimate import default_config


def get_config():
    return default_config()
