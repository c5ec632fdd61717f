"""Experiment scripts, benchmarks and peer comparisons: a source checkout only, not the wheel.

Each ``experiments/NAME.py`` reads ``configs/NAME.py`` (ml_collections) and runs as
``python experiments/NAME.py [--config.FIELD=VALUE ...]``; the benchmark code they share
lives in ``experiments/benchmarks/``. Tests import it as the ``experiments`` package
from the repository root.
"""
