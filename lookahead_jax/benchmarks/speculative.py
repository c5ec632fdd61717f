"""Speculative decoding benchmark on the shipped models, side by side with HuggingFace.

Rows: autoregressive decoding, the draft model at several K, prompt lookup,
the draft model under the +2/-1 heuristic controller; at each batch size and
sampling mode. For each: tokens/s (median of repeats, compile excluded), target
calls per token, mean accepted length, acceptance rate, the i.i.d. theory
``(1 - a^(K+1)) / (1 - a)`` next to the measured tokens per target call, and
token-for-token equality with our autoregressive greedy output.

Peer (batch 1, greedy; transformers raises for assisted generation at batch > 1):
HuggingFace transformers' plain greedy ``generate``, assisted generation with
the shipped draft model, and prompt lookup, on the same weights (exported with
``save_hf_gpt2``) and prompts; target forward passes are counted with a hook.
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from lookahead_jax import data, drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.target = "tiny-target"
    config.draft = "tiny-draft"
    config.draft_lengths = (2, 4, 6, 8)
    config.prompt_lookup_k = 4
    config.prompt_lookup_max_ngram = 3
    config.heuristic_max_k = 8  # static maximum under the +2/-1 controller
    config.exact_k = 4  # also run exact mode (greedy rows only) at this K; 0 to skip
    config.batch_sizes = (1, 8)
    config.temperatures = (0.0, 1.0)
    config.prompt_length = 64
    config.max_new_tokens = 128
    config.repeats = 3
    config.seed = 0
    config.peer = True
    # torch intra-op threads: 1 is fastest for models this small and avoids OpenMP
    # spin-waiting when other processes share the 2 cores.
    config.peer_threads = 1
    config.output_dir = "outputs/speculative_decoding"
    return config


def _methods(config) -> list[dict[str, Any]]:
    methods = [{"method": "autoregressive", "k": 0}]
    methods += [{"method": "draft_model", "k": k} for k in config.draft_lengths]
    methods.append({"method": "prompt_lookup", "k": config.prompt_lookup_k})
    methods.append({"method": "draft_model_heuristic", "k": config.heuristic_max_k})
    if config.exact_k:
        # Bitwise width-independent target numerics (apply(exact=True)): the cost of a proof.
        methods.append({"method": "autoregressive_exact", "k": 0})
        methods.append({"method": "draft_model_exact", "k": config.exact_k})
    return methods


def _runner(method: str, k: int, max_new_tokens: int, sampling: Sampling, max_ngram: int):
    def run(target, draft, prompt, lengths, key):
        drafter, controller = None, None
        if method.startswith("draft_model"):
            drafter = drafting.draft_model(draft)
        elif method == "prompt_lookup":
            drafter = drafting.prompt_lookup(target.config.vocab_size, max_ngram=max_ngram)
        if method == "draft_model_heuristic":
            controller = drafting.heuristic()
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            drafter=drafter,
            max_draft_tokens=k,
            controller=controller,
        )

    return jax.jit(run)


def _theory(acceptance: float, k: int) -> float:
    """Expected tokens per target call for i.i.d. acceptance ``a``: (1 - a^(K+1)) / (1 - a)."""
    if k == 0:
        return 1.0
    if acceptance >= 1.0:
        return float(k + 1)
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def _peer_calls(config, target_dir, draft_dir, prompt: np.ndarray):
    """HF generate calls on the same weights: ``[(name, call)]``; ``call() -> (tokens, calls)``."""
    import torch
    import transformers

    torch.set_num_threads(config.peer_threads)
    torch.manual_seed(0)
    target = transformers.GPT2LMHeadModel.from_pretrained(target_dir).eval()
    assistant = transformers.GPT2LMHeadModel.from_pretrained(draft_dir).eval()
    counter = {"n": 0}
    target.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    inputs = torch.tensor(prompt[None], dtype=torch.long)
    base = dict(
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        attention_mask=torch.ones_like(inputs),
    )
    variants = {
        "hf_greedy": {},
        "hf_assisted": {"assistant_model": assistant},
        "hf_prompt_lookup": {"prompt_lookup_num_tokens": config.prompt_lookup_k},
    }

    def make_call(extra):
        def call():
            counter["n"] = 0
            with torch.inference_mode():
                out = target.generate(inputs, **base, **extra)
            return out[0, len(prompt) :].numpy(), counter["n"]

        return call

    return [(name, make_call(extra)) for name, extra in variants.items()]


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs every row of the benchmark; returns the figures (also written as JSON + PNG)."""
    target = models.Model(*models.load_pretrained(config.target))
    draft = models.Model(*models.load_pretrained(config.draft))
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "rows": [],
    }
    jobs = [
        (batch, temperature, m)
        for batch in config.batch_sizes
        for temperature in config.temperatures
        for m in _methods(config)
        if temperature == 0.0 or not m["method"].endswith("_exact")
    ]
    # Compile every configuration first, then time them round-robin: on a shared,
    # noisy machine each configuration's median then sees the same conditions.
    prepared = []
    for batch, temperature, m in progress(jobs) if progress else jobs:
        sampling = Sampling(temperature=temperature)
        prompts, lengths = data.heldout_prompts(batch, config.prompt_length, seed=config.seed)
        fn = _runner(
            m["method"], m["k"], config.max_new_tokens, sampling, config.prompt_lookup_max_ngram
        )
        args = (target, draft, prompts, lengths, jax.random.key(config.seed))
        prepared.append((fn, args, jax.block_until_ready(fn(*args))))
    peers = []
    if config.peer and 1 in config.batch_sizes and 0.0 in config.temperatures:
        try:
            import transformers
        except ImportError:
            results["peer_skipped"] = "transformers is not installed (pip install '.[peer]')"
        else:
            results["peer"] = f"transformers {transformers.__version__}"
            root = importlib.resources.files("lookahead_jax.models") / "pretrained"
            prompts, lengths = data.heldout_prompts(1, config.prompt_length, seed=config.seed)
            for name, call in _peer_calls(
                config, root / config.target, root / config.draft, prompts[0, : lengths[0]]
            ):
                peers.append((name, call, call()))  # the first call warms up
    timings: list[list[float]] = [[] for _ in prepared]
    peer_timings: list[list[float]] = [[] for _ in peers]
    for _ in range(config.repeats):
        for times, (fn, args, _) in zip(timings, prepared, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        for times, (_, call, _) in zip(peer_timings, peers, strict=True):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    reference: dict[tuple[int, float], Any] = {}
    for (batch, temperature, m), times, (_, _, out) in zip(jobs, timings, prepared, strict=True):
        generated = int(np.sum(out.num_generated))
        calls = int(np.sum(out.stats.target_calls))
        rounds = calls - batch  # the prefill is not a verification round
        drafted, accepted = int(np.sum(out.stats.drafted)), int(np.sum(out.stats.accepted))
        acceptance = accepted / drafted if drafted else 0.0
        seconds = statistics.median(times)
        row = {
            "method": m["method"],
            "k": m["k"],
            "batch": batch,
            "temperature": temperature,
            "new_tokens": generated,
            "seconds_median": seconds,
            "tokens_per_s": generated / seconds,
            "target_calls_per_token": calls / generated,
            "tokens_per_round": (generated - batch) / rounds if rounds else 0.0,
            "mean_accepted_per_round": accepted / rounds if rounds else 0.0,
            "acceptance_rate": acceptance,
            "theory_tokens_per_round": _theory(acceptance, m["k"]),
            "accept_histogram": np.asarray(out.stats.accept_histogram).sum(0).tolist(),
        }
        if m["method"] == "autoregressive":
            reference[(batch, temperature)] = (out, row["tokens_per_s"])
        elif m["method"] == "autoregressive_exact":
            reference[(batch, "exact")] = (out, row["tokens_per_s"])
        elif temperature == 0.0:
            which = "exact" if m["method"].endswith("_exact") else temperature
            ar_tokens = np.asarray(reference[(batch, which)][0].tokens)
            row["same_tokens_as_autoregressive"] = bool(
                np.array_equal(np.asarray(out.tokens), ar_tokens)
            )
        row["speedup_vs_autoregressive"] = row["tokens_per_s"] / reference[(batch, temperature)][1]
        results["rows"].append(row)

    if peers:
        prompts, lengths = data.heldout_prompts(1, config.prompt_length, seed=config.seed)
        ours = reference[(1, 0.0)][0]
        ours_greedy = np.asarray(ours.tokens[0, lengths[0] : ours.lengths[0]])
        best = max(
            (r for r in results["rows"] if r["batch"] == 1 and r["temperature"] == 0.0),
            key=lambda r: r["tokens_per_s"],
        )
        results["peer_rows"] = []
        for (name, _, (tokens, calls)), times in zip(peers, peer_timings, strict=True):
            seconds = statistics.median(times)
            results["peer_rows"].append(
                {
                    "method": name,
                    "peer": results["peer"],
                    "batch": 1,
                    "temperature": 0.0,
                    "new_tokens": len(tokens),
                    "seconds_median": seconds,
                    "tokens_per_s": len(tokens) / seconds,
                    "target_calls_per_token": calls / len(tokens),
                    "same_tokens_as_our_greedy": bool(np.array_equal(tokens, ours_greedy)),
                    "ours_best_method": f"{best['method']} k={best['k']}",
                    "ours_best_speedup": best["tokens_per_s"] * seconds / len(tokens),
                }
            )
    _write(results, pathlib.Path(config.output_dir))
    return results


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as f:
        json.dump(results, f, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["batch"], r["temperature"]) for r in results["rows"]})
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 4), squeeze=False)
    for ax, (batch, temperature) in zip(axes[0], settings, strict=True):
        rows = [
            r for r in results["rows"] if r["batch"] == batch and r["temperature"] == temperature
        ]
        labels = [f"{r['method']}\nk={r['k']}" for r in rows]
        values = [r["tokens_per_s"] for r in rows]
        if batch == 1 and temperature == 0.0:
            for r in results.get("peer_rows", []):
                labels.append(r["method"])
                values.append(r["tokens_per_s"])
        ax.barh(
            range(len(values)),
            values,
            color=["C0"] * len(rows) + ["C3"] * (len(values) - len(rows)),
        )
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.set_xlabel("tokens/s (median)")
        ax.set_title(f"batch {batch}, temperature {temperature}")
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=120)
    plt.close(fig)


def format_table(results: dict[str, Any]) -> str:
    """The benchmark as a plain-text table."""
    header = (
        f"{'method':24s} {'k':>2s} {'B':>2s} {'T':>3s} {'tok/s':>8s} {'x AR':>5s} "
        f"{'calls/tok':>9s} {'acc':>5s} {'tok/round':>9s} {'theory':>6s} {'=AR':>4s}"
    )
    lines = [header]
    for r in results["rows"]:
        same = r.get("same_tokens_as_autoregressive")
        lines.append(
            f"{r['method']:24s} {r['k']:2d} {r['batch']:2d} {r['temperature']:3.1f} "
            f"{r['tokens_per_s']:8.0f} {r['speedup_vs_autoregressive']:5.2f} "
            f"{r['target_calls_per_token']:9.3f} {r['acceptance_rate']:5.2f} "
            f"{r['tokens_per_round']:9.2f} {r['theory_tokens_per_round']:6.2f} "
            f"{'' if same is None else ('yes' if same else 'NO'):>4s}"
        )
    for r in results.get("peer_rows", []):
        lines.append(
            f"{r['method']:24s} {'':2s} {1:2d} {0.0:3.1f} {r['tokens_per_s']:8.0f} "
            f"calls/tok {r['target_calls_per_token']:.3f}  same as our greedy: "
            f"{'yes' if r['same_tokens_as_our_greedy'] else 'NO'}  "
            f"ours best ({r['ours_best_method']}) is {r['ours_best_speedup']:.1f}x faster"
        )
    if "peer_skipped" in results:
        lines.append(f"peer skipped: {results['peer_skipped']}")
    return "\n".join(lines)
