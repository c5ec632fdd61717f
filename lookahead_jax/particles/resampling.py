"""Resampling: draw ancestor indices from weighted particles, in O(N + M), fixed shapes.

Every method is written as *counting*: with ``cdf`` the normalised cumulative
weights and ``u_1 <= ... <= u_M`` the method's sorted positions in [0, 1),
``K(c) = #{j : u_j < c}`` is the number of draws at or below ``c``, particle
``i`` gets ``K(cdf_i) - K(cdf_{i-1})`` offspring, and the ancestors are
``repeat(arange(N), offspring)``. For systematic and stratified positions
``K(c)`` has a closed form, so those methods cost O(N + M) with no search at all;
multinomial and the residual part merge the cdf with sorted uniforms by
bucketing (expected O(N + M), no binary search; see ``_count_below``).

dtype: the weights, the cdf and the positions are computed in float32 for
bfloat16/float16 log-weights (float64 for float64; ``weights.accumulation_dtype``):
a bfloat16 cumsum stops growing after 256 equal weights, which biases the
ancestor counts by orders of magnitude more than Monte Carlo noise.

Float32 safety (a zero-weight particle is never picked):

* ``cdf`` is a cumsum whose entries at zero-weight particles are replaced by a
  running maximum (exact: max never rounds). A float cumsum is computed as a
  parallel scan and can move by an ulp across a zero weight; after the running
  maximum a zero-weight particle has exactly
  the ``cdf`` of its predecessor and therefore exactly zero offspring, whatever
  rounding the cumsum made and whatever the positions are (also ``u = 0``).
* ``cdf`` is divided by its own last entry, so it ends at exactly 1 and every
  position counts as below it: when a float32 position rounds up to 1, the last
  draws still go to the last particle with positive weight, never past it.

The returned ancestors are sorted (a particle's copies are contiguous). That
keeps copies next to their parent, which on a sharded particle axis means most
copies stay on their device; apply a random permutation if an algorithm needs
exchangeable order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax.particles import weights as _weights

RESAMPLING_METHODS = ("multinomial", "stratified", "systematic", "residual")
METHODS = RESAMPLING_METHODS  # deprecated alias of RESAMPLING_METHODS, kept for existing code


def check_method(method: str) -> None:
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"`method` must be one of {RESAMPLING_METHODS}; got {method!r}.")


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int; got {num_samples!r}.")


# From this length on the running maximum uses ``associative_scan`` (measured ~2x faster
# than ``lax.cummax`` at 10^4 and ~3x at 10^6 on CPU, but ~2x slower to compile); below
# it, ``cummax``, which keeps small problems (and the test suite) quick to compile.
_SCAN_MIN_LENGTH = 1 << 13


def _running_max(x: jax.Array) -> jax.Array:
    """Cumulative maximum along axis 0; exact either way (max never rounds)."""
    if x.shape[0] >= _SCAN_MIN_LENGTH:
        return lax.associative_scan(jnp.maximum, x)
    return lax.cummax(x, axis=0)


def robust_cdf(w: jax.Array) -> jax.Array:
    """Normalised cdf [N] of non-negative weights ``w [N]`` with at least one positive.

    Monotone, exactly 1 from the last positive weight on, and exactly flat at
    zero weights (see the module docstring).
    """
    c = jnp.where(w > 0, jnp.cumsum(w), 0.0)
    c = _running_max(c)
    return c / c[-1]


def _offspring_from_counts(cdf: jax.Array, below: jax.Array, num_draws: jax.Array | int):
    """Offspring [N] int32 from ``below[i] = K(cdf[i])``, forcing ``K(1) = num_draws``."""
    below = jnp.where(cdf >= 1.0, num_draws, below).astype(jnp.int32)
    return jnp.diff(below, prepend=jnp.zeros((1,), jnp.int32))


def _sorted_uniforms(key: jax.Array, size: int, count: jax.Array | int, dtype) -> jax.Array:
    """The first ``count`` of ``size`` slots hold sorted U(0,1) order statistics, the rest 2.

    Order statistics of ``count`` uniforms are ``S_j / S_count`` with ``S`` the
    cumulative sums of ``count + 1`` standard exponentials (O(size), no sort).
    ``count`` may be traced (residual resampling draws a data-dependent number).
    """
    e = jax.random.exponential(key, (size + 1,), dtype)
    s = _running_max(jnp.cumsum(e))  # cummax: a float cumsum may dip by an ulp
    u = s[:size] / s[count]
    return jnp.where(jnp.arange(size) < count, u, 2.0)


def _count_below(sorted_u: jax.Array, cdf: jax.Array) -> jax.Array:
    """``#{j : u_j < cdf_i}`` for every i, by a bucket merge in expected O(N + M).

    ``sorted_u [M]`` holds sorted positions in [0, 1] followed by inactive entries
    (> 1). Each active position goes to bucket ``floor(u M)``; buckets are contiguous
    because ``u`` is sorted, and since ``x -> floor(fl(x M))`` is monotone, every
    position in a lower bucket than ``cdf_i``'s is below ``cdf_i`` and none in a
    higher one is. So the count is the start of ``cdf_i``'s bucket plus a comparison
    against that bucket's members. Sorted uniforms put Poisson(1)-many positions in
    a bucket, so the loop runs about ``log M / log log M`` vectorised rounds (~10
    at M = 10^6) instead of a ``log2 M``-round binary search.
    """
    m = sorted_u.shape[0]
    scale = jnp.asarray(m, sorted_u.dtype)
    bucket = jnp.where(sorted_u <= 1.0, jnp.minimum((sorted_u * scale).astype(jnp.int32), m - 1), m)
    sizes = jnp.zeros((m,), jnp.int32).at[bucket].add(1, mode="drop")
    starts = jnp.cumsum(sizes) - sizes
    target = jnp.clip((cdf * scale).astype(jnp.int32), 0, m - 1)
    base, size = starts[target], sizes[target]

    def body(carry):
        k, count = carry
        member = sorted_u[jnp.minimum(base + k, m - 1)]
        return k + 1, count + ((k < size) & (member < cdf))

    rounds = jnp.max(sizes)
    _, count = lax.while_loop(lambda c: c[0] < rounds, body, (jnp.int32(0), base))
    return count


def _systematic_counts(cdf, shift, num_samples):
    # Positions (j + U) / M, j < M: #{j : j + U < c M} = ceil(c M - U), clipped to [0, M].
    below = jnp.clip(jnp.ceil(cdf * num_samples - shift), 0, num_samples)
    return _offspring_from_counts(cdf, below, num_samples)


def _systematic(key, cdf, num_samples):
    return _systematic_counts(cdf, jax.random.uniform(key, (), cdf.dtype), num_samples)


def _stratified_counts(cdf, shifts, num_samples):
    # Positions (j + U_j) / M: every j < floor(c M) counts, j = floor(c M) counts when
    # U_j < frac(c M), larger j never do. Monotone in c, so offspring are non-negative.
    x = cdf * num_samples
    whole = jnp.clip(jnp.floor(x), 0, num_samples).astype(jnp.int32)
    straddle = shifts[jnp.minimum(whole, num_samples - 1)] < x - whole
    below = whole + ((whole < num_samples) & straddle)
    return _offspring_from_counts(cdf, below, num_samples)


def _stratified(key, cdf, num_samples):
    shifts = jax.random.uniform(key, (num_samples,), cdf.dtype)
    return _stratified_counts(cdf, shifts, num_samples)


def _multinomial(key, cdf, num_samples):
    u = _sorted_uniforms(key, num_samples, num_samples, cdf.dtype)
    return _offspring_from_counts(cdf, _count_below(u, cdf), num_samples)


def _residual(key, w, num_samples):
    # Deterministic part floor(M w_i), with M w_i computed as M e_i / S from the
    # max-normalised weights: exact for uniform (and any exactly representable)
    # weights, so uniform weights give the identity and not an ulp-short floor.
    expected = num_samples * w / _weights.total(w)
    whole = jnp.floor(expected).astype(jnp.int32)
    frac = jnp.maximum(expected - whole, 0.0)
    # Rounding could in principle push sum(whole) above M; the excess is then
    # truncated by `repeat` (documented, never observed with float32 weights).
    size = min(num_samples, w.shape[0])
    rest = jnp.clip(num_samples - _weights.total(whole), 0, size)
    has_rest = jnp.any(frac > 0)
    cdf = robust_cdf(jnp.where(has_rest, frac, 1.0))
    u = _sorted_uniforms(key, size, rest, w.dtype)
    extra = _offspring_from_counts(cdf, _count_below(u, cdf), rest)
    return whole + jnp.where(has_rest, extra, 0)


def offspring_counts(
    key: jax.Array, log_weights: jax.Array, num_samples: int, method: str = "systematic"
) -> tuple[jax.Array, jax.Array]:
    """Number of copies of each particle, and whether the weights were degenerate.

    Args: as :func:`resample`.
    Returns:
      ``(offspring [N] int32 summing to num_samples, degenerate [] bool)``; ``degenerate``
      is set when every log-weight was -inf/NaN and the uniform fallback was used.
    """
    _weights.check_log_weights("log_weights", log_weights)
    if log_weights.shape[0] < 1:
        raise ValueError(
            "`log_weights` must hold at least one particle (N >= 1); got shape "
            f"{tuple(log_weights.shape)}."
        )
    _check_num_samples(num_samples)
    check_method(method)
    # Float32 (or float64) weights: see the module docstring.
    w, degenerate = _weights.unnormalised_weights(log_weights)
    if method == "residual":
        return _residual(key, w, num_samples), degenerate
    cdf = robust_cdf(w)
    draw = {"multinomial": _multinomial, "stratified": _stratified, "systematic": _systematic}
    return draw[method](key, cdf, num_samples), degenerate


def ancestors_from_offspring(offspring: jax.Array, num_samples: int) -> jax.Array:
    """``repeat(arange(N), offspring)`` as [num_samples] int32 (O(N + M), sorted).

    Particle ``i`` writes its index at the start of its block of copies and a
    running maximum fills the block (particles without offspring write nothing).
    Offspring summing past ``num_samples`` are truncated.
    """
    n = offspring.shape[0]
    starts = jnp.cumsum(offspring) - offspring
    where = jnp.where(offspring > 0, starts, num_samples)  # past the end: dropped
    marks = (
        jnp.zeros((num_samples,), jnp.int32)
        .at[where]
        .max(jnp.arange(n, dtype=jnp.int32), mode="drop")
    )
    return _running_max(marks)


def resample(
    key: jax.Array, log_weights: jax.Array, num_samples: int, method: str = "systematic"
) -> jax.Array:
    """Ancestor indices drawn in proportion to ``exp(log_weights)``.

    Args:
      key: PRNG key.
      log_weights: [N] float (N >= 1), unnormalised; -inf (or NaN) means weight zero. If
        every entry is -inf/NaN the draw is uniform (see :func:`offspring_counts` for the
        flag). Any float dtype; weights and cdf are accumulated in float32 (float64 for
        float64 input), so bfloat16 log-weights give unbiased counts.
      num_samples: M >= 1, the number of ancestors (static).
      method: ``"multinomial" | "stratified" | "systematic" | "residual"`` (static).
        Expected offspring ``M w_i`` for every method; systematic gives
        ``floor(M w_i)`` or ``ceil(M w_i)``; residual at least ``floor(M w_i)``;
        uniform weights with M = N give the identity for all but multinomial
        (exactly for residual; for systematic/stratified whenever ``M * cdf`` is
        exact in the float type, e.g. small N, and otherwise up to events of
        probability ~1e-7 from the rounding of ``M * cdf``).

    Returns:
      ancestors: [M] int32 in [0, N), non-decreasing; never a zero-weight index.
    """
    offspring, _ = offspring_counts(key, log_weights, num_samples, method)
    return ancestors_from_offspring(offspring, num_samples)
