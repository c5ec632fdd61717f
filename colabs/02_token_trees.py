# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Token trees: many drafts verified in one target pass
#
# A chain drafter bets on one continuation; a tree drafter proposes many at
# once. The target scores every node of the tree in one call under a *tree
# attention mask* (each node sees its ancestors only), the verifier walks down
# the tree, and only the accepted path's KV entries are kept. Greedy tree
# verification reproduces greedy decoding token for token; SpecInfer's
# recursive rejection sampling reproduces the target's sampling law exactly.
#
# Drafters here: **Token Recycling** (no draft model: an adjacency table of
# the target's own recent top-k candidates, filled into the 80-node "2.2.2"
# template), a **stochastic n-gram** drafter (Gumbel-top-k children from an
# n-gram memory of the target's distributions), the **draft model's dynamic
# tree** (best-first by path probability, EAGLE-2 style) and **early-exit
# self-speculation** (the target's first layers draft for it).

# %% [markdown]
# **Colab / fresh runtime:** the next cell installs lookahead_jax if it is not
# importable yet, and does nothing otherwise. It installs a wheel uploaded
# next to the notebook (`python -m build` makes one) or, failing that,
# `LOOKAHEAD_JAX_SOURCE`: set it to the repository's `git+https://...` URL or
# a wheel path.

# %%
import glob
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("lookahead_jax") is None:
    wheels = sorted(glob.glob("lookahead_jax-*.whl"))
    source = wheels[-1] if wheels else os.environ.get("LOOKAHEAD_JAX_SOURCE", "lookahead-jax")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source])

# %% tags=["parameters"]
BATCH = 1
PROMPT_LENGTH = 64
MAX_NEW_TOKENS = 128
TREE_SIZES = (8, 16, 32, 80)
OTHER_DRAFTERS = ("draft_model_chain", "early_exit", "stochastic_ngram")  # no size sweep
REPEATS = 3

# %%
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from lookahead_jax import data, drafting, models, trees, verification
from lookahead_jax.decoding import generate

target = models.Model(*models.load_pretrained("tiny-target"))
draft = models.Model(*models.load_pretrained("tiny-draft"))
prompts, lengths = data.heldout_prompts(BATCH, PROMPT_LENGTH, seed=0)

# %% [markdown]
# ## A tree, its mask and its verification
# A tree of N nodes is four `[B, N]` arrays: `parent` (-1 below the root, the
# last committed token), `depth`, `token`, `valid`. The verification block is
# the root followed by the nodes; `trees.block_mask` says who sees whom.

# %%
template = trees.template_from_rank_paths([(0,), (1,), (0, 0), (0, 1), (1, 0)])
tree = trees.fill_template(
    template,
    jnp.asarray([ord("t")]),
    lambda t: jnp.asarray([[ord("h"), ord("o")]]) + 0 * t[..., None],
)
print("parent", tree.parent[0].tolist(), "depth", tree.depth[0].tolist())
print(np.asarray(trees.block_mask(tree)[0]).astype(int))

# The target scores the root and all nodes at once; greedy verification walks the argmax.
cache = models.init_cache(target.config, 1, 64)
_, cache = target(prompts[:1, : int(lengths[0]) - 1], cache)
block = jnp.concatenate([prompts[:1, int(lengths[0]) - 1 : int(lengths[0])], tree.token], axis=1)
logits, _ = target(block, cache, tree_mask=trees.block_mask(tree))
verified = verification.tree_greedy(tree, logits)
print(
    "accepted nodes:",
    int(verified.num_accepted[0]),
    "path (block indices):",
    verified.path[0, : int(verified.path_length[0])].tolist(),
)

# %% [markdown]
# ## Every drafter inside `generate`
# Same loop, same prompts; greedy output is checked against plain greedy.


# %%
RUNNERS = {}


def make_runner(kind, size=None):
    """One jitted function per (drafter, tree size), reused for warm-up and timing."""
    if (kind, size) in RUNNERS:
        return RUNNERS[(kind, size)]

    def run(target, draft, prompts, lengths, state):
        if kind == "autoregressive":
            drafter = None
        elif kind == "draft_model_chain":
            drafter = drafting.draft_model(draft)
        elif kind == "early_exit":
            drafter = drafting.early_exit(target, 2)
        elif kind == "token_recycling":
            drafter = drafting.token_recycling(
                256, template=trees.token_recycling_template(size), table=state
            )
        elif kind == "stochastic_ngram":
            drafter = drafting.stochastic_ngram(256, memory=state)
        else:
            drafter = drafting.draft_model_tree(draft, num_nodes=size)
        return generate(
            target,
            prompts,
            lengths,
            jax.random.key(0),
            max_new_tokens=MAX_NEW_TOKENS,
            drafter=drafter,
            max_draft_tokens=4,
        )

    RUNNERS[(kind, size)] = jax.jit(run)
    return RUNNERS[(kind, size)]


def timed(fn, *args):
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


# Warm the persistent state (adjacency table, n-gram memory) on other prompts first.
warm_prompts, warm_lengths = data.heldout_prompts(BATCH, PROMPT_LENGTH, seed=1)
states = {}
persistent = ["token_recycling"] + [k for k in OTHER_DRAFTERS if k == "stochastic_ngram"]
for kind in persistent:
    size = max(TREE_SIZES) if kind == "token_recycling" else None  # the table fits any template
    out = make_runner(kind, size)(target, draft, warm_prompts, warm_lengths, None)
    states[kind] = out.drafter_state.table if kind == "token_recycling" else out.drafter_state

rows = [("autoregressive", None)] + [(kind, None) for kind in OTHER_DRAFTERS]
rows += [("token_recycling", n) for n in TREE_SIZES] + [("draft_model_tree", n) for n in TREE_SIZES]
results = {}
for kind, size in rows:
    out, seconds = timed(make_runner(kind, size), target, draft, prompts, lengths, states.get(kind))
    results[(kind, size)] = (out, seconds)
reference = results[("autoregressive", None)]
print(f"{'drafter':18s} {'nodes':>5s} {'tok/round':>9s} {'x AR':>5s} {'= greedy':>8s}")
for (kind, size), (out, seconds) in results.items():
    rounds = int(out.stats.target_calls.sum()) - BATCH
    generated = int(out.num_generated.sum())
    per_round = (generated - BATCH) / rounds
    same = bool(np.array_equal(out.tokens, reference[0].tokens))
    print(f"{kind:18s} {size or '':>5} {per_round:9.2f} {reference[1] / seconds:5.2f} {same!s:>8s}")

# %% [markdown]
# ## Tree size: accepted length vs cost
# Bigger trees accept more per round but every node costs target compute; on a
# CPU the verification call grows with the tree, on an accelerator it is
# nearly free until the hardware is saturated.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for kind in ("token_recycling", "draft_model_tree"):
    sizes = [n for n in TREE_SIZES]
    outs = [results[(kind, n)] for n in sizes]
    per_round = [
        (int(o.num_generated.sum()) - BATCH) / (int(o.stats.target_calls.sum()) - BATCH)
        for o, _ in outs
    ]
    axes[0].plot(sizes, per_round, "o-", label=kind)
    axes[1].plot(sizes, [reference[1] / s for _, s in outs], "o-", label=kind)
axes[0].set(xlabel="tree nodes", ylabel="tokens per target call", xscale="log")
axes[1].set(xlabel="tree nodes", ylabel="speed vs autoregressive", xscale="log")
axes[1].axhline(1.0, color="gray", lw=0.5)
axes[0].legend()
fig.tight_layout()

# %% [markdown]
# ## Early exit: choose the exit layer and draft length (DEL)
# Per-layer acceptance estimates from one forward pass over held-out text, and
# the modelled speedup of every (exit layer, draft length) pair.

# %%
windows = jnp.asarray(data.eval_windows(data.load_corpus("heldout"), 128, 16))
acceptance = drafting.layer_acceptance(target, windows)
choice = drafting.choose_exit(acceptance, target.config.num_layers, max_draft=8)
print("acceptance per exit layer:", np.round(np.asarray(acceptance), 3).tolist())
print(
    f"chosen exit after {choice.num_layers} layers, {choice.num_draft} drafts, "
    f"modelled {choice.speedup:.2f}x"
)
