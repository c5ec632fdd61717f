"""Trains a language model on the shipped corpus (Flax-examples style).

Usage::

    python experiments/train_lm.py --workdir=/work/runs/target \\
        --config=configs/train_lm.py --config.model=target --config.num_steps=2000

    # A Llama-family model on the shipped byte-level BPE tokenizer:
    python experiments/train_lm.py --workdir=/work/runs/tiny-llama-target \\
        --config=configs/train_lm.py --config.model=llama_target --config.tokenizer=tiny-llama

``config.model`` names a sub-config whose ``family`` (``"gpt2"`` when absent) picks
the constructor ``models.FAMILIES[family]`` that receives its other fields.
``config.tokenizer`` is ``"bytes"`` (token ids are the corpus bytes, as the
shipped byte-level GPT-2 pair was trained) or a name / folder ``load_tokenizer``
accepts: the training split is then encoded once into one token stream (each
document as ``[BOS] doc [EOS]``), windows are drawn from it exactly as from the
bytes, and the held-out score is still **bits per byte**: the summed next-token
NLL over the held-out windows, in bits, divided by the UTF-8 bytes the predicted
tokens spell (special tokens spell none). Held-out nats per token are recorded too.

The whole training state (params, optimiser state, step, rng, loss history) is
one pytree, checkpointed with ``lookahead_jax.checkpoint`` every
``checkpoint_every`` steps. On start the script resumes from the newest
checkpoint in ``workdir``; since the batch of step ``t`` is a pure function of
``(seed, t)``, an interrupted-then-resumed run ends with bitwise the same
parameters as an uninterrupted one.

Outputs in ``workdir``: ``checkpoints/``, ``metrics.json`` (loss curve, held-out
bits per byte, wall time, parameter count), ``loss.png`` and ``hf/``
(``config.json`` + ``model.safetensors`` in the HuggingFace layout of the family;
with a BPE tokenizer also ``tokenizer.json`` + ``tokenizer_config.json``, so the
folder is a complete HuggingFace model folder).

Several processes (a TPU pod slice, one process per GPU, SLURM; docs/launch.md):
``config.data_parallel`` (``"auto"``: on when several processes run the script) splits
every batch's rows over a 1-D mesh of all processes' devices, each process building
only its rows; parameters and optimiser state are replicated, the gradient is summed
across devices by XLA, every process writes its part of each checkpoint and process 0
writes ``metrics.json``, the plot and the export. On one device (``"off"``) the script
runs exactly as it always has.

The script is importable without running: tests use ``train_and_evaluate``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lookahead_jax import checkpoint, distributed, metrics, sharding
from lookahead_jax.data import (
    batch_for_step,
    eval_windows,
    load_corpus,
    token_stream,
    token_windows,
)
from lookahead_jax.models import (
    FAMILIES,
    Model,
    Params,
    TransformerConfig,
    apply,
    bits_per_byte,
    init_params,
    load_tokenizer,
)

MODELS = ("target", "draft", "llama_target", "llama_draft", "llama_large")
BYTES = "bytes"  # config.tokenizer of the byte-level models: ids are the corpus bytes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TrainState(NamedTuple):
    """Everything a resumed run needs; saved as one checkpoint pytree."""

    params: Params
    opt_state: optax.OptState
    step: jax.Array  # [] int32: number of optimiser steps taken
    rng: jax.Array  # [] typed PRNG key, split once per step
    losses: jax.Array  # [num_steps] float32: training loss (nats/token; bytes: nats/byte)
    heldout_bpb: (
        jax.Array
    )  # [num_steps + 1] float32: held-out bits/byte after step t, NaN if not evaluated
    elapsed: jax.Array  # [] float32: training wall-clock seconds up to the checkpoint
    heldout_nats: (
        jax.Array
    )  # [num_steps + 1] float32: held-out nats/token after step t, NaN if not evaluated


def model_config(config: ml_collections.ConfigDict) -> TransformerConfig:
    """The ``TransformerConfig`` of the model selected by ``config.model``.

    The sub-config's ``family`` (default ``"gpt2"``) names the constructor in
    ``models.FAMILIES``; its other fields are passed to it.
    """
    if config.model not in MODELS or config.model not in config:
        raise ValueError(f"`config.model` must be one of {MODELS}; got {config.model!r}.")
    fields = config[config.model].to_dict()
    family = fields.pop("family", "gpt2")
    if family not in FAMILIES:
        raise ValueError(
            f"`config.{config.model}.family` must be one of {tuple(FAMILIES)}; got {family!r}."
        )
    model = FAMILIES[family](**fields)
    if config.seq_len > model.max_length:
        raise ValueError(
            f"`config.seq_len`={config.seq_len} exceeds the model's max_length={model.max_length}."
        )
    return model


# ----------------------------------------------------------------------------- data


class Data(NamedTuple):
    """The token streams and held-out windows of one tokenizer."""

    train: np.ndarray  # [N] training stream: bytes (uint8) or token ids (int32)
    windows: np.ndarray  # [W, seq_len + 1] int32 held-out windows
    token_bytes: np.ndarray | None  # [V] int32 UTF-8 bytes each id spells; None for bytes
    tokenizer: Any  # the ``models.Tokenizer``, or None for bytes


@functools.lru_cache(maxsize=4)
def _bpe_data(name: str, seq_len: int, max_windows: int | None) -> Data:
    """The training stream (each document ``[BOS] doc [EOS]``), checked byte-exact by
    ``data.token_stream``, and the held-out windows of tokenizer ``name``."""
    tokenizer = load_tokenizer(name)
    train = token_stream(tokenizer, "train")
    windows = token_windows(tokenizer, seq_len, max_windows)
    windows.setflags(write=False)
    return Data(train, windows, tokenizer.token_bytes(), tokenizer)


def load_data(config: ml_collections.ConfigDict) -> Data:
    """The training stream and held-out windows of ``config.tokenizer``."""
    max_windows = config.eval_max_windows or None
    if config.tokenizer == BYTES:
        windows = eval_windows(load_corpus("heldout"), config.seq_len, max_windows)
        return Data(load_corpus("train"), windows, None, None)
    return _bpe_data(str(config.tokenizer), config.seq_len, max_windows)


def heldout_scores(
    model: Model, windows: np.ndarray, token_bytes: np.ndarray | None, batch_size: int
) -> tuple[float, float]:
    """``(bits per byte, nats per token)`` of ``model`` on ``windows [W, S + 1]``.

    Bits per byte: the summed next-token NLL of ``windows[:, 1:]`` in bits over the
    UTF-8 bytes those tokens spell (``token_bytes``; ``None``: one byte per token).
    """
    bpb = bits_per_byte(model, windows, batch_size, token_bytes=token_bytes)
    if token_bytes is None:
        return bpb, bpb * math.log(2)
    targets = np.asarray(windows)[:, 1:]
    return bpb, bpb * math.log(2) * float(token_bytes[targets].sum()) / targets.size


def _tokenizer_folder(name: str) -> pathlib.Path:
    """The folder holding the files of tokenizer ``name`` (a shipped name or a path)."""
    from lookahead_jax.models import tokenizer as tokenizer_module

    root = importlib.resources.files("lookahead_jax.models") / "pretrained"
    for folder in (name, tokenizer_module.ALIASES.get(name, "")):
        if folder and (root / folder / "tokenizer.json").is_file():
            return pathlib.Path(str(root / folder))
    path = pathlib.Path(name)
    return path.parent if path.is_file() else path


def export_hf(
    directory: str, config: ml_collections.ConfigDict, model: TransformerConfig, params: Params
) -> None:
    """Writes a HuggingFace model folder: weights, config and (BPE) tokenizer files."""
    if config.tokenizer == BYTES:
        if model.model_type == "gpt2":
            from lookahead_jax.models import save_hf_gpt2

            save_hf_gpt2(directory, model, params)
        else:
            from lookahead_jax.models import save_hf

            save_hf(directory, model, params)
        return
    from lookahead_jax.models import save_hf

    tokenizer = load_data(config).tokenizer
    save_hf(directory, model, params, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    source = _tokenizer_folder(str(config.tokenizer))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, os.path.join(directory, name))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``end_lr_ratio`` of it."""
    warmup = min(config.warmup_steps, config.num_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(config.num_steps, warmup + 1),
        end_value=config.learning_rate * config.end_lr_ratio,
    )


def _decay_mask(params: Params) -> Params:
    # Weight decay on matrices and embeddings only, not on biases or LayerNorm.
    def decays(path: tuple[Any, ...], _: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return name.endswith("kernel") or name in ("wte", "wpe", "lm_head")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm gradient clipping and the warmup-cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(
            learning_rate_schedule(config),
            b2=config.b2,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        ),
    )


def init_state(
    config: ml_collections.ConfigDict,
    model: TransformerConfig,
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """The state at step 0, a pure function of ``config.seed``."""
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    params = init_params(model, init_key)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=rng,
        losses=jnp.zeros((config.num_steps,), jnp.float32),
        heldout_bpb=jnp.full((config.num_steps + 1,), jnp.nan, jnp.float32),
        elapsed=jnp.zeros((), jnp.float32),
        heldout_nats=jnp.full((config.num_steps + 1,), jnp.nan, jnp.float32),
    )


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood in nats.

    ``logits [B, S, V]`` and ``targets [B, S]`` int -> ``[B, S]`` float32.
    """
    return metrics.token_nll(logits, targets)


def make_train_step(model: TransformerConfig, optimizer: optax.GradientTransformation):
    """A jitted ``(state, batch [B, S + 1] int32) -> (state, loss [])`` step."""

    def loss_fn(params: Params, batch: jax.Array) -> jax.Array:
        logits, _ = apply(model, params, batch[:, :-1])
        return jnp.mean(cross_entropy(logits, batch[:, 1:]))

    def train_step(state: TrainState, batch: jax.Array) -> tuple[TrainState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(state.rng)
        new_state = state._replace(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            rng=rng,
            losses=state.losses.at[state.step].set(loss),
        )
        return new_state, loss

    return jax.jit(train_step, donate_argnums=0)


def _save_plot(
    path: str,
    losses: np.ndarray,
    evals: list[tuple[int, float]],
    title: str,
    unit: str = "byte",
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses / math.log(2), lw=0.8, alpha=0.6, label=f"train (bits/{unit})")
    if len(losses) >= 20:
        window = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid") / math.log(2)
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"train, {window}-step mean")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out (bits/byte)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte" if unit == "byte" else "bits")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if distributed.is_primary():  # one process writes shared files
        fig.savefig(path, dpi=120)
    plt.close(fig)


def data_parallel_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh | None:
    """The 1-D mesh batches are split over, or ``None`` (one device, no mesh).

    ``config.data_parallel``: ``"auto"`` (several processes: all their devices),
    ``"on"`` (all devices, also in one process) or ``"off"``.
    """
    mode = str(config.get("data_parallel", "auto"))
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"`config.data_parallel` must be 'auto', 'on' or 'off'; got {mode!r}.")
    if mode == "off" or (mode == "auto" and jax.process_count() == 1):
        return None
    mesh = sharding.make_mesh()
    if config.batch_size % mesh.devices.size:
        raise ValueError(
            f"`config.batch_size` ({config.batch_size}) must be divisible by the "
            f"{mesh.devices.size} devices its rows are split over (data_parallel={mode!r})."
        )
    return mesh


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after: int | None = None,
    command: str | None = None,
) -> dict[str, Any] | None:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates and exports.

    Args:
      config: see ``configs/train_lm.py``.
      workdir: output directory (checkpoints, metrics, plot, HF export).
      stop_after: stop once this many total steps are done, without any extra
        checkpoint or output (simulates an interrupted run). ``None``: run to the end.
      command: the command line, recorded in ``metrics.json``.

    Returns:
      The metrics written to ``metrics.json``, or ``None`` when stopped early.
    """
    model = model_config(config)
    data = load_data(config)
    if data.tokenizer is not None and data.tokenizer.vocab_size != model.vocab_size:
        raise ValueError(
            f"`config.tokenizer`={config.tokenizer!r} has {data.tokenizer.vocab_size} ids but "
            f"the model {config.model!r} has vocab_size={model.vocab_size}."
        )
    if data.tokenizer is None and model.vocab_size != 256:
        raise ValueError(
            f"`config.tokenizer`='bytes' needs vocab_size 256; the model {config.model!r} has "
            f"{model.vocab_size} (pass --config.tokenizer=tiny-llama for the llama_* models)."
        )
    optimizer = make_optimizer(config)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    state = init_state(config, model, optimizer)
    mesh = data_parallel_mesh(config)
    if mesh is not None:  # every process holds the whole (identical) initial state
        state = sharding.replicate(state, mesh)
    start = checkpoint.latest_step(ckpt_dir)
    if start is not None:
        state = checkpoint.restore(ckpt_dir, state, step=start)
        print(f"Resumed from step {start} in {ckpt_dir}.", flush=True)
    train_data, windows = data.train, data.windows
    train_step = make_train_step(model, optimizer)

    end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    first = int(state.step)
    elapsed_before = float(state.elapsed)
    t0 = time.perf_counter()

    def evaluate(state: TrainState, step: int) -> TrainState:
        bpb, nats = heldout_scores(
            Model(model, state.params), windows, data.token_bytes, config.eval_batch_size
        )
        extra = "" if data.tokenizer is None else f", {nats:.4f} nats/token"
        print(f"step {step}: held-out {bpb:.4f} bits/byte{extra}", flush=True)
        return state._replace(
            heldout_bpb=state.heldout_bpb.at[step].set(bpb),
            heldout_nats=state.heldout_nats.at[step].set(nats),
        )

    if first == 0 and config.eval_every and np.isnan(float(state.heldout_bpb[0])):
        state = evaluate(state, 0)

    from tqdm import tqdm  # imported here: keeps `import train_lm` light

    bar = tqdm(
        range(first, end),
        initial=first,
        total=config.num_steps,
        disable=not config.progress_bar,
        desc=f"train {config.model}",
        mininterval=2.0,
    )
    for step in bar:
        batch = batch_for_step(train_data, config.seed, step, config.batch_size, config.seq_len)
        if mesh is not None:  # this process's rows only; the global batch spans the mesh
            rows = distributed.process_rows(config.batch_size, mesh, sharding.BATCH_AXIS)
            batch = distributed.global_array(
                batch[rows], mesh, sharding.BATCH_AXIS, config.batch_size
            )
        state, loss = train_step(state, batch)
        done = step + 1
        if done % config.log_every == 0 or done == end:
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        if (config.eval_every and done % config.eval_every == 0) or done == config.num_steps:
            state = evaluate(state, done)
        if done % config.checkpoint_every == 0 or done == config.num_steps:
            elapsed = elapsed_before + time.perf_counter() - t0
            state = state._replace(elapsed=jnp.asarray(elapsed, jnp.float32))
            checkpoint.save(ckpt_dir, done, state, max_to_keep=config.max_checkpoints)
    bar.close()
    if int(state.step) < config.num_steps:
        return None

    elapsed = elapsed_before + time.perf_counter() - t0 if end > first else float(state.elapsed)
    losses = np.asarray(state.losses)
    bpb = np.asarray(state.heldout_bpb)
    evals = [(int(s), float(bpb[s])) for s in np.flatnonzero(~np.isnan(bpb))]
    metrics = {
        "model": config.model,
        "model_config": config[config.model].to_dict(),
        "num_params": model.num_params(),
        "num_steps": config.num_steps,
        "tokens_seen": config.num_steps * config.batch_size * config.seq_len,
        "final_train_loss_bits": float(np.mean(losses[-max(1, config.num_steps // 20) :]))
        / math.log(2),
        "heldout_bpb": evals[-1][1],
        "heldout_bpb_curve": evals,
        "heldout_bytes_evaluated": int(windows.shape[0] * config.seq_len),
        "train_loss_nats": [float(x) for x in losses],
        "wall_time_s": elapsed,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "command": command,
    }
    if data.tokenizer is not None:
        nats = np.asarray(state.heldout_nats)
        nats_curve = [(int(s), float(nats[s])) for s in np.flatnonzero(~np.isnan(nats))]
        metrics.update(
            tokenizer=str(config.tokenizer),
            tokenizer_vocab_size=data.tokenizer.vocab_size,
            family=config[config.model].get("family", "gpt2"),
            final_train_loss_bits_per_token=metrics.pop("final_train_loss_bits"),
            heldout_nats_per_token=nats_curve[-1][1],
            heldout_nats_curve=nats_curve,
            heldout_tokens_evaluated=int(windows.shape[0] * config.seq_len),
            heldout_bytes_evaluated=int(data.token_bytes[windows[:, 1:]].sum()),
            train_tokens=int(train_data.shape[0]),
        )
    if distributed.is_primary():
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
    _save_plot(
        os.path.join(workdir, "loss.png"),
        losses,
        evals,
        f"{config.model}: {metrics['num_params']:,} params, held-out {evals[-1][1]:.3f} bits/byte",
        unit="byte" if data.tokenizer is None else "token",
    )
    if config.export_hf and distributed.is_primary():
        export_hf(os.path.join(workdir, "hf"), config, model, state.params)
    return metrics


def main(argv: list[str]) -> None:
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or config.workdir
    if not workdir:
        raise ValueError("pass --workdir (or --config.workdir).")
    os.makedirs(workdir, exist_ok=True)
    metrics = train_and_evaluate(
        config, workdir, stop_after=config.get("stop_after") or None, command=" ".join(sys.argv)
    )
    if metrics is None:
        print(f"Stopped after step {config.stop_after} (resume by running again).", flush=True)
        return
    print(
        f"Done: {metrics['num_params']:,} params, held-out {metrics['heldout_bpb']:.4f} "
        f"bits/byte, {metrics['wall_time_s']:.0f} s.",
        flush=True,
    )


if __name__ == "__main__":
    from absl import flags

    # The default resolves from the repository root whatever the working directory; the
    # root goes on sys.path so that `experiments` resolves.
    _root = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
    sys.path.insert(0, _root)
    from experiments.benchmarks import _common

    _common.define_config(os.path.join(_root, "configs", "train_lm.py"))
    flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, export).")
    _common.run(main)
