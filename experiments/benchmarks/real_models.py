"""Real model families: the BPE Llama pair in float32 vs bfloat16, and a Qwen2.5-0.5B shape.

Two sections (``config.sections``):

``precision``: the shipped BPE Llama pair (``config.pair``, default
``tiny-llama-target``/``tiny-llama-draft``) with float32 parameters and with
parameters cast to bfloat16 (``jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)``;
the KV cache follows ``model.dtype``). At batch 1 and 8, greedy: autoregressive
decoding and draft-model speculation (K = ``draft_k``), each also with
``exact=True`` (bitwise width-independent target logits). Per row: tokens/s
(median of ``repeats`` round-robin runs, compilation excluded), tokens per target
call (verification round: accepted drafts + 1), acceptance rate, whether the
speculative tokens equal autoregressive greedy's in the same dtype and mode (the
bfloat16 question), and how far each output agrees with float32 greedy (mean
common-prefix fraction). Prompts: ``data.heldout_prompts`` texts encoded with the
pair's tokenizer.

``qwen_shape``: a randomly initialised target of Qwen2.5-0.5B's shape
(``models.qwen2(vocab_size=151936, d_model=896, num_layers=24, num_heads=14,
num_kv_heads=2, mlp_dim=4864, tie_embeddings=True)``, ~494M parameters, in
``qwen_dtype``: by default bfloat16 on accelerators and float32 on CPU; nothing is
downloaded) and a draft of the same vocabulary: the
target's first ``qwen_draft_layers`` blocks with its final norm and tied head
(``qwen_draft="early_exit"``, no extra memory) or a separately initialised model
of that depth and the same width (``"layers"``). Batch 1 and 8: autoregressive
vs draft-model speculation (K = ``draft_k``), greedy, ``qwen_max_new_tokens``
tokens. With random weights the acceptance rate says nothing about real models
(it is reported, flagged ``meaningless_random_weights``). What is meaningful is
the cost structure: the time of one target call scoring 1 token vs K + 1 tokens
(and of one draft call) at the prompts' context, measured with
``call_repeats`` timed loops of ``calls_per_timing`` calls each (in one compiled
``fori_loop``, the cache carried as generation carries it), and the break-even
acceptance rate it implies: the i.i.d. acceptance ``a`` at which
``(1 - a^(K+1)) / (1 - a)`` tokens per round pay for a round's cost, both for
verification alone (drafts free) and with K draft calls, in units of one
1-token target call; and the same solved from the measured generation times
(seconds per round / seconds per autoregressive token).

Prompts of the ``qwen_shape`` section are the same held-out texts encoded with the
shipped BPE tokenizer (``qwen_tokenizer``; ids < 4096 of the 151936, irrelevant
to a random model but realistic lengths).

``small=True`` shrinks everything for a smoke run (tiny Qwen-like shape, a few
tokens, one repeat). Writes ``results.json`` and ``results.png`` to
``config.output_dir``.
"""

from __future__ import annotations

import functools
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from experiments.benchmarks import _common, _pairs
from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate

SECTIONS = ("precision", "qwen_shape")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sections = SECTIONS
    config.small = False  # smoke run: tiny shapes and budgets (see _apply_small)
    config.batch_sizes = (1, 8)
    config.draft_k = 4
    config.prompt_length = 64  # bytes of held-out text, encoded (<= 65 tokens)
    config.repeats = 5  # round-robin timed runs per row (median reported)
    config.seed = 0
    # precision section
    config.pair = ("tiny-llama-target", "tiny-llama-draft")
    config.dtypes = ("float32", "bfloat16")
    config.max_new_tokens = 64
    config.exact = True  # also the exact=True rows
    config.precision_calls = True  # also time single calls (1 / K+1 tokens) of the pair
    # qwen_shape section
    config.qwen = ml_collections.ConfigDict(
        dict(
            vocab_size=151936,
            d_model=896,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            mlp_dim=4864,
            max_length=160,  # prompt (<= 65) + new tokens (32) + K + slack
            tie_embeddings=True,
        )
    )
    # "auto": bfloat16 on GPU/TPU, float32 on CPU, where XLA's bfloat16 matmuls run
    # several times slower than float32 (measured: 2.8 s vs 0.73 s per batch-1 call).
    config.qwen_dtype = "auto"
    config.qwen_draft = "early_exit"  # "early_exit" (target's first blocks) | "layers"
    config.qwen_draft_layers = 2
    config.qwen_max_new_tokens = 32
    config.qwen_tokenizer = "tiny-llama"
    # target / draft call costs (both sections)
    config.call_repeats = 5
    config.calls_per_timing = 4  # calls in one timed compiled loop (qwen_shape)
    config.small_calls_per_timing = 64  # the same for the tiny precision pair
    config.output_dir = "outputs/real_models"
    return config


def _apply_small(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with tiny settings for a smoke run (explicit fields are kept otherwise)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.qwen.update(
        vocab_size=4096, d_model=64, num_layers=4, num_heads=2, num_kv_heads=1, mlp_dim=128
    )
    config.batch_sizes = tuple(min(b, 2) for b in config.batch_sizes)
    config.prompt_length = 16
    config.max_new_tokens = 8
    config.qwen_max_new_tokens = 8
    config.repeats = 1
    config.call_repeats = 1
    config.calls_per_timing = 2
    config.small_calls_per_timing = 2
    return config


def _check(config) -> None:
    bad = [s for s in config.sections if s not in SECTIONS]
    if bad or not config.sections:
        raise ValueError(f"`sections` must be a non-empty subset of {SECTIONS}; got {bad}.")
    bad = [d for d in (*config.dtypes, config.qwen_dtype) if d not in (*DTYPES, "auto")]
    if bad:
        raise ValueError(f"dtypes must be among {tuple(DTYPES)}; got {bad}.")
    if config.qwen_draft not in ("early_exit", "layers"):
        raise ValueError(
            f"`qwen_draft` must be 'early_exit' or 'layers'; got {config.qwen_draft!r}."
        )
    if config.draft_k < 1 or config.repeats < 1 or config.call_repeats < 1:
        raise ValueError("`draft_k`, `repeats` and `call_repeats` must be >= 1.")


def cast(model: models.Model, dtype) -> models.Model:
    """``model`` with every parameter cast to ``dtype``."""
    return models.Model(model.config, jax.tree.map(lambda x: x.astype(dtype), model.params))


def _runner(k: int, max_new_tokens: int, exact: bool):
    """``run(target, draft, prompt, lengths, key) -> Generation``, compiled; k=0: autoregressive."""

    def run(target, draft, prompt, lengths, key):
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=max_new_tokens,
            drafter=drafting.draft_model(draft) if k else None,
            max_draft_tokens=max(k, 1),
            controller=drafting.constant(),  # a fixed K (the default may draft less)
            exact=exact,
        )

    return jax.jit(run)


@functools.partial(jax.jit, static_argnames=("calls",))
def _call_loop(model, cache, tokens, lengths, calls: int):
    """``calls`` sequential target calls scoring ``tokens [B, S]`` after ``lengths`` tokens.

    The cache is carried from call to call (updated in place, as in generation) and
    rewound to ``lengths`` before each call, so every call scores S tokens at the same
    context; the summed logits keep every call live.
    """

    def body(_, carry):
        cache, total = carry
        logits, cache = model(tokens, cache._replace(lengths=lengths))
        return cache, total + jnp.sum(logits[:, -1, :8].astype(jnp.float32))

    _, total = lax.fori_loop(0, calls, body, (cache, jnp.zeros((), jnp.float32)))
    return total


@jax.jit
def _prefill(model, prompt, cache):
    return model(prompt, cache)[1]


def _prefilled(model, prompt, lengths, capacity: int):
    cache = models.init_cache(
        model.config, prompt.shape[0], min(capacity, model.config.max_length), dtype=model.dtype
    )
    cache = _prefill(model, jnp.asarray(prompt), cache)
    return cache._replace(lengths=jnp.asarray(lengths, jnp.int32))


def _timed(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _round_robin(prepared: list[tuple[Any, tuple]], repeats: int) -> list[list[float]]:
    """Times every prepared (compiled, warmed) call ``repeats`` times, interleaved."""
    times: list[list[float]] = [[] for _ in prepared]
    for _ in range(repeats):
        for out, (fn, args) in zip(times, prepared, strict=True):
            out.append(_timed(fn, args))
    return times


def tokens_per_round(acceptance: float, k: int) -> float:
    """Expected tokens per verification round for i.i.d. acceptance ``a``."""
    if acceptance >= 1.0:
        return float(k + 1)
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def break_even(cost_per_round: float, k: int) -> float | None:
    """The acceptance ``a`` with ``tokens_per_round(a, k) == cost_per_round`` (the round's
    cost in units of one autoregressive token); 0 when any acceptance pays, None when even
    ``a = 1`` does not (cost >= K + 1)."""
    if cost_per_round <= 1.0:
        return 0.0
    if cost_per_round >= k + 1:
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if tokens_per_round(mid, k) < cost_per_round:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _prefix_fraction(a: np.ndarray, b: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """Mean over rows of the common prefix of the generated parts, as a fraction of them."""
    fractions = []
    for row in range(a.shape[0]):
        x, y = a[row, start[row] : end[row]], b[row, start[row] : end[row]]
        differ = np.flatnonzero(x != y)
        same = differ[0] if differ.size else x.size
        fractions.append(same / max(x.size, 1))
    return float(np.mean(fractions))


def _generation_row(out, seconds: list[float], batch: int) -> dict[str, Any]:
    generated = int(np.sum(out.num_generated))
    calls = int(np.sum(out.stats.target_calls))
    rounds = calls - batch  # the prefill is not a verification round
    drafted, accepted = int(np.sum(out.stats.drafted)), int(np.sum(out.stats.accepted))
    median = statistics.median(seconds)
    return {
        "batch": batch,
        "new_tokens": generated,
        "seconds_median": median,
        "seconds_all": list(seconds),
        "tokens_per_s": generated / median,
        "target_calls": calls,
        "rounds": rounds,
        "tokens_per_round": (generated - batch) / rounds if rounds else 0.0,
        "mean_accepted_per_round": accepted / rounds if rounds else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
    }


# ----------------------------------------------------------------------------- precision


def _precision_jobs(config):
    target32 = _pairs.load_model(config.pair[0])
    draft32 = _pairs.load_model(config.pair[1])
    tokenizer = models.load_tokenizer(config.pair[0])
    info = {
        "pair": _pairs.label(config.pair),
        "tokenizer": repr(tokenizer),
        "target_params": target32.config.num_params(),
        "draft_params": draft32.config.num_params(),
        "target_model_type": target32.config.model_type,
    }
    k = config.draft_k
    jobs = []
    for batch in config.batch_sizes:
        prompts, lengths = _pairs.heldout_prompts(
            tokenizer, batch, config.prompt_length, seed=config.seed
        )
        for dtype in config.dtypes:
            target = cast(target32, DTYPES[dtype])
            draft = cast(draft32, DTYPES[dtype])
            for exact in (False, True) if config.exact else (False,):
                for method, kk in (("autoregressive", 0), ("draft_model", k)):
                    meta = {"dtype": dtype, "batch": batch, "method": method, "k": kk}
                    meta["exact"] = exact
                    fn = _runner(kk, config.max_new_tokens, exact)
                    args = (target, draft, prompts, lengths, jax.random.key(config.seed))
                    jobs.append(("generation", meta, fn, args))
            if not config.precision_calls:
                continue
            capacity = prompts.shape[1] + config.max_new_tokens + k + 1
            jobs += _call_jobs(
                target, draft, k, prompts, lengths, capacity, config.small_calls_per_timing,
                {"dtype": dtype, "batch": batch},
            )  # fmt: skip
    return info, jobs


def _call_jobs(target, draft, k, prompts, lengths, capacity, calls, meta) -> list:
    """Timing jobs of single calls: the target scoring 1 and K + 1 tokens, the draft 1."""
    jobs = []
    batch = prompts.shape[0]
    for role, model, width in (
        ("target", target, 1),
        ("target", target, k + 1),
        ("draft", draft, 1),
    ):
        cache = _prefilled(model, prompts, lengths, capacity)
        tokens = jnp.ones((batch, width), jnp.int32)
        fn = functools.partial(_call_loop, calls=calls)
        args = (model, cache, tokens, jnp.asarray(lengths, jnp.int32))
        row = meta | {"role": role, "scored_tokens": width, "calls": calls}
        jobs.append(("call", row, fn, args))
    return jobs


def _precision_rows(config, jobs, times, outs) -> dict[str, Any]:
    rows, calls = [], []
    reference = {}
    for (kind, meta, _, args), seconds, out in zip(jobs, times, outs, strict=True):
        if kind == "call":
            calls.append(_call_row(meta, seconds))
            continue
        row = {**meta, **_generation_row(out, seconds, meta["batch"])}
        key = (meta["dtype"], meta["batch"], meta["exact"])
        if meta["method"] == "autoregressive":
            reference[key] = (out, row["tokens_per_s"])
        prompt_lengths = np.asarray(args[3])
        rows.append((row, out, key, prompt_lengths))
    result_rows = []
    for row, out, key, prompt_lengths in rows:
        ar_out, ar_speed = reference[key]
        row["speedup_vs_autoregressive"] = row["tokens_per_s"] / ar_speed
        if row["method"] != "autoregressive":
            row["same_tokens_as_autoregressive"] = bool(
                np.array_equal(np.asarray(out.tokens), np.asarray(ar_out.tokens))
            )
        f32 = reference.get(("float32", key[1], False))
        if f32 is not None:
            row["agreement_with_float32_greedy"] = _prefix_fraction(
                np.asarray(out.tokens),
                np.asarray(f32[0].tokens),
                prompt_lengths,
                np.asarray(out.lengths),
            )
        result_rows.append(row)
    summary = []
    for dtype in config.dtypes:
        for batch in config.batch_sizes:
            for exact in (False, True) if config.exact else (False,):
                sel = {
                    r["method"]: r
                    for r in result_rows
                    if (r["dtype"], r["batch"], r["exact"]) == (dtype, batch, exact)
                }
                ar, spec = sel["autoregressive"], sel["draft_model"]
                f32_ar = (
                    next(
                        r
                        for r in result_rows
                        if (r["dtype"], r["batch"], r["exact"], r["method"])
                        == ("float32", batch, exact, "autoregressive")
                    )
                    if "float32" in config.dtypes
                    else None
                )
                summary.append(
                    {
                        "dtype": dtype,
                        "batch": batch,
                        "exact": exact,
                        "autoregressive_tokens_per_s": ar["tokens_per_s"],
                        "speculative_tokens_per_s": spec["tokens_per_s"],
                        "speculative_speedup": spec["speedup_vs_autoregressive"],
                        "tokens_per_target_call": spec["tokens_per_round"],
                        "acceptance_rate": spec["acceptance_rate"],
                        "speculative_equals_greedy": spec["same_tokens_as_autoregressive"],
                        "autoregressive_vs_float32": (
                            None if f32_ar is None else ar["tokens_per_s"] / f32_ar["tokens_per_s"]
                        ),
                        "greedy_agreement_with_float32": ar.get("agreement_with_float32_greedy"),
                    }
                )
    _add_break_even(calls, config.draft_k, ("dtype", "batch"))
    return {"rows": result_rows, "calls": calls, "summary": summary}


def _call_row(meta, seconds) -> dict[str, Any]:
    per_call = [s / meta["calls"] for s in seconds]
    return {**meta, "seconds_per_call": statistics.median(per_call), "seconds_all": per_call}


def _add_break_even(calls: list[dict[str, Any]], k: int, keys: tuple[str, ...]) -> None:
    """Adds, to each group's K+1-token target row, the cost ratios and break-even rates."""
    groups: dict[tuple, dict[tuple, dict]] = {}
    for row in calls:
        groups.setdefault(tuple(row[x] for x in keys), {})[(row["role"], row["scored_tokens"])] = (
            row
        )
    for group in groups.values():
        one, wide = group.get(("target", 1)), group.get(("target", k + 1))
        draft = group.get(("draft", 1))
        if one is None or wide is None:
            continue
        verify = wide["seconds_per_call"] / one["seconds_per_call"]
        wide["verify_cost_vs_one_token"] = verify
        wide["break_even_acceptance_verify_only"] = break_even(verify, k)
        if draft is not None:
            draft_ratio = draft["seconds_per_call"] / one["seconds_per_call"]
            wide["draft_call_vs_target_call"] = draft_ratio
            round_cost = verify + k * draft_ratio
            wide["round_cost_with_drafts"] = round_cost
            wide["break_even_acceptance_with_drafts"] = break_even(round_cost, k)


# ----------------------------------------------------------------------------- qwen shape


def _qwen_dtype(config) -> str:
    if config.qwen_dtype != "auto":
        return config.qwen_dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def _qwen_jobs(config):
    dtype = DTYPES[_qwen_dtype(config)]
    qconfig = models.qwen2(**config.qwen.to_dict())
    key_target, key_draft = jax.random.split(jax.random.key(config.seed))
    target = models.Model(qconfig, models.init_params(qconfig, key_target, dtype=dtype))
    if config.qwen_draft == "early_exit":
        draft = drafting.early_exit_model(target, config.qwen_draft_layers)
    else:
        dconfig = models.qwen2(**{**config.qwen.to_dict(), "num_layers": config.qwen_draft_layers})
        draft = models.Model(dconfig, models.init_params(dconfig, key_draft, dtype=dtype))
    tokenizer = models.load_tokenizer(config.qwen_tokenizer)
    info = {
        "target_config": {
            k: getattr(qconfig, k)
            for k in (
                "model_type",
                "vocab_size",
                "d_model",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "mlp_dim",
                "max_length",
                "tie_embeddings",
            )
        },
        "dtype": _qwen_dtype(config),
        "target_params": qconfig.num_params(),
        "draft": config.qwen_draft,
        "draft_layers": config.qwen_draft_layers,
        "draft_params": draft.config.num_params(),
        "prompt_tokenizer": repr(tokenizer),
        "weights": "random (models.init_params); no download",
    }
    k = config.draft_k
    jobs = []
    for batch in config.batch_sizes:
        prompts, lengths = _pairs.heldout_prompts(
            tokenizer, batch, config.prompt_length, seed=config.seed
        )
        for method, kk in (("autoregressive", 0), ("draft_model", k)):
            meta = {"batch": batch, "method": method, "k": kk}
            fn = _runner(kk, config.qwen_max_new_tokens, False)
            args = (target, draft, prompts, lengths, jax.random.key(config.seed))
            jobs.append(("generation", meta, fn, args))
        capacity = prompts.shape[1] + config.qwen_max_new_tokens + k + 1
        jobs += _call_jobs(
            target, draft, k, prompts, lengths, capacity, config.calls_per_timing, {"batch": batch}
        )
    return info, jobs


def _qwen_rows(config, jobs, times, outs) -> dict[str, Any]:
    k = config.draft_k
    rows, calls, reference = [], [], {}
    for (kind, meta, _, _), seconds, out in zip(jobs, times, outs, strict=True):
        if kind == "call":
            calls.append(_call_row(meta, seconds))
            continue
        row = {**meta, **_generation_row(out, seconds, meta["batch"])}
        if meta["method"] == "autoregressive":
            reference[meta["batch"]] = (out, row)
        rows.append((row, out))
    result_rows = []
    for row, out in rows:
        ar_out, ar = reference[row["batch"]]
        row["speedup_vs_autoregressive"] = row["tokens_per_s"] / ar["tokens_per_s"]
        if row["method"] != "autoregressive":
            row["same_tokens_as_autoregressive"] = bool(
                np.array_equal(np.asarray(out.tokens), np.asarray(ar_out.tokens))
            )
            row["acceptance_meaningless_random_weights"] = True
            # Measured in situ: seconds per verification round over seconds per
            # autoregressive token (both from the generation runs, prefill included).
            ar_token = ar["seconds_median"] / ar["new_tokens"] * row["batch"]
            round_cost = row["seconds_median"] / max(row["rounds"] / row["batch"], 1)
            row["round_cost_vs_autoregressive_token"] = round_cost / ar_token
            row["break_even_acceptance_measured"] = break_even(round_cost / ar_token, k)
        result_rows.append(row)
    _add_break_even(calls, k, ("batch",))
    return {"rows": result_rows, "calls": calls}


# ----------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs the selected sections; returns the figures (also written as JSON + PNG)."""
    if config.small:
        config = _apply_small(config)
    _check(config)
    start_all = time.perf_counter()
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "config": config.to_dict(),
    }
    sections = {}
    if "precision" in config.sections:
        info, jobs = _precision_jobs(config)
        sections["precision"] = (info, jobs, _precision_rows)
    if "qwen_shape" in config.sections:
        info, jobs = _qwen_jobs(config)
        sections["qwen_shape"] = (info, jobs, _qwen_rows)
    # Compile and warm every job, then time all of them round-robin.
    everything = [(name, job) for name, (_, jobs, _) in sections.items() for job in jobs]
    iterator = progress(everything, desc="compile") if progress else everything
    outs = []
    for _, (_, _, fn, args) in iterator:
        outs.append(jax.block_until_ready(fn(*args)))
    generation = [(fn, args) for _, (kind, _, fn, args) in everything if kind == "generation"]
    call = [(fn, args) for _, (kind, _, fn, args) in everything if kind == "call"]
    gen_times = iter(_round_robin(generation, config.repeats))
    call_times = iter(_round_robin(call, config.call_repeats))
    for name, (info, jobs, rows_fn) in sections.items():
        times = [next(gen_times) if job[0] == "generation" else next(call_times) for job in jobs]
        mine = [o for (n, _), o in zip(everything, outs, strict=True) if n == name]
        results[name] = {"info": info, **rows_fn(config, jobs, times, mine)}
    results["wall_seconds"] = time.perf_counter() - start_all
    _write(results, pathlib.Path(config.output_dir))
    return results


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    _common.write_json(results, out_dir / "results.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in SECTIONS if s in results]
    fig, axes = plt.subplots(1, 2 * len(panels), figsize=(5 * 2 * len(panels), 4), squeeze=False)
    axes = list(axes[0])
    if "precision" in results:
        rows = results["precision"]["rows"]
        ax = axes.pop(0)
        labels = [
            f"{r['dtype']} B={r['batch']} {r['method']}{' exact' if r['exact'] else ''}"
            for r in rows
        ]
        ax.barh(range(len(rows)), [r["tokens_per_s"] for r in rows], color="C0")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel("tokens/s (median)")
        ax.set_title(f"{results['precision']['info']['pair']}: float32 vs bfloat16", fontsize=9)
        _plot_calls(axes.pop(0), results["precision"]["calls"], ("dtype", "batch"))
    if "qwen_shape" in results:
        rows = results["qwen_shape"]["rows"]
        ax = axes.pop(0)
        labels = [f"B={r['batch']} {r['method']}" for r in rows]
        ax.barh(range(len(rows)), [r["tokens_per_s"] for r in rows], color="C1")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel("tokens/s (median)")
        info = results["qwen_shape"]["info"]
        ax.set_title(
            f"Qwen2.5-0.5B shape ({info['target_params'] / 1e6:.0f}M, random, {info['dtype']})",
            fontsize=9,
        )
        _plot_calls(axes.pop(0), results["qwen_shape"]["calls"], ("batch",))
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "results.png")
    plt.close(fig)


def _plot_calls(ax, calls, keys) -> None:
    labels = [
        " ".join(str(c[k]) for k in keys) + f" {c['role']} S={c['scored_tokens']}" for c in calls
    ]
    ax.barh(range(len(calls)), [1e3 * c["seconds_per_call"] for c in calls], color="C2")
    ax.set_yticks(range(len(calls)), labels, fontsize=7)
    ax.set_xlabel("ms per call (median)")
    ax.set_title("one call scoring S tokens", fontsize=9)


def _opt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(results: dict[str, Any]) -> str:
    """The benchmark as plain-text tables."""
    lines = []
    if "precision" in results:
        sec = results["precision"]
        lines.append(f"== precision: {sec['info']['pair']} ({sec['info']['tokenizer']})")
        lines.append(
            f"{'dtype':9s} {'B':>2s} {'exact':5s} {'method':15s} {'tok/s':>8s} {'x AR':>5s} "
            f"{'tok/call':>8s} {'acc':>5s} {'=AR':>4s} {'~f32':>5s}"
        )
        for r in sec["rows"]:
            same = r.get("same_tokens_as_autoregressive")
            lines.append(
                f"{r['dtype']:9s} {r['batch']:2d} {('yes' if r['exact'] else 'no'):5s} "
                f"{r['method']:15s} {r['tokens_per_s']:8.1f} "
                f"{r['speedup_vs_autoregressive']:5.2f} {r['tokens_per_round']:8.2f} "
                f"{r['acceptance_rate']:5.2f} "
                f"{'' if same is None else ('yes' if same else 'NO'):>4s} "
                f"{_opt(r.get('agreement_with_float32_greedy'), '5.2f'):>5s}"
            )
        lines.append("  (~f32: mean common prefix with float32 greedy, as a fraction)")
        for s in sec["summary"]:
            if s["dtype"] != "float32":
                lines.append(
                    f"  {s['dtype']} B={s['batch']} exact={s['exact']}: autoregressive "
                    f"{_opt(s['autoregressive_vs_float32'], '.2f')}x float32's tokens/s; "
                    f"speculative = greedy: {s['speculative_equals_greedy']}"
                )
        lines += _call_lines(sec["calls"], ("dtype", "batch"))
    if "qwen_shape" in results:
        sec = results["qwen_shape"]
        info = sec["info"]
        lines.append(
            f"== qwen_shape: {info['target_params']:,} params ({info['dtype']}, random), "
            f"draft {info['draft']} {info['draft_layers']} layers ({info['draft_params']:,})"
        )
        lines.append(
            f"{'B':>2s} {'method':15s} {'tok/s':>8s} {'x AR':>5s} {'tok/call':>8s} "
            f"{'acc*':>5s} {'round/tok':>9s} {'a* meas.':>8s}"
        )
        for r in sec["rows"]:
            lines.append(
                f"{r['batch']:2d} {r['method']:15s} {r['tokens_per_s']:8.2f} "
                f"{r['speedup_vs_autoregressive']:5.2f} {r['tokens_per_round']:8.2f} "
                f"{r['acceptance_rate']:5.2f} "
                f"{_opt(r.get('round_cost_vs_autoregressive_token'), '9.2f'):>9s} "
                f"{_opt(r.get('break_even_acceptance_measured'), '8.3f'):>8s}"
            )
        lines.append(
            "  acc*: random weights, meaningless; a* meas.: break-even acceptance from the "
            "measured round cost"
        )
        lines += _call_lines(sec["calls"], ("batch",))
    return "\n".join(lines)


def _call_lines(calls, keys) -> list[str]:
    lines = []
    for c in calls:
        text = (
            "  "
            + " ".join(f"{k}={c[k]}" for k in keys)
            + f" {c['role']:6s} S={c['scored_tokens']}: {1e3 * c['seconds_per_call']:8.3f} ms/call"
        )
        if "verify_cost_vs_one_token" in c:
            text += (
                f"  = {c['verify_cost_vs_one_token']:.2f}x S=1; break-even acceptance "
                f"{_opt(c['break_even_acceptance_verify_only'], '.3f')} (drafts free)"
            )
            if "round_cost_with_drafts" in c:
                text += (
                    f", draft call {c['draft_call_vs_target_call']:.2f}x -> "
                    f"{_opt(c['break_even_acceptance_with_drafts'], '.3f')} with K drafts"
                )
        lines.append(text)
    return lines
