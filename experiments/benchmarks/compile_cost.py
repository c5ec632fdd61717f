"""What a generation costs before its first token: tracing, compiling, the program's size.

In a notebook every new setting (drafter, batch size, prompt width) compiles a new
generation program, so its compile time is a cost a researcher pays again and again. For
each pair, batch size and drafter (the speculation grid's, greedy, default controller,
short prompts; and plain decoding), the grid's ``jax.jit`` generation is

* lowered and compiled ``config.repeats`` times, each time from empty caches
  (``jax.clear_caches()``): ``trace_s``, tracing the Python into a jaxpr and lowering it
  to StableHLO, and ``compile_s``, XLA's compile of that program (medians);
* counted in the compiled HLO: ``fusions`` (the fused kernels XLA:CPU emits code for),
  ``while_loops`` and ``instructions``.

Tokens are checked against plain decoding's. JSON, a bar plot and a table; run it on the
code before and after a change to compare (the machine's load moves compile times too:
quote medians and compare runs made back to back).
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from experiments.benchmarks import _common, _pairs, speculation_grid
from lookahead_jax import models


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.drafters = speculation_grid.DRAFTERS  # plain decoding always runs
    config.batch_sizes = (1, 4)
    config.repeats = 3  # compiles of each lowered program
    config.quick = False  # one pair, batch 1, two drafters, one compile each
    config.output_dir = "outputs/compile_cost"
    return config


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.update(
            pairs=tuple(config.pairs)[:1],
            drafters=("draft_model", "trie_retrieval"),
            batch_sizes=(1,),
            repeats=1,
        )
    for name in config.drafters:
        if name not in speculation_grid.DRAFTERS:
            raise ValueError(
                f"`drafters`: unknown drafter {name!r}; known: {speculation_grid.DRAFTERS}."
            )
    if config.repeats < 1:
        raise ValueError(f"`repeats` must be >= 1; got {config.repeats}.")
    return config


def program_size(hlo_text: str) -> dict[str, int]:
    """Counts in a compiled program's HLO text: fusion instructions (each a kernel XLA:CPU
    generates code for), while loops and all instructions."""
    return {
        "fusions": len(re.findall(r" fusion\(", hlo_text)),
        "while_loops": len(re.findall(r" while\(", hlo_text)),
        "instructions": len(re.findall(r"^\s+(?:ROOT )?%?[\w.\-]+ = ", hlo_text, re.M)),
    }


@contextlib.contextmanager
def _no_persistent_cache():
    """JAX's persistent compilation cache off inside (JAX decides once per process whether
    to use it, so the decision is reset on the way in and out)."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def measure(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    config = _effective(config)
    grid = speculation_grid.effective(speculation_grid.default_config())
    rows = []
    cells = [
        (pair, batch, name)
        for pair in _pairs.check_pairs(config.pairs)
        for batch in config.batch_sizes
        for name in (None, *config.drafters)
    ]
    loaded: dict[tuple, Any] = {}
    plain_tokens: dict[tuple, np.ndarray] = {}
    for pair, batch, name in progress(cells, desc="lower + compile") if progress else cells:
        if pair not in loaded:
            target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
            tokenizer = models.load_tokenizer(pair[0])
            width = speculation_grid.prompt_width(
                grid, "short", tokenizer, target.config, speculation_grid.draft_margin(grid)
            )
            loaded[pair] = (target, draft, tokenizer, width)
        target, draft, tokenizer, width = loaded[pair]
        prompt, lengths = map(jnp.asarray, speculation_grid.prompts(grid, tokenizer, batch, width))
        args = (target, draft, prompt, lengths, jax.random.key(0))
        # Each repeat starts from empty caches: nothing traced, lowered or compiled before
        # is reused (a Lowered's compile() is cached, so it is lowered again each time).
        # JAX's persistent compilation cache (on where JAX_COMPILATION_CACHE_DIR is set, as
        # in our test suite) would turn every repeat after the first into a disk read.
        trace_times, compile_times, compiled = [], [], None
        with _no_persistent_cache():
            for _ in range(config.repeats):
                jax.clear_caches()
                fn = speculation_grid.runner(grid, name, grid.max_draft_tokens, 0.0)
                start = time.perf_counter()
                lowered = fn.lower(*args)
                trace_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                compiled = lowered.compile()
                compile_times.append(time.perf_counter() - start)
        tokens = np.asarray(compiled(*args).tokens)
        if name is None:
            plain_tokens[(pair, batch)] = tokens
        rows.append(
            {
                "pair": _pairs.label(pair),
                "batch": batch,
                "drafter": name or "plain",
                "trace_s": statistics.median(trace_times),
                "compile_s": statistics.median(compile_times),
                "compile_runs_s": compile_times,
                **program_size(compiled.as_text()),
                "same_tokens_as_plain": bool(np.array_equal(tokens, plain_tokens[(pair, batch)])),
            }
        )
    return {
        "config": config.to_dict(),
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "rows": rows,
        "total_compile_s": sum(r["compile_s"] for r in rows),
        "total_trace_s": sum(r["trace_s"] for r in rows),
        "all_same_tokens_as_plain": all(r["same_tokens_as_plain"] for r in rows),
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'pair':36s} {'B':>3s} {'drafter':18s} {'trace s':>8s} {'compile s':>10s} "
        f"{'fusions':>8s} {'loops':>6s} {'instr':>7s}"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['pair']:36s} {r['batch']:3d} {r['drafter']:18s} {r['trace_s']:8.2f} "
            f"{r['compile_s']:10.2f} {r['fusions']:8d} {r['while_loops']:6d} "
            f"{r['instructions']:7d}"
        )
    lines.append(
        f"total: trace {results['total_trace_s']:.1f} s, compile {results['total_compile_s']:.1f} "
        f"s; same tokens as plain decoding everywhere: {results['all_same_tokens_as_plain']}"
    )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(measure(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["pair"], r["batch"]) for r in results["rows"]})
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.6 * len(groups)), squeeze=False)
    for ax, (pair, batch) in zip(axes[:, 0], groups, strict=True):
        rows = [r for r in results["rows"] if (r["pair"], r["batch"]) == (pair, batch)]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["trace_s"] for r in rows], 0.4, label="trace + lower")
        ax.bar(x + 0.2, [r["compile_s"] for r in rows], 0.4, label="XLA compile")
        ax.set_xticks(x, [r["drafter"] for r in rows], rotation=30, fontsize=7)
        ax.set_ylabel("seconds")
        ax.set_title(f"{pair}, batch {batch}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
