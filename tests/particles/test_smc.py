"""Adaptive resampling without branches, the generic SMC step, degenerate weights."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import particles

N = 8


@jax.jit
def adaptive(key, log_weights, resample_threshold):
    return particles.adaptive_resample(
        key, log_weights, resample_threshold=resample_threshold, method="systematic"
    )


def test_adaptive_resampling_flag():
    key = jax.random.key(0)
    uniform = jnp.zeros(N)
    out = adaptive(key, uniform, 0.5)
    assert not bool(out.resampled) and float(out.ess) == N
    np.testing.assert_array_equal(out.ancestors, np.arange(N))
    np.testing.assert_array_equal(out.log_weights, uniform)
    # Weight on one particle only: ESS = 1 < 0.5 N, every ancestor is that particle.
    one_hot = jnp.full((N,), -jnp.inf).at[5].set(0.0)
    out = adaptive(key, one_hot, 0.5)
    assert bool(out.resampled) and float(out.ess) == 1.0
    np.testing.assert_array_equal(out.ancestors, np.full(N, 5))
    np.testing.assert_array_equal(out.log_weights, np.zeros(N))
    # Threshold 0 never resamples, even a collapsed set.
    out = adaptive(key, one_hot, 0.0)
    assert not bool(out.resampled)
    np.testing.assert_array_equal(out.ancestors, np.arange(N))
    # ESS just above / below the threshold: two equal particles give ESS = 2 = 0.25 N.
    two = jnp.full((N,), -jnp.inf).at[jnp.array([2, 6])].set(1.0)
    assert not bool(adaptive(key, two, 0.25).resampled)
    assert bool(adaptive(key, two, 0.26).resampled)


def test_degenerate_weights_are_flagged_and_reset():
    out = adaptive(jax.random.key(0), jnp.full((N,), jnp.nan), 0.0)
    assert bool(out.degenerate) and bool(out.resampled)
    np.testing.assert_array_equal(out.log_weights, np.zeros(N))
    np.testing.assert_array_equal(out.ancestors, np.arange(N))


def _random_walk(key, x):
    """Move by N(0, 1), weight by a N(0, 1) observation of 0 (NaN for the last particle)."""
    x = x + jax.random.normal(key, x.shape)
    log_g = -0.5 * x[:, 0] ** 2
    return x, log_g.at[-1].set(jnp.nan)


@functools.partial(jax.jit, static_argnames=("method",))
@chex.assert_max_traces(n=len(particles.METHODS))
def _step(key, state, method):
    return particles.step(key, state, _random_walk, resample_threshold=0.9, method=method)


@pytest.mark.parametrize("method", ["systematic", "residual"])
def test_step_compiles_once_and_stays_finite(method):
    state = particles.init(jnp.zeros((N, 2)))
    keys = jax.random.split(jax.random.key(1), 6)
    total = 0.0
    for key in keys:
        state, info = _step(key, state, method)
        total += float(info.log_likelihood_increment)
        assert np.isfinite(np.asarray(state.particles)).all()
        assert np.isfinite(float(info.log_likelihood_increment))
        # The NaN increment is weight zero: the last particle is never an ancestor
        # after a resampling step unless it was carried (ancestor = itself) unresampled.
        assert float(state.log_weights[-1]) == -np.inf
        if bool(info.resampled):
            assert (np.asarray(info.ancestors) != N - 1).all()
    np.testing.assert_allclose(float(state.log_likelihood), total, rtol=1e-5)


def test_step_increment_is_the_weighted_mean_of_the_incremental_weights():
    # Without resampling, increment = log sum_i wbar_i g_i with wbar the incoming weights.
    lw = jnp.log(jnp.asarray([0.1, 0.2, 0.3, 0.4]))
    g = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    state = particles.init(jnp.zeros((4, 1)), lw)

    def propagate(key, x):
        return x, jnp.log(g)

    new, info = particles.step(
        jax.random.key(0), state, propagate, resample_threshold=0.0, method="stratified"
    )
    np.testing.assert_allclose(float(info.log_likelihood_increment), np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(new.log_weights, lw + jnp.log(g), rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="leading"):
        particles.init({"a": jnp.zeros((4, 2)), "b": jnp.zeros((3,))})
    with pytest.raises(ValueError, match=r"`log_weights` must have shape \(4,\)"):
        particles.init(jnp.zeros((4, 2)), jnp.zeros(5))
    state = particles.init(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"increments of shape \(4,\)"):
        particles.step(jax.random.key(0), state, lambda k, x: (x, jnp.zeros(3)))
    with pytest.raises(ValueError, match="resample_threshold"):
        particles.adaptive_resample(jax.random.key(0), jnp.zeros(4), resample_threshold=1.5)
    with pytest.raises(ValueError, match="selection_log_weights"):
        particles.adaptive_resample(
            jax.random.key(0), jnp.zeros(4), selection_log_weights=jnp.zeros(5)
        )


def _observed_walk(key, t, x):
    """A Gaussian random walk observed at 0.1 * t: propagate and weight."""
    moved = x + jax.random.normal(key, x.shape)
    return moved, -0.5 * (moved - 0.1 * t.astype(x.dtype)) ** 2


_RUN = jax.jit(
    chex.assert_max_traces(particles.run, n=1),
    static_argnames=("propagate_and_weight", "num_steps", "config"),
)


def test_run_scans_step_and_config_matches_keywords():
    chex.clear_trace_counter()
    config = particles.SMCConfig(resample_threshold=0.7, method="stratified")
    state = particles.init(jnp.zeros((16,)))
    key = jax.random.key(3)
    final, infos = _RUN(key, state, _observed_walk, 5, config)
    _RUN(jax.random.key(4), state, _observed_walk, 5, config)  # same shapes: no retrace
    looped = state
    for t in range(5):
        move = functools.partial(lambda k, p, t: _observed_walk(k, jnp.int32(t), p), t=t)
        looped, info = particles.step(
            jax.random.fold_in(key, t), looped, move, resample_threshold=0.7, method="stratified"
        )
        np.testing.assert_array_equal(info.ancestors, infos.ancestors[t])
    np.testing.assert_allclose(final.particles, looped.particles, rtol=1e-6)
    np.testing.assert_allclose(final.log_likelihood, looped.log_likelihood, rtol=1e-6)
    assert infos.ess.shape == (5,)
    with pytest.raises(ValueError, match="num_steps"):
        particles.run(key, state, _observed_walk, 0)
    with pytest.raises(ValueError, match="method"):
        particles.SMCConfig(method="bogus")
