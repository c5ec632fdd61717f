"""The speculation grid (issue 17, item 5): every drafter at every batch size, temperature and
prompt length, on both model pairs, next to plain decoding, against the ideal speedup.

Grid: pair (``config.pairs``) x batch (``config.batch_sizes``, default 1, 4, 16) x temperature
(``config.temperatures``, 0 and 1) x prompt (``short``: ``[3/4 W, W]`` tokens with
``W = config.short_prompt_tokens``; ``long``: ``W = config.long_prompt_tokens`` for a byte
pair, ``config.long_prompt_tokens_bpe`` for any other, both clipped so that prompt, budget
and the deepest draft fit the target's positions) x drafter (``DRAFTERS``: the chains
``draft_model``, ``early_exit`` and ``prompt_lookup``, and the trees ``token_recycling``,
``stochastic_ngram``, ``draft_model_tree``, Jacobi ``lookahead``, ``trie_retrieval`` and
``suffix_decoding``). Every (pair, batch, temperature, prompt) group also runs plain
decoding (``drafter=None``) on the same prompts, in the same run. Prompts are held-out
windows in the pair's own tokens (``lookahead_family.free_rows``); drafters are built with
the settings of the existing benchmarks (``lookahead_family.make_drafter`` and
``speculative._drafter``), memories cold. No EOS: every row generates
``config.max_new_tokens``.

Controllers. Every cell runs the library default (no ``controller``: with a drafter,
``drafting.cost_aware()`` on a cost model estimated from the models' sizes), with
``max_draft_tokens = config.max_draft_tokens`` for chains (a tree fixes its own size).
Chain drafters at the batch sizes ``config.fixed_k_batches`` with the short prompt also run
``drafting.constant(k)`` with ``max_draft_tokens = k`` for every ``k`` in ``config.fixed_k``;
trees run nothing extra (drafters with ``block_sizes`` choose their size themselves). With
``config.calibrated=True`` (default) every drafter also runs ``cost_aware(calibrate_costs(
...))`` at the batch sizes ``config.calibrated_batches`` and prompts
``config.calibrated_prompts`` (default batch 1, short): calibrated greedy on the cell's
prompts once and reused at both temperatures (each calibration compiles a dozen small
programs, which is why it is not run everywhere).
With ``config.floor=True`` every drafter also runs with every round plain
(``drafting.constant(0)``, its K unchanged; ``floor_ratio`` in ``cells``): what speculation
costs when it drafts nothing, the ceiling of "never slower".

Per row (cell x controller): tokens/s (median over ``config.repeats`` timed runs, compile
and a first run excluded; the runs of one (pair, batch, temperature, prompt) group, plain
included, go round-robin so they see the same machine) and its
ratio to plain decoding; accepted drafts per verification call (prefill excluded); target
calls per generated token (prefill included); greedy rows: whether the tokens equal plain
greedy's; and the measured

* acceptance ``a`` = accepted / examined drafts, from ``Generation.stats``: a round examines
  its accepted drafts plus the first rejected one, i.e. ``examined = accepted + rounds -
  full rounds`` (full: the last bin of ``accept_histogram``), at most ``drafted``. A round
  that drafted fewer than K tokens and accepted them all (or drafted none) counts as having
  examined one rejected draft, so under a variable-length controller ``a`` is a lower
  bound;
* cost ratio ``c`` = time of one ``drafter.propose`` at the cell's shapes (batch, prompt
  width, sampling; drafting ``K`` tokens, or the whole tree) / ``K`` / time of one plain
  ``generation_step`` at the same shapes, timed on the state ``generation_init`` returns,
  each inside a compiled loop of ``config.cost_repeats`` calls (``drafting.costs.
  loop_seconds``: no per-call dispatch, as in generation; median of 3). ``K`` is the
  chain's ``max_draft_tokens`` or the tree's ``max_depth``, so ``K c`` is the drafting
  time of one round in plain steps; fixed-``k`` rows reuse their drafter's ``c`` measured at
  ``max_draft_tokens`` (a per-token cost; for prompt lookup, whose search costs the same
  at any k, it understates c at small k). It leaves out the drafter's
  ``update`` / ``observe`` and the cost of scoring K + 1 (or N + 1) tokens instead of one,
  which the efficiency then carries. Measured at temperature 0 and reused at temperature 1.
* ideal speedup ``ideal(a, c, K) = ((1 - a^(K+1)) / (1 - a)) / (K c + 1)``; for the default
  and calibrated controllers (variable length) and for trees (``block_sizes``, and paths
  that stop short of ``max_depth``) it is the best ``K' <= K`` (``K' = 0``: 1.0, plain
  decoding), ``ideal_k`` says which; fixed-``k`` rows use ``K = k``;
* efficiency = measured speedup (ratio to plain) / ideal.

``cells`` condenses every cell: the default's ratio, the best fixed ``k``'s ratio where swept,
and default / best fixed. ``goals`` checks issue 17's goals (min ratio over the grid >= 0.97
with its argmin cell; batch-1 greedy draft-model efficiency >= 0.8; default within 5% of the
best fixed k where speculation helps; trees >= the best chain in tokens/s at batch 1 on every
pair), each miss with its ``a`` and ``c``; a cell below 0.97 of plain decoding, or a batch-1
greedy draft model below 0.8 efficiency, also with ``why``: what bounds it, in its own
numbers (tokens and plain steps per target call, the floor's cost, the drafts' compute).
``config.resummarise=PATH`` recomputes ``cells``, ``goals`` and the outputs from the rows of
an earlier ``results.json`` without running anything.

Writes ``results.json``, ``results.png`` (ratio vs plain, rows = drafters, columns = batch x
temperature x prompt, one panel per pair) and ``results.md`` (the README table) to
``config.output_dir``, after every group too (``partial: true`` until the last), so a run cut
short keeps what it measured; groups run batch size by batch size. Errors of single cells or
cost measurements are listed in ``errors`` and the grid goes on.

Cost: the default config compiles 336 generation loops and about 230 small propose / init /
step programs, one group at a time (each group's programs are dropped after it: a few hundred
live CPU executables exhaust the process's memory maps). Compiling dominates; ``wall_s``,
``compile_and_first_run_s``, ``cost_measurement_s`` and ``timed_runs_s`` say where the time
went. ``quick=True``: one pair, batch {1, 2}, two drafters, short prompts, one repeat (about
50 s on 2 idle CPU cores).
"""

from __future__ import annotations

import gc
import json
import math
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs, lookahead_family, speculative
from lookahead_jax import drafting, models
from lookahead_jax.decoding import GenerationConfig, generate, generation_init, generation_step
from lookahead_jax.drafting.costs import loop_seconds
from lookahead_jax.sampling import Sampling

CHAINS = ("draft_model", "early_exit", "prompt_lookup")
TREES = (
    "token_recycling",
    "stochastic_ngram",
    "draft_model_tree",
    "lookahead",
    "trie_retrieval",
    "suffix_decoding",
)
DRAFTERS = CHAINS + TREES
PROMPTS = ("short", "long")
GOAL_MIN_RATIO = 0.97
GOAL_EFFICIENCY = 0.8
GOAL_DEFAULT_VS_FIXED = 0.95


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # (target, draft) pairs, shipped names or HF folders.
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.drafters = DRAFTERS  # run only these; plain decoding always runs
    config.batch_sizes = (1, 4, 16)
    config.temperatures = (0.0, 1.0)
    config.prompts = PROMPTS
    config.short_prompt_tokens = 24  # W: prompts hold [3W/4, W] tokens
    config.long_prompt_tokens = 192  # byte pairs (clipped to fit the positions)
    config.long_prompt_tokens_bpe = 128  # any other pair
    config.max_new_tokens = 56
    config.max_draft_tokens = 8  # K of the chains under the default controller
    config.fixed_k = (1, 2, 4, 8)  # drafting.constant(k) sweep of the chains
    config.fixed_k_batches = (1, 4)  # ... at these batch sizes, short prompt only
    config.calibrated = True  # also cost_aware(calibrate_costs(...)) where named below
    config.calibrated_batches = (1,)  # calibrations cost compiles: batch 1, short prompts
    config.calibrated_prompts = ("short",)
    # Also run each drafter with every round plain (controller constant(0), same K): what
    # speculation costs when it drafts nothing, i.e. the ceiling of "never slower".
    config.floor = False
    config.repeats = 3
    config.cost_repeats = 16  # propose / plain step calls per compiled timing loop (3 loops)
    config.seed = 0
    # drafters' settings (lookahead_family's and speculative's defaults)
    config.prompt_lookup_max_ngram = 3
    config.early_exit_layers = 2
    config.recycling_nodes = 32
    config.ngram_order = 3
    config.ngram_widths = (2, 1, 1, 1, 1)
    config.draft_tree_nodes = 32
    config.draft_tree_beam = 4
    config.draft_tree_branching = 4
    config.draft_tree_depth = 8
    config.lookahead_window = 5
    config.lookahead_ngram = 4
    config.lookahead_guesses = 5
    config.trie_nodes = 8
    config.suffix_nodes = 8
    config.quick = False  # tiny sizes for a smoke run (overrides the sizes above)
    # A results.json path: recompute cells, goals and outputs from its rows; runs nothing.
    config.resummarise = ""
    config.output_dir = "outputs/speculation_grid"
    return config


def effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``quick`` applied and checked; raises ValueError on bad values."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.update(
            pairs=tuple(config.pairs)[:1],
            drafters=("draft_model", "token_recycling"),
            batch_sizes=(1, 2),
            prompts=("short",),
            max_new_tokens=16,
            max_draft_tokens=4,
            fixed_k=(2,),
            fixed_k_batches=(1,),
            repeats=1,
            cost_repeats=3,
            recycling_nodes=8,
        )
    for name in config.drafters:
        if name not in DRAFTERS:
            raise ValueError(f"`drafters`: unknown drafter {name!r}; known: {DRAFTERS}.")
    for name in config.prompts:
        if name not in PROMPTS:
            raise ValueError(f"`prompts`: unknown prompt kind {name!r}; known: {PROMPTS}.")
    if any(k < 1 or k > config.max_draft_tokens for k in config.fixed_k):
        raise ValueError(
            f"`fixed_k` must lie in [1, max_draft_tokens={config.max_draft_tokens}]; "
            f"got {tuple(config.fixed_k)}."
        )
    if config.repeats < 1 or config.max_new_tokens < 2 or config.cost_repeats < 1:
        raise ValueError(
            "`repeats` >= 1, `cost_repeats` >= 1 and `max_new_tokens` >= 2 are needed; got "
            f"{config.repeats}, {config.cost_repeats}, {config.max_new_tokens}."
        )
    return config


# ---- the numbers -----------------------------------------------------------------------------


def ideal(a: float, c: float, k: int) -> float:
    """Ideal speedup of K drafts per round at per-token acceptance ``a`` and draft/target cost
    ``c``: ``((1 - a^(K+1)) / (1 - a)) / (K c + 1)`` (1.0 at K = 0)."""
    if k <= 0:
        return 1.0
    tokens = float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)
    return tokens / (k * c + 1.0)


def best_ideal(a: float, c: float, k: int) -> tuple[float, int]:
    """``(max over K' in [0, K] of ideal(a, c, K'), that K')``: the ideal of a controller that
    may draft any length up to K (K' = 0 is plain decoding)."""
    return max((ideal(a, c, j), j) for j in range(k + 1))


def acceptance(stats, rows: int) -> dict[str, float]:
    """Counts and the per-token acceptance ``a`` of one generation's ``stats`` (all rows)."""
    calls = int(np.sum(stats.target_calls))
    drafted = int(np.sum(stats.drafted))
    accepted = int(np.sum(stats.accepted))
    rounds = calls - rows  # the prefills are not verification rounds
    full = int(np.sum(np.asarray(stats.accept_histogram)[:, -1]))
    examined = min(drafted, accepted + max(rounds - full, 0))
    return {
        "target_calls": calls,
        "rounds": rounds,
        "drafted": drafted,
        "accepted": accepted,
        "examined": examined,
        "a": accepted / examined if examined else 0.0,
    }


# ---- prompts and drafters --------------------------------------------------------------------


def draft_margin(config) -> int:
    """Positions kept free past the generation for the deepest draft: chains' K or the
    trees' depth, plus slack."""
    return max(config.max_draft_tokens, config.draft_tree_depth) + 8


def prompt_width(config, kind: str, tokenizer, target_config, margin: int) -> int:
    """Prompt width W of ``kind``, clipped so that W + max_new_tokens + margin fit."""
    if kind == "short":
        width = config.short_prompt_tokens
    elif _pairs.is_bytes(tokenizer):
        width = config.long_prompt_tokens
    else:
        width = config.long_prompt_tokens_bpe
    return max(4, min(width, target_config.max_length - config.max_new_tokens - margin))


def prompts(config, tokenizer, batch: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` held-out windows of ``[3/4 width, width]`` tokens, packed."""
    rows = lookahead_family.free_rows(tokenizer, batch, width, config.seed)
    return lookahead_family.pack(rows, width, tokenizer.pad_id)


def _settings(config) -> ml_collections.ConfigDict:
    """The existing benchmarks' config fields, from this grid's config."""
    settings = lookahead_family.default_config()
    settings.update(
        prompt_lookup_k=config.max_draft_tokens,
        prompt_lookup_max_ngram=config.prompt_lookup_max_ngram,
        recycling_nodes=config.recycling_nodes,
        ngram_order=config.ngram_order,
        ngram_widths=tuple(config.ngram_widths),
        lookahead_window=config.lookahead_window,
        lookahead_ngram=config.lookahead_ngram,
        lookahead_guesses=config.lookahead_guesses,
        trie_nodes=config.trie_nodes,
        suffix_nodes=config.suffix_nodes,
    )
    spec = speculative.default_config()
    spec.update(
        early_exit_layers=config.early_exit_layers,
        draft_tree_beam=config.draft_tree_beam,
        draft_tree_branching=config.draft_tree_branching,
        draft_tree_depth=config.draft_tree_depth,
    )
    return ml_collections.ConfigDict({"family": settings, "speculative": spec})


def make_drafter(name: str, target, draft, config):
    """The drafter ``name`` with the existing benchmarks' settings (call inside ``jit``)."""
    settings = _settings(config)
    if name in ("early_exit", "draft_model_tree"):
        k = config.draft_tree_nodes if name == "draft_model_tree" else config.max_draft_tokens
        drafter, _ = speculative._drafter(name, k, settings.speculative, target, draft, None)
        return drafter
    vocab = target.config.vocab_size
    family = lookahead_family.settings_of(settings.family, name, vocab)
    return lookahead_family.make_drafter(name, (target, draft), vocab, family)


def _calibrated_controller(target, draft, name, prompt, lengths, config, sampling):
    drafter = make_drafter(name, target, draft, config)
    try:
        costs = drafting.calibrate_costs(
            target, drafter, prompt, lengths, max_draft=config.max_draft_tokens, sampling=sampling
        )
    except (TypeError, ValueError) as error:  # e.g. a drafter the calibration does not take
        _CALIBRATION_ERRORS.append(f"{name}: {error}")
        return None
    return drafting.cost_aware(costs)


_CALIBRATION_ERRORS: list[str] = []
_CALIBRATED: dict[tuple, Any] = {}


_JITTED: dict[tuple, Callable] = {}


def runner(config, name: str | None, k: int, temperature: float, controller=None) -> Callable:
    """``fn(target, draft, prompt, lengths, key) -> Generation``, one jit per setting.

    ``name=None``: plain decoding. ``controller``: ``None`` (the library default),
    ``("fixed", k)``, ``("floor",)``, or a controller object (``drafting.cost_aware(...)``
    or a ``drafting.Controller``; never cached)."""
    # A Controller is a NamedTuple: told apart from the ("fixed", k) / ("floor",) settings.
    setting = isinstance(controller, tuple) and not isinstance(controller, drafting.Controller)
    cache_key = (name, k, temperature, controller, config.max_new_tokens)
    if controller is not None and not setting:
        cache_key = None
    if cache_key is not None and cache_key in _JITTED:
        return _JITTED[cache_key]

    def run(target, draft, prompt, lengths, key):
        drafter = None if name is None else make_drafter(name, target, draft, config)
        kwargs = {}
        if setting and controller == ("floor",):  # every round plain, the drafter's K unchanged
            kwargs["controller"] = drafting.constant(0)
        elif setting:
            kwargs["controller"] = drafting.constant(controller[1])
        elif controller is not None:
            kwargs["controller"] = controller
        if drafter is not None and not isinstance(drafter, drafting.TreeDrafter):
            kwargs["max_draft_tokens"] = k
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=config.max_new_tokens,
            sampling=Sampling(temperature=temperature),
            drafter=drafter,
            **kwargs,
        )

    fn = jax.jit(run)
    if cache_key is not None:
        _JITTED[cache_key] = fn
    return fn


def plain_step_time(config, target, prompt, lengths) -> float:
    """Seconds of one plain ``generation_step`` (greedy) on ``generation_init``'s state."""
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens)
    state = jax.jit(lambda t, p, n: generation_init(jax.random.key(0), t, p, n, gen))(
        target, prompt, lengths
    )

    def step(t, s):
        return generation_step(jax.random.key(1), s, t, gen)[0]

    # Inside a compiled loop, as generation runs it (no per-call dispatch).
    return loop_seconds(step, (target, state), 3, inner=config.cost_repeats)


def propose_time(config, name: str, k: int, target, draft, prompt, lengths) -> tuple[float, int]:
    """``(seconds of one drafter.propose drafting k tokens or the whole tree, K)`` at greedy
    sampling on ``generation_init``'s state; K = k for chains, the tree's max_depth."""
    sampling = Sampling()
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, max_draft_tokens=k)

    def init(t, d, p, n):
        return generation_init(jax.random.key(0), t, p, n, gen, make_drafter(name, t, d, config))

    state = jax.jit(init)(target, draft, prompt, lengths)
    probe = make_drafter(name, target, draft, config)
    is_tree = isinstance(probe, drafting.TreeDrafter)

    def propose(t, d, s):
        drafter = make_drafter(name, t, d, config)
        key = jax.random.key(2)
        if is_tree:
            return drafter.propose(s.drafter_state, key, s.tokens, s.lengths, sampling=sampling)
        num = jax.numpy.full(s.lengths.shape, k, jax.numpy.int32)
        return drafter.propose(
            s.drafter_state, key, s.tokens, s.lengths, num, max_draft=k, sampling=sampling
        )

    seconds = loop_seconds(propose, (target, draft, state), 3, inner=config.cost_repeats)
    return seconds, (probe.max_depth if is_tree else k)


# ---- the run ---------------------------------------------------------------------------------


def _jobs(config, pair_label: str, setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Every timed generation of one pair: plain per group, each drafter's controllers."""
    jobs = []
    names = [n for n in DRAFTERS if n in config.drafters]
    for batch in config.batch_sizes:
        for temperature in config.temperatures:
            for kind in config.prompts:
                prompt, lengths = setup["prompts"][(batch, kind)]
                group = {
                    "pair": pair_label,
                    "batch": batch,
                    "temperature": float(temperature),
                    "prompt": kind,
                    "inputs": (prompt, lengths),
                    "target": setup["target"],
                    "draft": setup["draft"],
                }
                jobs.append(
                    {
                        **group,
                        "drafter": "plain",
                        "controller": "plain",
                        "k": 0,
                        "fn": runner(config, None, 0, temperature),
                    }
                )
                for name in names:
                    chain = name in CHAINS
                    k = config.max_draft_tokens if chain else 0
                    jobs.append(
                        {
                            **group,
                            "drafter": name,
                            "controller": "default",
                            "k": k,
                            "fn": runner(config, name, k, temperature),
                        }
                    )
                    if config.floor:
                        jobs.append(
                            {
                                **group,
                                "drafter": name,
                                "controller": "floor",
                                "k": k,
                                "fn": runner(config, name, k, temperature, ("floor",)),
                            }
                        )
                    if chain and batch in config.fixed_k_batches and kind == "short":
                        for fixed in config.fixed_k:
                            jobs.append(
                                {
                                    **group,
                                    "drafter": name,
                                    "controller": "fixed",
                                    "k": fixed,
                                    "fn": runner(
                                        config, name, fixed, temperature, ("fixed", fixed)
                                    ),
                                }
                            )
                    calibrate_here = (
                        config.calibrated
                        and batch in config.calibrated_batches
                        and kind in config.calibrated_prompts
                    )
                    if calibrate_here:
                        # Calibrated greedy once per (pair, drafter, batch, prompt) and
                        # reused at every temperature (the costs barely depend on it).
                        where = (pair_label, name, batch, kind)
                        if where not in _CALIBRATED:
                            _CALIBRATED[where] = _calibrated_controller(
                                setup["target"],
                                setup["draft"],
                                name,
                                prompt,
                                lengths,
                                config,
                                Sampling(),
                            )
                        controller = _CALIBRATED[where]
                        if controller is not None:
                            jobs.append(
                                {
                                    **group,
                                    "drafter": name,
                                    "controller": "calibrated",
                                    "k": k,
                                    "fn": runner(config, name, k, temperature, controller),
                                }
                            )
    return jobs


def _call(job: dict[str, Any]):
    prompt, lengths = job["inputs"]
    key = jax.random.key(0)
    return job["fn"](job["target"], job["draft"], prompt, lengths, key)


def _cost_key(config, job: dict[str, Any]) -> tuple:
    """Cells sharing one cost measurement: a fixed-k row reuses its drafter's measurement at
    ``max_draft_tokens`` (``c`` is per drafted token)."""
    k = config.max_draft_tokens if job["controller"] == "fixed" else job["k"]
    return (job["pair"], job["batch"], job["prompt"], job["drafter"], k)


_NO_COST = {"propose_s": math.nan, "plain_step_s": math.nan, "K": 1, "c": math.nan}


def _costs(config, jobs, setups, errors, steps, costs) -> None:
    """Adds to ``costs`` c per (pair, batch, prompt, drafter, k) of ``jobs`` not measured yet,
    and to ``steps`` the plain step time per (pair, batch, prompt), measured standalone (see
    the module docstring)."""
    wanted = {_cost_key(config, j) for j in jobs if j["drafter"] != "plain"} - set(costs)
    for pair, batch, kind, name, k in sorted(wanted, key=str):
        setup = setups[pair]
        prompt, lengths = setup["prompts"][(batch, kind)]
        try:
            if (pair, batch, kind) not in steps:
                steps[(pair, batch, kind)] = plain_step_time(
                    config, setup["target"], prompt, lengths
                )
            step = steps[(pair, batch, kind)]
            seconds, depth = propose_time(
                config, name, k, setup["target"], setup["draft"], prompt, lengths
            )
        except Exception as error:  # reported; the grid goes on
            errors.append(f"cost {pair} B={batch} {kind} {name} k={k}: {error!r}"[:500])
            continue
        costs[(pair, batch, kind, name, k)] = {
            "propose_s": seconds,
            "plain_step_s": step,
            "K": depth,
            "c": seconds / max(depth, 1) / step,
        }


def _row(job, outs, times, plain, cost) -> dict[str, Any]:
    out = outs
    rows = int(out.tokens.shape[0])
    generated = int(np.sum(out.num_generated))
    seconds = statistics.median(times)
    row = {
        key: job[key] for key in ("pair", "batch", "temperature", "prompt", "drafter", "controller")
    }
    row.update(
        k=job["k"],
        prompt_tokens_mean=float(np.mean(job["inputs"][1])),
        new_tokens=generated,
        seconds_median=seconds,
        seconds_all=list(times),
        tokens_per_s=generated / seconds,
    )
    if plain is None:
        row["ratio_vs_plain"] = 1.0
        return row
    counts = acceptance(out.stats, rows)
    plain_out, plain_rate = plain
    ratio = row["tokens_per_s"] / plain_rate
    a, c, depth = counts["a"], cost["c"], cost["K"]
    if job["controller"] == "fixed":
        depth = job["k"]
        best, best_k = ideal(a, c, depth), depth
    else:
        best, best_k = best_ideal(a, c, depth)
    row.update(
        ratio_vs_plain=ratio,
        accepted_per_call=counts["accepted"] / counts["rounds"] if counts["rounds"] else 0.0,
        target_calls_per_token=counts["target_calls"] / generated,
        drafted_per_call=counts["drafted"] / counts["rounds"] if counts["rounds"] else 0.0,
        a=a,
        c=c,
        K=depth,
        propose_s=cost["propose_s"],
        plain_step_s=cost["plain_step_s"],
        ideal=best,
        ideal_k=best_k,
        efficiency=ratio / best,
        counts=counts,
    )
    if job["temperature"] == 0.0:
        row["same_tokens_as_plain"] = bool(
            np.array_equal(np.asarray(out.tokens), np.asarray(plain_out.tokens))
        )
    return row


def _group(r) -> tuple:
    return (r["pair"], r["batch"], r["temperature"], r["prompt"])


def _same_cell(r, f) -> bool:
    return _group(f) == _group(r) and f["drafter"] == r["drafter"]


def cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (pair, batch, temperature, prompt, drafter): the default's ratio, the best
    fixed k's ratio (chains where swept), default / best fixed, a, c, efficiency."""
    out = []
    for r in rows:
        if r["controller"] != "default":
            continue
        fixed = [f for f in rows if f["controller"] == "fixed" and _same_cell(r, f)]
        best = max(fixed, key=lambda f: f["ratio_vs_plain"]) if fixed else None
        calibrated = [f for f in rows if f["controller"] == "calibrated" and _same_cell(r, f)]
        floor = [f for f in rows if f["controller"] == "floor" and _same_cell(r, f)]
        out.append(
            {
                **{key: r[key] for key in ("pair", "batch", "temperature", "prompt", "drafter")},
                "kind": "chain" if r["drafter"] in CHAINS else "tree",
                "tokens_per_s": r["tokens_per_s"],
                "default_ratio": r["ratio_vs_plain"],
                "best_fixed_ratio": None if best is None else best["ratio_vs_plain"],
                "best_fixed_k": None if best is None else best["k"],
                "best_fixed_tokens_per_s": None if best is None else best["tokens_per_s"],
                "default_over_best_fixed": None
                if best is None
                else r["ratio_vs_plain"] / best["ratio_vs_plain"],
                "calibrated_ratio": calibrated[0]["ratio_vs_plain"] if calibrated else None,
                "floor_ratio": floor[0]["ratio_vs_plain"] if floor else None,
                "accepted_per_call": r["accepted_per_call"],
                "drafted_per_call": r["drafted_per_call"],
                "target_calls_per_token": r["target_calls_per_token"],
                "a": r["a"],
                "c": r["c"],
                "ideal": r["ideal"],
                "ideal_k": r["ideal_k"],
                "efficiency": r["efficiency"],
                "same_tokens_as_plain": r.get("same_tokens_as_plain"),
            }
        )
    return out


def _where(cell: dict[str, Any]) -> str:
    return (
        f"{cell['pair']} B={cell['batch']} T={cell['temperature']:g} {cell['prompt']} "
        f"{cell['drafter']}"
    )


def _miss(cell: dict[str, Any], value: float, **extra) -> dict[str, Any]:
    return {
        "cell": _where(cell),
        "value": value,
        "a": cell["a"],
        "c": cell["c"],
        "accepted_per_call": cell["accepted_per_call"],
        **extra,
    }


# Why a cell runs below plain decoding, from its own measurements (``why``'s ``bound``):
BOUNDS = {
    "floor": "most of the loss is there with every round plain (the drafter's upkeep and "
    "the round's machinery): the floor loses at least as much as drafting does",
    "nothing_pays": "no draft length pays at the measured a and c even with verification "
    "free, yet the controller drafted: its cost estimate is too low here",
    "verification": "drafting pays in the ideal (free verification), but a drafting round "
    "costs more than the extra tokens: scoring the drafts and the round's other work "
    "(added steps less the drafts' compute)",
    "noise": "the floor reaches the goal and the controller drafted (almost) nothing: the "
    "gap to the floor is this machine's variation between runs",
}


def why(cell: dict[str, Any], goal: float = GOAL_MIN_RATIO) -> dict[str, Any]:
    """Why ``cell`` runs at ``default_ratio`` < ``goal`` of plain decoding, in its own numbers.

    Per target call (a round; the prefill counts as one, as in plain decoding) the default
    yields ``t = 1 / target_calls_per_token`` tokens and costs ``R = t / ratio`` plain decoding
    steps; with every round plain (the ``floor`` row, when run) a round yields one token and
    costs ``1 / floor`` steps, so ``R - 1 / floor`` is what drafting and verifying added per
    round (averaged over all rounds, plain ones included) against ``t - 1`` extra tokens. For
    chains, ``drafted_per_call * c`` of that is the drafts' own compute (``c`` measured
    standalone), the rest is verifying them and the round's other work. ``bound`` is the first
    that applies: ``floor`` (the floor misses the goal and loses at least as much,
    ``1 - floor``, as drafting loses on top of it, ``floor - ratio``), ``noise`` (fewer
    than 0.05 drafts per call), ``nothing_pays`` (the best ideal at the measured a, c is
    plain decoding), ``verification``; see ``BOUNDS``."""
    ratio, floor = cell["default_ratio"], cell.get("floor_ratio")
    calls = cell["target_calls_per_token"]
    tokens = 1.0 / calls if calls else math.nan
    round_steps = tokens / ratio
    drafted = cell.get("drafted_per_call", math.nan)
    out: dict[str, Any] = {
        "ratio": ratio,
        "floor_ratio": floor,
        "tokens_per_call": tokens,
        "round_plain_steps": round_steps,
        "drafted_per_call": drafted,
        "a": cell["a"],
        "c": cell["c"],
        "ideal": cell["ideal"],
        "ideal_k": cell["ideal_k"],
    }
    added = None if floor is None else round_steps - 1.0 / floor
    out["added_plain_steps"] = added
    out["draft_plain_steps"] = drafted * cell["c"] if cell["kind"] == "chain" else None
    # What the floor loses (1 - floor) against what drafting loses on top (floor - ratio).
    out["floor_loss"] = None if floor is None else 1.0 - floor
    out["drafting_loss"] = None if floor is None else floor - ratio
    if floor is not None and floor < goal and 1.0 - floor >= floor - ratio:
        bound = "floor"
    elif not drafted >= 0.05:  # the cell ran as its own floor
        bound = "floor" if floor is None or floor < goal else "noise"
    elif cell["ideal_k"] == 0:
        bound = "nothing_pays"
    else:
        bound = "verification"
    out["bound"] = bound
    text = (
        f"{ratio:.2f}x: {tokens:.2f} tokens per call for {round_steps:.2f} plain steps "
        f"(a={cell['a']:.2f}, c={cell['c']:.3f}, {drafted:.2f} drafted per call)"
    )
    if floor is not None:
        text += f"; every round plain {floor:.2f}x ({1.0 / floor:.2f} steps per token)"
        text += f"; drafting added {added:.2f} steps per call for {tokens - 1.0:.2f} tokens"
    if out["draft_plain_steps"] is not None:
        text += f", of which the drafts' compute {out['draft_plain_steps']:.2f}"
    text += f"; ideal {cell['ideal']:.2f} at K'={cell['ideal_k']}"
    out["text"] = text
    return out


def goals(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's goals over the ``cells``; every miss with its a and c."""
    out: dict[str, Any] = {}
    if not grid:
        return out
    low = min(grid, key=lambda cell: cell["default_ratio"])
    out["min_ratio"] = {
        "goal": f">= {GOAL_MIN_RATIO}",
        "value": low["default_ratio"],
        "argmin": _where(low),
        "passed": low["default_ratio"] >= GOAL_MIN_RATIO,
        "misses": [
            _miss(cell, cell["default_ratio"], why=why(cell))
            for cell in sorted(grid, key=lambda cell: cell["default_ratio"])
            if cell["default_ratio"] < GOAL_MIN_RATIO
        ],
    }
    bounds = [m["why"]["bound"] for m in out["min_ratio"]["misses"]]
    out["min_ratio"]["misses_by_bound"] = {b: bounds.count(b) for b in BOUNDS if b in bounds}
    draft = [
        cell
        for cell in grid
        if cell["drafter"] == "draft_model" and cell["batch"] == 1 and cell["temperature"] == 0.0
    ]
    out["draft_model_efficiency_batch1_greedy"] = {
        "goal": f">= {GOAL_EFFICIENCY}",
        "values": {_where(cell): cell["efficiency"] for cell in draft},
        "passed": all(cell["efficiency"] >= GOAL_EFFICIENCY for cell in draft) if draft else None,
        "misses": [
            _miss(
                cell,
                cell["efficiency"],
                ideal=cell["ideal"],
                ratio=cell["default_ratio"],
                why=why(cell),
            )
            for cell in draft
            if cell["efficiency"] < GOAL_EFFICIENCY
        ],
    }
    swept = [
        cell
        for cell in grid
        if cell["best_fixed_ratio"] is not None and cell["best_fixed_ratio"] > 1.0
    ]
    out["default_vs_best_fixed"] = {
        "goal": f"default / best fixed k >= {GOAL_DEFAULT_VS_FIXED} where best fixed > 1.0x",
        "cells": len(swept),
        "passed": all(c["default_over_best_fixed"] >= GOAL_DEFAULT_VS_FIXED for c in swept)
        if swept
        else None,
        "misses": [
            _miss(
                cell,
                cell["default_over_best_fixed"],
                best_fixed_k=cell["best_fixed_k"],
                best_fixed_ratio=cell["best_fixed_ratio"],
                default_ratio=cell["default_ratio"],
            )
            for cell in swept
            if cell["default_over_best_fixed"] < GOAL_DEFAULT_VS_FIXED
        ],
    }
    comparisons = []
    for key in sorted(
        {(c["pair"], c["temperature"], c["prompt"]) for c in grid if c["batch"] == 1}
    ):
        group = [
            c for c in grid if c["batch"] == 1 and (c["pair"], c["temperature"], c["prompt"]) == key
        ]
        chains = [c for c in group if c["kind"] == "chain"]
        trees = [c for c in group if c["kind"] == "tree"]
        if not chains or not trees:
            continue

        def rate(c):
            return max(c["tokens_per_s"], c["best_fixed_tokens_per_s"] or 0.0)

        chain, tree = max(chains, key=rate), max(trees, key=rate)
        comparisons.append(
            {
                "pair": key[0],
                "temperature": key[1],
                "prompt": key[2],
                "best_tree": tree["drafter"],
                "best_tree_tokens_per_s": rate(tree),
                "best_chain": chain["drafter"],
                "best_chain_tokens_per_s": rate(chain),
                "tree_over_chain": rate(tree) / rate(chain),
                "passed": rate(tree) >= rate(chain),
                "tree_a_c": (tree["a"], tree["c"]),
                "chain_a_c": (chain["a"], chain["c"]),
            }
        )
    out["trees_vs_best_chain_batch1"] = {
        "goal": "best tree tokens/s >= best chain tokens/s (default or any fixed k) at batch 1",
        "comparisons": comparisons,
        "passed": all(x["passed"] for x in comparisons) if comparisons else None,
        "misses": [x for x in comparisons if not x["passed"]],
    }
    return out


def resummarise(path: pathlib.Path, out_dir: pathlib.Path) -> dict[str, Any]:
    """The results of an earlier run at ``path`` with ``cells`` and ``goals`` recomputed from
    its ``rows`` by this code (written to ``out_dir``); nothing is run or timed."""
    if not path.is_file():
        raise ValueError(f"`resummarise`: expected a results.json file; got {str(path)!r}.")
    results = json.loads(path.read_text())
    _CALIBRATION_ERRORS[:] = results.get("calibration_errors", [])
    _summarise(results)
    results["resummarised_from"] = str(path)
    write(results, out_dir)
    return results


def _summarise(results: dict[str, Any]) -> None:
    results["calibration_errors"] = list(_CALIBRATION_ERRORS)
    results["cells"] = cells(results["rows"])
    results["goals"] = goals(results["cells"])
    results["all_greedy_same_tokens_as_plain"] = all(
        r.get("same_tokens_as_plain", True) for r in results["rows"]
    )


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs the grid; returns the figures (also written as JSON, PNG and markdown)."""
    started = time.perf_counter()
    config = effective(config)
    if config.resummarise:
        return resummarise(pathlib.Path(config.resummarise), pathlib.Path(config.output_dir))
    pairs = _pairs.check_pairs(config.pairs)
    progress = progress or (lambda x, **_: x)
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "config": config.to_dict(),
        "pairs": {},
        "rows": [],
    }
    setups: dict[str, dict[str, Any]] = {}
    jobs: list[dict[str, Any]] = []
    for pair in pairs:
        label = _pairs.label(pair)
        target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
        tokenizer = models.load_tokenizer(pair[0])
        margin = draft_margin(config)
        widths = {
            kind: prompt_width(config, kind, tokenizer, target.config, margin)
            for kind in config.prompts
        }
        setups[label] = {
            "target": target,
            "draft": draft,
            "prompts": {
                (batch, kind): prompts(config, tokenizer, batch, widths[kind])
                for batch in config.batch_sizes
                for kind in config.prompts
            },
        }
        results["pairs"][label] = {
            "target": pair[0],
            "draft": pair[1],
            "vocab_size": target.config.vocab_size,
            "target_params": target.config.num_params(),
            "draft_params": draft.config.num_params(),
            "prompt_widths": widths,
        }
        jobs += _jobs(config, label, setups[label])
    # One group (pair, batch, temperature, prompt) at a time: its costs, then every job
    # compiled and run once, then the repeats round-robin (plain and the drafters side by
    # side), then its programs are dropped (hundreds of live CPU executables exhaust the
    # process's memory maps). Batch sizes outermost, so a cut-short run (results.json is
    # written after every group, ``partial: true``) has the small batches of every pair.
    # Failures (of a cost or a job) are recorded in ``errors``; the grid goes on.
    errors: list[str] = []
    steps: dict[tuple, float] = {}
    costs: dict[tuple, dict[str, float]] = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for job in sorted(jobs, key=lambda j: (config.batch_sizes.index(j["batch"]),)):
        groups.setdefault(_group(job), []).append(job)
    results.update(compile_and_first_run_s=0.0, cost_measurement_s=0.0, timed_runs_s=0.0)
    for group_jobs in progress(list(groups.values()), desc="groups"):
        start = time.perf_counter()
        _costs(config, group_jobs, setups, errors, steps, costs)
        results["cost_measurement_s"] += time.perf_counter() - start
        start = time.perf_counter()
        kept, outputs = [], []
        for job in group_jobs:
            try:
                outputs.append(jax.block_until_ready(_call(job)))
                kept.append(job)
            except Exception as error:  # reported; the grid goes on
                errors.append(f"{_where(job)} {job['controller']} k={job['k']}: {error!r}"[:500])
        results["compile_and_first_run_s"] += time.perf_counter() - start
        start = time.perf_counter()
        timings: list[list[float]] = [[] for _ in kept]
        for _ in range(config.repeats):
            for job, times in zip(kept, timings, strict=True):
                begun = time.perf_counter()
                jax.block_until_ready(_call(job))
                times.append(time.perf_counter() - begun)
        results["timed_runs_s"] += time.perf_counter() - start
        plain = None
        for job, out, times in zip(kept, outputs, timings, strict=True):
            if job["drafter"] == "plain":
                row = _row(job, out, times, None, None)
                plain = (out, row["tokens_per_s"])
                results["rows"].append(row)
        for job, out, times in zip(kept, outputs, timings, strict=True):
            if job["drafter"] != "plain" and plain is not None:
                cost = costs.get(_cost_key(config, job), _NO_COST)
                results["rows"].append(_row(job, out, times, plain, cost))
        del kept, outputs
        _JITTED.clear()
        jax.clear_caches()
        gc.collect()
        results.update(partial=True, errors=errors, wall_s=time.perf_counter() - started)
        _summarise(results)
        write(results, pathlib.Path(config.output_dir))
    results["partial"] = False
    results["errors"] = errors
    results["wall_s"] = time.perf_counter() - started
    _summarise(results)
    write(results, pathlib.Path(config.output_dir))
    return results


# ---- output ----------------------------------------------------------------------------------


def write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    """``results.json``, ``results.png`` (heat map) and ``results.md`` (table) in ``out_dir``."""
    _common.write_json(results, out_dir / "results.json")
    _common.write_text(out_dir / "results.md", format_table(results) + "\n")
    plot(results, out_dir / "results.png")


def _columns(grid) -> list[tuple]:
    return sorted(
        {(c["batch"], c["temperature"], c["prompt"]) for c in grid},
        key=lambda col: (col[0], col[1], PROMPTS.index(col[2])),
    )


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    """Heat map of the default controller's tokens/s ratio to plain decoding, per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results["cells"]
    labels = list(results["pairs"])
    columns = _columns(grid)
    names = [n for n in DRAFTERS if any(c["drafter"] == n for c in grid)]
    fig, axes = plt.subplots(
        1,
        len(labels),
        figsize=(0.7 * max(len(columns), 1) * len(labels) + 3, 0.45 * len(names) + 2),
        squeeze=False,
    )
    for ax, label in zip(axes[0], labels, strict=True):
        values = np.full((len(names), len(columns)), np.nan)
        for c in grid:
            if c["pair"] == label:
                column = columns.index((c["batch"], c["temperature"], c["prompt"]))
                values[names.index(c["drafter"]), column] = c["default_ratio"]
        image = ax.imshow(values, cmap="RdYlGn", vmin=0.5, vmax=1.5, aspect="auto")
        for i in range(len(names)):
            for j in range(len(columns)):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(
            range(len(columns)),
            [f"B={b}\nT={t:g}\n{p}" for b, t, p in columns],
            fontsize=6,
        )
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{label}: tokens/s / plain (default controller)", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _common.save_figure(fig, path)
    plt.close(fig)


def _num(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _pair_tables(results: dict[str, Any], title: str, text_of: Callable) -> list[str]:
    """Per pair, a markdown table: rows = drafters, columns = batch x temperature x prompt;
    ``text_of(cell)`` fills a cell (``-`` where the grid has none); ``title`` follows the
    pair's label."""
    grid = results["cells"]
    columns = _columns(grid)
    names = [n for n in DRAFTERS if any(c["drafter"] == n for c in grid)]
    lines = []
    for label in results["pairs"]:
        found = {
            (c["drafter"], c["batch"], c["temperature"], c["prompt"]): c
            for c in grid
            if c["pair"] == label
        }
        lines += [
            f"**{label}**: {title}; columns B/T/prompt",
            "",
            "| drafter | " + " | ".join(f"{b}/{t:g}/{p}" for b, t, p in columns) + " |",
            "|---|" + "--:|" * len(columns),
        ]
        for name in names:
            cells = [found.get((name, *column)) for column in columns]
            values = ["-" if cell is None else text_of(cell) for cell in cells]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        lines.append("")
    return lines


def format_summary(results: dict[str, Any]) -> str:
    """Per pair, a markdown table of the default controller's tokens/s ratio to plain decoding:
    rows = drafters, columns = batch x temperature x prompt (the heat map as text)."""
    title = "tokens/s / plain decoding (default controller)"
    return "\n".join(_pair_tables(results, title, lambda cell: _num(cell["default_ratio"])))


_BOUND_LETTERS = {"floor": "F", "nothing_pays": "N", "verification": "V", "noise": "n"}


def _bound_text(cell: dict[str, Any]) -> str:
    """The default's ratio, the letter of what bounds it below the goal, the floor's ratio."""
    text = f"{cell['default_ratio']:.2f}"
    if cell["default_ratio"] < GOAL_MIN_RATIO:
        text += " " + _BOUND_LETTERS[why(cell)["bound"]]
    if cell.get("floor_ratio") is not None:
        text += f" ({cell['floor_ratio']:.2f})"
    return text


def format_bounds(results: dict[str, Any]) -> str:
    """Per pair, the default's ratio per cell with, where it misses the goal, what bounds
    it (``why``): F floor, N nothing pays, V verification, n noise; and the floor's ratio
    (every round plain) in brackets where it was run."""
    legend = ", ".join(f"{letter} {bound}" for bound, letter in _BOUND_LETTERS.items())
    head = f"Bounds of the cells below {GOAL_MIN_RATIO}: {legend}; (floor: every round plain)"
    title = "default controller x plain decoding (floor)"
    return "\n".join([head, "", *_pair_tables(results, title, _bound_text)])


def format_table(results: dict[str, Any]) -> str:
    """The grid as markdown (the README's): the per-pair summary, every cell with its
    numbers, then the goals."""
    lines = [
        format_summary(results),
        format_bounds(results),
        "| pair | B | T | prompt | drafter | x plain | best fixed (k) | default/fixed | "
        "acc/call | calls/tok | a | c | ideal (K') | eff. | =greedy |",
        "|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for c in results["cells"]:
        fixed = (
            "-"
            if c["best_fixed_ratio"] is None
            else f"{c['best_fixed_ratio']:.2f} ({c['best_fixed_k']})"
        )
        same = c["same_tokens_as_plain"]
        lines.append(
            f"| {c['pair']} | {c['batch']} | {c['temperature']:g} | {c['prompt']} | "
            f"{c['drafter']} | {c['default_ratio']:.2f} | {fixed} | "
            f"{_num(c['default_over_best_fixed'])} | {c['accepted_per_call']:.2f} | "
            f"{c['target_calls_per_token']:.3f} | {c['a']:.2f} | {c['c']:.3f} | "
            f"{c['ideal']:.2f} ({c['ideal_k']}) | {c['efficiency']:.2f} | "
            f"{'' if same is None else ('yes' if same else 'NO')} |"
        )
    g = results.get("goals", {})
    lines += ["", "Goals (issue 17):", ""]
    if "min_ratio" in g:
        m = g["min_ratio"]
        lines.append(
            f"- min tokens/s ratio vs plain {m['value']:.2f} (goal {m['goal']}) at {m['argmin']}: "
            f"{'PASS' if m['passed'] else 'FAIL'} ({len(m['misses'])} cells below)"
        )
        counts = m.get("misses_by_bound", {})
        if counts:
            lines.append(
                "  - cells below, by what bounds them: "
                + "; ".join(f"{bound} {n} ({BOUNDS[bound]})" for bound, n in counts.items())
            )
        e = g["draft_model_efficiency_batch1_greedy"]
        values = ", ".join(f"{k}: {v:.2f}" for k, v in e["values"].items())
        lines.append(f"- batch-1 greedy draft-model efficiency (goal {e['goal']}): {values}")
        d = g["default_vs_best_fixed"]
        lines.append(
            f"- default within 5% of best fixed k where speculation helps: "
            f"{d['cells'] - len(d['misses'])}/{d['cells']} cells"
        )
        for miss in d["misses"]:
            lines.append(
                f"  - miss {miss['cell']}: {miss['value']:.2f} (best k={miss['best_fixed_k']}, "
                f"a={miss['a']:.2f}, c={miss['c']:.3f})"
            )
        t = g["trees_vs_best_chain_batch1"]
        for x in t["comparisons"]:
            lines.append(
                f"- trees vs chains, {x['pair']} T={x['temperature']:g} {x['prompt']}: "
                f"{x['best_tree']} {x['best_tree_tokens_per_s']:.0f} vs {x['best_chain']} "
                f"{x['best_chain_tokens_per_s']:.0f} tok/s: {'PASS' if x['passed'] else 'FAIL'}"
            )
    misses = g.get("min_ratio", {}).get("misses", [])
    if misses:
        lines += ["", "Why each cell is below the goal (its own measurements; see `why`):", ""]
        lines += [f"- {m['cell']}: [{m['why']['bound']}] {m['why']['text']}" for m in misses]
    lines.append("")
    lines.append(
        f"Greedy tokens equal plain greedy's everywhere: "
        f"{results.get('all_greedy_same_tokens_as_plain')}; wall time "
        f"{results.get('wall_s', 0.0):.0f} s"
    )
    return "\n".join(lines)
