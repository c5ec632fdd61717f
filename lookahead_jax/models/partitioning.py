"""Tensor-parallel shardings of the decoder on a ``("data", "model")`` mesh.

Megatron-style placement, written as rules from parameter names to partition
specs (sharding is configuration, not code): q/k/v, gate/up (and GPT-2's fc)
kernels are column-parallel (their output axis is split over ``"model"``),
the attention output and the MLP down (GPT-2's proj) kernels are row-parallel
(their input axis is split), so each block needs one all-reduce after
attention and one after the MLP, which XLA inserts under ``jax.jit``.
Key/value heads are replicated when ``num_kv_heads`` is not divisible by the
``"model"`` axis (e.g. 2 KV heads on 4 devices); every other axis that does
not divide is replicated too, so any mesh is valid. The untied output head is
split over its vocabulary. Batch rows (prompts and the KV cache) are split
over ``"data"``; the cache's KV-head axis follows the k/v kernels.

Results under these shardings equal the 1-device results up to float
reassociation in the all-reduces (tests bound logits within 1e-5 in float32
and require identical greedy tokens).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lookahead_jax.models.cache import KVCache
from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.transformer import Params, param_shapes

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_model_mesh(data: int = 1, model: int | None = None, devices: Any = None) -> Mesh:
    """A 2-D ``(data, model)`` mesh over ``data * model`` devices (tensor parallelism).

    Not ``lookahead_jax.sharding.make_mesh``, which makes the 1-D ``("batch",)`` mesh of
    the data-parallel algorithms.

    Args:
      data: devices along the batch axis.
      model: devices along the tensor-parallel axis; ``None`` = all remaining devices.
      devices: the devices to use (default ``jax.devices()``).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(data, int) or data < 1:
        raise ValueError(f"`data` must be a positive int; got {data!r}.")
    if model is None:
        model = len(devices) // data
    if not isinstance(model, int) or model < 1 or data * model > len(devices):
        raise ValueError(
            f"`data` * `model` must be at most the {len(devices)} devices available; got "
            f"data={data!r}, model={model!r}."
        )
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


# deprecated alias of make_model_mesh, kept for existing code
make_mesh = make_model_mesh


# Per-layer parameter name -> which axis of the stacked [L, ...] array is split over "model",
# and the count that must divide the axis size for the split to be by whole heads/columns.
_COLUMN = {"q_kernel", "fc_kernel", "gate_kernel", "up_kernel"}
_COLUMN_BIAS = {"q_bias", "fc_bias", "gate_bias", "up_bias"}
_KV = {"k_kernel", "v_kernel"}
_KV_BIAS = {"k_bias", "v_bias"}
_ROW = {"out_kernel", "proj_kernel", "down_kernel"}


def _model_size(mesh: Mesh) -> int:
    if MODEL_AXIS not in mesh.axis_names:
        raise ValueError(f"`mesh` must have a {MODEL_AXIS!r} axis; got axes {mesh.axis_names}.")
    return mesh.shape[MODEL_AXIS]


def param_specs(config: TransformerConfig, model_size: int) -> Params:
    """A ``PartitionSpec`` for every parameter (same tree as ``init_params``)."""
    heads_split = config.num_heads % model_size == 0
    kv_split = config.num_kv_heads % model_size == 0
    mlp_split = config.hidden_dim % model_size == 0
    vocab_split = config.vocab_size % model_size == 0

    def spec(path: tuple[Any, ...], leaf: Any) -> PartitionSpec:
        names = [getattr(entry, "key", None) for entry in path]
        name = names[-1]
        rank = len(leaf.shape)
        axes: list[str | None] = [None] * rank
        if names[0] == "lm_head" and vocab_split:
            axes[1] = MODEL_AXIS
        elif names[0] == "layers":
            is_mlp = names[1] == "mlp"
            split = mlp_split if is_mlp else heads_split
            if ((name in _COLUMN or name in _COLUMN_BIAS) and split) or (
                (name in _KV or name in _KV_BIAS) and kv_split
            ):
                axes[-1] = MODEL_AXIS
            elif name in _ROW and split:
                axes[1] = MODEL_AXIS
        return PartitionSpec(*axes)

    return jax.tree_util.tree_map_with_path(spec, param_shapes(config))


def param_shardings(config: TransformerConfig, mesh: Mesh) -> Params:
    """``NamedSharding`` of every parameter on ``mesh`` (tensor-parallel over ``"model"``)."""
    specs = param_specs(config, _model_size(mesh))
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def shard_params(config: TransformerConfig, params: Params, mesh: Mesh) -> Params:
    """Places ``params`` on ``mesh`` with ``param_shardings``."""
    return jax.device_put(params, param_shardings(config, mesh))


def cache_shardings(config: TransformerConfig, mesh: Mesh) -> KVCache:
    """``KVCache`` shardings: rows over ``"data"``, KV heads over ``"model"`` if they divide."""
    kv_axis = MODEL_AXIS if config.num_kv_heads % _model_size(mesh) == 0 else None
    buffers = NamedSharding(mesh, PartitionSpec(None, DATA_AXIS, None, kv_axis, None))
    return KVCache(buffers, buffers, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rank-``ndim`` arrays with rows (axis 0) split over ``"data"`` (prompts, lengths)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))
