"""Verification of drafted tokens: greedy, lossless speculative sampling, typical acceptance."""

from lookahead_jax.verification.chain import (
    MEDUSA_THRESHOLDS,
    MEDUSA_THRESHOLDS_SWAPPED,
    Verified,
    acceptance_probability,
    entropy,
    greedy,
    residual_distribution,
    speculative_sampling,
    typical_acceptance,
)

__all__ = [
    "MEDUSA_THRESHOLDS",
    "MEDUSA_THRESHOLDS_SWAPPED",
    "Verified",
    "acceptance_probability",
    "entropy",
    "greedy",
    "residual_distribution",
    "speculative_sampling",
    "typical_acceptance",
]
