"""Token trees: validation, masks, templates, the best-first builder, merging."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lookahead_jax
from lookahead_jax import models, trees
from lookahead_jax.verification import tree_greedy
from tests.helpers import count_compilations, naive_ancestor_mask, root_path

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=32
)


def random_parents(rng, num_nodes):
    return np.array([int(rng.integers(-1, i)) for i in range(num_nodes)], np.int32)


_make_tree = jax.jit(trees.make_tree)


def make_tree(parents, tokens, valid=None):
    """``trees.make_tree`` compiled once per shape, its value checks run on the concrete result."""
    valid = None if valid is None else jnp.asarray(valid)
    tree = _make_tree(jnp.asarray(parents), jnp.asarray(tokens), valid)
    trees.check_tree(jax.device_get(tree))
    return tree


@functools.partial(jax.jit, static_argnames="max_depth")
def tree_views(parents, tokens, max_depth):
    """The functions under test as one compiled program per shape (called eagerly, each of
    their operations would compile on its own for every new tree size)."""
    tree = trees.make_tree(parents, tokens)
    by_jumps = trees.ancestor_mask(tree.parent, max_depth=max_depth)
    return (
        tree,
        trees.ancestor_mask(tree.parent),
        by_jumps,
        trees.paths(tree),
        trees.block_mask(tree),
    )


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), num_nodes=st.integers(1, 12))
def test_ancestor_mask_depths_and_paths_match_naive(seed, num_nodes):
    rng = np.random.default_rng(seed)
    parents = np.stack([random_parents(rng, num_nodes) for _ in range(2)])
    tokens = rng.integers(0, 16, parents.shape)
    max_depth = max(len(root_path(row, node)) for row in parents for node in range(num_nodes))
    tree, mask, by_jumps, (path_tokens, path_lengths), block = jax.device_get(
        tree_views(jnp.asarray(parents), jnp.asarray(tokens), max_depth)
    )
    trees.check_tree(tree)  # the checks make_tree runs on concrete input
    assert int(tree.depth.max()) == max_depth
    # Concrete parents take NumPy's path, traced ones (above, under jit) JAX's: same depths.
    np.testing.assert_array_equal(trees.depths_from_parents(parents), tree.depth)
    np.testing.assert_array_equal(by_jumps, mask)
    for row in range(2):
        np.testing.assert_array_equal(mask[row], naive_ancestor_mask(parents[row]))
        for node in range(num_nodes):
            path = root_path(parents[row], node)
            assert tree.depth[row, node] == len(path)
            assert path_lengths[row, node] == len(path)
            np.testing.assert_array_equal(path_tokens[row, node, : len(path)], tokens[row, path])
    assert block.shape == (2, num_nodes + 1, num_nodes + 1)
    assert block[:, :, 0].all() and not block[:, 0, 1:].any()
    np.testing.assert_array_equal(block[:, 1:, 1:], mask)


@pytest.fixture(scope="module")
def model():
    params = models.init_params(CONFIG, jax.random.key(0))
    return models.Model(CONFIG, jax.tree.map(lambda x: x * 3.0, params))


@functools.partial(jax.jit, static_argnames=())
def tree_logits(model, prefix, prefix_lengths, tree):
    cache = models.init_cache(CONFIG, prefix.shape[0], CONFIG.max_length)
    _, cache = model(prefix, cache)
    cache = models.rewind(cache, prefix_lengths - 1)
    root = prefix[jnp.arange(prefix.shape[0]), prefix_lengths - 1]
    block = jnp.concatenate([root[:, None], tree.token], axis=1)
    logits, _ = model(block, cache, tree_mask=trees.block_mask(tree))
    return logits


@jax.jit
def full_logits(model, sequence):
    return model(sequence)[0]


def last_logits(model, sequence):
    """Logits after ``sequence [1, S]`` at one fixed width (one compiled program for every
    path length: right padding cannot reach earlier positions of a causal model)."""
    length = sequence.shape[1]
    padded = jnp.zeros((1, 16), jnp.int32).at[:, :length].set(sequence)
    return full_logits(model, padded)[0, length - 1]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), num_nodes=st.integers(2, 9))
def test_block_mask_logits_equal_path_logits(model, seed, num_nodes):
    """Each node's logits under the tree mask equal those of its root path run as a sequence."""
    rng = np.random.default_rng(seed)
    parents = np.stack([random_parents(rng, num_nodes) for _ in range(2)])
    valid = np.ones_like(parents, bool)
    valid[1, -1] = False  # an unused slot must not disturb the others
    tokens = rng.integers(0, 16, parents.shape)
    tree = make_tree(parents, tokens, valid)
    prefix = rng.integers(0, 16, (2, 6)).astype(np.int32)
    prefix_lengths = np.asarray([6, 4], np.int32)
    logits = np.asarray(tree_logits(model, jnp.asarray(prefix), jnp.asarray(prefix_lengths), tree))
    tree_tokens = np.asarray(tree.token)
    for row in range(2):
        committed = prefix[row, : prefix_lengths[row]]
        np.testing.assert_allclose(
            logits[row, 0], last_logits(model, jnp.asarray(committed[None])), atol=2e-5
        )
        for node in range(num_nodes):
            if not valid[row, node]:
                continue
            path = root_path(parents[row], node)
            sequence = jnp.asarray(np.concatenate([committed, tree_tokens[row, path]])[None])
            np.testing.assert_allclose(
                logits[row, node + 1], last_logits(model, sequence), atol=2e-5
            )


def test_malformed_trees_raise_clear_errors():
    tokens = jnp.zeros((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="topological"):
        trees.make_tree(jnp.asarray([[-1, 2, 0]]), tokens)
    with pytest.raises(ValueError, match="topological"):
        trees.make_tree(jnp.asarray([[-1, -2, 0]]), tokens)
    with pytest.raises(ValueError, match="over capacity"):
        trees.make_tree(jnp.asarray([[-1, 0, 1]]), tokens, capacity=2)
    with pytest.raises(ValueError, match="valid parent"):
        trees.make_tree(jnp.asarray([[-1, 0, 1]]), tokens, jnp.asarray([[True, False, True]]))
    with pytest.raises(ValueError, match="parent"):
        trees.template_from_rank_paths([(0,), (1, 0)])
    # A well-formed tree with an unused slot passes.
    tree = trees.make_tree(jnp.asarray([[-1, 0, 1]]), tokens, jnp.asarray([[True, True, False]]))
    wrong_depth = tree._replace(depth=jnp.asarray([[1, 3, 3]]))
    with pytest.raises(ValueError, match="depth"):
        trees.check_tree(wrong_depth)
    # Traced (a drafter's tree in a compiled loop): under `checked` only.
    check = lookahead_jax.checked(lambda tree: trees.check_tree(tree) or jnp.zeros(()))
    check(tree)
    with pytest.raises(ValueError, match="row 0 node 1 has depth 3"):
        check(wrong_depth)
    with pytest.raises(ValueError, match="row 0 node 2 has parent 2"):
        check(tree._replace(parent=jnp.asarray([[-1, 0, 2]]), valid=jnp.ones((1, 3), bool)))
    jax.jit(lambda tree: trees.check_tree(tree) or jnp.zeros(()))(wrong_depth)  # not checked


def test_token_recycling_template_shape():
    template = trees.token_recycling_template()
    assert template.num_nodes == 80
    assert template.level_widths() == [8, 21, 25, 15, 8, 3]
    assert template.max_depth == 6
    assert int(template.rank.max()) == 7
    # Topological, and the children of each parent carry ranks 0..m-1.
    assert np.all(template.parent < np.arange(80))
    for parent in range(-1, 80):
        ranks = sorted(template.rank[template.parent == parent].tolist())
        assert ranks == list(range(len(ranks)))
    for n in (1, 8, 20, 50):
        small = trees.token_recycling_template(n)
        assert small.num_nodes == n
        assert np.all(small.parent < np.arange(n))
    chain = trees.chain_template(4)
    np.testing.assert_array_equal(chain.parent, [-1, 0, 1, 2])
    assert trees.full_template(2, 3).level_widths() == [2, 4, 8]


def test_fill_template_reads_candidates_by_rank():
    template = trees.template_from_rank_paths([(0,), (1,), (0, 0), (0, 1), (1, 0)])
    table = jnp.asarray([[1, 2], [3, 0], [0, 3], [2, 1]], jnp.int32)  # V = 4, k = 2
    tree = trees.fill_template(template, jnp.asarray([0, 2]), lambda t: table[t])
    # Row 0: root 0 -> children 1, 2; 1 -> 3, 0; 2 -> 0.
    np.testing.assert_array_equal(tree.token[0], [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(tree.token[1], [0, 3, 1, 2, 2])


def brute_force_top(log_prob_fn, vocab, depth, num_nodes):
    scored = []
    for d in range(1, depth + 1):
        for seq in itertools.product(range(vocab), repeat=d):
            total = sum(log_prob_fn(seq[:i])[seq[i]] for i in range(d))
            scored.append((total, seq))
    scored.sort(key=lambda s: -s[0])
    return {seq for _, seq in scored[:num_nodes]}


def path_log_probs(prefix, vocab, seed):
    rng = np.random.default_rng(abs(hash((seed, *prefix))) % 2**32)
    logits = 2.0 * rng.normal(size=vocab)
    return logits - np.log(np.sum(np.exp(logits)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_nodes", [3, 7])
def test_dynamic_tree_equals_brute_force_top_n(seed, num_nodes):
    vocab, depth = 3, 3

    def expand(expanded, frontier):
        # Host-side lookup of each frontier node's path (the test's "draft model").
        path_tokens, path_len = jax.device_get(trees.paths(expanded))
        out = np.zeros((1, frontier.shape[1], vocab), np.float32)
        for w, slot in enumerate(np.asarray(frontier[0])):
            prefix = (
                () if slot < 0 else tuple(np.asarray(path_tokens[0, slot, : path_len[0, slot]]))
            )
            out[0, w] = path_log_probs(prefix, vocab, seed)
        return jnp.asarray(out)

    built = trees.build_dynamic_tree(
        expand, 1, num_nodes=num_nodes, beam_width=num_nodes, branching=vocab, max_depth=depth
    )
    trees.check_tree(built.tree)
    built = jax.device_get(built)
    path_tokens, path_len = jax.device_get(trees.paths(built.tree))
    got = {
        tuple(np.asarray(path_tokens[0, i, : path_len[0, i]]).tolist())
        for i in range(num_nodes)
        if built.tree.valid[0, i]
    }
    expected = brute_force_top(lambda p: path_log_probs(p, vocab, seed), vocab, depth, num_nodes)
    assert got == expected
    for i in range(num_nodes):  # path log-probs are the sums of the draft log-probs
        seq = tuple(np.asarray(path_tokens[0, i, : path_len[0, i]]).tolist())
        want = sum(path_log_probs(seq[:j], vocab, seed)[seq[j]] for j in range(len(seq)))
        np.testing.assert_allclose(built.path_log_prob[0, i], want, rtol=1e-5)


def consistent_logits(tree, root_tokens, vocab, seed):
    """Target logits that are a function of the root-to-node token path only."""
    path_tokens, path_len = jax.device_get(trees.paths(tree))
    batch, num_nodes = tree.parent.shape
    logits = np.zeros((batch, num_nodes + 1, vocab), np.float32)
    for b in range(batch):
        for i in range(num_nodes + 1):
            prefix = (int(root_tokens[b]),)
            if i:
                prefix += tuple(np.asarray(path_tokens[b, i - 1, : path_len[b, i - 1]]).tolist())
            rng = np.random.default_rng(abs(hash((seed, *prefix))) % 2**32)
            logits[b, i] = rng.normal(size=vocab)
    return jnp.asarray(logits)


def random_tree(rng, batch, num_nodes, vocab):
    parents = np.stack([random_parents(rng, num_nodes) for _ in range(batch)])
    return make_tree(parents, rng.integers(0, vocab, parents.shape))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_merged_tree_accepts_at_least_the_best_single_tree(seed):
    rng = np.random.default_rng(seed)
    vocab, batch = 3, 2
    inputs = [random_tree(rng, batch, n, vocab) for n in (5, 7, 4)]
    merged = trees.merge_trees(inputs, capacity=16)
    trees.check_tree(merged.tree)
    root = rng.integers(0, vocab, batch)
    best = np.zeros(batch, int)
    for tree in inputs:
        verified = tree_greedy(tree, consistent_logits(tree, root, vocab, seed))
        best = np.maximum(best, np.asarray(verified.num_accepted))
    verified = tree_greedy(merged.tree, consistent_logits(merged.tree, root, vocab, seed))
    assert np.all(np.asarray(verified.num_accepted) >= best)
    # No duplicate siblings, and every input path is present in the merged tree.
    paths_m, len_m = jax.device_get(trees.paths(merged.tree))
    merged_valid = np.asarray(merged.tree.valid)
    merged_paths = [
        {
            tuple(np.asarray(paths_m[b, i, : len_m[b, i]]).tolist())
            for i in range(16)
            if merged_valid[b, i]
        }
        for b in range(batch)
    ]
    assert [len(s) for s in merged_paths] == [int(merged_valid[b].sum()) for b in range(batch)]
    for tree in inputs:
        p, n = jax.device_get(trees.paths(tree))
        for b in range(batch):
            for i in range(tree.num_nodes):
                assert tuple(np.asarray(p[b, i, : n[b, i]]).tolist()) in merged_paths[b]


def test_merge_over_capacity_stays_a_tree():
    rng = np.random.default_rng(0)
    inputs = [random_tree(rng, 1, 8, 4) for _ in range(3)]
    merged = trees.merge_trees(inputs, capacity=5)
    trees.check_tree(merged.tree)
    assert int(merged.tree.valid.sum()) == 5


def test_merge_outside_jit_compiles_once_per_shape():
    """Called eagerly (as in a notebook), a second merge at the same shapes compiles nothing."""
    rng = np.random.default_rng(1)
    calls = [[random_tree(rng, 2, n, 3) for n in (5, 7, 4)] for _ in range(3)]
    trees.merge_trees(calls[0], capacity=16)
    with count_compilations() as count:
        for inputs in calls[1:]:
            trees.merge_trees(inputs, capacity=16)
    assert count() == 0
