"""A generic SMC step in init/step form: adaptive resampling, propagation, reweighting.

The step is resample-move-reweight: the incoming weights decide (by their ESS)
whether to resample, the survivors are propagated, and the new log-weights are
the old ones (zero after resampling) plus the incremental weights. There is no
Python branch on the data: the step always draws ancestors and then selects
``where(resampled, ancestors, arange(N))``, so one compiled program serves both
cases and ``Info.resampled`` says which happened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks
from lookahead_jax.particles import resampling as _resampling
from lookahead_jax.particles import weights as _weights

Particles = Any  # a pytree whose leaves have leading axis N
PropagateFn = Callable[[jax.Array, Particles], tuple[Particles, jax.Array]]


@dataclasses.dataclass(frozen=True)
class SMCConfig:
    """Static configuration of the generic SMC step (hashable: a static argument to ``jit``).

    Attributes:
      resample_threshold: resample when ESS / N falls below this fraction, in [0, 1].
      method: resampling method, one of ``particles.RESAMPLING_METHODS``.
    """

    resample_threshold: float = 0.5
    method: str = "systematic"

    def __post_init__(self):
        check_threshold(self.resample_threshold)
        _resampling.check_method(self.method)


class SMCState(NamedTuple):
    """A weighted particle system and its running evidence estimate."""

    particles: Particles  # pytree, every leaf [N, ...]
    log_weights: jax.Array  # [N] float, unnormalised
    log_likelihood: jax.Array  # [] float32 or wider, log of the running evidence estimate


class SMCInfo(NamedTuple):
    """Diagnostics of one step (never fed back)."""

    ancestors: jax.Array  # [N] int32, parent of each particle (arange(N) if not resampled)
    resampled: jax.Array  # [] bool, whether this step resampled
    ess: jax.Array  # [] float, ESS of the incoming weights, the one compared to the threshold
    log_likelihood_increment: jax.Array  # [] float, log Z_t / Z_{t-1} estimate
    degenerate: jax.Array  # [] bool, incoming weights all -inf/NaN: uniform fallback used


class Resampled(NamedTuple):
    """Outcome of :func:`adaptive_resample`."""

    ancestors: jax.Array  # [N] int32, arange(N) when not resampled
    log_weights: jax.Array  # [N] float, zeros after resampling, else the sanitised input
    resampled: jax.Array  # [] bool
    ess: jax.Array  # [] float, ESS of the input weights
    degenerate: jax.Array  # [] bool, the input weights were all -inf/NaN


def check_threshold(resample_threshold: float) -> None:
    """Checks ``0 <= resample_threshold <= 1`` when it is concrete (it may be traced)."""
    value = _checks.concrete_value(resample_threshold)
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`resample_threshold` must lie in [0, 1]; got {resample_threshold!r}.")


def adaptive_resample(
    key: jax.Array,
    log_weights: jax.Array,
    *,
    resample_threshold: float = 0.5,
    method: str = "systematic",
    selection_log_weights: jax.Array | None = None,
) -> Resampled:
    """Resamples when ``ESS < resample_threshold * N``, without a Python branch.

    Args:
      key: PRNG key.
      log_weights: [N] float, unnormalised.
      resample_threshold: kappa in [0, 1] (may be traced); 0 never resamples, 1 resamples
        unless the weights are exactly uniform. Degenerate weights (all -inf/NaN)
        always trigger a (uniform) resampling, flagged in ``degenerate``.
      method: a :data:`resampling.RESAMPLING_METHODS` entry (static).
      selection_log_weights: [N] float, optional: draw ancestors from these instead
        (e.g. tempered weights in entropic particle filtering) while the ESS test
        and the flag still use ``log_weights``.
    """
    _weights.check_log_weights("log_weights", log_weights)
    _resampling.check_method(method)
    check_threshold(resample_threshold)
    n = log_weights.shape[0]
    if selection_log_weights is None:
        selection_log_weights = log_weights
    elif jnp.shape(selection_log_weights) != (n,):
        raise ValueError(
            f"`selection_log_weights` must have shape ({n},) like `log_weights`; "
            f"got {jnp.shape(selection_log_weights)}."
        )
    sanitized, degenerate = _weights.sanitize(log_weights)
    ess = _weights.ess(log_weights)
    resampled = (ess < resample_threshold * n) | degenerate
    drawn = _resampling.resample(key, selection_log_weights, n, method)
    identity = jnp.arange(n, dtype=jnp.int32)
    return Resampled(
        ancestors=jnp.where(resampled, drawn, identity),
        log_weights=jnp.where(resampled, jnp.zeros_like(sanitized), sanitized),
        resampled=resampled,
        ess=ess,
        degenerate=degenerate,
    )


def gather(particles: Particles, ancestors: jax.Array) -> Particles:
    """Selects ``particles[ancestors]`` on every leaf's leading axis."""
    return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), particles)


def init(particles: Particles, log_weights: jax.Array | None = None) -> SMCState:
    """An SMC state from particles (leaves [N, ...]) and optional log-weights [N] (default 0)."""
    leaves = jax.tree.leaves(particles)
    if not leaves:
        raise ValueError("`particles` must hold at least one array.")
    n = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
    for leaf in leaves:
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                "every leaf of `particles` must have the same leading (particle) axis; got "
                f"shapes {[jnp.shape(x) for x in leaves]}."
            )
    if log_weights is None:
        log_weights = jnp.zeros((n,), jnp.result_type(float))
    _weights.check_log_weights("log_weights", log_weights)
    if jnp.shape(log_weights) != (n,):
        raise ValueError(
            f"`log_weights` must have shape ({n},) (one per particle); "
            f"got {jnp.shape(log_weights)}."
        )
    log_weights = jnp.asarray(log_weights)
    # The evidence accumulates in float32 or wider (bfloat16 log-weights included).
    return SMCState(particles, log_weights, jnp.zeros((), _weights.accumulation_dtype(log_weights)))


def reweight(log_weights: jax.Array, increments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """New log-weights and the evidence increment ``log sum_i wbar_i exp(increment_i)``.

    ``wbar`` are the normalised incoming weights (uniform fallback if degenerate);
    NaN increments count as -inf. Returns ``(log_weights [N], increment [])``.
    """
    increments = jnp.where(jnp.isnan(increments), -jnp.inf, increments)
    prior, _ = _weights.normalize(log_weights)
    return log_weights + increments, _weights.logsumexp(prior + increments)


def step(
    key: jax.Array,
    state: SMCState,
    propagate_and_weight: PropagateFn,
    config: SMCConfig | None = None,
    *,
    resample_threshold: float = 0.5,
    method: str = "systematic",
) -> tuple[SMCState, SMCInfo]:
    """One SMC step: adaptive resampling, then propagation and reweighting.

    Args:
      key: PRNG key.
      state: the weighted particles.
      propagate_and_weight: ``(key, particles [N, ...]) -> (particles [N, ...],
        log_weight_increments [N])``, e.g. a transition draw and the observation
        log-density for a bootstrap filter.
      config: the static configuration; when given it replaces the two keywords below.
      resample_threshold: ESS fraction below which to resample (static).
      method: resampling method (static).
    Returns:
      ``(SMCState, SMCInfo)``.
    """
    if config is not None:
        resample_threshold, method = config.resample_threshold, config.method
    resample_key, move_key = jax.random.split(key)
    chosen = adaptive_resample(
        resample_key, state.log_weights, resample_threshold=resample_threshold, method=method
    )
    particles, increments = propagate_and_weight(
        move_key, gather(state.particles, chosen.ancestors)
    )
    n = state.log_weights.shape[0]
    if jnp.shape(increments) != (n,):
        raise ValueError(
            f"`propagate_and_weight` must return log-weight increments of shape ({n},); "
            f"got {jnp.shape(increments)}."
        )
    log_weights, increment = reweight(chosen.log_weights, increments)
    new_state = SMCState(
        particles,
        log_weights,
        (state.log_likelihood + increment).astype(jnp.result_type(state.log_likelihood)),
    )
    info = SMCInfo(
        ancestors=chosen.ancestors,
        resampled=chosen.resampled,
        ess=chosen.ess,
        log_likelihood_increment=increment,
        degenerate=chosen.degenerate,
    )
    return new_state, info


def run(
    key: jax.Array,
    state: SMCState,
    propagate_and_weight: Callable[[jax.Array, jax.Array, Particles], tuple[Particles, jax.Array]],
    num_steps: int,
    config: SMCConfig = SMCConfig(),
) -> tuple[SMCState, SMCInfo]:
    """``num_steps`` SMC steps in one ``lax.scan``.

    Step ``t`` (0-based) uses ``jax.random.fold_in(key, t)``; to continue a run, pass its
    final state and a fresh key. Jit it with ``propagate_and_weight``, ``num_steps`` and
    ``config`` static.

    Args:
      key: PRNG key.
      state: from :func:`init` or a previous run.
      propagate_and_weight: ``(key, t [] int32, particles [N, ...]) -> (particles [N, ...],
        log_weight_increments [N])``: the time index selects e.g. the observation.
      num_steps: number of steps (static, >= 1).
      config: the static configuration.
    Returns:
      ``(final SMCState, SMCInfo)`` with every Info field stacked over a leading [T] axis.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an int >= 1; got {num_steps!r}.")

    times = jnp.arange(num_steps, dtype=jnp.int32)
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(times)

    def body(carry, inputs):
        t, step_key = inputs
        move = lambda k, p: propagate_and_weight(k, t, p)
        return step(step_key, carry, move, config)

    return jax.lax.scan(body, state, (times, keys))
