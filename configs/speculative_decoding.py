"""Config of experiments/speculative_decoding.py (defaults live with the benchmark)."""

from experiments.benchmarks.speculative import default_config


def get_config():
    return default_config()
