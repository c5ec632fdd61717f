"""Config of experiments/real_models.py (defaults live with the benchmark)."""

from experiments.benchmarks.real_models import default_config


def get_config():
    return default_config()
