"""One decoder for GPT-2, Llama/Mistral, Qwen2/3 and Gemma 2; KV cache, HF interop, tokenizers."""

from lookahead_jax.models.cache import KVCache, init_cache, keep_path, overflowed, rewind
from lookahead_jax.models.config import (
    FAMILIES,
    MODEL_TYPES,
    TransformerConfig,
    gemma2,
    gpt2,
    llama,
    mistral,
    qwen2,
    qwen3,
)
from lookahead_jax.models.hf import config_from_hf, hf_config_dict, load_hf, save_hf
from lookahead_jax.models.hf_gpt2 import load_hf_gpt2, save_hf_gpt2
from lookahead_jax.models.model import Model
from lookahead_jax.models.partitioning import (
    batch_sharding,
    cache_shardings,
    make_mesh,
    make_model_mesh,
    param_shardings,
    param_specs,
    shard_params,
)
from lookahead_jax.models.plan import (
    PRESETS,
    GenerationPlan,
    ModelPlan,
    check_mesh,
    plan_generation,
    preset,
)
from lookahead_jax.models.pretrained import available_pretrained, load_pretrained
from lookahead_jax.models.scoring import (
    bits_per_byte,
    continuation_log_probs,
    greedy_agreement,
    next_token_nll,
)
from lookahead_jax.models.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from lookahead_jax.models.transformer import (
    Params,
    apply,
    final_norm,
    init_params,
    logits_from_hidden,
    param_dtype,
    param_shapes,
    rope_frequencies,
)

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "PRESETS",
    "ByteTokenizer",
    "GenerationPlan",
    "KVCache",
    "Model",
    "ModelPlan",
    "Params",
    "Tokenizer",
    "TransformerConfig",
    "apply",
    "available_pretrained",
    "batch_sharding",
    "bits_per_byte",
    "cache_shardings",
    "check_mesh",
    "config_from_hf",
    "continuation_log_probs",
    "final_norm",
    "gemma2",
    "gpt2",
    "greedy_agreement",
    "hf_config_dict",
    "init_cache",
    "init_params",
    "keep_path",
    "llama",
    "load_hf",
    "load_hf_gpt2",
    "load_pretrained",
    "load_tokenizer",
    "logits_from_hidden",
    "make_mesh",
    "make_model_mesh",
    "mistral",
    "next_token_nll",
    "overflowed",
    "param_dtype",
    "param_shapes",
    "param_shardings",
    "param_specs",
    "plan_generation",
    "preset",
    "qwen2",
    "qwen3",
    "rewind",
    "rope_frequencies",
    "save_hf",
    "save_hf_gpt2",
    "shard_params",
]
