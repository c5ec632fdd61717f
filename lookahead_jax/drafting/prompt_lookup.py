"""Prompt lookup: a model-free n-gram drafter over the prompt and the generated text.

For n from ``max_ngram`` down to ``min_ngram``, the last n committed tokens are
searched for earlier in the sequence; the tokens that followed the match are
proposed (up to K, only tokens already committed). HuggingFace takes the first
match; the most recent match usually predicts better: ``match`` chooses.
Drafts are deterministic, so their probabilities are one-hot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax.drafting.base import Draft, Drafter
from lookahead_jax.sampling import Sampling

MATCH_RULES = ("first", "last")


class PromptLookupState(NamedTuple):
    """Stateless: everything is read from the committed tokens."""


def find_continuation(
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    max_ngram: int,
    min_ngram: int,
    match: str,
    max_draft: int,
) -> tuple[jax.Array, jax.Array]:
    """The continuation of the longest earlier match of each row's suffix.

    Args:
      tokens: [B, W] int committed sequences; lengths: [B] int.
    Returns:
      ``(draft [B, max_draft] int32, available [B] int32)``: the tokens that
      followed the chosen match and how many of them exist (0 when no n-gram of
      length >= min_ngram matched).
    """
    batch, width = tokens.shape
    positions = jnp.arange(width)
    rows = jnp.arange(batch)[:, None]
    found = jnp.zeros((batch,), bool)
    start = jnp.zeros((batch,), jnp.int32)  # index of the first continuation token
    for n in range(max_ngram, min_ngram - 1, -1):
        suffix_index = jnp.clip(lengths[:, None] - n + jnp.arange(n)[None, :], 0, width - 1)
        suffix = tokens[rows, suffix_index]  # [B, n]
        hit = jnp.ones((batch, width), bool)
        for i in range(n):
            shifted = jnp.roll(tokens, -i, axis=1)  # shifted[:, j] = tokens[:, j + i]
            hit &= shifted == suffix[:, i : i + 1]
        # The match must end before the suffix starts' last token: j + n < length,
        # so at least one continuation token exists, and the suffix must exist.
        hit &= (positions[None, :] + n < lengths[:, None]) & (lengths[:, None] >= n + 1)
        if match == "first":
            chosen = jnp.argmax(hit, axis=1)
        else:
            chosen = width - 1 - jnp.argmax(hit[:, ::-1], axis=1)
        use = jnp.any(hit, axis=1) & ~found
        start = jnp.where(use, chosen + n, start).astype(jnp.int32)
        found |= use
    draft_index = jnp.clip(start[:, None] + jnp.arange(max_draft)[None, :], 0, width - 1)
    draft = tokens[rows, draft_index].astype(jnp.int32)
    available = jnp.where(found, jnp.minimum(lengths - start, max_draft), 0).astype(jnp.int32)
    return draft, available


def prompt_lookup(
    vocab_size: int, *, max_ngram: int = 3, min_ngram: int = 1, match: str = "last"
) -> Drafter:
    """A ``Drafter`` proposing the continuation of an earlier occurrence of the suffix.

    Args:
      vocab_size: the target's vocabulary (for the one-hot draft probabilities).
      max_ngram: longest suffix tried first.
      min_ngram: shortest suffix tried; no draft when none matches.
      match: ``"last"`` (most recent occurrence) or ``"first"`` (HuggingFace's rule).
    """
    if match not in MATCH_RULES:
        raise ValueError(f"`match` must be one of {MATCH_RULES}; got {match!r}.")
    if (
        not isinstance(min_ngram, int)
        or not isinstance(max_ngram, int)
        or not 1 <= min_ngram <= max_ngram
    ):
        raise ValueError(
            f"`min_ngram` and `max_ngram` must be ints with 1 <= min_ngram <= max_ngram; "
            f"got {min_ngram!r}, {max_ngram!r}."
        )

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> PromptLookupState:
        del prompt, prompt_lengths, capacity
        return PromptLookupState()

    def propose(
        state: PromptLookupState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        num_draft: jax.Array,
        *,
        max_draft: int,
        sampling: Sampling,
    ) -> tuple[PromptLookupState, Draft]:
        del key, sampling
        draft, available = find_continuation(
            tokens,
            lengths,
            max_ngram=max_ngram,
            min_ngram=min_ngram,
            match=match,
            max_draft=max_draft,
        )
        probs = jax.nn.one_hot(draft, vocab_size, dtype=jnp.float32)
        return state, Draft(draft, probs, jnp.minimum(available, num_draft))

    def update(state: PromptLookupState, lengths_before: jax.Array, num_accepted: jax.Array):
        del lengths_before, num_accepted
        return state

    return Drafter(init=init, propose=propose, update=update, vocab_size=vocab_size)
