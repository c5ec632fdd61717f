"""The bootstrap particle filter in init/step/run form, optionally sharded over a mesh.

``bootstrap_init(key, model, config)`` draws the particles of the first time step,
``bootstrap_step(key, state, observation, model, config)`` assimilates one observation
(adaptive resampling, transition draw, observation weighting; the first step only
weights), and ``bootstrap_run(key, model, observations, config, state=None)`` scans the
step over a leading time axis. The step at global time ``t`` uses
``fold_in(step_key, t)``, so a run continued from its final state draws exactly what one
longer run draws: two runs of T / 2 observations equal one run of T.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from lookahead_jax.particles import placement as _placement
from lookahead_jax.particles import resampling as _resampling
from lookahead_jax.particles import smc as _smc
from lookahead_jax.particles import weights as _weights
from lookahead_jax.particles.ssm import StateSpaceModel


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Static configuration of the bootstrap filter (hashable: a static ``jit`` argument).

    Attributes:
      num_particles: N >= 1.
      resample_threshold: resample when ESS < threshold * N, in [0, 1].
      method: a :data:`resampling.RESAMPLING_METHODS` entry.
      mesh: if given, particles are sharded over its axis (N must be divisible by its
        size) and the N log-weights replicated; resampling stays global and the
        ancestors equal the 1-device ones exactly (see ``particles/sharded.py``).
      keep_ancestors: :func:`bootstrap_run` also returns the [T, N] ancestor history.
    """

    num_particles: int
    resample_threshold: float = 0.5
    method: str = "systematic"
    mesh: Mesh | None = None
    keep_ancestors: bool = False

    def __post_init__(self):
        n = self.num_particles
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`num_particles` must be a positive int; got {n!r}.")
        _resampling.check_method(self.method)
        _smc.check_threshold(self.resample_threshold)
        if self.mesh is not None:
            _placement.check_divisible(n, self.mesh)


class BootstrapState(NamedTuple):
    """The weighted particles after ``time`` observations (``time = 0``: not yet weighted)."""

    particles: Any  # pytree, every leaf [N, ...]
    log_weights: jax.Array  # [N] float, unnormalised
    log_likelihood: jax.Array  # [] float (float32 or wider), log p^(y_1..time)
    time: jax.Array  # [] int32, observations assimilated so far


class BootstrapInfo(NamedTuple):
    """Diagnostics of one step (never fed back)."""

    log_likelihood_increment: jax.Array  # [] float, log p^(y_t | y_1..t-1)
    mean: Any  # pytree like one particle: weighted filtering mean after y_t
    covariance: Any  # pytree, leaves [D, D], D the flattened particle leaf size
    ess: jax.Array  # [] float, ESS of the weights after observing y_t
    resampled: jax.Array  # [] bool, resampled before moving to t (False at the first step)
    degenerate: jax.Array  # [] bool, weights before t were all -inf/NaN (uniform fallback)
    ancestors: jax.Array  # [N] int32, parent of each particle (arange(N) if not resampled)


class FilterResult(NamedTuple):
    """A bootstrap filter run; per-step fields have a leading time axis T."""

    log_likelihood: jax.Array  # [] float, log p^(y_1..T) (from the start of the first run)
    log_likelihood_increments: jax.Array  # [T] float, log p^(y_t | y_1..t-1)
    means: Any  # pytree like one particle, leaves [T, ...]: weighted filtering means
    covariances: Any  # pytree, leaves [T, D, D] with D the flattened particle leaf size
    ess: jax.Array  # [T] float, ESS of the weights after observing y_t
    resampled: jax.Array  # [T] bool, resampled before moving to t (False at t = 0)
    degenerate: jax.Array  # [T] bool, weights before t were all -inf/NaN (uniform fallback)
    ancestors: jax.Array | None  # [T, N] int32 if keep_ancestors (row 0 is arange), else None
    final_state: BootstrapState  # pass as `state=` to continue with later observations


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


def _placers(config: BootstrapConfig):
    if config.mesh is None:
        return (lambda tree: tree), (lambda tree: tree)
    mesh = config.mesh
    # Replicated weights keep resampling bitwise equal to 1 device (sharded.py).
    return (lambda tree: _placement.constrain(tree, mesh)), (
        lambda tree: _placement.replicated(tree, mesh)
    )


def bootstrap_init(
    key: jax.Array, model: StateSpaceModel, config: BootstrapConfig
) -> BootstrapState:
    """Particles drawn from ``model.initial_sample`` with equal weights, at ``time = 0``.

    Args:
      key: PRNG key for the initial draw.
      model: the state-space model (its initial distribution is over the state at the
        first observation: the first :func:`bootstrap_step` weights without a transition).
      config: :class:`BootstrapConfig`.
    """
    place, place_weights = _placers(config)
    particles = place(model.initial_sample(key, config.num_particles))
    leaves = jax.tree.leaves(particles)
    dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    log_weights = place_weights(jnp.zeros((config.num_particles,), dtype))
    return BootstrapState(
        particles=particles,
        log_weights=log_weights,
        log_likelihood=jnp.zeros((), _weights.accumulation_dtype(log_weights)),
        time=jnp.zeros((), jnp.int32),
    )


def bootstrap_step(
    key: jax.Array,
    state: BootstrapState,
    observation: Any,
    model: StateSpaceModel,
    config: BootstrapConfig,
) -> tuple[BootstrapState, BootstrapInfo]:
    """Assimilates one observation: resample if ESS < threshold * N, move, weight.

    At ``state.time == 0`` there is no transition and no resampling (the initial
    distribution is over the first state), so the increment is ``logmeanexp`` of the
    first observation log-densities.

    Args:
      key: PRNG key of this step (:func:`bootstrap_run` uses ``fold_in(key, time)``).
      state: :class:`BootstrapState`.
      observation: one observation (a pytree without the time axis).
      model: the state-space model (static).
      config: :class:`BootstrapConfig` (static).
    Returns:
      ``(BootstrapState, BootstrapInfo)``.
    """
    n = config.num_particles
    place, place_weights = _placers(config)
    first = state.time == 0

    def weigh(particles):
        log_g = model.observation_log_prob(particles, observation)
        if jnp.shape(log_g) != (n,):
            raise ValueError(
                f"`model.observation_log_prob` must return shape ({n},); got {jnp.shape(log_g)}."
            )
        return place_weights(log_g)

    def propagate_and_weight(move_key, particles):
        moved = lax.cond(
            first,
            lambda: particles,
            lambda: place(model.transition_sample(move_key, particles)),
        )
        moved = place(moved)
        return moved, weigh(moved)

    smc_state = _smc.SMCState(state.particles, state.log_weights, state.log_likelihood)
    smc_state, info = _smc.step(
        key,
        smc_state,
        propagate_and_weight,
        resample_threshold=jnp.where(first, 0.0, config.resample_threshold),
        method=config.method,
    )
    new_state = BootstrapState(
        particles=place(smc_state.particles),
        # The state's dtype stays fixed (a scan carry), e.g. float32 weights for
        # float32 particles even when the observation model returns float64.
        log_weights=place_weights(smc_state.log_weights.astype(state.log_weights.dtype)),
        log_likelihood=smc_state.log_likelihood.astype(state.log_likelihood.dtype),
        time=state.time + 1,
    )
    mean, cov = _moments(new_state.particles, new_state.log_weights)
    return new_state, BootstrapInfo(
        log_likelihood_increment=info.log_likelihood_increment.astype(state.log_likelihood.dtype),
        mean=mean,
        covariance=cov,
        ess=_weights.ess(new_state.log_weights),
        resampled=info.resampled,
        degenerate=info.degenerate,
        ancestors=info.ancestors,
    )


def _check_observations(observations: Any) -> int:
    leaves = jax.tree.leaves(observations)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError("`observations` must be arrays with a leading time axis [T, ...].")
    num_steps = jnp.shape(leaves[0])[0]
    if num_steps < 1 or any(jnp.shape(x)[0] != num_steps for x in leaves):
        raise ValueError(
            "every leaf of `observations` must share a leading time axis T >= 1; got shapes "
            f"{[jnp.shape(x) for x in leaves]}."
        )
    return num_steps


def bootstrap_run(
    key: jax.Array,
    model: StateSpaceModel,
    observations: Any,
    config: BootstrapConfig,
    state: BootstrapState | None = None,
) -> FilterResult:
    """Runs :func:`bootstrap_step` over ``observations`` as one ``lax.scan``.

    Args:
      key: PRNG key. ``split(key)`` gives the initial-draw key and the step key; the
        step at global time ``t`` uses ``fold_in(step_key, t)``. Pass the same key when
        continuing a run from its ``final_state``.
      model: the state-space model (static).
      observations: pytree whose leaves have a leading time axis T >= 1, e.g. [T, dy].
      config: :class:`BootstrapConfig` (static).
      state: continue from this state (e.g. a previous run's ``final_state``); default:
        :func:`bootstrap_init`.

    Returns:
      ``FilterResult``; ``log_likelihood`` counts every observation since the first
      run. Wrap in ``jax.jit`` with ``static_argnames=("model", "config")``.
    """
    _check_observations(observations)
    init_key, step_key = jax.random.split(key)
    if state is None:
        state = bootstrap_init(init_key, model, config)

    def body(state, observation):
        state, info = bootstrap_step(
            jax.random.fold_in(step_key, state.time), state, observation, model, config
        )
        if not config.keep_ancestors:
            info = info._replace(ancestors=None)
        return state, info

    state, history = lax.scan(body, state, observations)
    return FilterResult(
        log_likelihood=state.log_likelihood,
        log_likelihood_increments=history.log_likelihood_increment,
        means=history.mean,
        covariances=history.covariance,
        ess=history.ess,
        resampled=history.resampled,
        degenerate=history.degenerate,
        ancestors=history.ancestors,
        final_state=state,
    )


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
    """Bootstrap particle filter from the prior: :func:`bootstrap_run` with keywords.

    Kept for existing code; equal to ``bootstrap_run(key, model, observations,
    BootstrapConfig(num_particles, resample_threshold, method, mesh, keep_ancestors))``.
    Wrap in ``jax.jit`` with ``static_argnames=("model", "num_particles",
    "resample_threshold", "method", "mesh", "keep_ancestors")``.
    """
    config = BootstrapConfig(
        num_particles,
        resample_threshold=resample_threshold,
        method=method,
        mesh=mesh,
        keep_ancestors=keep_ancestors,
    )
    return bootstrap_run(key, model, observations, config)
