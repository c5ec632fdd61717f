"""``lookahead-jax tour``: what the library does, on the shipped models and data alone.

Each pillar adds a section: a function ``(args) -> dict`` that prints as it goes
and returns its figures; the tour prints them and, with ``--json``, saves them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import data, drafting, metrics, models, particles, sharding, trees
from lookahead_jax.decoding import generate


def _decode(tokens: np.ndarray) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def _timed_generate(model: models.Model, prompts, lengths, max_new_tokens: int, repeats: int):
    """Median wall time of a compiled greedy generation (compile excluded), and its output."""
    run = jax.jit(
        lambda m, p, n: generate(m, p, n, jax.random.key(0), max_new_tokens=max_new_tokens)
    )
    out = jax.block_until_ready(run(model, prompts, lengths))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(run(model, prompts, lengths))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def models_section(args: argparse.Namespace) -> dict[str, Any]:
    """Load both shipped models, score held-out text, generate from held-out prompts."""
    print("== Models: the shipped byte-level GPT-2s ==")
    loaded = {
        name: models.Model(*models.load_pretrained(name)) for name in ("tiny-target", "tiny-draft")
    }
    for name, model in loaded.items():
        c = model.config
        print(
            f"{name:12s} {c.num_params() / 1e6:5.2f}M params  layers={c.num_layers} "
            f"d_model={c.d_model} heads={c.num_heads} positions={c.max_length}"
        )
    windows = data.eval_windows(data.load_corpus("heldout"), 128, max_windows=args.eval_windows)
    figures: dict[str, Any] = {"models": {}}
    for name, model in loaded.items():
        bpb = models.bits_per_byte(model, windows)
        figures["models"][name] = {
            "params": model.config.num_params(),
            "heldout_bits_per_byte": bpb,
        }
        print(f"{name:12s} held-out bits/byte: {bpb:.3f}  ({len(windows)} windows of 128 bytes)")
    agreement = models.greedy_agreement(loaded["tiny-draft"], loaded["tiny-target"], windows)
    figures["greedy_agreement"] = agreement
    print(
        f"draft/target greedy next-byte agreement: {agreement:.1%} "
        "(predicts speculative acceptance)"
    )

    prompts, lengths = data.heldout_prompts(args.num_prompts, args.prompt_length, seed=args.seed)
    print(
        f"\nGreedy generation: {args.num_prompts} ragged held-out prompts, "
        f"{args.max_new_tokens} new bytes each, one compiled while_loop"
    )
    for name, model in loaded.items():
        seconds, out = _timed_generate(model, prompts, lengths, args.max_new_tokens, args.repeats)
        new_tokens = int(np.sum(out.num_generated))
        rate = new_tokens / seconds
        figures["models"][name]["greedy_tokens_per_s"] = rate
        print(
            f"{name:12s} {rate:8.0f} tokens/s  (median of {args.repeats}, batch {args.num_prompts})"
        )
        if name == "tiny-target":
            row_len = int(lengths[0])
            print(f"  prompt: {_decode(prompts[0, :row_len])!r}")
            print(f"  output: {_decode(out.tokens[0, row_len : int(out.lengths[0])])!r}")
    return figures


def speculative_section(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy speculative decoding (chains and token trees) vs plain greedy."""
    print("\n== Speculative decoding: same tokens as greedy, fewer target calls ==")
    target = models.Model(*models.load_pretrained("tiny-target"))
    draft = models.Model(*models.load_pretrained("tiny-draft"))
    prompts, lengths = data.heldout_prompts(1, args.prompt_length, seed=args.seed)
    rows = {}
    for name, drafter_fn, k in [
        ("autoregressive", None, 0),
        ("draft model K=4", lambda: drafting.draft_model(draft), 4),
        ("prompt lookup K=4", lambda: drafting.prompt_lookup(256), 4),
        # Trees: no draft model at all, then the draft model's best-first tree.
        (
            "token recycling 16",
            lambda: drafting.token_recycling(256, template=trees.token_recycling_template(16)),
            0,
        ),
        ("draft tree 16", lambda: drafting.draft_model_tree(draft, num_nodes=16), 0),
        # The lookahead family: the target drafts for itself (Jacobi), or memories do.
        ("jacobi lookahead", lambda: drafting.lookahead(256, window=3, ngram=3, guesses=3), 0),
        ("trie retrieval 8", lambda: drafting.trie_retrieval(256, num_nodes=8), 0),
        ("suffix decoding 8", lambda: drafting.suffix_decoding(256, num_nodes=8), 0),
    ]:

        def run(t, p, n, drafter_fn=drafter_fn, k=k):
            drafter = drafter_fn() if drafter_fn else None
            return generate(
                t,
                p,
                n,
                jax.random.key(0),
                max_new_tokens=args.max_new_tokens,
                drafter=drafter,
                max_draft_tokens=k,
            )

        fn = jax.jit(run)
        out = jax.block_until_ready(fn(target, prompts, lengths))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(target, prompts, lengths))
            times.append(time.perf_counter() - start)
        generated = int(out.num_generated[0])
        rows[name] = {
            "tokens_per_s": generated / statistics.median(times),
            "target_calls_per_token": int(out.stats.target_calls[0]) / generated,
            "acceptance_rate": int(out.stats.accepted[0]) / max(1, int(out.stats.drafted[0])),
            "tokens": np.asarray(out.tokens[0]),
        }
    greedy_tokens = rows["autoregressive"]["tokens"]
    for name, row in rows.items():
        row["same_as_greedy"] = bool(np.array_equal(row.pop("tokens"), greedy_tokens))
        row["speedup"] = row["tokens_per_s"] / rows["autoregressive"]["tokens_per_s"]
        print(
            f"{name:18s} {row['tokens_per_s']:7.0f} tokens/s  x{row['speedup']:.2f}  "
            f"target calls/token {row['target_calls_per_token']:.2f}  "
            f"acceptance {row['acceptance_rate']:.0%}  same as greedy: {row['same_as_greedy']}"
        )
    return rows


def real_models_section(args: argparse.Namespace) -> dict[str, Any]:
    """The BPE Llama pair with its tokenizer, bfloat16, and a Qwen3 written and read as HF files."""
    import tempfile

    print("\n== Real model families: the BPE Llama pair, bfloat16, a HuggingFace round trip ==")
    tokenizer = models.load_tokenizer("tiny-llama-target")
    target = models.Model(*models.load_pretrained("tiny-llama-target"))
    draft = models.Model(*models.load_pretrained("tiny-llama-draft"))
    for name, model in (("tiny-llama-target", target), ("tiny-llama-draft", draft)):
        c = model.config
        print(
            f"{name:18s} {c.model_type}: {c.num_params() / 1e6:5.2f}M params  "
            f"layers={c.num_layers} "
            f"d_model={c.d_model} heads={c.num_heads}/{c.num_kv_heads} (GQA)  rope "
            f"theta={c.rope_theta:g}  vocab={c.vocab_size} (byte-level BPE)"
        )
    figures: dict[str, Any] = {}
    windows = data.token_windows(tokenizer, 128, max_windows=args.eval_windows)
    for name, model in (("tiny-llama-target", target), ("tiny-llama-draft", draft)):
        bpb = models.bits_per_byte(model, windows, token_bytes=tokenizer.token_bytes())
        figures[f"{name} heldout_bits_per_byte"] = bpb
        print(f"{name:18s} held-out bits/byte: {bpb:.3f}  ({len(windows)} windows of 128 tokens)")
    prompts, lengths = data.token_prompts(
        tokenizer, args.num_prompts, args.prompt_length, seed=args.seed
    )
    texts = tokenizer.decode(prompts, lengths)
    print(f"{len(texts)} held-out prompts of {np.asarray(lengths).tolist()} tokens")

    def run(t, d, p, n, speculative, exact):
        drafter = drafting.draft_model(d) if speculative else None
        return generate(
            t, p, n, jax.random.key(0), max_new_tokens=args.max_new_tokens, drafter=drafter,
            max_draft_tokens=4, exact=exact,
        )  # fmt: skip

    fn = jax.jit(run, static_argnames=("speculative", "exact"))
    outputs = {}
    # Fast mode in both dtypes. In bfloat16, scoring K + 1 tokens at once rounds
    # differently from scoring one, so near-ties can flip an argmax; `exact=True`
    # guarantees the greedy tokens (tested) at a large cost in speed on CPU.
    exact = False
    for dtype in ("float32", "bfloat16"):
        cast = lambda m, dtype=dtype: models.Model(
            m.config, jax.tree.map(lambda x: x.astype(dtype), m.params)
        )
        t, d = cast(target), cast(draft)
        for speculative in (False, True):
            name = f"{'speculative K=4' if speculative else 'greedy'} {dtype}"
            out = jax.block_until_ready(fn(t, d, prompts, lengths, speculative, exact))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = jax.block_until_ready(fn(t, d, prompts, lengths, speculative, exact))
                times.append(time.perf_counter() - start)
            generated = int(np.sum(out.num_generated))
            rounds = int(np.sum(out.stats.target_calls)) - len(texts)
            outputs[name] = np.asarray(out.tokens)
            figures[name] = {
                "tokens_per_s": generated / statistics.median(times),
                "accepted_per_target_call": int(np.sum(out.stats.accepted)) / max(1, rounds),
            }
        greedy, spec = f"greedy {dtype}", f"speculative K=4 {dtype}"
        figures[spec]["exact_mode"] = figures[greedy]["exact_mode"] = exact
        figures[spec]["same_as_greedy"] = bool(np.array_equal(outputs[spec], outputs[greedy]))
        for name in (greedy, spec):
            row = figures[name]
            extra = f"  same as greedy: {row['same_as_greedy']}" if "same_as_greedy" in row else ""
            print(
                f"{name + (' (exact)' if exact else ''):34s} {row['tokens_per_s']:7.0f} tokens/s  "
                "accepted/target call "
                f"{row['accepted_per_target_call']:.2f}{extra}"
            )
    if not figures["speculative K=4 bfloat16"]["same_as_greedy"]:
        print(
            "  (bfloat16, fast mode: a near-tie flipped; generate(..., exact=True) guarantees it)"
        )
    text = tokenizer.decode(outputs["greedy float32"], np.asarray(lengths) + args.max_new_tokens)
    print(f"  {text[0][-160:]!r}")

    # Any family round-trips through HuggingFace's layout: a small random Qwen3 here.
    config = models.qwen3(
        vocab_size=tokenizer.vocab_size, num_layers=2, num_heads=4, num_kv_heads=2,
        d_model=64, head_dim=32, mlp_dim=128, max_length=256, tie_embeddings=True,
    )  # fmt: skip
    params = models.init_params(config, jax.random.key(args.seed))
    with tempfile.TemporaryDirectory() as folder:
        models.save_hf(folder, config, params)
        loaded_config, loaded_params = models.load_hf(folder)
    same = loaded_config == config and all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(loaded_params), jax.tree.leaves(params), strict=True)
    )
    figures["qwen3_round_trip_exact"] = same
    print(f"random Qwen3 ({config.num_params():,} params) save_hf -> load_hf bit-exact: {same}")
    return figures


def particles_section(args: argparse.Namespace) -> dict[str, Any]:
    """Bootstrap filter vs the exact Kalman filter; global resampling over all devices."""
    print("\n== Particles: a bootstrap filter against the exact Kalman filter ==")
    lgssm = particles.example_lgssm()
    _, observations = lgssm.sample(jax.random.key(0), 20)
    exact = particles.kalman_filter(lgssm, observations)
    run = jax.jit(
        particles.bootstrap_filter,
        static_argnames=("model", "num_particles", "method", "mesh", "keep_ancestors"),
    )
    model = lgssm.to_state_space_model()
    figures: dict[str, Any] = {"kalman_log_likelihood": float(exact.log_likelihood)}
    for method in particles.RESAMPLING_METHODS:
        result = run(jax.random.key(1), model, observations, 4096, method=method)
        figures[f"{method}_log_likelihood"] = float(result.log_likelihood)
        print(
            f"{method:12s} log Z^ = {float(result.log_likelihood):9.4f}   "
            f"Kalman log Z = {float(exact.log_likelihood):9.4f}   "
            f"resampled at {int(result.resampled.sum())}/20 steps"
        )
    mesh = sharding.make_mesh()
    one = run(jax.random.key(1), model, observations, 4096, keep_ancestors=True)
    many = run(jax.random.key(1), model, observations, 4096, mesh=mesh, keep_ancestors=True)
    same = bool(jnp.array_equal(one.ancestors, many.ancestors))
    figures["sharded_ancestors_equal"] = same
    print(
        f"particles sharded over {mesh.devices.size} device(s): same ancestors as 1 device: {same}"
    )
    return figures


def predictive_coding_section(args: argparse.Namespace) -> dict[str, Any]:
    """A 3-level continuous HGF on the shipped USD-CHF series; robust mode over many draws."""
    from lookahead_jax import predictive_coding as pc  # imported here: one pillar per section

    print("\n== Predictive coding: a 3-level HGF on the USD-CHF exchange rate ==")
    series = pc.load_data("continuous")  # [614] daily USD-CHF rate

    def three_level(updates: str) -> pc.Network:
        # input <- x1 (value) <- x2 (volatility) <- x3 (volatility), pyhgf's vocabulary.
        return (
            pc.Network(volatility_updates=updates)
            .add_nodes(precision=1e4)
            .add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-8.0)
            .add_nodes(volatility_children=1, mean=1.0, precision=1e1, tonic_volatility=-4.0)
            .add_nodes(volatility_children=2, mean=0.5, precision=1e1, tonic_volatility=-5.0)
        )

    net = three_level("unbounded").input_data(series)
    traj = net.node_trajectories
    figures: dict[str, Any] = {"steps": int(series.shape[0]), "beliefs": {}}
    print(f"{series.shape[0]} observations; posterior mean (sd) of each level at a few steps:")
    for t in (0, series.shape[0] // 2, series.shape[0] - 1):
        row = {
            f"x{k}": (float(traj[k]["mean"][t]), float(traj[k]["precision"][t] ** -0.5))
            for k in (1, 2, 3)
        }
        figures["beliefs"][t] = row
        text = "  ".join(f"{name} {m:8.4f} ({sd:.3g})" for name, (m, sd) in row.items())
        print(f"  t={t:3d}  u={series[t]:.4f}  {text}")
    surprise = float(pc.total_surprise(net.structure, net.trajectories))
    figures["total_surprise"] = surprise
    print(f"total surprise of the observations: {surprise:.1f} nats")

    # Random tonic volatilities of the classic HGF on the series tiled twice (the jump
    # from 0.82 back to 1.04 is what breaks it), all draws in one jit(vmap).
    num_draws = 512
    rng = np.random.default_rng(args.seed)
    omegas = jnp.asarray(
        rng.uniform((-12.0, -8.0, -8.0), (-2.0, -1.0, -1.0), size=(num_draws, 3)), jnp.float32
    )
    structure, params, beliefs = three_level("standard").compile(jnp.float32)
    tiled = jnp.asarray(np.resize(series, 2 * series.shape[0]), jnp.float32)[:, None]

    def any_nonfinite(omega, robust):
        p = params._replace(tonic_volatility=params.tonic_volatility.at[1:].set(omega))
        _, trajectories = pc.run(None, beliefs, p, tiled, structure=structure, robust=robust)
        return ~jnp.all(jnp.isfinite(trajectories.beliefs.mean))

    batched = jax.jit(jax.vmap(any_nonfinite, in_axes=(0, None)), static_argnums=1)
    for robust in (False, True):
        start = time.perf_counter()
        nan_runs = int(jnp.sum(batched(omegas, robust)))
        seconds = time.perf_counter() - start
        mode = "robust" if robust else "parity"
        figures[f"nan_runs_{mode}"] = nan_runs
        print(
            f"classic HGF, {num_draws} draws x {tiled.shape[0]} steps, {mode:6s} mode: "
            f"{nan_runs} runs with NaN ({nan_runs / num_draws:.0%}); "
            f"{seconds:.2f} s with compilation"
        )
    figures["num_draws"] = num_draws
    return figures


def leap_verify_section(args: argparse.Namespace) -> dict[str, Any]:
    """Leap+Verify wrapping Adam on a byte-level MLP language model, against plain Adam."""
    import optax  # imported here: one pillar per section

    from lookahead_jax import extrapolation as ex

    print("\n== Leap+Verify: verified weight extrapolation inside a compiled training step ==")
    # Any model and any optax optimiser: here a byte MLP (8 bytes of context -> next byte),
    # small enough to compile in a second. The experiment uses the reference transformer.
    context, width = 8, 64
    keys = jax.random.split(jax.random.key(args.seed), 3)
    params = {
        "embed": 0.1 * jax.random.normal(keys[0], (256, 16)),
        "hidden": {"w": jax.random.normal(keys[1], (16 * context, width)) / 12,
                   "b": jnp.zeros(width)},
        "out": {"w": jax.random.normal(keys[2], (width, 256)) / 8, "b": jnp.zeros(256)},
    }  # fmt: skip

    def features(p, batch):  # [B, context + 1] bytes -> [B, width]
        x = p["embed"][batch[:, :context]].reshape(batch.shape[0], -1)
        return jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])

    def loss(p, batch):
        logits = features(p, batch) @ p["out"]["w"] + p["out"]["b"]
        return jnp.mean(metrics.token_nll(logits, batch[:, context]))

    train, held = data.load_corpus("train"), data.load_corpus("heldout")
    acceptance = jnp.asarray(data.batch_for_step(held, args.seed, 0, 256, context))
    probes = jnp.asarray(data.batch_for_step(held, args.seed, 1, 32, context))
    eval_set = jnp.asarray(data.eval_windows(held, context, 4096))
    steps, delta, k = 400, 20, 20
    # Thresholds live in the state: one compiled step serves both runs. The first run's
    # thresholds are unreachable (no leap: plain Adam); the second run's are calibrated
    # from the first run's warm-up similarities (30th / 70th percentiles of 5 checks).
    config = ex.LeapConfig(delta=delta, k=k, method="linear", criterion="adaptive",
                           leap_in="stable_confirmed", tau_low=0.0, tau_high=0.0,
                           max_checks=32)  # fmt: skip
    optimizer = ex.leap_verify(
        optax.adam(optax.cosine_decay_schedule(3e-3, steps, 0.1)),
        config,
        heldout_loss=lambda p: loss(p, acceptance),
        fingerprint=lambda p: features(p, probes),
    )
    step = jax.jit(ex.leap_step, static_argnames=("loss_fn", "optimizer"))  # key first
    evaluate = jax.jit(lambda p: loss(p, eval_set))
    figures: dict[str, Any] = {}
    thresholds = ex.Thresholds(jnp.float32(2.0), jnp.float32(2.0))  # cosine <= 2: never stable
    for name in ("plain Adam", f"Leap+Verify (linear, K={k}, adaptive)"):
        state = ex.leap_init(params, optimizer)
        state = state._replace(opt_state=state.opt_state._replace(thresholds=thresholds))
        while int(state.opt_state.position) < steps:
            position = int(state.opt_state.position)
            batch = data.batch_for_step(train, args.seed, position, 64, context)
            state, _ = step(keys[0], state, batch, loss_fn=loss, optimizer=optimizer)
        leap = state.opt_state
        row = {
            "optimizer_steps": int(leap.count),
            "accepted_leaps": int(leap.accepts),
            "attempted_leaps": int(leap.attempts),
            "heldout_loss": float(evaluate(state.params)),
        }
        figures["plain" if name == "plain Adam" else "leap_verify"] = row
        print(
            f"{name:38s} {row['optimizer_steps']:3d} optimiser steps for {steps} schedule steps, "
            f"leaps {row['accepted_leaps']}/{row['attempted_leaps']} accepted, "
            f"held-out loss {row['heldout_loss']:.3f} nats/byte"
        )
        n = int(leap.num_checks)
        regimes = "".join(ex.REGIME_NAMES[int(r)][0].upper() for r in leap.regimes[:n])
        thresholds = ex.calibrate_thresholds(leap.similarities[1:6])
    print(f"regimes every {delta} steps (Unknown/Chaotic/Transition/Stable): {regimes}")
    figures["regimes"] = regimes
    return figures


def _repetition_rate(sequence, n: int) -> float:
    """``1 - distinct / total`` n-grams of one sequence (0 when it has none)."""
    grams = [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def decoding_strategies_section(args: argparse.Namespace) -> dict[str, Any]:
    """Momentum decoding vs greedy, and a LATR rollout group, on held-out prompts."""
    from lookahead_jax import decoding  # imported here: one pillar per section
    from lookahead_jax.sampling import Sampling

    print("\n== Decoding strategies: lookahead beyond speculative decoding ==")
    target = models.Model(*models.load_pretrained("tiny-target"))
    prompts, lengths = data.heldout_prompts(args.num_prompts, args.prompt_length, seed=args.seed)
    prompt_lists = [list(map(int, p[: int(n)])) for p, n in zip(prompts, lengths, strict=True)]
    new = args.max_new_tokens
    runs = {
        "greedy": lambda m, p, n: decoding.sample_rollouts(
            m, p, n, jax.random.key(0), max_new_tokens=new, sampling=Sampling()
        ),
        "momentum": lambda m, p, n: decoding.momentum_decoding(m, p, n, max_new_tokens=new),
    }
    figures: dict[str, Any] = {}
    for name, fn in runs.items():
        out = jax.jit(fn)(target, prompts, lengths)
        tokens = np.asarray(out.tokens).reshape(len(prompt_lists), -1)
        ends = np.asarray(out.lengths).reshape(-1)
        outputs = [tokens[i, len(p) : ends[i]].tolist() for i, p in enumerate(prompt_lists)]
        ll = float(
            np.mean(
                [
                    np.mean(lp) if lp.size else np.nan
                    for lp in models.continuation_log_probs(
                        target, prompt_lists, outputs, len(outputs)
                    )
                ]
            )
        )
        rep = float(np.mean([_repetition_rate(o, 8) for o in outputs]))
        figures[name] = {"ll_per_byte": ll, "repetition": rep}
        print(
            f"{name:9s} target log-lik/byte {ll:6.3f}  repeated 8-grams {rep:5.1%}  "
            f"{_decode(outputs[0])!r}"
        )
    config = decoding.LATRConfig(num_rollouts=4, prune_window=8, max_new_tokens=new)
    group = jax.jit(decoding.latr_run, static_argnames="config")(
        jax.random.key(1), target, prompts[:1], lengths[:1], config=config
    )
    valid = np.flatnonzero(np.asarray(group.valid[0]))
    figures["latr"] = {
        "rollouts": len(valid),
        "branches": int(group.branches[0]),
        "pruned": int(group.pruned[0]),
    }
    print(
        f"LATR rollout group for prompt 0: {len(valid)} rollouts ({int(group.branches[0])} "
        f"branches, {int(group.pruned[0])} pruned as too similar), with log-probabilities:"
    )
    start = int(lengths[0])
    for j in valid:
        text = _decode(np.asarray(group.tokens[0, j, start : int(group.lengths[0, j])]))
        print(f"  log p {float(group.log_probs[0, j]):7.1f}  {text!r}")
    print("CNTP, AdaDec and First-Finish: `python experiments/decoding_strategies.py`.")
    return figures


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "models": models_section,
    "speculative": speculative_section,
    "real_models": real_models_section,
    "particles": particles_section,
    "predictive_coding": predictive_coding_section,
    "leap_verify": leap_verify_section,
    "decoding_strategies": decoding_strategies_section,
}


# The shipped models' context (positions); speculative sections need room for drafts on top
# of the prompt and the new tokens (draft trees up to this deep).
_CONTEXT = 256
_DRAFT_ROOM = 16


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low``, else argparse's usage message (no traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"sections to run (default: all), from: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--num-prompts", type=_at_least(1), default=4)
    parser.add_argument("--prompt-length", type=_at_least(2), default=48, help="in tokens")
    parser.add_argument("--max-new-tokens", type=_at_least(1), default=64)
    parser.add_argument(
        "--eval-windows", type=_at_least(1), default=64, help="held-out windows scored"
    )
    parser.add_argument(
        "--repeats", type=_at_least(1), default=3, help="timed runs (median reported)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")


def argument_errors(args: argparse.Namespace) -> list[str]:
    """What argparse cannot check alone: the sizes together, and where ``--json`` goes."""
    errors = []
    used = args.prompt_length + args.max_new_tokens
    if used > _CONTEXT - _DRAFT_ROOM:
        errors.append(
            f"--prompt-length {args.prompt_length} + --max-new-tokens {args.max_new_tokens} = "
            f"{used} must be <= {_CONTEXT - _DRAFT_ROOM} (the shipped models have "
            f"{_CONTEXT} positions; {_DRAFT_ROOM} are kept for speculative drafts)"
        )
    if args.json:
        folder = pathlib.Path(args.json).resolve().parent
        if not folder.is_dir():
            errors.append(f"--json {args.json}: folder {folder} does not exist")
    return errors


def run(args: argparse.Namespace) -> dict[str, Any]:
    errors = argument_errors(args)
    if errors:
        raise ValueError("; ".join(errors))
    start = time.perf_counter()
    print(f"lookahead_jax tour on {jax.device_count()} {jax.default_backend()} device(s)\n")
    figures = {name: SECTIONS[name](args) for name in args.sections}
    figures["wall_seconds"] = time.perf_counter() - start
    print(f"\nTour finished in {figures['wall_seconds']:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures
