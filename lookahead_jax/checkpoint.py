"""Orbax helpers: save and restore any state pytree of arrays by step.

Thin, stateless wrappers around ``orbax.checkpoint.CheckpointManager`` with
``StandardSave`` / ``StandardRestore``: each call opens a manager on the
directory, does its work, waits for it to finish and closes it, so callers keep
no checkpointing object around. Typed PRNG keys (``jax.random.key``) are stored
as their raw key data and re-wrapped on restore, so a training state's rng
round-trips.

Restoring never changes a dtype silently: a saved leaf whose dtype differs from the
target's raises ``ValueError`` (leaf path, saved dtype, target dtype) unless ``dtype=``
asks for the cast.

**Restore reshards.** A checkpoint stores each array's global value, not its layout:
``restore`` places every leaf with the sharding of the corresponding leaf of ``like``
(an array's ``.sharding``, or a ``jax.ShapeDtypeStruct``'s ``sharding=``). A state
saved split over an 8-device mesh restores onto a ``data x model`` mesh, onto fewer
devices, or replicated, with the same values bit for bit. Leaves of ``like`` without
a sharding (NumPy arrays, ``ShapeDtypeStruct`` without one) restore onto the first
device in one process and fully replicated over all devices in a multi-process run.
What cannot be resharded raises ``ValueError`` naming the leaf: a shape that differs
from the saved one (restore never pads, truncates or reshapes) or a sharding that does
not divide the shape.

**Several processes** (a TPU pod slice, one process per GPU, a SLURM job: see
:mod:`lookahead_jax.distributed`): call ``save``, ``restore``, ``latest_step`` and
``all_steps`` on *every* process alike, with the same arguments and a ``directory``
every process sees (a shared file system; local paths, not ``gs://`` URLs). Orbax
coordinates them: each process writes only the shards its devices hold (replicated
shards once), process 0 writes the metadata and commits the step, and all processes wait
for each other, so a step that ``latest_step`` reports is complete. A step written by N
processes restores under any other number of processes or mesh (restore reshards,
above).

Example::

    save(workdir, step, state)
    state = restore(workdir, state)          # latest step, same structure as `state`
    state = restore(workdir, state, step=3)  # a given step
    state = restore(workdir, bf16_state, dtype="like")  # cast each leaf to the target's dtype
    state = restore(workdir, jax.device_put(state, other_shardings))  # another mesh
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
DEFAULT_MAX_TO_KEEP = 3
# `restore`'s cast policy: None (no cast), "like", a dtype, or per leaf
# (path, saved dtype, target dtype) -> dtype to restore in (None: no cast).
DtypePolicy = None | Literal["like"] | str | np.dtype | type | Callable[..., Any]


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _to_storable(x: Any) -> Any:
    return jax.random.key_data(x) if _is_typed_key(x) else x


def _key_impl(like: Any) -> Any:
    """The PRNG implementation of a typed key array or of its ``ShapeDtypeStruct``."""
    if isinstance(like, jax.ShapeDtypeStruct):
        impls = []

        def data(key: jax.Array) -> jax.Array:
            impls.append(jax.random.key_impl(key))  # static, known while tracing
            return jax.random.key_data(key)

        jax.eval_shape(data, like)
        return impls[0]
    return jax.random.key_impl(like)


def _default_sharding() -> jax.sharding.Sharding:
    """Where a leaf of ``like`` without a sharding is restored.

    One process: its first device. Several processes: fully replicated over every
    device, a sharding valid in every process (``jax.devices()[0]`` belongs to process 0
    alone, and a process cannot restore onto another process's device).
    """
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _to_global(x: Any) -> Any:
    """Several processes: a leaf held by this process alone (NumPy, a Python scalar, a
    one-device array such as a wall-clock time) as a global array replicated over all
    devices, which orbax can save (it refuses process-local arrays). The processes'
    values should agree; orbax writes replicated arrays once (process 0's)."""
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, _default_sharding(), lambda i: host[i])


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """The restore target of one leaf: shape, dtype and sharding (``like``'s, or a default)."""
    if _is_typed_key(x):
        x = jax.eval_shape(jax.random.key_data, x)
    dtype = x.dtype
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = _default_sharding()
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)


def _manager(directory: str | os.PathLike, max_to_keep: int | None, create: bool):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        # Synchronous saves: the files are complete when `save` returns, so a
        # process killed right after never leaves a half-written latest step.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)),
        options=options,
        item_handlers=ocp.StandardCheckpointHandler(),  # also reads the saved dtypes
    )


def save(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    *,
    max_to_keep: int | None = DEFAULT_MAX_TO_KEEP,
) -> None:
    """Saves ``state`` (a pytree of arrays) as checkpoint ``step`` under ``directory``.

    In a multi-process run every process calls it with its (global) ``state``; each
    writes the shards it holds. Only the newest ``max_to_keep`` steps are kept (``None``
    keeps all). Saving a step that already exists raises orbax's error rather than
    overwriting it.
    """
    if int(step) < 0:
        raise ValueError(f"`step` must be >= 0; got {step}.")
    storable = jax.tree.map(_to_global, jax.tree.map(_to_storable, state))
    with _manager(directory, max_to_keep, create=True) as manager:
        manager.save(int(step), args=ocp.args.StandardSave(storable), force=True)
        manager.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest saved step under ``directory``, or ``None`` when there is none."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory, None, create=False) as manager:
        return manager.latest_step()


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Every saved step under ``directory``, ascending."""
    if not os.path.isdir(directory):
        return []
    with _manager(directory, None, create=False) as manager:
        return sorted(manager.all_steps())


def _saved_arrays(manager: Any, step: int) -> dict[str, tuple[np.dtype | None, Any]]:
    """Orbax parameter name (``"opt_state.0.mu.w"``) -> (dtype, shape) of every saved leaf
    (``None`` where orbax records no dtype or shape)."""
    metadata = manager.item_metadata(step)
    tree = getattr(metadata, "tree", metadata)
    out = {}
    for leaf in jax.tree.leaves(tree):
        name, dtype = getattr(leaf, "name", None), getattr(leaf, "dtype", None)
        if name is not None:
            shape = getattr(leaf, "shape", None)
            out[name] = (
                None if dtype is None else np.dtype(dtype),
                None if shape is None else tuple(shape),
            )
    return out


def _check_structure(saved: dict[str, Any], names: Any, step: int) -> None:
    """``ValueError`` listing the leaves that only the checkpoint or only ``like`` has."""
    wanted = set(jax.tree.leaves(names))
    missing, extra = sorted(set(saved) - wanted), sorted(wanted - set(saved))
    if missing or extra:

        def some(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

        raise ValueError(
            f"`like` does not have the structure of checkpoint step {step}: leaves only in the "
            f"checkpoint: [{some(missing)}]; leaves only in `like`: [{some(extra)}] (dotted "
            "paths). Pass a `like` built like the saved state (e.g. the same initialiser)."
        )


def _check_placement(path: str, leaf: jax.ShapeDtypeStruct, saved_shape: Any) -> None:
    """``ValueError`` naming the leaf when it cannot be restored into ``like``'s shape/sharding.

    Orbax's own errors name neither the leaf nor a remedy our API offers (they suggest
    orbax padding options), and an indivisible sharding would fail inside its reader.
    """
    if saved_shape is not None and tuple(saved_shape) != tuple(leaf.shape):
        raise ValueError(
            f"checkpoint leaf `{path}` was saved with shape {tuple(saved_shape)} but the "
            f"restore target `like` has shape {tuple(leaf.shape)}; restore() reshards to "
            "`like`'s shardings but never reshapes, pads or truncates: pass a `like` with "
            "the saved shapes."
        )
    try:
        leaf.sharding.shard_shape(tuple(leaf.shape))
    except ValueError as error:
        raise ValueError(
            f"checkpoint leaf `{path}` of shape {tuple(leaf.shape)} cannot be restored with "
            f"`like`'s sharding {leaf.sharding}: {error}"
        ) from None


def _as_dtype(x: Any) -> np.dtype | None:
    if isinstance(x, str) and x == "like":
        return None
    try:
        return np.dtype(x)
    except TypeError:
        return None


def _restore_dtype(path: str, saved: np.dtype, want: np.dtype, dtype: DtypePolicy) -> np.dtype:
    """The dtype a leaf is restored in under the ``dtype`` policy, or ``ValueError``."""
    if isinstance(dtype, str) and dtype == "like":
        return want
    chosen = None  # None: no cast asked for this leaf
    if dtype is not None:
        fixed = _as_dtype(dtype)
        if fixed is not None:
            chosen = fixed if jnp.issubdtype(saved, jnp.floating) else None
        else:
            chosen = dtype(path, saved, want)
            chosen = None if chosen is None else np.dtype(chosen)
    if chosen is not None:
        return chosen
    if saved != want:
        raise ValueError(
            f"checkpoint leaf `{path}` was saved as {saved} but the restore target has "
            f'{want}; restore() casts only when asked: pass dtype="like" (cast to the '
            "target's dtypes), a dtype (floating-point leaves in it) or a per-leaf policy."
        )
    return want


def restore(
    directory: str | os.PathLike,
    like: PyTree,
    step: int | None = None,
    *,
    dtype: DtypePolicy = None,
) -> PyTree:
    """Restores a checkpoint into the structure and shapes of ``like``.

    Every process of a multi-process run calls it alike (see the module docstring).

    Args:
      directory: where ``save`` wrote.
      like: a pytree with the state's structure whose leaves are arrays or
        ``jax.ShapeDtypeStruct`` (e.g. the freshly initialised state, or
        ``jax.eval_shape`` of its initialiser). Each leaf is restored with its
        sharding, whatever mesh the checkpoint was written under (resharding); a
        leaf without one goes to the first device (one process) or is replicated
        over all devices (several processes). Typed PRNG keys are re-wrapped
        with the implementation of the corresponding leaf.
      step: the step to restore; ``None`` means the latest.
      dtype: the cast policy when a saved leaf's dtype differs from ``like``'s.
        ``None`` (default): no cast, raise ``ValueError``. ``"like"``: cast every leaf to
        ``like``'s dtype. A dtype (``jnp.bfloat16``): restore every floating-point leaf
        in it (other leaves must match ``like``). A callable ``(path, saved_dtype,
        like_dtype) -> dtype | None``: per leaf, the dtype to restore in (``None``: no
        cast allowed for that leaf).

    Returns:
      The restored state: ``like``'s shardings and dtypes, except where ``dtype`` chose
      other dtypes.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) under ``directory``.
      ValueError: a saved dtype differs from the target's and ``dtype`` does not ask
        for the cast (the message names the leaf path and both dtypes); a saved shape
        differs from ``like``'s, or ``like``'s sharding does not divide it (the message
        names the leaf); ``like``'s tree structure differs from the saved one (the
        message lists the leaves only one of them has).
    """
    available = all_steps(directory)
    if not available:
        raise FileNotFoundError(f"no checkpoint under {os.fspath(directory)!r}.")
    if step is None:
        step = available[-1]
    elif int(step) not in available:
        raise FileNotFoundError(
            f"no checkpoint for step {step} under {os.fspath(directory)!r}; have {available}."
        )
    target = jax.tree.map(_abstract, like)
    names = ocp.tree.get_param_names(target, include_empty_nodes=False)
    with _manager(directory, None, create=False) as manager:
        saved = _saved_arrays(manager, int(step))
        _check_structure(saved, names, int(step))

        def policy(path: Any, leaf: jax.ShapeDtypeStruct, name: str) -> jax.ShapeDtypeStruct:
            saved_dtype, saved_shape = saved[name]
            _check_placement(jax.tree_util.keystr(path), leaf, saved_shape)
            want = np.dtype(leaf.dtype)
            if saved_dtype is None:  # orbax recorded no dtype: nothing to check or cast
                return leaf
            chosen = _restore_dtype(jax.tree_util.keystr(path), saved_dtype, want, dtype)
            if chosen == want:
                return leaf
            return jax.ShapeDtypeStruct(leaf.shape, chosen, sharding=leaf.sharding)

        target = jax.tree_util.tree_map_with_path(policy, target, names)
        restored = manager.restore(int(step), args=ocp.args.StandardRestore(target))

    def rewrap(template: Any, value: Any) -> Any:
        if _is_typed_key(template):
            return jax.random.wrap_key_data(value, impl=_key_impl(template))
        return value

    return jax.tree.map(rewrap, like, restored)
