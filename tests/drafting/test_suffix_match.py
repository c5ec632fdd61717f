"""Suffix-tree drafts read from text, against a suffix tree counted by brute force."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import trees
from lookahead_jax.drafting import suffix_match

MAX_DEPTH = 4  # matched suffix
DEPTH = 3  # continuation depth
NUM_NODES = 6


@functools.partial(jax.jit, static_argnames=("num_occurrences",))
def draft(text, source, order, query, query_lengths, factor, min_prob, *, num_occurrences):
    return suffix_match.draft_tree(
        text,
        source,
        order,
        query,
        query_lengths,
        num_nodes=NUM_NODES,
        depth=DEPTH,
        num_occurrences=num_occurrences,
        max_spec_factor=factor,
        min_token_prob=min_prob,
    )


def reference(texts, order, tail, factor, min_prob, num_occurrences):
    """The suffix tree's nodes below the longest match, by brute force.

    ``texts``: {source: (positions, tokens)}; ``order``: {position: recency};
    ``tail``: the row's last tokens (oldest first). Returns (match, {path: count}, score).
    """
    found = []  # (match length, recency, continuation)
    for positions, tokens in texts.values():
        for j in range(len(tokens) - 1):  # a continuation follows
            k = 0
            while k < min(len(tail), MAX_DEPTH) and j - k >= 0 and tokens[j - k] == tail[-1 - k]:
                k += 1
            if k:
                found.append((k, order[positions[j]], tuple(tokens[j + 1 : j + 1 + DEPTH])))
    if not found:
        return 0, {}, 0.0
    match = max(k for k, _, _ in found)
    best = sorted((f for f in found if f[0] == match), key=lambda f: -f[1])[:num_occurrences]
    total = len(best)
    count, first = {}, {}
    for rank, (_, _, continuation) in enumerate(best):
        for d in range(1, len(continuation) + 1):
            path = continuation[:d]
            count[path] = count.get(path, 0) + 1
            first.setdefault(path, rank)
    floor = max(int(np.ceil(min_prob * total - 1e-6)), 1)
    ranked = sorted(
        (p for p in count if count[p] >= floor), key=lambda p: (-count[p], len(p), first[p])
    )
    kept = ranked[: min(NUM_NODES, int(np.floor(factor * match)))]
    nodes = {p: count[p] for p in kept}
    return match, nodes, sum(nodes.values()) / total


def tree_paths(tree, row):
    """{path: index} of the valid nodes of one row (checked to be a well-formed tree)."""
    parent = np.asarray(tree.parent[row])
    token = np.asarray(tree.token[row])
    valid = np.asarray(tree.valid[row])
    paths = {}
    for i in np.flatnonzero(valid):
        p = parent[i]
        assert p < i and (p == trees.ROOT or valid[p])
        paths[i] = (() if p == trees.ROOT else paths[p]) + (int(token[i]),)
    return {path: i for i, path in paths.items()}


def _check_rows(tree, score, match, expected):
    for row, (want_match, want_nodes, want_score) in enumerate(expected):
        assert int(match[row]) == want_match
        paths = tree_paths(tree, row)
        assert set(paths) == set(want_nodes)
        np.testing.assert_allclose(float(score[row]), want_score, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_each_rows_own_text_matches_the_brute_force_suffix_tree(seed):
    rng = np.random.default_rng(seed)
    batch, width = 4, 24
    text = rng.integers(0, 3, (batch, width)).astype(np.int32)
    lengths = rng.integers(1, width + 1, batch).astype(np.int32)
    position = np.arange(width)
    source = np.where(position[None, :] < lengths[:, None], 0, -1).astype(np.int32)
    query, query_lengths = suffix_match.last_tokens(jnp.asarray(text), jnp.asarray(lengths), 4)
    factor, min_prob = [(2.0, 0.1), (1.0, 0.3), (3.0, 0.0)][seed % 3]
    occurrences = 4 if seed % 2 else 16
    tree, score, match = draft(
        jnp.asarray(text), jnp.asarray(source), jnp.asarray(position[None]),
        query, query_lengths, factor, min_prob, num_occurrences=occurrences,
    )  # fmt: skip
    trees.check_tree(tree)
    expected = []
    for b in range(batch):
        row = text[b, : lengths[b]].tolist()  # its last position has no continuation
        expected.append(
            reference(
                {0: (list(range(len(row))), row)},
                {j: j for j in range(width)},
                row,
                factor,
                min_prob,
                occurrences,
            )
        )
    _check_rows(tree, score, match, expected)


@pytest.mark.parametrize("seed", range(2))
def test_a_shared_corpus_of_several_sources_matches_the_brute_force_suffix_tree(seed):
    rng = np.random.default_rng(100 + seed)
    size = 40
    text = rng.integers(0, 3, size).astype(np.int32)
    # Runs of one source each, some gaps (-1), in a ring whose newest slot is `newest`.
    source = np.repeat(np.arange(8), 5)[:size].astype(np.int32)
    source[rng.random(size) < 0.1] = -1
    newest = int(rng.integers(0, size))
    order = (np.arange(size) - newest - 1) % size
    batch = 3
    tails = rng.integers(0, 3, (batch, 6)).astype(np.int32)
    query, query_lengths = suffix_match.last_tokens(
        jnp.asarray(tails), jnp.full((batch,), 6, jnp.int32), 4
    )
    tree, score, match = draft(
        jnp.asarray(text)[None], jnp.asarray(source)[None], jnp.asarray(order)[None],
        query, query_lengths, 2.0, 0.1, num_occurrences=16,
    )  # fmt: skip
    trees.check_tree(tree)
    # Split the corpus into contiguous runs of one source (a gap or a new id ends a run).
    runs, start = {}, 0
    for j in range(1, size + 1):
        if j == size or source[j] != source[j - 1]:
            if source[start] >= 0:
                runs[len(runs)] = (list(range(start, j)), text[start:j].tolist())
            start = j
    orders = dict(enumerate(order.tolist()))
    expected = [reference(runs, orders, tails[b].tolist(), 2.0, 0.1, 16) for b in range(batch)]
    _check_rows(tree, score, match, expected)


def test_no_match_drafts_nothing():
    text = jnp.asarray([[1, 2, 3, 0, 0]], jnp.int32)
    source = jnp.asarray([[0, 0, 0, -1, -1]], jnp.int32)
    query, query_lengths = suffix_match.last_tokens(text, jnp.asarray([3]), 4)
    tree, score, match = draft(
        text, source, jnp.arange(5)[None], query, query_lengths, 2.0, 0.1, num_occurrences=4
    )
    assert not bool(tree.valid.any()) and float(score[0]) == 0.0 and int(match[0]) == 0
