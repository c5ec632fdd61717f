"""What verifying a token tree costs next to verifying a chain of as many tokens (issue 17, item 3).

One verification step as the generation loop runs it, timed inside a compiled loop
(``drafting.costs.loop_seconds``: no per-call dispatch, nothing hoisted), on each pair's
target with a prefilled cache of held-out prompts:

* ``chain``: one target call over the last token and ``n`` drafts (causal, the cache read,
  not written: ``defer_write``), greedy verification, and the accepted prefix's entries
  appended to the cache (``models.append``);
* ``tree_chain_shaped``: the same ``n`` tokens as a tree whose node ``i`` hangs below node
  ``i - 1``: the tree mask built from parents (``trees.block_mask``), the target call under
  it, tree verification and the accepted path's entries appended to the cache;
* ``tree_wide``: ``n`` nodes as 4 branches of ``n / 4`` below the root (shallower, so the
  mask and the path differ from a chain's).

The issue's bar: a tree costs no more wall-clock than a chain of as many tokens, mask
construction, cache writes and path compaction included. Ratios ``tree / chain`` per
(pair, batch, n), medians of ``config.repeats`` loops; JSON and a plot.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from lookahead_jax import models, trees
from lookahead_jax.drafting.costs import loop_seconds
from lookahead_jax.verification import greedy, tree_greedy


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.batch_sizes = (1, 8)
    config.sizes = (8, 16, 32, 64)  # scored draft tokens n (multiples of 4)
    config.prompt_tokens = 32
    config.max_new_tokens = 64  # sizes the cache as a generation would
    config.repeats = 5
    config.quick = False  # one pair, batch 1, n in (8, 16), 2 repeats
    config.output_dir = "outputs/verify_cost"
    return config


def _effective(config):
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.pairs = config.pairs[:1]
        config.batch_sizes = (1,)
        config.sizes = (8, 16)
        config.repeats = 2
    return config


def _tree(parent: np.ndarray, depth: np.ndarray, batch: int) -> trees.TokenTree:
    n = parent.shape[0]
    return trees.TokenTree(
        parent=jnp.broadcast_to(jnp.asarray(parent, jnp.int32), (batch, n)),
        depth=jnp.broadcast_to(jnp.asarray(depth, jnp.int32), (batch, n)),
        token=jnp.zeros((batch, n), jnp.int32),
        valid=jnp.ones((batch, n), bool),
    )


def _shapes(n: int, batch: int) -> dict[str, tuple[trees.TokenTree, int]]:
    width = n // 4
    wide_parent = np.concatenate([np.r_[-1, np.arange(width - 1) + b * width] for b in range(4)])
    wide_depth = np.tile(np.arange(1, width + 1), 4)
    return {
        "tree_chain_shaped": (_tree(np.arange(n) - 1, np.arange(1, n + 1), batch), n),
        "tree_wide": (_tree(wide_parent, wide_depth, batch), width),
    }


def _chain_step(model, block, cache):
    num_draft = jnp.full((block.shape[0],), block.shape[1] - 1)
    logits, entries = model(block, cache, defer_write=True)
    verified = greedy(block[:, 1:], logits, num_draft)
    return models.append(cache, entries, count=verified.num_accepted + 1), verified.next_token


def _tree_step(max_depth: int):
    def step(model, block, cache, tree):
        mask = trees.block_mask(tree, max_depth)
        logits, entries = model(block, cache, tree_mask=mask, defer_write=True)
        verified = tree_greedy(tree, logits)
        path = verified.path[:, : max_depth + 1]  # as the loop keeps it
        kept = models.append(cache, entries, path, verified.path_length)
        return kept, verified.next_token

    return step


def measure(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    config = _effective(config)
    rows = []
    cells = [(p, b, n) for p in config.pairs for b in config.batch_sizes for n in config.sizes]
    bar = progress(total=len(cells), desc="verify cost") if progress else None
    for pair in config.pairs:
        target = _pairs.load_model(pair[0])
        tokenizer = models.load_tokenizer(pair[0])
        for batch in config.batch_sizes:
            prompt, lengths = _pairs.heldout_prompts(tokenizer, batch, config.prompt_tokens)
            prompt, lengths = jnp.asarray(prompt), jnp.asarray(lengths)
            capacity = prompt.shape[1] + config.max_new_tokens + max(config.sizes)
            cache = models.init_cache(target.config, batch, capacity)
            _, cache = jax.jit(lambda m, p, c: m(p, c))(target, prompt, cache)
            cache = models.rewind(cache, lengths - 1)
            for n in config.sizes:
                block = jnp.zeros((batch, n + 1), jnp.int32)
                chain = loop_seconds(_chain_step, (target, block, cache), config.repeats)
                row = {"pair": _pairs.label(pair), "batch": batch, "n": n, "chain_s": chain}
                for name, (tree, depth) in _shapes(n, batch).items():
                    seconds = loop_seconds(
                        _tree_step(depth), (target, block, cache, tree), config.repeats
                    )
                    row[f"{name}_s"] = seconds
                    row[f"{name}_over_chain"] = seconds / chain
                rows.append(row)
                if bar:
                    bar.update()
    if bar:
        bar.close()
    ratios = [r[f"{k}_over_chain"] for r in rows for k in ("tree_chain_shaped", "tree_wide")]
    return {
        "config": config.to_dict(),
        "rows": rows,
        "max_tree_over_chain": max(ratios),
        "median_tree_over_chain": float(np.median(ratios)),
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'pair':36s} {'B':>3s} {'n':>4s} {'chain ms':>9s} {'tree/chain':>11s} {'wide/chain':>11s}"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['pair']:36s} {r['batch']:3d} {r['n']:4d} {r['chain_s'] * 1e3:9.3f} "
            f"{r['tree_chain_shaped_over_chain']:11.2f} {r['tree_wide_over_chain']:11.2f}"
        )
    lines.append(
        f"tree / chain at equal scored tokens: median {results['median_tree_over_chain']:.2f}, "
        f"max {results['max_tree_over_chain']:.2f}"
    )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(measure(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted({(r["pair"], r["batch"]) for r in results["rows"]})
    for pair, batch in groups:
        rows = [r for r in results["rows"] if (r["pair"], r["batch"]) == (pair, batch)]
        sizes = [r["n"] for r in rows]
        for key, style in (("tree_chain_shaped", "-o"), ("tree_wide", "--s")):
            ax.plot(
                sizes,
                [r[f"{key}_over_chain"] for r in rows],
                style,
                label=f"{pair} B={batch} {key}",
            )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("scored draft tokens n")
    ax.set_ylabel("tree / chain verification time")
    ax.legend(fontsize=6)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
