"""Chain verification: greedy, lossless speculative sampling (exact and chi-square), typical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lookahead_jax import verification

NUM_SAMPLES = 20000


def random_probs(rng, shape, zero_fraction=0.0):
    probs = rng.gamma(0.5, size=shape)
    probs *= rng.random(shape) >= zero_fraction
    probs[..., 0] += 1e-3  # never an all-zero row
    return probs / probs.sum(-1, keepdims=True)


def chi_square_pvalue(observed_counts, expected_probs):
    expected = expected_probs * observed_counts.sum()
    keep = expected > 0
    assert observed_counts[~keep].sum() == 0, "a zero-probability outcome was sampled"
    statistic = np.sum((observed_counts[keep] - expected[keep]) ** 2 / expected[keep])
    return stats.chi2.sf(statistic, df=keep.sum() - 1)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1), case=st.sampled_from(["random", "equal", "disjoint", "sparse"])
)
def test_each_position_emits_exactly_the_target_distribution(seed, case):
    """q(v) min(1, p/q) + (1 - beta) r(v) = p(v): the algorithm's law, enumerated exactly."""
    rng = np.random.default_rng(seed)
    vocab = 6
    p = random_probs(rng, (vocab,), zero_fraction=0.3 if case == "sparse" else 0.0)
    q = random_probs(rng, (vocab,), zero_fraction=0.3 if case == "sparse" else 0.0)
    if case == "equal":
        q = p.copy()
    if case == "disjoint":
        p = np.array([0.5, 0.5, 0, 0, 0, 0.0])
        q = np.array([0, 0, 0.2, 0.3, 0.5, 0.0])
    accept = np.asarray(verification.acceptance_probability(jnp.asarray(p), jnp.asarray(q)))
    beta = np.sum(q * accept)
    np.testing.assert_allclose(beta, np.minimum(p, q).sum(), atol=1e-6)
    residual = np.asarray(verification.residual_distribution(jnp.asarray(p), jnp.asarray(q)))
    assert np.all(np.isfinite(residual))
    emitted = q * accept + (1 - beta) * residual
    np.testing.assert_allclose(emitted, p, atol=1e-6)


@pytest.fixture(scope="module")
def block():
    """One draft block per row, NUM_SAMPLES identical rows (each row draws its own keys)."""
    rng = np.random.default_rng(0)
    k, vocab = 3, 5
    q = random_probs(rng, (k, vocab))
    p = random_probs(rng, (k + 1, vocab))
    draws = jax.vmap(lambda key: jax.random.categorical(key, jnp.log(jnp.asarray(q))))(
        jax.random.split(jax.random.key(1), NUM_SAMPLES)
    )
    out = jax.jit(verification.speculative_sampling)(
        jax.random.key(2),
        draws.astype(jnp.int32),
        jnp.broadcast_to(jnp.asarray(q), (NUM_SAMPLES, k, vocab)),
        jnp.broadcast_to(jnp.asarray(p), (NUM_SAMPLES, k + 1, vocab)),
    )
    return p, q, np.asarray(draws), np.asarray(out.num_accepted), np.asarray(out.next_token)


def emitted_token(draws, num_accepted, next_token, position):
    """Token emitted at ``position`` (0-based) for rows that reached it."""
    reached = num_accepted >= position
    token = np.where(
        num_accepted > position, draws[:, min(position, draws.shape[1] - 1)], next_token
    )
    return token[reached]


def test_emitted_tokens_follow_target_chi_square(block):
    p, _q, draws, num_accepted, next_token = block
    for position in range(3):
        tokens = emitted_token(draws, num_accepted, next_token, position)
        counts = np.bincount(tokens, minlength=p.shape[1])
        assert chi_square_pvalue(counts, p[position]) > 1e-4, position
    # The bonus token after a fully accepted block follows p_{K+1}.
    bonus = next_token[num_accepted == 3]
    assert chi_square_pvalue(np.bincount(bonus, minlength=p.shape[1]), p[3]) > 1e-4


def test_acceptance_rate_is_sum_of_min(block):
    p, q, _draws, num_accepted, _ = block
    beta = np.minimum(p[0], q[0]).sum()
    rate = np.mean(num_accepted >= 1)
    assert abs(rate - beta) < 5 * np.sqrt(beta * (1 - beta) / NUM_SAMPLES)


def test_accepted_length_histogram_is_geometric_for_iid_acceptance():
    rng = np.random.default_rng(3)
    k, vocab = 4, 5
    q1, p1 = random_probs(rng, (vocab,)), random_probs(rng, (vocab,))
    q = np.broadcast_to(q1, (k, vocab))
    p = np.broadcast_to(p1, (k + 1, vocab))
    draws = jax.random.categorical(
        jax.random.key(4), jnp.log(jnp.asarray(q1)), shape=(NUM_SAMPLES, k)
    )
    out = verification.speculative_sampling(
        jax.random.key(5),
        draws.astype(jnp.int32),
        jnp.broadcast_to(jnp.asarray(q), (NUM_SAMPLES, k, vocab)),
        jnp.broadcast_to(jnp.asarray(p), (NUM_SAMPLES, k + 1, vocab)),
    )
    beta = np.minimum(p1, q1).sum()
    law = np.array([beta**j * (1 - beta) for j in range(k)] + [beta**k])
    counts = np.bincount(np.asarray(out.num_accepted), minlength=k + 1)
    assert chi_square_pvalue(counts, law) > 1e-4


def test_edge_cases_equal_disjoint_and_empty_blocks():
    p = jnp.asarray([[[0.2, 0.3, 0.5, 0.0], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]]])
    tokens = jnp.asarray([[2, 3]])
    # p == q: every draft accepted, finite bonus.
    same = verification.speculative_sampling(jax.random.key(0), tokens, p[:, :2], p)
    assert int(same.num_accepted[0]) == 2
    # Disjoint supports: never accepted, the correction comes from p.
    q = jax.nn.one_hot(jnp.asarray([[3, 0]]), 4)
    for seed in range(20):
        out = verification.speculative_sampling(jax.random.key(seed), jnp.asarray([[3, 0]]), q, p)
        assert int(out.num_accepted[0]) == 0 and int(out.next_token[0]) in (0, 1, 2)
    # K = 0: one token from p_1.
    empty = verification.speculative_sampling(
        jax.random.key(0), jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0, 4)), p[:, :1]
    )
    assert int(empty.num_accepted[0]) == 0 and int(empty.next_token[0]) in (0, 1, 2)
    # num_draft = 0 masks the drafts even when they would be accepted.
    masked = verification.speculative_sampling(
        jax.random.key(0), tokens, p[:, :2], p, num_draft=jnp.asarray([0])
    )
    assert int(masked.num_accepted[0]) == 0


def test_greedy_verification():
    logits = jnp.log(
        jnp.asarray(
            [
                [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]],
                [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]],
            ]
        )
        + 1e-9
    )
    drafts = jnp.asarray([[1, 0], [1, 2]])
    out = verification.greedy(drafts, logits)
    np.testing.assert_array_equal(out.num_accepted, [2, 1])
    np.testing.assert_array_equal(out.next_token, [2, 0])
    limited = verification.greedy(drafts, logits, num_draft=jnp.asarray([1, 0]))
    np.testing.assert_array_equal(limited.num_accepted, [1, 0])
    np.testing.assert_array_equal(limited.next_token, [0, 1])


def test_typical_acceptance_reduces_to_greedy_at_zero_temperature():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(8, 4, 7)))
    one_hot = jax.nn.one_hot(jnp.argmax(logits, -1), 7)
    drafts = jnp.where(jnp.asarray(rng.random((8, 3)) < 0.7), jnp.argmax(logits[:, :3], -1), 0)
    typical = verification.typical_acceptance(
        jax.random.key(0), drafts, one_hot, **verification.MEDUSA_THRESHOLDS
    )
    expected = verification.greedy(drafts, logits)
    np.testing.assert_array_equal(typical.num_accepted, expected.num_accepted)
    np.testing.assert_array_equal(typical.next_token, expected.next_token)


def test_typical_acceptance_thresholds():
    # Uniform p over 4 tokens: H = log 4, so the threshold is min(eps, alpha / 4) against 0.25.
    p = jnp.full((1, 2, 4), 0.25)
    accept = verification.typical_acceptance(
        jax.random.key(0), jnp.asarray([[1]]), p, posterior_threshold=0.3, posterior_alpha=0.9
    )
    reject = verification.typical_acceptance(
        jax.random.key(0), jnp.asarray([[1]]), p, posterior_threshold=0.3, posterior_alpha=1.1
    )
    assert int(accept.num_accepted[0]) == 1 and int(reject.num_accepted[0]) == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: verification.greedy(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3, 5))),
            "K \\+ 1",
        ),
        (lambda: verification.greedy(jnp.zeros((2, 3)), jnp.zeros((2, 4, 5))), "integers"),
        (
            lambda: verification.speculative_sampling(
                jax.random.key(0),
                jnp.zeros((2, 3), jnp.int32),
                jnp.zeros((2, 3, 4)),
                jnp.zeros((2, 4, 5)),
            ),
            "vocabulary",
        ),
        (
            lambda: verification.speculative_sampling(
                jax.random.key(0),
                jnp.zeros((2, 3), jnp.int32),
                jnp.zeros((2, 2, 5)),
                jnp.zeros((2, 4, 5)),
            ),
            "draft_probs",
        ),
        (
            lambda: verification.greedy(
                jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4, 5)), num_draft=jnp.asarray([4, 0])
            ),
            "num_draft",
        ),
    ],
)
def test_bad_shapes_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
