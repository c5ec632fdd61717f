"""Tree verification: greedy and lossless multi-draft (SpecInfer) speculative sampling.

The target scores a ``TokenTree`` in one block of ``N + 1`` tokens (root first,
node ``i`` at block index ``i + 1``; see ``lookahead_jax.trees``). Verification
walks from the root: at each accepted node it tries that node's children in
index order, descends into the first accepted one, and emits one more token
from the target (or its residual) where the walk stops.

Each row scans its nodes once in index order. Topological order makes this a
walk: a node is tried only if its parent is the current node, so the subtrees
of rejected children (and the later siblings of an accepted child) are skipped.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks
from lookahead_jax.trees import TokenTree, ancestor_mask, check_tree
from lookahead_jax.verification.chain import acceptance_probability, residual_distribution


class TreeVerified(NamedTuple):
    """Outcome of verifying one tree per row."""

    num_accepted: jax.Array  # [B] int32, accepted draft nodes (length of the accepted path)
    next_token: jax.Array  # [B] int32, token emitted after the accepted path
    path: jax.Array  # [B, N + 1] int32, block indices of the path: root (0) first, then nodes
    path_length: jax.Array  # [B] int32, = num_accepted + 1 valid entries of `path`


def _check(tree: TokenTree, target, target_name: str) -> tuple[int, int]:
    check_tree(tree)
    batch, num_nodes = tree.parent.shape
    _checks.check_rank(target_name, target, 3, "[batch, num_nodes + 1, vocab]")
    _checks.check_shape(target_name, target, (batch, num_nodes + 1, None), "[B, N + 1, V]")
    _checks.check_range("tree.token", tree.token, 0, jnp.shape(target)[-1])
    return batch, num_nodes


def _walk(tree: TokenTree, decide, carry_extra):
    """Scans nodes in order; ``decide(extra, node, is_child) -> (accept, extra)`` per row."""

    def step(carry, node):
        current, count, path, extra = carry
        is_child = tree.valid[node] & (tree.parent[node] + 1 == current)
        accept, extra = decide(extra, node, current, is_child)
        accept = accept & is_child
        path = jnp.where(accept, path.at[count + 1].set(node + 1), path)
        current = jnp.where(accept, node + 1, current)
        return (current, count + accept.astype(jnp.int32), path, extra), None

    num_nodes = tree.parent.shape[0]
    init = (jnp.int32(0), jnp.int32(0), jnp.zeros((num_nodes + 1,), jnp.int32), carry_extra)
    (current, count, path, extra), _ = lax.scan(step, init, jnp.arange(num_nodes))
    return current, count, path, extra


def tree_greedy(tree: TokenTree, target_logits: jax.Array) -> TreeVerified:
    """Greedy tree verification: the deepest node whose whole path is the target's argmax.

    Args:
      tree: ``TokenTree`` [B, N].
      target_logits: [B, N + 1, V], the target's logits at the root (block index
        0) and at every node (block index ``i + 1``), scored under ``block_mask``.
    Returns:
      ``TreeVerified``: the longest root path whose every token is the target's
      argmax after its prefix (the lowest-index one when siblings repeat a
      token, so that several paths spell the same tokens), and the argmax after
      it. Equals plain greedy decoding.

    Vectorised (no walk): a node is on a greedy path iff it and all its
    ancestors match, which one ancestor-mask reduction decides for every node.
    """
    _check(tree, target_logits, "target_logits")
    batch, num_nodes = tree.parent.shape
    choice = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)  # [B, N + 1]
    parent_choice = jnp.take_along_axis(choice, jnp.clip(tree.parent + 1, 0, num_nodes), axis=1)
    match = tree.valid & (tree.token == parent_choice)
    ancestors = ancestor_mask(jnp.where(tree.valid, tree.parent, -1))  # [B, N, N]
    on_path = match & jnp.all(~ancestors | match[:, None, :], axis=2)
    # Depths from the parent pointers (what the target's mask and positions follow), not
    # `tree.depth`: a tree whose depths disagree can then never commit an unchecked token.
    node_depth = jnp.sum(ancestors, axis=2, dtype=jnp.int32)  # [B, N], itself included
    depth = jnp.where(on_path, node_depth, 0)
    best = jnp.argmax(depth, axis=1)  # deepest matching node, lowest index on ties
    count = jnp.max(depth, axis=1).astype(jnp.int32)
    rows = jnp.arange(batch)
    # The path: the chosen node's ancestors by depth (block index = node + 1).
    chosen = ancestors[rows, best] & (count > 0)[:, None]  # [B, N]
    levels = jnp.arange(1, num_nodes + 1)
    at_level = chosen[:, None, :] & (node_depth[:, None, :] == levels[None, :, None])  # [B, N, N]
    nodes = jnp.sum(jnp.where(at_level, jnp.arange(num_nodes) + 1, 0), axis=2)  # [B, N]
    path = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), nodes.astype(jnp.int32)], axis=1)
    current = jnp.where(count > 0, best + 1, 0)
    next_token = choice[rows, current]
    return TreeVerified(count, next_token, path, count + 1)


def tree_speculative_sampling(
    key: jax.Array,
    tree: TokenTree,
    draft_probs: jax.Array,
    target_probs: jax.Array,
    *,
    replacement: bool = True,
) -> TreeVerified:
    """Lossless multi-draft verification (SpecInfer's recursive rejection sampling).

    At the current node with residual ``p~`` (initially the target's ``p``), the
    children ``c_1, c_2, ...`` are tried in index order: ``c_j`` is accepted with
    probability ``min(1, p~(c_j) / q_j(c_j))`` and the walk descends; on
    rejection ``p~ <- norm(max(0, p~ - q_j))``. If every child fails (or there
    is none), the next token is drawn from ``p~``. The emitted tokens follow the
    target distribution exactly provided the children were drawn as declared:

    * ``replacement=True``: each child was drawn independently from its own
      ``draft_probs`` row (i.i.d. siblings share a row; a deterministic child
      has a one-hot row, which makes the rule exact for any fixed candidates);
    * ``replacement=False``: siblings were drawn *without replacement* from the
      first sibling's row ``q`` (e.g. Gumbel-top-k, in draw order); after each
      rejection the tried token is removed from ``q``, which is renormalised.

    A chain-shaped tree reproduces ``speculative_sampling`` bitwise with the same key.

    Args:
      key: PRNG key; each row uses its own sub-key.
      tree: ``TokenTree`` [B, N].
      draft_probs: [B, N, V], the distribution node ``i`` was drawn from.
      target_probs: [B, N + 1, V], the target's distributions at the root and nodes.
      replacement: see above (static).
    Returns:
      ``TreeVerified``.
    """
    batch, num_nodes = _check(tree, target_probs, "target_probs")
    vocab = jnp.shape(target_probs)[-1]
    _checks.check_shape("draft_probs", draft_probs, (batch, num_nodes, vocab), "[B, N, V]")
    target_probs = jnp.asarray(target_probs, jnp.float32)
    draft_probs = jnp.asarray(draft_probs, jnp.float32)
    row_keys = jax.random.split(key, batch)

    def one_row(row_key, tree, q_rows, p_rows):
        accept_key, token_key = jax.random.split(row_key)
        uniform = jax.random.uniform(accept_key, (num_nodes,))

        def decide(extra, node, current, is_child):
            residual, q_left, started = extra
            q = q_rows[node] if replacement else jnp.where(started, q_left, q_rows[node])
            x = tree.token[node]
            accept = uniform[node] < acceptance_probability(residual[x], q[x])
            reject = is_child & ~accept
            accepted = is_child & accept
            residual = jnp.where(
                accepted,
                p_rows[node + 1],
                jnp.where(reject, residual_distribution(residual, q), residual),
            )
            removed = q.at[x].set(0.0)
            mass = jnp.sum(removed)
            removed = jnp.where(mass > 0, removed / jnp.where(mass > 0, mass, 1.0), removed)
            q_left = jnp.where(reject, removed, q_left)
            started = jnp.where(accepted, False, started | reject)
            return accept, (residual, q_left, started)

        extra = (p_rows[0], jnp.zeros((vocab,), jnp.float32), jnp.bool_(False))
        _, count, path, (residual, _, _) = _walk(tree, decide, extra)
        next_token = jax.random.categorical(token_key, jnp.log(residual)).astype(jnp.int32)
        return count, next_token, path

    count, next_token, path = jax.vmap(one_row)(row_keys, tree, draft_probs, target_probs)
    return TreeVerified(count, next_token, path, count + 1)
