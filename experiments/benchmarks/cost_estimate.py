"""How far the size-based cost estimate is from the measured rounds (issue 17, item 1).

With a drafter and no cost model, the generation loop's default controller
(``drafting.cost_aware()``) prices a round with ``drafting.estimate_costs``: from the
models' sizes alone, in units of one plain decoding step. ``drafting.calibrate_costs``
times the same rounds on the device, as the loop runs them (``generation_run`` with every
round drafting one size; its time less ``generation_init``'s, over its rounds). This
benchmark puts the two side by side per (pair, batch, drafter, temperature) and round size
(chains: draft lengths; trees: cuts), both as multiples of the same cost model's plain
round: ``estimated / calibrated`` below 1 is a round the default prices too cheap (it
drafts where drafting does not pay), above 1 too dear.

Prompts and drafters as in the speculation grid (``speculation_grid.prompts`` and
``make_drafter``: held-out windows, the existing benchmarks' settings, memories cold).
JSON (every calibrated figure, the estimate, the ratio) and a plot of estimated against
calibrated round costs.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from experiments.benchmarks import speculation_grid as _grid
from lookahead_jax import drafting, models
from lookahead_jax.drafting.base import TreeDrafter
from lookahead_jax.sampling import Sampling


def default_config() -> ml_collections.ConfigDict:
    config = _grid.default_config()  # the drafters' settings, prompts and budgets
    config.batch_sizes = (1,)
    config.temperatures = (0.0,)
    config.prompt = "short"
    config.repeats = 5
    config.output_dir = "outputs/cost_estimate"
    return config


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:  # one pair, a chain and a tree, small budget
        config.pairs = config.pairs[:1]
        config.batch_sizes = (1,)
        config.temperatures = (0.0,)
        config.drafters = ("prompt_lookup", "token_recycling")
        config.max_new_tokens = 16
        config.repeats = 2
    return config


def _estimated(costs: drafting.CostModel, drafter, sizes) -> list[float]:
    """The estimate's round costs at ``sizes``, in plain rounds."""
    if isinstance(drafter, TreeDrafter):
        seconds = costs.tree_round_seconds(np.asarray(sizes), drafter.num_nodes)
        plain = costs.tree_round_seconds(0, drafter.num_nodes)
    else:
        seconds, plain = costs.round_seconds(np.asarray(sizes)), costs.round_seconds(0)
    return [float(s) / float(plain) for s in np.atleast_1d(seconds)]


def measure(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    config = _effective(config)
    cells = [
        (pair, batch, name, temperature)
        for pair in config.pairs
        for batch in config.batch_sizes
        for name in config.drafters
        for temperature in config.temperatures
    ]
    bar = progress(total=len(cells), desc="cost estimate") if progress else None
    rows = []
    for pair in config.pairs:
        target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
        tokenizer = models.load_tokenizer(pair[0])
        width = _grid.prompt_width(
            config, config.prompt, tokenizer, target.config, _grid.draft_margin(config)
        )
        for batch in config.batch_sizes:
            prompt, lengths = _grid.prompts(config, tokenizer, batch, width)
            prompt, lengths = jnp.asarray(prompt), jnp.asarray(lengths)
            for name in config.drafters:
                drafter = _grid.make_drafter(name, target, draft, config)
                estimate = drafting.estimate_costs(
                    target.config, drafter, batch_size=batch, max_draft=config.max_draft_tokens
                )
                for temperature in config.temperatures:
                    calibrated = drafting.calibrate_costs(
                        target,
                        drafter,
                        prompt,
                        lengths,
                        max_draft=config.max_draft_tokens,
                        sampling=Sampling(temperature=temperature),
                        max_new_tokens=config.max_new_tokens,
                        repeats=config.repeats,
                    )
                    sizes = list(calibrated.round_sizes)
                    plain = calibrated.round_times[0]
                    measured = [t / plain for t in calibrated.round_times]
                    guessed = _estimated(estimate, drafter, sizes)
                    rows.append(
                        {
                            "pair": _pairs.label(pair),
                            "batch": batch,
                            "drafter": name,
                            "temperature": temperature,
                            "plain_round_s": plain,
                            "sizes": sizes,
                            "calibrated": measured,
                            "estimated": guessed,
                            "estimated_over_calibrated": [
                                g / m for g, m in zip(guessed, measured, strict=True)
                            ],
                            "calibration": drafting.costs.describe(calibrated),
                        }
                    )
                    if bar:
                        bar.update()
    if bar:
        bar.close()
    drafting_ratios = [r for row in rows for r in row["estimated_over_calibrated"][1:]]
    return {
        "config": config.to_dict(),
        "rows": rows,
        "median_estimated_over_calibrated": float(np.median(drafting_ratios)),
        "min_estimated_over_calibrated": float(np.min(drafting_ratios)),
        "max_estimated_over_calibrated": float(np.max(drafting_ratios)),
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "round cost in plain rounds, calibrated / estimated (ratio) per round size",
        f"{'pair':34s} {'B':>2s} {'T':>3s} {'drafter':18s} {'plain ms':>8s}  sizes",
    ]
    for r in results["rows"]:
        cells = "  ".join(
            f"{s}: {c:.2f}/{e:.2f} ({e / c:.2f})"
            for s, c, e in zip(r["sizes"], r["calibrated"], r["estimated"], strict=True)
            if s > 0
        )
        lines.append(
            f"{r['pair']:34s} {r['batch']:2d} {r['temperature']:3.1f} {r['drafter']:18s} "
            f"{r['plain_round_s'] * 1e3:8.3f}  {cells}"
        )
    lines.append(
        "estimated / calibrated over drafting rounds: median "
        f"{results['median_estimated_over_calibrated']:.2f}, min "
        f"{results['min_estimated_over_calibrated']:.2f}, max "
        f"{results['max_estimated_over_calibrated']:.2f}"
    )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(measure(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for row in results["rows"]:
        pair = row["pair"].split("/")[0]
        label = f"{pair} B={row['batch']} T={row['temperature']:g} {row['drafter']}"
        ax.plot(row["calibrated"][1:], row["estimated"][1:], "o-", ms=3, label=label)
    top = max(max(r["calibrated"] + r["estimated"]) for r in results["rows"])
    ax.plot([1, top], [1, top], "k--", lw=0.8)
    ax.set_xlabel("calibrated round (plain rounds)")
    ax.set_ylabel("estimated round (plain rounds)")
    ax.set_title("below the line: the estimate prices the round too cheap")
    ax.legend(fontsize=5)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
