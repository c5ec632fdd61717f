"""Config of experiments/hgf_floor.py (defaults live with the benchmark)."""

from experiments.benchmarks.hgf_floor import default_config


def get_config():
    return default_config()
