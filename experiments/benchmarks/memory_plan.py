"""Planned device memory of generation, default vs exact mode, from XLA's memory analysis.

Nothing is allocated or run: each program (the prefill with logits at every prompt
position, as before issue 17, the library's prefill ``generation_init`` with logits at
each prompt's last token only, and one speculative ``generation_step`` verifying
``K + 1`` tokens) is lowered with abstract parameters and inputs
(``jax.ShapeDtypeStruct``) and compiled, and ``compiled.memory_analysis()`` reports its
arguments, outputs and temporaries. ``temp`` is what the program needs on top of its
inputs and outputs (activations, logits, exact mode's products); ``total`` adds the
arguments (parameters, cache) and outputs. Default shapes: GPT-2 small (124M
parameters, vocabulary 50,257), batch 8, prompts of 512 tokens, K = 8 drafts
(prompt lookup, which costs no parameters), float32.

Exact mode (``apply(exact=True)``) materialises elementwise products before its
fixed-order sums; it works through rows in blocks so that those products stay within a
fixed budget (``transformer._EXACT_BLOCK_ELEMENTS``).
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments.benchmarks import _common
from lookahead_jax import decoding, drafting, models

GIB = 2**30


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.family = "gpt2"  # models.<family>(**shape) builds the config
    config.vocab_size = 50257
    config.num_layers = 12
    config.num_heads = 12
    config.d_model = 768
    config.max_length = 1024
    config.batch = 8
    config.prompt_length = 512
    config.max_new_tokens = 64
    config.num_draft = 8  # K
    config.quick = False  # tiny shapes for a smoke run
    config.output_dir = "outputs/memory_plan"
    return config


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.update(
            vocab_size=512, num_layers=2, num_heads=2, d_model=32, max_length=128,
            batch=2, prompt_length=32, max_new_tokens=8, num_draft=4,
        )  # fmt: skip
    if not hasattr(models, config.family):
        raise ValueError(f"`family` must name a models config builder; got {config.family!r}.")
    return config


def _analysis(compiled) -> dict[str, float]:
    memory = compiled.memory_analysis()
    sizes = {
        "arguments": memory.argument_size_in_bytes / GIB,
        "outputs": memory.output_size_in_bytes / GIB,
        "temp": memory.temp_size_in_bytes / GIB,
    }
    sizes["total"] = sizes["arguments"] + sizes["outputs"] + sizes["temp"]
    return sizes


def plan(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Memory of the three programs in both modes (GiB); see the module docstring."""
    config = _effective(config)
    model_config = getattr(models, config.family)(
        vocab_size=config.vocab_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        d_model=config.d_model,
        max_length=config.max_length,
    )
    params = jax.eval_shape(lambda: models.init_params(model_config, jax.random.key(0)))
    batch, width = config.batch, config.prompt_length
    prompt = jax.ShapeDtypeStruct((batch, width), jnp.int32)
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    capacity = width + config.max_new_tokens + config.num_draft
    drafter = drafting.prompt_lookup(config.vocab_size)

    def generation_config(exact):
        return decoding.GenerationConfig(
            max_new_tokens=config.max_new_tokens, max_draft_tokens=config.num_draft, exact=exact
        )

    def every_logit(params, prompt, lengths, exact):
        cache = models.init_cache(model_config, batch, capacity)
        logits, cache = models.apply(model_config, params, prompt, cache, exact=exact)
        return logits, cache  # [B, P, V]: the prefill before logits_at

    def prefill(params, prompt, lengths, exact):
        target = models.Model(model_config, params)
        return decoding.generation_init(
            jax.random.key(0), target, prompt, lengths, generation_config(exact), drafter
        )

    def step(params, state, exact):
        target = models.Model(model_config, params)
        return decoding.generation_step(
            jax.random.key(0), state, target, generation_config(exact), drafter
        )

    rows = []
    jobs = [(name, exact) for exact in (False, True) for name in ("every_logit", "prefill", "step")]
    for name, exact in progress(jobs) if progress else jobs:
        start = time.perf_counter()
        if name == "step":
            state = jax.eval_shape(functools.partial(prefill, exact=exact), params, prompt, lengths)
            lowered = jax.jit(step, static_argnums=2).lower(params, state, exact)
        else:
            fn = every_logit if name == "every_logit" else prefill
            lowered = jax.jit(fn, static_argnums=3).lower(params, prompt, lengths, exact)
        sizes = _analysis(lowered.compile())
        rows.append(
            {
                "program": name,
                "mode": "exact" if exact else "default",
                **sizes,
                "compile_seconds": time.perf_counter() - start,
            }
        )
    by = {(r["program"], r["mode"]): r for r in rows}
    ratios = {
        program: {
            "temp": by[(program, "exact")]["temp"] / max(by[(program, "default")]["temp"], 1e-12),
            "total": by[(program, "exact")]["total"] / by[(program, "default")]["total"],
        }
        for program in ("prefill", "step")
    }
    return {
        "config": config.to_dict(),
        "parameters": model_config.num_params(),
        "devices": [str(d) for d in jax.devices()],
        "rows": rows,
        "exact_over_default": ratios,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'program':12s} {'mode':8s} {'args':>8s} {'outputs':>8s} {'temp':>9s} {'total':>9s}  GiB"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['program']:12s} {r['mode']:8s} {r['arguments']:8.3f} {r['outputs']:8.3f} "
            f"{r['temp']:9.3f} {r['total']:9.3f}"
        )
    for program, ratio in results["exact_over_default"].items():
        lines.append(
            f"exact / default, {program}: temp {ratio['temp']:.2f}x, total {ratio['total']:.2f}x"
        )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    return _common.write_study(plan(config, progress), config.output_dir, _plot)


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [f"{r['program']}\n{r['mode']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(labels, [r["total"] for r in rows], label="total")
    ax.bar(labels, [r["temp"] for r in rows], label="temp")
    ax.set_yscale("log")
    ax.set_ylabel("GiB (planned)")
    ax.set_title("generation memory plan, default vs exact")
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)
