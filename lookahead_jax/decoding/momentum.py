"""Momentum decoding: greedy decoding that resists re-entering n-grams already in the text.

Lan et al. 2022 ("Momentum Decoding: Open-ended Text Generation As Graph
Exploration") see degeneration as the decoder walking a loop of a graph it has
already built. For each of the top-k candidates ``v`` let ``L_v`` be the length
(at most ``max_ngram``) of the longest n-gram ending in ``v`` that already
occurs in the text (prompt included): the last ``L_v - 1`` tokens followed by
``v``. The choice is the deterministic argmax of ``p_v - alpha * R(L_v)``; the
resistance ``R`` defaults to ``R(L) = L``. ``alpha = 0`` is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common


def linear_resistance(lengths: jax.Array) -> jax.Array:
    """``R(L) = L``."""
    return lengths.astype(jnp.float32)


class MomentumResult(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32, prompt then continuation, pad_id after
    lengths: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32 (EOS included)
    repeat_lengths: jax.Array  # [B, N] int32, L of each chosen token (0 past num_generated)
    changed: jax.Array  # [B] int32, steps where the choice differed from greedy
    compute: common.Compute


class MomentumState(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32 text so far (pad past lengths)
    lengths: jax.Array  # [B] int32
    next_logits: jax.Array  # [B, V] float32
    cache: _models.KVCache  # [B] rows holding `lengths` tokens
    repeat_lengths: jax.Array  # [B, N] int32
    changed: jax.Array  # [B] int32
    finished: jax.Array  # [B] bool
    compute: common.Compute


def repeat_lengths(
    tokens: jax.Array, lengths: jax.Array, candidates: jax.Array, max_ngram: int
) -> jax.Array:
    """``L`` per candidate: the longest n-gram (<= max_ngram) ending in it already in the text.

    Args:
      tokens: [B, W] int, row ``b`` holds ``lengths[b]`` tokens.
      lengths: [B] int.
      candidates: [B, K] int, candidate next tokens.
    Returns:
      [B, K] int32 in [0, max_ngram]; 0 when the candidate never occurred.
    """
    batch, width = tokens.shape
    j = jnp.arange(width)[None, :]  # end position of an occurrence
    valid = j < lengths[:, None]
    # run[b, j]: how many tokens before j match the tokens before the end of the text.
    run = jnp.zeros((batch, width), jnp.int32)
    still = jnp.ones((batch, width), bool)
    for k in range(1, max_ngram):
        src = j - k
        here = jnp.take_along_axis(tokens, jnp.clip(src, 0, width - 1), axis=1)
        last = jnp.take_along_axis(tokens, jnp.clip(lengths - k, 0, width - 1)[:, None], axis=1)
        still = still & (src >= 0) & (lengths[:, None] - k >= 0) & (here == last)
        run = run + still
    hit = (tokens[:, None, :] == candidates[:, :, None]) & valid[:, None, :]  # [B, K, W]
    return jnp.max(jnp.where(hit, 1 + run[:, None, :], 0), axis=-1).astype(jnp.int32)


def momentum_decoding(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    *,
    max_new_tokens: int,
    alpha: float = 0.2,
    top_k: int = 5,
    max_ngram: int = 5,
    resistance: Callable[[jax.Array], jax.Array] = linear_resistance,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> MomentumResult:
    """Deterministic momentum decoding in one compiled loop (one model call per token).

    Args:
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      max_new_tokens: budget per row (static).
      alpha: resistance weight (>= 0); 0 is greedy.
      top_k: candidates considered (the most likely ``top_k`` tokens).
      max_ngram: longest n-gram looked for (L is capped at it).
      resistance: ``R``, elementwise on ``L`` ([B, K] int32 -> float), static.
      eos_id: a row stops after emitting it (static; ``None``: never).
    """
    batch, width = common.check_prompts(model, prompt, prompt_lengths, max_new_tokens)
    common.check_float("alpha", alpha, 0.0)
    common.check_int("top_k", top_k, 1, model.config.vocab_size)
    common.check_int("max_ngram", max_ngram, 1)
    common.check_token("eos_id", eos_id, model.config.vocab_size)
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    total = width + max_new_tokens
    logits, cache = common.prefill(model, prompt, prompt_lengths, total)
    columns = jnp.arange(total)[None, :]
    tokens = jnp.where(
        columns < prompt_lengths[:, None], jnp.pad(prompt, ((0, 0), (0, max_new_tokens))), pad_id
    )
    rows = jnp.arange(batch)
    state = MomentumState(
        tokens=tokens,
        lengths=prompt_lengths,
        next_logits=logits.astype(jnp.float32),
        cache=cache,
        repeat_lengths=jnp.zeros((batch, max_new_tokens), jnp.int32),
        changed=jnp.zeros((batch,), jnp.int32),
        finished=jnp.zeros((batch,), bool),
        compute=common.Compute(jnp.ones((batch,), jnp.int32), prompt_lengths),
    )

    def step(s: MomentumState) -> MomentumState:
        active = ~s.finished
        probs = jax.nn.softmax(s.next_logits, axis=-1)
        top_p, top_ids = lax.top_k(probs, top_k)  # [B, K], most likely first
        repeats = repeat_lengths(s.tokens, s.lengths, top_ids, max_ngram)
        score = top_p - alpha * resistance(repeats)
        pick = jnp.argmax(score, axis=-1)
        token = top_ids[rows, pick].astype(jnp.int32)
        index = s.lengths - prompt_lengths
        tokens = s.tokens.at[rows, jnp.where(active, s.lengths, total)].set(token, mode="drop")
        reps = s.repeat_lengths.at[rows, jnp.where(active, index, max_new_tokens)].set(
            repeats[rows, pick], mode="drop"
        )
        lengths = s.lengths + active
        finished = s.finished | (lengths - prompt_lengths >= max_new_tokens)
        if eos_id is not None:
            finished = finished | (active & (token == eos_id))
        cont = active & ~finished
        next_logits, cache = common.feed(model, s.cache, token, cont)
        return MomentumState(
            tokens=tokens,
            lengths=lengths,
            next_logits=jnp.where(cont[:, None], next_logits, s.next_logits),
            cache=cache,
            repeat_lengths=reps,
            changed=s.changed + (active & (pick != 0)),
            finished=finished,
            compute=common.Compute(s.compute.model_calls + cont, s.compute.tokens_evaluated + cont),
        )

    state = lax.while_loop(lambda s: ~jnp.all(s.finished), step, state)
    return MomentumResult(
        tokens=state.tokens,
        lengths=state.lengths,
        num_generated=state.lengths - prompt_lengths,
        repeat_lengths=state.repeat_lengths,
        changed=state.changed,
        compute=state.compute,
    )
