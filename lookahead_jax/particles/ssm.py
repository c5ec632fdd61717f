"""State-space models for particle filters, and the linear-Gaussian special case.

A ``StateSpaceModel`` is three batched callables: particles are pytrees whose
leaves have a leading particle axis N, so a model can draw all particles in one
call (and, under sharding, on every device at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks


class StateSpaceModel(NamedTuple):
    """x_1 ~ mu, x_t ~ f(. | x_{t-1}), y_t ~ g(. | x_t), as batched callables.

    Attributes:
      initial_sample: ``(key, num_particles) -> particles`` (leaves [N, ...]), draws of
        the state at the first observation.
      transition_sample: ``(key, particles) -> particles``, one draw of x_t per particle.
      observation_log_prob: ``(particles, observation) -> [N]`` float, log g(y_t | x_t).
    """

    initial_sample: Callable[[jax.Array, int], Any]
    transition_sample: Callable[[jax.Array, Any], Any]
    observation_log_prob: Callable[[Any, Any], jax.Array]


def _mvn_log_prob(x: jax.Array, mean: jax.Array, chol: jax.Array) -> jax.Array:
    """log N(x; mean, L L^T) for x [..., d], mean broadcastable, chol [d, d] lower."""
    diff = x - mean
    z = jax.scipy.linalg.solve_triangular(chol, diff.reshape(-1, diff.shape[-1]).T, lower=True)
    d = diff.shape[-1]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    quad = jnp.sum(z * z, axis=0).reshape(diff.shape[:-1])
    return -0.5 * (quad + log_det + d * jnp.log(2.0 * jnp.pi))


class LinearGaussianSSM(NamedTuple):
    """x_1 ~ N(m0, P0), x_t = F x_{t-1} + N(0, Q), y_t = H x_t + N(0, R).

    The initial distribution is over the state at the first observation (no
    transition before it), the convention of :func:`kalman.kalman_filter`.
    """

    transition_matrix: jax.Array  # [dx, dx] F
    transition_cov: jax.Array  # [dx, dx] Q, positive definite
    observation_matrix: jax.Array  # [dy, dx] H
    observation_cov: jax.Array  # [dy, dy] R, positive definite
    initial_mean: jax.Array  # [dx] m0
    initial_cov: jax.Array  # [dx, dx] P0, positive definite

    @property
    def state_dim(self) -> int:
        return self.transition_matrix.shape[0]

    @property
    def observation_dim(self) -> int:
        return self.observation_matrix.shape[0]

    def check(self) -> None:
        """Trace-time shape checks, naming the offending field."""
        _checks.check_rank("transition_matrix", self.transition_matrix, 2, "[dx, dx]")
        dx = jnp.shape(self.transition_matrix)[0]
        _checks.check_shape("transition_matrix", self.transition_matrix, (dx, dx), "square")
        _checks.check_shape("transition_cov", self.transition_cov, (dx, dx), "[dx, dx]")
        _checks.check_rank("observation_matrix", self.observation_matrix, 2, "[dy, dx]")
        dy = jnp.shape(self.observation_matrix)[0]
        _checks.check_shape("observation_matrix", self.observation_matrix, (dy, dx), "[dy, dx]")
        _checks.check_shape("observation_cov", self.observation_cov, (dy, dy), "[dy, dy]")
        _checks.check_shape("initial_mean", self.initial_mean, (dx,), "[dx]")
        _checks.check_shape("initial_cov", self.initial_cov, (dx, dx), "[dx, dx]")

    def to_state_space_model(self) -> StateSpaceModel:
        """The same model as batched samplers and an observation log-density (particles [N, dx])."""
        self.check()
        chol_q = jnp.linalg.cholesky(self.transition_cov)
        chol_r = jnp.linalg.cholesky(self.observation_cov)
        chol_p0 = jnp.linalg.cholesky(self.initial_cov)
        dx = self.state_dim

        def initial_sample(key: jax.Array, num_particles: int) -> jax.Array:
            eps = jax.random.normal(key, (num_particles, dx), self.initial_mean.dtype)
            return self.initial_mean + eps @ chol_p0.T

        def transition_sample(key: jax.Array, particles: jax.Array) -> jax.Array:
            eps = jax.random.normal(key, particles.shape, particles.dtype)
            return particles @ self.transition_matrix.T + eps @ chol_q.T

        def observation_log_prob(particles: jax.Array, observation: jax.Array) -> jax.Array:
            return _mvn_log_prob(observation, particles @ self.observation_matrix.T, chol_r)

        return StateSpaceModel(initial_sample, transition_sample, observation_log_prob)

    def sample(self, key: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
        """One trajectory: ``(states [T, dx], observations [T, dy])``."""
        model = self.to_state_space_model()
        first_key, scan_key = jax.random.split(key)
        x0 = model.initial_sample(first_key, 1)
        chol_q = jnp.linalg.cholesky(self.transition_cov)
        chol_r = jnp.linalg.cholesky(self.observation_cov)
        keys = jax.random.split(scan_key, num_steps)
        y0 = _observe(self.observation_matrix, chol_r, keys[0], x0)[0]
        # A module-level scan body with the matrices in the carry (not a closure over this
        # call's arrays): called outside jit, repeated calls reuse one compiled scan per shape.
        carry = (x0, self.transition_matrix, chol_q, self.observation_matrix, chol_r)
        _, (xs, ys) = lax.scan(_sample_step, carry, keys[1:])
        return jnp.concatenate([x0, xs]), jnp.concatenate([y0[None], ys])


def example_lgssm(dtype: jnp.dtype = jnp.float32) -> LinearGaussianSSM:
    """The 3-D state, 2-D observation model of the tour, notebook 03 and the filter tests.

    F = 0.9 I + 0.03, Q = 0.1 I + 0.02, H = [[1, 0, 0.5], [0, 1, -0.5]],
    R = [[1, 0.1], [0.1, 0.8]], x_1 ~ N(0, I). Correlated noise and a mixing H make it
    a useful check: with the seed used in the tests, a filter whose resampling is wrong
    across devices picks different ancestors from step 3 on.
    """
    return LinearGaussianSSM(
        transition_matrix=(0.9 * jnp.eye(3) + 0.03).astype(dtype),
        transition_cov=(0.1 * jnp.eye(3) + 0.02).astype(dtype),
        observation_matrix=jnp.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype),
        observation_cov=jnp.asarray([[1.0, 0.1], [0.1, 0.8]], dtype),
        initial_mean=jnp.zeros(3, dtype),
        initial_cov=jnp.eye(3, dtype=dtype),
    )


def _observe(observation_matrix: jax.Array, chol_r: jax.Array, key: jax.Array, x: jax.Array):
    eps = jax.random.normal(key, (1, observation_matrix.shape[0]), x.dtype)
    return x @ observation_matrix.T + eps @ chol_r.T


def _sample_step(carry, key):
    """One step of ``LinearGaussianSSM.sample``: move the state, then observe it."""
    x, transition_matrix, chol_q, observation_matrix, chol_r = carry
    move_key, obs_key = jax.random.split(key)
    eps = jax.random.normal(move_key, x.shape, x.dtype)
    x = x @ transition_matrix.T + eps @ chol_q.T  # as to_state_space_model's transition_sample
    y = _observe(observation_matrix, chol_r, obs_key, x)
    return (x, transition_matrix, chol_q, observation_matrix, chol_r), (x[0], y[0])
