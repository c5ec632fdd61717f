"""Surprise (negative log-likelihood) of observations under an HGF network's predictions.

All functions are elementwise or reduce with plain sums, so they can be
differentiated with respect to the parameters that produced the trajectories.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lookahead_jax.predictive_coding import core
from lookahead_jax.predictive_coding.structure import BINARY, Structure

_LOG_2PI = 1.8378770664093453  # log(2 pi)
BINARY_CLIP = 1e-6  # pyhgf clips binary predictions to [1e-6, 1 - 1e-6] before the log


def gaussian_surprise(x: jax.Array, expected_mean: jax.Array, expected_precision: jax.Array):
    """``-log N(x; mu^, 1/pi^) = (log 2 pi - log pi^ + pi^ (x - mu^)^2) / 2``, elementwise."""
    return 0.5 * (
        _LOG_2PI - jnp.log(expected_precision) + expected_precision * (x - expected_mean) ** 2
    )


def binary_surprise(x: jax.Array, expected_mean: jax.Array) -> jax.Array:
    """``-log p(x)`` of a 0/1 outcome ``x`` under ``P(x = 1) = mu^``, elementwise.

    ``mu^`` is clipped to ``[1e-6, 1 - 1e-6]`` first, as pyhgf does, so the surprise is finite.
    """
    p = jnp.clip(expected_mean, BINARY_CLIP, 1.0 - BINARY_CLIP)
    return jnp.where(x > 0.5, -jnp.log(p), -jnp.log1p(-p))


def input_surprise(
    structure: Structure, trajectories: core.Trajectories, observed: jax.Array | None = None
) -> jax.Array:
    """Per-step surprise of each input node's observation: ``[T, n_inputs]``.

    Gaussian for continuous inputs, binary for binary inputs (pyhgf's
    ``first_level_*_surprise``). ``observed`` ``[T, n_inputs]``, when given, zeroes the
    surprise of missing observations (with ``where``, so NaN inputs do not leak).
    """
    beliefs = trajectories.beliefs
    mask = None if observed is None else jnp.asarray(observed).astype(bool)
    columns = []
    for column, node in enumerate(structure.input_nodes):
        x, mu, pi = (
            beliefs.mean[..., node],
            beliefs.expected_mean[..., node],
            beliefs.expected_precision[..., node],
        )
        if mask is not None:
            # A missing value (NaN, say) must reach neither the sum nor its gradient.
            x = jnp.where(mask[..., column], x, mu)
        if structure.kinds[node] == BINARY:
            columns.append(binary_surprise(x, mu))
        else:
            columns.append(gaussian_surprise(x, mu, pi))
    surprise = jnp.stack(columns, axis=-1)
    if mask is not None:
        surprise = jnp.where(mask, surprise, 0.0)
    return surprise


def total_surprise(
    structure: Structure, trajectories: core.Trajectories, observed: jax.Array | None = None
) -> jax.Array:
    """Sum of :func:`input_surprise` over time and inputs (a scalar): the usual fitting loss."""
    return jnp.sum(input_surprise(structure, trajectories, observed))


def total_gaussian_surprise(structure: Structure, trajectories: core.Trajectories) -> jax.Array:
    """pyhgf's ``total_gaussian_surprise``: every continuous node's posterior mean under its
    prediction, summed over nodes and time (input nodes included). A scalar."""
    beliefs = trajectories.beliefs
    total = jnp.zeros((), beliefs.mean.dtype)
    for node, kind in enumerate(structure.kinds):
        if kind == BINARY:
            continue
        total = total + jnp.sum(
            gaussian_surprise(
                beliefs.mean[..., node],
                beliefs.expected_mean[..., node],
                beliefs.expected_precision[..., node],
            )
        )
    return total
