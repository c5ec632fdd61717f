"""Weight predictors: where will the parameters be ``K`` steps from now?

``history`` is a sequence of parameter pytrees spaced ``delta`` optimiser steps
apart, oldest first; its last entry is the current parameters ``theta_t``. With
``s = K / delta``, ``g = theta_t - theta_{t-delta}`` and
``a = theta_t - 2 theta_{t-delta} + theta_{t-2 delta}``:

* ``linear``: ``theta_t + s g`` (exact on linear trajectories; needs 2 snapshots);
* ``quadratic``: the interpolating parabola through the last three snapshots,
  ``theta_t + s g + s (s + 1) / 2 a`` (exact on quadratic trajectories; 3 snapshots).
  The paper prints ``K (K - delta) / (2 delta^2)``, which looks like a sign slip;
* ``quadratic_clamped``: the original code's variant ``theta_t + s g + s^2 / 2 a``
  with ``a`` rescaled per tensor so that ``||a|| <= 0.5 ||g||`` (3 snapshots);
* ``momentum``: Adam-moment extrapolation ``theta_t + sign c K lr m / (sqrt(v) + eps)``
  from the optimiser's first and second moments (1 snapshot). ``sign="descent"``
  (-1, the code's and Adam's direction) or ``sign="paper"`` (+1, as printed;
  with ``learning_rate=1, scale=1`` it is the paper's ``+K m / (sqrt(v) + eps)``).

Every predictor works leaf by leaf on any pytree structure and keeps each leaf's dtype.
dtype policy: each leaf is computed in its own dtype when that is float32 or wider (float64
parameters, with ``jax_enable_x64``, stay float64 end to end, ``s`` included); narrower
floats (bfloat16, float16) are computed in float32, because ``s (s + 1) / 2 a`` cancels
badly in 8 mantissa bits, and cast back to the leaf's dtype.
``lawa`` (latest weight averaging) is the averaging baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from lookahead_jax import checks

PyTree = Any
Method = Literal["linear", "quadratic", "quadratic_clamped", "momentum"]
PREDICTOR_METHODS = ("linear", "quadratic", "quadratic_clamped", "momentum")
METHODS = PREDICTOR_METHODS  # deprecated alias of PREDICTOR_METHODS, kept for existing code
MIN_HISTORY = {"linear": 2, "quadratic": 3, "quadratic_clamped": 3, "momentum": 1}
SIGNS = {"descent": -1.0, "paper": 1.0}
CLAMP_RATIO = 0.5  # the original code's ||a|| <= 0.5 ||g||


def _check_positive(name: str, value: Any) -> None:
    """``value > 0``: at once when concrete, else through ``lookahead_jax.checks``."""
    checks.check_value(
        jnp.asarray(value) > 0, f"`{name}` must be > 0; got {{value}}.", value=jnp.asarray(value)
    )


def compute_dtype(x: Any) -> jnp.dtype:
    """The dtype a leaf is extrapolated in: its own when float32 or wider, else float32."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _ratio(k: Any, delta: Any, dtype: Any) -> jax.Array:
    """``s = k / delta`` in ``dtype`` (float64 leaves get a float64 ``s``)."""
    return jnp.asarray(k, dtype) / jnp.asarray(delta, dtype)


def check_same_structure(name: str, trees: Sequence[PyTree], reference: PyTree) -> None:
    """Raises ``ValueError`` unless every tree has ``reference``'s structure and leaf shapes."""
    want = jax.tree.structure(reference)
    want_shapes = [jnp.shape(x) for x in jax.tree.leaves(reference)]
    for i, tree in enumerate(trees):
        got = jax.tree.structure(tree)
        if got != want:
            raise ValueError(
                f"`{name}[{i}]` must have the structure of the current parameters; "
                f"expected {want}, got {got}."
            )
        shapes = [jnp.shape(x) for x in jax.tree.leaves(tree)]
        if shapes != want_shapes:
            raise ValueError(
                f"`{name}[{i}]` must have the leaf shapes of the current parameters; "
                f"expected {want_shapes}, got {shapes}."
            )


def _leafwise(fn, *trees: PyTree) -> PyTree:
    """Applies ``fn(dtype, *leaves)`` to matching leaves cast to the last tree's compute dtype
    (``compute_dtype``); casts the result back to the last tree's leaf dtype."""

    def leaf(*xs):
        out_dtype = jnp.result_type(xs[-1])
        dtype = compute_dtype(out_dtype)
        return fn(dtype, *(jnp.asarray(x, dtype) for x in xs)).astype(out_dtype)

    return jax.tree.map(leaf, *trees)


def linear(history: Sequence[PyTree], k: Any, delta: Any) -> PyTree:
    """``theta_t + (K / delta) (theta_t - theta_{t-delta})``."""

    def fn(dtype, prev, cur):
        return cur + _ratio(k, delta, dtype) * (cur - prev)

    return _leafwise(fn, history[-2], history[-1])


def quadratic(history: Sequence[PyTree], k: Any, delta: Any) -> PyTree:
    """The interpolating parabola through the last three snapshots, evaluated ``K`` steps ahead."""

    def fn(dtype, older, prev, cur):
        s = _ratio(k, delta, dtype)
        g = cur - prev
        a = cur - 2.0 * prev + older
        return cur + s * g + 0.5 * s * (s + 1.0) * a

    return _leafwise(fn, history[-3], history[-2], history[-1])


def quadratic_clamped(
    history: Sequence[PyTree], k: Any, delta: Any, clamp_ratio: float = CLAMP_RATIO
) -> PyTree:
    """The original code's ``theta_t + s g + s^2 / 2 a``, ``a`` clamped per tensor to
    ``||a|| <= clamp_ratio ||g||``."""

    def fn(dtype, older, prev, cur):
        s = _ratio(k, delta, dtype)
        g = cur - prev
        a = cur - 2.0 * prev + older
        g_norm, a_norm = jnp.linalg.norm(g.ravel()), jnp.linalg.norm(a.ravel())
        limit = clamp_ratio * g_norm
        a = jnp.where(a_norm > limit, a * (limit / jnp.maximum(a_norm, 1e-30)), a)
        return cur + s * g + 0.5 * s * s * a

    return _leafwise(fn, history[-3], history[-2], history[-1])


def momentum(
    params: PyTree,
    mu: PyTree,
    nu: PyTree,
    k: Any,
    learning_rate: Any,
    *,
    scale: float = 1.0,
    eps: float = 1e-8,
    sign: str = "descent",
) -> PyTree:
    """``params + sign * scale * K * learning_rate * mu / (sqrt(nu) + eps)``.

    ``mu`` and ``nu`` are Adam's first and second moments (bias-corrected or not:
    the caller decides; ``adam_moments`` returns them corrected).
    """
    if sign not in SIGNS:
        raise ValueError(f"`sign` must be one of {tuple(SIGNS)}; got {sign!r}.")
    factor = SIGNS[sign] * scale

    def fn(dtype, m, v, p):
        step = factor * jnp.asarray(k, dtype) * jnp.asarray(learning_rate, dtype)
        return p + step * m / (jnp.sqrt(v) + eps)

    return _leafwise(fn, mu, nu, params)


def adam_moments(opt_state: Any, b1: float = 0.9, b2: float = 0.999) -> tuple[PyTree, PyTree]:
    """The bias-corrected moments ``(m_hat, v_hat)`` of the (first) ``ScaleByAdamState`` inside
    an optax state (``optax.adam``, ``optax.adamw`` and chains of them).

    Raises:
      ValueError: the state holds no Adam moments.
    """
    states = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    if not states:
        raise ValueError(
            "`opt_state` must contain an optax.ScaleByAdamState (Adam's moments) for the "
            f"momentum predictor; got {type(opt_state).__name__}."
        )
    state = states[0]

    def corrected(x, beta):  # in the moment's compute dtype (float64 moments stay float64)
        dtype = compute_dtype(x)
        count = jnp.maximum(jnp.asarray(state.count, dtype), 1.0)
        return (jnp.asarray(x, dtype) / (1.0 - jnp.asarray(beta, dtype) ** count)).astype(x.dtype)

    m_hat = jax.tree.map(lambda m: corrected(m, b1), state.mu)
    v_hat = jax.tree.map(lambda v: corrected(v, b2), state.nu)
    return m_hat, v_hat


def predict(
    method: Method,
    history: Sequence[PyTree],
    k: Any,
    delta: Any,
    *,
    moments: tuple[PyTree, PyTree] | None = None,
    learning_rate: Any = None,
    scale: float = 1.0,
    eps: float = 1e-8,
    sign: str = "descent",
    clamp_ratio: float = CLAMP_RATIO,
) -> PyTree:
    """Predicts the parameters ``K`` optimiser steps after ``history[-1]``.

    Args:
      method: ``"linear" | "quadratic" | "quadratic_clamped" | "momentum"`` (static).
      history: parameter pytrees spaced ``delta`` steps apart, oldest first; the
        last is the current parameters. ``linear`` needs 2, the quadratics 3,
        ``momentum`` 1 (only the last is used).
      k: steps ahead, ``> 0`` (int or scalar array; checked at once when concrete, and
        under ``lookahead_jax.checked`` when traced).
      delta: spacing of the snapshots in steps, ``> 0``.
      moments: ``(mu, nu)`` pytrees like the parameters (``momentum`` only; see
        ``adam_moments``).
      learning_rate: the step size of the momentum extrapolation (``momentum`` only).
      scale, eps, sign: the momentum predictor's ``c``, Adam's epsilon and sign convention.
      clamp_ratio: ``quadratic_clamped``'s bound on ``||a|| / ||g||``.

    Returns:
      A pytree with the structure, shapes and dtypes of ``history[-1]``.

    Raises:
      ValueError: unknown method, ``k <= 0`` or ``delta <= 0``, a history shorter
        than the method needs, snapshots or moments whose structure or shapes differ
        from the current parameters, missing moments or learning rate.
    """
    if method not in PREDICTOR_METHODS:
        raise ValueError(f"`method` must be one of {PREDICTOR_METHODS}; got {method!r}.")
    _check_positive("k", k)
    _check_positive("delta", delta)
    history = list(history)
    need = MIN_HISTORY[method]
    if len(history) < need:
        raise ValueError(
            f"`history` must hold at least {need} snapshots for method {method!r}; "
            f"got {len(history)}."
        )
    check_same_structure("history", history[:-1], history[-1])
    if method == "linear":
        return linear(history, k, delta)
    if method == "quadratic":
        return quadratic(history, k, delta)
    if method == "quadratic_clamped":
        return quadratic_clamped(history, k, delta, clamp_ratio)
    if moments is None or learning_rate is None:
        raise ValueError(
            "method 'momentum' needs `moments=(mu, nu)` and `learning_rate`; got "
            f"moments={'None' if moments is None else 'given'}, learning_rate={learning_rate!r}."
        )
    mu, nu = moments
    check_same_structure("moments", [mu, nu], history[-1])
    return momentum(history[-1], mu, nu, k, learning_rate, scale=scale, eps=eps, sign=sign)


def lawa(history: Sequence[PyTree]) -> PyTree:
    """Latest weight averaging: the mean of the snapshots in ``history`` (any number >= 1)."""
    history = list(history)
    if not history:
        raise ValueError("`history` must hold at least 1 snapshot; got 0.")
    check_same_structure("history", history[:-1], history[-1])
    n = float(len(history))
    return _leafwise(lambda dtype, *xs: sum(xs) / n, *history)
