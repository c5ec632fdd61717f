"""What one drafting round costs a whole generation on this backend (issues 17 and 19).

The default controller drafts a round now and then where drafting does not pay: its
first round (before any acceptance is known) and its probes. Priced as one round, that
is a few plain steps per generation. On XLA:CPU it can cost far more: after a round of
the draft model the rest of the generation's plain rounds ran slower in about half the
runs (the timings are bimodal; in a profile the slow runs executed every later kernel on
one thread, where the fast ones spread independent kernels over two). This benchmark
measures it directly, with controllers that follow a fixed schedule:

- ``never``: every round plain, decided at run time (the drafting loop is compiled in
  and asked every round, as under the default controller, but never entered);
- ``first`` / ``middle``: one round drafting ``config.round_size`` tokens, the first
  round or the round at the middle of the budget, every other round plain;
- ``always``: every round drafts ``config.round_size`` (the round's steady cost).

Per (pair, drafter, temperature), the same prompt, every program compiled first and
then timed interleaved ``config.repeats`` times. Reported per schedule: the time of
every run, its quantiles, and the extra time over ``never`` in plain steps (``never``'s
median over its rounds); for ``always`` the steady cost of a drafting round in plain
steps. Plain decoding (no drafter) runs beside them as the reference of the ratios.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from experiments.benchmarks import speculation_grid as _grid
from lookahead_jax import drafting, models

SCHEDULES = ("never", "first", "middle", "always")


def default_config() -> ml_collections.ConfigDict:
    config = _grid.default_config()  # the drafters' settings, prompts and budgets
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.drafters = ("draft_model", "early_exit", "prompt_lookup")  # chains
    config.temperatures = (0.0, 1.0)
    config.prompt = "short"
    config.round_size = 4  # tokens drafted by a scheduled drafting round
    config.repeats = 21
    config.output_dir = "outputs/isolated_round"
    return config


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.pairs = config.pairs[:1]
        config.drafters = ("draft_model",)
        config.temperatures = (0.0,)
        config.max_new_tokens = 12
        config.repeats = 3
    if not 1 <= config.round_size <= config.max_draft_tokens:
        raise ValueError(
            "`round_size` must lie in [1, max_draft_tokens = "
            f"{config.max_draft_tokens}]; got {config.round_size!r}."
        )
    if config.repeats < 1:
        raise ValueError(f"`repeats` must be >= 1; got {config.repeats!r}.")
    return config


def scheduled(sizes_by_round: dict[int, int], num_rounds: int) -> drafting.Controller:
    """A chain controller drafting ``sizes_by_round[r]`` tokens at round ``r`` (0: plain).

    Its state counts rounds, so the choice is a traced value: the compiler keeps the
    drafting loop and asks it every round, as it does for the default controller.
    """
    table = np.zeros((num_rounds + 1,), np.int32)
    for round_index, size in sizes_by_round.items():
        table[round_index] = size

    def init(batch_size: int, max_draft: int) -> jax.Array:
        del max_draft
        return jnp.zeros((batch_size,), jnp.int32)  # [B] rounds so far

    def num_draft(state: jax.Array, active: jax.Array | None = None) -> jax.Array:
        del active
        return jnp.asarray(table)[jnp.minimum(state, num_rounds)]

    def update(state: jax.Array, num_drafted: jax.Array, num_accepted: jax.Array) -> jax.Array:
        del num_drafted, num_accepted
        return state + 1

    return drafting.Controller(init=init, num_draft=num_draft, update=update)


def _schedule(name: str, config) -> dict[int, int]:
    rounds, size = config.max_new_tokens, config.round_size
    return {
        "never": {},
        "first": {0: size},
        "middle": {rounds // 2: size},
        "always": dict.fromkeys(range(rounds + 1), size),
    }[name]


def _quantiles(times: list[float]) -> dict[str, float]:
    q10, q50, q90 = np.quantile(times, [0.1, 0.5, 0.9])
    return {"p10_s": float(q10), "median_s": float(q50), "p90_s": float(q90)}


def measure(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    config = _effective(config)
    cells = [
        (pair, name, temperature)
        for pair in config.pairs
        for name in config.drafters
        for temperature in config.temperatures
    ]
    bar = progress(total=len(cells), desc="isolated round") if progress else None
    rows = []
    for pair in config.pairs:
        target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
        tokenizer = models.load_tokenizer(pair[0])
        width = _grid.prompt_width(
            config, config.prompt, tokenizer, target.config, _grid.draft_margin(config)
        )
        prompt, lengths = map(jnp.asarray, _grid.prompts(config, tokenizer, 1, width))
        args = (target, draft, prompt, lengths, jax.random.key(config.seed))
        for name in config.drafters:
            for temperature in config.temperatures:
                jobs = {"plain": _grid.runner(config, None, 0, temperature)}
                for schedule in SCHEDULES:
                    controller = scheduled(_schedule(schedule, config), config.max_new_tokens)
                    jobs[schedule] = _grid.runner(
                        config, name, config.max_draft_tokens, temperature, controller
                    )
                outputs = {job: jax.block_until_ready(fn(*args)) for job, fn in jobs.items()}
                times: dict[str, list[float]] = {job: [] for job in jobs}
                order = list(jobs)
                for repeat in range(config.repeats):  # interleaved, rotating the order
                    shift = repeat % len(order)
                    for job in order[shift:] + order[:shift]:
                        start = time.perf_counter()
                        jax.block_until_ready(jobs[job](*args))
                        times[job].append(time.perf_counter() - start)
                rows.append(_row(pair, name, temperature, outputs, times))
                jax.clear_caches()
                if bar:
                    bar.update()
    if bar:
        bar.close()
    return {"config": config.to_dict(), "backend": jax.default_backend(), "rows": rows}


def _row(pair, name, temperature, outputs, times) -> dict[str, Any]:
    never = float(np.median(times["never"]))
    never_rounds = int(np.max(np.asarray(outputs["never"].stats.target_calls))) - 1
    plain_step = never / never_rounds  # a plain round inside the speculative loop
    plain = float(np.median(times["plain"]))
    row: dict[str, Any] = {
        "pair": _pairs.label(pair),
        "drafter": name,
        "temperature": temperature,
        "plain_decoding_s": plain,
        "plain_step_s": plain_step,
        "schedules": {},
    }
    for job in ("plain", *SCHEDULES):
        stats = outputs[job].stats
        rounds = int(np.max(np.asarray(stats.target_calls))) - 1  # less the prefill
        entry = {
            "times_s": sorted(times[job]),
            **_quantiles(times[job]),
            "rounds": rounds,
            "drafted": int(np.sum(np.asarray(stats.drafted))),
            "accepted": int(np.sum(np.asarray(stats.accepted))),
            "ratio_vs_plain": plain / float(np.median(times[job])),
        }
        if job in ("first", "middle"):
            # What the one drafting round added, in plain steps, at three quantiles.
            entry["extra_steps"] = {
                key: (entry[key] - never) / plain_step + (never_rounds - rounds)
                for key in ("p10_s", "median_s", "p90_s")
            }
        if job == "always":
            drafting_rounds = max(rounds, 1)
            entry["round_steps"] = entry["median_s"] / drafting_rounds / plain_step
        row["schedules"][job] = entry
    return row


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "one drafting round among plain ones: extra time over `never` in plain steps "
        "(p10 / median / p90); `always`: a drafting round's steady cost in plain steps",
        f"{'pair':34s} {'T':>3s} {'drafter':14s} {'never/plain':>11s}  "
        f"{'first':>17s}  {'middle':>17s}  {'always':>6s}",
    ]
    for r in results["rows"]:
        s = r["schedules"]

        def extra(job, s=s):
            e = s[job]["extra_steps"]
            return f"{e['p10_s']:5.1f}/{e['median_s']:5.1f}/{e['p90_s']:5.1f}"

        lines.append(
            f"{r['pair']:34s} {r['temperature']:3.1f} {r['drafter']:14s} "
            f"{s['never']['ratio_vs_plain']:11.2f}  {extra('first')}  {extra('middle')}  "
            f"{s['always']['round_steps']:6.2f}"
        )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(measure(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        plain = row["plain_decoding_s"]
        for x, job in enumerate(("plain", *SCHEDULES)):
            values = np.asarray(row["schedules"][job]["times_s"]) / plain
            jitter = np.linspace(-0.15, 0.15, len(values))
            ax.plot(x + jitter, values, "o", ms=2)
        ax.set_xticks(range(len(SCHEDULES) + 1), ["plain", *SCHEDULES], rotation=45, fontsize=6)
        pair = row["pair"].split("/")[0]
        ax.set_title(f"{pair}\n{row['drafter']} T={row['temperature']:g}", fontsize=6)
        ax.set_ylabel("run time / plain decoding's median", fontsize=6)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
