"""Per-token scores, one copy for the whole library: log-probabilities, NLL, edit distance.

Used by the models' scoring (``models.next_token_nll``), the decoding strategies (CNTP's
segment perplexity, AdaDec's candidate log p, LATR's rollout log-probabilities and pruning
distance), the tour and the experiments' training losses. All of them accumulate in
float32 (log-softmax and means need it), whatever the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "log_softmax",
    "mean_nll",
    "normalized_edit_distance",
    "perplexity",
    "token_log_probs",
    "token_nll",
]


def log_softmax(logits: jax.Array) -> jax.Array:
    """``log softmax(logits)`` over the last axis, in float32: ``[..., V] -> [..., V]``."""
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def token_log_probs(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log_probs [..., V]`` at ``tokens [...]`` (int): ``[...]`` (the per-token ``-NLL``)."""
    return jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood in nats of ``targets [...]`` under ``logits [..., V]``: ``[...]``
    float32 (the cross-entropy of each position)."""
    return -token_log_probs(log_softmax(logits), targets)


def mean_nll(token_lps: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the first ``lengths`` tokens: ``[..., S], [...] -> [...]``.

    Entries past ``lengths`` must be 0 (the strategies' buffers are); an empty sequence
    has NLL 0.
    """
    return -jnp.sum(token_lps, axis=-1) / jnp.maximum(lengths, 1)


def perplexity(token_lps: jax.Array, lengths: jax.Array) -> jax.Array:
    """``exp(mean NLL)`` of the first ``lengths`` tokens: ``[..., S], [...] -> [...]``."""
    return jnp.exp(mean_nll(token_lps, lengths))


def normalized_edit_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Levenshtein distance of ``a [..., r]`` and ``b [..., r]`` divided by ``r``: ``[...]``."""
    r = a.shape[-1]
    lead = a.shape[:-1]
    cols = jnp.arange(r + 1)
    prev = jnp.broadcast_to(cols, (*lead, r + 1)).astype(jnp.int32)

    def row(prev, i):
        sub = (a[..., i][..., None] != b).astype(jnp.int32)  # [..., r]
        tmp = jnp.concatenate(
            [
                jnp.full((*lead, 1), i + 1, jnp.int32),
                jnp.minimum(prev[..., 1:] + 1, prev[..., :-1] + sub),
            ],
            axis=-1,
        )
        # Insertions within the row: cur[j] = min_k<=j tmp[k] + (j - k).
        cur = lax.cummin(tmp - cols, axis=tmp.ndim - 1) + cols
        return cur, None

    last, _ = lax.scan(row, prev, jnp.arange(r))
    return last[..., r].astype(jnp.float32) / r
