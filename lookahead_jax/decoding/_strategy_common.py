"""Pieces shared by the lookahead decoding strategies (CNTP, AdaDec, LATR, First-Finish, momentum).

Every strategy follows the library's contract: one frozen, hashable ``XConfig``
dataclass (all static settings, ``max_new_tokens``, ``eos_id`` and ``pad_id``
included), ``x_init(model, prompt, prompt_lengths, config) -> XState``,
``x_step(key, state, model, config) -> (XState, XInfo)`` and ``x_run(key, model,
prompt, prompt_lengths, config) -> XResult`` (one ``lax.while_loop`` of
``x_step``). ``key`` is the *run's* key, the same at every step: a step folds in
each token's index (below), so a Python loop of ``x_step`` with one key equals
``x_run``. Deterministic strategies (AdaDec, momentum) take the key and ignore it.

Checks: shapes, dtypes and static settings are checked at trace time; token ids
and prompt lengths go through ``lookahead_jax._checks.check_range`` (a
``ValueError`` at once on concrete values, under ``lookahead_jax.checked`` when
traced). ``init`` and ``run`` check; ``step`` trusts its state.

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
* dtypes: the model's cache keeps the model's dtype; next-token logits,
  log-probabilities, entropies and perplexities are float32 (softmax and means
  need it), whatever the model computes in;
* compute is counted per prompt row: ``model_calls`` (sequential forward passes
  that advanced the row, prefill included: a latency proxy) and
  ``tokens_evaluated`` (tokens fed to the model for the row's useful lanes,
  prompt included: a FLOP proxy). Fixed-shape execution also runs idle lanes;
  those are not counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks, metrics
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
    """Checks a ragged prompt batch; returns ``(batch, width)``.

    Shapes and dtypes at trace time; token ids in ``[0, vocab)`` and lengths in ``[1,
    width]`` with ``_checks.check_range`` (at once when concrete, under
    ``lookahead_jax.checked`` when traced).
    """
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


# Static-value checks live in the library's one place for checks.
check_int = _checks.check_int
check_float = _checks.check_float
check_token = _checks.check_token


def check_budget(model: Any, max_new_tokens: Any, eos_id: Any) -> None:
    """The settings every strategy config carries: the token budget and EOS id (static)."""
    check_int("max_new_tokens", max_new_tokens, 1)
    check_token("eos_id", eos_id, model.config.vocab_size)


def prepare_prompts(
    model: Any, prompt: Any, prompt_lengths: Any, max_new_tokens: int, extra_positions: int = 0
) -> tuple[jax.Array, jax.Array]:
    """``check_prompts``, then ``(prompt [B, P] int32, prompt_lengths [B] int32)``."""
    check_prompts(model, prompt, prompt_lengths, max_new_tokens, extra_positions)
    return jnp.asarray(prompt, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32)


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
        lp = metrics.log_softmax(logits)
    else:
        lp = log_probs(logits, sampling)
        tokens = jax.vmap(lambda k, x: jax.random.categorical(k, x))(
            keys.reshape(-1), lp.reshape(-1, lp.shape[-1])
        )
        tokens = tokens.reshape(keys.shape).astype(jnp.int32)
    return tokens, metrics.token_log_probs(lp, tokens)


def entropy_of_logits(logits: jax.Array, sampling: Sampling | None = None) -> jax.Array:
    """Entropy (nats) of the next-token distribution ``[..., V] -> [...]``.

    With a non-greedy ``sampling`` it is the entropy of the processed (temperature,
    top-k, top-p) distribution; otherwise of ``softmax(logits)``.
    """
    if sampling is None or sampling.greedy:
        lp = metrics.log_softmax(logits)
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
    # Logits at each prompt's last token only ([B, 1, V], not [B, P, V]).
    logits, cache = model(prompt, cache, logits_at=(prompt_lengths - 1)[:, None])
    cache = _models.rewind(cache, prompt_lengths)
    return logits[:, 0], cache


def prompt_buffer(prompt: jax.Array, prompt_lengths: jax.Array, width: int, pad_id: int):
    """The ragged prompts right-padded with ``pad_id`` to ``width`` columns: ``[B, width]``."""
    columns = jnp.arange(width)[None, :]
    padded = jnp.pad(prompt, ((0, 0), (0, width - prompt.shape[1])))
    return jnp.where(columns < prompt_lengths[:, None], padded, pad_id).astype(jnp.int32)


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
    padded_prompt = prompt_buffer(prompt, prompt_lengths, total, pad_id)
    padded_prompt = padded_prompt.reshape((batch, *extra, total))
    gen_index = jnp.clip(columns - plen, 0, max_new - 1)
    gen = jnp.take_along_axis(
        generated, jnp.broadcast_to(gen_index, (batch, *lanes, total)), axis=-1
    )
    in_gen = (columns >= plen) & (columns < plen + num_generated[..., None])
    out = jnp.where(in_prompt, padded_prompt, jnp.where(in_gen, gen, pad_id))
    return out.astype(jnp.int32)
