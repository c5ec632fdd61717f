"""Acceptance tests of a predicted jump, on the loss of one fixed held-out batch.

* ``strict``: ``L_pred < L_t``;
* ``adaptive``: ``L_pred <= L_t + sigma``, ``sigma`` the standard deviation of the
  recent validation losses;
* ``proximity``: ``|L_pred - L_t| < eps L_t`` (the paper: two-sided, ``eps = 5%``),
  or ``L_pred - L_t < eps L_t`` with ``one_sided=True`` (the original code, ``eps = 0.5%``).

A non-finite predicted loss is never accepted.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lookahead_jax import checks

Criterion = Literal["strict", "adaptive", "proximity"]
CRITERIA = ("strict", "adaptive", "proximity")
PAPER_EPS = 0.05  # the paper's two-sided proximity tolerance
CODE_EPS = 0.005  # the original code's one-sided tolerance


def recent_sigma(recent_losses: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Population standard deviation ``[]`` of ``recent_losses [N]`` where ``mask [N]`` is true
    (all when ``None``); ``0`` with fewer than two usable entries."""
    losses = jnp.asarray(recent_losses, jnp.float32)
    if losses.ndim != 1:
        raise ValueError(f"`recent_losses` must have rank 1 ([N]); got shape {losses.shape}.")
    if mask is None:
        mask = jnp.ones(losses.shape, bool)
    elif jnp.shape(mask) != losses.shape:
        raise ValueError(
            f"`recent_mask` must have the shape of `recent_losses` {losses.shape}; "
            f"got {jnp.shape(mask)}."
        )
    weights = jnp.asarray(mask, jnp.float32)
    losses = jnp.where(mask, losses, 0.0)  # masked NaN must not leak into the sums
    count = jnp.sum(weights)
    mean = jnp.sum(losses * weights) / jnp.maximum(count, 1.0)
    var = jnp.sum(weights * jnp.square(losses - mean)) / jnp.maximum(count, 1.0)
    return jnp.where(count >= 2, jnp.sqrt(var), 0.0)


def accept(
    criterion: Criterion,
    predicted_loss: jax.Array,
    current_loss: jax.Array,
    *,
    sigma: jax.Array | None = None,
    recent_losses: jax.Array | None = None,
    recent_mask: jax.Array | None = None,
    eps: float = PAPER_EPS,
    one_sided: bool = False,
) -> jax.Array:
    """Whether to accept a predicted jump: bool array of the broadcast shape of the losses.

    Args:
      criterion: ``"strict" | "adaptive" | "proximity"`` (static).
      predicted_loss: held-out loss at the predicted parameters.
      current_loss: held-out loss at the current parameters.
      sigma: ``adaptive`` only: the tolerance; or give ``recent_losses [N]`` (and
        optionally ``recent_mask [N]``) and their standard deviation is used.
      eps: ``proximity`` only: relative tolerance, ``>= 0``.
      one_sided: ``proximity`` only: accept any improvement, reject worsening by ``eps`` or more.

    Raises:
      ValueError: unknown criterion, ``adaptive`` without ``sigma`` or ``recent_losses``,
        a negative ``eps`` or ``sigma`` (a traced ``sigma``: under ``lookahead_jax.checked``).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {CRITERIA}; got {criterion!r}.")
    # Compared in float32, or wider when the losses are (float64 losses stay float64).
    dtype = jnp.promote_types(jnp.result_type(predicted_loss, current_loss), jnp.float32)
    pred = jnp.asarray(predicted_loss, dtype)
    cur = jnp.asarray(current_loss, dtype)
    finite = jnp.isfinite(pred)
    if criterion == "strict":
        ok = pred < cur
    elif criterion == "adaptive":
        if sigma is None:
            if recent_losses is None:
                raise ValueError(
                    "criterion 'adaptive' needs `sigma` or `recent_losses`; got neither."
                )
            sigma = recent_sigma(recent_losses, recent_mask)
        sigma = jnp.asarray(sigma)
        checks.check_value(~(sigma < 0), "`sigma` must be >= 0; got {sigma}.", sigma=jnp.min(sigma))
        ok = pred <= cur + sigma.astype(dtype)
    else:
        if not eps >= 0:
            raise ValueError(f"`eps` must be >= 0; got {eps!r}.")
        diff = pred - cur if one_sided else jnp.abs(pred - cur)
        ok = diff < eps * cur
    return jnp.logical_and(ok, finite)
