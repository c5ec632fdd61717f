"""The exact Kalman filter: the reference every particle filter is tested against."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks
from lookahead_jax.particles.ssm import LinearGaussianSSM


class KalmanResult(NamedTuple):
    """Filtering distributions p(x_t | y_1..t) = N(means[t], covariances[t])."""

    log_likelihood: jax.Array  # [] float, log p(y_1..T)
    means: jax.Array  # [T, dx]
    covariances: jax.Array  # [T, dx, dx]


def kalman_filter(lgssm: LinearGaussianSSM, observations: jax.Array) -> KalmanResult:
    """Exact filtering means, covariances and log-likelihood, as one ``lax.scan``.

    Convention: ``N(initial_mean, initial_cov)`` is the prior of the state at the
    first observation (no transition before it); every later step predicts
    through ``F, Q`` and then updates with ``y_t``.

    Args:
      lgssm: the model.
      observations: [T, dy] with T >= 1.
    """
    lgssm.check()
    _checks.check_shape(
        "observations", observations, (None, lgssm.observation_dim), "[T, observation_dim]"
    )
    if jnp.shape(observations)[0] < 1:
        raise ValueError(
            "`observations` must hold at least one time step (T >= 1); got shape "
            f"{tuple(jnp.shape(observations))}."
        )
    # Module-level step functions with the model in the carry (not closures over this call's
    # arrays): called outside jit, repeated calls reuse one compiled scan per shape.
    mean, cov, log_lik = _update(lgssm, lgssm.initial_mean, lgssm.initial_cov, observations[0])
    (_, _, _, total), (means, covs) = lax.scan(_step, (lgssm, mean, cov, log_lik), observations[1:])
    return KalmanResult(
        log_likelihood=total,
        means=jnp.concatenate([mean[None], means]),
        covariances=jnp.concatenate([cov[None], covs]),
    )


def _update(lgssm: LinearGaussianSSM, mean: jax.Array, cov: jax.Array, y: jax.Array):
    """Conditions ``N(mean, cov)`` on ``y``: ``(mean, cov, log p(y))``."""
    H, R = lgssm.observation_matrix, lgssm.observation_cov
    s = H @ cov @ H.T + R
    chol = jnp.linalg.cholesky(s)
    residual = y - H @ mean
    # K = P H^T S^{-1}, via two triangular solves instead of an inverse.
    gain = jax.scipy.linalg.cho_solve((chol, True), H @ cov).T
    z = jax.scipy.linalg.solve_triangular(chol, residual, lower=True)
    log_lik = -0.5 * (
        z @ z + 2.0 * jnp.sum(jnp.log(jnp.diag(chol))) + y.shape[0] * jnp.log(2.0 * jnp.pi)
    )
    mean = mean + gain @ residual
    # Joseph form keeps the covariance symmetric positive definite.
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
    a = eye - gain @ H
    cov = a @ cov @ a.T + gain @ R @ gain.T
    return mean, cov, log_lik


def _step(carry, y):
    """Predicts through ``F, Q`` and updates with ``y``."""
    lgssm, mean, cov, total = carry
    F, Q = lgssm.transition_matrix, lgssm.transition_cov
    mean, cov = F @ mean, F @ cov @ F.T + Q
    mean, cov, log_lik = _update(lgssm, mean, cov, y)
    return (lgssm, mean, cov, total + log_lik), (mean, cov)
