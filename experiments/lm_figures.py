"""The foundation's figures: held-out bits per byte, draft/target agreement, greedy tokens/s.

Usage::

    python experiments/lm_figures.py --config=configs/lm_figures.py \\
        [--config.repeats=5] [--config.peer=False]

Greedy decoding speed is measured side by side in one run, the two alternating
call by call so that both see the same machine load: our compiled
``generate`` (one ``lax.while_loop``, compile time excluded) and HuggingFace
transformers' ``generate`` (torch, CPU, ``do_sample=False``, KV cache) on the same
weights and the same prompts. The peer runs batch 1 only: a ragged batch in
transformers needs left padding, which changes position ids and so the output.
Both outputs are checked token for token. Writes ``figures.json`` and
``figures.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from lookahead_jax import data, models
from lookahead_jax.decoding import generate

# Run as `python experiments/NAME.py` from anywhere: the repository root goes on
# sys.path so that `experiments` resolves.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from experiments.benchmarks import _common  # noqa: E402

_CONFIG = _common.define_config(_ROOT / "configs" / "lm_figures.py")


def ours_call(model, prompts, lengths, max_new_tokens):
    """Our compiled greedy generation as a zero-argument call (compiled on first use)."""
    run = jax.jit(
        lambda m, p, n: generate(m, p, n, jax.random.key(0), max_new_tokens=max_new_tokens)
    )
    return lambda: jax.block_until_ready(run(model, prompts, lengths))


def peer_call(directory, prompt, max_new_tokens, threads):
    """HF transformers greedy generation of one prompt as a call returning the new tokens."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    inputs = torch.tensor(prompt[None], dtype=torch.long)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        attention_mask=torch.ones_like(inputs),
    )

    def call():
        with torch.inference_mode():
            return model.generate(inputs, **kwargs)[0, len(prompt) :].numpy()

    return call


def interleaved_times(calls, repeats):
    """Times each call ``repeats`` times, alternating between them (fair under load)."""
    outputs = [call() for call in calls]  # compile / warm up
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, record in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            record.append(time.perf_counter() - start)
    return times, outputs


def main(argv):
    del argv
    config = _CONFIG.value
    out_dir = pathlib.Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = {name: models.Model(*models.load_pretrained(name)) for name in config.models}
    windows = data.eval_windows(
        data.load_corpus("heldout"), config.eval_seq_len, config.eval_max_windows or None
    )
    figures = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "heldout_windows": len(windows),
        "heldout_window_bytes": int(windows.shape[1]),
        "models": {},
    }
    for name, model in loaded.items():
        bpb = models.bits_per_byte(model, windows)
        figures["models"][name] = {
            "params": model.config.num_params(),
            "heldout_bits_per_byte": bpb,
        }
        print(f"{name}: {model.config.num_params():,} params, held-out {bpb:.4f} bits/byte")
    if "tiny-target" in loaded and "tiny-draft" in loaded:
        agreement = models.greedy_agreement(loaded["tiny-draft"], loaded["tiny-target"], windows)
        figures["greedy_agreement_draft_target"] = agreement
        print(f"draft/target greedy next-byte agreement on held-out text: {agreement:.2%}")

    speed = figures["speed"] = []
    jobs = [(name, batch) for name in loaded for batch in config.batch_sizes]
    for name, batch in tqdm(jobs, desc="greedy decoding"):
        prompts, lengths = data.heldout_prompts(batch, config.prompt_length, seed=config.seed)
        calls = [ours_call(loaded[name], prompts, lengths, config.max_new_tokens)]
        with_peer = config.peer and batch == 1
        if with_peer:
            directory = importlib.resources.files("lookahead_jax.models") / "pretrained" / name
            calls.append(
                peer_call(
                    directory, prompts[0, : lengths[0]], config.max_new_tokens, config.peer_threads
                )
            )
        all_times, outputs = interleaved_times(calls, config.repeats)
        times, out = all_times[0], outputs[0]
        new = int(np.sum(out.num_generated))
        row = {
            "model": name,
            "batch": batch,
            "new_tokens": new,
            "ours_seconds_median": statistics.median(times),
            "ours_tokens_per_s": new / statistics.median(times),
        }
        if with_peer:
            peer_times, peer_tokens = all_times[1], outputs[1]
            ours_tokens = np.asarray(out.tokens[0, lengths[0] : out.lengths[0]])
            row["peer"] = "transformers " + __import__("transformers").__version__
            row["peer_seconds_median"] = statistics.median(peer_times)
            row["peer_tokens_per_s"] = config.max_new_tokens / statistics.median(peer_times)
            row["speedup_vs_peer"] = row["ours_tokens_per_s"] / row["peer_tokens_per_s"]
            row["same_tokens_as_peer"] = bool(np.array_equal(ours_tokens, peer_tokens))
        speed.append(row)
        tqdm.write(json.dumps(row))

    _common.write_json(figures, out_dir / "figures.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in speed]
    ax.bar(
        np.arange(len(speed)) - 0.2,
        [r["ours_tokens_per_s"] for r in speed],
        0.4,
        label="lookahead_jax",
    )
    peer = [r.get("peer_tokens_per_s", 0.0) for r in speed]
    ax.bar(np.arange(len(speed)) + 0.2, peer, 0.4, label="transformers (batch 1)")
    ax.set_xticks(np.arange(len(speed)), labels)
    ax.set_ylabel("greedy tokens/s (median)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "figures.png")
    print(f"wrote {out_dir / 'figures.json'} and {out_dir / 'figures.png'}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _common.run(main)
