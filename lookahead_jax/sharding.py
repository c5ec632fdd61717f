"""Mesh helpers shared by every pillar: one data-parallel axis over the available devices.

Batch rows, particles and subjects are independent, so every pillar shards
them the same way: a 1-D mesh named ``"batch"`` and a ``NamedSharding`` that
splits one axis of each array over it. Computation then runs under ``jax.jit``
and XLA keeps each row on its device; results equal the 1-device results
(up to float reassociation inside XLA kernels, which tests bound).

Multi-host pods: call :func:`lookahead_jax.distributed.initialize` once at the start
of a script before building a mesh; ``jax.devices()`` then spans every process and the
same code runs unchanged (each process feeding only its rows: see that module).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
DISTRIBUTED_ENV = "LOOKAHEAD_JAX_DISTRIBUTED"  # read by distributed.initialize


def initialize_distributed(enabled: bool | None = None, **kwargs: Any) -> bool:
    """Joins the other processes of a multi-process run; returns whether there are several.

    Kept for existing scripts: :func:`lookahead_jax.distributed.initialize` does the work
    (explicit arguments, ``JAX_COORDINATOR_ADDRESS``, SLURM and TPU pods, or
    ``LOOKAHEAD_JAX_DISTRIBUTED=1``) and says more about the result.
    """
    from lookahead_jax import distributed

    return distributed.initialize(enabled=enabled, **kwargs).source != "single"


def make_mesh(num_devices: int | None = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all of them)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"`num_devices` must be an int in [1, {len(devices)}] (the available devices); "
            f"got {num_devices!r}."
        )
    return Mesh(np.asarray(devices[:num_devices]), (axis_name,))


def axis_sharding(mesh: Mesh, ndim: int, axis: int | None) -> NamedSharding:
    """Sharding of a rank-``ndim`` array split along ``axis`` (``None``: replicated)."""
    if axis is None:
        return NamedSharding(mesh, PartitionSpec())
    if not -ndim <= axis < ndim:
        raise ValueError(f"`axis` must index an array of rank {ndim}; got {axis}.")
    spec = [None] * ndim
    spec[axis % ndim] = mesh.axis_names[0]
    return NamedSharding(mesh, PartitionSpec(*spec))


def shard(tree: Any, mesh: Mesh, axes: Any = 0) -> Any:
    """Places every array of ``tree`` on ``mesh``, split along its batch axis.

    Args:
      tree: a pytree of arrays.
      mesh: from :func:`make_mesh`.
      axes: the batch axis of each leaf: an int for all leaves, or a pytree prefix
        of ``tree`` holding ints (or ``None`` to replicate), e.g.
        ``models.KVCache(keys=1, values=1, lengths=0)`` for a KV cache.
    Over several processes (a mesh spanning them) every process passes the same full
    values and keeps its shards; to give each process only its rows, use
    ``lookahead_jax.distributed.global_array`` instead.

    Raises:
      ValueError: when a batch axis is not divisible by the number of devices.
    """
    size = mesh.devices.size

    def place(axis: int | None, leaf: Any) -> Any:
        leaf = jax.numpy.asarray(leaf)
        if axis is not None and leaf.shape[axis] % size:
            raise ValueError(
                f"the batch axis {axis} of an array of shape {leaf.shape} must be divisible "
                f"by the {size} devices of the mesh."
            )
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            # Key arrays travel as their raw data (one more trailing axis) and are rewrapped.
            data = place(None if axis is None else axis % leaf.ndim, jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        target = axis_sharding(mesh, leaf.ndim, axis)
        if not target.is_fully_addressable:
            # A mesh over several processes: each process builds the shards its own devices
            # hold from its (identical) full copy. (device_put refuses device arrays here,
            # and compares host values across processes, where NaN != NaN.)
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, target, lambda index: host[index])
        return jax.device_put(leaf, target)

    if isinstance(axes, int) or axes is None:
        return jax.tree.map(lambda leaf: place(axes, leaf), tree)
    return jax.tree.map(
        lambda axis, subtree: jax.tree.map(lambda leaf: place(axis, leaf), subtree),
        axes,
        tree,
        is_leaf=lambda x: x is None,
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array of ``tree`` on every device of ``mesh`` (parameters, tables)."""
    return shard(tree, mesh, axes=None)
