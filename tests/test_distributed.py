"""lookahead_jax.distributed in one process (the 2-process run is tests/test_multiprocess.py).

``jax.distributed.initialize`` is replaced by a recorder where a test checks *what* would be
initialised: once called for real it cannot be undone in this process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import distributed, models, sharding

_CLUSTER_VARS = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    distributed.DISTRIBUTED_ENV,
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_NUM_SLICES",
)


@pytest.fixture
def calls(monkeypatch):
    """A clean environment and a recorder in place of ``jax.distributed.initialize``."""
    for name in _CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
    return recorded


def test_one_process_without_any_setup_initialises_nothing(calls):
    setup = distributed.initialize()
    assert setup.source == "single" and calls == []
    assert (setup.process_index, setup.process_count) == (0, 1)
    assert setup.device_count == jax.device_count() == setup.local_device_count
    assert distributed.is_primary()
    assert sharding.initialize_distributed() is False  # the older entry point agrees
    assert distributed.initialize(num_processes=1).source == "single"
    assert calls == []


def test_arguments_then_environment_then_cluster(calls, monkeypatch):
    distributed.initialize("host:1234", 4, 2)
    assert calls[-1] == {"coordinator_address": "host:1234", "num_processes": 4, "process_id": 2}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize().source == "environment"
    assert calls[-1] == {"coordinator_address": "node0:999", "num_processes": 2, "process_id": 1}
    distributed.initialize(process_id=0)  # an argument wins over the environment
    assert calls[-1]["process_id"] == 0
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name)
    # SLURM with several tasks: JAX's own cluster detection, so no arguments.
    for name, value in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize().source == "cluster" and calls[-1] == {}
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job is one process
    count = len(calls)
    assert distributed.initialize().source == "single" and len(calls) == count
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
    assert distributed.initialize().source == "cluster"
    assert distributed.initialize(enabled=False).source == "single"
    assert len(calls) == count + 1


@pytest.mark.parametrize(
    ("kwargs", "env", "match"),
    [
        ({"coordinator_address": "h:1", "num_processes": 0}, {}, "`num_processes` must be"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, r"\[0, 2\)"),
        ({"coordinator_address": "h:1"}, {}, "`num_processes` is needed"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    ],
)
def test_bad_setups_are_errors_before_anything_starts(calls, monkeypatch, kwargs, env, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)
    assert calls == []


def test_process_rows_and_global_arrays_in_one_process():
    mesh = models.make_model_mesh(data=2, model=4)
    assert distributed.process_rows(6, mesh, "data") == slice(0, 6)
    local = {"x": np.arange(12.0).reshape(6, 2), "n": np.arange(6)}
    placed = distributed.global_array(local, mesh, "data", num_rows=6)
    assert placed["x"].sharding.spec == jax.sharding.PartitionSpec("data", None)
    doubled = jax.jit(lambda tree: jax.tree.map(lambda a: a * 2, tree))(placed)
    host = distributed.to_host(doubled)
    np.testing.assert_array_equal(host["x"], local["x"] * 2)
    assert isinstance(host["n"], np.ndarray)
    replicated = distributed.global_array(np.ones((3, 2)), mesh, None)
    assert replicated.sharding.is_fully_replicated
    np.testing.assert_array_equal(distributed.to_host(jnp.arange(3)), np.arange(3))
    distributed.sync("test")  # a no-op alone


@pytest.mark.parametrize(
    ("rows", "axis", "match"),
    [(5, "data", "multiple of the mesh axis 'data'"), (4, "rows", "one of the mesh axes")],
)
def test_process_rows_errors(rows, axis, match):
    mesh = models.make_model_mesh(data=2, model=4)
    with pytest.raises(ValueError, match=match):
        distributed.process_rows(rows, mesh, axis)


def test_a_mesh_must_use_every_device_of_every_process():
    distributed.check_mesh_size({"data": 2, "model": 4})
    distributed.check_mesh_size((8,))
    with pytest.raises(ValueError, match=r"needs 32 devices, but the 1 process\(es\) have 8"):
        distributed.check_mesh_size({"data": 4, "model": 8}, what="mesh")
