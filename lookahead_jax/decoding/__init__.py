"""Generation loops and lookahead decoding strategies."""

from lookahead_jax.decoding._strategy_common import Compute
from lookahead_jax.decoding.adadec import (
    AdaDecParams,
    AdaDecResult,
    AdaDecState,
    ThresholdFit,
    adadec,
    adadec_init,
    adadec_step,
    fit_adadec_threshold,
    fit_entropy_threshold,
    lookahead_scores,
)
from lookahead_jax.decoding.cntp import (
    CNTPParams,
    CNTPResult,
    CNTPState,
    CNTPStepInfo,
    cntp,
    cntp_init,
    cntp_step,
)
from lookahead_jax.decoding.first_finish import FirstFinish, first_finish
from lookahead_jax.decoding.generate import Generation, GenerationStats, generate
from lookahead_jax.decoding.latr import (
    LATRParams,
    LATRResult,
    LATRState,
    latr,
    latr_init,
    latr_step,
    normalized_edit_distance,
)
from lookahead_jax.decoding.momentum import MomentumResult, momentum_decoding, repeat_lengths
from lookahead_jax.decoding.rollouts import (
    Rollouts,
    RolloutState,
    rollout_init,
    rollout_step,
    sample_rollouts,
)

__all__ = [
    "AdaDecParams",
    "AdaDecResult",
    "AdaDecState",
    "CNTPParams",
    "CNTPResult",
    "CNTPState",
    "CNTPStepInfo",
    "Compute",
    "FirstFinish",
    "Generation",
    "GenerationStats",
    "LATRParams",
    "LATRResult",
    "LATRState",
    "MomentumResult",
    "RolloutState",
    "Rollouts",
    "ThresholdFit",
    "adadec",
    "adadec_init",
    "adadec_step",
    "cntp",
    "cntp_init",
    "cntp_step",
    "first_finish",
    "fit_adadec_threshold",
    "fit_entropy_threshold",
    "generate",
    "latr",
    "latr_init",
    "latr_step",
    "lookahead_scores",
    "momentum_decoding",
    "normalized_edit_distance",
    "repeat_lengths",
    "rollout_init",
    "rollout_step",
    "sample_rollouts",
]
