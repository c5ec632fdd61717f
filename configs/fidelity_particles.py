"""Config of experiments/fidelity_particles.py (defaults live with the benchmark).

Override any field, e.g. ``--config.num_problems=100 --config.prm_aucs='(0.9,)'``.
"""

from experiments.benchmarks.fidelity_particles import default_config


def get_config():
    return default_config()
