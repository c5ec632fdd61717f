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

Online, the regime tracker follows the library's contract: ``RegimeConfig`` (static),
``regime_init(fingerprint, config) -> RegimeState``, ``regime_step(key, state, fingerprint,
config) -> (RegimeState, RegimeInfo)`` (one check) and ``regime_run`` (a ``lax.scan`` of
``regime_step`` over ``[N, P, D]`` fingerprints). The Leap+Verify wrapper runs the same
``regime_step`` at each of its checks.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax.extrapolation.fingerprints import SIMILARITY_MODES, cosine_similarity

UNKNOWN, CHAOTIC, TRANSITION, STABLE = 0, 1, 2, 3
REGIME_NAMES = ("unknown", "chaotic", "transition", "stable")
CONFIRM_AFTER = 2  # consecutive stable readings that confirm a stable regime


class Thresholds(NamedTuple):
    """Regime thresholds ``tau_low < tau_high`` on the fingerprint similarity."""

    tau_low: jax.Array  # [] float32
    tau_high: jax.Array  # [] float32


def _check_thresholds(tau_low, tau_high) -> None:
    """``tau_low <= tau_high``: at once when concrete, else through ``lookahead_jax.checks``."""
    from lookahead_jax import checks

    low, high = jnp.asarray(tau_low), jnp.asarray(tau_high)
    checks.check_value(
        ~(low > high),  # NaN thresholds (not calibrated yet) pass
        "`tau_low` must be <= `tau_high`; got tau_low={low}, tau_high={high}.",
        low=low,
        high=high,
    )


def classify_regime(similarity: jax.Array, tau_low: jax.Array, tau_high: jax.Array) -> jax.Array:
    """The regime of each similarity: ``[...]`` float -> ``[...]`` int32 in ``REGIME_NAMES``.

    ``similarity >= tau_high`` is ``STABLE``, ``similarity <= tau_low`` is ``CHAOTIC``
    (both boundaries inclusive), anything between is ``TRANSITION`` and NaN is ``UNKNOWN``.

    Raises:
      ValueError: ``tau_low > tau_high`` (at once when concrete; traced, under
        ``lookahead_jax.checked``).
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


@dataclasses.dataclass(frozen=True)
class RegimeConfig:
    """Settings of the online regime tracker (static, hashable).

    Attributes:
      tau_low, tau_high: regime thresholds; both ``None`` calibrates them from the
        ``low_percentile`` / ``high_percentile`` of the first ``calibration_checks``
        similarities (regime ``UNKNOWN`` until then).
      similarity_mode: ``"concat"`` (paper) or ``"per_probe"`` (code).
      max_checks: length of the similarity ring buffer (``>= calibration_checks``).
    """

    tau_low: float | None = None
    tau_high: float | None = None
    calibration_checks: int = 10
    low_percentile: float = 30.0
    high_percentile: float = 70.0
    similarity_mode: str = "concat"
    max_checks: int = 256

    def __post_init__(self) -> None:
        value = self.max_checks
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`max_checks` must be a positive int; got {value!r}.")
        if self.similarity_mode not in SIMILARITY_MODES:
            raise ValueError(
                f"`similarity_mode` must be one of {SIMILARITY_MODES}; "
                f"got {self.similarity_mode!r}."
            )
        if (self.tau_low is None) != (self.tau_high is None):
            raise ValueError(
                "`tau_low` and `tau_high` must both be given or both be None (calibrate); "
                f"got tau_low={self.tau_low!r}, tau_high={self.tau_high!r}."
            )
        if self.tau_low is not None and not self.tau_low <= self.tau_high:
            raise ValueError(
                f"`tau_low` must be <= `tau_high`; got {self.tau_low!r} > {self.tau_high!r}."
            )
        if self.tau_low is None:
            if not 2 <= self.calibration_checks <= self.max_checks:
                raise ValueError(
                    f"`calibration_checks` must lie in [2, max_checks={self.max_checks}] to "
                    f"calibrate the thresholds; got {self.calibration_checks!r}."
                )
            if not 0.0 <= self.low_percentile <= self.high_percentile <= 100.0:
                raise ValueError(
                    "`low_percentile` and `high_percentile` must satisfy 0 <= low <= high "
                    f"<= 100; got {self.low_percentile!r} and {self.high_percentile!r}."
                )


class RegimeState(NamedTuple):
    """What the tracker carries from one check to the next; ``[P, D]`` the fingerprint's
    shape, ``C = config.max_checks``."""

    fingerprint: jax.Array  # [P, D] float32: the last finite fingerprint
    has_fingerprint: jax.Array  # [] bool
    stable_streak: jax.Array  # [] int32: consecutive stable readings
    thresholds: Thresholds  # [] float32 each; NaN until calibrated
    num_checks: jax.Array  # [] int32
    similarities: jax.Array  # [C] float32 ring (index check % C), NaN where unset


class RegimeInfo(NamedTuple):
    """Diagnostics of one check (never read back by the tracker)."""

    similarity: jax.Array  # [] float32: cosine with the previous fingerprint (NaN: none)
    regime: jax.Array  # [] int32: UNKNOWN / CHAOTIC / TRANSITION / STABLE
    confirmed: jax.Array  # [] bool: stable confirmed (CONFIRM_AFTER consecutive readings)
    finite: jax.Array  # [] bool: the fingerprint was finite (else: skipped, regime UNKNOWN)


def ring_push(buffer: jax.Array, index: jax.Array, value: jax.Array) -> jax.Array:
    """``buffer [C]`` with ``value`` written at ``index % C``."""
    return buffer.at[index % buffer.shape[0]].set(jnp.asarray(value).astype(buffer.dtype))


def regime_init(fingerprint: jax.Array, config: RegimeConfig) -> RegimeState:
    """The tracker before any check. ``fingerprint``: an array (or ``ShapeDtypeStruct``)
    with the fingerprints' shape ``[P, D]`` (only its shape is used)."""
    if not isinstance(config, RegimeConfig):
        raise ValueError(f"`config` must be a RegimeConfig; got {type(config).__name__}.")
    shape = tuple(getattr(fingerprint, "shape", None) or jnp.shape(fingerprint))
    if len(shape) < 1:
        raise ValueError(f"`fingerprint` must have rank >= 1 ([P, D]); got shape {shape}.")
    if config.tau_low is None:
        thresholds = Thresholds(jnp.float32(jnp.nan), jnp.float32(jnp.nan))
    else:
        thresholds = Thresholds(jnp.float32(config.tau_low), jnp.float32(config.tau_high))
    zero = jnp.zeros((), jnp.int32)
    return RegimeState(
        fingerprint=jnp.zeros(shape, jnp.float32),
        has_fingerprint=jnp.zeros((), bool),
        stable_streak=zero,
        thresholds=thresholds,
        num_checks=zero,
        similarities=jnp.full((config.max_checks,), jnp.nan, jnp.float32),
    )


def regime_step(
    key: jax.Array | None, state: RegimeState, fingerprint: jax.Array, config: RegimeConfig
) -> tuple[RegimeState, RegimeInfo]:
    """One check: compares ``fingerprint [P, D]`` with the previous one, classifies the
    regime and (with calibration) sets the thresholds after ``calibration_checks`` checks.

    ``key`` is unused (the tracker is deterministic); it comes first for the library's
    uniform ``step(key, state, ...)`` contract. Similarities are computed in float32
    (cosines of float32 fingerprints). A non-finite fingerprint is reported
    (``info.finite`` false, regime ``UNKNOWN``) and not kept as the previous fingerprint.
    """
    del key
    if jnp.shape(fingerprint) != state.fingerprint.shape:
        raise ValueError(
            f"`fingerprint` must have shape {state.fingerprint.shape} (that of regime_init); "
            f"got {jnp.shape(fingerprint)}."
        )
    fp = jnp.asarray(fingerprint, jnp.float32)
    finite = jnp.all(jnp.isfinite(fp))
    usable = state.has_fingerprint & finite
    sim = jnp.where(
        usable, cosine_similarity(fp, state.fingerprint, config.similarity_mode), jnp.nan
    )
    index = state.num_checks
    similarities = ring_push(state.similarities, index, sim)
    thresholds = state.thresholds
    if config.tau_low is None:
        calibrate_now = index + 1 == config.calibration_checks
        fresh = calibrate_thresholds(
            similarities,
            config.low_percentile,
            config.high_percentile,
            mask=jnp.arange(config.max_checks) < config.calibration_checks,
        )
        thresholds = jax.tree.map(
            lambda new, old: jnp.where(calibrate_now, new, old), fresh, thresholds
        )
    regime = jnp.where(
        jnp.isnan(thresholds.tau_low),
        UNKNOWN,
        classify_regime(sim, thresholds.tau_low, thresholds.tau_high),
    ).astype(jnp.int32)
    streak = jnp.where(regime == STABLE, state.stable_streak + 1, 0).astype(jnp.int32)
    new = RegimeState(
        fingerprint=jnp.where(finite, fp, state.fingerprint),
        has_fingerprint=state.has_fingerprint | finite,
        stable_streak=streak,
        thresholds=thresholds,
        num_checks=index + 1,
        similarities=similarities,
    )
    return new, RegimeInfo(sim, regime, streak >= CONFIRM_AFTER, finite)


def regime_run(
    key: jax.Array | None, state: RegimeState, fingerprints: jax.Array, config: RegimeConfig
) -> tuple[RegimeState, RegimeInfo]:
    """``regime_step`` over ``fingerprints [N, P, D]`` in one ``lax.scan``; infos ``[N]``."""
    shape = jnp.shape(fingerprints)
    if shape[1:] != state.fingerprint.shape or not shape or shape[0] < 1:
        want = ", ".join(map(str, state.fingerprint.shape))
        raise ValueError(f"`fingerprints` must have shape [N >= 1, {want}]; got {shape}.")

    def body(carry: RegimeState, fp: jax.Array) -> tuple[RegimeState, RegimeInfo]:
        return regime_step(key, carry, fp, config)

    return jax.lax.scan(body, state, jnp.asarray(fingerprints))
