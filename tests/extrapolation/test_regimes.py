"""Regimes, calibration, fingerprints and acceptance tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax.extrapolation import (
    CHAOTIC,
    STABLE,
    TRANSITION,
    UNKNOWN,
    accept,
    calibrate_thresholds,
    classify_regime,
    confirmed_stable,
    cosine_similarity,
    mean_pool,
    model_fingerprint,
    recent_sigma,
    regime_fractions,
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
