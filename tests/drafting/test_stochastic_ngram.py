"""Stochastic n-gram (STAND-style) tree drafter: memory, Gumbel-top-k trees, losslessness."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import models, trees
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.drafting.stochastic_ngram import (
    Memory,
    empty_memory,
    stochastic_ngram,
)
from lookahead_jax.drafting.stochastic_ngram import lookup as sng_lookup
from lookahead_jax.drafting.stochastic_ngram import write as sng_write
from lookahead_jax.sampling import Sampling, log_probs
from tests import helpers
from tests.helpers import continuation_codes, exact_continuation_law, perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=48
)
MAX_NEW = 16


@pytest.fixture(scope="module")
def target():
    # Noise seed 4: a random model whose greedy continuations are varied (some seeds
    # collapse into repeating one token, which would leave the n-gram memory little to learn).
    params = jax.jit(lambda key: perturbed(models.init_params(CONFIG, key), 0.3, 4))
    return models.Model(CONFIG, params(jax.random.key(0)))


@functools.partial(jax.jit, static_argnames=("options", "sampling", "eos_id", "max_new"))
def run(target, prompt, lengths, key, memory=None, *, options, sampling=Sampling(), eos_id=None,
        max_new=MAX_NEW):  # fmt: skip
    """``options=None``: plain decoding; else the keyword arguments of ``stochastic_ngram``."""
    drafter = None
    if options is not None:
        drafter = stochastic_ngram(CONFIG.vocab_size, memory=memory, **dict(options))
    return generate(
        target,
        prompt,
        lengths,
        key,
        max_new_tokens=max_new,
        sampling=sampling,
        drafter=drafter,
        controller=ALWAYS_DRAFT,
        eos_id=eos_id,
    )


def ragged_prompts(batch, width, seed, repetitive=False):
    period = 3 if repetitive else None
    return helpers.ragged_prompts(
        CONFIG.vocab_size, batch, width, seed, min_length=2, period=period
    )


# The library leaves compilation to the caller; eager op-by-op dispatch is slow on CPU.
write = jax.jit(sng_write)
lookup = jax.jit(sng_lookup)


# ---------------------------------------------------------------------------------------
# Memory


def test_write_then_lookup_backs_off_and_respects_priority():
    memory = empty_memory(order=3, table_size=64, num_candidates=3)
    logits = jax.random.normal(jax.random.key(0), (3, 10)) * 3
    contexts = jnp.asarray([[4, 5, 6], [-1, 7, 6], [-1, -1, 2]], jnp.int32)
    memory = write(memory, contexts, logits)
    want_logp, want_tok = jax.lax.top_k(jax.nn.log_softmax(logits), 3)
    queries = jnp.asarray(
        [
            [4, 5, 6],  # stored at length 3
            [9, 7, 6],  # length 2 (7, 6) stored by row 1
            [9, 9, 6],  # only (6,): the last write of length 1 for token 6 is row 1
            [-1, -1, 2],  # (2,) stored by row 2
            [1, 2, 3],  # nothing stored for 3
        ],
        jnp.int32,
    )
    tok, logp, found = lookup(memory, queries)
    np.testing.assert_array_equal(found, [True, True, True, True, False])
    for query, row in ((0, 0), (1, 1), (2, 1), (3, 2)):
        np.testing.assert_array_equal(tok[query], want_tok[row])
        np.testing.assert_allclose(logp[query], want_logp[row], rtol=1e-6)
    assert np.all(np.isneginf(logp[4]))
    # Same context twice in one write: the higher priority wins, whatever the order.
    other = jnp.flip(logits[:1], axis=-1)
    twice = write(
        empty_memory(3, 64, 3),
        jnp.concatenate([contexts[:1], contexts[:1]]),
        jnp.concatenate([logits[:1], other]),
        priority=jnp.asarray([5, 2], jnp.int32),
    )
    np.testing.assert_array_equal(lookup(twice, contexts[:1])[0][0], want_tok[0])
    # Masked rows are not written.
    masked = write(empty_memory(3, 64, 3), contexts, logits, mask=jnp.zeros(3, bool))
    assert not np.any(lookup(masked, queries)[2])


def test_hash_collisions_never_return_another_context():
    # One slot per length: all contexts collide, yet a lookup never returns another's entry.
    memory = empty_memory(order=2, table_size=1, num_candidates=2)
    logits = jax.random.normal(jax.random.key(1), (2, 6))
    memory = write(memory, jnp.asarray([[1, 2], [3, 4]], jnp.int32), logits)
    # (3, 4), written last, owns both slots; (1, 2) and its suffix (2,) are gone.
    tok, _, found = lookup(memory, jnp.asarray([[1, 2], [3, 4], [9, 4]], jnp.int32))
    np.testing.assert_array_equal(found, [False, True, True])
    want = np.asarray(jax.lax.top_k(logits[1], 2)[1])
    np.testing.assert_array_equal(tok[1], want)
    np.testing.assert_array_equal(tok[2], want)


# ---------------------------------------------------------------------------------------
# Drafting


def random_memory(vocab, order, num_candidates, seed, scale=2.0):
    """Every context of every length stored with a random distribution."""
    contexts = []
    for n in range(1, order + 1):
        for ctx in itertools.product(range(vocab), repeat=n):
            contexts.append((-1,) * (order - n) + ctx)
    contexts = jnp.asarray(contexts, jnp.int32)
    logits = scale * jax.random.normal(jax.random.key(seed), (len(contexts), vocab))
    memory = empty_memory(order, 4096, num_candidates)
    return write(memory, contexts, logits), contexts, logits


def test_propose_draws_gumbel_top_k_without_replacement():
    """Children of the root: first and second draw follow sampling without replacement from q."""
    vocab, order, k = 5, 2, 4
    memory, _, _ = random_memory(vocab, order, k, seed=3)
    drafter = stochastic_ngram(vocab, order=order, num_candidates=k, widths=(3, 2),
                                   table_size=4096, memory=memory)  # fmt: skip
    num = 20000
    tokens = jnp.broadcast_to(jnp.asarray([[1, 4, 2]], jnp.int32), (num, 3))
    lengths = jnp.full((num,), 3, jnp.int32)
    sampling = Sampling(temperature=0.7)
    state = drafter.init(tokens, lengths, 16)
    _, draft = jax.jit(functools.partial(drafter.propose, sampling=sampling))(
        state, jax.random.key(0), tokens, lengths
    )
    tree = draft.tree
    assert tree.num_nodes == 3 + 6 and drafter.max_depth == 2 and not drafter.replacement
    trees.check_tree(tree)
    # Exact q of the root's context (4, 2): the stored top-k processed like the target.
    cand, stored, found = lookup(memory, jnp.asarray([4, 2], jnp.int32))
    assert bool(found)
    q = np.zeros(vocab)
    q[np.asarray(cand)] = np.exp(np.asarray(log_probs(stored, sampling)))
    probs = np.asarray(draft.probs)
    np.testing.assert_allclose(probs[:, :3], np.broadcast_to(q, (num, 3, vocab)), atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Siblings are distinct, drawn in order: P(first = a) = q(a), P(second = b | a) = q(b)/(1-q(a)).
    tok = np.asarray(tree.token)
    assert np.all(np.asarray(tree.valid[:, :3]))
    assert np.all((tok[:, 0] != tok[:, 1]) & (tok[:, 1] != tok[:, 2]) & (tok[:, 0] != tok[:, 2]))
    pair = np.bincount(tok[:, 0] * vocab + tok[:, 1], minlength=vocab * vocab)
    exact = np.asarray(
        [q[a] * q[b] / (1 - q[a]) if a != b else 0.0 for a in range(vocab) for b in range(vocab)]
    )
    keep = exact > 0
    assert pair[~keep].sum() == 0
    statistic = np.sum((pair[keep] - num * exact[keep]) ** 2 / (num * exact[keep]))
    assert stats.chi2.sf(statistic, df=keep.sum() - 1) > 1e-4
    # Grandchildren hang below their own parent's context: every sibling row is that q.
    for node in range(3, 9):
        parent = np.asarray(tree.parent[:, node])
        ctx = jnp.stack([jnp.full((num,), 2), jnp.asarray(tok[np.arange(num), parent])], axis=1)
        c, s, _ = lookup(memory, ctx)
        row = np.zeros((num, vocab))
        np.put_along_axis(row, np.asarray(c), np.exp(np.asarray(log_probs(s, sampling))), axis=1)
        np.testing.assert_allclose(probs[:, node], row, atol=1e-6)
    for first in (3, 5, 7):  # sibling pairs below nodes 0, 1, 2
        both = np.asarray(tree.valid[:, first] & tree.valid[:, first + 1])
        assert np.all(tok[both, first] != tok[both, first + 1])


def test_unknown_context_drafts_nothing_and_greedy_takes_top_k():
    vocab = 6
    # Unseeded: the prompt's own n-grams would otherwise be known (tested below).
    drafter = stochastic_ngram(
        vocab, order=2, num_candidates=3, widths=(3, 1), seed_from_prompt=False
    )
    tokens = jnp.asarray([[1, 2, 3]], jnp.int32)
    lengths = jnp.asarray([3], jnp.int32)
    state = drafter.init(tokens, lengths, 8)
    propose = jax.jit(drafter.propose, static_argnames="sampling")
    _, empty = propose(state, jax.random.key(0), tokens, lengths, sampling=Sampling(1.0))
    assert not np.any(empty.tree.valid)
    # Store (2, 3) -> logits and (3,) for the unigram; greedy children are the top-k in order.
    logits = jnp.asarray([[0.0, 5.0, 1.0, 3.0, -2.0, 4.0]])
    memory = write(state, jnp.asarray([[2, 3]], jnp.int32), logits)
    state = state._replace(keys=memory.keys, tokens=memory.tokens, log_probs=memory.log_probs)
    _, greedy = propose(state, jax.random.key(0), tokens, lengths, sampling=Sampling())
    np.testing.assert_array_equal(greedy.tree.token[0, :3], [1, 5, 3])
    # Below 1 -> (3, 1), 5 -> (3, 5): unknown. Below 3 -> (3, 3) backs off to (3,), which the
    # write stored too (every suffix of a context is written): its top token is 1.
    np.testing.assert_array_equal(greedy.tree.valid[0], [True] * 3 + [False, False, True])
    assert int(greedy.tree.token[0, 5]) == 1
    # Under top_k=2 sampling only two children have q > 0: the third is not drafted.
    _, top2 = propose(state, jax.random.key(1), tokens, lengths, sampling=Sampling(1.0, top_k=2))
    np.testing.assert_array_equal(top2.tree.valid[0, :3], [True, True, False])
    assert set(np.asarray(top2.tree.token[0, :2]).tolist()) == {1, 5}


# ---------------------------------------------------------------------------------------
# Generation


def test_greedy_equals_plain_greedy_on_ragged_batches_with_eos(target):
    options = (("order", 3), ("widths", (2, 2, 2)), ("num_candidates", 2))
    prompt, lengths = ragged_prompts(4, 7, seed=2)
    key = jax.random.key(0)
    # The EOS id is a token that greedy decoding first emits in the second half of the
    # budget in most rows, so that rows stop part-way (chosen from a run without EOS,
    # not hard-coded to one random model's outputs).
    free = np.asarray(run(target, prompt, lengths, key, options=None).tokens)
    rows = [free[b, lengths[b] : lengths[b] + MAX_NEW].tolist() for b in range(4)]

    def stops_late(token):
        first = [row.index(token) if token in row else MAX_NEW for row in rows]
        return sum(MAX_NEW // 2 <= i < MAX_NEW - 1 for i in first), min(first)

    eos_id = max(range(CONFIG.vocab_size), key=stops_late)
    plain = run(target, prompt, lengths, key, options=None, eos_id=eos_id)
    assert np.sum(np.asarray(plain.num_generated) < MAX_NEW) >= 2
    # An empty memory in, so that the cold and the warm request share one compilation.
    memory = empty_memory(order=3, table_size=4096, num_candidates=2)
    cold = run(target, prompt, lengths, key, memory, options=options, eos_id=eos_id)
    np.testing.assert_array_equal(cold.lengths, plain.lengths)
    np.testing.assert_array_equal(cold.tokens, plain.tokens)
    assert np.all(cold.stats.accepted <= cold.stats.drafted)
    assert int(cold.stats.accepted.sum()) > 0
    # The memory kept from this request drafts the next one from its first round on.
    warm = run(target, prompt, lengths, key, cold.drafter_state, options=options, eos_id=eos_id)
    np.testing.assert_array_equal(warm.tokens, plain.tokens)
    assert int(warm.stats.drafted.sum()) > int(cold.stats.drafted.sum())


def test_memory_learns_the_target_across_requests_without_retracing(target):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(target, prompt, lengths, key, memory):
        drafter = stochastic_ngram(CONFIG.vocab_size, memory=memory)  # the defaults
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=20,
            drafter=drafter,
            controller=ALWAYS_DRAFT,
        )

    score = jax.jit(lambda model, tokens: jax.nn.log_softmax(model(tokens)[0]))
    memory = empty_memory(2, 4096, 8)
    outputs = []
    for seed in (3, 4, 3):  # the third request repeats the first one with a warm memory
        prompt, lengths = ragged_prompts(1, 9, seed=seed, repetitive=True)
        out = step(target, prompt, lengths, jax.random.key(seed), memory)
        plain = run(target, prompt, lengths, jax.random.key(seed), options=None, max_new=20)
        np.testing.assert_array_equal(out.tokens, plain.tokens)
        outputs.append(out)
        assert int(out.stats.accepted[0]) > 0
        assert int(out.stats.target_calls[0]) < 20
        # The last write after the final context (committed path): the target's distribution.
        length = int(out.lengths[0])
        want_logp, want_tok = jax.lax.top_k(score(target, out.tokens)[0, length - 2], 8)
        tok, logp, found = lookup(out.drafter_state, out.tokens[0, length - 3 : length - 1])
        assert bool(found)
        assert int(tok[0]) == int(out.tokens[0, length - 1]) == int(want_tok[0])
        np.testing.assert_array_equal(tok, want_tok)
        np.testing.assert_allclose(logp, want_logp, atol=1e-4)
        memory = Memory(*out.drafter_state[:3])
    np.testing.assert_array_equal(outputs[2].tokens, outputs[0].tokens)
    assert int(outputs[2].stats.drafted[0]) > int(outputs[0].stats.drafted[0])


def test_sampled_generation_has_the_target_law():
    """Exact law of 3-token continuations vs samples drafted from a random memory (chi-square)."""
    vocab, order, k = 5, 2, 3
    config = models.TransformerConfig(
        vocab_size=vocab, num_layers=1, num_heads=1, d_model=8, max_length=16
    )
    params = jax.jit(lambda key: perturbed(models.init_params(config, key), 0.5, 4))
    target = models.Model(config, params(jax.random.key(3)))
    memory, _, _ = random_memory(vocab, order, k, seed=5)
    sampling = Sampling(temperature=1.0)
    prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
    exact = exact_continuation_law(target, prompt, 3, sampling)
    count = exact.shape[0]
    num = 20000
    out = jax.jit(
        lambda target, memory, prompt, lengths, key: generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=3,
            sampling=sampling,
            drafter=stochastic_ngram(
                vocab, order=order, num_candidates=k, widths=(3, 2), memory=memory
            ),
            controller=ALWAYS_DRAFT,
        )
    )(target, memory, jnp.repeat(prompt, num, 0), jnp.full((num,), 3, jnp.int32), jax.random.key(8))
    # Drafts are tried and some, not all, are accepted (rejections exercise the residuals).
    histogram = np.asarray(out.stats.accept_histogram).sum(0)
    assert histogram[0] > 0 and histogram[1:].sum() > 0
    counts = np.bincount(continuation_codes(out.tokens[:, 3:6], vocab), minlength=count)
    # Continuations expected fewer than 5 times share one bin (the chi-square approximation).
    expected = exact * num
    rare = expected < 5
    assert rare.any()  # (binning below)
    counts = np.append(counts[~rare], counts[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    statistic = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(statistic, df=len(counts) - 1) > 1e-4


# ---------------------------------------------------------------------------------------
# Compilation and errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"order": 0}, "order"),
        ({"num_candidates": 17}, "num_candidates"),
        ({"widths": ()}, "widths"),
        ({"widths": (2, 0)}, "widths"),
        ({"widths": (9,)}, "num_candidates"),
        ({"table_size": 0}, "table_size"),
        ({"template": "2.2.2"}, "template"),
        ({"template": trees.template_from_rank_paths([(1,), (0,)])}, "rank order"),
        ({"memory": empty_memory(3, 4096, 8)}, r"memory\.keys"),
        ({"memory": empty_memory(2, 4096, 4)}, r"memory\.tokens"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"vocab_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        stochastic_ngram(kwargs.pop("vocab_size"), **kwargs)


def test_bad_lookup_contexts_raise():
    with pytest.raises(ValueError, match="contexts"):
        sng_lookup(empty_memory(2, 8, 2), jnp.zeros((3, 3), jnp.int32))
