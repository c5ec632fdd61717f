"""Reference decoder-only transformer (GPT-2 architecture), KV cache, HF interop, shipped models."""

from lookahead_jax.models.cache import KVCache, init_cache, keep_path, overflowed, rewind
from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.transformer import (
    Params,
    apply,
    final_norm,
    init_params,
    logits_from_hidden,
    param_shapes,
)

__all__ = [
    "KVCache",
    "Params",
    "TransformerConfig",
    "apply",
    "final_norm",
    "init_cache",
    "init_params",
    "keep_path",
    "logits_from_hidden",
    "overflowed",
    "param_shapes",
    "rewind",
]
