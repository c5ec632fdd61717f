"""Speculative greedy generation on a ``data x model`` mesh over one or many processes.

Usage::

    # Plan only (no accelerator, no weights, nothing allocated): mesh, parameter and
    # KV-cache bytes per device, batch per process; also written as JSON.
    python experiments/pod_speculative.py --config=configs/pod_qwen2_5_7b.py \\
        --config.dry_run=True

    # Run: on 8 simulated CPU devices with the shipped BPE Llama pair ...
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/pod_speculative.py \\
        --config=configs/pod_speculative.py --config.data=2 --config.model=4
    # ... or on every worker of a pod slice / every process of a cluster (one command each).
    python experiments/pod_speculative.py --config=configs/pod_qwen2_5_7b.py

A run joins the other processes (``lookahead_jax.distributed.initialize``: flags,
environment, SLURM or TPU-pod detection, else one process), checks that
``data x model`` equals the devices of all processes (``distributed.check_mesh_size``)
and that the mesh splits the target's heads and the batch (``models.plan.check_mesh``),
prints the plan, places both models tensor-parallel (``models.param_shardings``; random
weights are initialised directly sharded, so no host holds a whole 7B model), and builds
only this process's prompts (``distributed.process_rows``; row ``i`` is a pure function
of ``(seed, i)``) into global arrays (``distributed.global_array``). It then generates
with the draft model and with plain greedy decoding, gathers both token arrays on every
process (``distributed.to_host``) and checks they are identical (greedy speculative
decoding is lossless). Process 0 writes ``results.json`` to ``config.output_dir``.

The script is importable without running: tests call :func:`run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` and the configs' imports resolve.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common  # noqa: E402
from lookahead_jax import distributed, drafting, models  # noqa: E402
from lookahead_jax.decoding import generate  # noqa: E402
from lookahead_jax.models.plan import PRESETS, GenerationPlan, plan_generation  # noqa: E402

# ---- models ----------------------------------------------------------------------------------


def _source(name: str) -> str:
    """Where a model name comes from: "pretrained", "preset" or "folder"."""
    if name in models.available_pretrained():
        return "pretrained"
    if name in PRESETS:
        return "preset"
    if pathlib.Path(name).is_dir():
        return "folder"
    raise ValueError(
        f"`target`/`draft` must name a shipped checkpoint {models.available_pretrained()}, a "
        f"preset {sorted(PRESETS)} or a HuggingFace model folder; got {name!r}."
    )


def _read_config(name: str) -> models.TransformerConfig:
    """The config of a model name, without reading any weights."""
    source = _source(name)
    if source == "preset":
        return PRESETS[name]()
    if source == "pretrained":
        path = pathlib.Path(models.__file__).parent / "pretrained" / name
    else:
        path = pathlib.Path(name)
    return models.config_from_hf(json.loads((path / "config.json").read_text()))


def model_configs(
    config: ml_collections.ConfigDict,
) -> tuple[models.TransformerConfig, models.TransformerConfig, list[str]]:
    """``(target, draft, notes)``: the draft's vocabulary padded to the target's if needed."""
    target, draft = _read_config(config.target), _read_config(config.draft)
    notes = []
    if draft.vocab_size < target.vocab_size:
        # Qwen2.5-0.5B (151,936) and -7B (152,064) share a tokenizer but pad differently.
        notes.append(
            f"draft vocabulary {draft.vocab_size} padded to the target's {target.vocab_size} "
            "(the extra ids are never real tokens)."
        )
        draft = dataclasses.replace(draft, vocab_size=target.vocab_size)
    return target, draft, notes


def capacity(config: ml_collections.ConfigDict) -> int:
    """Cache slots per row ``generate`` allocates: prompt width + new tokens + K."""
    return config.prompt_len + config.max_new_tokens + config.max_draft_tokens


def make_plan(config: ml_collections.ConfigDict, num_processes: int) -> GenerationPlan:
    """The plan of ``config`` on ``num_processes`` processes (checks the mesh; no weights)."""
    target, draft, notes = model_configs(config)
    plan = plan_generation(
        target,
        draft,
        data=config.data,
        model=config.model,
        num_processes=num_processes,
        batch_size=config.batch_size,
        max_len=capacity(config),
        dtype=config.dtype,
    )
    return dataclasses.replace(plan, notes=plan.notes + tuple(notes))


def _place(host: Any, shardings: Any) -> Any:
    """Host arrays (identical on every process) to global arrays with ``shardings``.

    Each process copies only the blocks its own devices hold
    (``jax.make_array_from_callback``), which also works when the sharding spans
    several processes.
    """

    def place(leaf: Any, sharding: Any) -> jax.Array:
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(place, host, shardings)


def _pad_vocab(params: models.Params, vocab: int) -> models.Params:
    """Zero rows (columns of an untied head) up to ``vocab`` ids."""
    params = dict(params)
    wte = np.asarray(params["wte"])
    params["wte"] = np.pad(wte, ((0, vocab - wte.shape[0]), (0, 0)))
    if "lm_head" in params:
        head = np.asarray(params["lm_head"])
        params["lm_head"] = np.pad(head, ((0, 0), (0, vocab - head.shape[1])))
    return params


def load_model(
    name: str,
    model_config: models.TransformerConfig,
    mesh: jax.sharding.Mesh,
    *,
    random_init: bool,
    dtype: Any,
    key: jax.Array,
) -> models.Model:
    """The model ``name`` (with ``model_config``'s shape) placed tensor-parallel on ``mesh``."""
    shardings = models.param_shardings(model_config, mesh)
    if random_init:
        # Initialised directly sharded: every process computes only its own blocks.
        init = jax.jit(
            lambda k: models.init_params(model_config, k, dtype), out_shardings=shardings
        )
        return models.Model(model_config, init(key))
    source = _source(name)
    if source == "preset":
        raise ValueError(
            f"preset {name!r} has no weights: pass --config.random_init=True or a "
            "HuggingFace folder."
        )
    if source == "pretrained":
        _, params = models.load_pretrained(name)
    elif _read_config(name).vocab_size == model_config.vocab_size:
        # Each tensor is placed on the mesh as it is read: no host holds the whole model.
        _, params = models.load_hf(name, dtype=dtype, sharding=mesh)
        return models.Model(model_config, params)
    else:  # a draft padded to the target's vocabulary: read whole (drafts are small)
        _, params = models.load_hf(name)
    params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
    if params["wte"].shape[0] < model_config.vocab_size:
        params = _pad_vocab(params, model_config.vocab_size)
    return models.Model(model_config, _place(params, shardings))


# ---- prompts ---------------------------------------------------------------------------------


def prompt_rows(
    config: ml_collections.ConfigDict, rows: slice, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt [n, P] int32, lengths [n] int32)`` of the global rows ``rows`` only.

    Row ``i`` depends on ``(seed, i)`` alone, so every process builds exactly its own
    rows and the global batch does not depend on the number of processes. Shipped
    checkpoints get held-out text of the shipped corpus in their tokenizer; other
    models (random or unknown weights) get uniformly random ids.
    """
    width = config.prompt_len
    indices = range(rows.start, rows.stop)
    if _source(config.target) == "pretrained":
        from lookahead_jax.data import token_prompts

        tokenizer = models.load_tokenizer(config.target)
        byte_tokens = isinstance(tokenizer, models.ByteTokenizer)
        # One byte per token at most; one column kept for a BOS.
        byte_length = width if byte_tokens else width - 1
        pairs = [
            token_prompts(tokenizer, 1, byte_length, width=width, seed=config.seed * 1_000_003 + i)
            for i in indices
        ]
        prompt = np.concatenate([np.asarray(p) for p, _ in pairs]).astype(np.int32)
        lengths = np.concatenate([np.asarray(n) for _, n in pairs]).astype(np.int32)
        return prompt, lengths
    prompt = np.stack(
        [np.random.default_rng((config.seed, i)).integers(0, vocab_size, width) for i in indices]
    ).astype(np.int32)
    return prompt, np.full((len(indices),), width, np.int32)


# ---- the run ---------------------------------------------------------------------------------


def dry_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Prints and writes the plan for ``config.num_processes`` processes; allocates nothing."""
    plan = make_plan(config, config.num_processes)
    print(plan)
    results = {"config": config.to_dict(), "dry_run": True, "plan": plan.to_dict()}
    path = _common.write_json(results, pathlib.Path(config.output_dir) / "plan.json")
    print(f"wrote {path}")
    return results


def _timed(fn, *args) -> tuple[Any, float, float]:
    """``(output, compile seconds, run seconds)`` of ``jax.jit(fn)(*args)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_s, time.perf_counter() - start


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """The dry run (``config.dry_run``) or the run described in the module docstring.

    Call ``distributed.initialize`` before it when several processes take part (the
    script does, through ``_common.run``).

    Returns:
      The results (every process returns them; process 0 also writes them).
    """
    if config.dry_run:
        return dry_run(config)
    distributed.check_mesh_size({"data": config.data, "model": config.model})
    plan = make_plan(config, jax.process_count())
    primary = distributed.is_primary()
    if primary:
        print(plan)
    target_config, draft_config, _ = model_configs(config)  # the planned shapes
    mesh = models.make_model_mesh(config.data, config.model)
    dtype = jnp.dtype(config.dtype)
    target_key, draft_key = jax.random.split(jax.random.key(config.seed))
    common = dict(random_init=config.random_init, dtype=dtype)
    target = load_model(config.target, target_config, mesh, key=target_key, **common)
    draft = load_model(config.draft, draft_config, mesh, key=draft_key, **common)

    rows = distributed.process_rows(config.batch_size, mesh, "data")
    local = prompt_rows(config, rows, target_config.vocab_size)
    prompt, lengths = distributed.global_array(local, mesh, "data", num_rows=config.batch_size)

    key = jax.random.key(config.seed)
    controller = drafting.constant() if config.always_draft else None

    def speculative(target, draft, prompt, lengths):
        return generate(
            target, prompt, lengths, key, max_new_tokens=config.max_new_tokens,
            drafter=drafting.draft_model(draft), max_draft_tokens=config.max_draft_tokens,
            controller=controller, exact=config.exact,
        )  # fmt: skip

    def greedy(target, prompt, lengths):
        return generate(
            target, prompt, lengths, key, max_new_tokens=config.max_new_tokens,
            exact=config.exact,
        )  # fmt: skip

    jobs = {"greedy": (greedy, (target, prompt, lengths))}
    jobs["speculative"] = (speculative, (target, draft, prompt, lengths))
    names = list(jobs)
    if progress is not None:
        names = progress(names, desc="generate", disable=not primary)
    outputs, timings = {}, {}
    for name in names:
        fn, args = jobs[name]
        out, compile_s, run_s = _timed(fn, *args)
        outputs[name] = distributed.to_host(
            {"tokens": out.tokens, "lengths": out.lengths, "stats": out.stats._asdict()}
        )
        timings[name] = {"compile_s": compile_s, "run_s": run_s}

    spec, plain = outputs["speculative"], outputs["greedy"]
    same_rows = np.all(spec["tokens"] == plain["tokens"], axis=1) & (
        spec["lengths"] == plain["lengths"]
    )
    stats = spec["stats"]
    new_tokens = plain["lengths"] - distributed.to_host(lengths)
    results = {
        "config": config.to_dict(),
        "dry_run": False,
        "processes": {
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "platform": jax.devices()[0].platform,
        },
        "plan": plan.to_dict(),
        "same_tokens_as_greedy": bool(same_rows.all()),
        "rows_differing": np.flatnonzero(~same_rows).tolist(),
        "new_tokens": int(new_tokens.sum()),
        "target_calls": {
            "speculative": int(stats["target_calls"].sum()),
            "greedy": int(plain["stats"]["target_calls"].sum()),
        },
        "drafted": int(stats["drafted"].sum()),
        "accepted": int(stats["accepted"].sum()),
        "acceptance_rate": float(stats["accepted"].sum() / max(1, stats["drafted"].sum())),
        "tokens_per_target_call": float(new_tokens.sum() / max(1, stats["target_calls"].sum())),
        "timings": timings,
        "first_row_tokens": spec["tokens"][0, : int(spec["lengths"][0])].tolist(),
    }
    if primary:
        path = _common.write_json(results, pathlib.Path(config.output_dir) / "results.json")
        print(format_summary(results))
        print(f"wrote {path}")
    distributed.sync("pod_speculative_written")
    return results


def format_summary(results: dict[str, Any]) -> str:
    """A few lines: equality with greedy, acceptance, target calls and timings."""
    processes = results["processes"]
    lines = [
        f"{processes['process_count']} process(es), {processes['device_count']} "
        f"{processes['platform']} devices",
        f"speculative tokens == greedy tokens: {results['same_tokens_as_greedy']}"
        + (f" (rows differing: {results['rows_differing']})" if results["rows_differing"] else ""),
        f"new tokens {results['new_tokens']}, target calls: speculative "
        f"{results['target_calls']['speculative']} vs greedy {results['target_calls']['greedy']}; "
        f"acceptance {results['acceptance_rate']:.3f}",
    ]
    for name, t in results["timings"].items():
        lines.append(f"{name}: compile {t['compile_s']:.2f} s, run {t['run_s']:.3f} s")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    from absl import flags
    from tqdm import tqdm

    run(flags.FLAGS.config, progress=tqdm)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.define_config(_ROOT / "configs" / "pod_speculative.py")
    # Joins the other processes first (flags, environment, SLURM or TPU pod; docs/launch.md).
    _common.run(main)
