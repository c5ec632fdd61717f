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
# # Real model families: Llama, Qwen, Gemma 2 checkpoints, tokenizers, bfloat16, sharding
#
# One decoder covers GPT-2, Llama/Mistral, Qwen2/2.5, Qwen3 and Gemma 2; the family is
# a configuration, not a copy of the model. This notebook builds a small random Qwen3
# (no download), writes it as a HuggingFace folder with `save_hf`, reads it back with
# `load_hf`, tokenizes prompts and runs speculative decoding in one compiled loop;
# then the same with the shipped BPE Llama pair.

# %% [markdown]
# **Colab / fresh runtime:** the next cell installs lookahead_jax if it is not
# importable yet, and does nothing otherwise. It installs a wheel uploaded
# next to the notebook (`python -m build` makes one) or, failing that,
# `LOOKAHEAD_JAX_SOURCE`: set it to the repository's `git+https://...` URL or
# a wheel path.

# %%
import dataclasses
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
MAX_NEW_TOKENS = 48
DRAFT_LENGTH = 4

# %%
import tempfile

import jax
import numpy as np

from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate

# %% [markdown]
# ## A small random Qwen3, written and read as a HuggingFace folder
# `models.qwen3(...)` sets Qwen3's switches (RMSNorm, rotary positions, grouped-query
# attention, SwiGLU, per-head q/k norms); only the sizes are ours. The tokenizer is the
# shipped 4,096-token byte-level BPE, so the vocabulary matches it.

# %%
tokenizer = models.load_tokenizer("tiny-llama")
config = models.qwen3(
    vocab_size=tokenizer.vocab_size, num_layers=2, num_heads=4, num_kv_heads=2,
    d_model=64, head_dim=32, mlp_dim=128, max_length=256, tie_embeddings=True,
)  # fmt: skip
params = models.init_params(config, jax.random.key(0))
folder = tempfile.mkdtemp()
models.save_hf(folder, config, params, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
print(sorted(os.listdir(folder)))
loaded_config, loaded_params = models.load_hf(folder)
assert loaded_config == config
qwen = models.Model(loaded_config, loaded_params)
print(f"{config.model_type}: {config.num_params():,} parameters, GQA {config.num_heads}:"
      f"{config.num_kv_heads}, head_dim {config.head_dim}")  # fmt: skip

# %% [markdown]
# The same folder loads in transformers (`AutoModelForCausalLM.from_pretrained(folder)`)
# with the same logits; a real checkpoint loads the same way, from a local folder or,
# in Colab, from a Hub id (downloaded with `huggingface_hub`):
#
# ```python
# config, params = models.load_hf("Qwen/Qwen2.5-0.5B", dtype="bfloat16")
# tokenizer = models.load_tokenizer("Qwen/Qwen2.5-0.5B")
# ```

# %% [markdown]
# ## Tokenize, then draft with the model's own first layer (self-speculation)
# `encode` returns the ragged layout `generate` takes: prompts left-aligned in a
# `[B, P]` array with one length per row.

# %%
texts = ["The module provides", "Return the number of", "def"]
prompt, lengths = tokenizer.encode(texts)
print(prompt.shape, lengths)


@jax.jit
def plain(target, prompt, lengths):
    return generate(target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS)


@jax.jit
def speculative(target, draft, prompt, lengths):
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS,
        drafter=drafting.draft_model(draft), max_draft_tokens=DRAFT_LENGTH,
    )  # fmt: skip


exit_draft = drafting.early_exit_model(qwen, 1)
reference = plain(qwen, prompt, lengths)
fast = speculative(qwen, exit_draft, prompt, lengths)
print("identical to greedy:", bool(np.array_equal(fast.tokens, reference.tokens)))
print(tokenizer.decode(fast.tokens, fast.lengths)[0][:200])

# %% [markdown]
# ## The shipped BPE Llama pair
# `tiny-llama-target` and `tiny-llama-draft` are Llama-architecture models (RMSNorm,
# rotary positions, grouped-query attention, SwiGLU) trained on the shipped corpus with
# the same tokenizer.

# %%
target = models.Model(*models.load_pretrained("tiny-llama-target"))
draft = models.Model(*models.load_pretrained("tiny-llama-draft"))
tokenizer = models.load_tokenizer("tiny-llama-target")
prompt, lengths = tokenizer.encode(["The module provides", "Return a new", "This function"])
reference = plain(target, prompt, lengths)
fast = speculative(target, draft, prompt, lengths)
print("identical to greedy:", bool(np.array_equal(fast.tokens, reference.tokens)))
accepted = np.asarray(fast.stats.accepted).sum() / np.asarray(fast.stats.target_calls).sum()
print(f"accepted draft tokens per target call: {accepted:.2f}")
for text in tokenizer.decode(fast.tokens, fast.lengths):
    print(repr(text[:160]))

# %% [markdown]
# ## bfloat16 and tensor parallelism
# `load_hf(..., dtype="bfloat16")` converts tensor by tensor; activations and the KV
# cache follow the parameters' dtype, while norms, softmax and logits run in float32.
# `sharding=mesh` places each tensor on a `("data", "model")` mesh as it is read:
# attention heads and MLP columns split over `"model"`, batch rows over `"data"`.

# %%
mesh = models.make_model_mesh(data=1, model=len(jax.devices()))
half_config, half_params = models.load_hf(folder, dtype="bfloat16", sharding=mesh)
half = models.Model(half_config, half_params)
print(half.dtype, half_params["layers"]["attn"]["q_kernel"].sharding.spec)
half_out = plain(half, prompt, lengths)
print(tokenizer.decode(half_out.tokens, half_out.lengths)[0][:120])

# %% [markdown]
# ## Planning a pod run before booking it
# `models.plan_generation` says what a `(data, model)` mesh puts on each device for a
# target and a draft model — parameter and KV-cache bytes per device, rows per process —
# from shapes alone (no accelerator, no weights). Here a Qwen2.5-7B-shaped target with a
# 0.5B-shaped draft on 32 chips; `models.check_mesh` refuses a `model` axis that does not
# divide the 28 query heads. `docs/launch.md` shows how to run the same script on a TPU
# pod slice, one process per GPU, or SLURM.

# %%
target_shape = models.preset("qwen2.5-7b")
# The 0.5B model's vocabulary (151,936 rows) padded to the 7B's: drafter and target share ids.
draft_shape = dataclasses.replace(models.preset("qwen2.5-0.5b"), vocab_size=target_shape.vocab_size)
plan = models.plan_generation(
    target_shape, draft_shape, data=8, model=4, num_processes=8, batch_size=64, max_len=2308
)
print(plan)
try:
    models.check_mesh(target_shape, data=4, model=8, batch_size=64)
except ValueError as error:
    print("refused:", error)
