"""Leap+Verify on the reference transformer and the shipped corpus: the paper's tables at small
scale, then Leap+Verify run online against plain training, LAWA and ``optax.lookahead``.

Behind ``experiments/leap_verify.py``. For every seed:

1. **Baseline + offline analysis** (the paper's protocol, on a 2-core-CPU-sized model):
   plain AdamW (warmup + cosine) for ``num_steps`` steps; at every checkpoint
   (``delta`` steps apart) the fingerprint on fixed held-out probes, the held-out
   loss on one fixed acceptance batch, and the loss of every predictor's prediction
   ``K`` steps ahead, ``K`` in ``ks``; the actual loss ``K`` steps later is recorded
   when training gets there. Regimes use thresholds calibrated from the first
   ``calibration_checks`` checkpoints' similarities (30th / 70th percentiles).
   Tables: regime fractions; strict / adaptive / proximity (5% two-sided, 0.5%
   one-sided) acceptance by regime, predictor and ``K``; loss inflation
   (predicted / actual loss ``K`` steps later).
2. **Online**: the same training (same initialisation, batch of schedule position
   ``t`` = batch ``t`` of the baseline) wrapped in ``extrapolation.leap_verify``
   for each variant in ``online``: it runs until its schedule position reaches
   ``num_steps``; accepted leaps skip ``K`` steps of schedule and data.
   **LAWA**: the mean of the last ``lawa_k`` baseline checkpoints, evaluated at every
   checkpoint. **Lookahead**: ``optax.lookahead`` around the same AdamW, evaluated
   on its slow weights.
   For each: held-out loss (``eval_windows`` windows disjoint from the acceptance
   batch) every ``eval_every`` optimiser steps; optimiser steps and training wall
   time until the baseline's final held-out loss is first reached; final loss.

Wall time counts only training steps (each blocked until done; evaluation for the
curves excluded), compilation excluded; the machine may be shared, so steps are the
primary figure. Writes ``results.json``, ``regimes.png``, ``acceptance.png`` and
``online.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.benchmarks import _common
from lookahead_jax import extrapolation as ex
from lookahead_jax import metrics
from lookahead_jax.data import batch_for_step, eval_windows, token_prompts, token_stream
from lookahead_jax.models import FAMILIES, TransformerConfig, apply, init_params, load_tokenizer

PREDICTORS = ("linear", "quadratic", "quadratic_clamped", "momentum", "momentum_paper")
CRITERIA = ("strict", "adaptive", "proximity_5pct", "proximity_0.5pct_one_sided")
REGIMES = ("chaotic", "transition", "stable")


def default_config() -> ml_collections.ConfigDict:
    """Defaults sized for a 2-core CPU: 3 seeds in ~14 minutes (measured while shared)."""
    c = ml_collections.ConfigDict()
    # A small reference transformer on bytes of the shipped corpus (~120k parameters).
    # ``family`` picks the architecture (models.FAMILIES: gpt2, llama, qwen2, ...) and
    # ``tokenizer`` the ids ("bytes" or a load_tokenizer name, e.g. "tiny-llama" with
    # vocab_size=4096 and family="llama"); with BPE the losses are per token.
    c.model = ml_collections.ConfigDict(
        dict(vocab_size=256, num_layers=2, num_heads=4, d_model=64, max_length=64, family="gpt2")
    )
    c.tokenizer = "bytes"
    c.seq_len = 64
    c.batch_size = 16
    # AdamW, linear warmup then cosine decay (as experiments/train_lm.py).
    c.num_steps = 1000
    c.learning_rate = 3e-3
    c.warmup_steps = 50
    c.end_lr_ratio = 0.1
    c.weight_decay = 0.1
    c.b1 = 0.9
    c.b2 = 0.99
    c.grad_clip = 1.0
    c.seeds = (0, 1, 2)
    # Leap+Verify: checkpoints every `delta` steps (40 over the run, as in the paper),
    # prediction horizons, fingerprints, thresholds calibrated on the warm-up checkpoints.
    c.delta = 25
    c.ks = (5, 10, 25, 50)
    c.num_probes = 32
    c.probe_length = 64
    c.similarity_mode = "concat"
    c.calibration_checks = 10
    c.low_percentile = 30.0
    c.high_percentile = 70.0
    c.sigma_window = 5
    c.momentum_scale = 1.0
    # Held-out data: one fixed acceptance batch and disjoint evaluation windows.
    c.acceptance_windows = 16
    c.eval_windows = 192
    c.eval_every = 10
    # Online variants "method:criterion:K:leap_in" (leap_in as in LeapConfig).
    c.online = (
        "linear:strict:25:stable_confirmed",
        "linear:adaptive:5:stable_confirmed",
        "linear:adaptive:10:stable_confirmed",
        "linear:proximity:10:stable_confirmed",
    )
    c.lawa_k = 5
    c.lookahead_sync_period = 5
    c.lookahead_slow_step = 0.5
    c.output_dir = "outputs/leap_verify"
    return c


# --------------------------------------------------------------------------- training pieces


def _schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
    warmup = min(c.warmup_steps, c.num_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, warmup, max(c.num_steps, warmup + 1), c.learning_rate * c.end_lr_ratio
    )


def _decay_mask(params):
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name.endswith("kernel") or name in ("wte", "wpe")

    return jax.tree_util.tree_map_with_path(decays, params)


def _optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.adamw(_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=_decay_mask),
    )


class Setup:
    """Model, data and compiled functions shared by every seed and method."""

    def __init__(self, c: ml_collections.ConfigDict):
        self.c = c
        fields = c.model.to_dict()
        family = fields.pop("family", "gpt2")
        if family not in FAMILIES:
            raise ValueError(f"`model.family` must be one of {tuple(FAMILIES)}; got {family!r}.")
        self.model: TransformerConfig = FAMILIES[family](**fields)
        if c.seq_len > self.model.max_length:
            raise ValueError(f"`seq_len`={c.seq_len} exceeds max_length={self.model.max_length}.")
        tokenizer = load_tokenizer(c.get("tokenizer", "bytes"))
        if tokenizer.vocab_size > self.model.vocab_size:
            raise ValueError(
                f"`model.vocab_size`={self.model.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size} ids."
            )
        self.train = token_stream(tokenizer, "train")
        windows = eval_windows(token_stream(tokenizer, "heldout"), c.seq_len)
        if c.eval_windows + c.acceptance_windows > len(windows):
            raise ValueError(
                f"`eval_windows` + `acceptance_windows` must be <= {len(windows)} held-out "
                f"windows; got {c.eval_windows} + {c.acceptance_windows}."
            )
        self.eval_set = jnp.asarray(windows[: c.eval_windows])
        self.acceptance = jnp.asarray(windows[-c.acceptance_windows :])  # disjoint from eval_set
        probes, lengths = token_prompts(tokenizer, c.num_probes, c.probe_length, seed=1234)
        self.probes, self.lengths = jnp.asarray(probes), jnp.asarray(lengths)
        model = self.model

        def loss(params, batch):
            logits, _ = apply(model, params, batch[:, :-1])
            return jnp.mean(metrics.token_nll(logits, batch[:, 1:]))

        self.loss = loss
        self.acceptance_loss = lambda p: loss(p, self.acceptance)
        self.fingerprint = lambda p: ex.model_fingerprint(model, p, self.probes, self.lengths)
        self.eval_loss = jax.jit(lambda p: loss(p, self.eval_set))
        self.jit_acceptance_loss = jax.jit(self.acceptance_loss)
        self.optimizer = _optimizer(c)
        self.train_step = jax.jit(ex.make_train_step(loss, self.optimizer))
        self.schedule = _schedule(c)
        self.analyse = jax.jit(self._analyse)

    def batch(self, seed: int, step: int) -> jax.Array:
        c = self.c
        return jnp.asarray(batch_for_step(self.train, seed, step, c.batch_size, c.seq_len))

    def _analyse(self, older, prev, cur, opt_state, lr):
        """Losses at one checkpoint: current, and every predictor at every K -> [5, len(ks)]."""
        c = self.c
        ks = jnp.asarray(c.ks, jnp.float32)
        moments = ex.adam_moments(opt_state, c.b1, c.b2)

        def predicted_loss(k, method):
            if method == "momentum":
                p = ex.predict(
                    "momentum", [cur], k, c.delta, moments=moments, learning_rate=lr,
                    scale=c.momentum_scale,
                )  # fmt: skip
            elif method == "momentum_paper":  # as printed: +K m / (sqrt(v) + eps)
                p = ex.predict(
                    "momentum", [cur], k, c.delta, moments=moments, learning_rate=1.0, sign="paper"
                )
            else:
                p = ex.predict(method, [older, prev, cur], k, c.delta)
            return self.acceptance_loss(p)

        rows = [jax.lax.map(lambda k, m=m: predicted_loss(k, m), ks) for m in PREDICTORS]
        return self.acceptance_loss(cur), jnp.stack(rows), self.fingerprint(cur)


def _warm_up(step, state, batch) -> None:
    """Compiles ``step`` (and runs it once, result discarded) so timings exclude compilation."""
    jax.block_until_ready(step(state, batch))


def _timed(step, state, batch):
    start = time.perf_counter()
    state, info = step(state, batch)
    jax.block_until_ready(info.loss)
    return state, info, time.perf_counter() - start


# --------------------------------------------------------------------------- per seed


def baseline(s: Setup, seed: int, progress) -> dict[str, Any]:
    """Plain training with the offline Leap+Verify analysis at every checkpoint."""
    c = s.c
    params = init_params(s.model, jax.random.key(seed))
    state = ex.init_train_state(params, s.optimizer)
    history = [params]
    fingerprints = [np.asarray(s.fingerprint(params))]
    cur_losses, pred_losses, checkpoints, check_params = [], [], [], []
    actual: dict[int, float] = {}
    needed = {t + k for t in range(c.delta, c.num_steps + 1, c.delta) for k in c.ks}
    curve = [(0, float(s.eval_loss(params)))]
    times = []
    _warm_up(s.train_step, state, s.batch(seed, 0))
    steps = range(c.num_steps)
    for step in progress(steps, desc=f"seed {seed} baseline", leave=False) if progress else steps:
        state, _, seconds = _timed(s.train_step, state, s.batch(seed, step))
        times.append(seconds)
        done = step + 1
        if done % c.eval_every == 0 or done == c.num_steps:
            curve.append((done, float(s.eval_loss(state.params))))
        if done in needed:
            actual[done] = float(s.jit_acceptance_loss(state.params))
        if done % c.delta == 0:
            h = [*history, state.params][-3:]
            h = [h[0]] * (3 - len(h)) + h  # padded; results without history are masked out
            lr = s.schedule(done)
            cur, pred, fp = s.analyse(*h, state.opt_state, lr)
            history.append(state.params)
            history = history[-3:]
            checkpoints.append(done)
            check_params.append(state.params)
            cur_losses.append(float(cur))
            pred_losses.append(np.asarray(pred))
            fingerprints.append(np.asarray(fp))
    sims = [
        float(ex.cosine_similarity(a, b, c.similarity_mode))
        for a, b in itertools.pairwise(fingerprints)
    ]
    return dict(
        checkpoints=checkpoints,
        similarities=sims,
        current_loss=cur_losses,
        predicted_loss=np.stack(pred_losses),  # [C, predictors, ks]
        actual=actual,
        curve=curve,
        step_times=times,
        check_params=check_params,
    )


def offline_tables(c: ml_collections.ConfigDict, base: dict[str, Any]) -> dict[str, Any]:
    """Regimes and per-checkpoint acceptance / inflation records of one seed."""
    sims = np.asarray(base["similarities"], np.float32)
    tau = ex.calibrate_thresholds(sims[: c.calibration_checks], c.low_percentile, c.high_percentile)
    tau_low, tau_high = float(tau.tau_low), float(tau.tau_high)
    regimes = np.asarray(ex.classify_regime(sims, tau_low, tau_high))
    confirmed = np.asarray(ex.confirmed_stable(regimes))
    cur = np.asarray(base["current_loss"])
    pred = base["predicted_loss"]
    records = []
    for i, t in enumerate(base["checkpoints"]):
        recent = cur[max(0, i - c.sigma_window + 1) : i + 1]
        sigma = float(np.std(recent)) if len(recent) >= 2 else 0.0
        for p, name in enumerate(PREDICTORS):
            if name in ("quadratic", "quadratic_clamped") and i < 1:
                continue  # needs snapshots at t - 2 delta >= 0 (step 0 is the first snapshot)
            for j, k in enumerate(c.ks):
                lp = float(pred[i, p, j])
                accepted = {
                    "strict": bool(ex.accept("strict", lp, cur[i])),
                    "adaptive": bool(ex.accept("adaptive", lp, cur[i], sigma=sigma)),
                    "proximity_5pct": bool(ex.accept("proximity", lp, cur[i], eps=0.05)),
                    "proximity_0.5pct_one_sided": bool(
                        ex.accept("proximity", lp, cur[i], eps=0.005, one_sided=True)
                    ),
                }
                actual = base["actual"].get(t + k)
                records.append(
                    dict(
                        step=t,
                        regime=ex.REGIME_NAMES[int(regimes[i])],
                        confirmed=bool(confirmed[i]),
                        predictor=name,
                        k=k,
                        current_loss=float(cur[i]),
                        predicted_loss=lp,
                        actual_loss=actual,
                        accepted=accepted,
                    )
                )
    return dict(
        thresholds=(tau_low, tau_high),
        regimes=[ex.REGIME_NAMES[int(r)] for r in regimes],
        confirmed=confirmed.tolist(),
        fractions=ex.regime_fractions(regimes),
        records=records,
    )


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    for step, loss in curve:
        if loss <= target:
            return step
    return None


def _time_at(times: list[float], steps: int | None) -> float | None:
    return None if steps is None else float(np.sum(times[:steps]))


def online_run(s: Setup, seed: int, variant: str, progress) -> dict[str, Any]:
    c = s.c
    method, criterion, k, leap_in = variant.split(":")
    max_checks = c.num_steps // c.delta + 2
    config = ex.LeapConfig(
        delta=c.delta,
        k=int(k),
        method=method,
        criterion=criterion,
        leap_in=leap_in,
        calibration_checks=c.calibration_checks,
        low_percentile=c.low_percentile,
        high_percentile=c.high_percentile,
        similarity_mode=c.similarity_mode,
        sigma_window=c.sigma_window,
        max_checks=max_checks,
        learning_rate=s.schedule if method == "momentum" else None,
        b1=c.b1,
        b2=c.b2,
    )
    optimizer = ex.leap_verify(
        s.optimizer, config, heldout_loss=s.acceptance_loss, fingerprint=s.fingerprint
    )
    step_fn = s.online_steps.setdefault(variant, jax.jit(ex.make_train_step(s.loss, optimizer)))
    state = ex.init_train_state(init_params(s.model, jax.random.key(seed)), optimizer)
    curve = [(0, float(s.eval_loss(state.params)))]
    _warm_up(step_fn, state, s.batch(seed, 0))
    times, position, count = [], 0, 0
    bar = (
        progress(total=c.num_steps, desc=f"seed {seed} {variant}", leave=False)
        if progress
        else None
    )
    while position < c.num_steps:
        state, _, seconds = _timed(step_fn, state, s.batch(seed, position))
        times.append(seconds)
        count += 1
        new_position = int(state.opt_state.position)
        if bar is not None:
            bar.update(min(new_position, c.num_steps) - position)
        position = new_position
        if count % c.eval_every == 0 or position >= c.num_steps:
            curve.append((count, float(s.eval_loss(state.params))))
    if bar is not None:
        bar.close()
    leap = state.opt_state
    n = int(leap.num_checks)
    return dict(
        variant=variant,
        curve=curve,
        step_times=times,
        optimizer_steps=count,
        attempts=int(leap.attempts),
        accepts=int(leap.accepts),
        thresholds=[float(leap.thresholds.tau_low), float(leap.thresholds.tau_high)],
        check_positions=np.asarray(leap.check_positions[:n]).tolist(),
        check_regimes=[ex.REGIME_NAMES[int(r)] for r in np.asarray(leap.regimes[:n])],
        check_decisions=np.asarray(leap.decisions[:n]).tolist(),
    )


def _lookahead(s: Setup, seed: int, progress) -> dict[str, Any]:
    c = s.c
    optimizer = optax.lookahead(s.optimizer, c.lookahead_sync_period, c.lookahead_slow_step)

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(s.loss)(params.fast, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), ex.StepInfo(loss, None)

    step_fn = s.online_steps.setdefault("lookahead", jax.jit(step))
    params = optax.LookaheadParams.init_synced(init_params(s.model, jax.random.key(seed)))
    state = (params, optimizer.init(params))
    curve = [(0, float(s.eval_loss(params.slow)))]
    _warm_up(step_fn, state, s.batch(seed, 0))
    times = []
    steps = range(c.num_steps)
    for t in progress(steps, desc=f"seed {seed} lookahead", leave=False) if progress else steps:
        state, _, seconds = _timed(step_fn, state, s.batch(seed, t))
        times.append(seconds)
        if (t + 1) % c.eval_every == 0 or t + 1 == c.num_steps:
            curve.append((t + 1, float(s.eval_loss(state[0].slow))))
    return dict(curve=curve, step_times=times, optimizer_steps=c.num_steps)


def _lawa(s: Setup, base: dict[str, Any]) -> dict[str, Any]:
    c = s.c
    curve = []
    for i, t in enumerate(base["checkpoints"]):
        window = base["check_params"][max(0, i - c.lawa_k + 1) : i + 1]
        curve.append((t, float(s.eval_loss(ex.lawa(window)))))
    return dict(curve=curve, step_times=base["step_times"], optimizer_steps=c.num_steps)


# --------------------------------------------------------------------------- aggregation


def _acceptance_table(records: list[dict[str, Any]], ks) -> dict[str, Any]:
    """rate[criterion][regime][predictor][k] = (accepted fraction, count)."""
    table: dict[str, Any] = {}
    for criterion in CRITERIA:
        table[criterion] = {}
        for regime in (*REGIMES, "stable_confirmed", "all"):
            table[criterion][regime] = {}
            for predictor in PREDICTORS:
                row = {}
                for k in ks:
                    sel = [
                        r
                        for r in records
                        if r["predictor"] == predictor
                        and r["k"] == k
                        and (
                            regime == "all"
                            or (regime == "stable_confirmed" and r["confirmed"])
                            or r["regime"] == regime
                        )
                    ]
                    n = len(sel)
                    rate = sum(r["accepted"][criterion] for r in sel) / n if n else None
                    row[str(k)] = {"rate": rate, "n": n}
                table[criterion][regime][predictor] = row
    return table


def _inflation_table(records: list[dict[str, Any]], ks) -> dict[str, Any]:
    """Median (and max) of predicted loss / actual loss K steps later, per predictor and K."""
    out: dict[str, Any] = {}
    for predictor in PREDICTORS:
        out[predictor] = {}
        for k in ks:
            ratios = [
                r["predicted_loss"] / r["actual_loss"]
                for r in records
                if r["predictor"] == predictor and r["k"] == k and r["actual_loss"] is not None
            ]
            ratios = [x for x in ratios if math.isfinite(x)] or [float("nan")]
            out[predictor][str(k)] = {
                "median": float(np.median(ratios)),
                "max": float(np.max(ratios)),
                "n": len(ratios),
            }
    return out


def _summary(
    runs: list[dict[str, Any]], targets: list[float], baselines: list[dict[str, Any]]
) -> dict[str, Any]:
    """Across seeds: steps / wall time to the baseline's final loss, final loss, and the
    baseline's steps to reach this method's final loss (its step-equivalent)."""
    steps, walls, finals, totals, per_step, equivalent = [], [], [], [], [], []
    for run, target, base in zip(runs, targets, baselines, strict=True):
        reached = steps_to(run["curve"], target)
        steps.append(reached)
        walls.append(_time_at(run["step_times"], reached))
        finals.append(run["curve"][-1][1])
        equivalent.append(steps_to(base["curve"], finals[-1]))
        totals.append(run["optimizer_steps"])
        per_step.append(float(np.median(run["step_times"])))
    hit = [x for x in steps if x is not None]
    wall_hit = [x for x in walls if x is not None]
    return dict(
        steps_to_target=steps,
        wall_to_target_s=walls,
        final_loss=finals,
        optimizer_steps=totals,
        median_step_ms=1e3 * float(np.median(per_step)),
        mean_steps_to_target=float(np.mean(hit)) if hit else None,
        mean_wall_to_target_s=float(np.mean(wall_hit)) if wall_hit else None,
        reached=f"{len(hit)}/{len(steps)}",
        baseline_steps_to_final_loss=equivalent,
        mean_final_loss=float(np.mean(finals)),
    )


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs the whole study; returns (and writes) the results."""
    c = config
    started = time.perf_counter()
    s = Setup(c)
    s.online_steps = {}
    per_seed = []
    for seed in c.seeds:
        base = baseline(s, seed, progress)
        offline = offline_tables(c, base)
        online = {v: online_run(s, seed, v, progress) for v in c.online}
        lookahead = _lookahead(s, seed, progress)
        lawa = _lawa(s, base)
        base.pop("check_params")
        base["predicted_loss"] = base["predicted_loss"].tolist()
        base["actual"] = {str(k): v for k, v in base["actual"].items()}
        per_seed.append(
            dict(
                seed=seed,
                baseline=dict(base, optimizer_steps=c.num_steps),
                offline=offline,
                online=online,
                lookahead=lookahead,
                lawa=lawa,
            )
        )
    records = [r for p in per_seed for r in p["offline"]["records"]]
    targets = [p["baseline"]["curve"][-1][1] for p in per_seed]
    methods = {"baseline": [p["baseline"] for p in per_seed]}
    methods.update({f"leap {v}": [p["online"][v] for p in per_seed] for v in c.online})
    methods["LAWA"] = [p["lawa"] for p in per_seed]
    methods["optax.lookahead"] = [p["lookahead"] for p in per_seed]
    online_summary = {
        name: _summary(runs, targets, methods["baseline"]) for name, runs in methods.items()
    }
    for name, v in zip(list(methods)[1 : 1 + len(c.online)], c.online, strict=True):
        online_summary[name]["accepts"] = [p["online"][v]["accepts"] for p in per_seed]
        online_summary[name]["attempts"] = [p["online"][v]["attempts"] for p in per_seed]
    fractions = {
        name: float(np.mean([p["offline"]["fractions"][name] for p in per_seed]))
        for name in ex.REGIME_NAMES
    }
    regimes = np.asarray([p["offline"]["regimes"] for p in per_seed])
    results = dict(
        config=c.to_dict(),
        num_params=s.model.num_params(),
        backend=jax.default_backend(),
        num_checkpoints=len(per_seed[0]["baseline"]["checkpoints"]),
        regime_fractions=fractions,
        regime_agreement_across_seeds=float(np.mean(np.all(regimes == regimes[:1], axis=0))),
        thresholds=[p["offline"]["thresholds"] for p in per_seed],
        acceptance=_acceptance_table(records, c.ks),
        inflation=_inflation_table(records, c.ks),
        target_loss=targets,
        online=online_summary,
        per_seed=per_seed,
        wall_seconds=time.perf_counter() - started,
    )
    _common.write_json(results, os.path.join(c.output_dir, "results.json"), indent=1)
    _plots(results, c.output_dir)
    return results


# --------------------------------------------------------------------------- output


def _plots(results: dict[str, Any], out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "unknown": "0.6",
        "chaotic": "tab:red",
        "transition": "tab:orange",
        "stable": "tab:green",
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, p in enumerate(results["per_seed"]):
        steps = np.asarray(p["baseline"]["checkpoints"])
        gap = 1.0 - np.asarray(p["baseline"]["similarities"])
        ax.plot(steps, gap, "-", color="0.7", lw=0.8, zorder=1)
        for name, color in colors.items():
            sel = np.asarray(p["offline"]["regimes"]) == name
            ax.scatter(steps[sel], gap[sel], s=14, color=color, zorder=2,
                       label=name if i == 0 else None)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("1 - cosine(fingerprint_t, fingerprint_{t-Δ})")
    ax.set_title("Regime timeline (all seeds; thresholds from warm-up percentiles)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(out_dir, "regimes.png"))
    plt.close(fig)

    ks = [str(k) for k in results["config"]["ks"]]
    panels = [("strict", r) for r in REGIMES] + [("proximity_5pct", "stable")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (criterion, regime) in zip(axes[0], panels, strict=True):
        table = results["acceptance"][criterion][regime]
        grid = np.array(
            [[np.nan if table[p][k]["rate"] is None else table[p][k]["rate"] for k in ks]
             for p in PREDICTORS]
        )  # fmt: skip
        ax.imshow(grid * 100, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            text = "-" if np.isnan(value) else f"{100 * value:.0f}"
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=8)
        n = table[PREDICTORS[0]][ks[0]]["n"]
        ax.set_title(f"{criterion}, {regime} (n≈{n})", fontsize=9)
        ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks], fontsize=8)
        ax.set_yticks(range(len(PREDICTORS)), PREDICTORS, fontsize=8)
    fig.suptitle("Acceptance (%) by regime, predictor and K")
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(out_dir, "acceptance.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    p = results["per_seed"][0]
    curves = {"baseline": p["baseline"]["curve"]}
    curves.update({f"leap {v}": r["curve"] for v, r in p["online"].items()})
    curves["LAWA"] = p["lawa"]["curve"]
    curves["optax.lookahead"] = p["lookahead"]["curve"]
    zoom = ax.inset_axes([0.5, 0.5, 0.48, 0.47])  # the last fifth of training
    last = 0.8 * results["config"]["num_steps"]
    for name, curve in curves.items():
        steps, losses = zip(*curve, strict=True)
        bits = np.asarray(losses) / math.log(2)
        ax.plot(steps, bits, lw=1.2, label=name)
        keep = np.asarray(steps) >= last
        zoom.plot(np.asarray(steps)[keep], bits[keep], lw=1.2)
    zoom.axhline(results["target_loss"][0] / math.log(2), color="k", ls=":", lw=0.8)
    tail = [x / math.log(2) for t, x in p["baseline"]["curve"] if t >= last]
    zoom.set_ylim(min(tail) * 0.99, max(tail) * 1.01)  # baseline's range (lookahead may be off)
    zoom.tick_params(labelsize=7)
    zoom.grid(alpha=0.3)
    ax.axhline(results["target_loss"][0] / math.log(2), color="k", ls=":", lw=0.8,
               label="baseline final")  # fmt: skip
    start = max(1, len(p["baseline"]["curve"]) // 3)
    tail = [x for _, x in p["baseline"]["curve"][start:]]
    ax.set_ylim(min(tail) / math.log(2) * 0.97, max(tail) / math.log(2) * 1.05)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"Online: held-out loss vs optimiser steps (seed {p['seed']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(out_dir, "online.png"))
    plt.close(fig)


def _pct(cell: dict[str, Any]) -> str:
    return "   -" if cell["rate"] is None else f"{100 * cell['rate']:4.0f}"


def format_table(results: dict[str, Any]) -> str:
    """The study as plain-text tables."""
    ks = [str(k) for k in results["config"]["ks"]]
    lines = [
        f"{results['num_params']:,} params, {results['num_checkpoints']} checkpoints/seed, "
        f"{len(results['per_seed'])} seeds, {results['wall_seconds']:.0f} s",
        "regime fractions: "
        + "  ".join(f"{k} {100 * v:.1f}%" for k, v in results["regime_fractions"].items())
        + f"  (all seeds agree on {100 * results['regime_agreement_across_seeds']:.0f}% of "
        "checkpoints)",
    ]
    for criterion in CRITERIA:
        lines.append(f"\nacceptance % ({criterion}); columns K = {', '.join(ks)}; n per cell")
        for regime in (*REGIMES, "stable_confirmed"):
            for predictor in PREDICTORS:
                row = results["acceptance"][criterion][regime][predictor]
                cells = " ".join(_pct(row[k]) for k in ks)
                lines.append(f"  {regime:16s} {predictor:18s} {cells}   n={row[ks[0]]['n']}")
    lines.append("\nloss inflation: median (max) of predicted / actual loss K steps later")
    for predictor in PREDICTORS:
        row = results["inflation"][predictor]
        cells = "  ".join(f"{row[k]['median']:8.3g} ({row[k]['max']:.3g})" for k in ks)
        lines.append(f"  {predictor:18s} {cells}")
    lines.append(
        "\nonline (mean over seeds): optimiser steps and training seconds to the baseline's final "
        "held-out loss, final loss (bits/byte) and the baseline's steps to reach it, total "
        "optimiser steps, median step time"
    )
    for name, r in results["online"].items():
        steps = "never" if r["mean_steps_to_target"] is None else f"{r['mean_steps_to_target']:.0f}"
        wall = "-" if r["mean_wall_to_target_s"] is None else f"{r['mean_wall_to_target_s']:.1f}"
        extra = ""
        if "accepts" in r:
            extra = f"  leaps {sum(r['accepts'])}/{sum(r['attempts'])} accepted"
        equivalent = r["baseline_steps_to_final_loss"]
        same = "-" if None in equivalent else f"{np.mean(equivalent):.0f}"
        lines.append(
            f"  {name:44s} steps {steps:>5s} ({r['reached']})  {wall:>6s} s  "
            f"final {r['mean_final_loss'] / math.log(2):.4f} (baseline needs {same:>4s})  "
            f"total {np.mean(r['optimizer_steps']):.0f}  {r['median_step_ms']:.1f} ms/step{extra}"
        )
    return "\n".join(lines)
