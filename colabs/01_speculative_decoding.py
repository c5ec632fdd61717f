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
# # Speculative decoding in one compiled loop
#
# A drafter proposes up to K tokens, the target scores them all in one pass,
# a verifier keeps the longest acceptable prefix and adds one target token.
# Greedy verification reproduces plain greedy decoding token for token;
# speculative sampling reproduces the target's sampling distribution exactly.
# Everything below is one `lax.while_loop` per call, batched with ragged rows.

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
BATCH = 4
PROMPT_LENGTH = 64
MAX_NEW_TOKENS = 128
DRAFT_LENGTHS = (2, 4, 8)
REPEATS = 3

# %%
import statistics
import time

import jax
import numpy as np

from lookahead_jax import data, drafting, models, verification
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling

target = models.Model(*models.load_pretrained("tiny-target"))
draft = models.Model(*models.load_pretrained("tiny-draft"))
prompts, lengths = data.heldout_prompts(BATCH, PROMPT_LENGTH, seed=0)


def text(tokens):
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


# %% [markdown]
# ## One jitted function per configuration
# Drafters are built inside the jitted function so the draft model's weights
# are arguments, not baked-in constants.


# %%
FIXED_K = drafting.constant()  # draft K every round (the default controller may draft less)


def make_runner(kind, k=4, sampling=Sampling(), controller=FIXED_K):
    def run(target, draft, prompts, lengths, key):
        drafter = None
        if kind == "draft_model":
            drafter = drafting.draft_model(draft)
        elif kind == "prompt_lookup":
            drafter = drafting.prompt_lookup(target.config.vocab_size, max_ngram=3)
        return generate(
            target,
            prompts,
            lengths,
            key,
            max_new_tokens=MAX_NEW_TOKENS,
            sampling=sampling,
            drafter=drafter,
            max_draft_tokens=k,
            controller=controller,
        )

    return jax.jit(run)


def timed(fn):
    args = (target, draft, prompts, lengths, jax.random.key(0))
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


# %% [markdown]
# ## Greedy: identical output, fewer target calls

# %%
plain, plain_time = timed(make_runner("autoregressive", k=0))
rows = [("autoregressive", plain, plain_time)]
for k in DRAFT_LENGTHS:
    rows.append((f"draft model K={k}", *timed(make_runner("draft_model", k=k))))
rows.append(("prompt lookup K=4", *timed(make_runner("prompt_lookup", k=4))))
rows.append(
    ("draft model +2/-1", *timed(make_runner("draft_model", k=8, controller=drafting.heuristic())))
)
# The library's default controller (`controller=None`): per round, the draft length (0 = a
# plain step) that maximises expected tokens per second under a cost model estimated from
# the models' sizes; `drafting.calibrate_costs` measures one on this device instead (the
# parts of a round, and whole rounds at each draft length as the loop runs them).
rows.append(("draft model, default", *timed(make_runner("draft_model", k=8, controller=None))))
costs = drafting.calibrate_costs(target, drafting.draft_model(draft), prompts, lengths, max_draft=8)
calibrated = drafting.cost_aware(costs)
rows.append(
    ("draft model, calibrated", *timed(make_runner("draft_model", k=8, controller=calibrated)))
)
for name, out, seconds in rows:
    generated = int(out.num_generated.sum())
    stats = out.stats
    print(
        f"{name:24s} {generated / seconds:7.0f} tok/s  x{plain_time / seconds:4.2f}  "
        f"target calls/token {int(stats.target_calls.sum()) / generated:.2f}  "
        f"acceptance {int(stats.accepted.sum()) / max(1, int(stats.drafted.sum())):.0%}  "
        f"same as greedy: {bool(np.array_equal(out.tokens, plain.tokens))}"
    )

# %%
row = 0
print("prompt:", repr(text(prompts[row, : lengths[row]])))
print("output:", repr(text(plain.tokens[row, lengths[row] : plain.lengths[row]])))

# %% [markdown]
# ## Acceptance lengths: measured vs the i.i.d. law
# With per-token acceptance rate `a`, a block of K drafts yields on average
# `(1 - a^(K+1)) / (1 - a)` tokens per target call.

# %%
import matplotlib.pyplot as plt

k = DRAFT_LENGTHS[-1]
out = next(o for name, o, _ in rows if name == f"draft model K={k}")
histogram = np.asarray(out.stats.accept_histogram.sum(0))
a = int(out.stats.accepted.sum()) / int(out.stats.drafted.sum())
law = np.array([a**j * (1 - a) for j in range(k)] + [a**k])
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(np.arange(k + 1) - 0.2, histogram / histogram.sum(), 0.4, label="measured")
ax.bar(np.arange(k + 1) + 0.2, law, 0.4, label=f"i.i.d. law, a={a:.2f}")
ax.set_xlabel("drafts accepted per round")
ax.legend()
plt.show()
measured = (int(out.stats.accepted.sum()) + histogram.sum()) / histogram.sum()
print(f"tokens per target call: measured {measured:.2f}, theory {(1 - a ** (k + 1)) / (1 - a):.2f}")

# %% [markdown]
# ## Sampling: lossless speculative sampling
# At temperature 1 the draft model's distribution `q` and the target's `p`
# go through the same sampling transform; accepted drafts and residual
# corrections together follow `p` exactly.

# %%
sampled, _ = timed(make_runner("draft_model", k=4, sampling=Sampling(temperature=1.0)))
print(text(sampled.tokens[0, lengths[0] : sampled.lengths[0]]))
print(
    "acceptance at temperature 1:",
    int(sampled.stats.accepted.sum()) / int(sampled.stats.drafted.sum()),
)

# %% [markdown]
# ## Your own loop: one draft–verify round at a time
# `generate` is `generation_init`, then `generation_step` in a `lax.while_loop`, then
# `generation_result`. Call the step yourself to watch each round, stop early, or
# interleave generation with other work. Static settings travel in one hashable
# `GenerationConfig`; the drafter is built inside the jitted functions, as above. With
# the keys split as below, the loop gives exactly the tokens of `generate` (greedy here,
# so also those of plain greedy decoding).

# %%
from lookahead_jax.decoding import (
    GenerationConfig,
    generation_init,
    generation_result,
    generation_step,
)

config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, max_draft_tokens=4)
init = jax.jit(
    lambda key, target, draft, prompts, lengths: generation_init(
        key, target, prompts, lengths, config, drafting.draft_model(draft)
    )
)
step = jax.jit(
    lambda key, state, target, draft: generation_step(
        key, state, target, config, drafting.draft_model(draft)
    )
)

key, init_key = jax.random.split(jax.random.key(0))
state = init(init_key, target, draft, prompts, lengths)
rounds = 0
while not bool(state.finished.all()):
    state, info = step(key, state, target, draft)
    key = jax.random.split(key, 3)[0]  # generate's key schedule
    rounds += 1
    if rounds <= 3:
        print(f"round {rounds}: accepted {info.num_accepted}, emitted {info.num_emitted}")
mine = generation_result(state)
same = bool(np.array_equal(mine.tokens, plain.tokens))
print(f"{rounds} rounds; same tokens as plain greedy decoding: {same}")

# %% [markdown]
# The verifiers are model-free functions you can call on your own tensors:

# %%
p = jax.nn.softmax(jax.random.normal(jax.random.key(1), (1, 3, 8)))
q = jax.nn.softmax(jax.random.normal(jax.random.key(2), (1, 2, 8)))
drafts = jax.random.categorical(jax.random.key(3), jax.numpy.log(q))
print(verification.speculative_sampling(jax.random.key(4), drafts, q, p))
print(verification.greedy(drafts, jax.numpy.log(p)))
