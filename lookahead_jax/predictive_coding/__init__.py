"""Predictive coding: pyhgf-compatible Hierarchical Gaussian Filter networks as pure functions.

Two layers:

* :class:`Network`, a builder in pyhgf's vocabulary (``add_nodes``, ``input_data``,
  ``node_trajectories``), for switching from pyhgf in minutes;
* the pure core underneath: a static :class:`Structure`, :class:`Params` and
  :class:`Beliefs` pytrees, and :func:`filter`, one ``lax.scan`` over a series that
  callers ``jit``, ``vmap`` (subjects), ``grad`` and shard.

Parity mode reproduces pyhgf 0.3.2's trajectories (relative error <= 1e-6 in float64,
tested against stored pyhgf outputs); ``robust=True`` trades exact parity for never
producing NaN or inf.
"""

from lookahead_jax.predictive_coding.core import (
    Beliefs,
    Params,
    StepInfo,
    Trajectories,
    default_beliefs,
    default_params,
    filter,
)
from lookahead_jax.predictive_coding.data import load_data
from lookahead_jax.predictive_coding.fitting import (
    FitResult,
    fit,
    fit_subjects,
    free_parameters,
    map_loss,
)
from lookahead_jax.predictive_coding.network import Network, trajectories_by_node
from lookahead_jax.predictive_coding.plots import plot_trajectories
from lookahead_jax.predictive_coding.structure import (
    BINARY,
    CONTINUOUS,
    NODE_KINDS,
    VOLATILITY_UPDATES,
    Structure,
)
from lookahead_jax.predictive_coding.surprise import (
    binary_surprise,
    gaussian_surprise,
    input_surprise,
    total_gaussian_surprise,
    total_surprise,
)

__all__ = [
    "BINARY",
    "CONTINUOUS",
    "NODE_KINDS",
    "VOLATILITY_UPDATES",
    "Beliefs",
    "FitResult",
    "Network",
    "Params",
    "StepInfo",
    "Structure",
    "Trajectories",
    "binary_surprise",
    "default_beliefs",
    "default_params",
    "filter",
    "fit",
    "fit_subjects",
    "free_parameters",
    "gaussian_surprise",
    "input_surprise",
    "load_data",
    "map_loss",
    "plot_trajectories",
    "total_gaussian_surprise",
    "total_surprise",
    "trajectories_by_node",
]
