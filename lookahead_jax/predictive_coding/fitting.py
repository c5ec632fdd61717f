"""Maximum a posteriori parameters by optax on surprise, for one subject or many at once.

A fit works on ``theta``, a dict of the *free* values only, e.g.
``{"tonic_volatility": [omega_1, omega_2]}``. :func:`free_parameters` builds
``theta`` and ``unpack(theta) -> (params, beliefs)`` from a network's pytrees; the
loss is the total input surprise plus a Gaussian prior on ``theta``. Precisions
are fitted on the log scale so they stay positive.

Everything is a pure function: ``fit`` is one ``lax.scan`` over optimiser steps,
and many subjects are ``jax.vmap(fit)``; subjects shard over devices by placing
the batched ``theta`` and inputs with :func:`lookahead_jax.sharding.shard` (see
:func:`fit_subjects`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lookahead_jax.predictive_coding import core, surprise
from lookahead_jax.predictive_coding.structure import Structure

# Fields fitted as log values (they must stay positive).
LOG_FIELDS = ("precision", "expected_precision")
_PARAM_FIELDS = core.Params._fields
_BELIEF_FIELDS = core.Beliefs._fields

Theta = dict[str, jax.Array]  # field -> [k] free values (log scale for LOG_FIELDS)
Unpack = Callable[[Theta], tuple[core.Params, core.Beliefs]]


class FitResult(NamedTuple):
    """Outcome of :func:`fit` (leading subject axis ``[S]`` under ``vmap``)."""

    theta: Theta  # field -> [k] fitted free values (log scale for LOG_FIELDS)
    losses: jax.Array  # [num_steps] loss before each optimiser step


def free_parameters(
    params: core.Params, beliefs: core.Beliefs, free: Mapping[str, Sequence[int]]
) -> tuple[Theta, Unpack]:
    """Selects the entries to fit; returns ``(theta0, unpack)``.

    Args:
      params, beliefs: the full pytrees (from :meth:`Network.compile`); entries not
        freed stay at these values.
      free: field name -> indices (nodes, or edges for the couplings), e.g.
        ``{"tonic_volatility": [1, 2], "volatility_coupling": [0]}``.
    Raises:
      ValueError: for an unknown field or an index out of range.
    """
    selection: dict[str, np.ndarray] = {}
    for name, indices in free.items():
        if name not in _PARAM_FIELDS + _BELIEF_FIELDS:
            raise ValueError(
                f"`free` names unknown field {name!r}; expected one of "
                f"{list(_PARAM_FIELDS + _BELIEF_FIELDS)}."
            )
        base = getattr(params if name in _PARAM_FIELDS else beliefs, name)
        idx = np.asarray(indices, dtype=int).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= base.shape[-1]:
            raise ValueError(
                f"`free[{name!r}]` must hold indices in [0, {base.shape[-1]}); got {idx.tolist()}."
            )
        selection[name] = idx

    def take(name: str) -> jax.Array:
        base = getattr(params if name in _PARAM_FIELDS else beliefs, name)
        values = base[selection[name]]
        return jnp.log(values) if name in LOG_FIELDS else values

    theta0 = {name: take(name) for name in selection}

    def unpack(theta: Theta) -> tuple[core.Params, core.Beliefs]:
        p, b = params, beliefs
        for name, idx in selection.items():
            value = jnp.exp(theta[name]) if name in LOG_FIELDS else theta[name]
            if name in _PARAM_FIELDS:
                p = p._replace(**{name: getattr(p, name).at[idx].set(value)})
            else:
                b = b._replace(**{name: getattr(b, name).at[idx].set(value)})
        return p, b

    return theta0, unpack


def map_loss(
    structure: Structure,
    unpack: Unpack,
    prior_mean: Theta,
    prior_precision: float | Theta = 1.0,
    *,
    robust: bool = True,
) -> Callable[..., jax.Array]:
    """``loss(theta, inputs, observed=None, time_steps=None)``: negative log posterior.

    Total input surprise of the filtered series (missing observations excluded)
    plus ``sum prior_precision (theta - prior_mean)^2 / 2``. ``robust`` (default on)
    keeps every parameter the optimiser visits finite.
    """

    def loss(theta: Theta, inputs, observed=None, time_steps=None) -> jax.Array:
        params, beliefs = unpack(theta)
        _, trajectories = core.run(
            None, beliefs, params, inputs, observed, time_steps, structure=structure, robust=robust
        )
        nll = surprise.total_surprise(structure, trajectories, observed)
        precision = (
            prior_precision
            if isinstance(prior_precision, Mapping)
            else jax.tree.map(lambda _: prior_precision, prior_mean)
        )
        penalty = jax.tree.map(
            lambda t, m, p: 0.5 * jnp.sum(p * (t - m) ** 2), theta, prior_mean, precision
        )
        return nll + sum(jax.tree.leaves(penalty))

    return loss


def fit(
    loss: Callable[..., jax.Array],
    theta0: Theta,
    inputs: jax.Array,
    observed: jax.Array | None = None,
    time_steps: jax.Array | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 200,
) -> FitResult:
    """Minimises ``loss(theta, inputs, observed, time_steps)`` from ``theta0`` in one scan.

    Args:
      loss: from :func:`map_loss`.
      theta0: start, from :func:`free_parameters`.
      inputs, observed, time_steps: one subject's series (``[T, n_inputs]``, ...).
      optimizer: an optax transformation (default ``optax.adam(0.05)``).
      num_steps: optimiser steps (static).
    Returns:
      the final ``theta`` and the loss before every step (``[num_steps]``).
    """
    optimizer = optimizer or optax.adam(0.05)
    value_and_grad = jax.value_and_grad(loss)

    def step(carry, _):
        theta, state = carry
        value, grads = value_and_grad(theta, inputs, observed, time_steps)
        updates, state = optimizer.update(grads, state, theta)
        return (optax.apply_updates(theta, updates), state), value

    (theta, _), losses = lax.scan(step, (theta0, optimizer.init(theta0)), None, length=num_steps)
    return FitResult(theta=theta, losses=losses)


def fit_subjects(
    loss: Callable[..., jax.Array],
    theta0: Theta,
    inputs: jax.Array,
    observed: jax.Array | None = None,
    time_steps: jax.Array | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 200,
) -> FitResult:
    """:func:`fit` for ``S`` subjects at once (``vmap``); every argument has a leading ``[S]``.

    To spread subjects over devices, place the batched arguments first with
    ``sharding.shard((theta0, inputs), sharding.make_mesh())`` and call this under
    ``jax.jit``: XLA keeps each subject on its device. Over several processes, each
    builds only its subjects: ``rows = distributed.process_rows(S, mesh, "batch")``, then
    ``distributed.global_array((theta0_rows, inputs_rows), mesh, "batch", S)``
    (``experiments/pod_workloads.py`` does this).
    """

    def one(theta, x, o, t):
        return fit(loss, theta, x, o, t, optimizer=optimizer, num_steps=num_steps)

    axes = (0, 0, None if observed is None else 0, None if time_steps is None else 0)
    return jax.vmap(one, in_axes=axes)(theta0, inputs, observed, time_steps)


__all__ = ["LOG_FIELDS", "FitResult", "fit", "fit_subjects", "free_parameters", "map_loss"]
