"""Config of experiments/isolated_round.py (defaults live with the benchmark)."""

from experiments.benchmarks.isolated_round import default_config


def get_config():
    return default_config()
