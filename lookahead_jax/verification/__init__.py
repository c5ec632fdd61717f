"""Verification of drafted tokens: greedy, lossless speculative sampling, typical acceptance,
and their tree versions."""

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
from lookahead_jax.verification.tree import TreeVerified, tree_greedy, tree_speculative_sampling

__all__ = [
    "MEDUSA_THRESHOLDS",
    "MEDUSA_THRESHOLDS_SWAPPED",
    "TreeVerified",
    "Verified",
    "acceptance_probability",
    "entropy",
    "greedy",
    "residual_distribution",
    "speculative_sampling",
    "tree_greedy",
    "tree_speculative_sampling",
    "typical_acceptance",
]
