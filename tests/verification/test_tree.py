"""Tree verification: chain equivalence, exact output law (enumeration, chi-square), greedy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import trees
from lookahead_jax.verification import (
    greedy,
    speculative_sampling,
    tree_greedy,
    tree_speculative_sampling,
)

tree_sampling = jax.jit(tree_speculative_sampling, static_argnames=("replacement",))


def dirichlet(rng, shape, vocab, concentration=0.7):
    return rng.dirichlet(np.full(vocab, concentration), size=shape).astype(np.float32)


def chain_tree(batch, k, tokens, num_draft):
    parent = np.broadcast_to(np.arange(-1, k - 1), (batch, k))
    valid = np.arange(k)[None, :] < num_draft[:, None]
    return trees.make_tree(jnp.asarray(parent), jnp.asarray(tokens), jnp.asarray(valid))


@pytest.mark.parametrize("replacement", [True, False])
def test_chain_tree_reproduces_chain_verification_bitwise(replacement):
    rng = np.random.default_rng(0)
    batch, k, vocab = 256, 3, 5
    q = dirichlet(rng, (batch, k), vocab)
    p = dirichlet(rng, (batch, k + 1), vocab)
    tokens = np.array(
        [[rng.choice(vocab, p=q[b, i] / q[b, i].sum()) for i in range(k)] for b in range(batch)]
    )
    num_draft = rng.integers(0, k + 1, batch)
    tree = chain_tree(batch, k, tokens, num_draft)
    for seed in range(3):
        key = jax.random.key(seed)
        chain = speculative_sampling(
            key, jnp.asarray(tokens), jnp.asarray(q), jnp.asarray(p), jnp.asarray(num_draft)
        )
        tree_out = tree_sampling(key, tree, jnp.asarray(q), jnp.asarray(p), replacement=replacement)
        np.testing.assert_array_equal(tree_out.num_accepted, chain.num_accepted)
        np.testing.assert_array_equal(tree_out.next_token, chain.next_token)
    logits = jnp.asarray(rng.normal(size=(batch, k + 1, vocab)), jnp.float32)
    chain = greedy(jnp.asarray(tokens), logits, jnp.asarray(num_draft))
    tree_out = tree_greedy(tree, logits)
    np.testing.assert_array_equal(tree_out.num_accepted, chain.num_accepted)
    np.testing.assert_array_equal(tree_out.next_token, chain.next_token)
    # The path lists the accepted chain nodes (block indices 1..n) after the root.
    for b in range(batch):
        n = int(tree_out.num_accepted[b])
        np.testing.assert_array_equal(tree_out.path[b, : n + 1], np.arange(n + 1))


def residual(p, q):
    r = np.maximum(p - q, 0.0)
    return r / r.sum() if r.sum() > 0 else p


def exact_output_law(p, q, num_children, replacement):
    """Law of the first emitted token of a one-level tree, by enumerating the children."""
    vocab = len(p)
    law = np.zeros(vocab)
    if replacement:
        draws = [
            (seq, np.prod([q[c] for c in seq]))
            for seq in itertools.product(range(vocab), repeat=num_children)
        ]
    else:
        draws = []
        for seq in itertools.permutations(range(vocab), num_children):
            prob, left = 1.0, q.copy()
            for c in seq:
                prob *= left[c] / left.sum()
                left[c] = 0.0
            draws.append((seq, prob))
    for seq, prob in draws:
        out = np.zeros(vocab)
        reach = 1.0  # probability that every earlier child was rejected
        p_res, q_cur = p.copy(), q.copy()
        for c in seq:
            accept = min(1.0, p_res[c] / q_cur[c]) if q_cur[c] > 0 else 1.0
            out[c] += reach * accept
            reach *= 1 - accept
            p_res = residual(p_res, q_cur)
            if not replacement:
                q_cur = q_cur.copy()
                q_cur[c] = 0.0
                q_cur /= q_cur.sum()
        out += reach * p_res
        law += prob * out
    return law


def draw_children(rng, q, num_children, replacement, num):
    if replacement:
        return rng.choice(len(q), size=(num, num_children), p=q)
    gumbel = np.log(q)[None, :] + rng.gumbel(size=(num, len(q)))
    return np.argsort(-gumbel, axis=1)[:, :num_children]  # Gumbel-top-k, in draw order


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("num_children", [2, 3])
def test_one_level_tree_output_law_is_the_target(replacement, num_children):
    rng = np.random.default_rng(num_children + 10 * replacement)
    vocab = 4
    p = dirichlet(rng, (), vocab).astype(np.float64)
    q = dirichlet(rng, (), vocab).astype(np.float64)
    # Exactness by enumeration: the algorithm's output law is p.
    np.testing.assert_allclose(exact_output_law(p, q, num_children, replacement), p, atol=1e-12)
    # The implementation's output law (chi-square over 40k rows, each with its own draws).
    num = 40000
    children = draw_children(rng, q, num_children, replacement, num)
    tree = trees.TokenTree(
        parent=jnp.full((num, num_children), -1, jnp.int32),
        depth=jnp.ones((num, num_children), jnp.int32),
        token=jnp.asarray(children, jnp.int32),
        valid=jnp.ones((num, num_children), bool),
    )
    target = jnp.asarray(
        np.broadcast_to(np.stack([p] * (num_children + 1)), (num, num_children + 1, vocab)),
        jnp.float32,
    )
    draft = jnp.asarray(np.broadcast_to(q, (num, num_children, vocab)), jnp.float32)
    out = tree_sampling(jax.random.key(1), tree, draft, target, replacement=replacement)
    accepted = np.asarray(out.num_accepted) > 0
    first_child = np.asarray(out.path[:, 1]) - 1
    first = np.where(
        accepted, children[np.arange(num), np.maximum(first_child, 0)], np.asarray(out.next_token)
    )
    counts = np.bincount(first, minlength=vocab)
    statistic = np.sum((counts - num * p) ** 2 / (num * p))
    assert stats.chi2.sf(statistic, df=vocab - 1) > 1e-4
    assert 0 < accepted.mean() < 1


@pytest.mark.parametrize("replacement", [True, False])
def test_two_level_tree_output_law_is_the_target(replacement):
    """Depth 2, 2 children per node: 1st token ~ p, 2nd after an accepted first ~ p(.|first)."""
    rng = np.random.default_rng(7)
    vocab, m, num = 4, 2, 40000
    p_root = dirichlet(rng, (), vocab).astype(np.float64)
    p_next = dirichlet(rng, (vocab,), vocab).astype(np.float64)  # target after each first token
    q_root = dirichlet(rng, (), vocab).astype(np.float64)
    q_next = dirichlet(rng, (vocab,), vocab).astype(np.float64)
    level1 = draw_children(rng, q_root, m, replacement, num)  # [num, m]
    level2 = np.stack(
        [
            np.stack([draw_children(rng, q_next[c], m, replacement, 1)[0] for c in row])
            for row in level1
        ]
    )
    # Nodes: 0..m-1 level 1, then the m children of each level-1 node.
    parent = np.array([-1] * m + [i for i in range(m) for _ in range(m)])
    tokens = np.concatenate([level1, level2.reshape(num, m * m)], axis=1)
    n = tokens.shape[1]
    tree = trees.make_tree(jnp.asarray(np.broadcast_to(parent, (num, n))), jnp.asarray(tokens))
    draft = np.zeros((num, n, vocab), np.float32)
    draft[:, :m] = q_root
    draft[:, m:] = q_next[np.repeat(level1, m, axis=1)]
    target = np.zeros((num, n + 1, vocab), np.float32)
    target[:, 0] = p_root
    target[:, 1 : m + 1] = p_next[level1]
    target[:, m + 1 :] = 1.0 / vocab  # deeper distributions: unused by the checks below
    out = tree_sampling(
        jax.random.key(3), tree, jnp.asarray(draft), jnp.asarray(target), replacement=replacement
    )
    count = np.asarray(out.num_accepted)
    path = np.asarray(out.path)
    node_tokens = np.concatenate([np.zeros((num, 1), int), tokens], axis=1)
    first = np.where(
        count >= 1, node_tokens[np.arange(num), path[:, 1]], np.asarray(out.next_token)
    )
    counts = np.bincount(first, minlength=vocab)
    statistic = np.sum((counts - num * p_root) ** 2 / (num * p_root))
    assert stats.chi2.sf(statistic, df=vocab - 1) > 1e-4
    second = np.where(
        count >= 2, node_tokens[np.arange(num), path[:, 2]], np.asarray(out.next_token)
    )
    for c in range(vocab):
        rows = (count >= 1) & (first == c)
        if rows.sum() < 500:
            continue
        counts = np.bincount(second[rows], minlength=vocab)
        expected = rows.sum() * p_next[c]
        keep = expected > 0
        statistic = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
        assert stats.chi2.sf(statistic, df=keep.sum() - 1) > 1e-4
    assert np.any(count == 2)


def test_tree_greedy_takes_the_deepest_argmax_path():
    rng = np.random.default_rng(3)
    batch, num_nodes, vocab = 64, 10, 3
    parents = np.stack(
        [np.array([int(rng.integers(-1, i)) for i in range(num_nodes)]) for _ in range(batch)]
    )
    tokens = rng.integers(0, vocab, (batch, num_nodes))
    valid = rng.random((batch, num_nodes)) < 0.9
    for b in range(batch):  # keep the tree well formed: children of invalid nodes are invalid
        for i in range(num_nodes):
            if parents[b, i] >= 0 and not valid[b, parents[b, i]]:
                valid[b, i] = False
    tree = trees.make_tree(jnp.asarray(parents), jnp.asarray(tokens), jnp.asarray(valid))
    logits = rng.normal(size=(batch, num_nodes + 1, vocab)).astype(np.float32)
    out = tree_greedy(tree, jnp.asarray(logits))
    for b in range(batch):
        best, best_path = -1, [0]
        for node in range(num_nodes):  # every node whose whole path is the argmax chain
            path, walk, ok = [], node, valid[b, node]
            while walk >= 0 and ok:
                ok = tokens[b, walk] == np.argmax(logits[b, parents[b, walk] + 1])
                path.append(walk + 1)
                walk = parents[b, walk]
            if ok and len(path) > len(best_path) - 1:
                best, best_path = node, [0, *path[::-1]]
        assert int(out.num_accepted[b]) == len(best_path) - 1
        assert int(out.next_token[b]) == int(np.argmax(logits[b, best + 1]))
        np.testing.assert_array_equal(out.path[b, : len(best_path)], best_path)
    assert np.asarray(out.num_accepted).max() >= 2
    # The depths come from the parents, not `tree.depth`: a tree whose depth field lies
    # (traced, so unchecked) verifies the same.
    lying = tree._replace(depth=jnp.asarray(rng.integers(1, num_nodes + 1, (batch, num_nodes))))
    again = jax.jit(tree_greedy)(lying, jnp.asarray(logits))
    for field in ("num_accepted", "next_token", "path"):
        np.testing.assert_array_equal(getattr(again, field), getattr(out, field))


def test_shape_errors():
    tree = trees.make_tree(jnp.asarray([[-1, 0]]), jnp.asarray([[1, 2]]))
    with pytest.raises(ValueError, match="target_logits"):
        tree_greedy(tree, jnp.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="draft_probs"):
        tree_speculative_sampling(
            jax.random.key(0), tree, jnp.zeros((1, 3, 4)), jnp.zeros((1, 3, 4))
        )
    with pytest.raises(ValueError, match=r"tree\.token"):
        tree_greedy(tree, jnp.zeros((1, 3, 2)))
