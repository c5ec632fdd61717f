"""Config of experiments/inference_time_scaling.py (defaults live with the benchmark)."""

from experiments.benchmarks.inference_time_scaling import default_config


def get_config():
    return default_config()
