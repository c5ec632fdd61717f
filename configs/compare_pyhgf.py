"""Config of experiments/compare_pyhgf.py (defaults live with the benchmark)."""

from experiments.benchmarks.hgf import default_config


def get_config():
    return default_config()
