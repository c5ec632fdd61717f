"""Regimes, calibration, fingerprints and acceptance tests."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lookahead_jax
from lookahead_jax.extrapolation import (
    CHAOTIC,
    STABLE,
    TRANSITION,
    UNKNOWN,
    RegimeConfig,
    accept,
    calibrate_thresholds,
    classify_regime,
    confirmed_stable,
    cosine_similarity,
    mean_pool,
    model_fingerprint,
    recent_sigma,
    regime_fractions,
    regime_init,
    regime_run,
    regime_step,
)
from lookahead_jax.models import TransformerConfig, init_params
from tests.helpers import count_compilations

LOW, HIGH = 0.99627, 0.99949  # the paper's GPT-2 124M thresholds


def test_classification_at_and_around_the_thresholds():
    low, high = np.float32(LOW), np.float32(HIGH)
    up = lambda x: np.nextafter(x, np.float32(2))
    down = lambda x: np.nextafter(x, np.float32(-2))
    sims = np.array([down(low), low, up(low), 0.998, down(high), high, up(high), 1.0, -1.0])
    want = [CHAOTIC, CHAOTIC, TRANSITION, TRANSITION, TRANSITION, STABLE, STABLE, STABLE, CHAOTIC]
    np.testing.assert_array_equal(classify_regime(sims, low, high), want)
    assert int(classify_regime(jnp.nan, low, high)) == UNKNOWN
    # Equal thresholds: no transition band; the boundary is stable.
    np.testing.assert_array_equal(
        classify_regime(np.array([down(low), low, up(low)]), low, low), [CHAOTIC, STABLE, STABLE]
    )


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="`tau_low` must be <= `tau_high`"):
        classify_regime(0.5, 0.9, 0.1)
    with pytest.raises(ValueError, match="low_percentile"):
        calibrate_thresholds(np.ones(4), 80.0, 20.0)


def test_stable_is_confirmed_after_two_consecutive_readings():
    readings = [UNKNOWN, STABLE, TRANSITION, STABLE, STABLE, STABLE, CHAOTIC, STABLE]
    want = [False, False, False, False, True, True, False, False]
    np.testing.assert_array_equal(confirmed_stable(jnp.array(readings)), want)
    readings = [STABLE, CHAOTIC, STABLE, STABLE, STABLE, TRANSITION, STABLE, UNKNOWN]
    want = [False, False, False, True, True, False, False, False]
    with count_compilations() as count:  # called eagerly again: nothing compiles again
        np.testing.assert_array_equal(confirmed_stable(jnp.array(readings)), want)
    assert count() == 0


@settings(max_examples=20, deadline=None)
@given(
    values=st.lists(st.floats(0.875, 1.0, width=32), min_size=1, max_size=30),
    low=st.floats(0, 50),
    high=st.floats(50, 100),
)
def test_calibration_returns_the_requested_percentiles(values, low, high):
    sims = np.asarray(values, np.float32)
    tau = calibrate_thresholds(sims, low, high)
    np.testing.assert_allclose(
        [tau.tau_low, tau.tau_high], np.percentile(sims, [low, high]), rtol=0, atol=1e-6
    )


def test_calibration_ignores_nan_and_masked_entries():
    sims = np.array([np.nan, 0.2, 0.4, 0.6, 0.8, 5.0], np.float32)
    mask = np.array([True, True, True, True, True, False])
    tau = calibrate_thresholds(sims, 30, 70, mask=mask)
    np.testing.assert_allclose(tau, np.percentile(sims[1:5], [30, 70]), atol=1e-6)
    assert regime_fractions(np.array([STABLE, STABLE, CHAOTIC, UNKNOWN])) == {
        "unknown": 0.25,
        "chaotic": 0.25,
        "transition": 0.0,
        "stable": 0.5,
    }


def test_fingerprint_masks_padding_and_cosine_modes():
    config = TransformerConfig(vocab_size=32, num_layers=1, num_heads=2, d_model=16, max_length=8)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))  # eager: slow
    probes = jnp.array([[3, 4, 5, 6, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14]])
    lengths = jnp.array([4, 8])
    fingerprint = jax.jit(model_fingerprint, static_argnums=0)  # eager op-by-op is slower
    fp = fingerprint(config, params, probes, lengths)
    assert fp.shape == (2, 16)
    # Causal model + masked pool: the padded probe has the fingerprint of the unpadded one.
    alone = fingerprint(config, params, probes[:1, :4], jnp.array([4]))
    np.testing.assert_allclose(fp[0], alone[0], rtol=1e-5, atol=1e-6)
    # Pooling over padding too (the original code) gives something else.
    unmasked = fingerprint(config, params, probes, jnp.array([8, 8]))
    assert not np.allclose(unmasked[0], fp[0], atol=1e-4)
    np.testing.assert_allclose(cosine_similarity(fp, fp), 1.0, rtol=1e-6)
    a = jnp.array([[1.0, 0.0], [0.0, 10.0]])
    b = jnp.array([[1.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b, "per_probe"), 0.5, rtol=1e-6)
    np.testing.assert_allclose(cosine_similarity(a, b, "concat"), 1 / (101**0.5 * 101**0.5))
    np.testing.assert_array_equal(mean_pool(jnp.ones((1, 3, 2)), jnp.zeros((1, 3), bool)), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity(a, b[:1])
    with pytest.raises(ValueError, match="`mode`"):
        cosine_similarity(a, b, "mean")


def test_acceptance_criteria():
    pred = jnp.array([0.9, 1.0, 1.04, 1.06, 0.94, jnp.nan, jnp.inf])
    cur = 1.0
    np.testing.assert_array_equal(
        accept("strict", pred, cur), [True, False, False, False, True, False, False]
    )
    np.testing.assert_array_equal(
        accept("adaptive", pred, cur, sigma=0.05), [True, True, True, False, True, False, False]
    )
    np.testing.assert_array_equal(
        accept("proximity", pred, cur, eps=0.05), [False, True, True, False, False, False, False]
    )
    np.testing.assert_array_equal(
        accept("proximity", jnp.array([0.5, 1.004, 1.006]), cur, eps=0.005, one_sided=True),
        [True, True, False],
    )
    # sigma from recent losses: population std over the usable entries.
    recent = jnp.array([1.0, 1.2, 1.4, jnp.nan])
    sigma = recent_sigma(recent, ~jnp.isnan(recent))
    np.testing.assert_allclose(sigma, np.std([1.0, 1.2, 1.4]), rtol=1e-6)
    got = accept("adaptive", jnp.array([1.16, 1.17]), 1.0, recent_losses=recent[:3])
    np.testing.assert_array_equal(got, [True, False])
    assert float(recent_sigma(jnp.array([3.0]))) == 0.0


def test_acceptance_errors():
    with pytest.raises(ValueError, match="`criterion` must be one of"):
        accept("loose", 1.0, 1.0)
    with pytest.raises(ValueError, match="needs `sigma` or `recent_losses`"):
        accept("adaptive", 1.0, 1.0)
    with pytest.raises(ValueError, match="`sigma` must be >= 0"):
        accept("adaptive", 1.0, 1.0, sigma=-0.1)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        accept("proximity", 1.0, 1.0, eps=-0.1)


CALIBRATED = RegimeConfig(calibration_checks=4, max_checks=8)
REGIME_STEP = jax.jit(chex.assert_max_traces(regime_step, n=1), static_argnames="config")
REGIME_RUN = jax.jit(regime_run, static_argnames="config")


def _drifting_fingerprints(n=8, seed=0):
    """[n, 3, 4] fingerprints drifting by steps of varying size (several regimes)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 4))
    sizes = np.array([0.0, 0.5, 0.2, 0.05, 0.01, 0.01, 0.3, 0.01])[:n]
    walk = np.cumsum(sizes[:, None, None] * rng.normal(size=(n, 3, 4)), axis=0)
    return jnp.asarray(base + walk, jnp.float32)


def test_regime_tracker_matches_the_offline_pipeline():
    fps = _drifting_fingerprints()
    state = regime_init(fps[0], CALIBRATED)
    final, infos = REGIME_RUN(jax.random.key(0), state, fps, config=CALIBRATED)
    sims = np.array(
        [np.nan] + [float(cosine_similarity(a, b)) for a, b in zip(fps[1:], fps[:-1], strict=True)]
    )
    np.testing.assert_allclose(infos.similarity, sims, rtol=1e-6)
    tau = calibrate_thresholds(sims[:4])
    np.testing.assert_allclose(final.thresholds, tau, rtol=1e-6)
    offline = np.asarray(classify_regime(sims, tau.tau_low, tau.tau_high))
    want = np.where(np.arange(8) < 3, UNKNOWN, offline)  # no thresholds before the 4th check
    np.testing.assert_array_equal(infos.regime, want)
    np.testing.assert_array_equal(infos.confirmed, confirmed_stable(jnp.asarray(want)))
    assert int(final.num_checks) == 8 and bool(np.all(infos.finite))
    # The same steps one at a time, compiled once.
    chex.clear_trace_counter()
    state = regime_init(fps[0], CALIBRATED)
    for t in range(8):
        state, info = REGIME_STEP(jax.random.key(t), state, fps[t], config=CALIBRATED)
        assert int(info.regime) == want[t]
    chex.assert_trees_all_close(state, final)


def test_regime_tracker_reports_and_skips_a_nonfinite_fingerprint():
    config = RegimeConfig(tau_low=0.5, tau_high=0.9, max_checks=4)
    fps = _drifting_fingerprints(4).at[2].set(jnp.nan)
    _, infos = REGIME_RUN(None, regime_init(fps[0], config), fps, config=config)
    np.testing.assert_array_equal(infos.finite, [True, True, False, True])
    assert int(infos.regime[2]) == UNKNOWN and np.isnan(infos.similarity[2])
    # The next reading compares with the last finite fingerprint.
    np.testing.assert_allclose(infos.similarity[3], cosine_similarity(fps[3], fps[1]), rtol=1e-6)


def test_regime_config_and_input_errors():
    with pytest.raises(ValueError, match="both be given or both be None"):
        RegimeConfig(tau_high=0.5)
    with pytest.raises(ValueError, match="`tau_low` must be <= `tau_high`"):
        RegimeConfig(tau_low=0.9, tau_high=0.1)
    with pytest.raises(ValueError, match="calibration_checks"):
        RegimeConfig(calibration_checks=9, max_checks=8)
    with pytest.raises(ValueError, match="`similarity_mode` must be one of"):
        RegimeConfig(similarity_mode="mean")
    state = regime_init(jnp.zeros((3, 4)), CALIBRATED)
    with pytest.raises(ValueError, match=r"`fingerprint` must have shape \(3, 4\)"):
        regime_step(None, state, jnp.zeros((3, 5)), CALIBRATED)
    with pytest.raises(ValueError, match=r"`fingerprints` must have shape \[N >= 1, 3, 4\]"):
        regime_run(None, state, jnp.zeros((0, 3, 4)), CALIBRATED)
    with pytest.raises(ValueError, match="must be a RegimeConfig"):
        regime_init(jnp.zeros((3, 4)), {"max_checks": 8})


def test_traced_bad_thresholds_and_sigma_raise_under_checked():
    classify = lookahead_jax.checked(classify_regime)
    np.testing.assert_array_equal(classify(jnp.array([0.2, 0.95]), 0.5, 0.9), [CHAOTIC, STABLE])
    with pytest.raises(
        ValueError, match=r"`tau_low` must be <= `tau_high`; got tau_low=0\.(9|8999)"
    ):
        classify(jnp.array([0.2]), jnp.float32(0.9), jnp.float32(0.1))
    adaptive = lookahead_jax.checked(lambda p, c, sigma: accept("adaptive", p, c, sigma=sigma))
    assert bool(adaptive(1.0, 1.0, jnp.float32(0.1)))
    with pytest.raises(ValueError, match=r"`sigma` must be >= 0; got -0\.1"):
        adaptive(1.0, 1.0, jnp.float32(-0.1))
