"""Pod-scale workloads of every pillar, run as one program over all processes' devices.

Every process of a multi-process run (a TPU pod slice, one process per GPU, SLURM, or
simulated CPU devices on one machine; docs/launch.md) runs this same script. Each
workload builds its mesh over all processes' devices, and each process builds only its
own share of the inputs (``lookahead_jax.distributed.process_rows`` / ``global_array``):

1. ``generation``: greedy speculative generation with the shipped BPE Llama pair
   (draft-model drafter) on a ``data x model`` mesh; prompts split over ``data``, the
   weights over ``model``; checked against plain greedy decoding;
2. ``particles``: the bootstrap particle filter with particles split over a 1-D mesh
   (global resampling); its state after half the observations is checkpointed by every
   process (orbax, ``lookahead_jax.checkpoint``);
3. ``hgf``: an HGF MAP fit of many subjects split over a 1-D mesh (each process
   simulates only its subjects, from a generator seeded by the subject index);
4. ``leap``: Leap+Verify training, data-parallel (batch rows split over a 1-D mesh):
   the first half of the steps, a checkpoint written by every process, the second half.

``--config.stage=resume`` is the other half of a kill-and-resume: fresh processes
restore the two checkpoints, finish the filter and the training, and restore the filter
state onto the ``data x model`` mesh too (a checkpoint written under one mesh restored
under another). ``tests/test_multiprocess.py`` runs ``main`` as 2 processes x 4 CPU
devices and as 1 process x 8 devices, then ``resume`` in fresh processes, and compares.

Usage (two simulated hosts on one machine)::

    for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
      python experiments/pod_workloads.py --config=configs/pod_workloads.py \\
        --coordinator_address=localhost:12355 --num_processes=2 --process_id=$i & done

Writes, in ``config.output_dir``: ``<stage>_process<i>.npz`` from every process (the
global results, gathered with ``distributed.to_host``, so every file holds every row)
and, from process 0, ``<stage>.json`` (layouts, wall times and the checks).
"""

import functools
import json
import os
import pathlib
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common  # noqa: E402
from experiments.benchmarks import hgf as hgf_benchmark  # noqa: E402
from lookahead_jax import (  # noqa: E402
    checkpoint,
    decoding,
    distributed,
    drafting,
    extrapolation,
    models,
    particles,
    sharding,
)
from lookahead_jax import predictive_coding as pc  # noqa: E402
from lookahead_jax.models.partitioning import DATA_AXIS as DATA  # noqa: E402


def _layout(x) -> str:
    """``"<mesh axis of the rows> over <processes holding them> process(es)"``."""
    spec = x.sharding.spec
    processes = {d.process_index for d in x.sharding.device_set}
    return f"{spec[0] if len(spec) else None} over {len(processes)} process(es)"


# ---- 1. speculative generation, BPE Llama pair, data x model mesh ---------------------------


def _generation(c: ml_collections.ConfigDict) -> dict:
    mesh = models.make_model_mesh(c.data, jax.device_count() // c.data)
    target_config, target_params = models.load_pretrained("tiny-llama-target")
    draft_config, draft_params = models.load_pretrained("tiny-llama-draft")
    # Every process passes the same host values; each keeps the shards its devices hold.
    target = models.Model(target_config, models.shard_params(target_config, target_params, mesh))
    draft = models.Model(draft_config, models.shard_params(draft_config, draft_params, mesh))
    rows = distributed.process_rows(len(c.texts), mesh, DATA)
    # Each process tokenizes only its own prompts, padded to a width all processes share.
    tokenizer = models.load_tokenizer("tiny-llama-target")
    local = tokenizer.encode(list(c.texts[rows]), pad_to=c.prompt_width)
    prompt, lengths = distributed.global_array(
        tuple(np.asarray(x) for x in local), mesh, DATA, len(c.texts)
    )

    @functools.partial(jax.jit, static_argnames=("speculative",))
    def run(target, draft, prompt, lengths, speculative=True):
        return decoding.generate(
            target, prompt, lengths, jax.random.key(0), max_new_tokens=c.max_new_tokens,
            drafter=drafting.draft_model(draft) if speculative else None,
            max_draft_tokens=3, controller=drafting.constant() if speculative else None,
        )  # fmt: skip

    out = run(target, draft, prompt, lengths)
    result = {"tokens": out.tokens, "lengths": out.lengths, "accepted": out.stats.accepted}
    layout = {"prompt_layout": _layout(prompt), "tokens_layout": _layout(out.tokens)}
    if c.compare_plain_greedy:  # the greedy law: speculative tokens == plain greedy tokens
        result["plain_tokens"] = run(target, draft, prompt, lengths, speculative=False).tokens
    return {f"gen_{k}": v for k, v in {**distributed.to_host(result), **layout}.items()}


# ---- 2. bootstrap particle filter, particles sharded over all devices -----------------------


def _filter_setup(c: ml_collections.ConfigDict):
    """``(run, model, observations, config)``: the jitted ``bootstrap_run`` on the 1-D mesh."""
    # tests/particles/test_filters.py's discriminating model: partitioned (not replicated)
    # log-weights change the ancestors from step 3 on.
    lgssm = particles.example_lgssm()
    _, observations = lgssm.sample(jax.random.key(0), c.filter_steps)  # same on every process
    config = particles.BootstrapConfig(
        c.num_particles, mesh=sharding.make_mesh(), keep_ancestors=True
    )
    run = jax.jit(particles.bootstrap_run, static_argnames=("model", "config"))
    return run, lgssm.to_state_space_model(), observations, config


def _filter_result(prefix: str, out) -> dict:
    result = {
        "log_likelihood": out.log_likelihood,
        "increments": out.log_likelihood_increments,
        "ancestors": out.ancestors,
        "resampled": out.resampled,
        "means": out.means,
        "particles": out.final_state.particles,
    }
    result = distributed.to_host(result)
    result["particles_layout"] = _layout(out.final_state.particles)
    return {f"{prefix}_{k}": v for k, v in result.items()}


def _particles(c: ml_collections.ConfigDict, out: pathlib.Path) -> dict:
    run, model, observations, config = _filter_setup(c)
    key = jax.random.key(1)
    result = _filter_result("pf", run(key, model, observations, config))
    # The filter state after half the observations, particles split over the processes,
    # saved by every process (resumed by --stage resume).
    half = run(key, model, observations[: c.filter_steps // 2], config)
    checkpoint.save(out / "pf_ckpt", c.filter_steps // 2, half.final_state)
    result.update(_filter_result("pf_half", half))
    return result


def _particles_resume(c: ml_collections.ConfigDict, out: pathlib.Path) -> dict:
    run, model, observations, config = _filter_setup(c)

    def like(particle_sharding, replicated):
        def leaf(shape, dtype, where=replicated):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

        return particles.BootstrapState(
            particles=leaf((c.num_particles, 3), "float32", particle_sharding),
            log_weights=leaf((c.num_particles,), "float32"),
            log_likelihood=leaf((), "float32"),
            time=leaf((), "int32"),
        )

    mesh = config.mesh
    state = checkpoint.restore(
        out / "pf_ckpt",
        like(
            NamedSharding(mesh, PartitionSpec("batch", None)), NamedSharding(mesh, PartitionSpec())
        ),
    )
    rest = run(jax.random.key(1), model, observations[c.filter_steps // 2 :], config, state=state)
    result = _filter_result("pf_rest", rest)
    # The same checkpoint onto another mesh: rows over "data" of the 2 x 4 model mesh.
    grid = models.make_model_mesh(c.data, jax.device_count() // c.data)
    other = checkpoint.restore(
        out / "pf_ckpt",
        like(
            NamedSharding(grid, PartitionSpec("data", None)), NamedSharding(grid, PartitionSpec())
        ),
    )
    result["pf_other_particles"] = distributed.to_host(other.particles)
    result["pf_other_layout"] = _layout(other.particles)
    return result


# ---- 3. HGF fit of 64 subjects split over all devices ---------------------------------------


def _subject_series(c: ml_collections.ConfigDict, index: int) -> np.ndarray:
    """Subject ``index``'s observations ``[c.series_steps]``: the same in every process layout."""
    rng = np.random.default_rng([20, index])
    omega = -7.0 + 4.0 * index / (c.num_subjects - 1)
    walk = np.exp(omega / 2) * rng.standard_normal(c.series_steps)
    return (1.0 + np.cumsum(walk) + 0.1 * rng.standard_normal(c.series_steps)).astype(np.float32)


def _hgf(c: ml_collections.ConfigDict) -> dict:
    # The fit of experiments/benchmarks/hgf.py's `fit_recovery`, split across processes.
    structure, theta0, unpack, loss = hgf_benchmark.omega_fit_model()

    mesh = sharding.make_mesh()
    rows = distributed.process_rows(c.num_subjects, mesh, sharding.BATCH_AXIS)
    mine = range(rows.start, rows.stop)  # this process simulates only its own subjects
    inputs = np.stack([_subject_series(c, i) for i in mine])[..., None]  # [S_local, T, 1]
    starts = {k: np.broadcast_to(np.asarray(v), (len(mine), *v.shape)) for k, v in theta0.items()}
    starts, inputs = distributed.global_array(
        (starts, inputs), mesh, sharding.BATCH_AXIS, c.num_subjects
    )

    fit_many = jax.jit(
        functools.partial(pc.fit_subjects, loss, optimizer=optax.adam(0.1), num_steps=c.fit_steps)
    )
    fitted = fit_many(starts, inputs)

    @jax.jit
    def surprises(theta, inputs):  # [S] total input surprise at the fitted parameters
        def one(theta, x):
            p, b = unpack(theta)
            _, trajectories = pc.filter(structure, p, b, x, robust=True)  # as map_loss
            return pc.total_surprise(structure, trajectories)

        return jax.vmap(one)(theta, inputs)

    result = {
        "theta": fitted.theta["tonic_volatility"],
        "losses": fitted.losses,
        "surprises": surprises(fitted.theta, inputs),
    }
    result = distributed.to_host(result)
    result["theta_layout"] = _layout(fitted.theta["tonic_volatility"])
    return {f"hgf_{k}": v for k, v in result.items()}


# ---- 4. Leap+Verify, data-parallel, killed and resumed through orbax ------------------------


def _leap_setup(c: ml_collections.ConfigDict, split: bool = True):
    """``(run, state0, batches)``: the compiled run of half the steps, the replicated
    initial state and the global ``[steps, B, ...]`` batches: batch rows split over the
    mesh, each process building only its rows (data parallel), or, ``split=False``,
    replicated."""

    rng = np.random.default_rng(4)
    w_true = rng.normal(size=(4, 3))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "hidden": {"w": jax.random.normal(k1, (4, 8)) * 0.5, "b": jnp.zeros(8)},
        "out": {"w": jax.random.normal(k2, (8, 3)) * 0.5, "b": jnp.zeros(3)},
    }

    def hidden(p, x):
        return jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])

    def loss_fn(p, batch):
        x, y = batch
        return jnp.mean(jnp.square(hidden(p, x) @ p["out"]["w"] + p["out"]["b"] - y))

    held_x = rng.normal(size=(16, 4)).astype(np.float32)
    heldout = (jnp.asarray(held_x), jnp.asarray(np.sin(held_x @ w_true).astype(np.float32)))
    probes = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
    config = extrapolation.LeapConfig(
        delta=2, k=2, method="quadratic", criterion="adaptive", leap_in="not_chaotic",
        calibration_checks=2, max_checks=8,
    )  # fmt: skip
    optimizer = extrapolation.leap_verify(
        optax.adam(optax.linear_schedule(3e-2, 3e-3, 40)),
        config,
        heldout_loss=lambda p: loss_fn(p, heldout),
        fingerprint=lambda p: hidden(p, probes),
    )
    mesh = sharding.make_mesh()
    state0 = distributed.global_array(
        jax.tree.map(np.asarray, extrapolation.leap_init(params, optimizer)), mesh, None
    )

    # Batch row r of step t is a function of (t, r) alone: the same in every process layout.
    rows = distributed.process_rows(c.leap_batch, mesh, sharding.BATCH_AXIS)
    if not split:
        rows = slice(0, c.leap_batch)
    xs = np.stack(
        [
            np.random.default_rng([4, t, r]).normal(size=4)
            for t in range(c.leap_steps)
            for r in range(rows.start, rows.stop)
        ]
    ).astype(np.float32)
    xs = xs.reshape(c.leap_steps, rows.stop - rows.start, 4)
    ys = np.sin(xs @ w_true).astype(np.float32)
    # Steps along axis 0, batch rows (split over the mesh) along axis 1.
    spec = PartitionSpec(None, sharding.BATCH_AXIS, None) if split else PartitionSpec()
    batches = tuple(
        jax.make_array_from_process_local_data(
            NamedSharding(mesh, spec), a, (c.leap_steps, c.leap_batch, a.shape[-1])
        )
        for a in (xs, ys)
    )
    run = jax.jit(
        lambda state, batches: extrapolation.leap_run(
            None, state, batches, loss_fn=loss_fn, optimizer=optimizer
        )
    )
    return run, state0, batches


def _leap_half(c: ml_collections.ConfigDict, batches, half: int):
    n = c.leap_steps // 2
    return jax.tree.map(lambda b: b[n * half : n * (half + 1)], batches)


def _leap_summary(prefix: str, state, infos=None) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(distributed.to_host(state))[0]
    out = {f"{prefix}{jax.tree_util.keystr(path)}": leaf for path, leaf in flat}
    if infos is not None:
        out[f"{prefix}:accepted"] = distributed.to_host(infos.leap.accepted)
        out[f"{prefix}:attempted"] = distributed.to_host(infos.leap.attempted)
    return out


def _leap_main(c: ml_collections.ConfigDict, out: pathlib.Path) -> dict:
    run, state0, batches = _leap_setup(c)
    first, first_infos = run(state0, _leap_half(c, batches, 0))
    straight, infos = run(first, _leap_half(c, batches, 1))  # run A: never leaves the devices
    checkpoint.save(out / "leap_ckpt", c.leap_steps // 2, first)  # run B: every process calls it
    result = _leap_summary("leap_a", straight, infos)
    result.update(_leap_summary("leap_half", first, first_infos))
    # The same 20 steps with every device holding the whole batch: no sum crosses devices.
    run, state, batches = _leap_setup(c, split=False)
    for half in (0, 1):
        state, _ = run(state, _leap_half(c, batches, half))
    result.update(_leap_summary("leap_replicated", state))
    return result


def _leap_resume(c: ml_collections.ConfigDict, out: pathlib.Path) -> dict:
    run, state0, batches = _leap_setup(c)
    restored = checkpoint.restore(out / "leap_ckpt", state0)  # into state0's shardings
    resumed, infos = run(restored, _leap_half(c, batches, 1))
    result = _leap_summary("leap_b", resumed, infos)
    # A target without shardings: replicated over every device of every process.
    bare = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state0)
    default = checkpoint.restore(out / "leap_ckpt", bare)
    leaves = jax.tree.leaves(default)
    result["leap_default_replicated"] = all(
        x.sharding.is_fully_replicated and x.sharding.device_set == set(jax.devices())
        for x in leaves
    )
    result.update(_leap_summary("leap_default", default))
    return result


_STAGES = {
    "main": {
        "generation": lambda c, out: _generation(c),
        "particles": _particles,
        "hgf": lambda c, out: _hgf(c),
        "leap": _leap_main,
    },
    "resume": {"particles": _particles_resume, "leap": _leap_resume},
}


def run(c: ml_collections.ConfigDict, progress=None) -> dict:
    """Runs ``c.stage``'s workloads (every process calls it alike); returns the global results.

    Returns ``{name: np.ndarray | str}`` with every workload's results prefixed by its
    name (``gen_``, ``pf_``, ``hgf_``, ``leap_``), the same on every process.
    """
    if c.stage not in _STAGES:
        raise ValueError(f"`stage` must be one of {sorted(_STAGES)}; got {c.stage!r}.")
    unknown = sorted(set(c.workloads) - set(_STAGES["main"]))
    if unknown:
        raise ValueError(f"`workloads` must be among {sorted(_STAGES['main'])}; got {unknown}.")
    out = pathlib.Path(c.output_dir).absolute()
    if c.stage == "main" and distributed.is_primary():
        for name in ("pf_ckpt", "leap_ckpt"):  # a rerun starts its checkpoints afresh
            shutil.rmtree(out / name, ignore_errors=True)
    distributed.sync("output folder ready")
    out.mkdir(parents=True, exist_ok=True)  # checkpoints: every process writes its shards
    results: dict = {}
    seconds: dict = {}
    names = [n for n in _STAGES[c.stage] if n in c.workloads]
    for name in progress(names, desc=c.stage) if progress else names:
        start = time.perf_counter()
        results.update(_STAGES[c.stage][name](c, out))
        seconds[name] = round(time.perf_counter() - start, 2)
    pid = jax.process_index()
    np.savez(out / f"{c.stage}_process{pid}.npz", **{k: np.asarray(v) for k, v in results.items()})
    summary = {
        "stage": c.stage,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "seconds": seconds,
        "layouts": {k: str(v) for k, v in results.items() if k.endswith("layout")},
    }
    if "gen_plain_tokens" in results:
        summary["speculative_equals_greedy"] = bool(
            np.array_equal(results["gen_tokens"], results["gen_plain_tokens"])
        )
    _common.write_json(summary, out / f"{c.stage}.json")
    distributed.sync(f"{c.stage} written")  # nobody exits while another still needs it
    print(json.dumps(summary))
    return results


def main(argv: list[str]) -> None:
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    run(flags.FLAGS.config, progress=tqdm)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.define_config(_ROOT / "configs" / "pod_workloads.py")
    _common.run(main)  # joins the other processes first (flags, environment, cluster)
