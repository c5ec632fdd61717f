"""Config of experiments/fidelity_strategies.py (defaults live with the benchmark).

Override any field, e.g. ``--config.num_prompts=32 --config.targets='("tiny-target",)'``.
"""

from experiments.benchmarks.fidelity_strategies import default_config


def get_config():
    return default_config()
