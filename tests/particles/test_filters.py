"""Kalman filter vs the joint Gaussian; bootstrap filter vs Kalman (float64); sharding."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import particles, sharding
from tests.helpers import count_compilations

T = 20
# Enough particles that Monte Carlo error of the covariances (~1/sqrt(ESS)) sits well
# below 2e-2: at 20 000 they measured 1.5-2.2% here, at 80 000 1.0-1.4%.
NUM_PARTICLES = 80_000
STATIC = ("model", "num_particles", "resample_threshold", "method", "mesh", "keep_ancestors")
bootstrap = jax.jit(particles.bootstrap_filter, static_argnames=STATIC)


def _lgssm(dtype):
    """x_dim 3, y_dim 2: a slowly rotating, damped state observed through two mixtures."""
    angle = 0.3
    rotation = jnp.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    return particles.LinearGaussianSSM(
        transition_matrix=jnp.asarray(0.95 * rotation, dtype),
        transition_cov=jnp.asarray(0.1 * np.eye(3) + 0.02, dtype),
        observation_matrix=jnp.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype),
        observation_cov=jnp.asarray([[1.0, 0.1], [0.1, 0.8]], dtype),
        initial_mean=jnp.asarray([1.0, -1.0, 0.5], dtype),
        initial_cov=jnp.asarray(np.eye(3), dtype),
    )


@pytest.fixture(scope="module")
def x64_problem():
    with jax.enable_x64(True):
        lgssm = _lgssm(jnp.float64)
        _, observations = lgssm.sample(jax.random.key(0), T)
        yield lgssm, observations, particles.kalman_filter(lgssm, observations)


def _joint_gaussian(lgssm, num_steps):
    """Mean and covariance of the stacked (x_1..T, y_1..T) under the model, in NumPy float64."""
    F, Q, H, R, m0, P0 = (np.asarray(a, np.float64) for a in lgssm)
    dx = F.shape[0]
    means, covs = [m0], {(0, 0): P0}
    for t in range(1, num_steps):
        means.append(F @ means[-1])
        for s in range(t):
            covs[(t, s)] = F @ covs[(t - 1, s)]
        covs[(t, t)] = F @ covs[(t - 1, t - 1)] @ F.T + Q
    sx = np.zeros((num_steps * dx, num_steps * dx))
    for (t, s), c in covs.items():
        sx[t * dx : (t + 1) * dx, s * dx : (s + 1) * dx] = c
        sx[s * dx : (s + 1) * dx, t * dx : (t + 1) * dx] = c.T
    big_h = np.kron(np.eye(num_steps), H)
    my = big_h @ np.concatenate(means)
    syy = big_h @ sx @ big_h.T + np.kron(np.eye(num_steps), R)
    sxy = sx @ big_h.T
    return np.concatenate(means), sx, my, syy, sxy


def test_kalman_matches_the_joint_gaussian(x64_problem):
    """Independent reference: log p(y) and E[x_t | y_1..t] by conditioning the joint Gaussian."""
    lgssm, observations, kf = x64_problem
    y = np.asarray(observations, np.float64)
    for steps in (1, 2, 7, T):
        mx, sx, my, syy, sxy = _joint_gaussian(lgssm, steps)
        flat_y = y[:steps].reshape(-1)
        diff = flat_y - my
        _, logdet = np.linalg.slogdet(syy)
        log_lik = -0.5 * (
            diff @ np.linalg.solve(syy, diff) + logdet + len(diff) * np.log(2 * np.pi)
        )
        last = slice((steps - 1) * 3, steps * 3)
        mean = mx[last] + sxy[last] @ np.linalg.solve(syy, diff)
        cov = sx[last, last] - sxy[last] @ np.linalg.solve(syy, sxy[last].T)
        if steps == T:
            np.testing.assert_allclose(float(kf.log_likelihood), log_lik, rtol=1e-10)
        if steps == 1:  # a single observation: the scan runs zero steps
            sub = particles.kalman_filter(lgssm, observations[:1])
            np.testing.assert_allclose(float(sub.log_likelihood), log_lik, rtol=1e-10)
        # Filtering means/covariances at t depend on y_1..t only: read them off the T run.
        np.testing.assert_allclose(np.asarray(kf.means[steps - 1]), mean, atol=1e-10)
        np.testing.assert_allclose(np.asarray(kf.covariances[steps - 1]), cov, atol=1e-10)


def test_kalman_and_sampling_outside_jit_compile_once_per_shape(x64_problem):
    """Called eagerly for another model of the same shapes (as in a notebook): no new compile."""
    lgssm, observations, kf = x64_problem
    with jax.enable_x64(True):
        moved = lgssm._replace(initial_mean=lgssm.initial_mean + 1.0)
        with count_compilations() as count:
            again = particles.kalman_filter(moved, observations)
            moved.sample(jax.random.key(5), T)
        assert count() == 0
        assert np.isfinite(float(again.log_likelihood))
        assert float(again.log_likelihood) != float(kf.log_likelihood)


# One method: the others differ only in `resample`, whose distribution is tested
# directly (test_resampling.py) and whose filters are compared in the experiment.
@pytest.mark.parametrize("method", ["systematic"])
def test_bootstrap_matches_kalman_float64(x64_problem, method):
    lgssm, observations, kf = x64_problem
    with jax.enable_x64(True):
        result = bootstrap(
            jax.random.key(1),
            lgssm.to_state_space_model(),
            observations,
            NUM_PARTICLES,
            method=method,
        )
    assert result.means.dtype == jnp.float64
    ll, ref = float(result.log_likelihood), float(kf.log_likelihood)
    assert abs(ll - ref) <= 2e-2 * abs(ref), (ll, ref)
    means, ref_means = np.asarray(result.means), np.asarray(kf.means)
    assert np.linalg.norm(means - ref_means) <= 2e-2 * np.linalg.norm(ref_means)
    covs, ref_covs = np.asarray(result.covariances), np.asarray(kf.covariances)
    assert np.linalg.norm(covs - ref_covs) <= 2e-2 * np.linalg.norm(ref_covs)
    np.testing.assert_allclose(np.sum(np.asarray(result.log_likelihood_increments)), ll, rtol=1e-12)
    ess, resampled = np.asarray(result.ess), np.asarray(result.resampled)
    assert ess.shape == (T,) and ((ess >= 1) & (ess <= NUM_PARTICLES)).all()
    # The adaptive rule: resample before t exactly when ESS after t - 1 fell below N / 2.
    np.testing.assert_array_equal(resampled[1:], ess[:-1] < 0.5 * NUM_PARTICLES)
    assert not resampled[0] and not np.asarray(result.degenerate).any()


def test_evidence_estimate_is_unbiased(x64_problem):
    """E[Z^] = Z: logmeanexp(log Z^ - log Z) over replicates is 0 within its error."""
    lgssm, observations, kf = x64_problem
    replicates = 400
    with jax.enable_x64(True):
        model = lgssm.to_state_space_model()
        run = jax.jit(
            jax.vmap(
                lambda k: particles.bootstrap_filter(k, model, observations, 64).log_likelihood
            )
        )
        log_z = np.asarray(run(jax.random.split(jax.random.key(2), replicates)))
    ratio = np.exp(log_z - float(kf.log_likelihood))
    stderr = ratio.std(ddof=1) / np.sqrt(replicates)
    assert abs(ratio.mean() - 1.0) <= 4 * stderr, (ratio.mean(), stderr)
    # With 64 particles log Z^ is visibly biased low, so the test above is not vacuous.
    assert np.mean(np.log(ratio)) < -2 * stderr


@jax.jit
def _all_resamplers(key, log_weights):
    """Ancestors [4, N] of every method, compiled once for 1-device and once for sharded input."""
    n = log_weights.shape[0]
    return jnp.stack([particles.resample(key, log_weights, n, m) for m in particles.METHODS])


def test_sharded_resampling_equals_one_device_for_every_method():
    mesh = sharding.make_mesh()
    log_weights = 3.0 * jax.random.normal(jax.random.key(7), (4096,))
    log_weights = log_weights.at[::5].set(-jnp.inf)  # zero weights too
    one = _all_resamplers(jax.random.key(8), log_weights)
    # Replicated weights (as the filters keep them) on 8 devices: the same ancestors.
    eight = _all_resamplers(jax.random.key(8), sharding.replicate(log_weights, mesh))
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_array_equal(eight, one)


def test_sharded_bootstrap_filter_equals_one_device():
    # This model, seed and size discriminate: with partitioned instead of replicated
    # log-weights (the per-device cumsum re-associates), the ancestors differ from
    # step 3 on; with replicated weights every step matches bit for bit.
    lgssm = particles.example_lgssm()
    _, observations = lgssm.sample(jax.random.key(0), 8)
    model = lgssm.to_state_space_model()
    kwargs = dict(method="systematic", keep_ancestors=True)
    one = bootstrap(jax.random.key(1), model, observations, 4096, **kwargs)
    mesh = sharding.make_mesh()
    eight = bootstrap(jax.random.key(1), model, observations, 4096, mesh=mesh, **kwargs)
    assert len(eight.final_state.particles.sharding.device_set) == 8
    assert eight.final_state.particles.sharding.spec[0] == "batch"
    assert np.asarray(one.resampled).sum() >= 3  # the comparison covers real resampling
    np.testing.assert_array_equal(eight.ancestors, one.ancestors)
    np.testing.assert_array_equal(eight.final_state.particles, one.final_state.particles)
    # Replicated weights make the evidence bitwise equal too; means may differ in ulps.
    np.testing.assert_array_equal(eight.log_likelihood_increments, one.log_likelihood_increments)
    np.testing.assert_allclose(eight.means, one.means, rtol=1e-5, atol=1e-6)


def test_island_mode():
    lgssm = _lgssm(jnp.float32)
    _, observations = lgssm.sample(jax.random.key(3), 10)
    mesh = sharding.make_mesh()
    result = jax.jit(
        functools.partial(
            particles.island_bootstrap_filter,
            model=lgssm.to_state_space_model(),
            num_particles=64,
            mesh=mesh,
        )
    )(jax.random.key(5), observations=observations)
    islands = np.asarray(result.island_log_likelihoods)
    assert islands.shape == (8,) and len(set(islands.tolist())) == 8  # independent islands
    np.testing.assert_allclose(
        float(result.log_likelihood), np.log(np.mean(np.exp(islands))), rtol=1e-5
    )
    assert np.asarray(result.ess).shape == (8, 10) and (np.asarray(result.ess) <= 8).all()


def test_degenerate_observation_model_stays_defined():
    """An observation no particle can explain: log Z^ = -inf, flagged, never NaN particles."""
    model = particles.StateSpaceModel(
        initial_sample=lambda key, n: jax.random.normal(key, (n, 1)),
        transition_sample=lambda key, x: x + jax.random.normal(key, x.shape),
        observation_log_prob=lambda x, y: jnp.where(y > 0, -jnp.inf, -0.5 * x[:, 0] ** 2),
    )
    observations = jnp.asarray([-1.0, 1.0, -1.0, -1.0])
    result = bootstrap(jax.random.key(0), model, observations, 16)
    assert float(result.log_likelihood) == -np.inf
    np.testing.assert_array_equal(result.degenerate, [False, False, True, False])
    assert np.isfinite(np.asarray(result.final_state.particles)).all()
    assert np.isfinite(np.asarray(result.means)[-1]).all()


RESUME_MODEL = _lgssm(jnp.float32)
RESUME_CONFIG = particles.BootstrapConfig(256, method="systematic", keep_ancestors=True)


@functools.partial(jax.jit, static_argnames=("model", "config"))
@chex.assert_max_traces(n=2)  # one per observation length (8 and 4)
def _run_from(key, model, observations, config, state):
    return particles.bootstrap_run(key, model, observations, config, state)


def test_bootstrap_resumes_from_its_state_and_compiles_once():
    """Two runs of T / 2 continued from the final state equal one run of T, bit for bit."""
    chex.clear_trace_counter()
    _, observations = RESUME_MODEL.sample(jax.random.key(3), 8)
    model = RESUME_MODEL.to_state_space_model()
    key = jax.random.key(4)
    init_key, _ = jax.random.split(key)
    start = particles.bootstrap_init(init_key, model, RESUME_CONFIG)
    assert int(start.time) == 0
    whole = _run_from(key, model, observations, RESUME_CONFIG, start)
    first = _run_from(key, model, observations[:4], RESUME_CONFIG, start)
    second = _run_from(key, model, observations[4:], RESUME_CONFIG, first.final_state)
    assert int(second.final_state.time) == 8
    assert np.asarray(whole.resampled).any()  # resampling is part of what continues
    np.testing.assert_array_equal(second.log_likelihood, whole.log_likelihood)
    np.testing.assert_array_equal(second.final_state.particles, whole.final_state.particles)
    np.testing.assert_array_equal(second.final_state.log_weights, whole.final_state.log_weights)
    np.testing.assert_array_equal(
        np.concatenate([first.ancestors, second.ancestors]), whole.ancestors
    )
    np.testing.assert_array_equal(
        np.concatenate([first.means, second.means]), np.asarray(whole.means)
    )
    # One step by hand equals the run's first step.
    step = jax.jit(particles.bootstrap_step, static_argnames=("model", "config"))
    state, info = step(
        jax.random.fold_in(jax.random.split(key)[1], 0), start, observations[0], model,
        RESUME_CONFIG,
    )  # fmt: skip
    np.testing.assert_allclose(info.log_likelihood_increment, whole.log_likelihood_increments[0])
    assert int(state.time) == 1 and not bool(info.resampled)


def test_errors(x64_problem):
    lgssm = _lgssm(jnp.float32)
    model = lgssm.to_state_space_model()
    # T = 0 observations: a ValueError naming the argument, not a traceback.
    with pytest.raises(ValueError, match=r"`observations` must hold at least one time step"):
        particles.kalman_filter(lgssm, jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"`observations` must share a leading time axis T >= 1"):
        particles.bootstrap_filter(jax.random.key(0), model, jnp.zeros((0, 2)), 8)
    with pytest.raises(ValueError, match="`num_particles` must be a positive int; got 0"):
        particles.bootstrap_filter(jax.random.key(0), model, jnp.zeros((5, 2)), 0)
    with pytest.raises(ValueError, match="`num_particles` must be a positive int; got 0"):
        particles.BootstrapConfig(0)
    with pytest.raises(ValueError, match=r"`observations` must have shape \[\?, 2\]"):
        particles.kalman_filter(lgssm, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="`observation_cov` must have shape"):
        particles.kalman_filter(lgssm._replace(observation_cov=jnp.eye(3)), jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        particles.bootstrap_filter(
            jax.random.key(0), model, jnp.zeros((5, 2)), 12, mesh=sharding.make_mesh()
        )
    with pytest.raises(ValueError, match="`method` must be one of"):
        particles.bootstrap_filter(jax.random.key(0), model, jnp.zeros((5, 2)), 8, method="x")
    with pytest.raises(ValueError, match=r"must return shape \(8,\)"):
        particles.bootstrap_filter(
            jax.random.key(0),
            model._replace(observation_log_prob=lambda x, y: jnp.zeros(3)),
            jnp.zeros((5, 2)),
            8,
        )
