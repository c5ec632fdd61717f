"""Speculative decoding benchmark on the shipped model pairs, side by side with HuggingFace.

Every row runs on every pair of ``config.pairs`` (default: the byte-level GPT-2
pair ``tiny-target``/``tiny-draft`` and the BPE Llama pair
``tiny-llama-target``/``tiny-llama-draft``), reported side by side: rows carry a
``pair`` field and ``side_by_side`` gives, per method, each pair's tokens/s ratio
to its own autoregressive decoding and its tokens per verification round. Prompts
are the same held-out texts for every pair, in the pair's own tokens (bytes for
the byte-level pair; the BPE pair's tokenizer, BOS first, padded to
``prompt_length + 1`` tokens), so ``max_new_tokens`` counts each pair's tokens.

Rows: autoregressive decoding, the draft model at several K, prompt lookup,
the draft model under the +2/-1 heuristic, EMA and expected-speedup
controllers, early-exit self-speculation, and the tree drafters (Token
Recycling, the stochastic n-gram drafter, the draft model's dynamic tree; for
trees ``k`` is the number of tree nodes); at each batch size and sampling mode.
A tree-size sweep (batch 1, greedy) runs each tree drafter at several sizes.
Drafters whose state persists across requests (Token Recycling's table, the
n-gram memory) are warmed on other held-out prompts first, as a deployment
would have them; cold-start rows are reported too. For each: tokens/s (median
of repeats, compile excluded), target calls per token, mean accepted length,
acceptance rate, the i.i.d. theory ``(1 - a^(K+1)) / (1 - a)`` next to the
measured tokens per target call (chains only), and token-for-token equality
with our autoregressive greedy output.

The ``*_exact`` rows run the target with ``apply(exact=True)`` (bitwise
width-independent logits) and compare with exact autoregressive decoding.

Peer (batch 1, greedy; transformers raises for assisted generation at batch > 1):
HuggingFace transformers' plain greedy ``generate``, assisted generation with
the pair's draft model, and prompt lookup, on the same weights (the pair's
HuggingFace folder, loaded with ``AutoModelForCausalLM``) and prompts; target
forward passes are counted with a hook.
"""

from __future__ import annotations

import pathlib
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from lookahead_jax import drafting, models, trees
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # (target, draft) pairs, run and reported side by side: shipped names or HF folders.
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.methods = ()  # run only these methods (names as in the rows); () runs all
    config.draft_lengths = (2, 4, 6, 8)
    config.prompt_lookup_k = 4
    config.prompt_lookup_max_ngram = 3
    config.heuristic_max_k = 8  # static maximum under the +2/-1 controller
    config.exact_k = 4  # also run exact mode (greedy rows only) at this K; 0 to skip
    config.ema_max_k = 8  # static maximum under the EMA and expected-speedup controllers
    config.draft_cost = 0.1  # draft / target time per token (expected-speedup controller)
    config.early_exit_layers = 2  # exit after this many of the target's blocks
    config.early_exit_k = 4
    config.exit_windows = 32  # held-out windows of 128 tokens for DEL's per-layer acceptance
    config.recycling_nodes = 80  # Token Recycling's template size (80 = the paper's 2.2.2)
    config.ngram_widths = (2, 1, 1, 1, 1)  # stochastic n-gram tree: children per depth
    config.ngram_order = 3  # longest context of the n-gram memory
    config.draft_tree_nodes = 64
    config.draft_tree_beam = 4
    config.draft_tree_branching = 4
    config.draft_tree_depth = 10
    config.tree_sweep = True  # batch 1, greedy: every tree drafter at several sizes
    config.recycling_sweep = (8, 16, 32, 80)
    config.draft_tree_sweep = (8, 16, 32, 96)
    config.ngram_sweep = ((1, 1, 1, 1, 1, 1), (4, 2, 2, 1, 1))
    config.warmup_prompts = 8  # prompts used to warm persistent drafter state (0: cold)
    config.batch_sizes = (1, 8)
    config.temperatures = (0.0, 1.0)
    config.prompt_length = 64  # bytes of held-out text (BPE pairs: encoded, <= 65 tokens)
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
    methods.append({"method": "draft_model_ema", "k": config.ema_max_k})
    methods.append({"method": "draft_model_speedup", "k": config.ema_max_k})
    methods.append({"method": "early_exit", "k": config.early_exit_k})
    methods.append({"method": "token_recycling", "k": config.recycling_nodes})
    methods.append({"method": "token_recycling_cold", "k": config.recycling_nodes})
    methods.append({"method": "stochastic_ngram", "k": _ngram_nodes(config.ngram_widths)})
    methods.append({"method": "draft_model_tree", "k": config.draft_tree_nodes})
    if config.exact_k:
        # Bitwise width-independent target numerics (apply(exact=True)): the cost of a proof.
        methods.append({"method": "autoregressive_exact", "k": 0})
        methods.append({"method": "draft_model_exact", "k": config.exact_k})
    return methods


def _ngram_nodes(widths) -> int:
    total, level = 0, 1
    for width in widths:
        level *= width
        total += level
    return total


def _sweep(config) -> list[dict[str, Any]]:
    """Tree-size sweep rows (batch 1, greedy only)."""
    if not config.tree_sweep:
        return []
    rows = [
        {"method": "token_recycling", "k": n}
        for n in config.recycling_sweep
        if n != config.recycling_nodes
    ]
    rows += [
        {"method": "draft_model_tree", "k": n}
        for n in config.draft_tree_sweep
        if n != config.draft_tree_nodes
    ]
    rows += [
        {"method": "stochastic_ngram", "k": _ngram_nodes(w), "widths": tuple(w)}
        for w in config.ngram_sweep
        if tuple(w) != tuple(config.ngram_widths)
    ]
    return rows


# Rows at a fixed K (trees: every round drafts) unless a row names its controller: the
# library default is cost-aware (it may draft less), which experiments/speculation_grid.py
# measures.
FIXED = drafting.constant()


def _drafter(
    method: str,
    k: int,
    config,
    target,
    draft,
    state,
    layers: int | None = None,
    widths: tuple[int, ...] | None = None,
):
    """The drafter (and controller) of one benchmark row; ``state``: warmed drafter state."""
    vocab = target.config.vocab_size
    if method in ("draft_model", "draft_model_exact", "draft_model_heuristic"):
        controller = drafting.heuristic() if method == "draft_model_heuristic" else FIXED
        return drafting.draft_model(draft), controller
    if method == "draft_model_ema":
        return drafting.draft_model(draft), drafting.ema()
    if method == "draft_model_speedup":
        return drafting.draft_model(draft), drafting.expected_speedup(config.draft_cost)
    if method == "prompt_lookup":
        return drafting.prompt_lookup(vocab, max_ngram=config.prompt_lookup_max_ngram), FIXED
    if method in ("early_exit", "early_exit_del"):
        return drafting.early_exit(target, layers or config.early_exit_layers), FIXED
    if method.startswith("token_recycling"):
        template = trees.token_recycling_template(k)
        return drafting.token_recycling(vocab, template=template, table=state), FIXED
    if method == "stochastic_ngram":
        widths = tuple(config.ngram_widths) if widths is None else widths
        ngram = drafting.stochastic_ngram(
            vocab, order=config.ngram_order, widths=widths, memory=state
        )
        return ngram, FIXED
    if method == "draft_model_tree":
        tree = drafting.draft_model_tree(
            draft,
            num_nodes=k,
            beam_width=config.draft_tree_beam,
            branching=config.draft_tree_branching,
            max_depth=config.draft_tree_depth,
        )
        return tree, FIXED
    return None, FIXED


def _runner(method: str, k: int, config, sampling: Sampling, layers=None, widths=None):
    def run(target, draft, prompt, lengths, key, state=None):
        drafter, controller = _drafter(method, k, config, target, draft, state, layers, widths)
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=config.max_new_tokens,
            sampling=sampling,
            drafter=drafter,
            max_draft_tokens=k,
            controller=controller,
            exact=method.endswith("_exact"),
        )

    return jax.jit(run)


def _is_tree(method: str) -> bool:
    return method.startswith(("token_recycling", "stochastic_ngram", "draft_model_tree"))


def _warm_state(method: str, fn, config, target, draft, tokenizer, batch: int):
    """Persistent drafter state after generating from other held-out prompts (None: cold)."""
    if method not in ("token_recycling", "stochastic_ngram") or not config.warmup_prompts:
        return None
    prompts, lengths = _pairs.heldout_prompts(
        tokenizer, config.warmup_prompts, config.prompt_length, seed=config.seed + 1
    )
    state = None
    for start in range(0, config.warmup_prompts, batch):
        out = fn(
            target,
            draft,
            prompts[start : start + batch],
            lengths[start : start + batch],
            jax.random.key(config.seed + 1),
            state,
        )
        state = out.drafter_state
        state = state.table if method == "token_recycling" else state
    return state


def _theory(acceptance: float, k: int) -> float:
    """Expected tokens per target call for i.i.d. acceptance ``a``: (1 - a^(K+1)) / (1 - a)."""
    if k == 0:
        return 1.0
    if acceptance >= 1.0:
        return float(k + 1)
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def _peer_calls(config, target_dir, draft_dir, prompt: np.ndarray, pad_id: int = 0):
    """HF generate calls on the same weights: ``[(name, call)]``; ``call() -> (tokens, calls)``.

    Any family ``AutoModelForCausalLM`` knows (GPT-2, Llama, Qwen2, ...) loads from the
    pair's folders, in float32 like ours.
    """
    import torch
    import transformers

    torch.set_num_threads(config.peer_threads)
    torch.manual_seed(0)
    auto = transformers.AutoModelForCausalLM
    target = auto.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    assistant = auto.from_pretrained(str(draft_dir), dtype=torch.float32).eval()
    counter = {"n": 0}
    target.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    inputs = torch.tensor(prompt[None], dtype=torch.long)
    # Like ours (no eos_id), HF neither stops at EOS nor suppresses it: ``eos_token_id=None``
    # (``min_new_tokens`` would mask EOS and change the greedy tokens of a model that emits it).
    base = dict(
        max_new_tokens=config.max_new_tokens,
        eos_token_id=None,
        do_sample=False,
        pad_token_id=pad_id,
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


def _kept(names) -> set[str]:
    """The methods to run for ``config.methods``: autoregressive (exact too when an exact
    row is asked for) is every row's reference and always runs."""
    kept = {*names, "autoregressive"}
    if any(n.endswith("_exact") for n in names):
        kept.add("autoregressive_exact")
    return kept


def _pair_setup(config, pair) -> dict[str, Any]:
    """Loads one pair; its tokenizer, prompts and DEL's exit choice on held-out windows."""
    target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(
            f"pair {pair}: the draft's vocabulary ({draft.config.vocab_size}) differs from "
            f"the target's ({target.config.vocab_size})."
        )
    tokenizer = models.load_tokenizer(pair[0])
    # DEL's choice of exit layer and draft length from per-layer acceptance on held-out
    # text: windows of 128 tokens of this pair's tokenizer.
    windows = _pairs.eval_windows(tokenizer, 128, config.exit_windows)
    layer_rates = drafting.layer_acceptance(target, jax.numpy.asarray(windows))
    choice = drafting.choose_exit(layer_rates, target.config.num_layers, config.ema_max_k)
    _, lengths = _pairs.heldout_prompts(
        tokenizer, max(config.batch_sizes), config.prompt_length, seed=config.seed
    )
    info = {
        "target": pair[0],
        "draft": pair[1],
        "tokenizer": repr(tokenizer),
        "vocab_size": target.config.vocab_size,
        "target_model_type": target.config.model_type,
        "target_params": target.config.num_params(),
        "draft_params": draft.config.num_params(),
        "prompt_tokens_mean": float(np.mean(lengths)),
        "early_exit_choice": {
            "layer_acceptance": np.asarray(layer_rates).tolist(),
            "num_layers": choice.num_layers,
            "num_draft": choice.num_draft,
            "modelled_speedup": choice.speedup,
        },
    }
    methods = [
        *_methods(config),
        {"method": "early_exit_del", "k": choice.num_draft, "layers": choice.num_layers},
    ]
    if config.methods:
        methods = [m for m in methods if m["method"] in _kept(config.methods)]
    return {
        "target": target,
        "draft": draft,
        "tokenizer": tokenizer,
        "info": info,
        "methods": methods,
    }


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs every row of the benchmark on every pair; returns the figures (also JSON + PNG)."""
    pairs = _pairs.check_pairs(config.pairs)
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "pairs": {},
        "rows": [],
    }
    setups = {}
    jobs = []  # (pair label, batch, temperature, method)
    for pair in pairs:
        name = _pairs.label(pair)
        setup = setups[name] = _pair_setup(config, pair)
        results["pairs"][name] = setup["info"]
        jobs += [
            (name, batch, temperature, m)
            for batch in config.batch_sizes
            for temperature in config.temperatures
            for m in setup["methods"]
            if temperature == 0.0 or not m["method"].endswith("_exact")
        ]
        if 1 in config.batch_sizes and 0.0 in config.temperatures:
            jobs += [
                (name, 1, 0.0, m)
                for m in _sweep(config)
                if not config.methods or m["method"] in _kept(config.methods)
            ]
    # Compile every configuration of every pair first, then time them round-robin: on
    # a shared, noisy machine each configuration's median then sees the same conditions.
    prepared = []
    for name, batch, temperature, m in progress(jobs) if progress else jobs:
        setup = setups[name]
        target, draft, tokenizer = setup["target"], setup["draft"], setup["tokenizer"]
        sampling = Sampling(temperature=temperature)
        prompts, lengths = _pairs.heldout_prompts(
            tokenizer, batch, config.prompt_length, seed=config.seed
        )
        fn = _runner(m["method"], m["k"], config, sampling, m.get("layers"), m.get("widths"))
        state = _warm_state(m["method"], fn, config, target, draft, tokenizer, batch)
        args = (target, draft, prompts, lengths, jax.random.key(config.seed), state)
        prepared.append((fn, args, jax.block_until_ready(fn(*args))))
    peers = []  # (pair label, name, call, first result)
    if config.peer and 1 in config.batch_sizes and 0.0 in config.temperatures:
        try:
            import transformers
        except ImportError:
            results["peer_skipped"] = "transformers is not installed (pip install '.[peer]')"
        else:
            results["peer"] = f"transformers {transformers.__version__}"
            for pair in pairs:
                name = _pairs.label(pair)
                tokenizer = setups[name]["tokenizer"]
                prompts, lengths = _pairs.heldout_prompts(
                    tokenizer, 1, config.prompt_length, seed=config.seed
                )
                calls = _peer_calls(
                    config,
                    _pairs.model_dir(pair[0]),
                    _pairs.model_dir(pair[1]),
                    prompts[0, : lengths[0]],
                    tokenizer.pad_id,
                )
                for method, call in calls:
                    peers.append((name, method, call, call()))  # the first call warms up
    timings: list[list[float]] = [[] for _ in prepared]
    peer_timings: list[list[float]] = [[] for _ in peers]
    for _ in range(config.repeats):
        for times, (fn, args, _) in zip(timings, prepared, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        for times, (_, _, call, _) in zip(peer_timings, peers, strict=True):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    reference: dict[tuple[str, int, Any], Any] = {}
    for (name, batch, temperature, m), times, (_, _, out) in zip(
        jobs, timings, prepared, strict=True
    ):
        generated = int(np.sum(out.num_generated))
        calls = int(np.sum(out.stats.target_calls))
        rounds = calls - batch  # the prefill is not a verification round
        drafted, accepted = int(np.sum(out.stats.drafted)), int(np.sum(out.stats.accepted))
        acceptance = accepted / drafted if drafted else 0.0
        seconds = statistics.median(times)
        row = {
            "pair": name,
            "method": m["method"],
            "k": m["k"],
            "exit_layers": m.get("layers", config.early_exit_layers)
            if m["method"].startswith("early_exit")
            else None,
            "batch": batch,
            "temperature": temperature,
            "new_tokens": generated,
            "seconds_median": seconds,
            "seconds_all": list(times),
            "tokens_per_s": generated / seconds,
            "target_calls_per_token": calls / generated,
            "tokens_per_round": (generated - batch) / rounds if rounds else 0.0,
            "mean_accepted_per_round": accepted / rounds if rounds else 0.0,
            "acceptance_rate": acceptance,
            "theory_tokens_per_round": (
                None if _is_tree(m["method"]) else _theory(acceptance, m["k"])
            ),
            "tree": _is_tree(m["method"]),
            "ngram_widths": m.get("widths", tuple(config.ngram_widths))
            if m["method"] == "stochastic_ngram"
            else None,
            "accept_histogram": np.asarray(out.stats.accept_histogram).sum(0).tolist(),
        }
        if m["method"] == "autoregressive":
            reference[(name, batch, temperature)] = (out, row["tokens_per_s"])
        elif m["method"] == "autoregressive_exact":
            reference[(name, batch, "exact")] = (out, row["tokens_per_s"])
        elif temperature == 0.0:
            which = "exact" if m["method"].endswith("_exact") else temperature
            ar_tokens = np.asarray(reference[(name, batch, which)][0].tokens)
            row["same_tokens_as_autoregressive"] = bool(
                np.array_equal(np.asarray(out.tokens), ar_tokens)
            )
        row["speedup_vs_autoregressive"] = (
            row["tokens_per_s"] / reference[(name, batch, temperature)][1]
        )
        results["rows"].append(row)

    for name, info in results["pairs"].items():
        info["trees_vs_chains"] = _trees_vs_chains(
            [r for r in results["rows"] if r["pair"] == name]
        )
    if peers:
        results["peer_rows"] = []
        for (name, method, _, (tokens, calls)), times in zip(peers, peer_timings, strict=True):
            prompts, lengths = _pairs.heldout_prompts(
                setups[name]["tokenizer"], 1, config.prompt_length, seed=config.seed
            )
            ours = reference[(name, 1, 0.0)][0]
            ours_greedy = np.asarray(ours.tokens[0, lengths[0] : ours.lengths[0]])
            best = max(
                (
                    r
                    for r in results["rows"]
                    if r["pair"] == name and r["batch"] == 1 and r["temperature"] == 0.0
                ),
                key=lambda r: r["tokens_per_s"],
            )
            seconds = statistics.median(times)
            results["peer_rows"].append(
                {
                    "pair": name,
                    "method": method,
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
    results["side_by_side"] = _side_by_side(results["rows"], list(results["pairs"]))
    _write(results, pathlib.Path(config.output_dir))
    return results


def _side_by_side(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Per (method, k, batch, temperature): each pair's ratio of tokens/s to autoregressive,
    tokens per verification round (accepted + 1) and accepted drafts per round.

    DEL's ``early_exit_del`` chooses its own (exit, K) per pair, so it is matched by name.
    """
    table: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = "chosen" if r["method"] == "early_exit_del" else r["k"]
        key = (r["method"], k, r["batch"], r["temperature"], r["ngram_widths"])
        entry = table.setdefault(
            key,
            {
                "method": r["method"],
                "k": k,
                "batch": r["batch"],
                "temperature": r["temperature"],
                "ngram_widths": r["ngram_widths"],
                "pairs": {},
            },
        )
        entry["pairs"][r["pair"]] = {
            "k": r["k"],
            "tokens_per_s": r["tokens_per_s"],
            "speedup_vs_autoregressive": r["speedup_vs_autoregressive"],
            "tokens_per_round": r["tokens_per_round"],
            "mean_accepted_per_round": r["mean_accepted_per_round"],
            "acceptance_rate": r["acceptance_rate"],
            "same_tokens_as_autoregressive": r.get("same_tokens_as_autoregressive"),
        }
    for entry in table.values():
        for name in labels:
            entry["pairs"].setdefault(name, None)
    return list(table.values())


def _trees_vs_chains(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best tree vs best chain method by tokens per round (batch 1, greedy), and speed."""
    pool = [r for r in rows if r["batch"] == 1 and r["temperature"] == 0.0 and r["k"] > 0]
    chains = [r for r in pool if not r["tree"] and not r["method"].endswith("_exact")]
    tree_rows = [r for r in pool if r["tree"]]
    if not chains or not tree_rows:
        return {}
    best_chain = max(chains, key=lambda r: r["tokens_per_round"])
    best_tree = max(tree_rows, key=lambda r: r["tokens_per_round"])
    recycling = [r for r in tree_rows if r["method"] == "token_recycling"]
    fastest_recycling = max(recycling, key=lambda r: r["tokens_per_s"]) if recycling else None
    return {
        "best_chain": f"{best_chain['method']} k={best_chain['k']}",
        "best_chain_tokens_per_round": best_chain["tokens_per_round"],
        "best_tree": f"{best_tree['method']} k={best_tree['k']}",
        "best_tree_tokens_per_round": best_tree["tokens_per_round"],
        "tree_over_chain_accepted_length": (
            best_tree["tokens_per_round"] / best_chain["tokens_per_round"]
        ),
        "token_recycling_best_speedup_vs_autoregressive": (
            None if fastest_recycling is None else fastest_recycling["speedup_vs_autoregressive"]
        ),
        "token_recycling_best_nodes": None if fastest_recycling is None else fastest_recycling["k"],
    }


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    _common.write_json(results, out_dir / "results.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["pairs"])
    settings = sorted({(r["batch"], r["temperature"]) for r in results["rows"]})
    fig, axes = plt.subplots(
        len(labels),
        len(settings),
        figsize=(4.5 * len(settings), 4 * len(labels)),
        squeeze=False,
    )
    for axes_row, name in zip(axes, labels, strict=True):
        for ax, (batch, temperature) in zip(axes_row, settings, strict=True):
            rows = [
                r
                for r in results["rows"]
                if r["pair"] == name and r["batch"] == batch and r["temperature"] == temperature
            ]
            ticks = [f"{r['method']}\nk={r['k']}" for r in rows]
            values = [r["speedup_vs_autoregressive"] for r in rows]
            if batch == 1 and temperature == 0.0:
                for r in results.get("peer_rows", []):
                    if r["pair"] == name:
                        ticks.append(r["method"])
                        # HF's tokens/s relative to our autoregressive greedy on this pair
                        ar = next(x for x in rows if x["method"] == "autoregressive")
                        values.append(r["tokens_per_s"] / ar["tokens_per_s"])
            ax.barh(
                range(len(values)),
                values,
                color=["C0"] * len(rows) + ["C3"] * (len(values) - len(rows)),
            )
            ax.axvline(1.0, color="gray", lw=0.8, ls=":")
            ax.set_yticks(range(len(values)), ticks, fontsize=7)
            ax.set_xlabel("tokens/s / our autoregressive (median)")
            ax.set_title(f"{name}\nbatch {batch}, temperature {temperature}", fontsize=9)
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "results.png")
    plt.close(fig)


def _theory_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(results: dict[str, Any]) -> str:
    """The benchmark as plain-text tables: every row, then the pairs side by side."""
    header = (
        f"{'pair':34s} {'method':24s} {'k':>2s} {'B':>2s} {'T':>3s} {'tok/s':>8s} "
        f"{'x AR':>5s} {'calls/tok':>9s} {'acc':>5s} {'tok/round':>9s} {'theory':>6s} "
        f"{'=AR':>4s}"
    )
    lines = [header]
    for r in results["rows"]:
        same = r.get("same_tokens_as_autoregressive")
        lines.append(
            f"{r['pair']:34s} {r['method']:24s} {r['k']:2d} {r['batch']:2d} "
            f"{r['temperature']:3.1f} {r['tokens_per_s']:8.0f} "
            f"{r['speedup_vs_autoregressive']:5.2f} "
            f"{r['target_calls_per_token']:9.3f} {r['acceptance_rate']:5.2f} "
            f"{r['tokens_per_round']:9.2f} {_theory_text(r['theory_tokens_per_round']):>6s} "
            f"{'' if same is None else ('yes' if same else 'NO'):>4s}"
        )
    for r in results.get("peer_rows", []):
        lines.append(
            f"{r['pair']:34s} {r['method']:24s} {'':2s} {1:2d} {0.0:3.1f} "
            f"{r['tokens_per_s']:8.0f} calls/tok {r['target_calls_per_token']:.3f}  same as "
            f"our greedy: {'yes' if r['same_tokens_as_our_greedy'] else 'NO'}  "
            f"ours best ({r['ours_best_method']}) is {r['ours_best_speedup']:.1f}x faster"
        )
    if "peer_skipped" in results:
        lines.append(f"peer skipped: {results['peer_skipped']}")
    labels = list(results["pairs"])
    lines.append("")
    lines.append(
        "side by side: tokens/s / autoregressive (x AR) and tokens per target call "
        "(verification round: accepted + 1)"
    )
    head = f"{'method':24s} {'k':>6s} {'B':>2s} {'T':>3s}"
    for name in labels:
        head += f" | {name:>34s}"
    lines.append(head)
    for entry in results.get("side_by_side", []):
        line = (
            f"{entry['method']:24s} {entry['k']!s:>6s} {entry['batch']:2d} "
            f"{entry['temperature']:3.1f}"
        )
        for name in labels:
            cell = entry["pairs"].get(name)
            text = (
                "-"
                if cell is None
                else (
                    f"{cell['speedup_vs_autoregressive']:5.2f}x  "
                    f"{cell['tokens_per_round']:5.2f} tok/call"
                )
            )
            line += f" | {text:>34s}"
        lines.append(line)
    for name, info in results["pairs"].items():
        choice = info["early_exit_choice"]
        lines.append(
            f"{name}: {info['target_params']:,} / {info['draft_params']:,} params, prompts "
            f"{info['prompt_tokens_mean']:.1f} tokens on average; DEL chose exit "
            f"{choice['num_layers']}, K={choice['num_draft']}"
        )
        summary = info.get("trees_vs_chains")
        if summary:
            recycling = summary["token_recycling_best_speedup_vs_autoregressive"]
            lines.append(
                f"  best tree {summary['best_tree']}: "
                f"{summary['best_tree_tokens_per_round']:.2f} tokens/round vs best chain "
                f"{summary['best_chain']}: {summary['best_chain_tokens_per_round']:.2f} "
                f"({summary['tree_over_chain_accepted_length']:.2f}x); fastest Token "
                f"Recycling (k={summary['token_recycling_best_nodes']}): "
                + ("-" if recycling is None else f"{recycling:.2f}x autoregressive")
            )
    return "\n".join(lines)
