"""Dry-run plans of sharded generation: memory per device before anything is allocated.

A pod run is expensive to start and cheap to get wrong (a mesh that does not split the
heads, a batch that does not split over the data axis, a model that does not fit). This
module answers, on a laptop and without an accelerator or weights, what a
``(data, model)`` mesh of :func:`lookahead_jax.models.make_model_mesh` puts on each
device when a target (and optionally a draft model) generate on it:

* the mesh, its devices and how many each process drives;
* the batch per data shard and per process (the prompts each process loads);
* parameter bytes per device, from :func:`~lookahead_jax.models.param_specs` and
  :func:`~lookahead_jax.models.param_shapes` (shapes only, traced abstractly): an axis
  split over ``"model"`` divides a parameter's bytes, a replicated one does not (key/value
  heads are replicated when ``num_kv_heads`` does not divide ``model``);
* KV-cache bytes per device, from the cache layout ``[L, B, T, KV, Dh]`` (keys and
  values) with rows split over ``"data"`` and KV heads over ``"model"`` when they divide
  (:func:`~lookahead_jax.models.cache_shardings`).

Activations, logits and the compiler's temporaries are not counted: they depend on the
program (``experiments/memory_plan.py`` asks XLA for them at small shapes).

:data:`PRESETS` holds the shapes of real checkpoints (Qwen2.5-7B / 0.5B, Llama-3.1-8B /
Llama-3.2-1B) for plans and random-weight runs; their weights are not shipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from lookahead_jax.models.config import TransformerConfig, llama, qwen2
from lookahead_jax.models.partitioning import DATA_AXIS, MODEL_AXIS, param_specs
from lookahead_jax.models.transformer import param_shapes

GIB = 2**30
MIB = 2**20


# ---- presets: shapes of real checkpoints ------------------------------------------------------


def qwen2_5_7b() -> TransformerConfig:
    """Qwen2.5-7B's shape (7.62B parameters): 28 layers, 28 query / 4 KV heads, untied head."""
    return qwen2(
        vocab_size=152064, num_layers=28, num_heads=28, num_kv_heads=4, d_model=3584,
        mlp_dim=18944, max_length=32768, rope_theta=1e6, tie_embeddings=False,
    )  # fmt: skip


def qwen2_5_0_5b() -> TransformerConfig:
    """Qwen2.5-0.5B's shape (0.49B parameters): 24 layers, 14 query / 2 KV heads, tied head.

    Its vocabulary (151,936 rows) is smaller than Qwen2.5-7B's (152,064; the same
    tokenizer, padded differently): pad it to the target's to draft for it.
    """
    return qwen2(
        vocab_size=151936, num_layers=24, num_heads=14, num_kv_heads=2, d_model=896,
        mlp_dim=4864, max_length=32768, rope_theta=1e6, tie_embeddings=True,
    )  # fmt: skip


def llama3_1_8b() -> TransformerConfig:
    """Llama-3.1-8B's shape (8.03B parameters): 32 layers, 32 query / 8 KV heads, untied."""
    return llama(
        vocab_size=128256, num_layers=32, num_heads=32, num_kv_heads=8, d_model=4096,
        mlp_dim=14336, max_length=131072, rope_theta=500000.0, rope_type="llama3",
        rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_length=8192, tie_embeddings=False,
    )  # fmt: skip


def llama3_2_1b() -> TransformerConfig:
    """Llama-3.2-1B's shape (1.24B parameters): 16 layers, 32 query / 8 KV heads, tied."""
    return llama(
        vocab_size=128256, num_layers=16, num_heads=32, num_kv_heads=8, d_model=2048,
        mlp_dim=8192, max_length=131072, rope_theta=500000.0, rope_type="llama3",
        rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_length=8192, tie_embeddings=True,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], TransformerConfig]] = {
    "qwen2.5-7b": qwen2_5_7b,
    "qwen2.5-0.5b": qwen2_5_0_5b,
    "llama-3.1-8b": llama3_1_8b,
    "llama-3.2-1b": llama3_2_1b,
}


def preset(name: str) -> TransformerConfig:
    """The ``TransformerConfig`` of a preset in :data:`PRESETS` (shapes only, no weights)."""
    if name not in PRESETS:
        raise ValueError(f"`name` must be one of the presets {sorted(PRESETS)}; got {name!r}.")
    return PRESETS[name]()


# ---- checks -----------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_mesh(
    config: TransformerConfig,
    data: int,
    model: int,
    batch_size: int,
    *,
    what: str = "model",
    allow_replicated_heads: bool = False,
) -> None:
    """``ValueError`` unless a ``(data, model)`` mesh splits ``config``'s heads and the batch.

    Each device of the ``"model"`` axis must hold whole query heads (otherwise the
    attention of every layer is replicated on all of them: the tensor parallelism is
    lost), and every data shard the same number of rows. Key/value heads that do not
    divide ``model`` are allowed: they are replicated (see :func:`plan_generation`'s notes).

    Args:
      config: the model placed on the mesh.
      data: devices along the ``"data"`` (batch) axis.
      model: devices along the ``"model"`` (tensor-parallel) axis.
      batch_size: global number of rows.
      what: the model's name in messages (``"target"``, ``"draft"``).
      allow_replicated_heads: accept query heads that do not divide ``model`` (their
        attention is then replicated; acceptable for a small draft model).

    Raises:
      ValueError: a non-positive size, ``model`` not dividing ``config.num_heads``, or
        ``data`` not dividing ``batch_size``.
    """
    for name, value in (("data", data), ("model", model), ("batch_size", batch_size)):
        _positive_int(name, value)
    if config.num_heads % model and not allow_replicated_heads:
        raise ValueError(
            f"`model` ({model}) must divide the {what}'s {config.num_heads} query heads "
            f"(num_heads) so that each device holds whole heads; got {model}, which leaves "
            f"{config.num_heads % model} over. Use a model axis in "
            f"{_divisors(config.num_heads)}."
        )
    if batch_size % data:
        raise ValueError(
            f"`batch_size` ({batch_size}) must be divisible by the mesh's data axis "
            f"(data={data}) so that every data shard holds the same rows; got {batch_size}, "
            f"which leaves {batch_size % data} over."
        )


# ---- the plan ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """One model's share of the mesh (bytes are exact for the shapes, not estimates)."""

    role: str  # "target" or "draft"
    model_type: str  # config.model_type
    num_params: int  # parameters of one copy of the model
    param_bytes: int  # bytes of one copy of the parameters
    param_bytes_per_device: int  # bytes each device holds (split axes divide, others do not)
    cache_shape: tuple[int, ...]  # global keys (= values) shape [L, B, T, KV, Dh]
    kv_bytes: int  # keys + values + lengths of the whole batch
    kv_bytes_per_device: int  # keys + values + lengths on each device
    replicated: tuple[str, ...]  # parameter groups replicated over "model" (not split)


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """What a ``(data, model)`` mesh holds per device during generation; see the module doc."""

    data: int  # devices along "data" (batch rows)
    model: int  # devices along "model" (tensor parallelism)
    devices: int  # data * model
    num_processes: int  # processes driving the devices
    devices_per_process: int  # devices / num_processes
    batch_size: int  # global rows
    batch_per_data_shard: int  # rows on each device (batch_size / data)
    batch_per_process: int  # rows each process loads (its devices' data shards)
    max_len: int  # cache slots per row (T)
    dtype: str  # parameters' dtype
    cache_dtype: str  # keys' and values' dtype
    target: ModelPlan
    draft: ModelPlan | None
    notes: tuple[str, ...]  # what is replicated, and why

    @property
    def models(self) -> tuple[ModelPlan, ...]:
        return (self.target,) if self.draft is None else (self.target, self.draft)

    @property
    def param_bytes_per_device(self) -> int:
        return sum(m.param_bytes_per_device for m in self.models)

    @property
    def kv_bytes_per_device(self) -> int:
        return sum(m.kv_bytes_per_device for m in self.models)

    @property
    def bytes_per_device(self) -> int:
        """Parameters and KV caches of every model on one device (no activations)."""
        return self.param_bytes_per_device + self.kv_bytes_per_device

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with the per-device totals)."""
        out = dataclasses.asdict(self)
        out.update(
            param_bytes_per_device=self.param_bytes_per_device,
            kv_bytes_per_device=self.kv_bytes_per_device,
            bytes_per_device=self.bytes_per_device,
        )
        return out

    def format(self) -> str:
        """A readable table: the mesh, the batch, then bytes per model and per device."""
        lines = [
            f"mesh: data={self.data} x model={self.model} = {self.devices} devices; "
            f"{self.num_processes} process(es) x {self.devices_per_process} devices",
            f"batch: {self.batch_size} rows = {self.batch_per_data_shard} per data shard, "
            f"{self.batch_per_process} per process; KV cache {self.max_len} slots per row",
            f"dtypes: parameters {self.dtype}, KV cache {self.cache_dtype}",
            "",
        ]
        # One unit for the whole table: GiB for pod-sized models, MiB for small ones.
        largest = max(max(m.param_bytes, m.kv_bytes) for m in self.models)
        unit, scale = ("GiB", GIB) if largest >= GIB else ("MiB", MIB)

        def size(num_bytes: int) -> str:
            return f"{num_bytes / scale:.3f}"

        header = ("model", "params", unit, f"{unit}/device", f"KV {unit}", f"KV {unit}/device")
        rows = [
            (
                f"{m.role} ({m.model_type})",
                _count(m.num_params),
                size(m.param_bytes),
                size(m.param_bytes_per_device),
                size(m.kv_bytes),
                size(m.kv_bytes_per_device),
            )
            for m in self.models
        ]
        rows.append(
            (
                "total per device",
                "",
                "",
                size(self.param_bytes_per_device),
                "",
                size(self.kv_bytes_per_device),
            )
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines.append(
            f"parameters + KV cache per device: {size(self.bytes_per_device)} {unit} "
            "(activations and temporaries not included)"
        )
        for m in self.models:
            lines.append(f"{m.role} KV cache [L, B, T, KV, Dh] = {list(m.cache_shape)}")
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  - {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _count(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.2f}M"
    return f"{n:,}"


def _dtype(dtype: Any, name: str) -> jnp.dtype:
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"`{name}` must name a dtype (e.g. 'bfloat16'); got {dtype!r}.") from None
    if not jnp.issubdtype(out, jnp.floating):
        raise ValueError(f"`{name}` must be a floating dtype; got {out.name}.")
    return out


def _shard_size(dim: int, entry: Any, sizes: dict[str, int]) -> int:
    """Rows of one array axis on one device; ``entry`` is a ``PartitionSpec`` entry."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    split = math.prod(sizes[n] for n in names)
    return -(-dim // split)  # ceil: an uneven split pads the last device


def param_bytes_per_device(
    config: TransformerConfig, model: int, dtype: Any = jnp.float32
) -> tuple[int, int]:
    """``(bytes of one copy, bytes per device)`` of the parameters on a ``model``-wide axis.

    Each parameter's bytes are divided by the axis size along the axis its
    ``param_specs`` entry splits; replicated parameters count whole on every device.
    """
    _positive_int("model", model)
    dtype = _dtype(dtype, "dtype")
    shapes = param_shapes(config, dtype)
    specs = param_specs(config, model)
    sizes = {DATA_AXIS: 1, MODEL_AXIS: model}  # parameters are replicated over "data"
    leaves = jax.tree.leaves(shapes)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    whole = per_device = 0
    for leaf, spec in zip(leaves, spec_leaves, strict=True):
        item = jnp.dtype(leaf.dtype).itemsize
        whole += math.prod(leaf.shape) * item
        entries = tuple(spec) + (None,) * (len(leaf.shape) - len(spec))
        per_device += (
            math.prod(_shard_size(d, e, sizes) for d, e in zip(leaf.shape, entries, strict=True))
            * item
        )
    return whole, per_device


def kv_bytes_per_device(
    config: TransformerConfig,
    batch_size: int,
    max_len: int,
    data: int,
    model: int,
    dtype: Any = jnp.float32,
) -> tuple[tuple[int, ...], int, int]:
    """``(cache shape, bytes of the whole cache, bytes per device)`` of a ``KVCache``.

    Keys and values ``[L, B, T, KV, Dh]`` split rows over ``data`` and KV heads over
    ``model`` when ``num_kv_heads`` divides it (replicated otherwise); ``lengths [B]``
    int32 splits over ``data``.
    """
    for name, value in (("batch_size", batch_size), ("max_len", max_len)):
        _positive_int(name, value)
    item = _dtype(dtype, "cache_dtype").itemsize
    layers, kv, head = config.num_layers, config.num_kv_heads, config.head_dim
    shape = (layers, batch_size, max_len, kv, head)
    rows = -(-batch_size // data)
    kv_local = kv // model if kv % model == 0 else kv
    whole = 2 * math.prod(shape) * item + 4 * batch_size
    per_device = 2 * layers * rows * max_len * kv_local * head * item + 4 * rows
    return shape, whole, per_device


def _batch_per_process(batch_size: int, data: int, model: int, per_process: int, n: int) -> int:
    """Rows the process holding the most data shards loads (devices in ``jax.devices()``
    order, reshaped ``[data, model]``: process ``p`` drives devices ``[p * per_process,
    (p + 1) * per_process)``)."""
    shards = 0
    for p in range(n):
        first, last = p * per_process, (p + 1) * per_process - 1
        shards = max(shards, last // model - first // model + 1)
    return shards * (batch_size // data)


def _model_plan(
    role: str,
    config: TransformerConfig,
    *,
    data: int,
    model: int,
    batch_size: int,
    max_len: int,
    dtype: Any,
    cache_dtype: Any,
) -> tuple[ModelPlan, list[str]]:
    whole, per_device = param_bytes_per_device(config, model, dtype)
    shape, kv_whole, kv_device = kv_bytes_per_device(
        config, batch_size, max_len, data, model, cache_dtype
    )
    # The same divisibility rules as partitioning.param_specs / cache_shardings.
    replicated, notes = [], []
    if config.num_heads % model:
        replicated.append("query heads (q, out)")
        notes.append(
            f"{role}: {config.num_heads} query heads do not divide model={model}: its q and "
            "out kernels are replicated on every device of the model axis."
        )
    if config.num_kv_heads % model:
        replicated.append("KV heads (k, v, cache)")
        notes.append(
            f"{role}: {config.num_kv_heads} KV heads do not divide model={model}: its k/v "
            "kernels and KV cache are replicated over the model axis (each device holds "
            "every KV head of its rows)."
        )
    if config.hidden_dim % model:
        replicated.append("MLP")
        notes.append(f"{role}: MLP width {config.hidden_dim} does not divide model={model}.")
    if not config.tie_embeddings and config.vocab_size % model:
        replicated.append("lm_head")
        notes.append(f"{role}: vocabulary {config.vocab_size} does not divide model={model}.")
    replicated.append("embedding, norms")  # never split (lookups and per-feature scales)
    if max_len > config.max_length:
        notes.append(
            f"{role}: {max_len} cache slots exceed its {config.max_length} positions; the "
            "extra slots only hold speculative blocks."
        )
    plan = ModelPlan(
        role=role,
        model_type=config.model_type,
        num_params=config.num_params(),
        param_bytes=whole,
        param_bytes_per_device=per_device,
        cache_shape=shape,
        kv_bytes=kv_whole,
        kv_bytes_per_device=kv_device,
        replicated=tuple(replicated),
    )
    return plan, notes


def plan_generation(
    target: TransformerConfig,
    draft: TransformerConfig | None = None,
    *,
    data: int,
    model: int,
    num_processes: int = 1,
    batch_size: int,
    max_len: int,
    dtype: Any = "bfloat16",
    cache_dtype: Any = None,
) -> GenerationPlan:
    """Plans generation of ``target`` (drafted by ``draft``) on a ``(data, model)`` mesh.

    Pure shape arithmetic: nothing is allocated and no accelerator is needed.

    Args:
      target: the target model's config.
      draft: the draft model's config (same vocabulary), or ``None``.
      data: devices along ``"data"``: batch rows are split over it.
      model: devices along ``"model"``: heads, MLP columns and the untied head split over it.
      num_processes: processes driving the ``data * model`` devices (one per host).
      batch_size: global rows ``B``.
      max_len: cache slots per row ``T`` (``generate`` allocates the prompt width +
        ``max_new_tokens`` + ``max_draft_tokens``).
      dtype: the parameters' dtype.
      cache_dtype: the KV caches' dtype; ``None`` = ``dtype`` (as ``generate`` does).

    Returns:
      The :class:`GenerationPlan` (``print`` it for a table).

    Raises:
      ValueError: see :func:`check_mesh` (the draft may replicate its query heads:
        noted, not an error); ``num_processes`` not dividing the devices; a draft of
        another vocabulary or with fewer positions than ``max_len``.
    """
    check_mesh(target, data, model, batch_size, what="target")
    if draft is not None:
        check_mesh(draft, data, model, batch_size, what="draft", allow_replicated_heads=True)
        if draft.vocab_size != target.vocab_size:
            raise ValueError(
                f"`draft` must share the target's vocabulary ({target.vocab_size}); got "
                f"{draft.vocab_size} (pad the draft's embedding to the target's size)."
            )
        if max_len > draft.max_length:
            raise ValueError(
                f"`max_len` ({max_len}) must be at most the draft's {draft.max_length} "
                f"positions (its cache holds one slot per position); got {max_len}."
            )
    _positive_int("num_processes", num_processes)
    _positive_int("max_len", max_len)
    devices = data * model
    if devices % num_processes:
        raise ValueError(
            f"`num_processes` ({num_processes}) must divide the mesh's {devices} devices "
            f"(data={data} x model={model}) so that every process drives as many; got "
            f"{num_processes}."
        )
    dtype = _dtype(dtype, "dtype")
    cache_dtype = dtype if cache_dtype is None else _dtype(cache_dtype, "cache_dtype")
    per_process = devices // num_processes
    common = dict(
        data=data, model=model, batch_size=batch_size, max_len=max_len, dtype=dtype,
        cache_dtype=cache_dtype,
    )  # fmt: skip
    target_plan, notes = _model_plan("target", target, **common)
    draft_plan = None
    if draft is not None:
        draft_plan, draft_notes = _model_plan("draft", draft, **common)
        notes += draft_notes
    if per_process < model:
        notes.append(
            f"the model axis ({model} devices) spans several processes ({per_process} "
            "devices each): its all-reduces cross hosts (keep a model group within a host)."
        )
    return GenerationPlan(
        data=data,
        model=model,
        devices=devices,
        num_processes=num_processes,
        devices_per_process=per_process,
        batch_size=batch_size,
        batch_per_data_shard=batch_size // data,
        batch_per_process=_batch_per_process(batch_size, data, model, per_process, num_processes),
        max_len=max_len,
        dtype=dtype.name,
        cache_dtype=cache_dtype.name,
        target=target_plan,
        draft=draft_plan,
        notes=tuple(notes),
    )


__all__ = [
    "PRESETS",
    "GenerationPlan",
    "ModelPlan",
    "check_mesh",
    "kv_bytes_per_device",
    "param_bytes_per_device",
    "plan_generation",
    "preset",
]
