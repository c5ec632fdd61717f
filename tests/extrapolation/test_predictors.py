"""Predictors: exact on the trajectories they model, on any pytree; momentum is its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax.extrapolation import adam_moments, lawa, predict


def _tree(c):
    """A nested pytree (dict / tuple / list, several shapes) built from coefficient arrays."""
    return {"w": c[0], "b": (c[1], [c[2]]), "scalar": c[3]}


_SHAPES = [(3, 2), (4,), (2, 1, 2), ()]


def _coefficients(rng, low=-8, high=8):
    # Small integers: the trajectory and the predictions are exact in float32.
    return [rng.integers(low, high, size=s).astype(np.float32) for s in _SHAPES]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 64),
    delta=st.sampled_from([1, 2, 4, 8, 16]),
    t=st.integers(0, 5),
)
def test_linear_is_exact_on_linear_trajectories(seed, k, delta, t):
    rng = np.random.default_rng(seed)
    c0, c1 = _coefficients(rng), _coefficients(rng)
    at = lambda step: _tree([a + b * step for a, b in zip(c0, c1, strict=True)])
    history = [at(t * delta), at((t + 1) * delta)]
    got = predict("linear", history, k, delta)
    want = at((t + 1) * delta + k)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 64),
    delta=st.sampled_from([1, 2, 4, 8, 16]),
    t=st.integers(0, 3),
)
def test_quadratic_is_exact_on_quadratic_trajectories(seed, k, delta, t):
    rng = np.random.default_rng(seed)
    c0, c1, c2 = _coefficients(rng), _coefficients(rng), _coefficients(rng, -3, 3)

    def at(step):
        return _tree([a + b * step + c * step**2 for a, b, c in zip(c0, c1, c2, strict=True)])

    history = [at((t + i) * delta) for i in range(3)]
    got = predict("quadratic", history, k, delta)
    want = at((t + 2) * delta + k)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)
    # The linear predictor is not exact there (unless the curvature vanishes).
    lin = predict("linear", history[1:], k, delta)
    curved = any(np.any(c != 0) for c in c2)
    differs = any(
        not np.array_equal(np.asarray(x), y)
        for x, y in zip(jax.tree.leaves(lin), jax.tree.leaves(want), strict=True)
    )
    assert differs == curved


def test_quadratic_on_random_float_trajectory_and_extra_history():
    rng = np.random.default_rng(0)
    c = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    at = lambda s: {"x": c[0] + c[1] * s + c[2] * s**2}
    # Snapshots 0.1 apart in "time" = delta = 10 steps; longer histories use the last three.
    history = [at(s) for s in (-0.9, 0.0, 0.1, 0.2)]
    got = predict("quadratic", history, k=7, delta=10)
    np.testing.assert_allclose(got["x"], at(0.2 + 0.07)["x"], rtol=1e-5, atol=1e-5)


def test_clamped_quadratic_follows_the_original_code():
    older = {"a": jnp.array([0.0, 0.0]), "b": jnp.array([1.0])}
    prev = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([1.0])}
    cur = {"a": jnp.array([2.0, 3.0]), "b": jnp.array([1.5])}
    k, delta = 5, 10
    s = k / delta
    got = predict("quadratic_clamped", [older, prev, cur], k, delta)
    # Leaf a: g = [1, 3], acc = [0, 3], ||acc|| = 3 > 0.5 ||g|| = 0.5 sqrt(10): rescaled.
    g, acc = np.array([1.0, 3.0]), np.array([0.0, 3.0])
    acc = acc * (0.5 * np.linalg.norm(g) / np.linalg.norm(acc))
    np.testing.assert_allclose(got["a"], [2.0, 3.0] + s * g + s * s / 2 * acc, rtol=1e-6)
    # Leaf b: g = 0.5, acc = 0.5 > 0.25: rescaled to 0.25.
    np.testing.assert_allclose(got["b"], [1.5 + s * 0.5 + s * s / 2 * 0.25], rtol=1e-6)
    # Not clamped when small: then it is s g + s^2/2 a, not the exact parabola.
    small = [{"x": jnp.array([0.0])}, {"x": jnp.array([1.0])}, {"x": jnp.array([2.1])}]
    np.testing.assert_allclose(
        predict("quadratic_clamped", small, 10, 10)["x"], [2.1 + 1.1 + 0.5 * 0.1], rtol=1e-6
    )


@pytest.mark.parametrize("sign, factor", [("descent", -1.0), ("paper", 1.0)])
def test_momentum_matches_its_formula(sign, factor):
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, 0.2])}
    opt = optax.adam(1e-3, b1=0.8, b2=0.95)
    state = opt.init(params)
    rng = np.random.default_rng(1)
    for _ in range(3):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        _, state = opt.update(grads, state, params)
    m_hat, v_hat = adam_moments(state, b1=0.8, b2=0.95)
    raw = state[0]
    for name in params:  # bias correction after 3 steps
        np.testing.assert_allclose(m_hat[name], raw.mu[name] / (1 - 0.8**3), rtol=1e-6)
        np.testing.assert_allclose(v_hat[name], raw.nu[name] / (1 - 0.95**3), rtol=1e-6)
    k, lr, c, eps = 7, 0.01, 0.5, 1e-8
    got = predict(
        "momentum", [params], k, 10, moments=(m_hat, v_hat), learning_rate=lr, scale=c, sign=sign
    )
    for name in params:
        m, v = np.asarray(m_hat[name]), np.asarray(v_hat[name])
        want = np.asarray(params[name]) + factor * c * k * lr * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(got[name], want, rtol=1e-6)


def test_lawa_is_the_mean():
    history = [{"x": jnp.full((2,), float(i))} for i in range(4)]
    np.testing.assert_array_equal(lawa(history)["x"], [1.5, 1.5])


def test_dtype_is_kept():
    history = [{"x": jnp.ones((2,), jnp.bfloat16)}, {"x": jnp.full((2,), 2, jnp.bfloat16)}]
    assert predict("linear", history, 4, 4)["x"].dtype == jnp.bfloat16


@pytest.mark.parametrize("k", [0, -3])
def test_nonpositive_k_is_rejected(k):
    history = [{"x": jnp.zeros(2)}] * 3
    with pytest.raises(ValueError, match="`k` must be > 0"):
        predict("linear", history, k, 10)


def test_bad_delta_method_and_short_history_are_rejected():
    one = [{"x": jnp.zeros(2)}]
    with pytest.raises(ValueError, match="`delta` must be > 0"):
        predict("linear", one * 2, 5, 0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        predict("cubic", one * 3, 5, 10)
    with pytest.raises(ValueError, match=r"at least 2 snapshots .* got 1"):
        predict("linear", one, 5, 10)
    with pytest.raises(ValueError, match=r"at least 3 snapshots .* got 2"):
        predict("quadratic", one * 2, 5, 10)
    with pytest.raises(ValueError, match="needs `moments"):
        predict("momentum", one, 5, 10)


def test_mismatched_pytrees_are_rejected():
    with pytest.raises(ValueError, match="structure"):
        predict("linear", [{"x": jnp.zeros(2)}, {"y": jnp.zeros(2)}], 5, 10)
    with pytest.raises(ValueError, match="leaf shapes"):
        predict("linear", [{"x": jnp.zeros(3)}, {"x": jnp.zeros(2)}], 5, 10)
    params = {"x": jnp.zeros(2)}
    with pytest.raises(ValueError, match="moments"):
        predict("momentum", [params], 5, 10, moments=(params, {"x": jnp.zeros(3)}), learning_rate=1)
    with pytest.raises(ValueError, match="ScaleByAdamState"):
        adam_moments(optax.sgd(0.1).init(params))


@pytest.mark.parametrize("jit", [False, True])
def test_float64_parameters_are_extrapolated_in_float64(jit):
    """Exact polynomials in float64: the predictors are exact to ~1e-12 (float32 arithmetic,
    the old behaviour, misses by ~1e-5 here and by 6e-3..5e-2 on larger weights)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        c = [rng.normal(size=(4, 3)) * scale for scale in (300.0, 30.0, 3.0)]
        line = lambda t: {"w": jnp.asarray(c[0] + c[1] * t), "b": (jnp.asarray(c[1][0] * t),)}
        parabola = lambda t: {"w": jnp.asarray(c[0] + c[1] * t + c[2] * t**2)}
        fn = jax.jit(predict, static_argnums=0) if jit else predict
        k, delta = jnp.asarray(7, jnp.int64), 10  # t = step / 100
        for method, at, times in (
            ("linear", line, (1.2, 1.3)),
            ("quadratic", parabola, (1.1, 1.2, 1.3)),
        ):
            got = fn(method, [at(t) for t in times], k, delta)
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(at(1.37)), strict=True):
                assert x.dtype == jnp.float64
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-10)
        m, v = {"w": jnp.asarray(c[1])}, {"w": jnp.asarray(c[2] ** 2)}
        got = predict("momentum", [parabola(1.3)], 7, 10, moments=(m, v), learning_rate=1e-3)
        want = np.asarray(parabola(1.3)["w"]) - 7e-3 * c[1] / (np.abs(c[2]) + 1e-8)
        assert got["w"].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got["w"]), want, rtol=1e-12)


def test_bfloat16_is_computed_in_float32_and_cast_back():
    # The documented policy: narrow floats are extrapolated in float32, returned in their dtype.
    cur = jnp.array([256.0], jnp.bfloat16)
    prev = jnp.array([254.0], jnp.bfloat16)
    got = predict("linear", [{"x": prev}, {"x": cur}], 3, 4)["x"]
    assert got.dtype == jnp.bfloat16
    want = jnp.asarray(256.0 + 0.75 * 2.0, jnp.float32).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_traced_k_and_delta_are_checked_under_checked():
    import lookahead_jax

    history = [{"x": jnp.zeros(2)}, {"x": jnp.ones(2)}]
    fn = lookahead_jax.checked(lambda k, d: predict("linear", history, k, d))
    np.testing.assert_allclose(fn(jnp.int32(2), jnp.int32(4))["x"], [1.5, 1.5])
    with pytest.raises(ValueError, match="`k` must be > 0; got 0"):
        fn(jnp.int32(0), jnp.int32(4))
    with pytest.raises(ValueError, match="`delta` must be > 0; got -1"):
        fn(jnp.int32(2), jnp.int32(-1))
    # Eager: at once.
    with pytest.raises(ValueError, match="`k` must be > 0; got 0"):
        predict("linear", history, jnp.int32(0), 4)
