"""Resampling: unbiased offspring, per-method count invariants, float32 edge cases, errors."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax import particles
from lookahead_jax.particles import resampling, weights

N = 8
M = 16
REPLICATES = 4000


@functools.partial(jax.jit, static_argnames=("num_samples",))
def all_methods(key, log_weights, num_samples):
    """Offspring [4, N], ancestors [4, M] and degenerate flags [4], one row per method."""
    rows = [
        (
            *particles.offspring_counts(key, log_weights, num_samples, method),
            particles.resample(key, log_weights, num_samples, method),
        )
        for method in particles.METHODS
    ]
    offspring, degenerate, ancestors = (jnp.stack(x) for x in zip(*rows, strict=True))
    return offspring, ancestors, degenerate


@functools.partial(jax.jit, static_argnames=("num_samples",))
def replicated_counts(keys, log_weights, num_samples):
    """Offspring [4, R, N] over replicate keys [R], one row per method."""
    return jax.vmap(lambda k: all_methods(k, log_weights, num_samples)[0], out_axes=1)(keys)


METHOD_ROW = {method: i for i, method in enumerate(particles.METHODS)}


def _float32_log_weights(values):
    return jnp.log(jnp.asarray(values, jnp.float32))


# Weights with zeros, a dominant particle and tiny ones: each method's edge cases at once.
FIXED_WEIGHTS = np.array([0.0, 0.31, 0.02, 0.0, 0.4, 0.001, 0.269, 0.0])


@pytest.fixture(scope="module")
def fixed_counts():
    w = FIXED_WEIGHTS / FIXED_WEIGHTS.sum()
    keys = jax.random.split(jax.random.key(0), REPLICATES)
    return w, np.asarray(replicated_counts(keys, _float32_log_weights(w), M))


@pytest.mark.parametrize("method", particles.METHODS)
def test_offspring_means_equal_m_times_weights(method, fixed_counts):
    w, counts = fixed_counts
    counts = counts[METHOD_ROW[method]]
    assert (counts.sum(axis=1) == M).all()
    expected = M * w
    # Multinomial standard error; the other methods have no larger variance here.
    tol = 4 * np.sqrt(M * w * (1 - w) / REPLICATES) + 1e-6
    np.testing.assert_array_less(np.abs(counts.mean(axis=0) - expected), tol + 1e-9)
    assert (counts[:, w == 0] == 0).all()
    if method == "systematic":
        assert np.isin(counts - np.floor(expected), [0, 1]).all()
    if method == "residual":
        assert (counts >= np.floor(expected + 1e-6)).all()
    if method == "multinomial":
        # Not a lower-variance scheme in disguise: the variance is the multinomial one.
        np.testing.assert_allclose(counts.var(axis=0), M * w * (1 - w), rtol=0.15, atol=1e-3)


# One shape (12) keeps compilation to one program per num_samples; zeros vary the support.
positive_weights = hnp.arrays(
    np.float64,
    12,
    elements=st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
).filter(lambda w: w.sum() > 0)


@settings(max_examples=40, deadline=None)
@given(w=positive_weights, num_samples=st.sampled_from([7, 16]), seed=st.integers(0, 2**16))
def test_count_invariants(w, num_samples, seed):
    lw = _float32_log_weights(w)
    expected = num_samples * w / w.sum()
    all_offspring, all_ancestors, all_degenerate = all_methods(
        jax.random.key(seed), lw, num_samples
    )
    for method, row in METHOD_ROW.items():
        offspring, ancestors = np.asarray(all_offspring[row]), np.asarray(all_ancestors[row])
        degenerate = all_degenerate[row]
        assert not degenerate
        assert offspring.sum() == num_samples and (offspring >= 0).all()
        np.testing.assert_array_equal(np.bincount(ancestors, minlength=len(w)), offspring)
        assert (np.diff(ancestors) >= 0).all()
        assert (offspring[w == 0] == 0).all(), method
        # float32 rounding of M w_i: allow 1e-3 around the integer boundaries.
        if method == "systematic":
            assert (offspring >= np.floor(expected - 1e-3)).all()
            assert (offspring <= np.ceil(expected + 1e-3)).all()
        if method == "residual":
            assert (offspring >= np.floor(expected - 1e-3)).all()


@pytest.mark.parametrize("n", [1, 5, 13])
def test_uniform_weights_give_identity(n):
    lw = jnp.full((n,), -3.7, jnp.float32)
    for seed in range(5):
        _, ancestors, _ = all_methods(jax.random.key(seed), lw, n)
        for method in ("systematic", "stratified", "residual"):
            np.testing.assert_array_equal(ancestors[METHOD_ROW[method]], np.arange(n))


def test_zero_weights_never_picked_when_float32_cdf_ends_below_one():
    # 997 random float32 weights + trailing zeros: the plain float32 cumsum of the
    # normalised weights ends an ulp away from 1, and positions near 1 must not fall
    # through to the zero-weight tail. Also interleaved zeros inside.
    rng = np.random.default_rng(0)
    w = rng.exponential(size=1000).astype(np.float32)
    w[::7] = 0.0
    w[-3:] = 0.0
    normalised = w / w.sum()
    assert np.cumsum(normalised, dtype=np.float32)[-1] != 1.0  # the hazard is real
    lw = jnp.log(jnp.asarray(normalised))
    zero = w == 0
    keys = jax.random.split(jax.random.key(1), 50)
    counts = np.asarray(replicated_counts(keys, lw, 1000))
    assert counts.shape == (4, 50, 1000)
    assert (counts[:, :, zero] == 0).all()


def test_extreme_positions_never_pick_zero_weights():
    # Leading, interleaved and trailing zeros; positions at exactly 0 and just below 1.
    w = jnp.asarray([0.0, 0.0, 0.3, 0.0, 0.7, 0.0, 0.0], jnp.float32)
    zero = np.asarray(w) == 0
    below_one = np.nextafter(np.float32(1), np.float32(0))

    @jax.jit
    def counts_at(shift, u):
        cdf = resampling.robust_cdf(w)
        below = resampling._count_below(u, cdf)
        return (
            resampling._systematic_counts(cdf, shift, 10),
            resampling._stratified_counts(cdf, jnp.full((10,), shift), 10),
            resampling._offspring_from_counts(cdf, below, 6),
        )

    # Sorted positions at exactly 0 and exactly 1 (a float32 rounding of S_j / S_M).
    u = jnp.asarray([0.0, 0.0, 0.3, 0.5, 1.0, 1.0], jnp.float32)
    for shift in (0.0, below_one):
        sys, strat, counts = (np.asarray(c) for c in counts_at(jnp.float32(shift), u))
        for c in (sys, strat):
            assert c.sum() == 10 and (c[zero] == 0).all()
    # u < 0.3 twice; 0.3 itself, 0.5 and the two 1.0 go to particle 4.
    np.testing.assert_array_equal(counts, [0, 0, 2, 0, 4, 0, 0])


def test_count_below_matches_searchsorted():
    rng = np.random.default_rng(3)
    u = np.concatenate([np.sort(rng.uniform(size=450)), np.full(50, 2.0)]).astype(np.float32)
    u[:20] = 0.0  # ties at 0, as a float32 S_j / S_M can give; inactive tail as in residual
    cdf = np.sort(rng.uniform(size=300)).astype(np.float32)
    cdf[:3] = u[100]  # ties between a cdf entry and a position
    np.testing.assert_array_equal(
        jax.jit(resampling._count_below)(u, cdf), np.searchsorted(u, cdf, side="left")
    )


def test_running_max_paths_agree():
    # Short arrays use lax.cummax, long ones associative_scan: both must be exact.
    x = jax.random.normal(jax.random.key(5), (resampling._SCAN_MIN_LENGTH,))
    long = jax.jit(resampling._running_max)(x)
    short = jax.jit(resampling._running_max)(x[:1000])
    np.testing.assert_array_equal(long, np.maximum.accumulate(np.asarray(x)))
    np.testing.assert_array_equal(short, np.maximum.accumulate(np.asarray(x[:1000])))


def test_undefined_weights_fall_back_to_uniform_and_flag():
    lw = jnp.full((5,), -jnp.inf, jnp.float32).at[1].set(jnp.nan)
    offspring, ancestors, degenerate = all_methods(jax.random.key(0), lw, 5)
    assert bool(degenerate.all())
    for method in ("systematic", "stratified", "residual"):
        np.testing.assert_array_equal(ancestors[METHOD_ROW[method]], np.arange(5))
    # NaN is weight zero when some weight is defined; +inf particles share all the mass.
    lw = jnp.asarray([jnp.nan, 0.0, jnp.inf, -1.0, jnp.inf], jnp.float32)
    offspring, _, degenerate = all_methods(jax.random.key(0), lw, 10)
    assert not bool(degenerate.any())
    np.testing.assert_array_equal(offspring[METHOD_ROW["residual"]], [0, 0, 5, 0, 5])
    np.testing.assert_array_equal(offspring[METHOD_ROW["systematic"]], [0, 0, 5, 0, 5])


BF16_N = 512  # a bfloat16 cumsum of weights ~1 stops growing at 256: the hazard is real
BF16_REPLICATES = 400


def test_bfloat16_log_weights_give_unbiased_counts_and_ess():
    """bfloat16 log-weights: weights and cdf accumulate in float32, so the counts are unbiased.

    The expectation is exact: M w_i with w the softmax of the bfloat16 values computed in
    float64. Each mean count over R keys has standard error at most sqrt(M w (1 - w) / R)
    (multinomial; the other methods have less variance here); 6 standard errors over
    512 particles has a false-alarm rate < 1e-6. Accumulating in bfloat16 (the old
    code) missed by 46 to 113 standard errors, and its ESS by 0.7%.
    """
    lw = (0.5 * jax.random.normal(jax.random.key(0), (BF16_N,))).astype(jnp.bfloat16)
    w = np.exp(np.asarray(lw, np.float64))
    w /= w.sum()
    keys = jax.random.split(jax.random.key(1), BF16_REPLICATES)
    counts = np.asarray(replicated_counts(keys, lw, BF16_N), np.float64)  # [4, R, N]
    stderr = np.sqrt(BF16_N * w * (1 - w) / BF16_REPLICATES)
    for method, row in METHOD_ROW.items():
        assert (counts[row].sum(axis=1) == BF16_N).all()
        z = np.abs(counts[row].mean(axis=0) - BF16_N * w) / stderr
        assert z.max() < 6.0, (method, z.max())
    ess = particles.ess(lw)
    assert ess.dtype == jnp.float32
    np.testing.assert_allclose(float(ess), 1.0 / np.sum(w**2), rtol=1e-4)


def test_errors():
    lw = jnp.zeros((4,))
    with pytest.raises(ValueError, match="`method` must be one of"):
        particles.resample(jax.random.key(0), lw, 4, "killing")
    with pytest.raises(ValueError, match=r"`log_weights` must have rank 1.*\(2, 2\)"):
        particles.resample(jax.random.key(0), jnp.zeros((2, 2)), 4)
    with pytest.raises(ValueError, match="`log_weights` must be a floating array"):
        particles.resample(jax.random.key(0), jnp.zeros((4,), jnp.int32), 4)
    with pytest.raises(ValueError, match="`num_samples` must be a positive int; got 0"):
        particles.resample(jax.random.key(0), lw, 0)
    with pytest.raises(ValueError, match="`num_samples` must be a positive int; got 0"):
        particles.offspring_counts(jax.random.key(0), lw, 0, "residual")
    # N = 0 particles: a clear error naming the argument, not an XLA traceback.
    for method in particles.METHODS:
        with pytest.raises(ValueError, match=r"`log_weights` must hold at least one particle"):
            particles.resample(jax.random.key(0), jnp.zeros((0,)), 4, method)


# ---- Size regimes (issue #18): each static size path obeys the same laws and, where the
# arithmetic is the same, draws the same ancestors from the same key.


def test_threefry_block_matches_known_answers():
    # Random123's known-answer vectors for threefry-2x32 with 20 rounds (also jax's tests).
    cases = [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, block, expected in cases:
        k0, k1 = (jnp.uint32(v) for v in key)
        x0, x1 = (jnp.asarray([v], jnp.uint32) for v in block)
        out = resampling._threefry2x32(k0, k1, x0, x1)
        assert [int(o[0]) for o in out] == list(expected)


@pytest.mark.parametrize("size", [1, 7, 300, 5000])
def test_uniforms_at_reads_the_materialised_stream(size):
    key = jax.random.key(3)
    stream = np.asarray(resampling._uniforms(key, size, jnp.float32))
    assert stream.shape[0] >= size and stream.shape[0] % 128 == 0
    index = jnp.asarray(np.random.default_rng(0).integers(0, size, 64), jnp.int32)
    at = resampling._uniforms_at(key, index, size, jnp.float32)
    np.testing.assert_array_equal(at, stream[np.asarray(index)])
    assert ((stream >= 0) & (stream < 1)).all()


def test_uniforms_are_uniform_and_key_dependent():
    draws = np.asarray(resampling._uniforms(jax.random.key(0), 200_000, jnp.float32))
    # Mean and variance of U[0, 1) within ~5 standard errors; deciles within 5 sigma.
    assert abs(draws.mean() - 0.5) < 5 * np.sqrt(1 / 12 / draws.size)
    assert abs(draws.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / draws.size)
    deciles = np.bincount((draws * 10).astype(int), minlength=10) / draws.size
    np.testing.assert_allclose(deciles, 0.1, atol=5 * np.sqrt(0.09 / draws.size))
    other = np.asarray(resampling._uniforms(jax.random.key(1), 1000, jnp.float32))
    assert not np.array_equal(draws[:1000], other)


@pytest.mark.parametrize("m", [1, 5, 64, 450, 5000])
def test_count_below_search_matches_bucket_merge_and_searchsorted(m):
    rng = np.random.default_rng(m)
    active = max(m - m // 10, 1)
    u = np.concatenate([np.sort(rng.uniform(size=active)), np.full(m - active, 2.0)])
    u = u.astype(np.float32)
    u[: min(3, active)] = 0.0  # ties at 0
    cdf = np.sort(rng.uniform(size=300)).astype(np.float32)
    cdf[:2] = u[active // 2]  # a cdf entry equal to a position
    cdf[-1] = 1.0
    expected = np.searchsorted(u, cdf, side="left")
    np.testing.assert_array_equal(jax.jit(resampling._count_below_search)(u, cdf), expected)
    np.testing.assert_array_equal(jax.jit(resampling._count_below)(u, cdf), expected)


def test_ancestors_and_offspring_from_non_monotone_ends():
    # Ends as a float32 prefix scan can produce them: a dip (0 -> 1) and a zero-weight
    # particle (2) past its predecessor. Position j goes to the first positive particle
    # whose end exceeds j; the offspring count exactly that assignment.
    ends = jnp.asarray([3, 2, 5, 5, 4, 8], jnp.int32)
    positive = jnp.asarray([True, True, False, True, True, True])
    ancestors = resampling._ancestors(ends, positive, 8)
    offspring = resampling._offspring(ends, positive, 8)
    np.testing.assert_array_equal(ancestors, [0, 0, 0, 3, 3, 5, 5, 5])
    np.testing.assert_array_equal(offspring, [3, 0, 0, 2, 0, 3])
    np.testing.assert_array_equal(np.bincount(ancestors, minlength=6), offspring)


def test_one_reduction_weights_match_the_sanitize_formula():
    inf, nan = np.inf, np.nan
    cases = [
        [0.0, 1.0, -2.0],
        [-inf, -inf],
        [nan, -inf],
        [nan, 0.0, inf, -1.0, inf],
        [inf],
        [-inf, 3.0, nan],
        [-1000.0, 0.0],
    ]
    for values in cases:
        for dtype in (jnp.float32, jnp.bfloat16):
            lw = jnp.asarray(values, dtype)
            w, flag = resampling._weights.unnormalised_weights(lw)
            sanitized, flag_ref = weights.sanitize(weights.widen(lw))
            w_ref = jnp.exp(sanitized - jnp.max(sanitized))
            assert w.dtype == w_ref.dtype
            np.testing.assert_array_equal(w, w_ref)
            assert bool(flag) == bool(flag_ref)


@pytest.fixture
def large_size_paths(monkeypatch):
    """Every size takes the large-N code paths (parallel scans, bucket merge, per-index
    shifts): the law tests then cover them at sizes that compile quickly."""
    monkeypatch.setattr(resampling, "_SCAN_MIN_LENGTH", 1)
    monkeypatch.setattr(resampling, "_SEARCH_MAX_LENGTH", 0)


def _fresh_counts(keys, log_weights, num_samples):
    # A new function object (and no inner jit), so tracing sees the patched thresholds.
    def counts(keys, log_weights):
        row = lambda k: all_methods.__wrapped__(k, log_weights, num_samples)[0]
        return jax.vmap(row, out_axes=1)(keys)

    return jax.jit(counts)(keys, log_weights)


def _check_laws_on_fixed_weights():
    """Every method's laws on FIXED_WEIGHTS, traced afresh (under the patched paths)."""
    w = FIXED_WEIGHTS / FIXED_WEIGHTS.sum()
    keys = jax.random.split(jax.random.key(0), REPLICATES)
    counts = np.asarray(_fresh_counts(keys, _float32_log_weights(w), M))
    tol = 4 * np.sqrt(M * w * (1 - w) / REPLICATES) + 1e-6
    for method, row in METHOD_ROW.items():
        assert (counts[row].sum(axis=1) == M).all(), method
        assert (counts[row][:, w == 0] == 0).all(), method
        np.testing.assert_array_less(np.abs(counts[row].mean(axis=0) - M * w), tol + 1e-9)
    systematic = counts[METHOD_ROW["systematic"]]
    assert np.isin(systematic - np.floor(M * w), [0, 1]).all()
    assert (counts[METHOD_ROW["residual"]] >= np.floor(M * w + 1e-6)).all()


def test_large_size_paths_keep_the_laws(large_size_paths):
    _check_laws_on_fixed_weights()


def test_large_size_paths_identity_and_invariants(large_size_paths):
    for n in (1, 13):
        lw = jnp.full((n,), -3.7, jnp.float32)
        _, ancestors, _ = jax.jit(lambda k, lw, n=n: all_methods.__wrapped__(k, lw, n))(
            jax.random.key(0), lw
        )
        for method in ("systematic", "stratified", "residual"):
            np.testing.assert_array_equal(ancestors[METHOD_ROW[method]], np.arange(n))
    rng = np.random.default_rng(1)
    w = rng.exponential(size=40) * (rng.uniform(size=40) < 0.7)
    w[5] = 1.0
    lw = _float32_log_weights(w)
    offspring, ancestors, _ = jax.jit(lambda k, lw: all_methods.__wrapped__(k, lw, 33))(
        jax.random.key(2), lw
    )
    for row in METHOD_ROW.values():
        o, a = np.asarray(offspring[row]), np.asarray(ancestors[row])
        assert o.sum() == 33 and (o[w == 0] == 0).all() and (np.diff(a) >= 0).all()
        np.testing.assert_array_equal(np.bincount(a, minlength=40), o)


def test_search_and_bucket_paths_draw_the_same_ancestors(monkeypatch):
    # Same scans, so the same cdf and positions: the binary search and the bucket merge
    # count exactly, and stratified shifts are the same stream either way.
    rng = np.random.default_rng(4)
    w = rng.exponential(size=300) * (rng.uniform(size=300) < 0.8)
    lw = _float32_log_weights(w)

    def draw(n):
        return jax.jit(lambda k, lw: all_methods.__wrapped__(k, lw, n))(jax.random.key(7), lw)

    for num_samples in (100, 700):
        small = draw(num_samples)
        monkeypatch.setattr(resampling, "_SEARCH_MAX_LENGTH", 0)
        large = draw(num_samples)
        monkeypatch.undo()
        for a, b in zip(small, large, strict=True):
            np.testing.assert_array_equal(a, b)


def test_scan_paths_draw_the_same_ancestors_for_exact_sums(monkeypatch):
    # Dyadic weights sum exactly in float32, so the windowed and the parallel scan give the
    # same cdf, and systematic/stratified the same ancestors from the same key.
    w = np.asarray([3, 0, 1, 5, 0, 0, 2, 7, 1, 0, 4, 1] * 5, np.float64) / 64
    lw = _float32_log_weights(w)

    def draw():
        return jax.jit(lambda k, lw: all_methods.__wrapped__(k, lw, 50))(jax.random.key(9), lw)

    small = draw()
    monkeypatch.setattr(resampling, "_SCAN_MIN_LENGTH", 1)
    large = draw()
    for method in ("systematic", "stratified"):
        row = METHOD_ROW[method]
        np.testing.assert_array_equal(small[1][row], large[1][row])
        np.testing.assert_array_equal(small[0][row], large[0][row])


@pytest.fixture
def windowed_paths(monkeypatch):
    """The small-size paths GPUs and TPUs take (windowed scans, binary search) on CPU too."""
    monkeypatch.setattr(resampling, "_SEQUENTIAL_ON_CPU", False)


def test_windowed_paths_keep_the_laws(windowed_paths):
    _check_laws_on_fixed_weights()


def test_sequential_and_windowed_paths_draw_the_same_ancestors(monkeypatch):
    # Dyadic weights sum exactly either way, so both give the same cdf; the sequential
    # merge and the binary search count exactly: every method draws the same ancestors.
    w = np.asarray([3, 0, 1, 5, 0, 0, 2, 7, 1, 0, 4, 1] * 5, np.float64) / 64
    lw = _float32_log_weights(w)

    def draw(num_samples):
        fn = lambda k, lw: all_methods.__wrapped__(k, lw, num_samples)
        return jax.jit(fn)(jax.random.key(9), lw)

    for num_samples in (17, 150):
        sequential = draw(num_samples)
        monkeypatch.setattr(resampling, "_SEQUENTIAL_ON_CPU", False)
        windowed = draw(num_samples)
        monkeypatch.undo()
        for a, b in zip(sequential, windowed, strict=True):
            np.testing.assert_array_equal(a, b)


def test_cpu_resampling_runs_its_loops_as_single_kernels():
    # The sequential paths are fast on CPU only because XLA compiles each loop into one
    # kernel (a call marked as a small loop) instead of dispatching every step.
    lw = jnp.zeros((100,), jnp.float32)
    for method in particles.METHODS:
        fn = jax.jit(lambda k, lw, method=method: particles.resample(k, lw, 100, method))
        text = fn.lower(jax.random.key(0), lw).compile().as_text()
        assert "xla_cpu_small_call" in text, method


def test_vmap_runs_the_parallel_paths_and_grad_flows_through_a_step(monkeypatch):
    # A batched sequential loop is slow on CPU, so under vmap the parallel paths run: the
    # sequential prefix scans (behind `custom_vmap`, whose rule batches the parallel ones)
    # are gone from the batched program.
    keys = jax.random.split(jax.random.key(3), 5)
    lw = jax.random.normal(jax.random.key(4), (5, 40)).at[:, ::3].set(-jnp.inf)
    draw = functools.partial(particles.resample, num_samples=30, method="systematic")
    unbatched, vmapped = (
        jax.make_jaxpr(draw)(keys[0], lw[0]),
        jax.make_jaxpr(jax.vmap(draw))(keys, lw),
    )
    assert "custom_vmap_call" in str(unbatched) and "scan" in str(unbatched)
    assert "custom_vmap_call" not in str(vmapped) and "scan" not in str(vmapped)
    batched = jax.jit(jax.vmap(draw))(keys, lw)
    for row in range(5):
        monkeypatch.setattr(resampling, "_SEQUENTIAL_ON_CPU", False)
        alone = jax.jit(draw)(keys[row], lw[row])  # the parallel path, one row
        monkeypatch.undo()
        np.testing.assert_array_equal(batched[row], alone)

    # Gradients reach the particles through the drawn ancestors (the draw itself has none).
    values = jnp.arange(8.0)

    def loss(theta):
        ancestors = particles.resample(jax.random.key(0), theta * values, 8, "multinomial")
        return jnp.sum((theta * values)[ancestors]), ancestors

    grad, ancestors = jax.jit(jax.grad(loss, has_aux=True))(0.3)
    np.testing.assert_allclose(grad, np.sum(np.asarray(values)[np.asarray(ancestors)]))


def test_sequential_merge_counts_positions_below_each_entry():
    rng = np.random.default_rng(3)
    u = np.concatenate([np.sort(rng.uniform(size=450)), np.full(50, 2.0)]).astype(np.float32)
    u[:20] = 0.0  # ties at 0; an inactive tail as in residual resampling
    cdf = np.sort(rng.uniform(size=300)).astype(np.float32)
    cdf[:3] = u[100]  # ties between a cdf entry and a position
    cdf[-5:] = 1.0
    cdf = np.sort(cdf)  # the merge needs a non-decreasing cdf (as _cdf's sequential sum)
    np.testing.assert_array_equal(
        jax.jit(resampling._count_below_merge)(u, cdf), np.searchsorted(u, cdf, side="left")
    )


def test_float64_log_weights_keep_the_invariants():
    with jax.enable_x64(True):
        w = np.asarray([0.0, 0.2, 0.5, 0.0, 0.3])
        lw = jnp.log(jnp.asarray(w, jnp.float64))
        # One compiled program (eager calls compile every operation on its own).
        all_offspring, all_ancestors, _ = all_methods(jax.random.key(0), lw, 9)
        for offspring, ancestors in zip(all_offspring, all_ancestors, strict=True):
            assert offspring.sum() == 9 and (np.asarray(offspring)[w == 0] == 0).all()
            np.testing.assert_array_equal(np.bincount(ancestors, minlength=5), offspring)


def test_every_key_implementation_drives_the_stream():
    # Typed threefry keys, raw uint32[2] keys and other implementations (rbg: 4 words,
    # drawn through jax.random) all give valid, key-dependent draws.
    w = np.asarray([0.0, 0.2, 0.5, 0.0, 0.3])
    lw = _float32_log_weights(w)
    keys = [jax.random.key(0), jax.random.PRNGKey(0), jax.random.key(0, impl="rbg")]
    for key in keys:
        words = [int(x) for x in resampling._key_words(key)]
        other = jax.random.split(key)[1]
        assert words != [int(x) for x in resampling._key_words(other)]
        all_offspring, all_ancestors, _ = all_methods(key, lw, 9)  # one program per key type
        for offspring, ancestors in zip(all_offspring, all_ancestors, strict=True):
            assert offspring.sum() == 9 and (np.asarray(offspring)[w == 0] == 0).all()
            np.testing.assert_array_equal(np.bincount(ancestors, minlength=5), offspring)
