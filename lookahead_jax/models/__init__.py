"""Reference decoder-only transformer (GPT-2 architecture), KV cache, HF interop, shipped models."""

from lookahead_jax.models.cache import KVCache, init_cache, keep_path, overflowed, rewind
from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.hf_gpt2 import load_hf_gpt2, save_hf_gpt2
from lookahead_jax.models.model import Model
from lookahead_jax.models.pretrained import available_pretrained, load_pretrained
from lookahead_jax.models.scoring import bits_per_byte, greedy_agreement, next_token_nll
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
    "Model",
    "Params",
    "TransformerConfig",
    "apply",
    "available_pretrained",
    "bits_per_byte",
    "final_norm",
    "greedy_agreement",
    "init_cache",
    "init_params",
    "keep_path",
    "load_hf_gpt2",
    "load_pretrained",
    "logits_from_hidden",
    "next_token_nll",
    "overflowed",
    "param_shapes",
    "rewind",
    "save_hf_gpt2",
]
