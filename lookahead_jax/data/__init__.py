"""The shipped byte-level English corpus (PSF-licensed Python documentation) and its batchers."""

from lookahead_jax.data.corpus import (
    SPLITS,
    batch_for_step,
    documents,
    eval_windows,
    heldout_prompts,
    load_corpus,
    sample_batch,
)
from lookahead_jax.data.tokens import token_prompts, token_stream, token_windows

__all__ = [
    "SPLITS",
    "batch_for_step",
    "documents",
    "eval_windows",
    "heldout_prompts",
    "load_corpus",
    "sample_batch",
    "token_prompts",
    "token_stream",
    "token_windows",
]
