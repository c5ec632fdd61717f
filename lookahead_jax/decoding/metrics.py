"""The decoding strategies' scores: they live in ``lookahead_jax.metrics`` (one copy for the
library); this module re-exports them for existing imports."""

from lookahead_jax.metrics import (
    log_softmax,
    mean_nll,
    normalized_edit_distance,
    perplexity,
    token_log_probs,
    token_nll,
)

__all__ = [
    "log_softmax",
    "mean_nll",
    "normalized_edit_distance",
    "perplexity",
    "token_log_probs",
    "token_nll",
]
