"""Config of experiments/lookahead_family.py (defaults live with the benchmark)."""

from experiments.benchmarks.lookahead_family import default_config


def get_config():
    return default_config()
