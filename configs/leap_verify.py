"""Config of experiments/leap_verify.py (defaults live with the benchmark).

Override any field, e.g. ``--config.seeds='(0,)' --config.num_steps=400``.
"""

from experiments.benchmarks.leap_verify import default_config


def get_config():
    return default_config()
