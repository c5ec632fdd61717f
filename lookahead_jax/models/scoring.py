"""Scoring text with a model: next-token log-likelihood, continuations' log-probabilities,
bits per byte, greedy agreement."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import _checks, metrics
from lookahead_jax.models.model import Model


@jax.jit
def next_token_nll(model: Model, tokens: jax.Array) -> jax.Array:
    """NLL in nats of ``tokens[:, 1:]`` given their prefixes: [B, S] -> [B, S - 1]."""
    logits, _ = model(tokens[:, :-1])  # the last token is only a target
    return metrics.token_nll(logits, tokens[:, 1:])


def continuation_log_probs(
    model: Model, prompts, outputs, batch_size: int = 64
) -> list[np.ndarray]:
    """Per-token log-probabilities of each ``outputs[i]`` after ``prompts[i]`` under ``model``.

    ``prompts`` and ``outputs`` are sequences of token-id sequences; returns one float32
    array of ``len(outputs[i])`` values per row. Rows are padded to a multiple of 32 and
    batches to ``batch_size`` (few shapes, few compilations); the scores are
    :func:`next_token_nll` (float32 softmax).
    """
    pairs = list(zip(prompts, outputs, strict=True))
    width = max((len(p) + len(o) for p, o in pairs), default=2)
    width = min(model.config.max_length, max(-(-width // 32) * 32, 2))
    values = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = np.zeros((batch_size, width), np.int32)
        for j, (p, o) in enumerate(chunk):
            rows[j, : len(p) + len(o)] = list(p) + list(o)
        lp = -np.asarray(next_token_nll(model, jnp.asarray(rows)))
        values += [lp[j, len(p) - 1 : len(p) - 1 + len(o)] for j, (p, o) in enumerate(chunk)]
    return values


@jax.jit
def greedy_predictions(model: Model, tokens: jax.Array) -> jax.Array:
    """The argmax next token after every prefix: [B, S] -> [B, S] int32."""
    logits, _ = model(tokens)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _batches(windows: np.ndarray, batch_size: int):
    """Yields ``(batch [batch_size, S], num_real_rows)``; the last batch is zero-padded so
    every call has one shape and compiles once."""
    _checks.check_rank("windows", windows, 2, "[num_windows, window_length]")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    windows = np.asarray(windows)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = np.concatenate(
                [batch, np.zeros((batch_size - real, batch.shape[1]), batch.dtype)]
            )
        yield jnp.asarray(batch, jnp.int32), real


def bits_per_byte(
    model: Model,
    windows: np.ndarray,
    batch_size: int = 32,
    token_bytes: np.ndarray | None = None,
) -> float:
    """Next-token cross-entropy in bits per byte of text over ``windows [N, S]``.

    The first token of each window is context only. With ``token_bytes [V]``
    (``Tokenizer.token_bytes()``: the UTF-8 bytes each id spells) the summed loss
    is divided by the bytes the predicted tokens spell, so BPE and byte-level
    models are scored on the same scale; ``None`` means one byte per token.
    """
    total, count = 0.0, 0
    for batch, real in _batches(windows, batch_size):
        nll = next_token_nll(model, batch)[:real]
        total += float(jnp.sum(nll.astype(jnp.float32)))
        count += nll.size
    if token_bytes is not None:
        count = int(np.asarray(token_bytes)[np.asarray(windows)[:, 1:]].sum())
    return total / count / math.log(2)


def greedy_agreement(
    draft: Model, target: Model, windows: np.ndarray, batch_size: int = 32
) -> float:
    """Fraction of positions of ``windows [N, S]`` where draft and target argmaxes agree.

    Under greedy verification this is the probability that one drafted token is
    accepted, given the same prefix: it predicts speculative acceptance.
    """
    same, count = 0, 0
    for batch, real in _batches(windows, batch_size):
        agree = (greedy_predictions(draft, batch) == greedy_predictions(target, batch))[:real]
        same += int(jnp.sum(agree))
        count += agree.size
    return same / count
