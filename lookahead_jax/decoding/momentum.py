"""Momentum decoding: greedy decoding that resists re-entering n-grams already in the text.

Lan et al. 2022 ("Momentum Decoding: Open-ended Text Generation As Graph
Exploration") see degeneration as the decoder walking a loop of a graph it has
already built. For each of the top-k candidates ``v`` let ``L_v`` be the length
(at most ``max_ngram``) of the longest n-gram ending in ``v`` that already
occurs in the text (prompt included): the last ``L_v - 1`` tokens followed by
``v``. The choice is the deterministic argmax of ``p_v - alpha * R(L_v)``; the
resistance ``R`` defaults to ``R(L) = L``. ``alpha = 0`` is greedy decoding.

Contract: ``MomentumConfig``, ``momentum_init(model, prompt, prompt_lengths, config)
-> MomentumState``, ``momentum_step(key, state, model, config) -> (MomentumState,
MomentumInfo)`` (deterministic: the key is ignored), ``momentum_run(key, model,
prompt, prompt_lengths, config) -> MomentumResult``; ``momentum_decoding`` is the
keyword form of ``momentum_run``.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class MomentumConfig:
    """Static settings of momentum decoding (hashable).

    Attributes:
      alpha: resistance weight (>= 0); 0 is greedy.
      top_k: candidates considered (the most likely ``top_k`` tokens).
      max_ngram: longest n-gram looked for (L is capped at it).
      resistance: ``R``, elementwise on ``L`` ([B, K] int32 -> float); a module-level
        function (it must be hashable).
      max_new_tokens: budget per row.
      eos_id: a row stops after emitting it (``None``: never).
      pad_id: fills ``tokens`` past each length.
    """

    alpha: float = 0.2
    top_k: int = 5
    max_ngram: int = 5
    resistance: Callable[[jax.Array], jax.Array] = linear_resistance
    max_new_tokens: int = 32
    eos_id: int | None = None
    pad_id: int = 0


class MomentumResult(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32, prompt then continuation, pad_id after
    lengths: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32 (EOS included)
    repeat_lengths: jax.Array  # [B, N] int32, L of each chosen token (0 past num_generated)
    changed: jax.Array  # [B] int32, steps where the choice differed from greedy
    compute: common.Compute


class MomentumState(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32 text so far (pad_id past lengths)
    lengths: jax.Array  # [B] int32, prompt + generated tokens
    prompt_lengths: jax.Array  # [B] int32
    next_logits: jax.Array  # [B, V] float32
    cache: _models.KVCache  # [B] rows holding `lengths` tokens
    repeat_lengths: jax.Array  # [B, N] int32
    changed: jax.Array  # [B] int32
    finished: jax.Array  # [B] bool
    compute: common.Compute  # [B] counters


class MomentumInfo(NamedTuple):
    """What one step did (diagnostics, never fed back)."""

    token: jax.Array  # [B] int32, the chosen token (garbage where not active)
    greedy: jax.Array  # [B] int32, the most likely token
    repeat_length: jax.Array  # [B] int32, L of the chosen token
    active: jax.Array  # [B] bool, the row committed a token this step


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


def _check_config(model: Any, config: MomentumConfig) -> None:
    common.check_budget(model, config.max_new_tokens, config.eos_id)
    common.check_float("alpha", config.alpha, 0.0)
    common.check_int("top_k", config.top_k, 1, model.config.vocab_size)
    common.check_int("max_ngram", config.max_ngram, 1)


def momentum_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: MomentumConfig
) -> MomentumState:
    """Checks the inputs and prefills the prompts."""
    _check_config(model, config)
    prompt, prompt_lengths = common.prepare_prompts(
        model, prompt, prompt_lengths, config.max_new_tokens
    )
    batch, width = prompt.shape
    total = width + config.max_new_tokens
    logits, cache = common.prefill(model, prompt, prompt_lengths, total)
    return MomentumState(
        tokens=common.prompt_buffer(prompt, prompt_lengths, total, config.pad_id),
        lengths=prompt_lengths,
        prompt_lengths=prompt_lengths,
        next_logits=logits.astype(jnp.float32),
        cache=cache,
        repeat_lengths=jnp.zeros((batch, config.max_new_tokens), jnp.int32),
        changed=jnp.zeros((batch,), jnp.int32),
        finished=jnp.zeros((batch,), bool),
        compute=common.Compute(jnp.ones((batch,), jnp.int32), prompt_lengths),
    )


def momentum_step(
    key: jax.Array, state: MomentumState, model: Any, config: MomentumConfig
) -> tuple[MomentumState, MomentumInfo]:
    """Commits one token per unfinished row: the argmax of ``p_v - alpha R(L_v)``.

    Deterministic: ``key`` is taken for the library's uniform signature and ignored.
    """
    del key
    s = state
    batch, total = s.tokens.shape
    max_new = config.max_new_tokens
    rows = jnp.arange(batch)
    active = ~s.finished
    probs = jax.nn.softmax(s.next_logits, axis=-1)
    top_p, top_ids = lax.top_k(probs, config.top_k)  # [B, K], most likely first
    repeats = repeat_lengths(s.tokens, s.lengths, top_ids, config.max_ngram)
    score = top_p - config.alpha * config.resistance(repeats)
    pick = jnp.argmax(score, axis=-1)
    token = top_ids[rows, pick].astype(jnp.int32)
    index = s.lengths - s.prompt_lengths
    tokens = s.tokens.at[rows, jnp.where(active, s.lengths, total)].set(token, mode="drop")
    chosen_repeat = repeats[rows, pick]
    reps = s.repeat_lengths.at[rows, jnp.where(active, index, max_new)].set(
        chosen_repeat, mode="drop"
    )
    lengths = s.lengths + active
    finished = s.finished | (lengths - s.prompt_lengths >= max_new)
    if config.eos_id is not None:
        finished = finished | (active & (token == config.eos_id))
    cont = active & ~finished
    next_logits, cache = common.feed(model, s.cache, token, cont)
    new_state = s._replace(
        tokens=tokens,
        lengths=lengths,
        next_logits=jnp.where(cont[:, None], next_logits, s.next_logits),
        cache=cache,
        repeat_lengths=reps,
        changed=s.changed + (active & (pick != 0)),
        finished=finished,
        compute=common.Compute(s.compute.model_calls + cont, s.compute.tokens_evaluated + cont),
    )
    info = MomentumInfo(
        token=token,
        greedy=top_ids[:, 0].astype(jnp.int32),
        repeat_length=chosen_repeat,
        active=active,
    )
    return new_state, info


def momentum_result(state: MomentumState, config: MomentumConfig) -> MomentumResult:
    """The ``MomentumResult`` of a (finished) state (``config`` for the uniform signature)."""
    del config
    return MomentumResult(
        tokens=state.tokens,
        lengths=state.lengths,
        num_generated=state.lengths - state.prompt_lengths,
        repeat_lengths=state.repeat_lengths,
        changed=state.changed,
        compute=state.compute,
    )


def momentum_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: MomentumConfig,
) -> MomentumResult:
    """Deterministic momentum decoding in one compiled loop (one model call per token).

    Args:
      key: ignored (deterministic; taken for the uniform signature).
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      config: ``MomentumConfig`` (static).
    """
    state = momentum_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: ~jnp.all(s.finished), lambda s: momentum_step(key, s, model, config)[0], state
    )
    return momentum_result(state, config)


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
    """The keyword form of ``momentum_run`` (the arguments are ``MomentumConfig``'s fields)."""
    config = MomentumConfig(
        alpha=alpha,
        top_k=top_k,
        max_ngram=max_ngram,
        resistance=resistance,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    return momentum_run(jax.random.key(0), model, prompt, prompt_lengths, config)
