"""Trajectory plots with uncertainty bands (matplotlib), like pyhgf's ``plot_trajectories``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lookahead_jax.predictive_coding import core
from lookahead_jax.predictive_coding.structure import BINARY, Structure


def plot_trajectories(
    structure: Structure,
    trajectories: core.Trajectories,
    *,
    nodes: Sequence[int] | None = None,
    time: Any = None,
    band: float = 1.96,
    figsize: tuple[float, float] | None = None,
):
    """One panel per node, roots on top: the posterior mean with a band of
    ``+- band / sqrt(precision)`` (continuous nodes) and the observations (inputs).

    Args:
      structure: the network's structure.
      trajectories: from :func:`~.core.run` (fields ``[T, N]``) or
        ``Network.trajectories``.
      nodes: which nodes to draw (default: all, parents above children).
      time: ``[T]`` x-axis values (default: the cumulative time steps' index 0..T-1).
      band: half-width of the band in posterior standard deviations (1.96: 95%).
      figsize: passed to matplotlib (default scales with the number of panels).
    Returns:
      the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt  # imported here: plotting is optional

    beliefs = trajectories.beliefs
    mean = np.asarray(beliefs.mean)
    precision = np.asarray(beliefs.precision)
    expected_mean = np.asarray(beliefs.expected_mean)
    if mean.ndim != 2:
        raise ValueError(
            f"`trajectories` must hold one series, fields [T, N]; got shape {mean.shape} "
            "(index one subject of a batch first)."
        )
    nodes = list(structure.prediction_order if nodes is None else nodes)
    t = np.arange(mean.shape[0]) if time is None else np.asarray(time)
    figsize = figsize or (9.0, 1.9 * len(nodes) + 0.6)
    fig, axes = plt.subplots(len(nodes), 1, sharex=True, figsize=figsize, squeeze=False)
    inputs = set(structure.input_nodes)
    for ax, k in zip(axes[:, 0], nodes, strict=True):
        if k in inputs:
            label = "observation"
            if structure.kinds[k] == BINARY:
                ax.scatter(t, mean[:, k], s=6, color="k", label=label)
                ax.plot(t, expected_mean[:, k], color="C1", label="prediction")
            else:
                ax.scatter(t, mean[:, k], s=4, color="k", label=label)
                ax.plot(t, expected_mean[:, k], color="C1", lw=1, label="prediction")
            ax.set_ylabel(f"input {k}")
        else:
            sd = 1.0 / np.sqrt(np.maximum(precision[:, k], np.finfo(float).tiny))
            ax.plot(t, mean[:, k], color="C0", lw=1.2, label="posterior mean")
            ax.fill_between(
                t,
                mean[:, k] - band * sd,
                mean[:, k] + band * sd,
                color="C0",
                alpha=0.25,
                label=f"+-{band:g} sd",
            )
            ax.set_ylabel(f"node {k}")
        ax.legend(loc="upper right", fontsize="x-small", frameon=False)
    axes[-1, 0].set_xlabel("time step" if time is None else "time")
    fig.tight_layout()
    return fig
