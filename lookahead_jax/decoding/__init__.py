"""Generation loops and lookahead decoding strategies."""

from lookahead_jax.decoding._strategy_common import Compute
from lookahead_jax.decoding.adadec import (
    AdaDecParams,
    AdaDecResult,
    ThresholdFit,
    adadec,
    fit_adadec_threshold,
    fit_entropy_threshold,
)
from lookahead_jax.decoding.cntp import (
    CNTPParams,
    CNTPResult,
    CNTPStepInfo,
    cntp,
    cntp_init,
    cntp_step,
)
from lookahead_jax.decoding.first_finish import FirstFinish, first_finish
from lookahead_jax.decoding.generate import Generation, GenerationStats, generate
from lookahead_jax.decoding.latr import LATRParams, LATRResult, latr, normalized_edit_distance
from lookahead_jax.decoding.momentum import MomentumResult, momentum_decoding
from lookahead_jax.decoding.rollouts import Rollouts, sample_rollouts

__all__ = [
    "AdaDecParams",
    "AdaDecResult",
    "CNTPParams",
    "CNTPResult",
    "CNTPStepInfo",
    "Compute",
    "FirstFinish",
    "Generation",
    "GenerationStats",
    "LATRParams",
    "LATRResult",
    "MomentumResult",
    "Rollouts",
    "ThresholdFit",
    "adadec",
    "cntp",
    "cntp_init",
    "cntp_step",
    "first_finish",
    "fit_adadec_threshold",
    "fit_entropy_threshold",
    "generate",
    "latr",
    "momentum_decoding",
    "normalized_edit_distance",
    "sample_rollouts",
]
