"""Orbax helpers: save and restore any state pytree of arrays by step.

Thin, stateless wrappers around ``orbax.checkpoint.CheckpointManager`` with
``StandardSave`` / ``StandardRestore``: each call opens a manager on the
directory, does its work, waits for it to finish and closes it, so callers keep
no checkpointing object around. Typed PRNG keys (``jax.random.key``) are stored
as their raw key data and re-wrapped on restore, so a training state's rng
round-trips.

Example::

    save(workdir, step, state)
    state = restore(workdir, state)          # latest step, same structure as `state`
    state = restore(workdir, state, step=3)  # a given step
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
DEFAULT_MAX_TO_KEEP = 3


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


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """The restore target of one leaf: shape, dtype and (single-device default) sharding."""
    if _is_typed_key(x):
        x = jax.eval_shape(jax.random.key_data, x)
    dtype = x.dtype
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)


def _manager(directory: str | os.PathLike, max_to_keep: int | None, create: bool):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        # Synchronous saves: the files are complete when `save` returns, so a
        # process killed right after never leaves a half-written latest step.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)


def save(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    *,
    max_to_keep: int | None = DEFAULT_MAX_TO_KEEP,
) -> None:
    """Saves ``state`` (a pytree of arrays) as checkpoint ``step`` under ``directory``.

    Only the newest ``max_to_keep`` steps are kept (``None`` keeps all). Saving a
    step that already exists raises orbax's error rather than overwriting it.
    """
    if int(step) < 0:
        raise ValueError(f"`step` must be >= 0; got {step}.")
    storable = jax.tree.map(_to_storable, state)
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


def restore(
    directory: str | os.PathLike,
    like: PyTree,
    step: int | None = None,
) -> PyTree:
    """Restores a checkpoint into the structure, shapes and dtypes of ``like``.

    Args:
      directory: where ``save`` wrote.
      like: a pytree with the state's structure whose leaves are arrays or
        ``jax.ShapeDtypeStruct`` (e.g. the freshly initialised state, or
        ``jax.eval_shape`` of its initialiser). Typed PRNG keys are re-wrapped
        with the implementation of the corresponding leaf.
      step: the step to restore; ``None`` means the latest.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) under ``directory``.
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
    with _manager(directory, None, create=False) as manager:
        restored = manager.restore(int(step), args=ocp.args.StandardRestore(target))

    def rewrap(template: Any, value: Any) -> Any:
        if _is_typed_key(template):
            return jax.random.wrap_key_data(value, impl=_key_impl(template))
        return value

    return jax.tree.map(rewrap, like, restored)
