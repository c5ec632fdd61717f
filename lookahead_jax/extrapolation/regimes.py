"""Training regimes from fingerprint similarity, and calibration of the thresholds.

Every ``Delta`` steps the similarity ``s`` between the current fingerprint and the
previous one classifies training as

* ``CHAOTIC``     if ``s <= tau_low``,
* ``STABLE``      if ``s >= tau_high``,
* ``TRANSITION``  otherwise,
* ``UNKNOWN``     for the first checkpoint (no previous fingerprint) or a NaN ``s``;

and two consecutive stable readings make the stable regime *confirmed*. The
thresholds are model- and scale-specific (the paper's GPT-2 124M values were the
30th / 70th percentiles of warm-up similarities, ~0.99627 / ~0.99949):
``calibrate_thresholds`` computes them from a warm-up phase.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

UNKNOWN, CHAOTIC, TRANSITION, STABLE = 0, 1, 2, 3
REGIME_NAMES = ("unknown", "chaotic", "transition", "stable")
CONFIRM_AFTER = 2  # consecutive stable readings that confirm a stable regime


class Thresholds(NamedTuple):
    """Regime thresholds ``tau_low < tau_high`` on the fingerprint similarity."""

    tau_low: jax.Array  # [] float32
    tau_high: jax.Array  # [] float32


def _check_thresholds(tau_low, tau_high) -> None:
    from lookahead_jax._checks import concrete_value

    low, high = concrete_value(tau_low), concrete_value(tau_high)
    if low is not None and high is not None and not np.all(low <= high):
        raise ValueError(
            f"`tau_low` must be <= `tau_high`; got tau_low={low!r}, tau_high={high!r}."
        )


def classify_regime(similarity: jax.Array, tau_low: jax.Array, tau_high: jax.Array) -> jax.Array:
    """The regime of each similarity: ``[...]`` float -> ``[...]`` int32 in ``REGIME_NAMES``.

    ``similarity >= tau_high`` is ``STABLE``, ``similarity <= tau_low`` is ``CHAOTIC``
    (both boundaries inclusive), anything between is ``TRANSITION`` and NaN is ``UNKNOWN``.

    Raises:
      ValueError: concrete thresholds with ``tau_low > tau_high``.
    """
    _check_thresholds(tau_low, tau_high)
    s = jnp.asarray(similarity, jnp.float32)
    regime = jnp.where(s >= tau_high, STABLE, jnp.where(s <= tau_low, CHAOTIC, TRANSITION)).astype(
        jnp.int32
    )
    return jnp.where(jnp.isnan(s), UNKNOWN, regime).astype(jnp.int32)


def stable_streaks(regimes: jax.Array) -> jax.Array:
    """Length of the run of consecutive ``STABLE`` readings ending at each entry: ``[N] -> [N]``."""
    # A module-level scan body (not a closure made per call): eager calls reuse its program.
    regimes = jnp.asarray(regimes, jnp.int32)
    _, streaks = jax.lax.scan(_streak_step, jnp.zeros((), jnp.int32), regimes)
    return streaks


def _streak_step(streak: jax.Array, regime: jax.Array) -> tuple[jax.Array, jax.Array]:
    streak = jnp.where(regime == STABLE, streak + 1, 0)
    return streak, streak


def confirmed_stable(regimes: jax.Array) -> jax.Array:
    """``[N]`` bool: the reading is the 2nd or later of consecutive ``STABLE`` readings."""
    return stable_streaks(regimes) >= CONFIRM_AFTER


def calibrate_thresholds(
    similarities: jax.Array,
    low_percentile: float = 30.0,
    high_percentile: float = 70.0,
    mask: jax.Array | None = None,
) -> Thresholds:
    """Thresholds from warm-up similarities: their ``low_percentile``-th and ``high_percentile``-th
    percentiles (linear interpolation, NumPy's default).

    Args:
      similarities: ``[N]`` similarities recorded during warm-up. NaN entries
        (e.g. the first checkpoint) are ignored.
      low_percentile, high_percentile: in ``[0, 100]``, ``low <= high``.
      mask: optional ``[N]`` bool, which entries to use (fixed-size buffers inside ``jit``).

    Returns:
      ``Thresholds(tau_low, tau_high)``; NaN when no entry is usable.
    """
    if not 0.0 <= low_percentile <= high_percentile <= 100.0:
        raise ValueError(
            "`low_percentile` and `high_percentile` must satisfy 0 <= low <= high <= 100; "
            f"got {low_percentile!r} and {high_percentile!r}."
        )
    s = jnp.asarray(similarities, jnp.float32)
    if s.ndim != 1:
        raise ValueError(f"`similarities` must have rank 1 ([N]); got shape {s.shape}.")
    if mask is not None:
        if jnp.shape(mask) != s.shape:
            raise ValueError(
                f"`mask` must have the shape of `similarities` {s.shape}; got {jnp.shape(mask)}."
            )
        s = jnp.where(mask, s, jnp.nan)
    low, high = jnp.nanpercentile(s, jnp.asarray([low_percentile, high_percentile]))
    return Thresholds(low, high)


def regime_fractions(regimes: np.ndarray) -> dict[str, float]:
    """Fraction of readings in each regime (``UNKNOWN`` included), keyed by name."""
    regimes = np.asarray(regimes)
    total = max(regimes.size, 1)
    return {name: float(np.sum(regimes == i)) / total for i, name in enumerate(REGIME_NAMES)}
