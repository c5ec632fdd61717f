"""Config of experiments/fidelity_token_recycling.py (defaults live with the benchmark).

Override any field, e.g. ``--config.repeats=9 --config.tree_sizes='(80,)'``.
"""

from experiments.benchmarks.fidelity_token_recycling import default_config


def get_config():
    return default_config()
