"""Config of experiments/fidelity_leap_verify.py (defaults live with the benchmark).

Override any field, e.g. ``--config.learning_rates='(5e-5, 1e-3)' --config.seeds='(0, 1)'``.
"""

from experiments.benchmarks.fidelity_leap_verify import default_config


def get_config():
    return default_config()
