"""Resampling: draw ancestor indices from weighted particles, in O(N + M), fixed shapes.

Every method is written as *counting*: with ``cdf`` the normalised cumulative
weights and ``u_1 <= ... <= u_M`` the method's sorted positions in [0, 1),
``K(c) = #{j : u_j < c}`` is the number of draws at or below ``c``, particle
``i`` gets ``K(cdf_i) - K(cdf_{i-1})`` offspring, and the ancestors are
``repeat(arange(N), offspring)`` (one scatter and one scan, see below). For
systematic and stratified positions ``K(c)`` has a closed form, so those methods
cost O(N + M) with no search at all; multinomial and the residual part merge the
cdf with sorted uniforms by bucketing (expected O(N + M), no binary search; see
``_count_below``).

Speed on CPU (issue #18) comes from doing few passes and few kernels: one prefix
scan for the cdf (no repair scan), one scatter and one scan for the ancestors, the
weights from one reduction (``weights.unnormalised_weights``), and a threefry-2x32
stream evaluated in one fused pass (``_uniforms``; stratified evaluates it at the
strata it needs). Sizes pick static code paths with the same laws: from
``_SCAN_MIN_LENGTH`` on the scans are parallel (``associative_scan``), below it
sequential loops on CPU (one kernel each, ``_SEQUENTIAL_ON_CPU``) and XLA's windowed
scans elsewhere (fewer kernels); up to ``_SEARCH_MAX_LENGTH`` positions the merge is a
binary search (a sequential merge on CPU below ``_SCAN_MIN_LENGTH`` particles), above
it the bucket merge.

dtype: the weights, the cdf and the positions are computed in float32 for
bfloat16/float16 log-weights (float64 for float64; ``weights.accumulation_dtype``):
a bfloat16 cumsum stops growing after 256 equal weights, which biases the
ancestor counts by orders of magnitude more than Monte Carlo noise.

Float32 safety (a zero-weight particle is never picked):

* ``cdf`` is a cumsum computed as a parallel prefix scan, so it can move by an ulp
  across a zero weight or even dip below its predecessor. The draws therefore do not
  take differences of ``K(cdf)``: particle ``i`` owns the ends ``e_i = K(cdf_i)`` and
  position ``j`` goes to the *first particle with positive weight whose end exceeds
  j*, ``a_j = min{i : w_i > 0, e_i > j}``. Zero-weight particles are never candidates,
  whatever rounding the cumsum made and whatever the positions are (also ``u = 0``),
  and ``a`` is non-decreasing even where the ends are not. The offspring are the
  counts of that same assignment, ``e_i - max{e_k : k < i, w_k > 0}`` clipped at 0
  (positive weights only), so ``bincount(resample(...)) == offspring_counts(...)``.
* ``cdf`` is divided by its value at the last positive weight, and that particle's end
  is forced to ``M``: when a float32 position rounds up to 1, the last draws still go
  to a particle with positive weight, never past it.

The returned ancestors are sorted (a particle's copies are contiguous). That
keeps copies next to their parent, which on a sharded particle axis means most
copies stay on their device; apply a random permutation if an algorithm needs
exchangeable order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from lookahead_jax.particles import weights as _weights

RESAMPLING_METHODS = ("multinomial", "stratified", "systematic", "residual")
METHODS = RESAMPLING_METHODS  # deprecated alias of RESAMPLING_METHODS, kept for existing code


def check_method(method: str) -> None:
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"`method` must be one of {RESAMPLING_METHODS}; got {method!r}.")


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int; got {num_samples!r}.")


# From this length on the prefix scans use ``associative_scan`` (a parallel scan: ~2x
# faster than ``lax.cumsum``/``cummax`` at 10^4 and ~3x at 10^6 on CPU, but ~2x slower
# to compile, and ~2 log2(N) fused kernels where XLA's windowed-reduction lowering of
# ``lax.cumsum`` needs about 7). Below it the kernel count dominates (each kernel is a
# thunk dispatch, a thread hop once the buffers pass 512 bytes), so ``lax.cum*`` it is;
# in whole resampling calls the parallel scans won at 4000 and lost at 1000.
_SCAN_MIN_LENGTH = 1 << 11


# On CPU, below ``_SCAN_MIN_LENGTH``, the scans (and the merge of multinomial and residual
# resampling) run as sequential loops over the elements instead: XLA:CPU compiles a loop
# whose iteration touches a few elements into one kernel (its small-loop hoisting counts
# the bytes one iteration accesses, not the arrays' sizes), a few ns per element and no
# dispatch per step, where ``lax.cumsum`` and friends cost ~5 kernels each (a thunk
# dispatch each, microseconds at these sizes). Measured on 2 cores (experiments/smc_kalman,
# three runs, medians): whole resampling calls 1.11-1.25x faster at N = 100 and 1,000, all
# four methods; at 10^4 sequential scans ran slower than the parallel ones (0.7x, systematic,
# one run: a loop stays at ~4 ns per element). GPUs and TPUs keep the
# parallel forms at every size: ``lax.platform_dependent`` picks at lowering time. Tests
# set this to False to run the accelerators' paths on CPU.
_SEQUENTIAL_ON_CPU = True


def _cpu_or(sequential, parallel, *args):
    """``sequential(*args)`` when lowered for CPU (see :data:`_SEQUENTIAL_ON_CPU`), else
    ``parallel(*args)``; under ``vmap``, ``parallel`` on every platform.

    A sequential loop over a batch of arrays loses what made it fast: each step touches
    ``[B]`` values (a batched index turns reads and writes into gathers and scatters, and a
    batched ``while_loop`` condition into selects over the whole carry). Measured on 2
    cores, 20-1,000 filters x 100-1,000 particles: the merge 1.7-16x slower than the
    binary search, the scan 1.5-1.8x faster at 20-1,000 filters but 2x slower at 400 x
    512 (a column of a row-major batch per step). So a ``vmap`` of it runs the parallel
    form instead; its float sums may round differently from the sequential ones, so a
    batched call can draw differently from the same row alone where an ulp of the cdf
    decides a draw.
    """
    if not _SEQUENTIAL_ON_CPU:
        return parallel(*args)
    # What these paths compute feeds integer counts only, which carry no gradient; stopping
    # it here keeps `grad` through a resampling step working (a `custom_vmap` function has
    # no reverse-mode rule).
    args = tuple(lax.stop_gradient(arg) for arg in args)
    unbatched = custom_vmap(sequential)

    @unbatched.def_vmap
    def _batched(axis_size, in_batched, *args):
        del axis_size
        in_axes = tuple(0 if batched else None for batched in in_batched)
        return jax.vmap(parallel, in_axes=in_axes)(*args), True

    return lax.platform_dependent(*args, cpu=unbatched, default=parallel)


def _sequential_scan(x: jax.Array, op, reverse: bool = False) -> jax.Array:
    """Inclusive scan of ``op`` along axis 0, one element after the other (one loop).

    For ``add`` of non-negative floats the result is non-decreasing and exactly flat at
    zeros (each partial sum adds one non-negative term), unlike a parallel prefix scan.
    """
    n = x.shape[0]
    first = n - 1 if reverse else 0

    def body(step, carry):
        total, out = carry
        i = n - 1 - step if reverse else step
        total = op(total, x[i])
        return total, out.at[i].set(total)

    out = jnp.zeros_like(x).at[first].set(x[first])
    return lax.fori_loop(1, n, body, (x[first], out))[1]


def _prefix_scan(x: jax.Array, op, cumulative, reverse: bool = False) -> jax.Array:
    if x.shape[0] >= _SCAN_MIN_LENGTH:
        return lax.associative_scan(op, x, reverse=reverse)
    return _cpu_or(
        lambda x: _sequential_scan(x, op, reverse),
        lambda x: cumulative(x, axis=0, reverse=reverse),
        x,
    )


def _running_max(x: jax.Array) -> jax.Array:
    """Cumulative maximum along axis 0; exact either way (max never rounds)."""
    return _prefix_scan(x, jnp.maximum, lax.cummax)


def _cumsum(x: jax.Array) -> jax.Array:
    """Inclusive cumulative sum along axis 0 (:data:`_SCAN_MIN_LENGTH`).

    Exact for integers; for floats the two paths may round differently and the result
    can dip by an ulp where a weight is zero or tiny (see the module docstring).
    """
    return _prefix_scan(x, jnp.add, lax.cumsum)


def _reverse_running_min(x: jax.Array) -> jax.Array:
    """``min(x[j:])`` for every j; exact either way."""
    return _prefix_scan(x, jnp.minimum, lax.cummin, reverse=True)


# Counter-mode threefry-2x32 (the 20-round block function of jax.random's default
# PRNG), written out so that XLA fuses it into one elementwise pass: jax.random
# lowers it on CPU as a 5-iteration loop over the whole array, ~3.5x slower at 10^6.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def _threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 of the blocks ``(x0, x1)`` under key ``(k0, k1)`` (uint32 arrays)."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _counter_half(size: int) -> int:
    """Blocks of the counter-mode stream for ``size`` draws: ``size`` rounded up to a
    multiple of 128, halved. XLA:CPU vectorises an elementwise loop only when its length
    divides evenly; an odd length made the fused threefry ~10x slower at 10^6."""
    return -(-size // 128) * 64


def _unit_float32(bits: jax.Array) -> jax.Array:
    """U[0, 1) from the 23 high bits of uint32 ``bits`` (as jax.random.uniform)."""
    one = lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
    return one - 1.0


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words keying this module's threefry stream, derived from ``key``.

    A threefry key's two data words go through one threefry block on a fixed counter
    (domain separation from ``jax.random`` draws under the same key), unrolled into one
    fused scalar kernel; any other key implementation draws the words with jax.random.
    (``jax.random.bits`` would run jax's CPU threefry loop: one dispatch, five copies.)
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if data.shape != (2,) or data.dtype != jnp.uint32:
        words = jax.random.bits(key, (2,), jnp.uint32)
        return words[0], words[1]
    return _threefry2x32(data[0], data[1], np.uint32(0x52455341), np.uint32(0x4D504C45))


def _uniforms(key: jax.Array, size: int, dtype) -> jax.Array:
    """At least ``size`` iid U[0, 1) in ``dtype`` (float32 or float64): ``[P]``, ``P >= size``.

    float32: draw ``j`` is threefry-2x32 in counter mode under :func:`_key_words`:
    block ``j mod H`` gives draws ``j`` and ``j + H``, ``H = P / 2``
    (:func:`_counter_half`). :func:`_uniforms_at` evaluates the same stream at chosen
    indices. Callers slice late or only gather.
    """
    if jnp.dtype(dtype) != jnp.float32:
        return jax.random.uniform(key, (size,), dtype)
    k = _key_words(key)
    half = _counter_half(size)
    counter = lax.iota(jnp.uint32, half)
    high, low = _threefry2x32(k[0], k[1], counter, counter + np.uint32(half))
    return _unit_float32(jnp.concatenate([high, low]))


def _uniforms_at(key: jax.Array, index: jax.Array, size: int, dtype) -> jax.Array:
    """``_uniforms(key, size, dtype)[index]`` for ``index`` in [0, size).

    float32: computed where needed, without materialising the stream (XLA would fuse
    the generator into the gather and run it unvectorised, ~10x slower at 10^6).
    """
    if jnp.dtype(dtype) != jnp.float32:
        return _uniforms(key, size, dtype)[index]
    k = _key_words(key)
    half = _counter_half(size)
    index = index.astype(jnp.uint32)
    upper = index >= np.uint32(half)
    block = jnp.where(upper, index - np.uint32(half), index)
    high, low = _threefry2x32(k[0], k[1], block, block + np.uint32(half))
    return _unit_float32(jnp.where(upper, low, high))


def robust_cdf(w: jax.Array) -> jax.Array:
    """Normalised cdf [N] of non-negative weights ``w [N]`` with at least one positive.

    Monotone, exactly 1 from the last positive weight on, and exactly flat at
    zero weights (see the module docstring).
    """
    c = jnp.where(w > 0, _cumsum(w), 0.0)
    c = _running_max(c)
    return c / c[-1]


def _offspring_from_counts(cdf: jax.Array, below: jax.Array, num_draws: jax.Array | int):
    """Offspring [N] int32 from ``below[i] = K(cdf[i])`` for a monotone ``cdf``
    (:func:`robust_cdf`), forcing ``K(1) = num_draws``."""
    below = jnp.where(cdf >= 1.0, num_draws, below).astype(jnp.int32)
    return jnp.diff(below, prepend=jnp.zeros((1,), jnp.int32))


def _sorted_uniforms(key: jax.Array, size: int, count: jax.Array | int, dtype) -> jax.Array:
    """The first ``count`` of ``size`` slots hold sorted U(0,1) order statistics, the rest 2.

    Order statistics of ``count`` uniforms are ``S_j / S_count`` with ``S`` the
    cumulative sums of ``count + 1`` standard exponentials (O(size), no sort).
    ``count`` may be traced (residual resampling draws a data-dependent number).
    """
    e = -jnp.log1p(-_uniforms(key, size + 1, dtype))  # standard exponentials
    s = _running_max(_cumsum(e))  # a float prefix scan may dip by an ulp
    u = s[:size] / s[count]
    return jnp.where(jnp.arange(size) < count, u, 2.0)


# Rounds of the bucket merge done in one fused pass before the loop takes over: the
# fullest of M Poisson(1) buckets holds more than 12 positions with probability ~6e-5
# at M = 10^6, so the loop almost never runs (and costs one condition when it does not).
_FUSED_ROUNDS = 12


def _count_below(sorted_u: jax.Array, cdf: jax.Array) -> jax.Array:
    """``#{j : u_j < cdf_i}`` for every i, by a bucket merge in expected O(N + M).

    ``sorted_u [M]`` holds sorted positions in [0, 1] followed by inactive entries
    (> 1). Each active position goes to bucket ``floor(u M)``; buckets are contiguous
    because ``u`` is sorted, and since ``x -> floor(fl(x M))`` is monotone, every
    position in a lower bucket than ``cdf_i``'s is below ``cdf_i`` and none in a
    higher one is. So the count is the start of ``cdf_i``'s bucket plus a comparison
    against that bucket's members. Sorted uniforms put Poisson(1)-many positions in
    a bucket, so the fullest bucket holds about ``log M / log log M`` (~10 at M = 10^6):
    the first ``_FUSED_ROUNDS`` member comparisons are unrolled into one fused pass and
    a loop handles any fuller bucket.
    """
    m = sorted_u.shape[0]
    scale = jnp.asarray(m, sorted_u.dtype)
    bucket = jnp.where(sorted_u <= 1.0, jnp.minimum((sorted_u * scale).astype(jnp.int32), m - 1), m)
    sizes = jnp.zeros((m,), jnp.int32).at[bucket].add(1, mode="drop", indices_are_sorted=True)
    starts = _cumsum(sizes) - sizes
    target = jnp.clip((cdf * scale).astype(jnp.int32), 0, m - 1)
    base, size = starts[target], sizes[target]

    def round_(k, count):
        member = sorted_u[jnp.minimum(base + k, m - 1)]
        return count + ((k < size) & (member < cdf))

    fused = min(_FUSED_ROUNDS, m)
    count = base
    for k in range(fused):
        count = round_(k, count)
    rounds = jnp.max(sizes)
    _, count = lax.while_loop(
        lambda c: c[0] < rounds,
        lambda c: (c[0] + 1, round_(c[0], c[1])),
        (jnp.int32(fused), count),
    )
    return count


# Up to this many positions the merge is a binary search: log2 M rounds of one gather
# per cdf entry, where the bucket merge needs a scatter, a scan, the fused rounds and a
# loop, whose kernel count costs more than the extra gathers at small sizes.
_SEARCH_MAX_LENGTH = 1 << 15


def _count_below_search(sorted_u: jax.Array, cdf: jax.Array) -> jax.Array:
    """``#{j : u_j < cdf_i}`` as :func:`_count_below`, by binary search (``log2 M`` rounds).

    ``method="scan"`` runs the rounds as a loop with each round materialised; an
    unrolled search let XLA fuse round k into round k + 1 and recompute it (quadratic).
    """
    return jnp.searchsorted(sorted_u, cdf, side="left", method="scan").astype(jnp.int32)


def _count_below_merge(sorted_u: jax.Array, cdf: jax.Array) -> jax.Array:
    """``#{j : u_j < cdf_i}`` for a non-decreasing ``cdf`` [N]: one sequential merge of the
    two sorted lists (N + M loop trips, one comparison each; the CPU path).

    Each trip writes the count so far at ``i`` and then advances ``j`` past a position
    below ``cdf_i`` or moves on to the next ``i``; the last write at ``i`` is its count.
    """
    n, m = cdf.shape[0], sorted_u.shape[0]

    def body(carry):
        i, j, counts = carry
        counts = counts.at[i].set(j)
        below = (j < m) & (sorted_u[jnp.minimum(j, m - 1)] < cdf[i])
        return jnp.where(below, i, i + 1), jnp.where(below, j + 1, j), counts

    start = (jnp.int32(0), jnp.int32(0), jnp.zeros((n,), jnp.int32))
    return lax.while_loop(lambda carry: carry[0] < n, body, start)[2]


def _merge_counts(sorted_u: jax.Array, cdf: jax.Array) -> jax.Array:
    """``#{j : u_j < cdf_i}`` for sorted positions ``[M]`` and a cdf ``[N]`` from
    :func:`_cdf`: exact per entry, or, on CPU below ``_SCAN_MIN_LENGTH`` particles (where
    :func:`_cdf`'s sequential sum is non-decreasing), by one sequential merge."""

    def parallel(sorted_u, cdf):
        if sorted_u.shape[0] <= _SEARCH_MAX_LENGTH:
            return _count_below_search(sorted_u, cdf)
        return _count_below(sorted_u, cdf)

    if cdf.shape[0] >= _SCAN_MIN_LENGTH or sorted_u.shape[0] > _SEARCH_MAX_LENGTH:
        return parallel(sorted_u, cdf)
    return _cpu_or(_count_below_merge, parallel, sorted_u, cdf)


def _systematic_below(cdf, shift, num_samples):
    # Positions (j + U) / M, j < M: #{j : j + U < c M} = ceil(c M - U), clipped to [0, M].
    return jnp.clip(jnp.ceil(cdf * num_samples - shift), 0, num_samples).astype(jnp.int32)


def _systematic_counts(cdf, shift, num_samples):
    """Offspring [N] for a monotone ``cdf`` (:func:`robust_cdf`)."""
    below = _systematic_below(cdf, shift, num_samples)
    return _offspring_from_counts(cdf, below, num_samples)


def _stratified_below(cdf, shifts, num_samples):
    # Positions (j + U_j) / M: every j < floor(c M) counts, j = floor(c M) counts when
    # U_j < frac(c M), larger j never do. Monotone in c. ``shifts(j)`` gives U_j.
    x = cdf * num_samples
    whole = jnp.clip(jnp.floor(x), 0, num_samples).astype(jnp.int32)
    straddle = shifts(jnp.minimum(whole, num_samples - 1)) < x - whole
    return whole + ((whole < num_samples) & straddle)


def _stratified_counts(cdf, shifts, num_samples):
    """Offspring [N] for a monotone ``cdf`` (:func:`robust_cdf`)."""
    below = _stratified_below(cdf, lambda j: shifts[j], num_samples)
    return _offspring_from_counts(cdf, below, num_samples)


def _cdf(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(cdf [N], last [] int32)``: prefix sums of ``w`` over their value at ``last``.

    ``last`` is the index of the last positive weight, where ``cdf`` is exactly 1. No
    monotonicity repair: the ends built from it are read through :func:`_ancestors`.
    """
    c = _cumsum(w)
    last = jnp.max(jnp.where(w > 0, lax.iota(jnp.int32, w.shape[0]), 0))
    return c / c[last], last


def _force_ends(cdf, below, num_draws, last):
    """Ends ``K(cdf_i)`` as int32, forced to ``num_draws`` at ``cdf >= 1`` and from ``last`` on."""
    done = (cdf >= 1.0) | (lax.iota(jnp.int32, cdf.shape[0]) >= last)
    return jnp.where(done, num_draws, below).astype(jnp.int32)


def _ends(key, log_weights, num_samples, method):
    """``(ends [N] int32, positive [N] bool, degenerate [] bool)`` (module docstring)."""
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
    positive = w > 0
    if method == "residual":
        return _residual(key, w, num_samples), positive, degenerate
    cdf, last = _cdf(w)
    if method == "systematic":
        shift = _uniforms_at(key, jnp.zeros((), jnp.int32), 1, cdf.dtype)
        below = _systematic_below(cdf, shift, num_samples)
    elif method == "stratified":
        shifts = functools.partial(_uniforms_at, key, size=num_samples, dtype=cdf.dtype)
        below = _stratified_below(cdf, shifts, num_samples)
    else:
        u = _sorted_uniforms(key, num_samples, num_samples, cdf.dtype)
        below = _merge_counts(u, cdf)
    return _force_ends(cdf, below, num_samples, last), positive, degenerate


def _residual(key, w, num_samples):
    # Deterministic part floor(M w_i), with M w_i computed as M e_i / S from the
    # max-normalised weights: exact for uniform (and any exactly representable)
    # weights, so uniform weights give the identity and not an ulp-short floor.
    expected = num_samples * w / _weights.total(w)
    whole = jnp.floor(expected).astype(jnp.int32)
    frac = jnp.maximum(expected - whole, 0.0)
    # Rounding could in principle push sum(whole) above M; the excess is then
    # truncated (documented, never observed with float32 weights).
    size = min(num_samples, w.shape[0])
    whole_ends = _cumsum(whole)  # exact: integers
    rest = jnp.clip(num_samples - whole_ends[-1], 0, size)
    has_rest = jnp.any(frac > 0)
    cdf, last = _cdf(jnp.where(has_rest, frac, 1.0))
    u = _sorted_uniforms(key, size, rest, w.dtype)
    extra_ends = _force_ends(cdf, _merge_counts(u, cdf), rest, last)
    return whole_ends + jnp.where(has_rest, extra_ends, 0)


def _ancestors(ends: jax.Array, positive: jax.Array, num_samples: int) -> jax.Array:
    """``a_j = min{i : positive_i, ends_i > j}`` for j < num_samples: [num_samples] int32.

    Particle i marks position ``ends_i - 1`` (the last it can own) with its index and a
    reverse running minimum hands every position to the first candidate at or after it:
    one scatter and one prefix scan, O(N + M), non-decreasing.
    """
    n = ends.shape[0]
    mark = jnp.where(positive & (ends > 0), ends - 1, num_samples)  # num_samples: dropped
    first = jnp.full((num_samples,), n - 1, jnp.int32)
    first = first.at[mark].min(lax.iota(jnp.int32, n), mode="drop")
    return _reverse_running_min(first)


def _offspring(ends: jax.Array, positive: jax.Array, num_samples: int) -> jax.Array:
    """Offspring [N] int32 of the assignment :func:`_ancestors` makes from the same ends."""
    ends = jnp.minimum(ends, num_samples)
    reached = _running_max(jnp.where(positive, ends, 0))
    before = jnp.concatenate([jnp.zeros((1,), jnp.int32), reached[:-1]])
    return jnp.where(positive, jnp.maximum(ends - before, 0), 0)


def offspring_counts(
    key: jax.Array, log_weights: jax.Array, num_samples: int, method: str = "systematic"
) -> tuple[jax.Array, jax.Array]:
    """Number of copies of each particle, and whether the weights were degenerate.

    Args: as :func:`resample`.
    Returns:
      ``(offspring [N] int32 summing to num_samples, degenerate [] bool)``; ``degenerate``
      is set when every log-weight was -inf/NaN and the uniform fallback was used.
    """
    ends, positive, degenerate = _ends(key, log_weights, num_samples, method)
    return _offspring(ends, positive, num_samples), degenerate


def ancestors_from_offspring(offspring: jax.Array, num_samples: int) -> jax.Array:
    """``repeat(arange(N), offspring)`` as [num_samples] int32 (O(N + M), sorted).

    Particle ``i`` writes its index at the start of its block of copies and a
    running maximum fills the block (particles without offspring write nothing).
    Offspring summing past ``num_samples`` are truncated.
    """
    n = offspring.shape[0]
    starts = _cumsum(offspring) - offspring
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
    ends, positive, _ = _ends(key, log_weights, num_samples, method)
    return _ancestors(ends, positive, num_samples)
