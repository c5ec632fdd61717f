"""Import and export of HuggingFace GPT-2 checkpoints (``config.json`` + ``model.safetensors``).

Reads and writes the files with ``safetensors``' NumPy interface, so neither
torch nor transformers is needed. Both key layouts on the Hub are read:
``GPT2LMHeadModel``'s (``transformer.h.0.attn.c_attn.weight``, ...) and
``GPT2Model``'s (``h.0.attn.c_attn.weight``, ``wte.weight``, ... as in the ``gpt2``
repository). GPT-2's ``Conv1D`` weights are stored ``[in, out]``, exactly our
kernel layout, so no transposes are needed; the per-layer tensors ``h.{l}.*`` are
stacked on the leading layer axis of ``transformer.py``'s parameter layout.

Written checkpoints use ``GPT2LMHeadModel``'s layout without ``lm_head.weight``,
as transformers 5's ``save_pretrained`` writes them for a tied head, so
``GPT2LMHeadModel.from_pretrained`` loads them with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy so bf16 checkpoints load)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.transformer import Params, param_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Our parameter path -> GPT-2 tensor name (without the ``transformer.`` prefix).
_TOP_LEVEL: dict[tuple[str, ...], str] = {
    ("wte",): "wte.weight",
    ("wpe",): "wpe.weight",
    ("ln_f", "scale"): "ln_f.weight",
    ("ln_f", "bias"): "ln_f.bias",
}
# Path inside ``params["layers"]`` -> name inside ``h.{l}.``.
_PER_LAYER: dict[tuple[str, ...], str] = {
    ("ln_1", "scale"): "ln_1.weight",
    ("ln_1", "bias"): "ln_1.bias",
    ("attn", "qkv_kernel"): "attn.c_attn.weight",
    ("attn", "qkv_bias"): "attn.c_attn.bias",
    ("attn", "out_kernel"): "attn.c_proj.weight",
    ("attn", "out_bias"): "attn.c_proj.bias",
    ("ln_2", "scale"): "ln_2.weight",
    ("ln_2", "bias"): "ln_2.bias",
    ("mlp", "fc_kernel"): "mlp.c_fc.weight",
    ("mlp", "fc_bias"): "mlp.c_fc.bias",
    ("mlp", "proj_kernel"): "mlp.c_proj.weight",
    ("mlp", "proj_bias"): "mlp.c_proj.bias",
}
# Older checkpoints also store the causal-mask buffers; they are not parameters.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_PREFIX = "transformer."
_HEAD = "lm_head.weight"

# Config options whose non-default values our forward pass does not implement.
_SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are tanh-approximate GELU
_REQUIRED_FLAGS = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}
# ``GPT2Config``'s defaults, used for fields a config.json leaves out (as transformers does).
_HF_DEFAULTS: dict[str, Any] = {
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


def _expected_tensors(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every GPT-2 parameter name (no prefix) with its shape under ``config``."""
    shapes = param_shapes(config)
    expected = {}
    for path, name in _TOP_LEVEL.items():
        expected[name] = tuple(_get(shapes, path).shape)
    for layer in range(config.num_layers):
        for path, name in _PER_LAYER.items():
            expected[f"h.{layer}.{name}"] = tuple(_get(shapes["layers"], path).shape[1:])
    return expected


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _config_from_hf(hf: dict[str, Any], source: Path) -> TransformerConfig:
    """Maps a GPT-2 ``config.json`` to a ``TransformerConfig``; rejects what we do not implement."""

    def field(name: str) -> Any:
        return hf.get(name, _HF_DEFAULTS.get(name))

    if hf.get("model_type") != "gpt2":
        raise ValueError(
            f"{source}: `model_type` must be 'gpt2'; got {hf.get('model_type')!r}. "
            "Only GPT-2 checkpoints can be loaded."
        )
    activation = field("activation_function")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"{source}: `activation_function` must be one of {_SUPPORTED_ACTIVATIONS} "
            f"(tanh-approximate GELU, the only one the model implements); got {activation!r}."
        )
    for name, supported in _REQUIRED_FLAGS.items():
        value = hf.get(name, supported)
        if bool(value) != supported:
            raise ValueError(
                f"{source}: `{name}` must be {supported} (the model does not implement the "
                f"alternative); got {value!r}."
            )
    try:
        return TransformerConfig(
            vocab_size=field("vocab_size"),
            num_layers=field("n_layer"),
            num_heads=field("n_head"),
            d_model=field("n_embd"),
            max_length=field("n_positions"),
            mlp_dim=field("n_inner"),
            layer_norm_eps=float(field("layer_norm_epsilon")),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: invalid GPT-2 configuration: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; got {type(data).__name__}.")
    return data


def _check_files(directory: Path) -> tuple[Path, Path]:
    if not directory.is_dir():
        raise ValueError(f"`directory` must be an existing directory; got {str(directory)!r}.")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory}: missing {CONFIG_FILE}.")
    if not weights_path.is_file():
        hint = ""
        if (directory / f"{WEIGHTS_FILE}.index.json").is_file():
            hint = " (sharded checkpoints are not supported)"
        elif (directory / "pytorch_model.bin").is_file():
            hint = " (only safetensors is read; convert pytorch_model.bin first)"
        raise ValueError(f"{directory}: missing {WEIGHTS_FILE}{hint}.")
    return config_path, weights_path


def load_hf_gpt2(directory: str | os.PathLike[str]) -> tuple[TransformerConfig, Params]:
    """Loads a HuggingFace GPT-2 checkpoint as ``(config, params)``.

    Args:
      directory: a folder holding ``config.json`` and ``model.safetensors``, as
        written by ``save_pretrained`` or downloaded from the Hub. Keys may carry
        ``GPT2LMHeadModel``'s ``transformer.`` prefix or not (``GPT2Model``). The
        ``attn.bias`` / ``attn.masked_bias`` mask buffers are ignored, and so is an
        ``lm_head.weight`` equal to ``wte`` (a tied head).

    Returns:
      ``(config, params)``: a ``TransformerConfig`` and float32 parameters in
      ``transformer.py``'s layout, e.g. ``params["layers"]["attn"]["qkv_kernel"]``
      of shape ``[L, D, 3D]`` (block ``l`` is ``h.{l}``), ``params["wte"]`` ``[V, D]``.

    Raises:
      ValueError: missing directory or files; a config option the model does not
        implement (``activation_function`` other than tanh-GELU,
        ``scale_attn_weights=False``, ``scale_attn_by_inverse_layer_idx=True``,
        ``reorder_and_upcast_attn=True``, cross-attention, ``model_type`` not
        ``gpt2``); missing, unexpected, non-float or wrongly shaped tensors; an
        untied ``lm_head.weight``.
    """
    directory = Path(directory)
    config_path, weights_path = _check_files(directory)
    hf_config = _read_json(config_path)
    config = _config_from_hf(hf_config, config_path)
    expected = _expected_tensors(config)

    with safe_open(weights_path, framework="numpy") as f:
        keys = list(f.keys())
        # GPT2LMHeadModel nests the body under ``transformer.``; GPT2Model does not.
        prefix = _PREFIX if any(key.startswith(_PREFIX) for key in keys) else ""
        names: dict[str, str] = {}  # GPT-2 name (no prefix) -> key in the file
        unexpected = []
        has_head = False
        for key in keys:
            if key == _HEAD:
                has_head = True
                continue
            name = key[len(prefix) :] if key.startswith(prefix) else None
            if name is not None and _BUFFER.fullmatch(name):
                continue
            if name is None or name not in expected:
                unexpected.append(key)
            else:
                names[name] = key
        if unexpected:
            raise ValueError(
                f"{weights_path}: unexpected tensors {sorted(unexpected)[:8]} for a GPT-2 model "
                f"with {config.num_layers} layers (key prefix {prefix!r})."
            )
        missing = [prefix + name for name in expected if name not in names]
        if missing:
            raise ValueError(
                f"{weights_path}: missing tensors {missing[:8]}"
                f"{f' and {len(missing) - 8} more' if len(missing) > 8 else ''}."
            )
        # Check every shape and dtype before loading anything.
        for name, shape in expected.items():
            key = names[name]
            tensor_slice = f.get_slice(key)
            actual = tuple(tensor_slice.get_shape())
            if actual != shape:
                raise ValueError(
                    f"{weights_path}: tensor {key!r} must have shape {list(shape)} under "
                    f"{CONFIG_FILE}; got {list(actual)}."
                )
            dtype = tensor_slice.get_dtype()
            if dtype not in ("F16", "BF16", "F32", "F64"):
                raise ValueError(
                    f"{weights_path}: tensor {key!r} must be floating point; got {dtype}."
                )
        tensors = {name: f.get_tensor(key).astype(np.float32) for name, key in names.items()}
        head = f.get_tensor(_HEAD).astype(np.float32) if has_head else None

    if head is not None and not np.array_equal(head, tensors["wte.weight"]):
        raise ValueError(
            f"{weights_path}: {_HEAD!r} differs from the token embedding "
            f"{prefix + 'wte.weight'!r}; untied output heads are not supported."
        )
    if head is None and not hf_config.get("tie_word_embeddings", True):
        raise ValueError(
            f"{config_path}: `tie_word_embeddings` is false but {WEIGHTS_FILE} holds no "
            f"{_HEAD!r}; untied output heads are not supported."
        )

    params: Params = {}
    for path, name in _TOP_LEVEL.items():
        _set(params, path, jnp.asarray(tensors[name]))
    for path, name in _PER_LAYER.items():
        stacked = np.stack([tensors[f"h.{i}.{name}"] for i in range(config.num_layers)])
        _set(params, ("layers", *path), jnp.asarray(stacked))
    return config, params


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, (*prefix, key)))
    return flat


def _check_params(config: TransformerConfig, params: Params) -> None:
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
        if shape != tuple(spec.shape):
            raise ValueError(
                f"`params[{']['.join(repr(k) for k in path)}]` must have shape "
                f"{tuple(spec.shape)} under the config; got {shape}."
            )
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise ValueError(
                f"`params[{']['.join(repr(k) for k in path)}]` must be floating point; "
                f"got dtype {jnp.result_type(value)}."
            )


def _hf_config(config: TransformerConfig, bos_token_id: int, eos_token_id: int) -> dict[str, Any]:
    """A ``GPT2Config`` dict that transformers loads into an equivalent ``GPT2LMHeadModel``."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
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
        "tie_word_embeddings": True,
        # The model has no dropout, so the exported one has none either: fine-tuning
        # it in transformers then optimises the same function.
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "dtype": "float32",
    }


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


def save_hf_gpt2(
    directory: str | os.PathLike[str],
    config: TransformerConfig,
    params: Params,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> None:
    """Writes ``(config, params)`` as a HuggingFace ``GPT2LMHeadModel`` checkpoint.

    Creates ``directory`` if needed and writes ``config.json`` and
    ``model.safetensors`` (float32, keys ``transformer.h.{l}.attn.c_attn.weight``
    etc., no ``lm_head.weight`` since the head is tied to ``wte``, as transformers
    5's ``save_pretrained`` writes it). ``GPT2LMHeadModel.from_pretrained(directory)``
    and ``load_hf_gpt2(directory)`` both load it without missing or extra keys.

    Args:
      directory: output folder; existing files of the same names are replaced.
      config: the model's configuration.
      params: parameters in ``transformer.py``'s layout, e.g. ``layers/attn/qkv_kernel``
        ``[L, D, 3D]``; checked against ``param_shapes(config)`` before writing.
      bos_token_id, eos_token_id: ids written to ``config.json``. Default
        ``vocab_size - 1`` for both: for the shipped byte-level models that is 255,
        a byte that never occurs in UTF-8 text, so it cannot clash with real text
        (GPT-2 likewise uses its last id, 50256, for both).

    Raises:
      ValueError: ``params`` does not match ``config`` (missing or extra keys, wrong
        shapes, non-float arrays), a token id outside the vocabulary, or
        ``directory`` exists and is not a directory.
    """
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a TransformerConfig; got {type(config).__name__}.")
    _check_params(config, params)
    default_id = config.vocab_size - 1
    bos_token_id = default_id if bos_token_id is None else bos_token_id
    eos_token_id = default_id if eos_token_id is None else eos_token_id
    for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if not isinstance(value, int) or not 0 <= value < config.vocab_size:
            raise ValueError(f"`{name}` must be an int in [0, {config.vocab_size}); got {value!r}.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"`directory` must be a directory; got existing file {str(directory)!r}.")

    tensors: dict[str, np.ndarray] = {}
    for path, name in _TOP_LEVEL.items():
        tensors[_PREFIX + name] = np.ascontiguousarray(_get(params, path), np.float32)
    for path, name in _PER_LAYER.items():
        stacked = np.asarray(_get(params["layers"], path), np.float32)
        for layer in range(config.num_layers):
            tensors[f"{_PREFIX}h.{layer}.{name}"] = np.ascontiguousarray(stacked[layer])

    directory.mkdir(parents=True, exist_ok=True)
    hf_config = _hf_config(config, bos_token_id, eos_token_id)

    def write_config(path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
            f.write("\n")

    # ``format: pt`` is the metadata transformers' own safetensors files carry.
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, {"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, write_config)
