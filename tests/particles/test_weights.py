"""ESS bounds and invariances, normalisation, entropy."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax import particles

log_weights = hnp.arrays(
    np.float32, st.sampled_from([1, 5, 16]), elements=st.floats(-30, 30, width=32)
)

ess = jax.jit(particles.ess)


@settings(max_examples=60, deadline=None)
@given(lw=log_weights, shift=st.floats(-50, 50, width=32))
def test_ess_bounds_and_shift_invariance(lw, shift):
    n = lw.shape[0]
    value = float(ess(jnp.asarray(lw)))
    assert 1.0 <= value <= n
    np.testing.assert_allclose(float(ess(jnp.asarray(lw + shift))), value, rtol=1e-5)
    w = np.exp(lw.astype(np.float64) - lw.max())
    w /= w.sum()
    np.testing.assert_allclose(value, 1.0 / np.sum(w**2), rtol=1e-4)


def test_ess_extremes():
    assert float(ess(jnp.zeros(7))) == 7.0
    one_hot = jnp.full((7,), -jnp.inf).at[3].set(2.0)
    assert float(ess(one_hot)) == 1.0
    assert float(ess(jnp.full((5,), -jnp.inf))) == 5.0  # documented uniform fallback
    two = jnp.full((6,), -jnp.inf).at[jnp.array([1, 4])].set(0.0)
    assert float(ess(two)) == 2.0


def test_normalize_and_log_mean_exp():
    lw = jnp.asarray([0.0, jnp.log(3.0), -jnp.inf])
    log_p, degenerate = particles.normalize(lw)
    np.testing.assert_allclose(np.exp(log_p), [0.25, 0.75, 0.0], rtol=1e-6)
    assert not bool(degenerate)
    np.testing.assert_allclose(
        particles.log_mean_exp(jnp.log(jnp.asarray([1.0, 2.0, 6.0]))), np.log(3.0), rtol=1e-6
    )


def test_normalized_entropy():
    assert float(particles.normalized_entropy(jnp.zeros(9))) == 1.0
    np.testing.assert_allclose(
        particles.normalized_entropy(jnp.full((16,), -jnp.inf).at[:4].set(0.0)), 0.5, rtol=1e-6
    )
    assert float(particles.normalized_entropy(jnp.full((4,), -jnp.inf).at[2].set(0.0))) == 0.0
