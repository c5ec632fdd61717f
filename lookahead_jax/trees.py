"""Token trees with fixed capacity: layout, attention mask, templates, builders, merging.

Shared by drafting (tree builders) and verification (tree verifiers), so it
lives in the shared core. A tree hangs below the *root*, the last committed
token. Its ``N`` draft nodes are stored in topological order (a parent's index
is smaller than its children's)::

    parent[b, i]  -1 for a child of the root, else the index of node i's parent
    depth[b, i]   1 for a child of the root, depth[parent] + 1 otherwise
    token[b, i]   the drafted token
    valid[b, i]   unused capacity is False (its other fields are ignored)

The target scores a tree in one *block* of ``N + 1`` tokens: the root at block
index 0 followed by the nodes (node ``i`` at block index ``i + 1``), with
``block_mask`` as the attention mask. With the root at cache position ``p``,
node ``i`` sits at position ``p + depth[i]``, which is what ``models.apply``
derives from the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, checks

ROOT = -1  # parent index of the root's children


class TokenTree(NamedTuple):
    """A batch of token trees of capacity ``N`` (see the module docstring)."""

    parent: jax.Array  # [B, N] int32, -1 for children of the root
    depth: jax.Array  # [B, N] int32, >= 1 (1 for children of the root)
    token: jax.Array  # [B, N] int32
    valid: jax.Array  # [B, N] bool

    @property
    def num_nodes(self) -> int:
        """Capacity ``N`` (static)."""
        return self.parent.shape[-1]


class Template(NamedTuple):
    """A static tree shape: node ``i`` is child number ``rank[i]`` of ``parent[i]``.

    Tree drafters fill a template: a node's token is its parent's
    ``rank``-th candidate (e.g. Token Recycling's adjacency list).
    """

    parent: np.ndarray  # [N] int32, -1 for children of the root
    rank: np.ndarray  # [N] int32, sibling rank (0 = the parent's best candidate)
    depth: np.ndarray  # [N] int32, >= 1

    @property
    def num_nodes(self) -> int:
        return int(self.parent.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.num_nodes else 0

    def level_widths(self) -> list[int]:
        return [int(np.sum(self.depth == d)) for d in range(1, self.max_depth + 1)]


# ---------------------------------------------------------------------------------------
# Construction and validation


def _array_module(*arrays):
    """NumPy for concrete arrays, ``jax.numpy`` if any is traced. Eagerly, each JAX
    operation of a new shape compiles a program of its own: building and checking one tree
    shape that way took 0.7-1.3 s on 2 CPU cores (about 20 programs), in NumPy 13-38 ms."""
    return jnp if any(isinstance(x, jax.core.Tracer) for x in arrays) else np


def depths_from_parents(parent: jax.Array) -> jax.Array:
    """``depth [..., N]`` of topologically ordered nodes from ``parent [..., N]``."""
    xp = _array_module(parent)
    parent = xp.asarray(parent, np.int32)
    num_nodes = parent.shape[-1]
    depth = xp.zeros(parent.shape, np.int32)
    # Node i's depth only needs its parent's, computed earlier in topological order.
    for i in range(num_nodes):
        p = parent[..., i]
        parent_depth = xp.take_along_axis(depth, xp.maximum(p, 0)[..., None], axis=-1)[..., 0]
        value = xp.where(p < 0, 1, parent_depth + 1)
        if xp is np:
            depth[..., i] = value
        else:
            depth = depth.at[..., i].set(value)
    return jnp.asarray(depth)


def make_tree(
    parent: jax.Array,
    token: jax.Array,
    valid: jax.Array | None = None,
    *,
    capacity: int | None = None,
) -> TokenTree:
    """Builds a checked ``TokenTree`` from parent pointers and tokens.

    Args:
      parent: [B, N] int, -1 for children of the root, else an earlier node's index.
      token: [B, N] int.
      valid: [B, N] bool (default: all nodes valid).
      capacity: if given, ``N`` must not exceed it.
    Raises:
      ValueError: (at trace time, for concrete inputs) when the tree is over
        capacity, not topologically ordered, or a valid node has an invalid parent.
    """
    _checks.check_integer("parent", parent)
    _checks.check_rank("parent", parent, 2, "[batch, num_nodes]")
    _checks.check_integer("token", token)
    _checks.check_shape("token", token, jnp.shape(parent), "[B, N] like `parent`")
    if valid is None:
        valid = np.ones(np.shape(parent), bool)  # NumPy: no program to compile
    _checks.check_bool("valid", valid)
    _checks.check_shape("valid", valid, jnp.shape(parent), "[B, N] like `parent`")
    parent = jnp.asarray(parent, jnp.int32)
    tree = TokenTree(
        parent=parent,
        depth=depths_from_parents(parent),
        token=jnp.asarray(token, jnp.int32),
        valid=jnp.asarray(valid, bool),
    )
    check_tree(tree, capacity=capacity)
    return tree


def check_tree(tree: TokenTree, *, capacity: int | None = None) -> None:
    """Raises ``ValueError`` for a malformed tree (checks values only when they are concrete)."""
    num_nodes = tree.parent.shape[-1]
    if capacity is not None and num_nodes > capacity:
        raise ValueError(
            f"the tree has {num_nodes} nodes but the capacity is {capacity} (over capacity)."
        )
    for name in ("depth", "token", "valid"):
        _checks.check_shape(name, getattr(tree, name), tree.parent.shape, "like `tree.parent`")
    if tree.parent.size == 0:
        return
    # One statement of each rule: `check_value` raises at once on concrete trees and, for
    # traced ones (a drafter's tree inside a compiled loop), under `lookahead_jax.checked`.
    fields = (tree.parent, tree.valid, tree.depth)
    xp = _array_module(*fields)
    parent, valid, depth = (xp.asarray(x) for x in fields)
    up = xp.maximum(parent, 0)
    rules = (
        (
            valid & ((parent >= xp.arange(num_nodes)) | (parent < ROOT)),
            "tree nodes must be in topological order (-1 <= parent[i] < i); row {row} node "
            "{node} has parent {value}.",
            parent,
        ),
        (
            valid & ~(xp.take_along_axis(valid, up, axis=-1) | (parent == ROOT)),
            "every valid node needs a valid parent; row {row} node {node} has invalid parent "
            "{value}.",
            parent,
        ),
        (
            valid
            & (depth != xp.where(parent == ROOT, 1, xp.take_along_axis(depth, up, axis=-1) + 1)),
            "`tree.depth` must be the parent's depth + 1 (1 below the root); row {row} node "
            "{node} has depth {value}.",
            depth,
        ),
    )
    for bad, message, values in rules:
        first = xp.argmax(bad.reshape(-1))
        checks.check_value(
            ~xp.any(bad),
            message,
            row=first // num_nodes,
            node=first % num_nodes,
            value=values.reshape(-1)[first],
        )


def ancestor_mask(parent: jax.Array, max_depth: int | None = None) -> jax.Array:
    """``[..., N, N]`` bool: ``mask[i, j]`` iff node ``j`` is node ``i`` or one of its ancestors.

    With ``max_depth`` (a static bound on node depths) the mask is built by
    ``max_depth - 1`` parent-pointer jumps; otherwise by repeated squaring.
    """
    parent = jnp.asarray(parent, jnp.int32)
    num_nodes = parent.shape[-1]
    eye = jnp.eye(num_nodes, dtype=bool)
    step = jax.nn.one_hot(parent, num_nodes, dtype=bool)  # parent -1 -> no entry
    if max_depth is not None and max_depth < np.log2(max(num_nodes, 2)) * 4:
        reach, walk = eye | step, parent
        for _ in range(max_depth - 1):
            walk = jnp.where(
                walk >= 0, jnp.take_along_axis(parent, jnp.maximum(walk, 0), axis=-1), -1
            )
            reach = reach | jax.nn.one_hot(walk, num_nodes, dtype=bool)
        return reach
    reach = (eye | step).astype(jnp.float32)
    # Transitive closure by repeated squaring: paths of length <= 2^s after s steps
    # (float32 counts stay exact: at most N paths between two nodes of a tree).
    steps = max(1, int(np.ceil(np.log2(max(num_nodes, 2)))))
    for _ in range(steps):
        reach = (jnp.matmul(reach, reach) > 0).astype(jnp.float32)
    return reach > 0


def block_mask(tree: TokenTree, max_depth: int | None = None) -> jax.Array:
    """``[B, N + 1, N + 1]`` attention mask of the verification block (root first).

    The root sees itself; node ``i`` sees the root, its ancestors and itself.
    Invalid nodes see only the root and themselves, so they never disturb
    valid nodes (which never see them). ``max_depth``: optional static bound on
    node depths (faster for shallow, wide trees).
    """
    batch, num_nodes = tree.parent.shape
    nodes = ancestor_mask(jnp.where(tree.valid, tree.parent, ROOT), max_depth)
    nodes = nodes & tree.valid[:, :, None]
    nodes = nodes | jnp.eye(num_nodes, dtype=bool)
    mask = jnp.zeros((batch, num_nodes + 1, num_nodes + 1), bool)
    mask = mask.at[:, :, 0].set(True)
    return mask.at[:, 1:, 1:].set(nodes)


def paths(tree: TokenTree, max_depth: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Root-to-node token sequences.

    Returns:
      ``(tokens [B, N, D], lengths [B, N])`` with ``D = max_depth`` (default N):
      ``tokens[b, i, :depth[b, i]]`` is the path from the root's first child to node i.
    """
    _batch, num_nodes = tree.parent.shape
    max_depth = num_nodes if max_depth is None else max_depth
    mask = ancestor_mask(jnp.where(tree.valid, tree.parent, ROOT))  # [B, N, N]
    # The ancestor at depth d of node i is the unique j in mask[i] with depth[j] == d.
    depth_onehot = jax.nn.one_hot(tree.depth - 1, max_depth, dtype=jnp.int32)  # [B, N, D]
    tokens = jnp.einsum("bij,bjd,bj->bid", mask.astype(jnp.int32), depth_onehot, tree.token)
    return tokens.astype(jnp.int32), jnp.where(tree.valid, tree.depth, 0)


# ---------------------------------------------------------------------------------------
# Static templates


def template_from_rank_paths(rank_paths: Sequence[Sequence[int]]) -> Template:
    """A template from each node's path of sibling ranks from the root.

    ``(0,)`` is the root's best child, ``(0, 1)`` that child's second-best child.
    Nodes are sorted by depth (then as given); every path's prefix must be present.
    """
    rank_paths = sorted((tuple(p) for p in rank_paths), key=len)
    if any(len(p) == 0 for p in rank_paths):
        raise ValueError("rank paths must be non-empty (the root is implicit).")
    index = {p: i for i, p in enumerate(rank_paths)}
    if len(index) != len(rank_paths):
        raise ValueError("rank paths must be distinct.")
    parent, rank, depth = [], [], []
    for p in rank_paths:
        if len(p) > 1 and p[:-1] not in index:
            raise ValueError(f"rank path {p} has no parent {p[:-1]} in the template.")
        parent.append(index[p[:-1]] if len(p) > 1 else ROOT)
        rank.append(p[-1])
        depth.append(len(p))
    return Template(
        parent=np.asarray(parent, np.int32),
        rank=np.asarray(rank, np.int32),
        depth=np.asarray(depth, np.int32),
    )


def chain_template(length: int) -> Template:
    """A chain of ``length`` nodes (each the best child of the previous one)."""
    return template_from_rank_paths([(0,) * d for d in range(1, length + 1)])


def full_template(branching: int, depth: int) -> Template:
    """Every node up to ``depth`` has ``branching`` children."""
    levels = [[()]]
    for _ in range(depth):
        levels.append([(*p, r) for p in levels[-1] for r in range(branching)])
    return template_from_rank_paths([p for level in levels[1:] for p in level])


def _token_recycling_rank_paths() -> list[tuple[int, ...]]:
    # Token Recycling's "2.2.2" tree (Luo et al., 2024): 80 nodes over 6 levels of
    # widths 8/21/25/15/8/3. Each entry: a parent's rank path and its number of children.
    spec = {
        (): 8,
        (0,): 8, (1,): 4, (2,): 3, (3,): 2, (4,): 1, (5,): 1, (6,): 1, (7,): 1,
        (0, 0): 8, (0, 1): 3, (0, 2): 2, (0, 3): 1, (0, 4): 1, (0, 5): 1, (0, 6): 1,
        (0, 7): 1, (1, 0): 2, (1, 1): 1, (2, 0): 1, (3, 0): 1, (4, 0): 1, (5, 0): 1,
        (0, 0, 0): 5, (0, 0, 1): 2, (0, 0, 2): 1, (0, 0, 3): 1, (0, 0, 4): 1,
        (0, 1, 0): 1, (0, 2, 0): 1, (1, 0, 0): 1, (2, 0, 0): 1, (3, 0, 0): 1,
        (0, 0, 0, 0): 3, (0, 0, 0, 1): 1, (0, 0, 0, 2): 1, (0, 0, 1, 0): 1,
        (0, 1, 0, 0): 1, (1, 0, 0, 0): 1,
        (0, 0, 0, 0, 0): 2, (0, 0, 0, 1, 0): 1,
    }  # fmt: skip
    return [(*parent, r) for parent, count in spec.items() for r in range(count)]


def token_recycling_template(num_nodes: int | None = None) -> Template:
    """Token Recycling's static "2.2.2" template: 80 nodes, level widths 8/21/25/15/8/3.

    With ``num_nodes`` < 80, the template keeps its ``num_nodes`` most promising
    nodes, ordered by depth plus the sum of sibling ranks along the path (a
    parent always precedes its children, so the result is a tree).
    """
    paths = _token_recycling_rank_paths()
    if num_nodes is not None:
        if not isinstance(num_nodes, int) or not 1 <= num_nodes <= len(paths):
            raise ValueError(f"`num_nodes` must be an int in [1, {len(paths)}]; got {num_nodes!r}.")
        order = sorted(range(len(paths)), key=lambda i: (len(paths[i]) + sum(paths[i]), i))
        paths = [paths[i] for i in order[:num_nodes]]
    return template_from_rank_paths(paths)


def fill_template(
    template: Template, root_token: jax.Array, candidates: Callable[[jax.Array], jax.Array]
) -> TokenTree:
    """Fills a template level by level: a node's token is ``candidates(parent_token)[rank]``.

    Args:
      template: the static shape (N nodes).
      root_token: [B] int, the last committed token of each row.
      candidates: ``tokens [B, M] -> [B, M, k]`` ranked candidate next tokens.
    Returns:
      A ``TokenTree`` with every template node valid.
    """
    batch = root_token.shape[0]
    parent = jnp.broadcast_to(jnp.asarray(template.parent), (batch, template.num_nodes))
    rank = jnp.asarray(template.rank)
    depth = jnp.asarray(template.depth)
    block = jnp.zeros((batch, template.num_nodes + 1), jnp.int32).at[:, 0].set(root_token)
    for level in range(1, template.max_depth + 1):
        parent_tokens = jnp.take_along_axis(block, parent + 1, axis=1)  # [B, N]
        ranked = candidates(parent_tokens)  # [B, N, k]
        rank_index = jnp.clip(rank, 0, ranked.shape[-1] - 1)[None, :, None]
        tokens = jnp.take_along_axis(
            ranked, jnp.broadcast_to(rank_index, (batch, template.num_nodes, 1)), axis=2
        )[..., 0]
        block = block.at[:, 1:].set(jnp.where(depth[None, :] == level, tokens, block[:, 1:]))
    return TokenTree(
        parent=parent,
        depth=jnp.broadcast_to(depth, (batch, template.num_nodes)),
        token=block[:, 1:],
        valid=jnp.ones((batch, template.num_nodes), bool),
    )


# ---------------------------------------------------------------------------------------
# Dynamic (best-first) trees


class DynamicTree(NamedTuple):
    """A budgeted tree with each node's draft log-probability."""

    tree: TokenTree
    log_prob: jax.Array  # [B, N] float32, log q(token | path to parent)
    path_log_prob: jax.Array  # [B, N] float32, sum of log_prob along the root-to-node path


Expand = Callable[[TokenTree, jax.Array], jax.Array]
# expand(expanded: TokenTree [B, W * D], frontier [B, W] int (indices into `expanded`,
#        -1 = the root)) -> log-probs [B, W, V] of each frontier node's next token.


def build_dynamic_tree(
    expand: Expand,
    batch_size: int,
    *,
    num_nodes: int,
    beam_width: int,
    branching: int,
    max_depth: int,
) -> DynamicTree:
    """EAGLE-2 / DySpec-style budgeted tree: expand the likeliest paths, keep the top N.

    Level by level, the ``beam_width`` candidates of the current depth with the
    highest path log-probability (the product of draft probabilities along the
    path) are *expanded*: ``expand`` returns their next-token log-probs and
    their ``branching`` likeliest children become candidates of the next depth.
    Finally the ``num_nodes`` candidates with the highest path log-probability
    are kept. A child's path probability never exceeds its parent's, so the kept
    set is prefix-closed (ties go to the shallower, earlier node). With
    ``beam_width >= num_nodes`` and ``branching >= min(V, num_nodes)`` the result
    is the exact top-N prefix-closed set of all paths up to ``max_depth``.

    Args:
      expand: see ``Expand``; it receives the expanded nodes so far as a tree
        (slot ``d * W + w`` holds the ``w``-th node expanded at depth ``d + 1``).
      batch_size: B.
      num_nodes: N, the budget.
      beam_width: W, nodes expanded per depth.
      branching: children kept per expanded node.
      max_depth: D.
    Returns:
      ``DynamicTree`` of N nodes in topological order (by depth).
    """
    for name, value in (
        ("num_nodes", num_nodes),
        ("beam_width", beam_width),
        ("branching", branching),
        ("max_depth", max_depth),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    batch = batch_size
    width = beam_width
    num_expanded = width * max_depth
    # Candidate pool: the root's children, then `branching` children per expanded node.
    pool = branching + (max_depth - 1) * width * branching
    if num_nodes > pool:
        raise ValueError(
            f"`num_nodes`={num_nodes} exceeds the {pool} candidates that beam_width={width}, "
            f"branching={branching}, max_depth={max_depth} can produce."
        )
    neg = jnp.float32(-jnp.inf)
    expanded = TokenTree(
        parent=jnp.full((batch, num_expanded), ROOT, jnp.int32),
        depth=jnp.ones((batch, num_expanded), jnp.int32),
        token=jnp.zeros((batch, num_expanded), jnp.int32),
        valid=jnp.zeros((batch, num_expanded), bool),
    )
    # Pool fields; a candidate's parent is a pool index (-1 = root).
    cand_parent = jnp.full((batch, pool), ROOT, jnp.int32)
    cand_token = jnp.zeros((batch, pool), jnp.int32)
    cand_logp = jnp.zeros((batch, pool), jnp.float32)
    cand_path = jnp.full((batch, pool), neg)
    cand_depth = jnp.ones((batch, pool), jnp.int32)
    cand_expanded_slot = jnp.full((batch, pool), -1, jnp.int32)  # slot in `expanded` if any
    rows = jnp.arange(batch)[:, None]

    frontier_pool = jnp.full((batch, width), ROOT, jnp.int32)  # pool indices being expanded
    frontier_slots = jnp.full((batch, width), ROOT, jnp.int32)
    frontier_ok = jnp.zeros((batch, width), bool).at[:, 0].set(True)
    start = 0
    for level in range(1, max_depth + 1):
        log_probs = expand(expanded, frontier_slots)  # [B, W, V]
        if level == 1:
            log_probs = log_probs[:, :1]
        top_logp, top_token = lax.top_k(log_probs, branching)  # [B, w, branching]
        n_front = top_logp.shape[1]
        parent_path = jnp.where(
            frontier_pool >= 0,
            jnp.take_along_axis(cand_path, jnp.maximum(frontier_pool, 0), axis=1),
            0.0,
        )[:, :n_front]
        ok = frontier_ok[:, :n_front, None] & jnp.isfinite(top_logp)
        path = jnp.where(ok, parent_path[:, :, None] + top_logp, neg)
        count = n_front * branching
        sl = slice(start, start + count)
        cand_parent = cand_parent.at[:, sl].set(
            jnp.repeat(frontier_pool[:, :n_front], branching, axis=1)
        )
        cand_token = cand_token.at[:, sl].set(top_token.reshape(batch, count))
        cand_logp = cand_logp.at[:, sl].set(top_logp.reshape(batch, count))
        cand_path = cand_path.at[:, sl].set(path.reshape(batch, count))
        cand_depth = cand_depth.at[:, sl].set(level)
        if level == max_depth:
            break
        # Expand the W likeliest new candidates next.
        flat = path.reshape(batch, count)
        if count < width:
            flat = jnp.pad(flat, ((0, 0), (0, width - count)), constant_values=-jnp.inf)
        best_path, best = lax.top_k(flat, width)
        best = jnp.minimum(best, count - 1)
        chosen = start + best  # pool indices
        slots = (level - 1) * width + jnp.arange(width)[None, :]
        parent_slot = jnp.where(
            cand_parent[rows, chosen] >= 0,
            cand_expanded_slot[rows, jnp.maximum(cand_parent[rows, chosen], 0)],
            ROOT,
        )
        ok = jnp.isfinite(best_path)
        expanded = TokenTree(
            parent=expanded.parent.at[rows, slots].set(parent_slot),
            depth=expanded.depth.at[rows, slots].set(level),
            token=expanded.token.at[rows, slots].set(cand_token[rows, chosen]),
            valid=expanded.valid.at[rows, slots].set(ok),
        )
        # Padding picks (-inf) may repeat an index: drop their writes.
        cand_expanded_slot = cand_expanded_slot.at[rows, jnp.where(ok, chosen, pool)].set(
            jnp.broadcast_to(slots, chosen.shape), mode="drop"
        )
        frontier_pool, frontier_slots, frontier_ok = chosen, slots, ok
        start += count
    used = start + (branching if max_depth == 1 else width * branching)
    # Keep the top N by path log-prob; ties go to the shallower, then earlier candidate
    # (a stable sort on depth first keeps every kept node's parent ahead of it).
    order = jnp.argsort(cand_depth[:, :used], axis=1, stable=True)
    path_sorted = jnp.take_along_axis(cand_path[:, :used], order, axis=1)
    _, keep = lax.top_k(path_sorted, num_nodes)  # positions in depth order
    keep = jnp.sort(keep, axis=1)  # topological (depth-major) order
    kept = jnp.take_along_axis(order, keep, axis=1)  # pool indices [B, N]
    # Parents: pool index -> position among kept nodes.
    position = (
        jnp.full((batch, pool), ROOT, jnp.int32)
        .at[rows, kept]
        .set(jnp.arange(num_nodes, dtype=jnp.int32)[None, :])
    )
    kept_parent = cand_parent[rows, kept]
    parent = jnp.where(kept_parent >= 0, position[rows, jnp.maximum(kept_parent, 0)], ROOT)
    path_log_prob = cand_path[rows, kept]
    valid = jnp.isfinite(path_log_prob) & ((kept_parent < 0) | (parent >= 0))
    tree = TokenTree(
        parent=jnp.where(valid, parent, ROOT),
        depth=cand_depth[rows, kept],
        token=cand_token[rows, kept],
        valid=valid,
    )
    return DynamicTree(tree=tree, log_prob=cand_logp[rows, kept], path_log_prob=path_log_prob)


# ---------------------------------------------------------------------------------------
# Merging (TAPS)


class MergedTree(NamedTuple):
    tree: TokenTree  # [B, capacity]
    source: jax.Array  # [B, capacity] int32, index of each node in the concatenated inputs


def merge_trees(trees: Sequence[TokenTree], capacity: int) -> MergedTree:
    """Union of several drafters' trees below the same root, shared prefixes merged.

    Nodes are taken depth by depth (earlier trees first within a depth); a node
    whose parent already has a child with the same token is merged into it.
    When the union exceeds ``capacity``, the deepest nodes are dropped first (the
    result stays prefix-closed). Under greedy verification the merged tree's
    accepted length is at least every input tree's (when nothing is dropped).
    """
    if not trees:
        raise ValueError("`trees` must hold at least one tree.")
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"`capacity` must be a positive int; got {capacity!r}.")
    offsets = np.cumsum([0] + [t.num_nodes for t in trees])
    parent = jnp.concatenate(
        [
            jnp.where(t.parent >= 0, t.parent + int(o), ROOT)
            for t, o in zip(trees, offsets, strict=False)
        ],
        axis=1,
    )
    token = jnp.concatenate([t.token for t in trees], axis=1)
    depth = jnp.concatenate([t.depth for t in trees], axis=1)
    valid = jnp.concatenate([t.valid for t in trees], axis=1)
    batch, total = parent.shape
    big = total + 1
    order = jnp.argsort(jnp.where(valid, depth, big), axis=1, stable=True)

    # Each row's nodes in merge order; the scan body is a module-level function (not a
    # closure over this call's arrays), so eager calls reuse one compiled scan per shape.
    take = lambda x: jnp.take_along_axis(x, order, axis=1)
    nodes = (order, take(parent), take(token), take(depth), take(valid))
    init = (
        jnp.full((batch, total), -1, jnp.int32),
        jnp.full((batch, capacity), ROOT, jnp.int32),
        jnp.zeros((batch, capacity), jnp.int32),
        jnp.ones((batch, capacity), jnp.int32),
        jnp.zeros((batch, capacity), jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    _, out_parent, out_token, out_depth, out_source, count = jax.vmap(_merge_row)(init, nodes)
    out_valid = jnp.arange(capacity)[None, :] < count[:, None]
    tree = TokenTree(parent=out_parent, depth=out_depth, token=out_token, valid=out_valid)
    return MergedTree(tree=tree, source=out_source)


def _merge_row(init, nodes):
    """One row of ``merge_trees``: scans the nodes (``[T]`` fields) in merge order."""
    carry, _ = lax.scan(_merge_step, init, nodes)
    return carry


def _merge_step(carry, node):
    """Merges one node: reuses its parent's same-token child, else appends it if it fits."""
    canon, out_parent, out_token, out_depth, out_source, count = carry
    index, p, token, depth, valid = node
    capacity = out_parent.shape[0]
    canon_parent = jnp.where(p >= 0, canon[jnp.maximum(p, 0)], ROOT)
    slots = jnp.arange(capacity)
    same = (slots < count) & (out_parent == canon_parent) & (out_token == token)
    exists = jnp.any(same)
    parent_kept = (p < 0) | (canon_parent >= 0)
    new = valid & ~exists & parent_kept & (count < capacity)
    slot = jnp.where(exists, jnp.argmax(same), jnp.where(new, count, -1))
    slot = jnp.where(valid & parent_kept, slot, -1)
    canon = canon.at[index].set(slot.astype(jnp.int32))
    write = jnp.where(new, count, capacity)
    out_parent = out_parent.at[write].set(canon_parent, mode="drop")
    out_token = out_token.at[write].set(token, mode="drop")
    out_depth = out_depth.at[write].set(depth, mode="drop")
    out_source = out_source.at[write].set(index, mode="drop")
    return (canon, out_parent, out_token, out_depth, out_source, count + new), None
