"""Predictive coding: pyhgf-compatible Hierarchical Gaussian Filter networks as pure functions.

Two layers:

* :class:`Network`, a builder in pyhgf's vocabulary (``add_nodes``, ``input_data``,
  ``node_trajectories``), for switching from pyhgf in minutes;
* the pure core underneath, in the library's contract: a static :class:`Structure`
  (the configuration), :class:`Params` and :class:`Beliefs` (the state) NamedTuples,
  ``init(structure) -> Beliefs``, ``step(key, state, params, observation, ...) ->
  (Beliefs, HGFInfo)`` over one observation and ``run(key, state, params, inputs, ...)``,
  one ``lax.scan`` over a series that callers ``jit``, ``vmap`` (subjects), ``grad`` and
  shard. :func:`filter_series` is ``run`` with the former ``filter`` signature
  (``filter`` is kept as an alias).

Parity mode reproduces pyhgf 0.3.2's trajectories (relative error <= 1e-6 in float64,
tested against stored pyhgf outputs); ``robust=True`` trades exact parity for never
producing NaN or inf.
"""

from lookahead_jax.predictive_coding.core import (
    Beliefs,
    HGFInfo,
    Params,
    StepInfo,
    Trajectories,
    check_values,
    default_beliefs,
    default_params,
    filter,
    filter_series,
    init,
    run,
    step,
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
    "HGFInfo",
    "Network",
    "Params",
    "StepInfo",
    "Structure",
    "Trajectories",
    "binary_surprise",
    "check_values",
    "default_beliefs",
    "default_params",
    "filter",
    "filter_series",
    "fit",
    "fit_subjects",
    "free_parameters",
    "gaussian_surprise",
    "init",
    "input_surprise",
    "load_data",
    "map_loss",
    "plot_trajectories",
    "run",
    "step",
    "total_gaussian_surprise",
    "total_surprise",
    "trajectories_by_node",
]
