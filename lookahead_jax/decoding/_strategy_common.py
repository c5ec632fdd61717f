"""Pieces shared by the lookahead decoding strategies (CNTP, AdaDec, LATR, First-Finish, momentum).

Conventions of every strategy in this package:

* the model is any callable following ``models.apply``: ``model(tokens [R, S], cache)
  -> (logits [R, S, V], cache)`` appending at each row's own cache length, with a
  static ``model.config`` (``vocab_size``, ``max_length``) used to size the cache;
* a strategy's cache holds *every* committed token of a row and the state carries
  the logits of the next token (``next_logits``), so committing a token costs one
  model call over one token;
* several lanes per prompt (trials, beams, rollouts) are rows ``b * lanes + j``
  of one model batch;
* randomness: lane ``j`` of prompt row ``b`` draws its ``i``-th generated token
  (0-based, counted from the end of the prompt) with
  ``fold_in(fold_in(row_keys[b], j), i)`` where ``row_keys = split(key, B)``.
  Plain sampling (``sample_rollouts`` with one rollout) is lane 0; a strategy that
  falls back to plain sampling uses the same keys, so it equals it exactly;
* compute is counted per prompt row: ``model_calls`` (sequential forward passes
  that advanced the row, prefill included: a latency proxy) and
  ``tokens_evaluated`` (tokens fed to the model for the row's useful lanes,
  prompt included: a FLOP proxy). Fixed-shape execution also runs idle lanes;
  those are not counted.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks
from lookahead_jax import models as _models
from lookahead_jax.sampling import Sampling, log_probs

# Bytes that end a CNTP segment: . , \n ? ! : ; ) ] }
PUNCTUATION_BYTES = tuple(b".,\n?!:;)]}")


class Compute(NamedTuple):
    """Compute spent per prompt row."""

    model_calls: jax.Array  # [B] int32, sequential forward passes (prefill included)
    tokens_evaluated: jax.Array  # [B] int32, tokens fed to the model (prompt included)


# ----------------------------------------------------------------------------- checks


def check_prompts(
    model: Any, prompt: Any, prompt_lengths: Any, max_new_tokens: Any, extra_positions: int = 0
) -> tuple[int, int]:
    """Trace-time checks of a ragged prompt batch; returns ``(batch, width)``."""
    config = model.config
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 2, "[batch, max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, config.vocab_size)
    batch, width = jnp.shape(prompt)
    _checks.check_integer("prompt_lengths", prompt_lengths)
    _checks.check_shape("prompt_lengths", prompt_lengths, (batch,), "one length per row")
    _checks.check_range("prompt_lengths", prompt_lengths, 1, width + 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    needed = width + max_new_tokens + extra_positions
    if needed > config.max_length:
        extra = f" + {extra_positions} lookahead positions" if extra_positions else ""
        raise ValueError(
            f"prompt width {width} + `max_new_tokens` {max_new_tokens}{extra} = {needed} "
            f"exceeds the model's config.max_length={config.max_length} positions."
        )
    return batch, width


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """``value`` must be a Python int in ``[low, high]``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an int {span}; got {value!r}.")


def check_float(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` must be a real number in the given interval (never NaN).

    A traced value (e.g. ``alpha`` passed through ``jit``) cannot be checked and passes.
    """
    if isinstance(value, jax.Array) and _checks.concrete_value(value) is None:
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    ok = not math.isnan(x)
    ok = ok and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {left}{low}, {high}{right}; got {value!r}.")


def check_token(name: str, value: Any, vocab_size: int, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
        raise ValueError(
            f"`{name}` must be a token id in [0, {vocab_size})"
            + (" or None" if optional else "")
            + f"; got {value!r}."
        )


# ----------------------------------------------------------------------------- keys


def lane_keys(key: jax.Array, batch: int, lanes: int) -> jax.Array:
    """``[B, lanes]`` keys: lane ``j`` of row ``b`` is ``fold_in(split(key, B)[b], j)``."""
    rows = jax.random.split(key, batch)
    return jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(lanes)))(rows)


def token_keys(keys: jax.Array, index: jax.Array) -> jax.Array:
    """Keys ``[...]`` folded with the generated-token index ``index`` (broadcast)."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), keys.shape)
    flat = jax.vmap(jax.random.fold_in)(keys.reshape(-1), index.reshape(-1))
    return flat.reshape(keys.shape)


def draw(keys: jax.Array, logits: jax.Array, sampling: Sampling) -> tuple[jax.Array, jax.Array]:
    """One token per lane: ``keys [...]``, ``logits [..., V]`` -> ``(tokens [...], log p [...])``.

    The log-probability is under the sampling distribution (``log_probs``); for
    greedy sampling it is taken at temperature 1.
    """
    if sampling.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    else:
        lp = log_probs(logits, sampling)
        tokens = jax.vmap(lambda k, x: jax.random.categorical(k, x))(
            keys.reshape(-1), lp.reshape(-1, lp.shape[-1])
        )
        tokens = tokens.reshape(keys.shape).astype(jnp.int32)
    return tokens, jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]


def entropy_of_logits(logits: jax.Array, sampling: Sampling | None = None) -> jax.Array:
    """Entropy (nats) of the next-token distribution ``[..., V] -> [...]``.

    With a non-greedy ``sampling`` it is the entropy of the processed (temperature,
    top-k, top-p) distribution; otherwise of ``softmax(logits)``.
    """
    if sampling is None or sampling.greedy:
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    else:
        lp = log_probs(logits, sampling)
    p = jnp.exp(lp)
    return -jnp.sum(jnp.where(p > 0, p * lp, 0.0), axis=-1)


# ----------------------------------------------------------------------------- caches


def take_rows(cache: _models.KVCache, index: jax.Array) -> _models.KVCache:
    """The cache rows ``index [R]`` (a gather along the batch axis)."""
    return _models.KVCache(
        keys=cache.keys[:, index], values=cache.values[:, index], lengths=cache.lengths[index]
    )


def repeat_rows(cache: _models.KVCache, lanes: int) -> _models.KVCache:
    """Row ``b`` becomes rows ``b * lanes + j`` for ``j < lanes``."""
    if lanes == 1:
        return cache
    return take_rows(cache, jnp.repeat(jnp.arange(cache.batch_size), lanes))


def feed(model: Any, cache: _models.KVCache, tokens: jax.Array, active: jax.Array):
    """Appends one token per row where ``active`` (others keep their length).

    Returns ``(logits [R, V], cache)``; inactive rows' logits are garbage.
    """
    logits, new = model(tokens[:, None], cache)
    lengths = jnp.where(active, new.lengths, cache.lengths)
    return logits[:, 0], new._replace(lengths=lengths)


def prefill(model: Any, prompt: jax.Array, prompt_lengths: jax.Array, capacity: int):
    """Runs the padded prompts once: ``(next_logits [B, V], cache holding the prompts)``."""
    batch = prompt.shape[0]
    cache = _models.init_cache(model.config, batch, capacity, dtype=getattr(model, "dtype", None))
    logits, cache = model(prompt, cache)
    cache = _models.rewind(cache, prompt_lengths)
    return logits[jnp.arange(batch), prompt_lengths - 1], cache


def assemble(
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    generated: jax.Array,
    num_generated: jax.Array,
    pad_id: int,
) -> jax.Array:
    """Prompt then generated tokens, right-padded: ``[..., P + N]``.

    ``prompt [B, P]``, ``prompt_lengths [B]``; ``generated [B, ..., N]`` and
    ``num_generated [B, ...]`` may carry extra lane axes after the batch axis.
    """
    batch, width = prompt.shape
    max_new = generated.shape[-1]
    lanes = generated.shape[1:-1]
    total = width + max_new
    columns = jnp.arange(total)
    extra = (1,) * len(lanes)
    plen = prompt_lengths.reshape((batch, *extra, 1))
    in_prompt = columns < plen
    padded_prompt = jnp.pad(prompt, ((0, 0), (0, max_new))).reshape((batch, *extra, total))
    gen_index = jnp.clip(columns - plen, 0, max_new - 1)
    gen = jnp.take_along_axis(
        generated, jnp.broadcast_to(gen_index, (batch, *lanes, total)), axis=-1
    )
    in_gen = (columns >= plen) & (columns < plen + num_generated[..., None])
    out = jnp.where(in_prompt, padded_prompt, jnp.where(in_gen, gen, pad_id))
    return out.astype(jnp.int32)
