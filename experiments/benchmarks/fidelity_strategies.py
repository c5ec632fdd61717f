"""Research fidelity of three decoding strategies (issue 19): First-Finish search, LATR and
AdaDec, each with the paper's metric on a checkable proxy task, at three model sizes.

Behind ``experiments/fidelity_strategies.py``. The landed study
(``experiments/benchmarks/decoding_strategies.py``) reported three misses: First-Finish
"not reproduced", LATR's diversity effect reversed, AdaDec only +0.08 nats over greedy.
It measured likelihood and diversity; the papers measure **accuracy** (AIME accuracy for
First-Finish, Pass@1 for AdaDec) and, for LATR, **group diversity and pass@k**. This
experiment reruns each with that metric on a task whose answer we can check:

* **Task (reference match)**: a ragged held-out prompt that ends at a word end
  (``data.heldout_prompts``); the *answer* is the next ``k`` words that really follow
  it in its document (``answer_words``, k = 1 by default: the next word; compared as
  whitespace-split words, exact bytes). A continuation *finishes* its answer at the
  token that spells the whitespace after the k-th word; one that never does is wrong.
* **First-Finish search** (Agarwal et al. 2025): ``ffs_samples`` independent samples
  per prompt at each temperature of ``temperatures``; the First-Finish pick is the
  sample that finishes its answer in the fewest tokens (ties: lowest index, as
  ``decoding.first_finish``, whose winner is checked against this rule on the same
  samples: ``library_check``). Effect: accuracy of the pick minus the expected
  accuracy of one sample (the mean over the n samples), paired over prompts.
  Mechanism: P(correct | length rank) over the n samples (rank 1 = first to finish).
* **LATR** (Xing et al. 2025): groups of ``group_size`` rollouts of
  ``latr_max_new_tokens`` tokens: ``latr`` (the library: spec rules, greedy growth),
  ``latr_sampled`` (own tokens sampled) and ``latr_code`` (the rules of the authors'
  public code, github.com/starreeze/latr ``model/sample_filter.py`` and
  ``model/generation.py``: branch iff ``p_i > tau_abs`` and ``p_1 - p_i > tau_rel``;
  sample as soon as the group holds n rollouts, re-opening branching when a child is
  pruned; groups short of n filled with copies of the first rollout): the library's
  ``LATRConfig(rules="reference_code")``, the short groups filled here. Against
  plain sampling groups at each temperature: distinct-4 and mean pairwise normalised
  edit distance of the group (on the bytes spelled), the number of distinct answers,
  pass@1 and pass@k on the answer, and the model's log-likelihood per byte (quality).
  **Matched quality**: sampling's diversity interpolated (linearly in temperature
  order) at LATR's likelihood per byte, inside one bootstrap resample.
* **AdaDec** (He et al. 2025): threshold fitted per model on held-out windows
  (``decoding.fit_adadec_threshold``), then greedy vs AdaDec (and AdaDec pausing at
  every step, ``tau = 0``) for ``adadec_max_new_tokens`` tokens: answer match, the
  first token's match with the reference's first token (all prompts, and the
  prompts paused at that step), matched leading bytes and likelihood per byte.

Every effect is a difference of per-prompt values, paired over prompts, with a
**paired bootstrap** 95% interval (``bootstrap`` resamples of the prompts, percentile);
P(correct | rank) and accuracies carry the same bootstrap interval. ``trend`` fits each
headline effect against log10(parameters) over the targets run and reports where the
line crosses zero (a scale-effect extrapolation, said to be one).

Targets: the byte GPT-2 ``tiny-target`` (1.88M), the BPE Llama ``tiny-llama-target``
(5.2M) and ``outputs/llama-large/hf`` (21.5M, trained by ``python experiments/train_lm.py
--workdir=outputs/llama-large --config=configs/train_lm.py --config.model=llama_large
--config.tokenizer=tiny-llama --config.seq_len=128 --config.batch_size=16
--config.num_steps=600 --config.learning_rate=1e-3 --config.warmup_steps=60
--config.eval_every=200 --config.checkpoint_every=100``, ~50 min on 2 cores); a folder
that is absent is skipped with a notice (``skipped`` in the JSON).

Writes ``results.json`` and ``results.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from experiments.benchmarks import decoding_strategies as ds
from lookahead_jax import decoding, models
from lookahead_jax.sampling import Sampling

TARGETS = ("tiny-target", "tiny-llama-target", "outputs/llama-large/hf")


def default_config() -> ml_collections.ConfigDict:
    """Defaults sized for a shared 2-core CPU (about 10-15 minutes with the large model)."""
    c = ml_collections.ConfigDict()
    c.targets = TARGETS
    c.num_prompts = 64
    c.prompt_length = 64  # bytes of held-out text (BPE: encoded, <= 65 tokens)
    c.answer_words = 1  # the answer: the next k words of the held-out text
    # Sampling groups (FFS samples, LATR baselines); 0.15 brackets greedy-grown LATR's quality.
    c.temperatures = (0.15, 0.3, 0.6, 1.0)
    c.headline_temperature = 1.0  # FFS headline and LATR's own sampling temperature
    c.group_size = 8  # LATR n, FFS n and the sampling groups
    c.rows_per_call = 16  # prompts per generation call (x group_size lanes)
    c.sample_max_new_tokens = 40  # tokens of every sampled / LATR rollout
    # LATR (spec / paper defaults)
    c.latr_variants = ("latr", "latr_sampled", "latr_code")
    c.latr_top_m = 2
    c.latr_tau_abs = 0.25
    c.latr_tau_rel = 0.15
    c.latr_tau_ed = 0.4
    c.latr_prune_window = 20
    c.distinct_ngram = 4
    # AdaDec
    c.adadec_max_new_tokens = 16
    c.adadec_fit_windows = 64
    c.adadec_window_length = 128
    c.adadec_candidates = 3
    c.adadec_beam_width = 3
    c.adadec_lookahead_steps = 5
    c.adadec_always = False  # also run tau = 0 (lookahead at every step; +~40 s a target)
    c.bootstrap = 2000
    c.seed = 0
    c.quick = False
    # Keep the targets already in output_dir/results.json and run only the missing ones.
    c.extend = False
    c.output_dir = "outputs/fidelity_strategies"
    return c


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``quick`` applied (the smoke test's sizes)."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.quick:
        c.targets = ("tiny-target",)
        c.num_prompts = 4
        c.temperatures = (0.6, 1.0)
        c.group_size = 4
        c.rows_per_call = 4
        c.sample_max_new_tokens = 12
        c.latr_prune_window = 4
        c.latr_variants = ("latr_code",)
        c.adadec_max_new_tokens = 4
        c.adadec_fit_windows = 4
        c.adadec_window_length = 32
        c.adadec_lookahead_steps = 2
        c.adadec_always = False
        c.bootstrap = 50
    return c


# ----------------------------------------------------------------------------- pure helpers

_WHITESPACE = b" \t\n\r\x0b\x0c"


def answer_from_pieces(pieces: list[bytes], words: int) -> tuple[int | None, bytes]:
    """The first ``words`` words spelled by a sequence of token spellings.

    Returns ``(tokens, answer)``: ``tokens`` is how many pieces it takes until the
    whitespace that ends the ``words``-th word (``None`` if it never comes: the answer
    is unfinished), ``answer`` the words joined by one space (what is there so far).
    """
    text = b""
    for i, piece in enumerate(pieces):
        text += piece
        split = text.split()
        # Finished once `words` words exist and a whitespace byte follows the last of them.
        if len(split) > words or (
            len(split) == words and text and text[-1:] in [bytes([b]) for b in _WHITESPACE]
        ):
            return i + 1, b" ".join(split[:words])
    return None, b" ".join(text.split()[:words])


def paired_bootstrap(
    diff: np.ndarray, resamples: int, seed: int = 0, statistic=np.mean
) -> dict[str, float]:
    """Mean of per-prompt values (or differences) with a percentile bootstrap 95% interval."""
    diff = np.asarray(diff, np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    stats = np.asarray([statistic(diff[i]) for i in idx])
    return {
        "mean": float(statistic(diff)),
        "lo": float(np.percentile(stats, 2.5)),
        "hi": float(np.percentile(stats, 97.5)),
        "n": int(diff.size),
    }


def interpolate_at(xs, ys, x: float) -> tuple[float, bool]:
    """Linear interpolation of the curve ``(xs, ys)`` at ``x`` (xs in any order).

    Returns ``(y, inside)``; outside the range of ``xs`` the nearest end's value is
    returned with ``inside = False`` (no extrapolation).
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    inside = bool(xs[0] <= x <= xs[-1])
    return float(np.interp(x, xs, ys)), inside


def log_trend(params, effects) -> dict[str, float]:
    """Least-squares line of ``effects`` against log10(``params``) and its zero crossing.

    ``crossing_params``: the parameter count where the line crosses 0 (nan when flat or
    fewer than two points); ``slope_per_decade``: change of the effect per 10x params.
    """
    x = np.log10(np.asarray(params, np.float64))
    y = np.asarray(effects, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0:
        return {"slope_per_decade": math.nan, "crossing_params": math.nan, "points": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    crossing = 10 ** (-intercept / slope) if slope != 0 else math.nan
    return {
        "slope_per_decade": float(slope),
        "intercept": float(intercept),
        "crossing_params": float(crossing),
        "points": int(x.size),
    }


def ffs_pick(lengths: list[int | None]) -> tuple[int, list[int]]:
    """First-Finish's pick and the length order (first to finish first; ties: lowest index;
    unfinished last). The pick is trace 0 when none finishes (``decoding.first_finish``)."""
    big = 1 << 30
    order = sorted(
        range(len(lengths)), key=lambda j: (big if lengths[j] is None else lengths[j], j)
    )
    pick = order[0] if lengths[order[0]] is not None else 0
    return pick, order


# ----------------------------------------------------------------------------- LATR variant

# The authors' code (github.com/starreeze/latr) where it differs from the spec, as exact
# replacements in the library's source: ProbFilter keeps candidate i iff
# p_i > abs and p_1 - p_i > rel; with sample_nk="full" a rollout samples once its root has n
# branches (checked or not), and a pruned child makes room for branching again.
# ----------------------------------------------------------------------------- the run


def _setup(config, name: str) -> dict[str, Any]:
    """The target, tokenizer, prompts and held-out references (``decoding_strategies``')."""
    c = ml_collections.ConfigDict(
        {
            "num_prompts": config.num_prompts,
            "prompt_length": config.prompt_length,
            "seed": config.seed,
            "ffs_stop": "\n",
            "max_new_tokens": max(config.sample_max_new_tokens, config.adadec_max_new_tokens),
        }
    )
    return ds._target_setup(c, name)


def _run_chunks(fn, prompts, lengths, num_prompts, per_call, key) -> list:
    outs = ds._run_rows(
        jax.jit(fn),
        prompts,
        lengths,
        np.arange(num_prompts),
        min(per_call, num_prompts),
        key,
        lambda f, *a: jax.block_until_ready(f(*a)),
    )
    return outs


def _groups(outs, num_prompts: int, plens, valid_key: str | None = None) -> list[list[list[int]]]:
    """[prompt][rollout] generated ids from grouped outputs (``valid`` slots only for LATR)."""
    groups: list[list[list[int]]] = [[] for _ in range(num_prompts)]
    for rows, out in outs:
        for i, p in enumerate(rows):
            for j in range(out.tokens.shape[1]):
                if valid_key is None or out.valid[i, j]:
                    groups[p].append(ds._generated(out.tokens[i, j], out.lengths[i, j], plens[p]))
    return groups


def _key(seed: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % 2**31)


def _answers(table, groups, words: int):
    """Per prompt, per rollout: (tokens to finish the answer or None, answer bytes)."""
    return [
        [answer_from_pieces([table[t] for t in seq], words) for seq in group] for group in groups
    ]


def _ll_per_byte(table, groups, token_lps) -> list[float]:
    """Mean over a prompt's rollouts of sum(log p) / bytes spelled."""
    out = []
    for group, lps in zip(groups, token_lps, strict=True):
        vals = []
        for seq, lp in zip(group, lps, strict=True):
            spelled = len(_pairs.spell(table, seq))
            if spelled:
                vals.append(float(np.sum(lp[: len(seq)])) / spelled)
        out.append(float(np.mean(vals)) if vals else math.nan)
    return out


def _scored_lps(target, prompt_lists, groups) -> list[list[np.ndarray]]:
    """Per-token model log p (temperature 1) of every rollout: one cache-free pass each."""
    flat_p, flat_o = [], []
    for p, group in enumerate(groups):
        for seq in group:
            flat_p.append(prompt_lists[p])
            flat_o.append(seq)
    scores = iter(models.continuation_log_probs(target, flat_p, flat_o, 64))
    return [[np.asarray(next(scores)) for _ in group] for group in groups]


def _group_metrics(config, table, groups, answers, ref_answer, lls) -> dict[str, list[float]]:
    """Per prompt: diversity, answers and quality of a group."""
    m: dict[str, list[float]] = {
        k: []
        for k in (
            "distinct",
            "pairwise_edit",
            "distinct_filled",
            "pairwise_edit_filled",
            "distinct_answers",
            "pass_at_1",
            "pass_at_k",
            "rollouts",
        )
    }
    n = config.group_size
    for p, group in enumerate(groups):
        spelled = [list(_pairs.spell(table, s)) for s in group]
        # The authors' code fills a group short of n with copies of its first rollout.
        filled = spelled + [spelled[0]] * (n - len(spelled)) if spelled else spelled
        m["distinct"].append(ds.distinct_n(spelled, config.distinct_ngram))
        m["pairwise_edit"].append(ds.pairwise_edit_distance(spelled))
        m["distinct_filled"].append(ds.distinct_n(filled, config.distinct_ngram))
        m["pairwise_edit_filled"].append(ds.pairwise_edit_distance(filled))
        m["rollouts"].append(float(len(group)))
        ref = ref_answer[p]
        if ref is None:
            for k in ("distinct_answers", "pass_at_1", "pass_at_k"):
                m[k].append(math.nan)
            continue
        correct = [t is not None and a == ref for t, a in answers[p]]
        m["distinct_answers"].append(float(len({a for t, a in answers[p] if t is not None})))
        m["pass_at_1"].append(float(np.mean(correct)))
        m["pass_at_k"].append(float(any(correct)))
    m["ll_per_byte"] = list(lls)
    return m


def _ffs_metrics(answers, ref_answer) -> dict[str, Any]:
    """Per prompt: First-Finish pick's correctness, one sample's expected accuracy, and
    correctness by length rank."""
    pick_c, single, last, by_rank, finished = [], [], [], [], []
    for p, group in enumerate(answers):
        ref = ref_answer[p]
        if ref is None:
            continue
        lengths = [t for t, _ in group]
        correct = [t is not None and a == ref for t, a in group]
        pick, order = ffs_pick(lengths)
        pick_c.append(float(correct[pick]))
        single.append(float(np.mean(correct)))
        last.append(float(correct[order[-1]]))
        by_rank.append([float(correct[j]) for j in order])
        finished.append(float(np.mean([t is not None for t in lengths])))
    return {
        "ffs": np.asarray(pick_c),
        "single": np.asarray(single),
        "last": np.asarray(last),
        "by_rank": np.asarray(by_rank),
        "finished": np.asarray(finished),
    }


def _summ(values, config, salt: str) -> dict[str, float]:
    return paired_bootstrap(np.asarray(values, np.float64), config.bootstrap, _salt(config, salt))


def _salt(config, name: str) -> int:
    return (config.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def _library_check(config, setup, samples_outs, temperature: float) -> dict[str, Any]:
    """``decoding.first_finish`` (stop id: the newline token) on the same keys as the
    headline samples: its winner must be the sample whose first newline comes first."""
    target, stop = setup["target"], setup["ffs_stop_id"]
    prompts, lengths = setup["prompts"], setup["lengths"]
    plens = np.asarray(lengths)
    outs = _run_chunks(
        lambda p, lens, k: decoding.first_finish(
            target,
            p,
            lens,
            k,
            max_new_tokens=config.sample_max_new_tokens,
            num_samples=config.group_size,
            eos_id=stop,
            sampling=Sampling(temperature=temperature),
        ),
        prompts,
        lengths,
        config.num_prompts,
        config.rows_per_call,
        _key(config.seed, f"samples/{temperature}"),
    )
    winners = {}
    for rows, out in outs:
        for i, p in enumerate(rows):
            winners[p] = (int(out.winner[i]), bool(out.finished[i]))
    groups = _groups(samples_outs, config.num_prompts, plens)
    agree = []
    for p, group in enumerate(groups):
        firsts = [seq.index(stop) + 1 if stop in seq else None for seq in group]
        pick, _ = ffs_pick(firsts)
        agree.append(winners[p] == (pick, any(f is not None for f in firsts)))
    return {"stop_id": int(stop), "agree_fraction": float(np.mean(agree)), "prompts": len(agree)}


def _run_target(config, name: str, progress=None) -> dict[str, Any]:
    setup = _setup(config, name)
    target, table, tok = setup["target"], setup["table"], setup["tokenizer"]
    prompts, lengths = setup["prompts"], setup["lengths"]
    plens = np.asarray(lengths)
    prompt_lists = [list(map(int, p[: int(n)])) for p, n in zip(prompts, lengths, strict=True)]
    words = config.answer_words
    refs = []
    for r in setup["references"]:
        t, a = answer_from_pieces([bytes([b]) for b in r], words)
        refs.append(a if t is not None else None)
    info: dict[str, Any] = {
        "params": int(target.config.num_params()),
        "num_prompts": int(config.num_prompts),
        "tokenizer": repr(tok),
        "prompts_with_reference": int(sum(r is not None for r in refs)),
    }
    bar = (
        progress(total=len(config.temperatures) + len(config.latr_variants) + 3, desc=name)
        if (progress)
        else None
    )
    timings: dict[str, float] = {}

    def tick(label: str, start: float) -> None:
        timings[label] = time.perf_counter() - start
        if bar is not None:
            bar.update(1)

    n, nmax = config.group_size, config.sample_max_new_tokens
    # --- plain sampling groups at each temperature (FFS samples and LATR's baselines)
    sampling: dict[str, Any] = {}
    headline_outs = None
    for temp in config.temperatures:
        start = time.perf_counter()
        outs = _run_chunks(
            lambda p, lens, k, temp=temp: decoding.sample_rollouts(
                target,
                p,
                lens,
                k,
                max_new_tokens=nmax,
                num_rollouts=n,
                sampling=Sampling(temperature=temp),
            ),
            prompts,
            lengths,
            config.num_prompts,
            config.rows_per_call,
            _key(config.seed, f"samples/{temp}"),
        )
        if temp == config.headline_temperature:
            headline_outs = outs
        groups = _groups(outs, config.num_prompts, plens)
        if temp == 1.0:
            lps = [[None] * len(g) for g in groups]
            for rows, out in outs:
                for i, p in enumerate(rows):
                    for j in range(out.tokens.shape[1]):
                        lps[p][j] = out.token_log_probs[i, j]
        else:
            lps = _scored_lps(target, prompt_lists, groups)
        answers = _answers(table, groups, words)
        sampling[str(temp)] = {
            "groups": _group_metrics(
                config, table, groups, answers, refs, _ll_per_byte(table, groups, lps)
            ),
            "ffs": _ffs_metrics(answers, refs),
        }
        tick(f"sampling T={temp}", start)
    # --- LATR variants
    latr_params = decoding.LATRConfig(
        num_rollouts=n,
        top_m=config.latr_top_m,
        tau_abs=config.latr_tau_abs,
        tau_rel=config.latr_tau_rel,
        tau_ed=config.latr_tau_ed,
        prune_window=config.latr_prune_window,
        max_new_tokens=nmax,
        sampling=Sampling(temperature=config.headline_temperature),
    )
    latr: dict[str, Any] = {}
    for variant in config.latr_variants:
        start = time.perf_counter()
        cfg = latr_params
        if variant == "latr_sampled":
            cfg = dataclasses.replace(cfg, growth="sample")
        elif variant == "latr_code":
            cfg = dataclasses.replace(cfg, rules="reference_code")
        outs = _run_chunks(
            lambda p, lens, k, cfg=cfg: decoding.latr_run(k, target, p, lens, cfg),
            prompts,
            lengths,
            config.num_prompts,
            config.rows_per_call,
            _key(config.seed, variant),
        )
        groups = _groups(outs, config.num_prompts, plens, valid_key="valid")
        lps = [[] for _ in groups]
        branches, pruned, births, handed_off = [], [], [], []
        for rows, out in outs:
            for i, p in enumerate(rows):
                for j in np.flatnonzero(out.valid[i]):
                    lps[p].append(out.token_log_probs[i, j])
                    if out.parent[i, j] >= 0:
                        births.append(float(out.birth[i, j]))
                branches.append(float(out.branches[i]))
                pruned.append(float(out.pruned[i]))
                handed_off.append(float(out.handoff_step[i] >= 0))
        answers = _answers(table, groups, words)
        metrics = _group_metrics(
            config, table, groups, answers, refs, _ll_per_byte(table, groups, lps)
        )
        latr[variant] = {
            "metrics": metrics,
            "branches": float(np.mean(branches)),
            "pruned": float(np.mean(pruned)),
            # Children share their parent's tokens before their birth step.
            "child_birth_mean": float(np.mean(births)) if births else math.nan,
            "handed_off_fraction": float(np.mean(handed_off)),
            "example": [_pairs.spell(table, s).decode("utf-8", "replace") for s in groups[0][:3]],
        }
        tick(variant, start)
    # --- AdaDec
    start = time.perf_counter()
    windows = _pairs.eval_windows(tok, config.adadec_window_length, config.adadec_fit_windows)
    fit = decoding.fit_adadec_threshold(target, windows)
    info["adadec_fit"] = {k: float(v) for k, v in fit._asdict().items()}
    thresholds = {"adadec": float(fit.threshold)}
    if config.adadec_always:
        thresholds["adadec_always"] = 0.0
    na = config.adadec_max_new_tokens
    det: dict[str, Any] = {}
    det_runs = {
        "greedy": lambda p, lens, k: decoding.sample_rollouts(
            target, p, lens, k, max_new_tokens=na, sampling=Sampling()
        )
    }
    for label, tau in thresholds.items():
        params = decoding.AdaDecParams(
            threshold=tau,
            num_candidates=config.adadec_candidates,
            beam_width=config.adadec_beam_width,
            lookahead_steps=config.adadec_lookahead_steps,
        )
        det_runs[label] = lambda p, lens, k, params=params: decoding.adadec(
            target, p, lens, max_new_tokens=na, params=params
        )
    # The reference's first token in the target's tokens (bytes: its first byte).
    ref_first = []
    for r in setup["references"]:
        text = bytes(r[:64]).decode("utf-8", errors="ignore")
        ids = [r[0]] if _pairs.is_bytes(tok) else tok.encode_ids(text, add_bos=False)
        ref_first.append(table[int(ids[0])] if ids else None)
    for label, fn in det_runs.items():
        outs = _run_chunks(
            fn,
            prompts,
            lengths,
            config.num_prompts,
            4 * config.rows_per_call,
            _key(config.seed, label),
        )
        seqs: list[list[int]] = [[] for _ in range(config.num_prompts)]
        paused0 = np.zeros(config.num_prompts, bool)
        pause_rate = []
        for rows, out in outs:
            for i, p in enumerate(rows):
                if label == "greedy":
                    seqs[p] = ds._generated(out.tokens[i, 0], out.lengths[i, 0], plens[p])
                else:
                    seqs[p] = ds._generated(out.tokens[i], out.lengths[i], plens[p])
                    paused0[p] = bool(out.paused[i, 0])
                    pause_rate.append(float(out.pauses[i]) / max(int(out.num_generated[i]), 1))
        groups = [[s] for s in seqs]
        lls = _ll_per_byte(table, groups, _scored_lps(target, prompt_lists, groups))
        ans = _answers(table, groups, words)
        det[label] = {
            "answer": [
                math.nan if refs[p] is None else float(a[0][0] is not None and a[0][1] == refs[p])
                for p, a in enumerate(ans)
            ],
            "first_token": [
                math.nan if ref_first[p] is None else float(table[s[0]] == ref_first[p])
                for p, s in enumerate(seqs)
            ],
            "prefix_bytes": [
                float(ds.prefix_match(_pairs.spell(table, s), setup["references"][p]))
                for p, s in enumerate(seqs)
            ],
            "ll_per_byte": lls,
            "paused_first": paused0,
            "pause_rate": float(np.mean(pause_rate)) if pause_rate else math.nan,
        }
    tick("adadec", start)
    # --- library check of First-Finish on the headline samples
    start = time.perf_counter()
    info["ffs_library_check"] = _library_check(
        config, setup, headline_outs, config.headline_temperature
    )
    tick("ffs library check", start)
    if bar is not None:
        bar.close()
    info["seconds"] = timings
    return {"info": info, "sampling": sampling, "latr": latr, "det": det}


def _summarise(config, name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Per-target figures with paired bootstrap intervals."""
    out: dict[str, Any] = {"ffs": {}, "latr": {}, "adadec": {}}
    # First-Finish at every temperature.
    for temp, s in raw["sampling"].items():
        f = s["ffs"]
        ranks = f["by_rank"]
        out["ffs"][temp] = {
            "ffs_accuracy": _summ(f["ffs"], config, f"{name}/ffs/{temp}"),
            "single_accuracy": _summ(f["single"], config, f"{name}/single/{temp}"),
            "gain": _summ(f["ffs"] - f["single"], config, f"{name}/gain/{temp}"),
            "last_minus_single": _summ(f["last"] - f["single"], config, f"{name}/last/{temp}"),
            "p_correct_by_rank": [
                _summ(ranks[:, r], config, f"{name}/rank{r}/{temp}") for r in range(ranks.shape[1])
            ]
            if ranks.size
            else [],
            "finished_fraction": float(np.mean(f["finished"])) if f["finished"].size else math.nan,
        }
    # LATR vs sampling, raw and at matched quality.
    temps = list(raw["sampling"])
    head = str(config.headline_temperature)
    for variant, v in raw["latr"].items():
        lm = v["metrics"]
        row: dict[str, Any] = {
            "branches": v["branches"],
            "pruned": v["pruned"],
            "child_birth_mean": v["child_birth_mean"],
            "handed_off_fraction": v["handed_off_fraction"],
            "example": v["example"],
        }
        for metric in (
            "distinct",
            "pairwise_edit",
            "distinct_filled",
            "pairwise_edit_filled",
            "distinct_answers",
            "pass_at_1",
            "pass_at_k",
            "ll_per_byte",
            "rollouts",
        ):
            a = np.asarray(lm[metric], np.float64)
            row[metric] = _summ(a, config, f"{name}/{variant}/{metric}")
            base = np.asarray(raw["sampling"][head]["groups"][metric], np.float64)
            row[f"{metric}_minus_sampling"] = _summ(
                a - base, config, f"{name}/{variant}/{metric}/diff"
            )
        for metric in ("distinct", "pairwise_edit", "distinct_filled", "pairwise_edit_filled"):
            row[f"{metric}_matched_quality"] = _matched(
                config, raw, temps, lm, metric, f"{name}/{variant}/{metric}/matched"
            )
        out["latr"][variant] = row
    out["sampling_groups"] = {
        temp: {
            m: _summ(s["groups"][m], config, f"{name}/s/{temp}/{m}")
            for m in (
                "distinct",
                "pairwise_edit",
                "distinct_answers",
                "pass_at_1",
                "pass_at_k",
                "ll_per_byte",
            )
        }
        for temp, s in raw["sampling"].items()
    }
    # AdaDec vs greedy.
    g = raw["det"]["greedy"]
    for label, d in raw["det"].items():
        if label == "greedy":
            continue
        row = {"pause_rate": d["pause_rate"]}
        for metric in ("answer", "first_token", "prefix_bytes", "ll_per_byte"):
            a, b = np.asarray(d[metric], np.float64), np.asarray(g[metric], np.float64)
            row[metric] = _summ(a, config, f"{name}/{label}/{metric}")
            row[f"greedy_{metric}"] = _summ(b, config, f"{name}/greedy/{metric}")
            row[f"{metric}_gain"] = _summ(a - b, config, f"{name}/{label}/{metric}/gain")
        paused = d["paused_first"]
        a = np.asarray(d["first_token"], np.float64)[paused]
        b = np.asarray(g["first_token"], np.float64)[paused]
        row["first_token_gain_paused"] = _summ(a - b, config, f"{name}/{label}/ft/paused")
        row["paused_first_fraction"] = float(np.mean(paused))
        out["adadec"][label] = row
    return out


def _matched(config, raw, temps, lm, metric: str, salt: str) -> dict[str, Any]:
    """LATR's diversity minus sampling's, interpolated at LATR's likelihood per byte, with a
    paired bootstrap over prompts (the same resample for every curve point)."""
    lat_div = np.asarray(lm[metric], np.float64)
    lat_ll = np.asarray(lm["ll_per_byte"], np.float64)
    s_div = np.stack([np.asarray(raw["sampling"][t]["groups"][metric], np.float64) for t in temps])
    s_ll = np.stack(
        [np.asarray(raw["sampling"][t]["groups"]["ll_per_byte"], np.float64) for t in temps]
    )
    ok = np.isfinite(lat_div) & np.isfinite(lat_ll) & np.all(np.isfinite(s_div), 0)
    ok &= np.all(np.isfinite(s_ll), 0)
    lat_div, lat_ll, s_div, s_ll = lat_div[ok], lat_ll[ok], s_div[:, ok], s_ll[:, ok]
    if lat_div.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "inside": False}

    def stat(idx):
        y, inside = interpolate_at(s_ll[:, idx].mean(1), s_div[:, idx].mean(1), lat_ll[idx].mean())
        return lat_div[idx].mean() - y, inside

    point, inside = stat(np.arange(lat_div.size))
    rng = np.random.default_rng(_salt(config, salt))
    boots = [stat(rng.integers(0, lat_div.size, lat_div.size))[0] for _ in range(config.bootstrap)]
    return {
        "mean": float(point),
        "lo": float(np.percentile(boots, 2.5)),
        "hi": float(np.percentile(boots, 97.5)),
        "n": int(lat_div.size),
        "inside": inside,
        "latr_ll_per_byte": float(lat_ll.mean()),
        "sampling_ll_per_byte": [float(x) for x in s_ll.mean(1)],
        "temperatures": [float(t) for t in temps],
    }


# Line-by-line checks against each paper's algorithm (and the LATR authors' public code).
LINE_BY_LINE = {
    "first_finish": [
        ("n traces sampled independently, in parallel", "yes", "sample_rollouts lanes", "same"),
        (
            "stop at the first trace to emit its end; return it",
            "yes",
            "stop_at_first_eos; winner = lowest index among EOS at that step",
            "same",
        ),
        (
            "equivalent: run all to the end, keep the shortest",
            "yes (paper's framing)",
            "tested in the library; checked here on the same keys (ffs_library_check)",
            "same",
        ),
        (
            "trace = reasoning then answer; correct = extracted answer equals ground truth",
            "AIME/GPQA, reasoning models 32B-671B",
            "next-word answer of held-out text, 1.9-21.5M LMs",
            "different setting (named: proxy task)",
        ),
        (
            "no trace finishes within the budget",
            "not discussed",
            "trace 0, finished=False",
            "minor",
        ),
    ],
    "latr": [
        (
            "candidates: top-m of the temperature-1 distribution, m = 2",
            "m=2",
            "top_k(log_softmax(logits), m)",
            "same",
        ),
        ("absolute test p_i > tau_abs (0.25)", "p_i > 0.25", "p_i > 0.25", "same"),
        (
            "relative test",
            "spec: p_1 - p_i < tau_rel; authors' code ProbFilter: p_1 - p_i > tau_rel",
            "p_1 - p_i < tau_rel (spec)",
            "different from the code: variant latr_code",
        ),
        (
            "own token while branching",
            "code: top-1 (sample_nk='full' samples only once full)",
            "top-1 (growth='greedy')",
            "same",
        ),
        (
            "when the group is full",
            "code: sample as soon as n branches exist; a prune re-opens",
            "hand off once all n are checked; never re-opens",
            "different: variant latr_code",
        ),
        (
            "pruning: child vs parent tokens since birth, edit distance / length < 0.4, "
            "skip at EOS",
            "checked at steps [30, 50] (generation default) or [20, 30, 50] (eval)",
            "checked once at r = 20",
            "minor (fewer checks: less pruning)",
        ),
        (
            "groups short of n",
            "code: filled with copies of the first rollout",
            "returned short (valid slots)",
            "metric difference: *_filled rows",
        ),
        (
            "hybrid mix with plain sampling (mix_ratio)",
            "code default 1.0 (pure LATR)",
            "pure LATR",
            "same",
        ),
    ],
    "adadec": [
        (
            "uncertainty: Shannon entropy (nats) of the next-token distribution",
            "yes",
            "entropy_of_logits",
            "same",
        ),
        (
            "threshold: class-balanced logistic regression of greedy-correct on entropy, "
            "cut maximising accuracy",
            "on ground-truth code solutions",
            "on held-out text windows",
            "same algorithm, own data",
        ),
        ("pause iff H >= tau, else greedy", "yes", "yes", "same"),
        (
            "rerank top-B=3 candidates by a width-3, L=5 beam lookahead, score (log p(c) + best "
            "cumulative log p) / (length + 1)",
            "as in the spec",
            "lookahead_scores",
            "same",
        ),
        (
            "task / metric",
            "HumanEval+/MBPP+/DevEval Pass@1, 0.6B-8B code LMs",
            "next-word match of held-out text, 1.9-21.5M LMs",
            "different setting (named)",
        ),
    ],
}


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs the three strategies on every available target; returns (and writes) the figures."""
    start_all = time.perf_counter()
    config = _effective(config)
    targets = [str(t) for t in config.targets]
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "interval": "paired bootstrap over prompts, 95% percentile interval",
        "line_by_line": {
            k: [dict(zip(("step", "paper", "ours", "verdict"), r, strict=True)) for r in v]
            for k, v in LINE_BY_LINE.items()
        },
        "targets": {},
        "skipped": {},
    }
    previous = pathlib.Path(config.output_dir) / "results.json"
    if config.extend and previous.is_file():
        # Keep the targets of an earlier run into the same folder (e.g. the large model added
        # when it appears); only the configured targets it lacks are run.
        old = json.loads(previous.read_text())
        results["targets"].update(old.get("targets", {}))
        results["extended_from"] = old.get("config", {})
    for name in targets:
        if name in results["targets"]:
            continue
        if name not in _available() and not pathlib.Path(name).is_dir():
            msg = f"model {name!r} is absent (not shipped, no folder): skipped"
            print(f"notice: {msg}")
            results["skipped"][name] = msg
            continue
        raw = _run_target(config, name, progress)
        summary = _summarise(config, name, raw)
        results["targets"][name] = {"info": raw["info"], **summary}
    results["trend"] = _trends(config, results)
    results["wall_seconds"] = time.perf_counter() - start_all
    _write(results, pathlib.Path(config.output_dir))
    return results


def _available() -> list[str]:
    return list(models.available_pretrained())


def _trends(config, results) -> dict[str, Any]:
    """Each headline effect against log10(params) over the targets run."""
    names = list(results["targets"])
    params = [results["targets"][t]["info"]["params"] for t in names]
    head = str(config.headline_temperature)

    def series(get):
        vals = []
        for t in names:
            try:
                vals.append(get(results["targets"][t]))
            except (KeyError, IndexError):
                vals.append(math.nan)
        return vals

    picks = {
        "ffs_gain": lambda r: r["ffs"][head]["gain"]["mean"],
        "ffs_rank1_minus_single": lambda r: (
            r["ffs"][head]["p_correct_by_rank"][0]["mean"]
            - r["ffs"][head]["single_accuracy"]["mean"]
        ),
        "adadec_answer_gain": lambda r: r["adadec"]["adadec"]["answer_gain"]["mean"],
        "adadec_first_token_gain_paused": lambda r: r["adadec"]["adadec"][
            "first_token_gain_paused"
        ]["mean"],
    }
    for variant in config.latr_variants:
        picks[f"{variant}_distinct_minus_sampling"] = lambda r, v=variant: r["latr"][v][
            "distinct_minus_sampling"
        ]["mean"]
        picks[f"{variant}_distinct_matched_quality"] = lambda r, v=variant: r["latr"][v][
            "distinct_matched_quality"
        ]["mean"]
        picks[f"{variant}_pass_at_k_minus_sampling"] = lambda r, v=variant: r["latr"][v][
            "pass_at_k_minus_sampling"
        ]["mean"]
    out = {}
    for key, get in picks.items():
        vals = series(get)
        out[key] = {"params": params, "targets": names, "effects": vals, **log_trend(params, vals)}
    return out


# ----------------------------------------------------------------------------- output


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    _common.write_json(results, out_dir / "results.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["targets"])
    head = str(results["config"]["headline_temperature"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for i, t in enumerate(names):
        ranks = results["targets"][t]["ffs"][head]["p_correct_by_rank"]
        x = np.arange(1, len(ranks) + 1)
        y = [r["mean"] for r in ranks]
        err = [[r["mean"] - r["lo"] for r in ranks], [r["hi"] - r["mean"] for r in ranks]]
        ax.errorbar(x + 0.05 * i, y, yerr=err, marker="o", capsize=2, label=_short(t))
    ax.set_xlabel("length rank (1 = first to finish)")
    ax.set_ylabel("P(answer correct)")
    ax.set_title(f"First-Finish mechanism (T={head})")
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, t in enumerate(names):
        sg = results["targets"][t]["sampling_groups"]
        xs = [sg[k]["ll_per_byte"]["mean"] for k in sg]
        ys = [sg[k]["distinct"]["mean"] for k in sg]
        ax.plot(xs, ys, "-o", color=f"C{i}", label=f"{_short(t)} sampling")
        for j, (v, row) in enumerate(results["targets"][t]["latr"].items()):
            ax.plot(
                row["ll_per_byte"]["mean"],
                row["distinct"]["mean"],
                "^sD"[j % 3],
                color=f"C{i}",
                label=f"{_short(t)} {v}",
                markersize=7,
            )
    ax.set_xlabel("log-likelihood per byte (quality)")
    ax.set_ylabel("distinct-4 of the group")
    ax.set_title("LATR vs sampling temperatures")
    ax.legend(fontsize=6)
    ax = axes[2]
    labels, vals, errs = [], [], []
    for t in names:
        for label in ("ffs gain", "AdaDec answer", "AdaDec 1st tok (paused)"):
            r = results["targets"][t]
            s = {
                "ffs gain": r["ffs"][head]["gain"],
                "AdaDec answer": r["adadec"]["adadec"]["answer_gain"],
                "AdaDec 1st tok (paused)": r["adadec"]["adadec"]["first_token_gain_paused"],
            }[label]
            labels.append(f"{_short(t)}: {label}")
            vals.append(s["mean"])
            errs.append([s["mean"] - s["lo"], s["hi"] - s["mean"]])
    y = np.arange(len(labels))
    ax.barh(y, vals, xerr=np.asarray(errs).T if errs else None, color="C0", alpha=0.7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("accuracy gain (paired bootstrap 95%)")
    ax.set_title("FFS and AdaDec vs their baselines")
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "results.png")
    plt.close(fig)


def _short(name: str) -> str:
    return pathlib.PurePath(name).name if "/" not in name else pathlib.PurePath(name).parent.name


def _ci(s: dict[str, float], scale: float = 1.0, fmt: str = "{:+.3f}") -> str:
    return (fmt + " [" + fmt + ", " + fmt + "]").format(
        s["mean"] * scale, s["lo"] * scale, s["hi"] * scale
    )


def format_table(results: dict[str, Any]) -> str:
    """The findings as plain text: per target, each strategy's paper metric with its interval."""
    head = str(results["config"]["headline_temperature"])
    lines = [f"intervals: {results['interval']}"]
    for name, skip in results["skipped"].items():
        lines.append(f"{name}: {skip}")
    for name, r in results["targets"].items():
        info = r["info"]
        lines.append(
            f"\n== {name}: {info['params']:,} params; {info['prompts_with_reference']} prompts "
            f"with a reference answer"
        )
        lines.append("First-Finish (next-word accuracy; n = group_size samples):")
        for temp, f in r["ffs"].items():
            ranks = " ".join(f"{x['mean']:.2f}" for x in f["p_correct_by_rank"])
            lines.append(
                f"  T={temp}: FFS {_ci(f['ffs_accuracy'], fmt='{:.3f}')} single "
                f"{_ci(f['single_accuracy'], fmt='{:.3f}')} gain {_ci(f['gain'])}; "
                f"P(correct | rank 1..n) {ranks}; finished {f['finished_fraction']:.2f}"
            )
        lc = info["ffs_library_check"]
        lines.append(
            f"  library first_finish winner == shortest (stop id {lc['stop_id']}): "
            f"{lc['agree_fraction']:.3f} of {lc['prompts']} prompts"
        )
        lines.append(f"LATR vs sampling at T={head} (group diversity, answers, quality):")
        for v, row in r["latr"].items():
            lines.append(
                f"  {v:13s} rollouts {row['rollouts']['mean']:.2f} branches {row['branches']:.2f}"
                f" pruned {row['pruned']:.2f} birth {row['child_birth_mean']:.1f} handed off "
                f"{row['handed_off_fraction']:.2f}; distinct-4 {row['distinct']['mean']:.3f} "
                f"(vs sampling {_ci(row['distinct_minus_sampling'])}; matched quality "
                f"{_ci(row['distinct_matched_quality'])}"
                f"{'' if row['distinct_matched_quality'].get('inside') else ' (outside range)'})"
            )
            lines.append(
                f"  {'':13s} edit {row['pairwise_edit']['mean']:.3f} (vs sampling "
                f"{_ci(row['pairwise_edit_minus_sampling'])}, matched "
                f"{_ci(row['pairwise_edit_matched_quality'])}); filled-to-n distinct vs "
                f"sampling {_ci(row['distinct_filled_minus_sampling'])}"
            )
            lines.append(
                f"  {'':13s} LL/byte {row['ll_per_byte']['mean']:.3f} (vs sampling "
                f"{_ci(row['ll_per_byte_minus_sampling'])}); pass@k "
                f"{row['pass_at_k']['mean']:.3f} (vs {_ci(row['pass_at_k_minus_sampling'])}); "
                f"pass@1 vs {_ci(row['pass_at_1_minus_sampling'])}; distinct answers vs "
                f"{_ci(row['distinct_answers_minus_sampling'])}"
            )
        for temp, sg in r["sampling_groups"].items():
            lines.append(
                f"  sampling T={temp}: distinct-4 {sg['distinct']['mean']:.3f} edit "
                f"{sg['pairwise_edit']['mean']:.3f} LL/byte {sg['ll_per_byte']['mean']:.3f} "
                f"pass@k {sg['pass_at_k']['mean']:.3f} pass@1 {sg['pass_at_1']['mean']:.3f}"
            )
        fit = info["adadec_fit"]
        lines.append(
            f"AdaDec (tau = {fit['threshold']:.3f} nats, greedy-correct "
            f"{fit['greedy_accuracy']:.3f}"
            f", fitted pause rate {fit['pause_rate']:.3f}):"
        )
        for label, row in r["adadec"].items():
            lines.append(
                f"  {label:13s} pause rate {row['pause_rate']:.3f}: answer "
                f"{row['answer']['mean']:.3f} vs greedy {row['greedy_answer']['mean']:.3f} gain "
                f"{_ci(row['answer_gain'])}; first token gain {_ci(row['first_token_gain'])} "
                f"(paused at it, {row['paused_first_fraction']:.2f} of prompts: "
                f"{_ci(row['first_token_gain_paused'])}); prefix bytes gain "
                f"{_ci(row['prefix_bytes_gain'], fmt='{:+.2f}')}; LL/byte gain "
                f"{_ci(row['ll_per_byte_gain'])}"
            )
    lines.append("\ntrend against log10(params) (zero crossing of the fitted line):")
    for key, t in results["trend"].items():
        effects = " ".join(f"{e:+.3f}" for e in t["effects"])
        lines.append(
            f"  {key:40s} {effects}  slope/decade {t['slope_per_decade']:+.3f} "
            f"crosses 0 at {t['crossing_params']:.3g} params"
        )
    return "\n".join(lines)
