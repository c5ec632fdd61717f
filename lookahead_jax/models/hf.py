"""HuggingFace checkpoints of every supported family: ``load_hf`` and ``save_hf``.

Reads ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) with ``safetensors``' NumPy interface, so
neither torch nor transformers is needed. ``model_type`` chooses the family
(``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma2``); every field
the decoder does not implement is rejected with a ``ValueError`` naming it.
Everything is checked (names, shapes, dtypes) before any tensor is read, and
tensors are converted and placed one at a time (per-layer tensors are stacked
into one preallocated array per parameter), so the model is never held twice
in host memory.

Written folders load in transformers' ``AutoModelForCausalLM.from_pretrained``
with the same logits (tests check it for every family).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, Sharding
from safetensors import safe_open
from safetensors.numpy import save_file

from lookahead_jax.models import config as _config
from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.transformer import Params, param_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
# transformers' config defaults for fields a config.json may leave out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=2048,
        rope_theta=10000.0, hidden_act="silu", head_dim=None, sliding_window=None,
    ),
    "mistral": dict(
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096 * 32,
        rope_theta=10000.0, hidden_act="silu", head_dim=None, sliding_window=4096,
    ),
    "qwen2": dict(
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768,
        rope_theta=10000.0, hidden_act="silu", head_dim=None, sliding_window=None,
    ),
    "qwen3": dict(
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768,
        rope_theta=10000.0, hidden_act="silu", head_dim=128, sliding_window=None,
    ),
    "gemma2": dict(
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=8192,
        rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh", head_dim=256,
        sliding_window=4096, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
}  # fmt: skip
_GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new",
    "tie_word_embeddings": True,
}
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are tanh-approximate GELU
_GPT2_REQUIRED_FLAGS = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
# Buffers some checkpoints store next to the parameters; they are recomputed, not loaded.
_BUFFERS = re.compile(r".*(\.attn\.(bias|masked_bias)|rotary_emb\.inv_freq)")
_HEAD = "lm_head.weight"


def _field(hf: dict[str, Any], name: str, model_type: str) -> Any:
    if name in hf:
        return hf[name]
    if model_type == "gpt2":
        return _GPT2_DEFAULTS.get(name)
    return _DEFAULTS[model_type].get(name)


def _rope_fields(hf: dict[str, Any], model_type: str, source: Path) -> dict[str, Any]:
    """Rotary settings from ``rope_parameters`` (newer) or ``rope_theta`` + ``rope_scaling``."""
    parameters = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for name, value in (("rope_parameters", parameters), ("rope_scaling", scaling)):
        if not isinstance(value, dict):
            raise ValueError(f"{source}: `{name}` must be an object or null; got {value!r}.")
    if parameters and all(isinstance(v, dict) for v in parameters.values()):
        raise ValueError(
            f"{source}: `rope_parameters` per attention type is not supported (one rotary "
            f"setting for every layer is); got keys {sorted(parameters)}."
        )
    merged = {**scaling, **parameters}
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in _config.ROPE_TYPES:
        raise ValueError(
            f"{source}: rope scaling type (`rope_type`) must be one of {_config.ROPE_TYPES}; "
            f"got {rope_type!r}."
        )
    partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(
            f"{source}: `partial_rotary_factor` must be 1.0 (rotary on the whole head); "
            f"got {partial!r}."
        )
    theta = merged.get("rope_theta", hf.get("rope_theta", _field(hf, "rope_theta", model_type)))
    fields: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        if "factor" not in merged:
            raise ValueError(f"{source}: rope scaling {rope_type!r} needs a `factor`; got none.")
        fields["rope_factor"] = float(merged["factor"])
    if rope_type == "llama3":
        for ours, theirs in (
            ("rope_low_freq_factor", "low_freq_factor"),
            ("rope_high_freq_factor", "high_freq_factor"),
            ("rope_original_max_length", "original_max_position_embeddings"),
        ):
            if theirs not in merged:
                raise ValueError(f"{source}: rope scaling 'llama3' needs `{theirs}`; got none.")
            fields[ours] = merged[theirs]
        fields["rope_original_max_length"] = int(fields["rope_original_max_length"])
    return fields


def _gpt2_config(hf: dict[str, Any], source: Path) -> TransformerConfig:
    def field(name: str) -> Any:
        return _field(hf, name, "gpt2")

    activation = field("activation_function")
    if activation not in _GPT2_ACTIVATIONS:
        raise ValueError(
            f"{source}: `activation_function` must be one of {_GPT2_ACTIVATIONS} "
            f"(tanh-approximate GELU, the only one the model implements); got {activation!r}."
        )
    for name, supported in _GPT2_REQUIRED_FLAGS.items():
        value = hf.get(name, supported)
        if bool(value) != supported:
            raise ValueError(
                f"{source}: `{name}` must be {supported} (the model does not implement the "
                f"alternative); got {value!r}."
            )
    return _config.gpt2(
        vocab_size=field("vocab_size"),
        num_layers=field("n_layer"),
        num_heads=field("n_head"),
        d_model=field("n_embd"),
        max_length=field("n_positions"),
        mlp_dim=field("n_inner"),
        layer_norm_eps=float(field("layer_norm_epsilon")),
    )


def _sliding_layers(hf: dict[str, Any], model_type: str, num_layers: int, source: Path):
    """``(sliding_window, sliding_layers)`` from ``layer_types`` or the family's rule."""
    window = _field(hf, "sliding_window", model_type)
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        allowed = ("full_attention", "sliding_attention")
        if len(layer_types) != num_layers or any(t not in allowed for t in layer_types):
            raise ValueError(
                f"{source}: `layer_types` must list {num_layers} entries of {allowed}; "
                f"got {layer_types!r}."
            )
        sliding = tuple(t == "sliding_attention" for t in layer_types)
    elif model_type == "gemma2":
        sliding = tuple(i % 2 == 0 for i in range(num_layers))
    elif model_type in ("qwen2", "qwen3") and window is not None:
        first = hf.get("max_window_layers", num_layers)
        sliding = tuple(i >= first for i in range(num_layers))
    else:
        sliding = None  # every layer, when there is a window (Mistral)
    if window is None:
        return None, None
    if sliding is not None and not any(sliding):
        return None, None
    return int(window), sliding


def config_from_hf(hf: dict[str, Any], source: str | os.PathLike[str] = CONFIG_FILE):
    """Maps a transformers ``config.json`` dict to a ``TransformerConfig``.

    Raises:
      ValueError: unknown ``model_type``, or a field the decoder does not implement
        (rope scaling types other than default/linear/llama3, mixture-of-experts,
        activations, partial rotary embeddings, cross-attention), naming the field.
    """
    source = Path(source)
    model_type = hf.get("model_type")
    if model_type not in _config.MODEL_TYPES:
        raise ValueError(
            f"{source}: `model_type` must be one of {_config.MODEL_TYPES}; got {model_type!r}."
        )
    try:
        if model_type == "gpt2":
            return _gpt2_config(hf, source)
        for name in _MOE_FIELDS:
            if hf.get(name):
                raise ValueError(
                    f"{source}: mixture-of-experts (`{name}`={hf[name]!r}) is not supported; "
                    "only dense decoders are."
                )
        act_name = "hidden_activation" if model_type == "gemma2" else "hidden_act"
        activation = _field(hf, act_name, model_type)
        if model_type == "gemma2" and activation is None:
            activation = hf.get("hidden_act", "gelu_pytorch_tanh")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"{source}: `{act_name}` must be one of {sorted(_ACTIVATIONS)}; got {activation!r}."
            )
        num_layers = hf["num_hidden_layers"]
        window, sliding = _sliding_layers(hf, model_type, num_layers, source)
        fields: dict[str, Any] = dict(
            vocab_size=hf["vocab_size"],
            num_layers=num_layers,
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            d_model=hf["hidden_size"],
            head_dim=_field(hf, "head_dim", model_type),
            mlp_dim=hf["intermediate_size"],
            max_length=int(_field(hf, "max_position_embeddings", model_type)),
            layer_norm_eps=float(_field(hf, "rms_norm_eps", model_type)),
            tie_embeddings=bool(_field(hf, "tie_word_embeddings", model_type)),
            activation=_ACTIVATIONS[activation],
            sliding_window=window,
            sliding_layers=sliding,
            **_rope_fields(hf, model_type, source),
        )
        if model_type in ("llama", "qwen3", "gemma2"):
            bias = bool(hf.get("attention_bias", False))
            fields.update(qkv_bias=bias, out_bias=bias)
        if model_type == "llama":
            fields["mlp_bias"] = bool(hf.get("mlp_bias", False))
        if model_type == "gemma2":
            fields.update(
                query_pre_attn_scalar=float(_field(hf, "query_pre_attn_scalar", model_type)),
                attn_logit_softcap=_optional_float(_field(hf, "attn_logit_softcapping", "gemma2")),
                final_logit_softcap=_optional_float(
                    _field(hf, "final_logit_softcapping", "gemma2")
                ),
            )
        return _config.FAMILIES[model_type](**fields)
    except KeyError as error:
        raise ValueError(f"{source}: missing field {error.args[0]!r}.") from error
    except (TypeError, ValueError) as error:
        if str(error).startswith(str(source)):
            raise
        raise ValueError(f"{source}: invalid {model_type} configuration: {error}") from error


def _int_if_whole(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def hf_config_dict(
    config: TransformerConfig, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The ``config.json`` transformers loads into an equivalent model, every field explicit."""
    sliding = config.layer_is_sliding
    if config.model_type == "llama" and any(sliding):
        raise ValueError(
            "`config.sliding_window` must be None for model_type 'llama' (transformers' "
            f"Llama has no sliding window); got {config.sliding_window}. Use 'mistral'."
        )
    if config.model_type == "mistral" and any(sliding) and not all(sliding):
        raise ValueError(
            "`config.sliding_layers` must be None or all True for model_type 'mistral' "
            f"(its window covers every layer); got {config.sliding_layers}."
        )
    default_id = config.vocab_size - 1
    bos = default_id if bos_token_id is None else bos_token_id
    eos = default_id if eos_token_id is None else eos_token_id
    common = {
        "model_type": config.model_type,
        "architectures": [_ARCHITECTURES[config.model_type]],
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": "float32",
        "initializer_range": 0.02,
    }
    if config.model_type == "gpt2":
        return {
            **common,
            "n_layer": config.num_layers,
            "n_head": config.num_heads,
            "n_embd": config.d_model,
            "n_positions": config.max_length,
            "n_ctx": config.max_length,  # read by transformers < 4 and some tools
            "n_inner": config.mlp_dim,
            "layer_norm_epsilon": config.layer_norm_eps,
            "activation_function": "gelu_new",
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            # The model has no dropout, so the exported one has none either.
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
        }
    rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type in ("linear", "llama3"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(
            low_freq_factor=config.rope_low_freq_factor,
            high_freq_factor=config.rope_high_freq_factor,
            original_max_position_embeddings=config.rope_original_max_length,
        )
    out = {
        **common,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_length,
        "rms_norm_eps": config.layer_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "attention_dropout": 0.0,
        "sliding_window": config.sliding_window,
    }
    if config.model_type in ("gemma2", "qwen2", "qwen3"):
        # Llama has no window and Mistral's covers every layer; transformers reads a
        # Mistral config with ``layer_types`` as a different model (Ministral).
        out["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    if config.rope_type != "default":
        out["rope_scaling"] = dict(rope)
    activation = "silu" if config.activation == "silu" else "gelu_pytorch_tanh"
    out["hidden_activation" if config.model_type == "gemma2" else "hidden_act"] = activation
    if config.model_type == "gemma2":
        out["hidden_act"] = activation
        out.update(
            # transformers' Gemma2Config types this field as an int.
            query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar),
            attn_logit_softcapping=config.attn_logit_softcap,
            final_logit_softcapping=config.final_logit_softcap,
            attention_bias=config.qkv_bias,
        )
    if config.model_type in ("llama", "qwen3"):
        out["attention_bias"] = config.qkv_bias
    if config.model_type == "llama":
        out["mlp_bias"] = config.mlp_bias
    if config.model_type in ("qwen2", "qwen3"):
        windowed = config.sliding_window is not None
        out.update(use_sliding_window=windowed, max_window_layers=config.num_layers)
    return out


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One checkpoint tensor: its name (``{i}`` = layer) and the parameter(s) it fills."""

    name: str
    paths: tuple[tuple[str, ...], ...]  # one path, or q/k/v for GPT-2's fused c_attn
    per_layer: bool
    transpose: bool  # torch ``nn.Linear`` stores [out, in]; our kernels are [in, out]


def _plan(config: TransformerConfig) -> list[_Tensor]:
    """Every checkpoint tensor of ``config``'s family, without the model prefix."""
    t = _Tensor
    if config.model_type == "gpt2":
        plan = [
            t("wte.weight", (("wte",),), False, False),
            t("wpe.weight", (("wpe",),), False, False),
        ]
        plan += [t(f"ln_f.{w}", (("ln_f", p),), False, False) for w, p in _LN]
        for w, p in _LN:
            plan.append(t(f"h.{{i}}.ln_1.{w}", (("ln_1", p),), True, False))
            plan.append(t(f"h.{{i}}.ln_2.{w}", (("ln_2", p),), True, False))
        for suffix, kind in (("weight", "kernel"), ("bias", "bias")):
            fused = tuple(("attn", f"{x}_{kind}") for x in "qkv")
            plan.append(t(f"h.{{i}}.attn.c_attn.{suffix}", fused, True, False))
            plan.append(t(f"h.{{i}}.attn.c_proj.{suffix}", (("attn", f"out_{kind}"),), True, False))
            plan.append(t(f"h.{{i}}.mlp.c_fc.{suffix}", (("mlp", f"fc_{kind}"),), True, False))
            plan.append(t(f"h.{{i}}.mlp.c_proj.{suffix}", (("mlp", f"proj_{kind}"),), True, False))
        return plan
    plan = [t("embed_tokens.weight", (("wte",),), False, False)]
    plan.append(t("norm.weight", (("ln_f", "scale"),), False, False))
    layer = "layers.{i}."
    for x in "qkv":
        plan.append(t(f"{layer}self_attn.{x}_proj.weight", (("attn", f"{x}_kernel"),), True, True))
        if config.qkv_bias:
            plan.append(t(f"{layer}self_attn.{x}_proj.bias", (("attn", f"{x}_bias"),), True, False))
    plan.append(t(f"{layer}self_attn.o_proj.weight", (("attn", "out_kernel"),), True, True))
    if config.out_bias:
        plan.append(t(f"{layer}self_attn.o_proj.bias", (("attn", "out_bias"),), True, False))
    if config.qk_norm:
        for x in "qk":
            plan.append(
                t(
                    f"{layer}self_attn.{x}_norm.weight",
                    (("attn", f"{x}_norm", "scale"),),
                    True,
                    False,
                )
            )
    for x in ("gate", "up", "down"):
        plan.append(t(f"{layer}mlp.{x}_proj.weight", (("mlp", f"{x}_kernel"),), True, True))
        if config.mlp_bias:
            plan.append(t(f"{layer}mlp.{x}_proj.bias", (("mlp", f"{x}_bias"),), True, False))
    norms = [("input_layernorm", "ln_1")]
    if config.sandwich_norms:  # Gemma 2 names its four norms differently from Llama
        norms += [
            ("post_attention_layernorm", "ln_post_attn"),
            ("pre_feedforward_layernorm", "ln_2"),
            ("post_feedforward_layernorm", "ln_post_mlp"),
        ]
    else:
        norms.append(("post_attention_layernorm", "ln_2"))
    for theirs, ours in norms:
        plan.append(t(f"{layer}{theirs}.weight", ((ours, "scale"),), True, False))
    return plan


_LN = (("weight", "scale"), ("bias", "bias"))


def _prefix_for(config: TransformerConfig, keys: list[str]) -> str:
    candidate = "transformer." if config.model_type == "gpt2" else "model."
    return candidate if any(key.startswith(candidate) for key in keys) else ""


def _hf_shape(config: TransformerConfig, entry: _Tensor, shapes: Params) -> tuple[int, ...]:
    """The checkpoint tensor's shape (one layer), from our parameter shapes."""
    per = []
    for path in entry.paths:
        node = shapes["layers"] if entry.per_layer else shapes
        for key in path:
            node = node[key]
        per.append(tuple(node.shape[1:] if entry.per_layer else node.shape))
    # Fused q/k/v (GPT-2's c_attn) are concatenated on the last axis.
    shape = (*per[0][:-1], sum(s[-1] for s in per)) if len(per) > 1 else per[0]
    return tuple(reversed(shape)) if entry.transpose else shape


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"`path` must be a directory; got the file {str(local)!r}.")
        return local
    text = str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        try:
            import huggingface_hub
        except ImportError as error:
            raise ValueError(
                f"`path` {text!r} is not a local folder; to fetch it as a Hub repo id, install "
                "`huggingface_hub` (pip install huggingface_hub)."
            ) from error
        return Path(
            huggingface_hub.snapshot_download(text, allow_patterns=["*.json", "*.safetensors"])
        )
    raise ValueError(
        f"`path` must be an existing directory or a Hub repo id 'owner/name'; got {text!r}."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: expected a UTF-8 encoded JSON file; byte {error.start} is not UTF-8 "
            f"({error.reason})."
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; got {type(data).__name__}.")
    return data


def _weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> file, from ``model.safetensors`` or the shard index."""
    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: `weight_map` must map tensor names to shard files.")
        files = sorted({directory / name for name in weight_map.values()})
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index}: lists shard files that are missing: {missing}.")
    else:
        hint = ""
        if (directory / "pytorch_model.bin").is_file():
            hint = " (only safetensors is read; convert pytorch_model.bin first)"
        raise ValueError(f"{directory}: missing {WEIGHTS_FILE} (or {INDEX_FILE}){hint}.")
    located: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    located[key] = file
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{file}: not a readable safetensors file: {error}") from error
    return located


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _target_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32)
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"`dtype` must be None, float32 or bfloat16; got {dtype!r}.")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(np.float32)


def _placer(config: TransformerConfig, sharding: Any) -> Callable[[tuple[str, ...], Any], Any]:
    """``place(path, host_array) -> jax.Array`` for the ``sharding`` argument of ``load_hf``."""
    if sharding is None:
        return lambda path, host: jnp.asarray(host)
    if isinstance(sharding, Mesh):
        from lookahead_jax.models.partitioning import param_shardings

        sharding = param_shardings(config, sharding)
    if isinstance(sharding, Sharding):
        return lambda path, host: jax.device_put(host, sharding)
    if isinstance(sharding, dict):

        def place(path: tuple[str, ...], host: Any) -> Any:
            node = sharding
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    raise ValueError(
                        f"`sharding` has no entry for parameter {'/'.join(path)!r}; pass a Mesh, "
                        "one Sharding, or a tree of Shardings shaped like the parameters."
                    )
                node = node[key]
            return jax.device_put(host, node)

        return place
    raise ValueError(
        "`sharding` must be None, a jax.sharding.Mesh (tensor-parallel rules of "
        "models.param_shardings), one Sharding, or a dict tree of Shardings; got "
        f"{type(sharding).__name__}."
    )


def load_hf(
    path: str | os.PathLike[str], *, dtype: Any = None, sharding: Any = None
) -> tuple[TransformerConfig, Params]:
    """Loads a HuggingFace checkpoint of any supported family as ``(config, params)``.

    Args:
      path: a folder holding ``config.json`` and ``model.safetensors`` (or shards
        with ``model.safetensors.index.json``), as ``save_pretrained`` writes or the
        Hub serves; or a Hub repo id (``"Qwen/Qwen2.5-0.5B"``), downloaded with
        ``huggingface_hub.snapshot_download`` when that package is installed.
      dtype: of the parameters: ``None`` (float32), ``"float32"`` or ``"bfloat16"``.
        Stored tensors (often bfloat16) are converted one at a time.
      sharding: where to place each tensor as it is read: ``None`` (default
        device), a ``Mesh`` with a ``"model"`` axis (tensor-parallel rules of
        ``param_shardings``), one ``Sharding`` for every tensor, or a dict tree of
        ``Sharding`` shaped like the parameters.

    Returns:
      ``(config, params)``: the ``TransformerConfig`` and parameters in
      ``transformer.py``'s layout (per-layer tensors stacked on a leading axis).

    Raises:
      ValueError: missing folder or files, invalid JSON or safetensors, an unknown
        ``model_type`` or unsupported field, missing / unexpected / wrongly shaped /
        non-float / non-finite tensors, an ``lm_head.weight`` that differs from a tied
        embedding, an untied head without ``lm_head.weight``. Nothing is loaded
        until every name, shape and dtype has been checked.
    """
    directory = _resolve_path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory}: missing {CONFIG_FILE}.")
    hf = _read_json(config_path)
    config = config_from_hf(hf, config_path)
    target = _target_dtype(dtype)
    located = _weight_files(directory)
    keys = list(located)
    prefix = _prefix_for(config, keys)
    plan = _plan(config)
    shapes = param_shapes(config)

    expected: dict[str, tuple[int, ...]] = {}  # full key -> shape
    for entry in plan:
        shape = _hf_shape(config, entry, shapes)
        layers = range(config.num_layers) if entry.per_layer else [None]
        for i in layers:
            expected[prefix + entry.name.format(i=i)] = shape
    has_head = _HEAD in located
    unexpected = [k for k in keys if k not in expected and k != _HEAD and not _BUFFERS.fullmatch(k)]
    if unexpected:
        raise ValueError(
            f"{directory}: unexpected tensors {sorted(unexpected)[:8]} for a {config.model_type} "
            f"model with {config.num_layers} layers (key prefix {prefix!r})."
        )
    missing = [k for k in expected if k not in located]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise ValueError(f"{directory}: missing tensors {missing[:8]}{more}.")
    if not config.tie_embeddings and not has_head:
        raise ValueError(
            f"{config_path}: `tie_word_embeddings` is false but the checkpoint holds no {_HEAD!r}."
        )
    if not config.tie_embeddings:
        expected[_HEAD] = (config.vocab_size, config.d_model)

    handles: dict[Path, Any] = {}
    try:
        for file in sorted(set(located.values())):
            handles[file] = safe_open(file, framework="numpy").__enter__()

        def get_slice(key: str) -> Any:
            return handles[located[key]].get_slice(key)

        for key, shape in expected.items():
            tensor = get_slice(key)
            actual = tuple(tensor.get_shape())
            if actual != shape:
                raise ValueError(
                    f"{directory}: tensor {key!r} must have shape {list(shape)} under "
                    f"{CONFIG_FILE}; got {list(actual)}."
                )
            if tensor.get_dtype() not in ("F16", "BF16", "F32", "F64"):
                raise ValueError(
                    f"{directory}: tensor {key!r} must be floating point; got {tensor.get_dtype()}."
                )

        def read(key: str) -> np.ndarray:
            value = handles[located[key]].get_tensor(key)
            # Checked in the stored dtype first (a float64 1e300 is finite but no float32).
            finite = np.isfinite(value)
            if not np.all(finite):
                bad = np.unravel_index(int(np.argmin(finite)), value.shape)
                raise ValueError(
                    f"{directory}: tensor {key!r} must hold finite values; got "
                    f"{value[bad]} at index {list(map(int, bad))}."
                )
            if value.dtype == np.float64 and np.any(np.abs(value) > np.finfo(np.float32).max):
                raise ValueError(
                    f"{directory}: tensor {key!r} must hold values within float32's range; got "
                    f"a largest magnitude of {float(np.max(np.abs(value))):.3g}."
                )
            return value

        if config.tie_embeddings and has_head:
            embed = read(prefix + plan[0].name)
            if not np.array_equal(read(_HEAD), embed):
                raise ValueError(
                    f"{directory}: {_HEAD!r} differs from the token embedding "
                    f"{prefix + plan[0].name!r} but `tie_word_embeddings` is true."
                )
            del embed

        place = _placer(config, sharding)
        params: Params = {}
        splits = [config.num_heads * config.head_dim] + [config.num_kv_heads * config.head_dim] * 2
        for entry in plan:
            if entry.per_layer:
                stacked = [
                    np.empty((config.num_layers, *_leaf(shapes["layers"], p).shape[1:]), target)
                    for p in entry.paths
                ]
                for i in range(config.num_layers):
                    value = read(prefix + entry.name.format(i=i))
                    value = value.T if entry.transpose else value
                    for j, piece in enumerate(_split(value, splits, len(entry.paths))):
                        stacked[j][i] = piece.astype(target)
                    del value
                for p, host in zip(entry.paths, stacked, strict=True):
                    _set(params, ("layers", *p), place(("layers", *p), host))
                del stacked
            else:
                value = read(prefix + entry.name).astype(target)
                (p,) = entry.paths
                _set(params, p, place(p, value.T if entry.transpose else value))
        if not config.tie_embeddings:
            _set(params, ("lm_head",), place(("lm_head",), read(_HEAD).T.astype(target)))
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return config, params


def _split(value: np.ndarray, widths: list[int], count: int) -> list[np.ndarray]:
    if count == 1:
        return [value]
    bounds = np.cumsum(widths)[:-1]
    return np.split(value, bounds, axis=-1)


def _leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, (*prefix, key)))
    return flat


def check_params(config: TransformerConfig, params: Params) -> None:
    """``params`` must have exactly the keys and shapes of ``param_shapes(config)``."""
    if not isinstance(params, dict):
        raise ValueError(f"`params` must be a dict of arrays; got {type(params).__name__}.")
    expected = _flatten(param_shapes(config))
    actual = _flatten(params)
    missing = ["/".join(p) for p in expected if p not in actual]
    extra = ["/".join(p) for p in actual if p not in expected]
    if missing or extra:
        raise ValueError(
            f"`params` must have the keys of `init_params(config)`; missing {missing}, "
            f"unexpected {extra}."
        )
    for path, spec in expected.items():
        value = actual[path]
        shape = tuple(np.shape(value))
        where = "][".join(repr(k) for k in path)
        if shape != tuple(spec.shape):
            raise ValueError(
                f"`params[{where}]` must have shape {tuple(spec.shape)} under the config; "
                f"got {shape}."
            )
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise ValueError(
                f"`params[{where}]` must be floating point; got dtype {jnp.result_type(value)}."
            )


def _write_atomic(path: Path, write: Any) -> None:
    """Writes via a temporary file, so a failed save never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # safetensors creates owner-only files; checkpoints are shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_hf(
    directory: str | os.PathLike[str],
    config: TransformerConfig,
    params: Params,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    dtype: Any = None,
) -> None:
    """Writes ``(config, params)`` as a HuggingFace checkpoint of ``config.model_type``.

    Creates ``directory`` if needed and writes ``config.json`` (every field
    explicit) and ``model.safetensors`` in transformers' names and layout (torch
    ``[out, in]`` linear weights; no ``lm_head.weight`` when the head is tied, as
    ``save_pretrained`` writes it). ``AutoModelForCausalLM.from_pretrained(directory)``
    and ``load_hf(directory)`` both load it without missing or extra keys.

    Args:
      directory: output folder; existing files of the same names are replaced.
      config: the model's configuration.
      params: parameters in ``transformer.py``'s layout; checked against
        ``param_shapes(config)`` before anything is written.
      bos_token_id, eos_token_id: ids written to ``config.json``; default
        ``vocab_size - 1`` for both (for the byte-level models, 255, a byte that
        never occurs in UTF-8 text).
      dtype: of the stored tensors: ``None`` (float32), ``"float32"`` or ``"bfloat16"``.

    Raises:
      ValueError: ``params`` does not match ``config``, a token id outside the
        vocabulary, or ``directory`` is an existing file.
    """
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a TransformerConfig; got {type(config).__name__}.")
    check_params(config, params)
    for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None and (not isinstance(value, int) or not 0 <= value < config.vocab_size):
            raise ValueError(f"`{name}` must be an int in [0, {config.vocab_size}); got {value!r}.")
    target = _target_dtype(dtype)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"`directory` must be a directory; got existing file {str(directory)!r}.")

    prefix = "transformer." if config.model_type == "gpt2" else "model."
    tensors: dict[str, np.ndarray] = {}
    for entry in _plan(config):
        layers = range(config.num_layers) if entry.per_layer else [None]
        for i in layers:
            pieces = []
            for p in entry.paths:
                value = np.asarray(_leaf(params["layers"] if entry.per_layer else params, p))
                pieces.append(value[i] if entry.per_layer else value)
            value = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)
            value = value.T if entry.transpose else value
            tensors[prefix + entry.name.format(i=i)] = np.ascontiguousarray(value.astype(target))
    if not config.tie_embeddings:
        tensors[_HEAD] = np.ascontiguousarray(np.asarray(params["lm_head"]).T.astype(target))

    directory.mkdir(parents=True, exist_ok=True)
    hf = hf_config_dict(config, bos_token_id, eos_token_id)
    hf["dtype"] = target.name

    def write_config(path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
            f.write("\n")

    # ``format: pt`` is the metadata transformers' own safetensors files carry.
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, {"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, write_config)
