"""Log-weight hygiene shared by every particle method: sanitising, normalising, ESS.

dtype policy: log-weights keep the caller's dtype, but every sum over particles
(normalising constants, ESS, cdfs in ``resampling.py``) is accumulated in
:func:`accumulation_dtype`: float32 for bfloat16/float16 inputs (whose 8- or 11-bit
mantissas cannot hold a running sum over many particles), float64 for float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lookahead_jax import _checks


def check_log_weights(name: str, log_weights: jax.Array) -> None:
    """Trace-time check: a rank-1 floating array."""
    _checks.check_rank(name, log_weights, 1, "one log-weight per particle")
    dtype = jnp.result_type(log_weights)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating array; got dtype {dtype}.")


def accumulation_dtype(x: jax.Array) -> jnp.dtype:
    """The dtype sums over particles use: ``x``'s float dtype widened to at least float32."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def widen(x: jax.Array) -> jax.Array:
    """``x`` cast to :func:`accumulation_dtype` (a no-op for float32 and float64)."""
    return jnp.asarray(x).astype(accumulation_dtype(x))


def total(x: jax.Array) -> jax.Array:
    """``sum(x)`` over axis 0."""
    return jnp.sum(x, axis=0)


def sanitize(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replaces undefined log-weights by a defined, equivalent set.

    * NaN counts as -inf (a particle that cannot be scored gets no mass).
    * If any log-weight is +inf, those particles share all the mass equally.
    * If every log-weight is -inf (or NaN), all particles get equal weight and the
      returned flag is set: the caller reports it in its ``Info``.

    Args:
      log_weights: [N] float, unnormalised.
    Returns:
      ``(log_weights [N] float with a finite maximum, degenerate [] bool)``.
    """
    lw = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    posinf = lw == jnp.inf
    lw = jnp.where(jnp.any(posinf), jnp.where(posinf, 0.0, -jnp.inf), lw)
    degenerate = jnp.all(lw == -jnp.inf)
    lw = jnp.where(degenerate, jnp.zeros_like(lw), lw)
    return lw, degenerate


def unnormalised_weights(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``exp(lw - max lw)`` after :func:`sanitize`: [N] in [0, 1] with max 1; plus the flag.

    Computed and returned in :func:`accumulation_dtype` (float32 for bfloat16 input).
    The same values and flag as ``sanitize`` then ``exp(lw - max lw)``, from one
    reduction: the maximum of the log-weights with NaN as -inf decides every case of
    :func:`sanitize` (+inf: those particles share the mass; -inf: all undefined, uniform
    and flagged; finite: ``exp(lw - max)``). At small N each dependent reduction is a
    kernel dispatch (issue 18).
    """
    lw = widen(log_weights)
    lw = jnp.where(jnp.isnan(lw), -jnp.inf, lw)
    top = jnp.max(lw)
    degenerate = top == -jnp.inf
    w = jnp.where(
        top == jnp.inf,
        (lw == jnp.inf).astype(lw.dtype),
        jnp.exp(lw - jnp.where(jnp.isfinite(top), top, 0.0)),
    )
    return jnp.where(degenerate, 1.0, w), degenerate


def normalize(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised log-weights ``[N]`` (they logsumexp to 0) and the degenerate flag [].

    The normaliser is summed in :func:`accumulation_dtype`; the result has the input dtype.
    """
    dtype = jnp.result_type(log_weights)
    lw, degenerate = sanitize(widen(log_weights))
    top = jnp.max(lw)
    return (lw - top - jnp.log(total(jnp.exp(lw - top)))).astype(dtype), degenerate


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size ``1 / sum(w^2)`` of normalised weights: [] float in [1, N].

    Accumulated and returned in :func:`accumulation_dtype`: float32 for bfloat16/float16
    log-weights (a bfloat16 sum over many particles is badly biased), float64 for float64.
    N only for uniform weights, 1 only for a single non-zero weight; invariant to
    adding a constant to ``log_weights``. Undefined weights follow :func:`sanitize`
    (all -inf gives the uniform fallback, so ESS = N).

    Args:
      log_weights: [N] float, unnormalised.
    """
    check_log_weights("log_weights", log_weights)
    w, _ = unnormalised_weights(log_weights)
    # (sum w)^2 / sum w^2 with w <= 1 and max w = 1: no overflow, no underflow of the max.
    value = total(w) ** 2 / total(w * w)
    # Rounding can put a near-uniform or near-one-hot value one ulp outside [1, N].
    return jnp.clip(value, 1.0, log_weights.shape[0])


def log_mean_exp(x: jax.Array, axis: int = 0) -> jax.Array:
    """``log(mean(exp(x)))`` along ``axis``, stable (e.g. over filter replicates).

    Summed and returned in :func:`accumulation_dtype`.
    """
    return jax.nn.logsumexp(widen(x), axis=axis) - jnp.log(x.shape[axis])


def logsumexp(x: jax.Array) -> jax.Array:
    """``log(sum(exp(x)))`` over axis 0 (-inf if every entry is -inf, never NaN).

    Summed and returned in :func:`accumulation_dtype` (evidence increments stay float32
    for bfloat16 log-weights).
    """
    x = widen(x)
    top = jnp.max(x, axis=0)
    safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.log(total(jnp.exp(x - safe_top))) + safe_top
