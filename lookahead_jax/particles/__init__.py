"""Particle filtering: resampling, ESS, SMC steps, the bootstrap filter and its Kalman reference,
sharded particles, entropic annealing and language-model particle filtering."""

from lookahead_jax.particles.bootstrap import FilterResult, bootstrap_filter
from lookahead_jax.particles.entropic import (
    SCHEDULES,
    entropic_temperature,
    normalized_entropy,
    schedule_temperature,
)
from lookahead_jax.particles.kalman import KalmanResult, kalman_filter
from lookahead_jax.particles.lm import (
    WEIGHTINGS,
    LMFilterResult,
    LMParticles,
    LMRoundInfo,
    lm_particle_filter,
    logit_reward,
    majority_vote,
)
from lookahead_jax.particles.resampling import (
    METHODS,
    ancestors_from_offspring,
    offspring_counts,
    resample,
)
from lookahead_jax.particles.sharded import IslandResult, island_bootstrap_filter
from lookahead_jax.particles.smc import (
    Resampled,
    SMCInfo,
    SMCState,
    adaptive_resample,
    init,
    reweight,
    step,
)
from lookahead_jax.particles.ssm import LinearGaussianSSM, StateSpaceModel
from lookahead_jax.particles.weights import ess, log_mean_exp, normalize

__all__ = [
    "METHODS",
    "SCHEDULES",
    "WEIGHTINGS",
    "FilterResult",
    "IslandResult",
    "KalmanResult",
    "LMFilterResult",
    "LMParticles",
    "LMRoundInfo",
    "LinearGaussianSSM",
    "Resampled",
    "SMCInfo",
    "SMCState",
    "StateSpaceModel",
    "adaptive_resample",
    "ancestors_from_offspring",
    "bootstrap_filter",
    "entropic_temperature",
    "ess",
    "init",
    "island_bootstrap_filter",
    "kalman_filter",
    "lm_particle_filter",
    "log_mean_exp",
    "logit_reward",
    "majority_vote",
    "normalize",
    "normalized_entropy",
    "offspring_counts",
    "resample",
    "reweight",
    "schedule_temperature",
    "step",
]
