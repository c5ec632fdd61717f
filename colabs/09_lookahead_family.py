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
# # The lookahead family: drafters that remember, no draft model
#
# Three training-free drafters, each verified losslessly by the target in one
# pass under a tree attention mask, inside the one compiled generation loop:
#
# * **Jacobi lookahead decoding** (Fu et al., 2024): the target drafts for
#   itself. A 2-D window of guesses runs one Jacobi iteration per round in the
#   same forward pass as the verification; its columns become n-grams in a pool.
# * **Trie retrieval** (the Alipay "Lookahead" framework, Zhao et al., 2024): a
#   trie of the prompt, the outputs and documents inserted ahead of time;
#   many branches, ranked by frequency, merged into one tree.
# * **SuffixDecoding** (Oliaro et al., 2025): the longest suffix of the text
#   matched in suffix trees of the prompt and of earlier outputs; a tree grown
#   by empirical probability, as large as the match is long.
#
# And the memories of the older n-gram drafters (Token Recycling, stochastic
# n-gram) now start from the prompt, and every memory carries from one request
# to the next with `drafting.memory_of`.

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
PROMPT_LENGTH = 96
MAX_NEW_TOKENS = 96
NUM_REQUESTS = 6
SWEEP = ((3, 3, 3), (5, 4, 5), (7, 4, 7))  # (window, ngram, guesses)

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from lookahead_jax import data, drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling

target = models.Model(*models.load_pretrained("tiny-target"))
VOCAB = target.config.vocab_size  # 256 bytes
prompts, lengths = data.heldout_prompts(1, PROMPT_LENGTH, seed=0)


def decode(tokens):
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", "replace")


@jax.jit
def plain(target, prompt, lengths):
    return generate(target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS)


reference = plain(target, prompts, lengths)
print(decode(reference.tokens[0, : int(reference.lengths[0])]))

# %% [markdown]
# ## Jacobi lookahead: the window, the pool and one shared mask
# With window W and n-gram size N, the window has N - 1 rows of W guesses; the
# token in row r, column j sits j + 1 + r positions past the last committed
# token and sees exactly one token at every earlier position (row 0 up to its
# column, then its own column). Below: the block's attention mask for W = 4,
# N = 3, G = 2: the G verification chains first, then the window.

# %%
small = drafting.lookahead(VOCAB, window=4, ngram=3, guesses=2)
state = small.init(prompts, lengths, 256)
_, draft = small.propose(state, jax.random.key(0), prompts, lengths, sampling=Sampling())
plt.figure(figsize=(4, 4))
plt.imshow(np.asarray(draft.mask[0]), cmap="Greys")
plt.title("block mask: root, 2 chains of 2, window 2 x 4")
plt.xlabel("attends to")
plt.ylabel("block token")
plt.show()
print("verified nodes:", int(draft.tree.valid[0].sum()), "of", draft.tree.valid.shape[1])

# %% [markdown]
# Greedy output equals plain greedy token for token; the question is how many
# tokens each target call commits, and what the wider call costs.

# %%
sweep = {}
for window, ngram, guesses in SWEEP:

    @jax.jit
    def run(target, prompt, lengths, window=window, ngram=ngram, guesses=guesses):
        drafter = drafting.lookahead(VOCAB, window=window, ngram=ngram, guesses=guesses)
        return generate(
            target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS,
            drafter=drafter,
        )  # fmt: skip

    out = run(target, prompts, lengths)
    assert np.array_equal(out.tokens, reference.tokens)
    per_call = int(out.num_generated[0]) / int(out.stats.target_calls[0])
    sweep[(window, ngram, guesses)] = per_call
    width = 1 + (guesses + window) * (ngram - 1)
    print(f"W={window} N={ngram} G={guesses}: {per_call:.2f} tokens per call, {width} scored")

# %% [markdown]
# ## Trie retrieval: many branches from the prompt, the outputs and documents
# The trie holds windows of `max_query + branch_length` tokens that start at
# every position of the prompt (temporary: dropped at the next request's
# `init`), of the committed output (as it is committed) and of documents
# inserted ahead of time. Each round matches the longest query (the last 4
# tokens, then 3, ...) and takes the `num_nodes` most frequent continuations
# below it: a merged, multi-branch tree. No match, no draft.

# %%
# The request, and a library of earlier answers (the greedy continuations of this and
# three other held-out prompts) inserted into the trie before the request arrives.
library_prompts, library_lengths = data.heldout_prompts(4, PROMPT_LENGTH, seed=3)
answers = plain(target, library_prompts, library_lengths)
library = drafting.trie_insert_documents(
    drafting.trie_memory(4096), answers.tokens, answers.lengths, vocab_size=VOCAB
)
quote = np.asarray(library_prompts[1:2])
quote_lengths = np.asarray(library_lengths[1:2])


@jax.jit
def with_trie(target, prompt, lengths, memory):
    drafter = drafting.trie_retrieval(VOCAB, num_nodes=16, memory=memory)
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS, drafter=drafter
    )


quoted = plain(target, quote, quote_lengths)
for name, memory in [("empty trie", drafting.trie_memory(4096)), ("answers inserted", library)]:
    out = with_trie(target, quote, quote_lengths, memory)
    assert np.array_equal(out.tokens, quoted.tokens)
    per_call = int(out.num_generated[0]) / int(out.stats.target_calls[0])
    print(f"trie retrieval, {name:18s}: {per_call:.2f} tokens per target call")

# %% [markdown]
# ## SuffixDecoding: trees as large as the match is long
# A per-request suffix tree (prompt and output) and a global one (earlier
# outputs), both read straight from the text: nothing is inserted while
# tokens are committed, and `drafting.memory_of` appends a request's outputs
# to the global memory. The longest suffix of the text found in either is the anchor; the
# tree grows best-first by empirical probability (child count / parent count
# along the path), stops under `min_token_prob`, and holds at most
# `max_spec_factor x match length` nodes: a long match speculates far, a short
# one barely.


# %%
@jax.jit
def with_suffix(target, prompt, lengths, memory):
    drafter = drafting.suffix_decoding(VOCAB, num_nodes=16, memory=memory)
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS, drafter=drafter
    )


memory = drafting.suffix_memory(4096)
for attempt in range(2):  # the same request twice: the global tree remembers the answer
    out = with_suffix(target, quote, quote_lengths, memory)
    assert np.array_equal(out.tokens, quoted.tokens)
    memory = drafting.memory_of(out.drafter_state)
    per_call = int(out.num_generated[0]) / int(out.stats.target_calls[0])
    print(f"suffix decoding, request {attempt + 1}: {per_call:.2f} tokens per target call")

# %% [markdown]
# ## Memories seeded from the prompt
# Token Recycling's adjacency table and the stochastic n-gram memory used to
# start empty; now `init` writes the prompt's own bigrams / contexts first, so
# the first rounds already draft the prompt's phrases. Any document set seeds
# them too (`drafting.seed_table`, `drafting.seed_memory`,
# `drafting.lookahead_pool`).

# %%
for name, build in [
    ("token recycling", lambda seeded: drafting.token_recycling(VOCAB, seed_from_prompt=seeded)),
    ("stochastic n-gram", lambda seeded: drafting.stochastic_ngram(VOCAB, seed_from_prompt=seeded)),
]:
    for seeded in (False, True):

        @jax.jit
        def run(target, prompt, lengths, build=build, seeded=seeded):
            return generate(
                target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS,
                drafter=build(seeded),
            )  # fmt: skip

        out = run(target, prompts, lengths)
        assert np.array_equal(out.tokens, reference.tokens)
        per_call = int(out.num_generated[0]) / int(out.stats.target_calls[0])
        print(f"{name:18s} seeded={seeded!s:5s} {per_call:.2f} tokens per target call")

# %% [markdown]
# ## Memory across requests
# A drafter's final state comes back in `Generation.drafter_state`;
# `drafting.memory_of` keeps its request-independent part, which the next
# request's drafter takes as `memory=`. One compilation serves the whole
# stream because the memory has the same shapes every time. Here the stream
# asks the same few questions again: later requests find the earlier answers.

# %%
stream, stream_lengths = data.heldout_prompts(NUM_REQUESTS, PROMPT_LENGTH, seed=1)
order = [i % max(1, NUM_REQUESTS // 2) for i in range(NUM_REQUESTS)]  # each prompt twice


@jax.jit
def serve(target, prompt, lengths, memory):
    drafter = drafting.lookahead(VOCAB, memory=memory)
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW_TOKENS, drafter=drafter
    )


memory = drafting.lookahead_pool(VOCAB)  # empty; or lookahead_pool(VOCAB, documents, lengths)
calls = []
for index in order:
    out = serve(target, stream[index : index + 1], stream_lengths[index : index + 1], memory)
    memory = drafting.memory_of(out.drafter_state)
    calls.append(int(out.stats.target_calls[0]))
print("target calls per request:", calls)
