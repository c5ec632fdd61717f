"""What a memory drafter's upkeep costs next to a plain decoding step (issue 17).

The memory drafters (``trie_retrieval``, ``suffix_decoding``, Jacobi ``lookahead``) keep
memories that learn the committed tokens: ``init`` takes the prompts, ``observe`` the
tokens committed since the last call (the generation loop calls it before each proposal
and, in plain stretches, once per ``observe_tokens - 1`` pending tokens). SuffixDecoding
reads its suffix trees from the text since 2026-12-08, so its ``init`` and ``observe``
only keep the tokens. Even when the
cost-aware controller chooses plain rounds, that upkeep runs, so it bounds the drafter's
"floor" (every round plain) below plain decoding. This benchmark times each part alone,
inside a compiled loop (``drafting.costs.loop_seconds``: no per-call dispatch, nothing
hoisted), next to one plain ``generation_step`` on the same prompts, per pair and batch:

* ``init_s``: ``drafter.init`` over the prompts;
* ``observe_s``: one ``observe`` call learning ``observe_tokens - 1`` new tokens per row
  (1 for a drafter that learns after every round);
* ``propose_s``: one ``propose`` on the observed state;
* ``plain_step_s``: one plain ``generation_step`` (greedy), timed as the speculation grid
  times it for c (``speculation_grid.plain_step_time``); on 2 CPU cores with the byte pair
  it is about twice a plain round inside ``generation_run`` (which skips the step's
  draft-or-not conditional), so the ratios understate the upkeep's share of such a round.

Ratios to the plain step, medians of ``config.repeats`` loops; JSON and a bar plot. The
drafters are built with the speculation grid's settings (``speculation_grid.make_drafter``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs, speculation_grid
from lookahead_jax import models
from lookahead_jax.drafting.costs import loop_seconds
from lookahead_jax.sampling import Sampling

DRAFTERS = ("trie_retrieval", "suffix_decoding", "lookahead")


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.pairs = (("tiny-target", "tiny-draft"),)
    config.batch_sizes = (1, 16)
    config.drafters = DRAFTERS
    config.repeats = 5
    config.inner = 8  # calls per compiled loop
    config.quick = False  # batch 1, 2 repeats
    config.output_dir = "outputs/memory_upkeep"
    return config


def _effective(config):
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.batch_sizes = (1,)
        config.repeats = 2
        config.inner = 2
    unknown = [name for name in config.drafters if name not in DRAFTERS]
    if unknown:
        raise ValueError(f"`drafters` must be among {DRAFTERS}; got {unknown}.")
    return config


def _place(row: jax.Array, length: jax.Array, extra: jax.Array) -> jax.Array:
    """``row`` with ``extra`` written from position ``length`` (the text after a prompt)."""
    return jax.lax.dynamic_update_slice(row, extra, (length,))


def measure(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    config = _effective(config)
    grid = speculation_grid.effective(speculation_grid.default_config())
    rows = []
    cells = [(p, b, d) for p in config.pairs for b in config.batch_sizes for d in config.drafters]
    bar = progress(total=len(cells), desc="memory upkeep") if progress else None
    for pair in config.pairs:
        target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
        tokenizer = models.load_tokenizer(pair[0])
        margin = speculation_grid.draft_margin(grid)
        width = speculation_grid.prompt_width(grid, "short", tokenizer, target.config, margin)
        for batch in config.batch_sizes:
            prompt, lengths = speculation_grid.prompts(grid, tokenizer, batch, width)
            prompt, lengths = jnp.asarray(prompt), jnp.asarray(lengths)
            plain = speculation_grid.plain_step_time(grid, target, prompt, lengths)
            # The committed text after the prompt: held-out tokens (what a row would emit).
            room = grid.max_new_tokens
            more, _ = speculation_grid.prompts(grid, tokenizer, batch, room)
            padded = jax.vmap(_place)(
                jnp.pad(prompt, ((0, 0), (0, room))), lengths, jnp.asarray(more)
            )
            for name in config.drafters:
                drafter = speculation_grid.make_drafter(name, target, draft, grid)
                new = 1 if drafter.observe_tokens is None else drafter.observe_tokens - 1
                capacity = padded.shape[1] + drafter.num_nodes

                def init(p, n, d=drafter, c=capacity):
                    return d.init(p, n, c)

                def observe(s, t, n, d=drafter, k=new):
                    return d.observe(s, t, n + k)

                def propose(s, t, n, d=drafter, k=new):
                    return d.propose(s, jax.random.key(0), t, n + k, sampling=Sampling())

                state = jax.jit(init)(prompt, lengths)
                observed = jax.jit(observe)(state, padded, lengths)
                times = {
                    "init_s": loop_seconds(init, (prompt, lengths), config.repeats, config.inner),
                    "observe_s": loop_seconds(
                        observe, (state, padded, lengths), config.repeats, config.inner
                    ),
                    "propose_s": loop_seconds(
                        propose, (observed, padded, lengths), config.repeats, config.inner
                    ),
                }
                rows.append(
                    {
                        "pair": _pairs.label(pair),
                        "batch": batch,
                        "drafter": name,
                        "prompt_width": int(prompt.shape[1]),
                        "observed_tokens": new,
                        "plain_step_s": plain,
                        **times,
                        **{k.replace("_s", "_over_plain"): v / plain for k, v in times.items()},
                    }
                )
                if bar:
                    bar.update()
    if bar:
        bar.close()
    return {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "rows": rows,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'pair':26s} {'B':>3s} {'drafter':16s} {'plain ms':>9s} {'init':>7s} "
        f"{'observe':>8s} {'propose':>8s}   (x plain step)"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['pair']:26s} {r['batch']:3d} {r['drafter']:16s} {r['plain_step_s'] * 1e3:9.3f} "
            f"{r['init_over_plain']:7.2f} {r['observe_over_plain']:8.2f} "
            f"{r['propose_over_plain']:8.2f}"
        )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(measure(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['drafter']}\nB={r['batch']}" for r in rows]
    x = np.arange(len(rows))
    for i, key in enumerate(("init", "observe", "propose")):
        ax.bar(x + (i - 1) * 0.27, [r[f"{key}_over_plain"] for r in rows], 0.27, label=key)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=6)
    ax.set_ylabel("seconds / plain decoding step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
