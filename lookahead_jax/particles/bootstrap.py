"""The bootstrap particle filter as one ``lax.scan``, optionally sharded over a mesh."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from lookahead_jax.particles import resampling as _resampling
from lookahead_jax.particles import sharded as _sharded
from lookahead_jax.particles import smc as _smc
from lookahead_jax.particles import weights as _weights
from lookahead_jax.particles.ssm import StateSpaceModel


class FilterResult(NamedTuple):
    """A bootstrap filter run; per-step fields have a leading time axis T."""

    log_likelihood: jax.Array  # [] float, log p^(y_1..T), the evidence estimate
    log_likelihood_increments: jax.Array  # [T] float, log p^(y_t | y_1..t-1)
    means: Any  # pytree like one particle, leaves [T, ...]: weighted filtering means
    covariances: Any  # pytree, leaves [T, D, D] with D the flattened particle leaf size
    ess: jax.Array  # [T] float, ESS of the weights after observing y_t
    resampled: jax.Array  # [T] bool, resampled before moving to t (False at t = 0)
    degenerate: jax.Array  # [T] bool, weights before t were all -inf/NaN (uniform fallback)
    ancestors: jax.Array | None  # [T, N] int32 if keep_ancestors (row 0 is arange), else None
    final_state: _smc.SMCState  # particles and log-weights after the last observation


def _moments(particles: Any, log_weights: jax.Array) -> tuple[Any, Any]:
    """Weighted mean (leaves [...]) and covariance (leaves [D, D]) of every particle leaf."""
    log_w, _ = _weights.normalize(log_weights)
    w = jnp.exp(log_w)

    def mean(x):
        return jnp.tensordot(w.astype(x.dtype), x, axes=1)

    def cov(x):
        flat = x.reshape(x.shape[0], -1)
        centred = flat - mean(flat)
        return (centred * w[:, None].astype(x.dtype)).T @ centred

    return jax.tree.map(mean, particles), jax.tree.map(cov, particles)


def bootstrap_filter(
    key: jax.Array,
    model: StateSpaceModel,
    observations: Any,
    num_particles: int,
    *,
    resample_threshold: float = 0.5,
    method: str = "systematic",
    mesh: Mesh | None = None,
    keep_ancestors: bool = False,
) -> FilterResult:
    """Bootstrap particle filter: propose from the transition, weight by the observation.

    Args:
      key: PRNG key.
      model: the state-space model (its initial distribution is over the state at
        the first observation).
      observations: pytree whose leaves have a leading time axis T >= 1, e.g. [T, dy].
      num_particles: N (static).
      resample_threshold: resample when ESS < threshold * N (static, in [0, 1]).
      method: resampling method (static).
      mesh: if given, particles are sharded over its axis (N must be divisible by
        its size) and the N log-weights replicated; resampling stays global and the
        ancestors equal the 1-device ones exactly (see ``particles/sharded.py``).
      keep_ancestors: also return the [T, N] ancestor history (static).

    Returns:
      ``FilterResult``. Wrap in ``jax.jit`` with ``static_argnames=("model",
      "num_particles", "resample_threshold", "method", "mesh", "keep_ancestors")``.
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"`num_particles` must be a positive int; got {num_particles!r}.")
    _resampling.check_method(method)
    _smc.check_threshold(resample_threshold)
    leaves = jax.tree.leaves(observations)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError("`observations` must be arrays with a leading time axis [T, ...].")
    num_steps = jnp.shape(leaves[0])[0]
    if num_steps < 1 or any(jnp.shape(x)[0] != num_steps for x in leaves):
        raise ValueError(
            "every leaf of `observations` must share a leading time axis T >= 1; got shapes "
            f"{[jnp.shape(x) for x in leaves]}."
        )
    if mesh is not None:
        _sharded.check_divisible(num_particles, mesh)
    if mesh is None:
        place = place_weights = lambda tree: tree
    else:
        place = lambda tree: _sharded.constrain(tree, mesh)
        # Replicated weights keep resampling bitwise equal to 1 device (sharded.py).
        place_weights = lambda tree: _sharded.replicated(tree, mesh)

    def weigh(particles, observation):
        log_g = model.observation_log_prob(particles, observation)
        if jnp.shape(log_g) != (num_particles,):
            raise ValueError(
                f"`model.observation_log_prob` must return shape ({num_particles},); "
                f"got {jnp.shape(log_g)}."
            )
        return place_weights(log_g)

    first_key, scan_key = jax.random.split(key)
    first_obs = jax.tree.map(lambda x: x[0], observations)
    particles = place(model.initial_sample(first_key, num_particles))
    # Uniform prior weights: the increment is logmeanexp of the first log-densities
    # (written out so XLA does not constant-fold a cumsum over a constant).
    log_weights = weigh(particles, first_obs)
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    increment = _weights.logsumexp(log_weights) - jnp.log(num_particles)
    state = _smc.SMCState(particles, place_weights(log_weights), increment)

    def record(state, info):
        mean, cov = _moments(state.particles, state.log_weights)
        out = dict(
            increment=info.log_likelihood_increment,
            mean=mean,
            cov=cov,
            ess=_weights.ess(state.log_weights),
            resampled=info.resampled,
            degenerate=info.degenerate,
        )
        if keep_ancestors:
            out["ancestors"] = info.ancestors
        return out

    first_info = _smc.SMCInfo(
        ancestors=jnp.arange(num_particles, dtype=jnp.int32),
        resampled=jnp.zeros((), bool),
        ess=jnp.asarray(float(num_particles), state.log_weights.dtype),
        log_likelihood_increment=increment,
        degenerate=jnp.zeros((), bool),
    )
    first = record(state, first_info)

    def body(state, inputs):
        step_key, observation = inputs

        def propagate_and_weight(key, particles):
            particles = place(model.transition_sample(key, particles))
            return particles, weigh(particles, observation)

        state, info = _smc.step(
            step_key,
            state,
            propagate_and_weight,
            resample_threshold=resample_threshold,
            method=method,
        )
        state = state._replace(
            particles=place(state.particles), log_weights=place_weights(state.log_weights)
        )
        return state, record(state, info)

    rest = jax.tree.map(lambda x: x[1:], observations)
    keys = jax.random.split(scan_key, num_steps - 1)
    state, history = lax.scan(body, state, (keys, rest))
    history = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, history)
    return FilterResult(
        log_likelihood=state.log_likelihood,
        log_likelihood_increments=history["increment"],
        means=history["mean"],
        covariances=history["cov"],
        ess=history["ess"],
        resampled=history["resampled"],
        degenerate=history["degenerate"],
        ancestors=history.get("ancestors"),
        final_state=state,
    )
