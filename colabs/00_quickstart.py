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
# # lookahead_jax quickstart
#
# The foundation every pillar builds on: a GPT-2 style transformer written as
# pure functions, a KV cache whose rows hold different lengths, token-tree
# attention, HuggingFace GPT-2 interop and two tiny byte-level models shipped
# inside the package.
#
# Install from a checkout with `pip install .` (the notebook runs as is once
# `lookahead_jax` is importable).

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
NUM_PROMPTS = 4
PROMPT_LENGTH = 48
MAX_NEW_TOKENS = 96

# %%
import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import data, models, sharding
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling

print(jax.devices())

# %% [markdown]
# ## The shipped models
# `load_pretrained` returns `(config, params)`: a frozen config and a plain
# pytree of arrays. `models.Model` bundles the two into one pytree you can pass
# through `jit`.

# %%
target = models.Model(*models.load_pretrained("tiny-target"))
draft = models.Model(*models.load_pretrained("tiny-draft"))
for name, model in [("target", target), ("draft", draft)]:
    print(name, model.config, f"{model.config.num_params():,} parameters")

# %% [markdown]
# ## Ragged batches, one compiled loop
# Held-out prompts of different lengths are generated together; each row
# writes at its own length in the KV cache.

# %%
prompts, lengths = data.heldout_prompts(NUM_PROMPTS, PROMPT_LENGTH, seed=0)
run = jax.jit(generate, static_argnames=("max_new_tokens", "sampling", "eos_id", "pad_id"))
out = run(target, prompts, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS)


def text(tokens):
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


for row in range(NUM_PROMPTS):
    n = int(lengths[row])
    print(f"[{text(prompts[row, :n])}] -> {text(out.tokens[row, n : int(out.lengths[row])])!r}")

# %% [markdown]
# Sampling with temperature and top-p: every row uses its own key.

# %%
sampled = run(
    target,
    prompts,
    lengths,
    jax.random.key(1),
    max_new_tokens=MAX_NEW_TOKENS,
    sampling=Sampling(temperature=0.8, top_p=0.95),
)
print(text(sampled.tokens[0, int(lengths[0]) : int(sampled.lengths[0])]))

# %% [markdown]
# ## The cache by hand: append, rewind, token trees
# `apply` appends tokens to each row at its own length. A tree of candidate
# continuations is scored in one call with `tree_mask` (each node sees its
# ancestors), and `keep_path` commits the accepted branch.

# %%
config, params = target.config, target.params
prefix = jnp.asarray(prompts[:1, :16])
cache = models.init_cache(config, batch_size=1, max_length=64)
logits, cache = models.apply(config, params, prefix, cache)
print("lengths after the prefix:", cache.lengths)

# A tree of 4 nodes: 0 is the root, 1 and 2 are its children, 3 is a child of 1.
parents = [-1, 0, 0, 1]
mask = np.eye(4, dtype=bool)
for node, parent in enumerate(parents):
    while parent >= 0:
        mask[node, parent] = True
        parent = parents[parent]
nodes = jnp.asarray([[ord("t"), ord("h"), ord("o"), ord("e")]])
tree_logits, tree_cache = models.apply(
    config, params, nodes, cache, tree_mask=jnp.asarray(mask)[None]
)
print("tree mask:\n", mask.astype(int))

# Keep the branch 0 -> 1 -> 3 ("the"), as a verifier would after accepting it.
kept = models.keep_path(tree_cache, cache.lengths, jnp.asarray([[0, 1, 3]]), jnp.asarray([3]))
print("lengths after keeping the path:", kept.lengths)

# %% [markdown]
# ## Early exit from hidden states
# `return_hidden=True` gives the residual stream after every block;
# `logits_from_hidden` turns any layer into next-token logits (early-exit
# self-speculation uses this).

# %%
window = jnp.asarray(data.eval_windows(data.load_corpus("heldout"), 64, max_windows=8))
logits, _, hidden = models.apply(config, params, window, return_hidden=True)
final = jnp.argmax(logits, -1)
for layer in range(1, config.num_layers + 1):
    early = jnp.argmax(models.logits_from_hidden(config, params, hidden[layer]), -1)
    agreement = float(jnp.mean(early == final))
    print(f"exit after block {layer}: agrees with the full model on {agreement:.1%}")

# %% [markdown]
# ## Sharding the batch over devices
# On a multi-device machine (or with simulated CPU devices) the same call runs
# with the batch split across the mesh and gives the same tokens.

# %%
mesh = sharding.make_mesh()
rows = mesh.devices.size * max(1, NUM_PROMPTS // mesh.devices.size)
many_prompts, many_lengths = data.heldout_prompts(rows, PROMPT_LENGTH, seed=1)
sharded = run(
    sharding.replicate(target, mesh),
    *sharding.shard((jnp.asarray(many_prompts), jnp.asarray(many_lengths)), mesh),
    jax.random.key(0),
    max_new_tokens=16,
)
single = run(target, many_prompts, many_lengths, jax.random.key(0), max_new_tokens=16)
print(
    f"{mesh.devices.size} devices, same tokens as 1 device:",
    bool(jnp.all(sharded.tokens == single.tokens)),
)

# %% [markdown]
# ## HuggingFace GPT-2 layout
# `save_hf_gpt2` writes `config.json` + `model.safetensors` that
# `transformers.GPT2LMHeadModel.from_pretrained` loads; `load_hf_gpt2` reads
# real GPT-2 / DistilGPT-2 checkpoints you have on disk.

# %%
import tempfile

with tempfile.TemporaryDirectory() as directory:
    models.save_hf_gpt2(directory, config, params)
    config_again, params_again = models.load_hf_gpt2(directory)
same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, params_again))
print("round trip exact:", same, config_again == config)
