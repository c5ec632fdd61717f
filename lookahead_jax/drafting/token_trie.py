"""A fixed-capacity token trie in arrays, shared by the trie-retrieval and suffix drafters.

A ``TokenTrie`` is a forest of ``M`` tries ("memories": one shared by a batch, or one
per row) of ``C`` nodes each. Node 0 of every memory is its root; a path from the
root spells a token sequence and its node's ``count`` says how often that sequence
was inserted (as a prefix of an inserted sequence), so counts never grow down the
tree. Every function is pure, has fixed shapes and compiles once (``jit``); nothing
fails at run time: a full memory evicts.

Layout: a *set-associative* table. The ``C`` nodes form ``H = C / W`` sets of ``W``
slots (``W``, the associativity, is the length of ``slots``); the child of node ``p``
with token ``t`` lives in set ``hash(p, t) % H``. Finding a child reads one set
(``O(W)``, not ``O(C)``), so insertion, walks and suffix matches stay cheap at any
capacity; deleting a node just clears its slot (no tombstones). Why not a scan over all
``C`` nodes: the drafters look up hundreds of children per decoding round, and
``O(C)`` each would cost more than the target's forward pass on small models.

Eviction: a missing child takes a free slot of its set, or else *evicts* the set's
leaf (a node without children) with the lowest ``(count, last_use)`` (``policy="lfu"``)
or ``(last_use, count)`` (``policy="lru"``), ties to the lower slot, never a node on a
path being inserted. With ``W = C`` (one set) this is exact global eviction; with
smaller sets it is the set-local approximation hardware caches use. When no slot of the
set can be taken, that sequence's insertion stops there (it is truncated, the
structure stays valid).

Windows: :func:`insert_windows` keeps a suffix trie of running texts (every window of
``window`` tokens), growing the unfinished windows from ``WindowCursors`` (their last
node and its allocation number ``born``, so a slot evicted and reused meanwhile is
recognised) instead of walking from the root each time.

Temporary counts: ``temp`` is the part of ``count`` that came from insertions marked
temporary (e.g. a request's prompt); :func:`drop_temporary` subtracts it and frees the
nodes left at zero. Both parts are sums of whole root paths, so both are monotone down
the tree and dropping never orphans a node.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, trees

FREE = -1  # token / parent of a free node (and of the root)
_KEY_DEPTH = 64  # the ranking key reserves 6 bits for the relative depth
# Per-row memories: up to this many windows go in by index (in blocks), more by vmap (whose
# lanes always run the allocation and eviction branches). 1024 keeps batch 16 indexed.
_ROWS_INDEXED = 1024
_MAX_KEY_COUNT = 1 << 18  # count * 64 stays exact in float32 (XLA's float top_k is fast)


class TokenTrie(NamedTuple):
    """``M`` tries of ``C`` nodes (node 0 = root); ``W = slots.shape[0]`` is the set size."""

    token: jax.Array  # [M, C] int32, the node's token (-1: the root or a free node)
    parent: jax.Array  # [M, C] int32, the parent node (-1: the root or a free node)
    depth: jax.Array  # [M, C] int32, path length from the root (0: the root or free)
    count: jax.Array  # [M, C] int32, times the root->node path was inserted (0: free)
    temp: jax.Array  # [M, C] int32, the part of `count` from temporary insertions
    last_use: jax.Array  # [M, C] int32, clock of the last insertion through the node
    num_children: jax.Array  # [M, C] int32, live children of the node
    born: jax.Array  # [M, C] int32, the node's allocation number (tells a reused slot apart)
    clock: jax.Array  # [M] int32, insertion blocks so far
    allocations: jax.Array  # [M] int32, nodes allocated so far
    slots: jax.Array  # [W] int32, arange(W): its length is the associativity W

    @property
    def num_memories(self) -> int:
        return self.token.shape[0]

    @property
    def capacity(self) -> int:
        return self.token.shape[1]

    @property
    def ways(self) -> int:
        return self.slots.shape[0]


def empty_trie(num_memories: int, capacity: int, ways: int = 16) -> TokenTrie:
    """``num_memories`` empty tries of ``capacity`` nodes (root included), sets of ``ways``.

    ``capacity`` must be a multiple of ``ways`` (``ways = capacity``: one fully
    associative set, exact global eviction).
    """
    for name, value in (("num_memories", num_memories), ("capacity", capacity), ("ways", ways)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    if capacity < 2:
        raise ValueError(f"`capacity` must be at least 2 (the root and one node); got {capacity}.")
    if capacity % ways:
        raise ValueError(f"`capacity` ({capacity}) must be a multiple of `ways` ({ways}).")
    shape = (num_memories, capacity)
    return TokenTrie(
        token=jnp.full(shape, FREE, jnp.int32),
        parent=jnp.full(shape, FREE, jnp.int32),
        depth=jnp.zeros(shape, jnp.int32),
        count=jnp.zeros(shape, jnp.int32),
        temp=jnp.zeros(shape, jnp.int32),
        last_use=jnp.zeros(shape, jnp.int32),
        num_children=jnp.zeros(shape, jnp.int32),
        born=jnp.zeros(shape, jnp.int32),
        clock=jnp.zeros((num_memories,), jnp.int32),
        allocations=jnp.zeros((num_memories,), jnp.int32),
        slots=jnp.arange(ways, dtype=jnp.int32),
    )


def _set_of(trie: TokenTrie, parent: jax.Array, token: jax.Array) -> jax.Array:
    """The set ``[...]`` where the child ``token`` of node ``parent`` lives."""
    num_sets = trie.capacity // trie.ways
    if num_sets == 1:
        return jnp.zeros(jnp.shape(parent), jnp.int32)
    x = parent.astype(jnp.uint32) * np.uint32(0x9E3779B1)
    x = x ^ ((token.astype(jnp.uint32) + np.uint32(0x7F4A7C15)) * np.uint32(0x85EBCA77))
    x = x ^ (x >> 15)
    x = x * np.uint32(0x2C1B3C6D)
    x = x ^ (x >> 13)
    return (x % np.uint32(num_sets)).astype(jnp.int32)


def find_child(
    trie: TokenTrie, memory: jax.Array, parent: jax.Array, token: jax.Array
) -> jax.Array:
    """The child of node ``parent [...]`` spelling ``token [...]`` in memory ``memory [...]``.

    Returns ``node [...]`` int32, -1 where there is none (or ``parent`` is -1).
    """
    ways = trie.ways
    index = _set_of(trie, parent, token)[..., None] * ways + trie.slots  # [..., W]
    m = memory[..., None]
    hit = (
        (trie.parent[m, index] == parent[..., None])
        & (trie.token[m, index] == token[..., None])
        & (parent[..., None] >= 0)
    )
    slot = jnp.argmax(hit, axis=-1)
    return jnp.where(
        jnp.any(hit, axis=-1), jnp.take_along_axis(index, slot[..., None], -1)[..., 0], -1
    )


def _insert_block(
    trie: TokenTrie,
    memory: jax.Array,
    sequences: jax.Array,
    lengths: jax.Array,
    start: jax.Array,
    temporary: jax.Array,
    origin: jax.Array,
    origin_depth: jax.Array,
    weight: jax.Array,
    policy: str,
    pinned: jax.Array | None = None,
) -> tuple[TokenTrie, jax.Array]:
    """Inserts ``S`` sequences depth by depth (see :func:`insert`).

    ``pinned`` ([M, C] bool): nodes no allocation may evict besides the block's own paths
    (the origins of the call's later blocks)."""
    num, width = sequences.shape
    num_memories, capacity = trie.token.shape
    ways = trie.ways
    seq = jnp.arange(num)
    clock = trie.clock + 1
    now = clock[memory]  # [S]
    earlier = seq[None, :] < seq[:, None]  # [S, S]: s' before s
    same_memory = memory[:, None] == memory[None, :]

    def allocate(trie, d, current, token, active, child, found, need):
        """Where the missing children go: (node [S], gets_new [S], target [S], old_parent [S]).

        ``target`` is the slot a leader takes (``capacity``: none), ``old_parent`` the
        parent of the leaf it evicts (``capacity``: none)."""
        del d
        # Sequences needing the same new child share it: the first one allocates.
        same = (
            need[:, None]
            & need[None, :]
            & same_memory
            & (current[:, None] == current[None, :])
            & (token[:, None] == token[None, :])
        )
        first = jnp.argmax(same, axis=1)
        leader = need & (first == seq)
        set_ = _set_of(trie, current, token)
        rank = jnp.sum(
            earlier & leader[None, :] & same_memory & (set_[:, None] == set_[None, :]), axis=1
        )
        # The set's slots in the order they are taken: free first, then evictable leaves.
        index = set_[:, None] * ways + trie.slots  # [S, W]
        m = memory[:, None]
        protected = (
            (jnp.zeros((num_memories, capacity), bool) if pinned is None else pinned)
            .at[memory, jnp.where(active, current, capacity)]
            .set(True, mode="drop")
            .at[memory, jnp.where(found, child, capacity)]
            .set(True, mode="drop")
        )
        free = (trie.token[m, index] == FREE) & (index != 0)
        evictable = ~free & (index != 0) & (trie.num_children[m, index] == 0) & ~protected[m, index]
        free_rank = jnp.cumsum(free, axis=1) - 1
        num_free = jnp.sum(free, axis=1, keepdims=True)

        def with_eviction():
            count, last = trie.count[m, index], trie.last_use[m, index]
            first_key, second_key = (count, last) if policy == "lfu" else (last, count)
            before = (first_key[:, None, :] < first_key[:, :, None]) | (
                (first_key[:, None, :] == first_key[:, :, None])
                & (
                    (second_key[:, None, :] < second_key[:, :, None])
                    | (
                        (second_key[:, None, :] == second_key[:, :, None])
                        & (trie.slots[None, :] < trie.slots[:, None])[None]
                    )
                )
            )  # [S, i, j]: slot j goes before slot i
            evict_rank = jnp.sum(before & evictable[:, None, :], axis=2)
            return jnp.where(free, free_rank, jnp.where(evictable, num_free + evict_rank, -1))

        # Ranking the evictable leaves is [S, W, W] work; a memory with room (a request's
        # own trie, a global one filling up) rarely needs it: free slots come first.
        order = lax.cond(
            jnp.any(leader & (rank >= num_free[:, 0])),
            with_eviction,
            lambda: jnp.where(free, free_rank, -1),
        )
        pick = order == rank[:, None]
        allocated = leader & jnp.any(pick, axis=1)
        slot = jnp.argmax(pick, axis=1)
        new = jnp.take_along_axis(index, slot[:, None], 1)[:, 0]
        evicted = allocated & ~jnp.take_along_axis(free, slot[:, None], 1)[:, 0]
        gets_new = need & allocated[first]
        target = jnp.where(allocated, new, capacity)
        old_parent = jnp.where(evicted, trie.parent[memory, new], capacity)
        # Allocation numbers: distinct per memory.
        serial = jnp.sum(earlier & allocated[None, :] & same_memory, axis=1)
        born = trie.allocations[memory] + serial + 1
        return jnp.where(gets_new, new[first], -1), gets_new, target, old_parent, born

    def body(d, carry):
        trie, current, alive, nodes = carry
        token = sequences[:, d]
        active = alive & (d < lengths)
        child = find_child(trie, memory, jnp.where(active, current, -1), token)
        found = active & (child >= 0)
        need = active & (child < 0)
        nothing = jnp.full((num,), -1, jnp.int32)
        new, gets_new, target, old_parent, born = lax.cond(
            jnp.any(need),
            allocate,
            lambda *_: (
                nothing, nothing >= 0, nothing + capacity + 1, nothing + capacity + 1, nothing
            ),
            trie, d, current, token, active, child, found, need,
        )  # fmt: skip
        # Allocate (out-of-range targets are dropped): the evicted leaf leaves its
        # parent; the new node joins `current`.
        allocated = target < capacity
        trie = trie._replace(
            token=trie.token.at[memory, target].set(token, mode="drop"),
            parent=trie.parent.at[memory, target].set(current, mode="drop"),
            depth=trie.depth.at[memory, target].set(origin_depth + d + 1, mode="drop"),
            count=trie.count.at[memory, target].set(0, mode="drop"),
            temp=trie.temp.at[memory, target].set(0, mode="drop"),
            born=trie.born.at[memory, target].set(born, mode="drop"),
            allocations=trie.allocations.at[memory].add(allocated.astype(jnp.int32)),
            num_children=trie.num_children.at[memory, old_parent]
            .add(-1, mode="drop")
            .at[memory, target]
            .set(0, mode="drop")
            .at[memory, jnp.where(allocated, current, capacity)]
            .add(1, mode="drop"),
        )
        node = jnp.where(found, child, new)
        alive = active & (node >= 0)
        counted = alive & ((d >= start) | gets_new)
        at = jnp.where(alive, node, capacity)
        counted_at = jnp.where(counted, node, capacity)
        trie = trie._replace(
            count=trie.count.at[memory, counted_at].add(weight, mode="drop"),
            temp=trie.temp.at[memory, jnp.where(temporary, counted_at, capacity)].add(
                weight, mode="drop"
            ),
            last_use=trie.last_use.at[memory, at].set(now, mode="drop"),
        )
        visited = jnp.where(alive, node, -1)
        stamp = jnp.where(alive, trie.born[memory, jnp.maximum(node, 0)], 0)
        nodes = nodes.at[:, d].set(jnp.stack([visited, stamp], axis=-1))
        return trie, jnp.where(alive, node, current), alive, nodes

    carry = (
        trie,
        origin,
        origin >= 0,
        jnp.full((num, width, 2), -1, jnp.int32),
    )
    # Only as deep as the longest sequence (a few new tokens after a round need a few
    # steps, not `width`): deeper steps would change nothing.
    deepest = jnp.max(jnp.where(origin >= 0, lengths, 0), initial=0)
    trie, _, _, nodes = lax.fori_loop(0, deepest, body, carry)
    return trie._replace(clock=clock), nodes


def insert(
    trie: TokenTrie,
    memory_index: jax.Array,
    sequences: jax.Array,
    lengths: jax.Array,
    *,
    start: jax.Array | None = None,
    temporary: jax.Array | bool = False,
    origin: jax.Array | None = None,
    origin_depth: jax.Array | None = None,
    weight: int | jax.Array = 1,
    policy: str = "lfu",
    block: int = 64,
    with_born: bool = False,
) -> tuple[TokenTrie, jax.Array]:
    """Inserts the paths ``sequences[s, :lengths[s]]`` below the root of ``memory_index[s]``.

    Every node on a path gets ``count += weight`` and ``last_use = clock`` (and
    ``temp += weight`` for a temporary sequence); a missing child is allocated (see the
    module docstring for eviction). Sequences go in blocks of ``block``: the sequences
    of one block are inserted together, depth by depth (the same counts as one at a
    time; only which node is evicted or truncated may differ), and the clock ticks once
    per block.

    Args:
      trie: the memories.
      memory_index: [S] int, the memory each sequence goes into (in [0, M)).
      sequences: [S, D] int, tokens (>= 0 up to each length).
      lengths: [S] int in [0, D].
      start: [S] int, depths below it are walked but not counted (a sequence that was
        inserted before and grew: only its new tail counts); a node that had been
        evicted there is re-created and counted. Default 0.
      temporary: [S] bool (or a bool), whether the counts also go to ``temp``.
      origin: [S] int, the node each sequence hangs below (default the root; -1: the
        sequence is skipped). Its path is not touched.
      origin_depth: [S] int, the depth of ``origin`` (default 0).
      weight: count added per path node.
      policy: ``"lfu"`` (evict the lowest (count, last_use)) or ``"lru"`` (lowest
        (last_use, count)).
      block: sequences inserted together (static).
      with_born: also return each node's allocation number when it was visited.
    Returns:
      ``(trie, nodes [S, D])``: the node of each path position (-1 past the length or
      where the path was truncated); ``nodes [S, D, 2]`` (node, allocation number)
      with ``with_born``.
    """
    if policy not in ("lfu", "lru"):
        raise ValueError(f"`policy` must be 'lfu' or 'lru'; got {policy!r}.")
    sequences = jnp.asarray(sequences, jnp.int32)
    num, width = sequences.shape
    memory_index = jnp.broadcast_to(jnp.asarray(memory_index, jnp.int32), (num,))
    lengths = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (num,))
    start = jnp.zeros((num,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
    start = jnp.broadcast_to(start, (num,))
    temporary = jnp.broadcast_to(jnp.asarray(temporary, bool), (num,))
    origin = jnp.zeros((num,), jnp.int32) if origin is None else jnp.asarray(origin, jnp.int32)
    origin = jnp.broadcast_to(origin, (num,))
    origin_depth = jnp.zeros((num,), jnp.int32) if origin_depth is None else origin_depth
    origin_depth = jnp.broadcast_to(jnp.asarray(origin_depth, jnp.int32), (num,))
    weight = jnp.asarray(weight, jnp.int32)
    if num == 0 or width == 0:
        nodes = jnp.full((num, width, 2), -1, jnp.int32)
        return trie, nodes if with_born else nodes[..., 0]
    if num <= block:
        trie, nodes = _insert_block(
            trie, memory_index, sequences, lengths, start, temporary, origin, origin_depth,
            weight, policy,
        )  # fmt: skip
        return trie, nodes if with_born else nodes[..., 0]
    blocks = -(-num // block)
    pad = blocks * block - num

    def padded(x, value=0):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)
        return x.reshape((blocks, block, *x.shape[1:]))

    # Every block keeps the origins of the call's sequences: a leaf that a later block grows
    # from must not be evicted (and its slot reused) by an earlier one, which would hang
    # that block's tokens below a node spelling another path. (Within a block the paths
    # being inserted are protected as they go.)
    pinned = (
        jnp.zeros(trie.token.shape, bool)
        .at[memory_index, jnp.where((origin > 0) & (lengths > 0), origin, trie.capacity)]
        .set(True, mode="drop")
    )

    def step(trie, xs):
        trie, nodes = _insert_block(trie, *xs, weight, policy, pinned)
        return trie, nodes

    trie, nodes = lax.scan(
        step,
        trie,
        (padded(memory_index), padded(sequences), padded(lengths), padded(start),
         padded(temporary, False), padded(origin), padded(origin_depth)),
    )  # fmt: skip
    nodes = nodes.reshape(blocks * block, width, 2)[:num]
    return trie, nodes if with_born else nodes[..., 0]


# Windows per block when a memory learns a round's new tokens (``observe``: at most a few
# new tokens per window, so shallow blocks): one block up to 256 windows, where several
# blocks run as a scan over the memory. Measured on 2 CPU cores, byte pair, 256 against
# blocks of 64 (interleaved medians): an observe call of 9 new tokens, batch 4 (132
# windows), 0.97 against 1.12 ms (trie retrieval) and 1.97 against 2.08 ms (suffix
# decoding); batch 16, 0.88-0.99x; batch 1 (one block either way) the same. A whole
# 56-token generation at batch 4, short prompts, every round plain: 31.6 against 46.6 ms
# (trie retrieval), 45.0 against 53.2 ms (suffix decoding); long prompts, the BPE pair and
# batch 16 within this machine's noise (0.95-1.11x). A prompt's windows (``init``: up to
# ``window`` tokens deep) keep blocks of 64, where larger ones were slower (suffix
# decoding, batch 4: 4.5 against 3.3 ms).
OBSERVE_BLOCK = 256


class WindowCursors(NamedTuple):
    """Where each row's unfinished windows end (so that growing them needs no walk).

    Entry ``j`` of row ``b`` is the node of ``tokens[b, s : L]`` for the window start
    ``s = L - window + 1 + j`` (``L``: the row's inserted length), or -1.
    """

    node: jax.Array  # [B, window - 1] int32, the node (-1: none, e.g. evicted or s < 0)
    born: jax.Array  # [B, window - 1] int32, its allocation number (tells reuse apart)


def insert_windows(
    trie: TokenTrie,
    memory_index: jax.Array | None,
    tokens: jax.Array,
    old_lengths: jax.Array,
    new_lengths: jax.Array,
    window: int,
    max_new: int,
    *,
    cursors: WindowCursors | None = None,
    temporary_before: jax.Array | None = None,
    count_from: jax.Array | None = None,
    policy: str = "lfu",
    block: int = 64,
) -> tuple[TokenTrie, WindowCursors]:
    """Grows the windows of ``window`` tokens starting at every position of each row.

    The trie holds, for every start ``i`` of row ``b``, the path
    ``tokens[b, i : min(i + window, L)]`` of the row's text up to its length ``L``:
    a suffix trie cut at depth ``window``, whose counts are occurrence counts. When a
    row grows from ``old_lengths[b]`` to ``new_lengths[b]`` (at most ``max_new``
    tokens, static) the windows ending past the old length grow by their new tokens,
    continuing from ``cursors`` (no walk from the root); a window whose cursor node was
    evicted meanwhile stops growing.

    Args:
      trie: the memories.
      memory_index: [B] int, each row's memory; ``None``: row ``b`` has memory ``b``.
      tokens: [B, T] int, the rows' texts.
      old_lengths, new_lengths: [B] int, what had been inserted and what is there now.
      window: the longest path (static).
      max_new: static bound on ``new_lengths - old_lengths`` (more is not inserted).
      cursors: from the previous call (``None``: nothing was inserted before, i.e.
        ``old_lengths`` are 0, or the unfinished windows are not grown).
      temporary_before: [B] int, windows starting before it count as temporary.
      count_from: [B] int, windows starting before it are not inserted (default 0).
      policy: eviction, as for :func:`insert`.
      block: at most this many windows are inserted together (static); a call's windows
        go in as equal blocks.
    Returns:
      ``(trie, cursors)`` for the next call.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    batch, width = tokens.shape
    old_lengths = jnp.asarray(old_lengths, jnp.int32)
    new_lengths = jnp.minimum(jnp.asarray(new_lengths, jnp.int32), old_lengths + max_new)
    new_lengths = jnp.maximum(new_lengths, old_lengths)
    per_row = window - 1 + max_new
    depth_new = min(window, max_new)  # tokens a sequence adds at most
    rows = jnp.arange(batch)
    index = rows if memory_index is None else jnp.asarray(memory_index, jnp.int32)
    r = jnp.arange(per_row)
    starts = old_lengths[:, None] - (window - 1) + r[None, :]  # [B, R]
    continuing = r < window - 1
    base = jnp.maximum(starts, old_lengths[:, None])
    positions = base[..., None] + jnp.arange(depth_new)  # [B, R, D']
    sequences = jnp.take_along_axis(tokens[:, None, :], jnp.clip(positions, 0, width - 1), axis=2)
    lengths = jnp.clip(jnp.minimum(starts + window, new_lengths[:, None]) - base, 0, None)
    keep = starts >= 0
    if count_from is not None:
        keep = keep & (starts >= count_from[:, None])
    m = index[:, None]
    if cursors is None:
        origin = jnp.where(continuing[None, :], -1, 0) + jnp.zeros_like(starts)
    else:
        node = jnp.pad(cursors.node, ((0, 0), (0, max_new)))
        born = jnp.pad(cursors.born, ((0, 0), (0, max_new)))
        safe = jnp.maximum(node, 0)
        valid = (node >= 0) & (trie.born[m, safe] == born) & (trie.token[m, safe] != FREE)
        origin = jnp.where(continuing[None, :], jnp.where(valid, node, -1), 0)
    origin = jnp.where(keep, origin, -1)
    origin_depth = jnp.where(continuing[None, :], old_lengths[:, None] - starts, 0)
    temporary = (
        jnp.zeros_like(keep) if temporary_before is None else starts < temporary_before[:, None]
    )
    lengths = jnp.where(origin >= 0, lengths, 0)
    if memory_index is None and batch * per_row > _ROWS_INDEXED:
        # Many rows: one memory per vmap lane (no cross-row work, but under vmap the
        # allocation branch always runs).
        trie, nodes = _insert_rows(
            trie, sequences, lengths, origin, origin_depth, temporary, policy, block
        )
    else:
        # Equal blocks of at most ``block`` windows. A block costs [S, S] work per depth
        # step: on 2 CPU cores 528 windows (batch 16) went in 1.2x faster as 9 blocks of
        # 59 than as one block (whose work grows quadratically) or blocks of 176.
        num_windows = batch * per_row
        block = -(-num_windows // -(-num_windows // block))
        trie, nodes = insert(
            trie,
            jnp.broadcast_to(m, starts.shape).reshape(-1),
            sequences.reshape(-1, depth_new),
            lengths.reshape(-1),
            temporary=temporary.reshape(-1),
            origin=origin.reshape(-1),
            origin_depth=origin_depth.reshape(-1),
            policy=policy,
            block=block,
            with_born=True,
        )
        nodes = nodes.reshape(batch, per_row, depth_new, 2)
    # The next cursors: the last node of the sequence of each unfinished window, with its
    # allocation number when visited (a window that did not grow keeps its cursor).
    last = jnp.take_along_axis(nodes, jnp.maximum(lengths - 1, 0)[..., None, None], axis=2)[
        :, :, 0
    ]  # [B, R, 2]
    if cursors is None:
        kept_born = jnp.zeros_like(origin)
    else:
        kept_born = jnp.pad(cursors.born, ((0, 0), (0, max_new)))
    end = jnp.where(lengths > 0, last[..., 0], origin)  # [B, R]
    end_born = jnp.where(lengths > 0, last[..., 1], kept_born)
    pick = (new_lengths - old_lengths)[:, None] + jnp.arange(window - 1)[None, :]
    node = jnp.take_along_axis(end, pick, axis=1)
    node = jnp.where(jnp.take_along_axis(starts, pick, axis=1) >= 0, node, -1)
    born = jnp.where(node >= 0, jnp.take_along_axis(end_born, pick, axis=1), 0)
    return trie, WindowCursors(node.astype(jnp.int32), born.astype(jnp.int32))


def _insert_rows(trie, sequences, lengths, origin, origin_depth, temporary, policy, block):
    """Row ``b``'s sequences ``[B, R, D]`` into memory ``b``, one memory per ``vmap`` lane."""
    if trie.num_memories != sequences.shape[0]:
        raise ValueError(
            f"a per-row memory needs one trie per row: {trie.num_memories} memories for "
            f"{sequences.shape[0]} rows."
        )
    lanes = TokenTrie(*([0] * 10), None)
    split = jax.tree.map(lambda x: x[:, None], trie._replace(slots=None))._replace(slots=trie.slots)

    def one(row, seqs, lens, begin, begin_depth, temp):
        return insert(
            row,
            jnp.zeros(seqs.shape[0], jnp.int32),
            seqs,
            lens,
            temporary=temp,
            origin=begin,
            origin_depth=begin_depth,
            policy=policy,
            block=block,
            with_born=True,
        )

    rows, nodes = jax.vmap(one, in_axes=(lanes, 0, 0, 0, 0, 0))(
        split, sequences, lengths, origin, origin_depth, temporary
    )
    rows = jax.tree.map(lambda x: x[:, 0], rows._replace(slots=None))._replace(slots=trie.slots)
    return rows, nodes


def drop_temporary(trie: TokenTrie) -> TokenTrie:
    """Subtracts the temporary counts; nodes left at zero (never the root) are freed."""
    count = trie.count - trie.temp
    capacity = trie.capacity
    live = (trie.token != FREE) & (count > 0)
    token = jnp.where(live, trie.token, FREE)
    parent = jnp.where(live, trie.parent, FREE)
    rows = jnp.arange(trie.num_memories)[:, None]
    num_children = (
        jnp.zeros_like(trie.count).at[rows, jnp.where(live, parent, capacity)].add(1, mode="drop")
    )
    return trie._replace(
        token=token,
        parent=parent,
        depth=jnp.where(live, trie.depth, 0),
        count=jnp.where(live, count, 0),
        temp=jnp.zeros_like(trie.temp),
        last_use=jnp.where(live, trie.last_use, 0),
        num_children=num_children,
    )


def walk(
    trie: TokenTrie, memory_index: jax.Array, query: jax.Array, query_lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Follows ``query[b, :query_lengths[b]]`` from the root of ``memory_index[b]``.

    Returns ``(node [B] int32, found [B] bool)``: the path's node (the root for an
    empty query; -1 when not found).
    """
    query = jnp.asarray(query, jnp.int32)
    memory_index = jnp.asarray(memory_index, jnp.int32)

    def body(q, node):
        child = find_child(trie, memory_index, node, query[..., q])
        return jnp.where(q < query_lengths, child, node)

    node = lax.fori_loop(0, query.shape[-1], body, jnp.zeros(query.shape[:-1], jnp.int32))
    return node, node >= 0


def longest_suffix_match(
    trie: TokenTrie,
    memory_index: jax.Array,
    tokens: jax.Array,
    lengths: jax.Array,
    max_length: int,
    *,
    with_children: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The longest suffix (<= ``max_length`` tokens) of each row that is a path.

    Args:
      tokens: [B, T] int, the rows' committed tokens; lengths: [B] int.
      with_children: only count matches whose node has a child (a continuation).
    Returns:
      ``(node [B] int32, match_length [B] int32)``; the root and 0 when nothing matches.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    batch, width = tokens.shape
    memory_index = jnp.broadcast_to(jnp.asarray(memory_index, jnp.int32), (batch,))
    sizes = jnp.arange(1, max_length + 1)  # [K]
    begin = lengths[:, None] - sizes[None, :]  # [B, K]
    positions = begin[..., None] + jnp.arange(max_length)  # [B, K, K]
    query = jnp.take_along_axis(tokens[:, None, :], jnp.clip(positions, 0, width - 1), axis=2)
    query_lengths = jnp.broadcast_to(sizes, (batch, max_length))
    memory = jnp.broadcast_to(memory_index[:, None], (batch, max_length))
    node, found = walk(trie, memory, query, query_lengths)
    found = found & (begin >= 0)
    if with_children:
        found = found & (trie.num_children[memory, jnp.maximum(node, 0)] > 0)
    best = max_length - 1 - jnp.argmax(found[:, ::-1], axis=1)
    any_ = jnp.any(found, axis=1)
    match = jnp.where(any_, jnp.take_along_axis(node, best[:, None], 1)[:, 0], 0)
    return match, jnp.where(any_, best + 1, 0).astype(jnp.int32)


def best_descendants(
    trie: TokenTrie,
    memory_index: jax.Array,
    node: jax.Array,
    *,
    num_nodes: int,
    max_depth: int,
    min_count: jax.Array | int = 1,
    max_nodes: jax.Array | int | None = None,
) -> tuple[trees.TokenTree, jax.Array]:
    """The most frequent descendants of ``node`` as a token tree hanging below it.

    Candidates are the descendants at most ``max_depth`` levels below ``node`` with
    ``count >= min_count``; the best ``min(num_nodes, max_nodes)`` are kept, ranked by
    count (ties: shallower first, then the lower node index). The ranking is
    prefix-closed (a child never outranks its parent), so the kept nodes form a tree,
    and listing them best first is a topological order. Because a path's count
    telescopes, ranking by count is also best-first by empirical probability
    ``count(node) / count(start)`` (the product of child/parent count ratios).

    Args:
      trie: the memories.
      memory_index: [B] int; node: [B] int, the node each row's tree hangs below.
      num_nodes: N, static tree capacity; max_depth: static depth bound (< 64).
      min_count: [B] int (or int), the count floor.
      max_nodes: [B] int (or int), a per-row size cap (default N).
    Returns:
      ``(tree, counts)``: a ``trees.TokenTree`` [B, N] (invalid past each row's
      size) and ``counts [B, N]`` int32 (0 where invalid).
    """
    if not 1 <= max_depth < _KEY_DEPTH:
        raise ValueError(f"`max_depth` must lie in [1, {_KEY_DEPTH}); got {max_depth}.")
    capacity = trie.capacity
    node = jnp.asarray(node, jnp.int32)
    batch = node.shape[0]
    memory_index = jnp.broadcast_to(jnp.asarray(memory_index, jnp.int32), (batch,))
    # ancestors[k][m, c]: node c's ancestor k levels up (-1 above the root).
    ancestors = [jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), trie.parent.shape)]
    rows = jnp.arange(trie.num_memories)[:, None]
    for _ in range(max_depth):
        previous = ancestors[-1]
        ancestors.append(jnp.where(previous >= 0, trie.parent[rows, jnp.maximum(previous, 0)], -1))
    ancestors = jnp.stack(ancestors)  # [K + 1, M, C]
    depth = trie.depth[memory_index]  # [B, C]
    relative = depth - trie.depth[memory_index, node][:, None]
    columns = jnp.arange(capacity)[None, :]
    up = ancestors[jnp.clip(relative, 0, max_depth), memory_index[:, None], columns]
    count = trie.count[memory_index]
    min_count = jnp.broadcast_to(jnp.maximum(jnp.asarray(min_count, jnp.int32), 1), (batch,))
    candidate = (
        (relative >= 1)
        & (relative <= max_depth)
        & (up == node[:, None])
        & (count >= min_count[:, None])
        & (trie.token[memory_index] != FREE)
    )
    key = jnp.minimum(count, _MAX_KEY_COUNT) * _KEY_DEPTH - relative
    key = jnp.where(candidate, key, 0).astype(jnp.float32)
    value, chosen = lax.top_k(key, num_nodes)  # [B, N]
    valid = value > 0
    if max_nodes is not None:
        valid = valid & (jnp.arange(num_nodes)[None, :] < jnp.asarray(max_nodes)[..., None])
    m = memory_index[:, None]
    parent_node = trie.parent[m, chosen]
    same = (chosen[:, None, :] == parent_node[:, :, None]) & valid[:, None, :]
    has_parent = jnp.any(same, axis=2)
    parent = jnp.argmax(same, axis=2)
    level = jnp.take_along_axis(relative, chosen, 1)
    # A node stays only if its parent was kept before it, one level up, and so on to the
    # root. A consistent trie always passes (counts never grow down the tree, so the
    # ranking is prefix-closed); a memory whose counts or depths were corrupted (e.g. a
    # user's `memory=`) still yields a well-formed tree, so verification stays exact.
    local = valid & (
        (level == 1)
        | (
            has_parent
            & (parent < jnp.arange(num_nodes)[None, :])
            & (level == jnp.take_along_axis(level, parent, 1) + 1)
        )
    )
    valid = local
    for _ in range(max_depth - 1):
        valid = local & ((level == 1) | jnp.take_along_axis(valid, parent, 1))
    parent = jnp.where(level == 1, trees.ROOT, parent)
    tree = trees.TokenTree(
        parent=jnp.where(valid, parent, trees.ROOT).astype(jnp.int32),
        depth=jnp.where(valid, level, 1).astype(jnp.int32),
        token=jnp.where(valid, trie.token[m, chosen], 0).astype(jnp.int32),
        valid=valid,
    )
    return tree, jnp.where(valid, trie.count[m, chosen], 0)


def num_live(trie: TokenTrie) -> jax.Array:
    """``[M]`` int32: nodes in use per memory (the root included)."""
    return jnp.sum(trie.token != FREE, axis=1, dtype=jnp.int32) + 1


def check_settings(capacity: int, ways: int) -> None:
    """``ValueError`` naming the argument unless ``capacity`` is a multiple of ``ways``."""
    _checks.check_int("ways", ways, 1)
    _checks.check_int("capacity", capacity, 2)
    if capacity % ways:
        raise ValueError(f"`capacity` ({capacity}) must be a multiple of `ways` ({ways}).")


def check_memory(trie: object, *, capacity: int, ways: int, vocab_size: int) -> TokenTrie:
    """Checks a ``memory=`` trie against a drafter's settings (``ValueError`` naming ``memory``).

    Token ids must lie in the vocabulary: at once when concrete, else under
    ``lookahead_jax.checked``.
    """
    if not isinstance(trie, TokenTrie):
        raise ValueError(f"`memory` must hold a token_trie.TokenTrie; got {type(trie)}.")
    if trie.capacity != capacity or trie.ways != ways:
        raise ValueError(
            f"`memory` was built with capacity {trie.capacity} and ways {trie.ways}; "
            f"this drafter has `capacity`={capacity} and `ways`={ways}."
        )
    _checks.check_range("memory", trie.token, FREE, vocab_size)
    return trie
