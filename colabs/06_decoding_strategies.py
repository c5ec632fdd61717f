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
# # Lookahead decoding strategies: CNTP, AdaDec, LATR, First-Finish, momentum
#
# `lookahead_jax.decoding` has five decoding strategies that look ahead before
# they commit, each a pure step function over a fixed-capacity state compiled
# into one `lax.while_loop`, for any model following `models.apply`:
#
# * **CNTP** (`cntp`): when the next-token entropy is high, sample several
#   trials up to the next punctuation and keep the least perplexing one;
# * **AdaDec** (`adadec`, `fit_adadec_threshold`): greedy, but pause at
#   uncertain steps and rerank the top candidates by a short beam lookahead;
# * **LATR** (`latr`): a group of rollouts grown as a tree, branching at
#   uncertain steps and pruning branches that stay too close to their parent;
#   a rollout generator for GRPO-style training;
# * **First-Finish search** (`first_finish`): n samples in lockstep, keep the
#   first to finish;
# * **momentum decoding** (`momentum_decoding`): greedy with a penalty for
#   re-entering n-grams already written.
#
# Every strategy follows the library's contract: one hashable config
# (`CNTPConfig`, `AdaDecConfig`, `LATRConfig`, `FirstFinishConfig`,
# `MomentumConfig`, `RolloutConfig`), `x_init(model, prompt, lengths, config)`,
# `x_step(key, state, model, config) -> (state, info)` and `x_run(key, model,
# prompt, lengths, config)`; the keyword functions above call `x_run`.
#
# Below: the AdaDec threshold fit, a LATR rollout group turned into GRPO
# advantages, a CNTP loop written by hand, and every strategy against greedy and
# plain sampling on the shipped byte-level model.

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
NUM_PROMPTS = 16
MAX_NEW_TOKENS = 64
GROUP_SIZE = 8  # rollouts per prompt (sampling, CNTP, LATR, First-Finish)
FIT_WINDOWS = 64  # held-out windows for the AdaDec threshold
STRATEGIES = (
    "greedy",
    "sampling",
    "sampling_cool",
    "cntp",
    "adadec",
    "momentum",
    "latr",
    "latr_sampled",
    "first_finish",
    "sampling_to_stop",
)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from lookahead_jax import data, decoding, models

target = models.Model(*models.load_pretrained("tiny-target"))
prompts, lengths = data.heldout_prompts(NUM_PROMPTS, 64, seed=0)


def text(tokens):
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


# %% [markdown]
# ## 1. AdaDec's entropy threshold, fitted per model
# Every position of held-out text gets the entropy of the model's next-byte
# distribution and a label: is the greedy byte the true one? A class-balanced
# logistic regression on the entropy, the probability cut with the best
# accuracy, and `tau = (logit p* - b) / w`. The papers report 0.99-1.32 nats
# for 0.6B-6.7B code models.

# %%
windows = data.eval_windows(data.load_corpus("heldout"), 128, max_windows=FIT_WINDOWS)
fit = decoding.fit_adadec_threshold(target, windows)
print(
    f"tau = {float(fit.threshold):.3f} nats; greedy is right on {float(fit.greedy_accuracy):.1%}"
    f" of bytes; the rule 'greedy right iff H < tau' is right on {float(fit.accuracy):.1%}; "
    f"AdaDec pauses on {float(fit.pause_rate):.1%} of held-out positions"
)
logits, _ = target(jnp.asarray(windows[:, :-1]))
log_p = jax.nn.log_softmax(logits, axis=-1)
entropy = np.asarray(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1)).reshape(-1)
correct = np.asarray(jnp.argmax(logits, -1) == windows[:, 1:]).reshape(-1)
bins = np.linspace(0, entropy.max(), 25)
which = np.digitize(entropy, bins)
centres = [entropy[which == i].mean() for i in np.unique(which)]
rates = [correct[which == i].mean() for i in np.unique(which)]
grid = np.linspace(0, entropy.max(), 200)
plt.figure(figsize=(5, 3.5))
plt.plot(centres, rates, "o", ms=4, label="greedy right (binned)")
plt.plot(grid, 1 / (1 + np.exp(-(float(fit.weight) * grid + float(fit.bias)))), label="fit")
plt.axvline(float(fit.threshold), color="gray", ls=":", label="tau")
plt.xlabel("next-byte entropy (nats)")
plt.ylabel("P(greedy byte is right)")
plt.legend()
plt.show()

# %% [markdown]
# ## 2. LATR as a rollout generator
# `latr_run` (or its keyword form `latr`) returns a group of rollouts per
# prompt with the model's per-token log-probabilities, the tree (parent, birth
# step) and what it cost. A
# GRPO-style loop turns rewards into group-relative advantages; here the reward
# is the target's log-likelihood per byte (a stand-in for a verifier).

# %%
latr_config = decoding.LATRConfig(
    num_rollouts=GROUP_SIZE, prune_window=16, max_new_tokens=MAX_NEW_TOKENS
)
latr_run = jax.jit(decoding.latr_run, static_argnames="config")
group = latr_run(jax.random.key(0), target, prompts[:1], lengths[:1], config=latr_config)
valid = np.flatnonzero(np.asarray(group.valid[0]))
start = int(lengths[0])
per_byte = np.asarray(group.log_probs[0, valid]) / np.asarray(group.num_generated[0, valid])
advantages = (per_byte - per_byte.mean()) / (per_byte.std() + 1e-6)
print(f"prompt: {text(prompts[0, :start])!r}")
print(
    f"{len(valid)} rollouts, {int(group.branches[0])} branches, {int(group.pruned[0])} pruned, "
    f"sampling from step {int(group.handoff_step[0])} (-1: never)"
)
for j, adv in zip(valid, advantages, strict=True):
    birth, parent = int(group.birth[0, j]), int(group.parent[0, j])
    print(
        f"slot {j} (parent {parent:2d}, born at {birth:2d}) advantage {adv:+.2f}: "
        f"{text(group.tokens[0, j, start : int(group.lengths[0, j])])!r}"
    )

# %% [markdown]
# ## Your own loop: one CNTP step at a time
# `cntp_run` is `cntp_init`, then `cntp_step` in a `lax.while_loop`, then
# `cntp_result`. Each step commits one segment per row and returns a `CNTPInfo`
# with the step's entropy and every trial it ran. The step takes the run's key
# (the same key at every step: each token's index is folded in), so this loop
# gives exactly the tokens of `cntp_run`.

# %%
cntp_config = decoding.CNTPConfig(max_new_tokens=MAX_NEW_TOKENS, max_trials=4)
cntp_init = jax.jit(decoding.cntp_init, static_argnames="config")
cntp_step = jax.jit(decoding.cntp_step, static_argnames="config")
key = jax.random.key(1)
state = cntp_init(target, prompts[:2], lengths[:2], config=cntp_config)
steps = 0
while not bool(state.finished.all()):
    state, info = cntp_step(key, state, target, config=cntp_config)
    steps += 1
    if steps <= 3:
        committed = np.asarray(info.trial_lengths[np.arange(2), info.chosen])
        print(
            f"step {steps}: H = {np.round(np.asarray(info.entropy), 2)} nats, "
            f"trials {np.asarray(info.num_trials)}, committed {committed} tokens"
        )
mine = decoding.cntp_result(state, cntp_config)
ref = jax.jit(decoding.cntp_run, static_argnames="config")(
    key, target, prompts[:2], lengths[:2], config=cntp_config
)
print(f"{steps} steps; same tokens as cntp_run: {bool(np.array_equal(mine.tokens, ref.tokens))}")

# %% [markdown]
# ## 3. Every strategy against greedy and plain sampling
# The same held-out prompts, every output scored by the target: log-likelihood
# per byte, repetition (rep-8), diversity across a prompt's rollouts (distinct-4,
# pairwise edit distance) and compute (model calls and tokens evaluated per
# generated byte). Then each strategy's published direction of effect, checked
# by a paired comparison over prompts. The benchmark is experiment code, not part of the
# wheel: it imports from a source checkout (in Colab: `git clone` the repository and run
# from its root).

# %%
from experiments.benchmarks import decoding_strategies as bench

config = bench.default_config()
config.num_prompts = NUM_PROMPTS
config.max_new_tokens = MAX_NEW_TOKENS
config.group_size = GROUP_SIZE
config.adadec_threshold = float(fit.threshold)  # fitted above
config.latr_prune_window = 16
config.strategies = STRATEGIES
config.repeats = 0  # no separate timed runs here
config.output_dir = "outputs/decoding_strategies_notebook"
results = bench.run(config)
print(bench.format_table(results))

# %%
rows = results["rows"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for r in rows:
    axes[0].errorbar(r["distinct"], r["ll_per_byte"], yerr=r["ll_per_byte_se"], fmt="o")
    axes[0].annotate(r["strategy"], (r["distinct"], r["ll_per_byte"]), fontsize=8)
    axes[1].scatter(r["generation_tokens_per_byte"], r["ll_per_byte"])
    axes[1].annotate(r["strategy"], (r["generation_tokens_per_byte"], r["ll_per_byte"]), fontsize=8)
axes[0].set_xlabel("distinct-4 across a prompt's rollouts")
axes[0].set_ylabel("target log-likelihood per byte")
axes[1].set_xscale("log")
axes[1].set_xlabel("tokens evaluated per generated byte")
axes[0].set_title("quality vs diversity")
axes[1].set_title("quality vs compute")
plt.tight_layout()
plt.show()

# %%
for name, example in results["examples"].items():
    print(f"{name:17s} {example!r}")
