"""Config of experiments/decoding_strategies.py (defaults live with the benchmark)."""

from experiments.benchmarks.decoding_strategies import default_config


def get_config():
    return default_config()
