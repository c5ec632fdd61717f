"""Autoregressive generation as one ``lax.while_loop``: ragged prompts, per-row EOS and budget.

Speculative decoding (drafters and verifiers) extends this loop; the
``Generation`` result and its per-row statistics are shared by both.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks
from lookahead_jax import models as _models
from lookahead_jax.sampling import Sampling, sample


class GenerationStats(NamedTuple):
    """Per-row counters of one generation."""

    target_calls: (
        jax.Array
    )  # [B] int32, target forward passes that advanced this row (incl. prefill)
    drafted: jax.Array  # [B] int32, draft tokens proposed to the target (0 without a drafter)
    accepted: jax.Array  # [B] int32, draft tokens the target accepted


class Generation(NamedTuple):
    """Prompts followed by their continuations, right-padded with ``pad_id``."""

    tokens: jax.Array  # [B, P + max_new_tokens] int32
    lengths: jax.Array  # [B] int32, prompt + generated tokens per row
    num_generated: jax.Array  # [B] int32, generated tokens per row (EOS included)
    stats: GenerationStats


class _LoopState(NamedTuple):
    tokens: jax.Array  # [B, W] int32 output buffer
    lengths: jax.Array  # [B] int32 tokens written per row
    last_token: jax.Array  # [B] int32 most recent token, fed to the model next
    cache: _models.KVCache
    finished: jax.Array  # [B] bool
    key: jax.Array  # PRNG key
    target_calls: jax.Array  # [B] int32


def _check_prompt(config: _models.TransformerConfig, prompt, prompt_lengths, max_new_tokens):
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 2, "[batch, max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, config.vocab_size)
    batch, width = jnp.shape(prompt)
    _checks.check_integer("prompt_lengths", prompt_lengths)
    _checks.check_shape("prompt_lengths", prompt_lengths, (batch,), "one length per row")
    _checks.check_range("prompt_lengths", prompt_lengths, 1, width + 1)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int; got {max_new_tokens!r}.")
    if width + max_new_tokens > config.max_length:
        raise ValueError(
            f"prompt width {width} + `max_new_tokens` {max_new_tokens} exceeds the model's "
            f"config.max_length={config.max_length} positions."
        )


def generate(
    target: _models.Model,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Generation:
    """Generates up to ``max_new_tokens`` tokens after each prompt, in one compiled loop.

    Args:
      target: the model to sample from.
      prompt: [B, P] int, prompts left-aligned (row ``b`` holds ``prompt_lengths[b]``
        real tokens, the rest is ignored).
      prompt_lengths: [B] int in [1, P].
      key: PRNG key (unused when ``sampling`` is greedy). Every row draws from its
        own key, so results do not depend on how the batch is sharded.
      max_new_tokens: generation budget per row (static).
      sampling: temperature / top-k / top-p (static); default greedy.
      eos_id: a row stops after emitting this token (static; ``None``: never).
      pad_id: fills the output buffer past each row's length.

    Returns:
      ``Generation`` with ``tokens [B, P + max_new_tokens]``.

    Wrap it in ``jax.jit`` (``static_argnames=("max_new_tokens", "sampling",
    "eos_id", "pad_id")``) to compile the whole generation once per shape.
    """
    config = target.config
    _check_prompt(config, prompt, prompt_lengths, max_new_tokens)
    batch, width = prompt.shape
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    rows = jnp.arange(batch)
    capacity = width + max_new_tokens

    # Prefill the padded prompts, then forget each row's padding.
    cache = _models.init_cache(config, batch, capacity)
    logits, cache = target(prompt, cache)
    cache = _models.rewind(cache, prompt_lengths)
    last_logits = logits[rows, prompt_lengths - 1]  # [B, V]

    def draw(key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        key, step_key = jax.random.split(key)
        row_keys = jax.random.split(step_key, batch)
        return key, jax.vmap(lambda k, x: sample(k, x, sampling))(row_keys, logits)

    def is_done(token: jax.Array, lengths: jax.Array) -> jax.Array:
        done = lengths - prompt_lengths >= max_new_tokens
        if eos_id is not None:
            done = done | (token == eos_id)
        return done

    positions = jnp.arange(capacity)[None, :]
    buffer = jnp.where(
        positions < prompt_lengths[:, None], jnp.pad(prompt, ((0, 0), (0, max_new_tokens))), pad_id
    )
    key, first = draw(key, last_logits)
    buffer = buffer.at[rows, prompt_lengths].set(first)
    lengths = prompt_lengths + 1
    state = _LoopState(
        tokens=buffer,
        lengths=lengths,
        last_token=first,
        cache=cache,
        finished=is_done(first, lengths),
        key=key,
        target_calls=jnp.ones((batch,), jnp.int32),
    )

    def body(state: _LoopState) -> _LoopState:
        active = ~state.finished
        logits, cache = target(state.last_token[:, None], state.cache)
        # Finished rows ran along (fixed shapes) but keep their cache length.
        cache = cache._replace(lengths=jnp.where(active, cache.lengths, state.cache.lengths))
        key, token = draw(state.key, logits[:, 0])
        token = jnp.where(active, token, state.last_token)
        write_at = jnp.where(active, state.lengths, capacity)  # past the end: dropped
        tokens = state.tokens.at[rows, write_at].set(token, mode="drop")
        lengths = state.lengths + active
        return _LoopState(
            tokens=tokens,
            lengths=lengths,
            last_token=token,
            cache=cache,
            finished=state.finished | is_done(token, lengths),
            key=key,
            target_calls=state.target_calls + active,
        )

    state = lax.while_loop(lambda s: ~jnp.all(s.finished), body, state)
    zeros = jnp.zeros((batch,), jnp.int32)
    return Generation(
        tokens=state.tokens,
        lengths=state.lengths,
        num_generated=state.lengths - prompt_lengths,
        stats=GenerationStats(target_calls=state.target_calls, drafted=zeros, accepted=zeros),
    )
