"""SuffixDecoding: lossless greedy and sampling, adaptive trees, the global memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import models, trees
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.drafting import token_trie
from lookahead_jax.drafting.suffix_decoding import (
    SuffixDecodingState,
    suffix_decoding,
    suffix_memory,
)
from lookahead_jax.sampling import Sampling
from tests import helpers
from tests.helpers import continuation_codes, exact_continuation_law, perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=3, num_heads=2, d_model=16, max_length=48
)
MAX_NEW = 24
EOS = 14  # a token the random model emits part-way in some rows (checked below)
CAPACITY = 512


@pytest.fixture(scope="module")
def target():
    params = jax.jit(lambda key: perturbed(models.init_params(CONFIG, key), 0.3, 1))
    return models.Model(CONFIG, params(jax.random.key(0)))


@functools.partial(jax.jit, static_argnames=("eos_id",))
def plain(target, prompt, lengths, eos_id=EOS):
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW, eos_id=eos_id
    )


def _spec(target, prompt, lengths, memory):
    """The suffix-decoding generation most tests share (EOS, a given global memory)."""
    drafter = suffix_decoding(CONFIG.vocab_size, capacity=CAPACITY, memory=memory)
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=MAX_NEW,
        drafter=drafter,
        controller=ALWAYS_DRAFT,
        eos_id=EOS,
    )


# One compilation shared by the tests below (same shapes: batch 4, width 12).
spec = jax.jit(chex.assert_max_traces(_spec, n=1))


def ragged_prompts(batch, seed, width=12):
    return helpers.ragged_prompts(CONFIG.vocab_size, batch, width, seed, min_length=2, period=4)


def empty():
    return suffix_memory(CAPACITY)


def check_memory(trie):
    """The trie's structure is consistent and within capacity."""
    token, parent = np.asarray(trie.token), np.asarray(trie.parent)
    count = np.asarray(trie.count)
    for m in range(token.shape[0]):
        live = token[m] >= 0
        assert np.all(count[m][live] > 0)
        p = parent[m][live]
        assert np.all((p == 0) | live[p])
        assert np.all(count[m][live] <= np.where(p == 0, np.iinfo(np.int32).max, count[m][p]))
        assert live.sum() + 1 <= token.shape[1]


# Suffix decoding's generation program is the trie drafters' largest (its two tries' proposal
# and insertion: ~750 fused kernels, 7-8 s to compile; `experiments/compile_cost.py`), so
# the tests that run it are slow-tier; the fast tier keeps its memory and tree-building
# tests here, and runs the same trie machinery and tree verification through trie
# retrieval's generation (tests/drafting/test_trie_retrieval.py).
@pytest.mark.slow
def test_greedy_equals_plain_greedy_on_ragged_batches_with_eos(target):
    prompt, lengths = ragged_prompts(4, seed=1)
    reference = plain(target, prompt, lengths)
    assert np.sum(np.asarray(reference.num_generated) < MAX_NEW) >= 1  # EOS stops a row
    out = spec(target, prompt, lengths, empty())
    np.testing.assert_array_equal(out.lengths, reference.lengths)
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    assert np.all(out.stats.accepted <= out.stats.drafted)
    assert int(out.stats.accepted.sum()) > 0
    state = out.drafter_state
    assert isinstance(state, SuffixDecodingState)
    check_memory(state.request)
    check_memory(state.memory)
    # The global trie holds the outputs (the most recent ones at least: it evicts LRU),
    # not the prompts.
    b = int(np.argmax(out.num_generated))
    end = int(out.lengths[b])
    row = np.asarray(out.tokens[b, end - 4 : end])
    _, found = token_trie.walk(state.memory, jnp.zeros(1, jnp.int32), row[None], jnp.asarray([4]))
    assert bool(found[0])
    head = np.asarray(prompt[0, :4])[None]
    assert bool(token_trie.walk(state.request, jnp.zeros(1, jnp.int32), head, jnp.asarray([4]))[1])
    assert not bool(
        token_trie.walk(state.memory, jnp.zeros(1, jnp.int32), head, jnp.asarray([4]))[1]
    )


@pytest.mark.slow
def test_greedy_equals_plain_greedy_without_eos(target):
    prompt, lengths = ragged_prompts(4, seed=3)
    reference = plain(target, prompt, lengths, eos_id=None)
    out = jax.jit(
        lambda t, p, n: generate(
            t, p, n, jax.random.key(0), max_new_tokens=MAX_NEW,
            drafter=suffix_decoding(16, capacity=256),
            controller=ALWAYS_DRAFT,
        )
    )(target, prompt, lengths)  # fmt: skip
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    assert int(out.stats.accepted.sum()) > 0


@pytest.mark.slow  # the fast tier checks greedy equality on the whole ragged batch
def test_each_row_equals_the_row_alone(target):
    prompt, lengths = ragged_prompts(4, seed=4)
    batch = spec(target, prompt, lengths, empty())
    alone = jax.jit(jax.vmap(_spec, in_axes=(None, 0, 0, None)))  # batch-1 generations
    rows = alone(target, prompt[:, None], lengths[:, None], empty())
    np.testing.assert_array_equal(rows.tokens[:, 0], batch.tokens)
    np.testing.assert_array_equal(rows.lengths[:, 0], batch.lengths)


@pytest.mark.slow
def test_global_memory_carried_across_requests_is_accepted_in_long_runs(target):
    prompt, lengths = ragged_prompts(4, seed=5)
    first = spec(target, prompt, lengths, empty())
    again = spec(target, prompt, lengths, first.drafter_state.memory)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert int(again.stats.target_calls.sum()) < int(first.stats.target_calls.sum())
    assert int(again.stats.accepted.sum()) > int(first.stats.accepted.sum())
    assert np.asarray(again.stats.accept_histogram)[:, 4:].sum() > 0
    suffix_decoding(16, capacity=CAPACITY, memory=first.drafter_state)  # the state works too


@pytest.mark.slow  # 60 rounds; tests/drafting/test_token_trie.py checks eviction directly
def test_memory_stays_within_capacity_over_a_long_stream():
    capacity = 64
    drafter = suffix_decoding(16, capacity=capacity, ways=8, max_depth=4, spec_depth=3)
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(0, 6, (2, 400)), jnp.int32)
    state = jax.jit(drafter.init, static_argnums=2)(text[:, :8], jnp.asarray([8, 5]), 400)
    observe = jax.jit(drafter.observe)
    propose = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))
    lengths = np.asarray([8, 5])
    for step in range(60):
        lengths = lengths + rng.integers(0, 5, 2)
        state = observe(state, text, jnp.asarray(lengths, jnp.int32))
        _, draft = propose(state, jax.random.key(0), text, jnp.asarray(lengths, jnp.int32))
        trees.check_tree(draft.tree)
        assert int(draft.tree.depth.max()) <= 3
        if step % 10 == 9:
            check_memory(state.request)
            check_memory(state.memory)
    assert int(token_trie.num_live(state.memory)[0]) == capacity
    assert np.all(np.asarray(token_trie.num_live(state.request)) == capacity)


def test_tree_size_adapts_to_the_match_and_respects_the_probability_floor():
    drafter = suffix_decoding(
        8, num_nodes=6, max_depth=4, spec_depth=3, max_spec_factor=2.0, min_token_prob=0.3,
        capacity=64,
    )  # fmt: skip
    init = jax.jit(drafter.init, static_argnums=2)
    propose = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))

    def draft(text):
        prompt = jnp.asarray([text + [0] * (16 - len(text))], jnp.int32)
        state = init(prompt, jnp.asarray([len(text)]), 32)
        _, out = propose(state, None, prompt, jnp.asarray([len(text)]))
        trees.check_tree(out.tree)
        valid = np.asarray(out.tree.valid[0])
        return np.asarray(out.tree.token[0])[valid].tolist()

    # Match "1 2" (2 tokens: <= 4 nodes): "3" follows 3 times, "5" once (1/4 < 0.3).
    assert draft([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 5, 1, 2]) == [3, 1, 2]
    # Match "2" only (1 token: <= 2 nodes).
    assert draft([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 5, 0, 2]) == [3, 1]
    # Match "1 2 3" (3 tokens): "1 2 3" below it 2 of 3 times, "1 2 5" 1 of 3 (>= 0.3).
    assert draft([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 5, 0, 1, 2, 3]) == [1, 2, 3, 5]


# Slow tier: the drafts are fixed tokens (one-hot), whose losslessness the verifier's own
# law test proves in the fast tier; this one runs the whole drafter through it.
@pytest.mark.slow
def test_sampled_generation_has_the_target_law():
    """Exact law of 3-token continuations vs samples with suffix drafts (chi-square)."""
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=24
    )
    target = models.Model(config, perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4))
    prompt = jnp.asarray([[1, 2, 3, 1, 2, 3, 1]], jnp.int32)
    exact = exact_continuation_law(target, prompt, 3)
    num = 10000
    drafter = functools.partial(
        suffix_decoding, 4, num_nodes=6, max_depth=3, spec_depth=3, capacity=32,
        min_token_prob=0.0,
    )  # fmt: skip
    out = jax.jit(
        lambda t, prompts, lengths, key: generate(
            t,
            prompts,
            lengths,
            key,
            max_new_tokens=3,
            sampling=Sampling(temperature=1.0),
            drafter=drafter(),
            controller=ALWAYS_DRAFT,
        )
    )(target, jnp.repeat(prompt, num, 0), jnp.full((num,), 7, jnp.int32), jax.random.key(8))
    assert 0 < int(out.stats.accepted.sum()) < int(out.stats.drafted.sum())
    counts = np.bincount(continuation_codes(out.tokens[:, 7:10], 4), minlength=64)
    expected = exact * num
    rare = expected < 5
    counts = np.append(counts[~rare], counts[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    statistic = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(statistic, df=len(counts) - 1) > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_nodes": 0}, "num_nodes"),
        ({"max_depth": 0}, "max_depth"),
        ({"spec_depth": 0}, "spec_depth"),
        ({"spec_depth": 64}, "spec_depth"),
        ({"max_spec_factor": 0.0}, "max_spec_factor"),
        ({"max_spec_factor": float("inf")}, "max_spec_factor"),
        ({"min_token_prob": 1.5}, "min_token_prob"),
        ({"capacity": 100}, "capacity"),
        ({"ways": 0}, "ways"),
        ({"memory": suffix_memory(256)}, "capacity"),
        ({"memory": token_trie.empty_trie(2, CAPACITY)}, "memory"),
        ({"memory": "trie"}, "memory"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"vocab_size": 16, "capacity": CAPACITY, **kwargs}
    with pytest.raises(ValueError, match=match):
        suffix_decoding(kwargs.pop("vocab_size"), **kwargs)


def test_memory_of_another_vocabulary_raises_eagerly_and_when_checked():
    memory = suffix_memory(CAPACITY)
    memory = memory._replace(token=memory.token.at[0, 5].set(20))
    with pytest.raises(ValueError, match="memory"):
        suffix_decoding(16, capacity=CAPACITY, memory=memory)
    import lookahead_jax

    build = lookahead_jax.checked(
        lambda memory: suffix_decoding(16, capacity=CAPACITY, memory=memory).init(
            jnp.zeros((1, 4), jnp.int32), jnp.full((1,), 4, jnp.int32), 8
        )
    )
    with pytest.raises(ValueError, match="memory"):
        build(memory)


@functools.partial(jax.jit, static_argnames=("batched",))
def never_drafting(target, prompt, lengths, batched):
    # One block size, all 32 nodes (the default has four): one scoring branch to compile, and
    # what the memories learn does not depend on how rounds are scored.
    drafter = suffix_decoding(
        CONFIG.vocab_size, capacity=CAPACITY, memory=empty(), block_sizes=(32,)
    )
    if not batched:
        drafter = drafter._replace(observe_tokens=None)
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=MAX_NEW,
        drafter=drafter,
        controller=_always_draft(0),
        eos_id=EOS,
    )


# Two suffix-decoding programs compiled for this test alone (~25 s of the fast tier): the
# fast tier runs suffix decoding with its batched observe on in every other test here.
@pytest.mark.slow
def test_batched_observe_learns_every_committed_token(target):
    """Rounds that draft nothing leave tokens for the next observe call (an insertion costs
    about the same for 1 token as for observe_tokens): at the end the memories hold exactly
    what observing after every round gives (paths and counts; capacity never binds)."""
    prompt, lengths = ragged_prompts(3, seed=8)
    batched = never_drafting(target, prompt, lengths, True)
    every_round = never_drafting(target, prompt, lengths, False)
    np.testing.assert_array_equal(batched.tokens, every_round.tokens)
    np.testing.assert_array_equal(batched.drafter_state.seen, batched.lengths)
    for field in ("request", "memory"):
        tries = [getattr(out.drafter_state, field) for out in (batched, every_round)]
        for memory in range(tries[0].token.shape[0]):
            assert helpers.trie_paths(tries[0], memory) == helpers.trie_paths(tries[1], memory)
    assert len(helpers.trie_paths(batched.drafter_state.memory, 0)) > MAX_NEW  # outputs were learnt


@pytest.mark.slow
def test_a_corrupt_memory_cannot_change_greedy_output(target):
    """A carried memory whose counts grow down the tree (a corrupted or hand-made checkpoint)
    drafts differently, never emits differently."""
    prompt, lengths = ragged_prompts(4, seed=5)
    first = spec(target, prompt, lengths, empty())
    memory = first.drafter_state.memory
    rng = np.random.default_rng(0)
    live = np.asarray(memory.token) >= 0
    count = np.where(live, rng.integers(1, 40, memory.count.shape), 0).astype(np.int32)
    corrupt = memory._replace(count=jnp.asarray(count))
    again = spec(target, prompt, lengths, corrupt)
    np.testing.assert_array_equal(again.lengths, first.lengths)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert int(again.stats.accepted.sum()) > 0
