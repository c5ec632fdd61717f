"""Entropic annealing (ePF): temper the resampling weights while the particle set is collapsing.

From "Mitigating Premature Exploitation in Particle-based Monte Carlo for
Inference-Time Scaling" (2025). With ``p = softmax(w)``, ``r = ESS(p) / N`` and
``progress = t / max_steps``, the gate fires only early (``progress <
early_phase``) and only when the set is collapsing (``r < ess_threshold``);
otherwise ``T = 1``. When it fires, the schedule sets

* ``"ess"``:     ``T = max(1, (1 - progress) / r)``  (paper: 1/beta = (N / ESS)(1 - t/T))
* ``"entropy"``: ``H_n = -sum p log p / log N``, ``beta = H_n + (1 - H_n) progress``,
  ``T = max(1, 1 / beta)``
* ``"base"``:    ``T = max(1, v_max - progress)``

and resampling draws from ``softmax(w / T)``. The final answer is selected with
the untempered weights. ``"none"`` always gives ``T = 1`` (plain particle filtering).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lookahead_jax.particles import weights as _weights

SCHEDULES = ("none", "ess", "entropy", "base")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {schedule!r}.")


def normalized_entropy(log_weights: jax.Array) -> jax.Array:
    """``-sum p log p / log N`` of ``p = softmax(log_weights)``: [] in [0, 1] (1 if N = 1).

    Summed and returned in float32 for bfloat16/float16 log-weights (float64 for
    float64), like :func:`weights.ess`.
    """
    _weights.check_log_weights("log_weights", log_weights)
    log_weights = _weights.widen(log_weights)
    n = log_weights.shape[0]
    if n == 1:
        return jnp.ones((), log_weights.dtype)
    log_p, _ = _weights.normalize(log_weights)
    p = jnp.exp(log_p)
    plogp = jnp.where(p > 0, p * log_p, 0.0)  # 0 log 0 = 0
    return jnp.clip(-_weights.total(plogp) / jnp.log(n), 0.0, 1.0)


def schedule_temperature(
    schedule: str,
    ess_ratio: jax.Array,
    entropy: jax.Array,
    progress: jax.Array,
    *,
    v_max: float = 2.0,
) -> jax.Array:
    """The schedule's temperature when the gate fires (no gate applied here): [] float >= 1.

    Args:
      schedule: ``"none" | "ess" | "entropy" | "base"`` (static).
      ess_ratio: r = ESS / N in (0, 1].
      entropy: H_n, the normalised entropy in [0, 1].
      progress: t / max_steps in [0, 1].
      v_max: the ``"base"`` schedule's starting temperature.
    """
    check_schedule(schedule)
    progress = jnp.asarray(progress, jnp.result_type(float))
    if schedule == "none":
        return jnp.ones_like(progress)
    if schedule == "ess":
        value = (1.0 - progress) / ess_ratio
    elif schedule == "entropy":
        beta = entropy + (1.0 - entropy) * progress
        value = 1.0 / beta
    else:
        value = v_max - progress
    return jnp.maximum(1.0, value)


def entropic_temperature(
    log_weights: jax.Array,
    progress: jax.Array,
    *,
    schedule: str,
    ess_threshold: float = 0.5,
    early_phase: float = 0.5,
    v_max: float = 2.0,
) -> jax.Array:
    """Resampling temperature T >= 1 for the current log-weights (see the module docstring).

    Args:
      log_weights: [N] float, the (untempered) log-weights.
      progress: [] float, t / max_steps in [0, 1].
      schedule: ``"none" | "ess" | "entropy" | "base"`` (static).
      ess_threshold: the gate fires only when ESS / N < this.
      early_phase: the gate fires only when progress < this.
      v_max: starting temperature of the ``"base"`` schedule.
    Returns:
      [] float in the dtype of ``log_weights`` (ESS and entropy are computed in float32
      or wider); resample from ``log_weights / T``.
    """
    _weights.check_log_weights("log_weights", log_weights)
    check_schedule(schedule)
    n = log_weights.shape[0]
    ratio = _weights.ess(log_weights) / n
    entropy = normalized_entropy(log_weights)
    progress = jnp.asarray(progress, _weights.accumulation_dtype(log_weights))
    gate = (ratio < ess_threshold) & (progress < early_phase)
    value = schedule_temperature(schedule, ratio, entropy, progress, v_max=v_max)
    return jnp.where(gate, value, jnp.ones_like(value)).astype(log_weights.dtype)
