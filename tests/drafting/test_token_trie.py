"""The array token trie: insertion, eviction, walks and subtree ranking vs brute-force dicts."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import trees
from lookahead_jax.drafting import token_trie as tt

insert = jax.jit(tt.insert, static_argnames=("policy", "block"))
walk = jax.jit(tt.walk)
drop_temporary = jax.jit(tt.drop_temporary)
longest_suffix_match = jax.jit(
    tt.longest_suffix_match, static_argnames=("max_length", "with_children")
)
best_descendants = jax.jit(tt.best_descendants, static_argnames=("num_nodes", "max_depth"))
insert_windows = jax.jit(tt.insert_windows, static_argnames=("window", "max_new", "block"))


def paths(trie, memory=0):
    """``{path tuple: (count, last_use, temp)}`` of one memory, checking the structure."""
    token = np.asarray(trie.token[memory])
    parent = np.asarray(trie.parent[memory])
    count = np.asarray(trie.count[memory])
    depth = np.asarray(trie.depth[memory])
    children = np.asarray(trie.num_children[memory])
    capacity = token.shape[0]
    live = token >= 0
    assert token[0] == -1 and parent[0] == -1  # the root
    assert np.all(count[live] > 0) and np.all(count[1:][~live[1:]] == 0)
    assert np.all(parent[1:][~live[1:]] == -1)
    result = {}
    seen = np.bincount(parent[live], minlength=capacity)
    np.testing.assert_array_equal(children, seen)  # num_children matches the parents
    for node in np.flatnonzero(live):
        p = parent[node]
        assert p == 0 or live[p], "a live node's parent is live"
        assert depth[node] == (0 if p == 0 else depth[p]) + 1
        assert p == 0 or count[node] <= count[p], "counts never grow down the tree"
        walk_, path = node, []
        while walk_ != 0:
            path.append(int(token[walk_]))
            walk_ = parent[walk_]
        key = tuple(path[::-1])
        assert key not in result, "no two nodes spell the same path"
        result[key] = (
            int(count[node]),
            int(trie.last_use[memory, node]),
            int(trie.temp[memory, node]),
        )
    assert len(result) + 1 <= capacity
    return result


class Reference:
    """Brute force: a dict trie with global eviction of the lowest (count, last_use) leaf."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.nodes = {}  # path -> [count, last_use]
        self.clock = 0

    def insert(self, sequence):
        self.clock += 1
        for depth in range(1, len(sequence) + 1):
            path = tuple(sequence[:depth])
            if path not in self.nodes:
                if len(self.nodes) + 1 >= self.capacity:
                    prefixes = {p[:-1] for p in self.nodes}
                    leaves = [
                        p for p in self.nodes if p not in prefixes and p != path[:-1]
                    ]  # never the node the path hangs from
                    if not leaves:
                        return
                    keys = sorted((self.nodes[p], p) for p in leaves)
                    assert len(keys) == 1 or keys[0][0] != keys[1][0], "no ties by construction"
                    del self.nodes[keys[0][1]]
                self.nodes[path] = [0, 0]
            self.nodes[path][0] += 1
            self.nodes[path][1] = self.clock

    def view(self):
        return {p: (c, u, 0) for p, (c, u) in self.nodes.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_insert_and_evict_match_a_dict_reference(seed):
    """One set (ways = capacity): exact global eviction, one sequence per call."""
    rng = np.random.default_rng(seed)
    capacity = 24
    trie = tt.empty_trie(1, capacity, ways=capacity)
    reference = Reference(capacity)
    evictions = 0
    for _ in range(60):
        length = int(rng.integers(1, 6))
        sequence = rng.integers(0, 3, length).tolist()
        padded = np.zeros((1, 6), np.int32)
        padded[0, :length] = sequence
        before = len(reference.nodes)
        reference.insert(sequence)
        trie, nodes = insert(trie, jnp.zeros(1, jnp.int32), padded, jnp.asarray([length]))
        got = paths(trie)
        assert got == reference.view()
        evictions += before + length > len(reference.nodes)
        # The returned nodes spell the (possibly truncated) path.
        nodes = np.asarray(nodes[0])
        stored = [p for p in range(length) if nodes[p] >= 0]
        assert stored == list(range(len(stored)))
    assert evictions > 10  # the memory filled and evicted many times


def test_blocks_of_sequences_count_like_one_at_a_time():
    rng = np.random.default_rng(3)
    sequences = rng.integers(0, 4, (150, 5)).astype(np.int32)
    lengths = rng.integers(0, 6, 150).astype(np.int32)
    sequences[:20] = sequences[20:40]  # duplicates inside one block
    lengths[:20] = lengths[20:40]
    trie, nodes = insert(
        tt.empty_trie(1, 1024, ways=16), jnp.zeros(150, jnp.int32), sequences, lengths, block=64
    )
    want = {}
    for seq, length in zip(sequences, lengths, strict=True):
        for depth in range(1, length + 1):
            want[tuple(seq[:depth].tolist())] = want.get(tuple(seq[:depth].tolist()), 0) + 1
    got = paths(trie)
    assert {p: c for p, (c, _, _) in got.items()} == want
    # Nodes: each sequence's path; equal sequences share nodes.
    np.testing.assert_array_equal(nodes[:20], nodes[20:40])
    assert np.all((np.asarray(nodes) >= 0) == (np.arange(5)[None, :] < lengths[:, None]))
    # The clock ticks once per block of 64: the last block's nodes carry clock 3.
    assert int(trie.clock[0]) == 3


def test_small_sets_stay_consistent_under_heavy_eviction_and_dropping():
    """Set-associative eviction and temporary counts never break the structure."""
    rng = np.random.default_rng(5)
    trie = tt.empty_trie(2, 32, ways=4)
    for step in range(40):
        sequences = rng.integers(0, 5, (6, 7)).astype(np.int32)
        lengths = rng.integers(1, 8, 6).astype(np.int32)
        memory = rng.integers(0, 2, 6).astype(np.int32)
        temporary = rng.random(6) < 0.5
        policy = "lru" if step % 2 else "lfu"
        trie, _ = insert(trie, memory, sequences, lengths, temporary=temporary, policy=policy)
        for m in range(2):
            got = paths(trie, m)
            assert all(t <= c for c, _, t in got.values())
            # temp is monotone down the tree too (so dropping it leaves a tree).
            for path, (_, _, t) in got.items():
                if len(path) > 1:
                    assert t <= got[path[:-1]][2]
        assert np.all(np.asarray(tt.num_live(trie)) <= 32)
        if step % 7 == 6:
            kept = {m: paths(trie, m) for m in range(2)}
            trie = drop_temporary(trie)
            for m in range(2):
                want = {p: c - t for p, (c, _, t) in kept[m].items() if c > t}
                assert {p: c for p, (c, _, _) in paths(trie, m).items()} == want


def test_start_walks_without_counting_and_windows_count_occurrences():
    text = np.asarray([[1, 2, 1, 2, 3, 1, 2, 1, 2, 3, 0, 0]], np.int32)
    window = 3
    trie = tt.empty_trie(1, 256, ways=8)
    # Grow the text in uneven steps: the result only depends on the final text.
    lengths = [0, 4, 5, 9, 9, 10]
    cursors = None
    for old, new in itertools.pairwise(lengths):
        trie, cursors = insert_windows(
            trie, jnp.zeros(1, jnp.int32), text, jnp.asarray([old]), jnp.asarray([new]),
            window=window, max_new=4, cursors=cursors,
        )  # fmt: skip
        # The cursors are the nodes of the unfinished windows' paths.
        for j in range(window - 1):
            begin = new - window + 1 + j
            node = int(cursors.node[0, j])
            if begin < 0:
                assert node == -1
                continue
            path = tuple(text[0, begin:new].tolist())
            found, _ = walk(trie, jnp.zeros(1, jnp.int32), jnp.asarray([path]),
                            jnp.asarray([len(path)]))  # fmt: skip
            assert node == int(found[0])
    want = {}
    row = text[0, :10].tolist()
    for i in range(10):
        for j in range(i + 1, min(i + window, 10) + 1):
            want[tuple(row[i:j])] = want.get(tuple(row[i:j]), 0) + 1
    assert {p: c for p, (c, _, _) in paths(trie).items()} == want


def test_per_row_memories_equal_separate_memories():
    rng = np.random.default_rng(7)
    sequences = rng.integers(0, 4, (30, 6)).astype(np.int32)
    lengths = rng.integers(1, 7, 30).astype(np.int32)
    memory = rng.integers(0, 3, 30).astype(np.int32)
    # Small memories so that eviction happens too.
    joint, _ = insert(tt.empty_trie(3, 16, ways=4), memory, sequences, lengths)
    for m in range(3):
        own = memory == m
        alone, _ = insert(
            tt.empty_trie(1, 16, ways=4),
            np.zeros(own.sum(), np.int32),
            sequences[own],
            lengths[own],
        )
        for field in ("token", "parent", "count", "depth", "last_use", "num_children"):
            np.testing.assert_array_equal(getattr(joint, field)[m], getattr(alone, field)[0])


def test_walk_suffix_match_and_best_descendants():
    corpus = [[5, 1, 2, 3], [5, 1, 2, 4], [1, 2, 3, 0], [1, 2, 3, 6], [2, 7, 7, 7]]
    sequences = np.asarray(corpus, np.int32)
    trie, _ = insert(tt.empty_trie(1, 64, ways=8), jnp.zeros(5, jnp.int32), sequences,
                     jnp.full((5,), 4))  # fmt: skip
    node, found = walk(
        trie, jnp.zeros(3, jnp.int32), jnp.asarray([[5, 1, 2], [1, 2, 9], [0, 0, 0]]),
        jnp.asarray([3, 3, 0]),
    )  # fmt: skip
    np.testing.assert_array_equal(found, [True, False, True])
    assert int(node[2]) == 0  # the empty query is the root
    # Longest suffix: [.., 9, 5, 1, 2] -> (5, 1, 2) with max_length 3; (1, 2) with max 2.
    tokens = jnp.asarray([[9, 5, 1, 2], [9, 9, 9, 9]], jnp.int32)
    lengths = jnp.asarray([4, 4], jnp.int32)
    match, size = longest_suffix_match(trie, jnp.zeros(2, jnp.int32), tokens, lengths, 3)
    np.testing.assert_array_equal(size, [3, 0])
    assert int(match[0]) == int(node[0]) and int(match[1]) == 0
    _, size = longest_suffix_match(trie, jnp.zeros(2, jnp.int32), tokens, lengths, 2)
    np.testing.assert_array_equal(size, [2, 0])
    # Root-anchored paths below (1, 2): (1,2,3) count 2, (1,2,3,0) 1, (1,2,3,6) 1.
    start, _ = walk(trie, jnp.zeros(1, jnp.int32), jnp.asarray([[1, 2]]), jnp.asarray([2]))
    tree, counts = best_descendants(trie, jnp.zeros(1, jnp.int32), start, num_nodes=4, max_depth=2)
    trees.check_tree(tree)
    np.testing.assert_array_equal(tree.valid[0], [True, True, True, False])
    assert int(tree.token[0, 0]) == 3
    assert sorted(np.asarray(tree.token[0, 1:3]).tolist()) == [0, 6]  # a tie: node order
    np.testing.assert_array_equal(tree.parent[0, :3], [-1, 0, 0])
    np.testing.assert_array_equal(tree.depth[0, :3], [1, 2, 2])
    np.testing.assert_array_equal(counts[0], [2, 1, 1, 0])
    # Depth and size caps and a count floor.
    tree, _ = best_descendants(trie, jnp.zeros(1, jnp.int32), start, num_nodes=4, max_depth=1)
    np.testing.assert_array_equal(tree.valid[0], [True, False, False, False])
    tree, _ = best_descendants(
        trie, jnp.zeros(1, jnp.int32), start, num_nodes=4, max_depth=2, min_count=2
    )
    assert int(tree.valid[0].sum()) == 1
    tree, _ = best_descendants(
        trie, jnp.zeros(1, jnp.int32), start, num_nodes=4, max_depth=2, max_nodes=jnp.asarray([2])
    )
    assert int(tree.valid[0].sum()) == 2


@functools.partial(jax.jit, static_argnames=("num_nodes",))
def _rank(trie, node, num_nodes):
    return best_descendants(trie, jnp.zeros(1, jnp.int32), node, num_nodes=num_nodes, max_depth=4)


def test_best_descendants_are_the_top_counts_of_the_subtree():
    rng = np.random.default_rng(11)
    sequences = rng.integers(0, 3, (80, 5)).astype(np.int32)
    trie, _ = insert(tt.empty_trie(1, 512, ways=16), jnp.zeros(80, jnp.int32), sequences,
                     jnp.full((80,), 5))  # fmt: skip
    got = paths(trie)
    below = {p: c for p, (c, _, _) in got.items() if p[:1] == (1,) and 2 <= len(p) <= 5}
    tree, counts = _rank(trie, walk(trie, jnp.zeros(1, jnp.int32), jnp.asarray([[1]]),
                                    jnp.asarray([1]))[0], num_nodes=10)  # fmt: skip
    trees.check_tree(tree)
    want = sorted(below.values(), reverse=True)[:10]
    assert sorted(np.asarray(counts[0]).tolist(), reverse=True) == want
    # Every node spells a real path below (1,) with its count.
    parent, token = np.asarray(tree.parent[0]), np.asarray(tree.token[0])
    for i in range(10):
        path = [token[j] for j in _root_path(parent, i)]
        assert below[(1, *path)] == int(counts[0, i])


def _root_path(parent, node):
    path = []
    while node >= 0:
        path.append(node)
        node = parent[node]
    return path[::-1]


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="capacity"):
        tt.empty_trie(1, 30, ways=16)
    with pytest.raises(ValueError, match="num_memories"):
        tt.empty_trie(0, 32)
    with pytest.raises(ValueError, match="policy"):
        tt.insert(tt.empty_trie(1, 32), jnp.zeros(1, jnp.int32), jnp.zeros((1, 2), jnp.int32),
                  jnp.ones(1, jnp.int32), policy="fifo")  # fmt: skip


def test_row_by_row_windows_equal_indexed_memories():
    rng = np.random.default_rng(2)
    text = rng.integers(0, 3, (3, 12)).astype(np.int32)
    new = jnp.asarray([6, 9, 12], jnp.int32)
    start = tt.empty_trie(3, 64, ways=8)  # no eviction: blocks do not matter
    zero = jnp.zeros(3, jnp.int32)
    # Over tt._ROWS_INDEXED windows in all: row by row under vmap; else by memory index.
    max_new = tt._ROWS_INDEXED // 3 + 1
    rows, rows_cursors = insert_windows(start, None, text, zero, new, window=4, max_new=max_new)
    indexed, cursors = insert_windows(
        start, jnp.arange(3), text, zero, new, window=4, max_new=max_new
    )
    for field in ("token", "parent", "count", "depth", "num_children"):
        np.testing.assert_array_equal(getattr(rows, field), getattr(indexed, field))
    np.testing.assert_array_equal(rows_cursors.node, cursors.node)
    assert int(rows.num_children.sum()) > 0


def test_later_blocks_never_grow_below_a_node_an_earlier_block_evicted():
    """A sequence hanging below ``origin`` keeps that node across the blocks of one call.

    Block 0 needs a slot in a full memory whose lowest leaf is block 1's origin: it must
    evict another leaf, or block 1 would grow below a reused slot (a node that spells
    another path, at another depth)."""
    trie = tt.empty_trie(1, 8, ways=8)  # one set: the memory's lowest leaf is evicted
    for path, weight in [([3, 4], 1), ([6], 5), ([7], 5), ([8], 5), ([9], 5), ([10], 5)]:
        sequence = jnp.asarray([path + [0] * (2 - len(path))], jnp.int32)
        trie, _ = insert(trie, jnp.zeros(1, jnp.int32), sequence, jnp.asarray([len(path)]),
                         weight=weight)  # fmt: skip
    trie, _ = insert(
        trie, jnp.zeros(1, jnp.int32), jnp.asarray([[3, 0]]), jnp.asarray([1]), weight=4
    )  # fmt: skip  [3] count 5, its leaf [3, 4] count 1: the lowest
    assert int(tt.num_live(trie)[0]) == 8  # full
    leaf = int(walk(trie, jnp.zeros(1, jnp.int32), jnp.asarray([[3, 4]]), jnp.asarray([2]))[0][0])
    trie, _ = insert(
        trie,
        jnp.zeros(2, jnp.int32),
        jnp.asarray([[20], [21]], jnp.int32),
        jnp.asarray([1, 1]),
        origin=jnp.asarray([0, leaf]),
        origin_depth=jnp.asarray([0, 2]),
        block=1,
    )
    got = paths(trie)  # checks depths, counts and parents
    # Block 0 evicted [6] (the oldest of the next-lowest leaves) for [20]; block 1 then
    # evicted [20], now the lowest unprotected leaf, for [3, 4, 21].
    assert got[(3, 4, 21)][0] == 1 and (6,) not in got and (20,) not in got


@pytest.mark.parametrize("shared", [True, False])
def test_windows_in_many_blocks_keep_a_full_memory_consistent(shared):
    """Running texts grown call by call, each call's windows in several blocks, into
    memories that evict on almost every call: the structure stays a trie (depths, counts
    monotone down the tree, live parents) and every cursor still valid spells its window."""
    rng = np.random.default_rng(11)
    batch, width, window, max_new = 3, 40, 5, 4
    text = jnp.asarray(rng.integers(0, 4, (batch, width)), jnp.int32)
    trie = tt.empty_trie(1 if shared else batch, 32, ways=8)
    memory = jnp.zeros(batch, jnp.int32) if shared else None
    lengths = np.zeros(batch, np.int32)
    cursors = None
    for _ in range(14):
        new = np.minimum(lengths + rng.integers(1, max_new + 1, batch), width).astype(np.int32)
        trie, cursors = insert_windows(
            trie,
            memory,
            text,
            jnp.asarray(lengths),
            jnp.asarray(new),
            window=window,
            max_new=max_new,
            cursors=cursors,
            block=4,
        )  # fmt: skip  3 rows x (window - 1 + max_new) windows: 6 blocks of 4
        lengths = new
        for m in range(trie.num_memories):
            paths(trie, m)
        born = np.asarray(trie.born)
        for b in range(batch):
            m = 0 if shared else b
            for j, node in enumerate(np.asarray(cursors.node[b])):
                if node < 0 or born[m, node] != int(cursors.born[b, j]):
                    continue  # evicted since (the next call stops growing it)
                start = int(lengths[b]) - window + 1 + j
                spelled = _root_path(np.asarray(trie.parent[m]), node)[1:]
                want = np.asarray(text[b, start : lengths[b]]).tolist()
                assert [int(trie.token[m, n]) for n in spelled] == want
    assert int(tt.num_live(trie).min()) > 24  # full: the memories evicted


def test_best_descendants_of_a_corrupt_memory_form_a_well_formed_tree():
    """Counts that grow down the tree (a corrupted or hand-made ``memory=``) must not give a
    tree listing a node before its parent or below a parent it left out."""
    trie = tt.empty_trie(1, 16, ways=16)
    for path, weight in [([1, 2, 3], 1), ([1, 5, 0], 4)]:
        length = jnp.asarray([3 if path[-1] else 2])
        trie, _ = insert(trie, jnp.zeros(1, jnp.int32), jnp.asarray([path]), length, weight=weight)
    zero = jnp.zeros(1, jnp.int32)
    deep = int(walk(trie, zero, jnp.asarray([[1, 2, 3]]), jnp.asarray([3]))[0][0])
    corrupt = trie._replace(count=trie.count.at[0, deep].set(10))  # [1, 2, 3] above [1, 2]
    for num_nodes, want in [(3, [False, True, True]), (4, [False, True, True, True])]:
        # Ranked 10 ([1,2,3]), 5 ([1]), 4 ([1,5]), 1 ([1,2]): the first node's parent is
        # left out (3 nodes) or listed after it (4 nodes); the rest form the tree.
        tree, counts = best_descendants(
            corrupt, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), num_nodes=num_nodes,
            max_depth=3,
        )  # fmt: skip
        np.testing.assert_array_equal(tree.valid[0], want)
        trees.check_tree(tree)  # topological, valid parents, depth = parent's + 1
        assert int(counts[0, 0]) == 0
