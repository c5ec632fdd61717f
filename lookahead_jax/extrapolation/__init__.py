"""Leap+Verify: regime-adaptive weight extrapolation, verified on held-out loss.

Fingerprints and regimes (``model_fingerprint``, ``cosine_similarity``,
``classify_regime``, ``calibrate_thresholds``), predictors (``predict`` with
``linear | quadratic | quadratic_clamped | momentum``, and ``lawa`` averaging),
acceptance tests (``accept`` with ``strict | adaptive | proximity``) and the
optax-compatible training wrapper ``leap_verify``.

The contract (key first, one frozen config, NamedTuple states and infos):

* training: ``LeapConfig`` (inside ``optimizer = leap_verify(inner, config, ...)``),
  ``leap_init(params, optimizer) -> TrainState``,
  ``leap_step(key, state, batch, *, loss_fn, optimizer) -> (TrainState, LeapTrainInfo)``,
  ``leap_run(key, state, batches, *, loss_fn, optimizer)`` (``lax.scan`` of ``leap_step``);
* regime tracking: ``RegimeConfig``, ``regime_init(fingerprint, config) -> RegimeState``,
  ``regime_step(key, state, fingerprint, config) -> (RegimeState, RegimeInfo)``,
  ``regime_run(key, state, fingerprints, config)``.

``init_train_state``, ``make_train_step`` and ``StepInfo`` are the earlier names, kept.
"""

from lookahead_jax.extrapolation.acceptance import CRITERIA, accept, recent_sigma
from lookahead_jax.extrapolation.fingerprints import (
    SIMILARITY_MODES,
    cosine_similarity,
    mean_pool,
    model_fingerprint,
    probe_mask,
)
from lookahead_jax.extrapolation.predictors import (
    METHODS,
    MIN_HISTORY,
    PREDICTOR_METHODS,
    adam_moments,
    lawa,
    predict,
)
from lookahead_jax.extrapolation.regimes import (
    CHAOTIC,
    REGIME_NAMES,
    STABLE,
    TRANSITION,
    UNKNOWN,
    RegimeConfig,
    RegimeInfo,
    RegimeState,
    Thresholds,
    calibrate_thresholds,
    classify_regime,
    confirmed_stable,
    regime_fractions,
    regime_init,
    regime_run,
    regime_step,
    stable_streaks,
)
from lookahead_jax.extrapolation.wrapper import (
    ACCEPTED,
    LEAP_IN,
    NOT_ATTEMPTED,
    REJECTED,
    LeapConfig,
    LeapInfo,
    LeapState,
    LeapTrainInfo,
    StepInfo,
    TrainState,
    advance_counts,
    find_leap_state,
    init_train_state,
    leap_init,
    leap_run,
    leap_step,
    leap_verify,
    make_train_step,
)

__all__ = [
    "ACCEPTED",
    "CHAOTIC",
    "CRITERIA",
    "LEAP_IN",
    "METHODS",
    "MIN_HISTORY",
    "NOT_ATTEMPTED",
    "PREDICTOR_METHODS",
    "REGIME_NAMES",
    "REJECTED",
    "SIMILARITY_MODES",
    "STABLE",
    "TRANSITION",
    "UNKNOWN",
    "LeapConfig",
    "LeapInfo",
    "LeapState",
    "LeapTrainInfo",
    "RegimeConfig",
    "RegimeInfo",
    "RegimeState",
    "StepInfo",
    "Thresholds",
    "TrainState",
    "accept",
    "adam_moments",
    "advance_counts",
    "calibrate_thresholds",
    "classify_regime",
    "confirmed_stable",
    "cosine_similarity",
    "find_leap_state",
    "init_train_state",
    "lawa",
    "leap_init",
    "leap_run",
    "leap_step",
    "leap_verify",
    "make_train_step",
    "mean_pool",
    "model_fingerprint",
    "predict",
    "probe_mask",
    "recent_sigma",
    "regime_fractions",
    "regime_init",
    "regime_run",
    "regime_step",
    "stable_streaks",
]
