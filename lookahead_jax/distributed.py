"""Several processes, one program: JAX's multi-process runtime made explicit.

On a TPU pod slice, a multi-GPU node with one process per GPU, or a SLURM job,
every process runs the same script. :func:`initialize` connects them with
``jax.distributed.initialize`` (JAX's own runtime, no home-made launcher); after
it, ``jax.devices()`` lists every process's devices, a mesh built from them spans
all processes, and ``jax.jit`` runs one program over the whole mesh. Each process
then holds only the rows of the data its own devices hold:

* :func:`process_rows` says which rows of a ``[N, ...]`` array that is split over a
  mesh axis this process owns (its share of prompts, subjects or particles);
* :func:`global_array` assembles the global array from each process's share
  (``jax.make_array_from_process_local_data``), so nothing is loaded twice;
* :func:`to_host` brings a (possibly multi-process) result back to NumPy on every
  process (an all-gather), for printing or writing results;
* :func:`is_primary` picks the one process that writes shared files (JSON,
  plots). Checkpoints are written by *every* process (orbax coordinates them;
  ``lookahead_jax.checkpoint.save`` is called on all processes alike).

One process without any setup is the degenerate case: every function works and
changes nothing, so one script runs on a laptop and on a pod.

Where the setup comes from, in order (see :func:`initialize`): explicit arguments
(the experiment scripts' ``--coordinator_address``, ``--num_processes``,
``--process_id`` flags), the ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` environment variables, then JAX's own cluster detection for
SLURM (``srun``) and Cloud TPU pods, which needs no arguments at all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DISTRIBUTED_ENV = "LOOKAHEAD_JAX_DISTRIBUTED"
_TRUE = ("1", "true", "yes")


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
    """What :func:`initialize` found: this process's place among all of them."""

    process_index: int  # this process, in [0, process_count)
    process_count: int  # processes running the program
    local_device_count: int  # devices this process drives
    device_count: int  # devices of all processes together
    source: str  # where the setup came from: "arguments", "environment", "cluster", "single"

    def __str__(self) -> str:
        return (
            f"process {self.process_index} of {self.process_count} ({self.source}): "
            f"{self.local_device_count} local of {self.device_count} devices"
        )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        message = f"environment variable {name} must be an integer; got {value!r}."
        raise ValueError(message) from None


def _slurm_multi_task() -> bool:
    """A SLURM step with more than one task (one task is a single process)."""
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_STEP_NUM_TASKS")
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and (tasks or "1") != "1"


def _tpu_pod() -> bool:
    """A Cloud TPU slice with several hosts (every host runs one process)."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES") or ""
    return "," in hosts or os.environ.get("MEGASCALE_NUM_SLICES") not in (None, "", "1")


def _setup(source: str) -> ProcessSetup:
    return ProcessSetup(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        device_count=jax.device_count(),
        source=source,
    )


def _use_gloo_for_cpu() -> None:
    """CPU devices of different processes talk through gloo (JAX's CPU collectives).

    Without it a multi-process CPU program fails at its first cross-process
    collective; the option only concerns the CPU client, so GPU/TPU runs are
    unaffected. A value the user set is kept.
    """
    current = getattr(jax.config, "jax_cpu_collectives_implementation", None)
    if current in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    enabled: bool | None = None,
) -> ProcessSetup:
    """Joins this process to the others (``jax.distributed.initialize``); call it first.

    Call it at the start of a script, before anything touches a device. It decides
    whether there are several processes, in this order:

    1. ``enabled=False``: never (one process).
    2. Any of ``coordinator_address``, ``num_processes``, ``process_id`` given:
       those, with the missing ones from the environment.
    3. ``JAX_COORDINATOR_ADDRESS`` set: it, with ``JAX_NUM_PROCESSES`` and
       ``JAX_PROCESS_ID`` (or the cluster's own variables).
    4. A SLURM step with several tasks, a multi-host Cloud TPU slice, or
       ``LOOKAHEAD_JAX_DISTRIBUTED=1`` (or ``enabled=True``): JAX's cluster detection,
       which reads the coordinator, count and id from the cluster.
    5. Otherwise one process, and nothing is initialised.

    Calling it again after a successful start returns the same setup.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: how many processes run the program.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices (one process
        per GPU: ``[local_rank]``).
      enabled: force (``True``) or forbid (``False``) initialisation; ``None`` decides
        from the arguments and the environment as above.

    Returns:
      The :class:`ProcessSetup`.

    Raises:
      ValueError: ``num_processes`` < 1, ``process_id`` outside ``[0, num_processes)``,
        or a coordinator without a process count.
    """
    if jax.distributed.is_initialized():
        return _setup("arguments")
    if enabled is False:
        return _setup("single")
    if any(v is not None for v in (coordinator_address, num_processes, process_id)):
        source = "arguments"
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        source = "environment"
    elif (
        enabled
        or os.environ.get(DISTRIBUTED_ENV, "").strip().lower() in _TRUE
        or _slurm_multi_task()
        or _tpu_pod()
    ):
        source = "cluster"
    else:
        return _setup("single")

    if source != "cluster":
        coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
        if num_processes is None:
            num_processes = _env_int("JAX_NUM_PROCESSES")
        if process_id is None:
            process_id = _env_int("JAX_PROCESS_ID")
        if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
            raise ValueError(f"`num_processes` must be a positive int; got {num_processes!r}.")
        if (
            process_id is not None
            and num_processes is not None
            and (not isinstance(process_id, int) or not 0 <= process_id < num_processes)
        ):
            raise ValueError(
                f"`process_id` must be in [0, {num_processes}) for {num_processes} "
                f"processes; got {process_id!r}."
            )
        if coordinator_address and num_processes is None and not _slurm_multi_task():
            raise ValueError(
                "`num_processes` is needed with `coordinator_address` "
                f"({coordinator_address!r}) outside a managed cluster; pass it or set "
                "JAX_NUM_PROCESSES."
            )
        if num_processes == 1 and not coordinator_address:
            return _setup("single")

    _use_gloo_for_cpu()
    kwargs: dict[str, Any] = {}
    if coordinator_address is not None:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes is not None:
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        kwargs["process_id"] = process_id
    if local_device_ids is not None:
        kwargs["local_device_ids"] = list(local_device_ids)
    jax.distributed.initialize(**kwargs)
    return _setup(source)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes shared files (JSON, plots, logs)."""
    return jax.process_index() == 0


def check_mesh_size(shape: dict[str, int] | Sequence[int], what: str = "mesh") -> None:
    """``ValueError`` unless the mesh ``shape`` uses exactly the devices of all processes.

    A mesh asked for in a config (``data=4, model=8``) must match what the processes
    found: ``4 x 8 = 32`` devices must equal ``process_count x local devices``.
    """
    sizes = list(shape.values()) if isinstance(shape, dict) else list(shape)
    needed = int(np.prod(sizes)) if sizes else 1
    have = jax.device_count()
    if needed != have:
        raise ValueError(
            f"`{what}` {dict(shape) if isinstance(shape, dict) else tuple(sizes)} needs "
            f"{needed} devices, but the {jax.process_count()} process(es) have {have} "
            f"({jax.local_device_count()} each): change the mesh or the number of processes "
            "(or devices per process)."
        )


def _sharding_of(mesh: Mesh, ndim: int, axis_name: str | None) -> NamedSharding:
    spec = [None] * ndim
    if axis_name is not None:
        spec[0] = axis_name
    return NamedSharding(mesh, PartitionSpec(*spec))


def process_rows(num_rows: int, mesh: Mesh, axis_name: str) -> slice:
    """The rows of a ``[num_rows, ...]`` array split over ``axis_name`` that this process holds.

    Its devices hold a contiguous block of rows (meshes built from ``jax.devices()``
    keep each process's devices together); with one process this is every row. Rows
    that are replicated along other mesh axes count once.

    Raises:
      ValueError: ``num_rows`` not divisible by the axis size, an unknown axis, or a
        mesh whose layout gives this process non-contiguous rows.
    """
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name` must be one of the mesh axes {mesh.axis_names}; got {axis_name!r}."
        )
    size = mesh.shape[axis_name]
    if not isinstance(num_rows, int) or num_rows < 1 or num_rows % size:
        raise ValueError(
            f"`num_rows` must be a positive multiple of the mesh axis {axis_name!r} "
            f"({size} devices); got {num_rows!r}."
        )
    index_map = _sharding_of(mesh, 1, axis_name).addressable_devices_indices_map((num_rows,))
    blocks = sorted({(idx[0].start or 0, idx[0].stop or num_rows) for idx in index_map.values()})
    start, stop = blocks[0][0], blocks[-1][1]
    covered = sum(b - a for a, b in blocks)
    if covered != stop - start:
        raise ValueError(
            f"this process's devices hold non-contiguous rows {blocks} of mesh axis "
            f"{axis_name!r}; build the mesh from jax.devices() in order so that each "
            "process's devices are adjacent along it."
        )
    return slice(start, stop)


def global_array(local: Any, mesh: Mesh, axis_name: str | None, num_rows: int | None = None) -> Any:
    """Global arrays from each process's share of rows (leaves of ``local`` are ``[n, ...]``).

    Args:
      local: a pytree of host arrays holding the rows :func:`process_rows` names for
        this process (or every row, when ``axis_name`` is ``None``: replicated data
        such as parameters, which every process must pass identically).
      mesh: the mesh over all processes' devices.
      axis_name: the mesh axis the leading axis is split over; ``None`` replicates.
      num_rows: the global number of rows (default: local rows x processes sharing
        the axis, inferred by JAX).
    Returns:
      The same pytree of ``jax.Array`` placed on ``mesh``, leading axis split over
      ``axis_name``.
    """

    def place(leaf: Any) -> jax.Array:
        leaf = np.asarray(leaf)
        sharding = _sharding_of(mesh, leaf.ndim, axis_name)
        shape = None
        if axis_name is not None and num_rows is not None:
            shape = (num_rows, *leaf.shape[1:])
        elif axis_name is None:
            shape = leaf.shape
        return jax.make_array_from_process_local_data(sharding, leaf, shape)

    return jax.tree.map(place, local)


def to_host(tree: Any) -> Any:
    """Every leaf as a NumPy array holding the *global* value, on every process.

    Arrays this process can read whole (one process, or replicated results) are
    copied; arrays split over several processes are all-gathered first
    (``jax.experimental.multihost_utils.process_allgather``), which every process
    must call together.
    """
    from jax.experimental import multihost_utils

    def host(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(host, tree)


def sync(name: str) -> None:
    """Waits until every process reaches this point (a named barrier; no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = [
    "DISTRIBUTED_ENV",
    "ProcessSetup",
    "check_mesh_size",
    "global_array",
    "initialize",
    "is_primary",
    "process_rows",
    "sync",
    "to_host",
]
