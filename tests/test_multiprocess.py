"""2 processes x 4 CPU devices equal 1 process x 8 devices (issue 20, item 2; slow tier).

``experiments/pod_workloads.py`` runs four workloads as one JAX program over all the
processes' devices (``jax.distributed`` on localhost through the scripts'
``--coordinator_address/--num_processes/--process_id`` flags, gloo CPU collectives), each
process building only its share of the inputs; this module starts it as 2 processes x 4
devices and as 1 process x 8 devices (the same XLA flags, set here) and compares:

1. speculative generation with the BPE Llama pair on a ``data x model = 2 x 4`` mesh:
   identical greedy tokens, equal to plain greedy decoding;
2. the bootstrap particle filter, particles split over the processes: identical
   ancestry, particles and log-likelihood (bitwise: the log-weights are replicated, so
   no sum crosses a device); resumed from an orbax checkpoint of its state written by
   both processes, it equals the uninterrupted run bit for bit;
3. an HGF MAP fit of 64 subjects split over the processes: identical losses, fitted
   parameters and surprises (bitwise: subjects never interact);
4. Leap+Verify training, data-parallel: 10 steps, a checkpoint written by both
   processes, the processes exit, fresh ones restore and train 10 more: bit for bit
   the uninterrupted 20 steps. Against 1 process, integer state (regimes, leap
   decisions, counters) is identical and floats agree to 1e-6: the gradient of a
   batch split over devices is summed across them, and the cross-process all-reduce
   (gloo) adds the 8 per-device partial sums in another order than the in-process one
   (measured: 4e-7 at most). The same training with the batch replicated (no sum
   crosses devices) is bitwise equal to 1 process, which pins that cause.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lookahead_jax import checkpoint, models, particles
from tests.helpers import start_processes, wait_processes

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "pod_workloads.py"
CONFIG = ROOT / "configs" / "pod_workloads.py"


def _start(out: pathlib.Path, processes: int, devices: int, stage: str) -> list:
    """Starts every process of one run of the script."""
    args = [
        str(SCRIPT), f"--config={CONFIG}", f"--config.stage={stage}",
        f"--config.output_dir={out}", "--config.data=2",
        # plain greedy once, in the 1-process run (the greedy law; saves a compile)
        f"--config.compare_plain_greedy={processes == 1}",
    ]  # fmt: skip
    return start_processes(args, processes, devices, out, stage)


def _wait(started: list) -> None:
    wait_processes(started, "experiments/pod_workloads.py")


def _load(out: pathlib.Path, stage: str, pid: int) -> dict:
    with np.load(out / f"{stage}_process{pid}.npz") as data:
        return dict(data)


def _run_everything(tmp_path_factory):
    """``{"one": main 1x8, "two": main 2x4 (process 0), "two_1": process 1, "resumed": ...}``."""
    one = tmp_path_factory.mktemp("one_process")
    two = tmp_path_factory.mktemp("two_processes")
    start = time.perf_counter()
    # Both runs at once: they are independent, and together they keep 2 cores busy.
    launched = _start(two, 2, 4, "main") + _start(one, 1, 8, "main")
    _wait(launched)
    _wait(_start(two, 2, 4, "resume"))  # fresh processes: only the checkpoints survive
    seconds = {
        name: json.loads((out / f"{stage}.json").read_text())["seconds"]
        for name, out, stage in (
            ("1x8", one, "main"),
            ("2x4", two, "main"),
            ("2x4 resume", two, "resume"),
        )
    }
    print(f"workers: {time.perf_counter() - start:.1f} s in all; per workload {seconds}")
    return {
        "one": _load(one, "main", 0),
        "two": _load(two, "main", 0),
        "two_1": _load(two, "main", 1),
        "resumed": _load(two, "resume", 0),
        "resumed_1": _load(two, "resume", 1),
        "ckpt": two / "leap_ckpt",
        "pf_ckpt": two / "pf_ckpt",
    }


def _equal(a: dict, b: dict, prefix: str, layouts: bool = False) -> None:
    """Every result named ``prefix...`` in both is identical (layouts only if asked)."""
    keys = sorted(
        k for k in a if k.startswith(prefix) and k in b and (layouts or not k.endswith("layout"))
    )
    assert keys, prefix
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _every_process_gathers_the_same_global_results(runs):
    # to_host all-gathers: both processes hold every row, whichever rows they computed.
    assert sorted(runs["two"]) == sorted(runs["two_1"])
    _equal(runs["two"], runs["two_1"], "", layouts=True)
    _equal(runs["resumed"], runs["resumed_1"], "", layouts=True)


def _speculative_generation_equals_one_process(runs):
    one, two = runs["one"], runs["two"]
    # Each process fed one block of prompt rows (data = 2), and the tokens stay split so.
    assert str(two["gen_prompt_layout"]) == "data over 2 process(es)"
    assert str(two["gen_tokens_layout"]) == "data over 2 process(es)"
    _equal(one, two, "gen_")
    np.testing.assert_array_equal(one["gen_tokens"], one["gen_plain_tokens"])  # greedy law
    assert one["gen_accepted"].sum() > 0  # the drafts were used, not only the bonus tokens


def _particle_filter_equals_one_process(runs):
    one, two = runs["one"], runs["two"]
    assert str(two["pf_particles_layout"]) == "batch over 2 process(es)"
    assert one["pf_resampled"].sum() >= 3  # the ancestry covers real resampling
    for key in ("ancestors", "particles", "log_likelihood", "increments", "resampled"):
        np.testing.assert_array_equal(two[f"pf_{key}"], one[f"pf_{key}"], err_msg=key)
    # Filtering means reduce over split particles: the last bits may differ (sharded.py).
    np.testing.assert_allclose(two["pf_means"], one["pf_means"], rtol=1e-5, atol=1e-6)


def _particle_filter_resumes_from_a_two_process_checkpoint(runs):
    two, resumed = runs["two"], runs["resumed"]
    half = len(two["pf_half_ancestors"])
    for key in ("particles", "log_likelihood"):
        np.testing.assert_array_equal(resumed[f"pf_rest_{key}"], two[f"pf_{key}"], err_msg=key)
    np.testing.assert_array_equal(resumed["pf_rest_ancestors"], two["pf_ancestors"][half:])
    # The saved state restored onto the data x model mesh: the same values, rows over "data".
    np.testing.assert_array_equal(resumed["pf_other_particles"], two["pf_half_particles"])
    assert str(resumed["pf_other_layout"]) == "data over 2 process(es)"


def _a_two_process_checkpoint_restores_in_one_process(runs):
    # This pytest process: 1 process x 8 devices; the checkpoint was written by 2 x 4.
    grid = models.make_model_mesh(2, 4)
    rows = NamedSharding(grid, PartitionSpec(("data", "model"), None))
    like = particles.BootstrapState(
        particles=jax.ShapeDtypeStruct((4096, 3), "float32", sharding=rows),
        log_weights=np.zeros(4096, np.float32),  # no sharding: the first device
        log_likelihood=np.float32(0),
        time=np.int32(0),
    )
    state = checkpoint.restore(runs["pf_ckpt"], like)
    assert state.particles.sharding == rows
    np.testing.assert_array_equal(np.asarray(state.particles), runs["two"]["pf_half_particles"])
    assert int(state.time) == len(runs["two"]["pf_half_ancestors"])
    assert float(state.log_likelihood) == float(runs["two"]["pf_half_log_likelihood"])


def _hgf_fit_equals_one_process(runs):
    one, two = runs["one"], runs["two"]
    assert str(two["hgf_theta_layout"]) == "batch over 2 process(es)"
    assert one["hgf_theta"].shape == (64, 1) and np.all(np.isfinite(one["hgf_surprises"]))
    _equal(one, two, "hgf_")


def _leap(run: dict, prefix: str) -> dict:
    return {k.split(prefix, 1)[1]: v for k, v in run.items() if k.startswith(prefix)}


def _leap_verify_resumed_by_fresh_processes_equals_uninterrupted(runs):
    straight = _leap(runs["two"], "leap_a")
    resumed = _leap(runs["resumed"], "leap_b")
    assert sorted(resumed) == sorted(straight)
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    # The run crosses accepted leaps on both sides of the checkpoint.
    assert _leap(runs["two"], "leap_half")[":accepted"].any() and straight[":accepted"].any()
    assert int(straight[".step"]) == 20
    # Written by both processes (orbax: one OCDBT store per process, process 0 commits).
    step = runs["ckpt"] / "10" / "default"
    assert (step / "ocdbt.process_0").is_dir() and (step / "ocdbt.process_1").is_dir()
    # Restored into a target without shardings: replicated over both processes' devices.
    assert bool(runs["resumed"]["leap_default_replicated"])
    _equal(_leap(runs["resumed"], "leap_default"), _leap(runs["two"], "leap_half"), "")


def _leap_verify_equals_one_process(runs):
    # Replicated batch: the same arithmetic on every device, so bit for bit.
    _equal(_leap(runs["one"], "leap_replicated"), _leap(runs["two"], "leap_replicated"), "")
    # Data parallel: the gradient all-reduce differs in association (module docstring).
    one, two = _leap(runs["one"], "leap_a"), _leap(runs["two"], "leap_a")
    assert sorted(one) == sorted(two)
    for key in one:
        if one[key].dtype.kind in "biu":  # regimes, decisions, counters: identical
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)
        else:  # the data-parallel gradient sum: see the module docstring
            np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-6, err_msg=key)


# One test, not one per check: a module-scoped fixture runs once per xdist worker, and
# these processes are the expensive part (each check names what it compares).
def test_two_processes_equal_one_process(tmp_path_factory):
    runs = _run_everything(tmp_path_factory)
    _every_process_gathers_the_same_global_results(runs)
    _speculative_generation_equals_one_process(runs)
    _particle_filter_equals_one_process(runs)
    _particle_filter_resumes_from_a_two_process_checkpoint(runs)
    _a_two_process_checkpoint_restores_in_one_process(runs)
    _hgf_fit_equals_one_process(runs)
    _leap_verify_resumed_by_fresh_processes_equals_uninterrupted(runs)
    _leap_verify_equals_one_process(runs)
