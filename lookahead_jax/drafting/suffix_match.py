"""Suffix-tree drafts read straight from text: the longest suffix match and its continuations.

A suffix tree of a text, cut at some depth, holds one path per window of the text, and a
node's count is how often its path occurs. Everything a drafter asks of it (the longest
suffix of the committed tokens that occurs with a continuation, and the most frequent
continuations below it) can be read from the text itself: find where that suffix occurs,
and count the continuations there. Nothing is inserted as tokens are committed, so a round
that drafts nothing pays nothing; the work is one pass over the text per proposal.

Texts are *corpora* ``[R, N]`` (``R`` = the batch, or 1 for one corpus shared by every
row) with a ``source [R, N]`` id per position (``-1``: empty): a match or continuation
never crosses from one source to another, so one array can hold many texts one after the
other (e.g. earlier requests' outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import trees

_KEY_DEPTH = 64  # the ranking key reserves 6 bits for the depth
_MAX_KEY_COUNT = 1 << 18  # count * 64 stays exact in float32 (XLA's float top_k is fast)


def _shift_right(x: jax.Array, k: int, fill: int) -> jax.Array:
    """``x[..., j - k]`` at position ``j`` (``fill`` for ``j < k``)."""
    if k == 0:
        return x
    pad = jnp.full((*x.shape[:-1], k), fill, x.dtype)
    return jnp.concatenate([pad, x[..., :-k]], axis=-1)


def match_lengths(
    text: jax.Array, source: jax.Array, query: jax.Array, query_lengths: jax.Array
) -> jax.Array:
    """How many of each row's last tokens end at every corpus position.

    Args:
      text: [R, N] int, the corpus (``R`` = B, or 1 shared by all rows).
      source: [R, N] int, the text each position belongs to (-1: empty).
      query: [B, K] int, each row's last ``K`` tokens, newest first.
      query_lengths: [B] int in [0, K], how many of them are real.
    Returns:
      ``[B, N]`` int32: the largest ``k`` with ``text[j - i] == query[b, i]`` for all
      ``i < k`` within one source.
    """
    live = source >= 0
    alive = jnp.broadcast_to(live, (query.shape[0], text.shape[-1]))
    length = jnp.zeros(alive.shape, jnp.int32)
    # One pass per query token (K is static and small): XLA fuses them into one loop.
    for k in range(query.shape[1]):
        same_text = _shift_right(text, k, -1) == query[:, k : k + 1]
        same_source = _shift_right(source, k, -2) == source
        alive = alive & same_text & same_source & (k < query_lengths)[:, None]
        length = length + alive
    return length


def draft_tree(
    text: jax.Array,
    source: jax.Array,
    order: jax.Array,
    query: jax.Array,
    query_lengths: jax.Array,
    *,
    num_nodes: int,
    depth: int,
    num_occurrences: int,
    max_spec_factor: float,
    min_token_prob: float,
) -> tuple[trees.TokenTree, jax.Array, jax.Array]:
    """The speculation tree below each row's longest suffix match in a corpus.

    The match is the longest suffix (at most ``K`` tokens) of the row's text that occurs
    in the corpus followed by at least one token of the same source. Its continuations
    (up to ``depth`` tokens) at its ``num_occurrences`` most recent occurrences (largest
    ``order``) form a trie whose node counts are how many of them start with the node's
    path: the suffix tree's counts below the matched node (exact while the match occurs
    at most ``num_occurrences`` times). The tree keeps the nodes with
    ``count >= min_token_prob * total`` (``total``: the occurrences), ranked by count
    (ties: shallower first, then the more recent occurrence), at most
    ``min(num_nodes, floor(max_spec_factor * match_length))`` of them; since a path's
    count telescopes, that is best-first by empirical probability, and the ranking is
    prefix-closed (a node never outranks its parent), so the kept nodes form a tree
    listed in topological order.

    Args:
      text, source: [R, N] the corpus (see :func:`match_lengths`).
      order: [R, N] int in [0, 2**24), recency (larger: more recent; distinct in a row).
      query, query_lengths: [B, K] / [B], each row's last tokens (newest first).
      num_nodes: N', the tree capacity (static); depth: its depth bound (static, < 64).
      num_occurrences: how many occurrences are counted (static).
      max_spec_factor, min_token_prob: as above (floats).
    Returns:
      ``(tree [B, N'], score [B] float32, match_length [B] int32)``; ``score`` is the sum of
      the kept nodes' empirical probabilities (expected accepted tokens), 0 without a match.
    """
    batch = query.shape[0]
    length = match_lengths(text, source, query, query_lengths)  # [B, N]
    # A match counts only where a token of the same source follows it.
    follows = (source >= 0) & (jnp.roll(source, -1, axis=-1) == source)
    follows = follows.at[..., -1].set(False)
    length = jnp.where(follows, length, 0)
    match = jnp.max(length, axis=-1)  # [B]
    occurs = (length >= match[:, None]) & (match[:, None] > 0)
    num_found = min(num_occurrences, text.shape[-1])
    # Float keys: XLA:CPU's top_k over int32 is a full sort (8.4 ms against 0.2 ms for
    # float32 at batch 16 x 4,096); `order` < 2**24 stays exact.
    recency, where = lax.top_k(jnp.where(occurs, order, -1).astype(jnp.float32), num_found)
    found = recency >= 0  # [B, O]
    # The continuation tokens after each occurrence: [B, O, D].
    steps = jnp.arange(1, depth + 1)
    position = where[..., None] + steps  # [B, O, D]
    inside = position < text.shape[-1]
    position = jnp.minimum(position, text.shape[-1] - 1)
    rows = jnp.arange(batch)[:, None, None] if text.shape[0] == batch else jnp.zeros((), int)
    rows = jnp.broadcast_to(rows, position.shape)
    token = text[rows, position]
    start_source = jnp.take_along_axis(jnp.broadcast_to(source, length.shape), where, axis=1)
    real = found[..., None] & inside & (source[rows, position] == start_source[..., None])
    real = jnp.cumprod(real, axis=-1).astype(bool)  # a continuation stops at its first gap
    # shared[b, o, o', d]: occurrences o and o' continue with the same d + 1 tokens.
    equal = (token[:, :, None, :] == token[:, None, :, :]) & real[:, :, None, :]
    equal = equal & real[:, None, :, :]
    shared = jnp.cumprod(equal, axis=-1).astype(bool)
    count = jnp.sum(shared, axis=2, dtype=jnp.int32)  # [B, O, D]
    first = jnp.argmax(shared, axis=2)  # [B, O, D]: the earliest-ranked o' sharing the path
    occurrence = jnp.arange(num_found)[None, :, None]
    own = real & (first == occurrence)  # one node per distinct path: its first occurrence
    total = jnp.sum(found, axis=1, dtype=jnp.int32)  # [B]
    min_count = jnp.ceil(min_token_prob * total.astype(jnp.float32) - 1e-6).astype(jnp.int32)
    min_count = jnp.maximum(min_count, 1)
    level = jnp.broadcast_to(steps, count.shape)
    candidate = own & (count >= min_count[:, None, None])
    key = jnp.minimum(count, _MAX_KEY_COUNT) * _KEY_DEPTH - level
    key = jnp.where(candidate, key, 0).astype(jnp.float32).reshape(batch, -1)  # o-major
    value, chosen = lax.top_k(key, num_nodes)  # [B, N']
    max_nodes = jnp.minimum(num_nodes, jnp.floor(max_spec_factor * match).astype(jnp.int32))
    valid = (value > 0) & (jnp.arange(num_nodes)[None, :] < max_nodes[:, None])
    chosen_occurrence, chosen_step = chosen // depth, chosen % depth
    # The parent's node: the first occurrence sharing the path one token shorter.
    up = jnp.maximum(chosen_step - 1, 0)
    flat_first = first.reshape(batch, -1)
    parent_occurrence = jnp.take_along_axis(flat_first, chosen_occurrence * depth + up, axis=1)
    parent_key = parent_occurrence * depth + up
    same = (chosen[:, None, :] == parent_key[:, :, None]) & valid[:, None, :]
    parent = jnp.where(chosen_step == 0, trees.ROOT, jnp.argmax(same, axis=2))
    # The ranking is prefix-closed, so a kept node's parent is kept before it.
    valid = valid & ((chosen_step == 0) | jnp.any(same, axis=2))
    node_count = jnp.take_along_axis(count.reshape(batch, -1), chosen, axis=1)
    node_token = jnp.take_along_axis(token.reshape(batch, -1), chosen, axis=1)
    tree = trees.TokenTree(
        parent=jnp.where(valid, parent, trees.ROOT).astype(jnp.int32),
        depth=jnp.where(valid, chosen_step + 1, 1).astype(jnp.int32),
        token=jnp.where(valid, node_token, 0).astype(jnp.int32),
        valid=valid,
    )
    kept = jnp.sum(jnp.where(valid, node_count, 0), axis=1)
    score = kept.astype(jnp.float32) / jnp.maximum(total, 1).astype(jnp.float32)
    return tree, score, match.astype(jnp.int32)


def last_tokens(tokens: jax.Array, lengths: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Each row's last ``size`` committed tokens, newest first: ``([B, size], lengths [B])``."""
    position = lengths[:, None] - 1 - jnp.arange(size)[None, :]
    query = jnp.take_along_axis(tokens, jnp.maximum(position, 0), axis=1)
    return query, jnp.minimum(lengths, size).astype(jnp.int32)
