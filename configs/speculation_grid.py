"""Config of experiments/speculation_grid.py (defaults live with the benchmark)."""

from experiments.benchmarks.speculation_grid import default_config


def get_config():
    return default_config()
