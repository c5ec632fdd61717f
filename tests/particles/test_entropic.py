"""Entropic annealing: the spec's check values, the gate, tempered resampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import particles

temperature = jax.jit(
    particles.entropic_temperature, static_argnames=("schedule", "ess_threshold", "early_phase")
)


def _equal_weights(n, support):
    """log-weights with `support` equal particles out of n: ESS = support, H_n = log s / log n."""
    return jnp.full((n,), -jnp.inf).at[:support].set(0.0)


def test_schedule_check_values():
    T = particles.schedule_temperature
    np.testing.assert_allclose(T("ess", 0.2, 0.0, 0.2), 4.0, rtol=1e-6)
    np.testing.assert_allclose(T("ess", 0.5, 0.0, 0.8), 1.0, rtol=1e-6)
    np.testing.assert_allclose(T("entropy", 0.0, 0.5, 0.3), 1 / 0.65, rtol=1e-6)
    np.testing.assert_allclose(T("entropy", 0.0, 1.0, 0.3), 1.0, rtol=1e-6)
    np.testing.assert_allclose(T("base", 0.0, 0.0, 0.5, v_max=2.0), 1.5, rtol=1e-6)
    np.testing.assert_allclose(T("base", 0.0, 0.0, 0.5, v_max=0.8), 1.0, rtol=1e-6)
    assert float(T("none", 0.01, 0.0, 0.0)) == 1.0


def test_entropic_temperature_from_weights():
    # r = ESS / N = 1 / 5 = 0.2, progress 0.2: ESS schedule fires, T = 0.8 / 0.2.
    one_of_five = _equal_weights(5, 1)
    np.testing.assert_allclose(temperature(one_of_five, 0.2, schedule="ess"), 4.0, rtol=1e-6)
    # 4 equal of 16: r = 0.25 < 0.5 and H_n = 0.5; progress 0.3 -> T = 1 / 0.65.
    four_of_sixteen = _equal_weights(16, 4)
    np.testing.assert_allclose(
        temperature(four_of_sixteen, 0.3, schedule="entropy"),
        1 / 0.65,
        rtol=1e-6,
    )
    # BASE at progress 0.5 needs an early phase that includes 0.5.
    np.testing.assert_allclose(
        temperature(one_of_five, 0.5, schedule="base", early_phase=0.6),
        1.5,
        rtol=1e-6,
    )
    # The gate: late (progress >= early_phase) or healthy (r >= ess_threshold) gives 1.
    for schedule in ("ess", "entropy", "base"):
        assert float(temperature(one_of_five, 0.5, schedule=schedule)) == 1.0
        two_of_four = _equal_weights(4, 2)  # r = 0.5, not < 0.5
        assert float(temperature(two_of_four, 0.1, schedule=schedule)) == 1.0
        assert float(temperature(jnp.zeros(6), 0.0, schedule=schedule)) == 1.0


def test_tempering_spreads_the_resampled_set():
    # An overconfident weight: untempered systematic resampling keeps mostly one particle;
    # tempered by T = 4 the others survive (the point of ePF).
    lw = jnp.asarray([4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    t = temperature(lw, 0.0, schedule="ess")
    assert float(t) > 1.0
    resample = jax.jit(functools.partial(particles.adaptive_resample, resample_threshold=1.0))
    plain = resample(jax.random.key(0), lw, selection_log_weights=lw)
    tempered = resample(jax.random.key(0), lw, selection_log_weights=lw / t)
    assert len(set(np.asarray(tempered.ancestors).tolist())) > len(
        set(np.asarray(plain.ancestors).tolist())
    )


def test_bfloat16_entropy_and_temperature_accumulate_in_float32():
    lw = (0.5 * jax.random.normal(jax.random.key(0), (512,))).astype(jnp.bfloat16)
    wide = lw.astype(jnp.float32)
    entropy = particles.normalized_entropy(lw)
    assert entropy.dtype == jnp.float32
    np.testing.assert_allclose(entropy, particles.normalized_entropy(wide), rtol=1e-6)
    collapsed = jnp.asarray([4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    t = particles.entropic_temperature(collapsed.astype(jnp.bfloat16), 0.1, schedule="entropy")
    assert t.dtype == jnp.bfloat16  # the caller's dtype comes back
    want = particles.entropic_temperature(collapsed, 0.1, schedule="entropy")
    np.testing.assert_allclose(float(t), float(want), rtol=1e-2)


def test_errors():
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        particles.entropic_temperature(jnp.zeros(4), 0.1, schedule="linear")
    with pytest.raises(ValueError, match="`log_weights` must have rank 1"):
        particles.entropic_temperature(jnp.zeros((2, 2)), 0.1, schedule="ess")
