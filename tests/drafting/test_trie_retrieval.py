"""Trie retrieval (Lookahead multi-branch): lossless greedy and sampling, memory, documents."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import lookahead_jax
from lookahead_jax import models, trees
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.drafting import token_trie
from lookahead_jax.drafting.trie_retrieval import (
    TrieRetrievalState,
    trie_insert_documents,
    trie_memory,
    trie_retrieval,
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
CAPACITY = 1024


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
    """The trie-retrieval generation most tests share (shared memory, EOS)."""
    drafter = trie_retrieval(CONFIG.vocab_size, capacity=CAPACITY, memory=memory)
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
    # Repetition for the trie to retrieve from the prompt.
    return helpers.ragged_prompts(CONFIG.vocab_size, batch, width, seed, min_length=2, period=4)


def empty():
    return trie_memory(CAPACITY)


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


def test_greedy_equals_plain_greedy_on_ragged_batches_with_eos(target):
    prompt, lengths = ragged_prompts(4, seed=1)
    reference = plain(target, prompt, lengths)
    assert np.sum(np.asarray(reference.num_generated) < MAX_NEW) >= 1  # EOS stops a row
    out = spec(target, prompt, lengths, empty())
    np.testing.assert_array_equal(out.lengths, reference.lengths)
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    assert np.all(out.stats.accepted <= out.stats.drafted)
    assert int(out.stats.accepted.sum()) > 0
    assert np.all(out.stats.target_calls <= reference.stats.target_calls)
    check_memory(out.drafter_state.trie)
    assert isinstance(out.drafter_state, TrieRetrievalState)


@pytest.mark.slow
@pytest.mark.parametrize("per_row", [False, True])
def test_greedy_equals_plain_greedy_without_eos(target, per_row):
    prompt, lengths = ragged_prompts(4, seed=3)
    reference = plain(target, prompt, lengths, eos_id=None)
    out = jax.jit(
        lambda t, p, n: generate(
            t, p, n, jax.random.key(0), max_new_tokens=MAX_NEW,
            drafter=trie_retrieval(16, capacity=256, per_row=per_row),
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


def test_memory_carried_across_requests_is_accepted_in_long_runs(target):
    prompt, lengths = ragged_prompts(4, seed=5)
    first = spec(target, prompt, lengths, empty())
    again = spec(target, prompt, lengths, first.drafter_state.trie)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    # The second request retrieves the first one's output: more tokens per call.
    assert int(again.stats.target_calls.sum()) < int(first.stats.target_calls.sum())
    assert int(again.stats.accepted.sum()) > int(first.stats.accepted.sum())
    # Long runs: some round accepts at least 4 drafted tokens at once.
    assert np.asarray(again.stats.accept_histogram)[:, 4:].sum() > 0
    # The prompt branches of request 1 were dropped at request 2's init; outputs stay.
    kept = token_trie.drop_temporary(first.drafter_state.trie)
    assert (
        0
        < int(token_trie.num_live(kept)[0])
        < int(token_trie.num_live(first.drafter_state.trie)[0])
    )
    # The state itself is accepted as `memory=` too.
    trie_retrieval(16, capacity=CAPACITY, memory=first.drafter_state)


def test_documents_inserted_up_front_are_retrieved(target):
    prompt, lengths = ragged_prompts(4, seed=6)
    cold = spec(target, prompt, lengths, empty())
    # Documents holding what the target will write (e.g. retrieved answers).
    memory = jax.jit(trie_insert_documents, static_argnames=("vocab_size",))(
        empty(), cold.tokens, cold.lengths, vocab_size=16
    )
    check_memory(memory)
    warm = spec(target, prompt, lengths, memory)
    np.testing.assert_array_equal(warm.tokens, cold.tokens)
    assert int(warm.stats.target_calls.sum()) < int(cold.stats.target_calls.sum())


@pytest.mark.slow  # 60 rounds; tests/drafting/test_token_trie.py checks eviction directly
def test_memory_stays_within_capacity_over_a_long_stream():
    capacity = 64
    drafter = trie_retrieval(16, capacity=capacity, ways=8, per_row=False)
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(0, 16, (2, 400)), jnp.int32)
    state = jax.jit(drafter.init, static_argnums=2)(text[:, :8], jnp.asarray([8, 5]), 400)
    observe = jax.jit(drafter.observe)
    propose = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))
    lengths = np.asarray([8, 5])
    for step in range(60):
        lengths = lengths + rng.integers(0, 7, 2)
        state = observe(state, text, jnp.asarray(lengths, jnp.int32))
        _, draft = propose(state, jax.random.key(0), text, jnp.asarray(lengths, jnp.int32))
        trees.check_tree(draft.tree)
        if step % 10 == 9:
            check_memory(state.trie)
    assert int(token_trie.num_live(state.trie)[0]) == capacity  # full, and still consistent
    np.testing.assert_array_equal(state.seen, lengths)


def test_drafts_are_the_most_frequent_continuations():
    drafter = trie_retrieval(8, num_nodes=3, branch_length=2, max_query=2, capacity=64)
    init = jax.jit(drafter.init, static_argnums=2)
    propose = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))
    # After "1 2": "3 4" twice, "5" once; the query (1, 2) matches.
    prompt = jnp.asarray([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 5, 0, 1, 2]], jnp.int32)
    state = init(prompt, jnp.asarray([14]), 32)
    _, draft = propose(state, None, prompt, jnp.asarray([14]))
    tree = draft.tree
    np.testing.assert_array_equal(tree.valid[0], [True, True, True])
    np.testing.assert_array_equal(tree.token[0], [3, 4, 5])
    np.testing.assert_array_equal(tree.parent[0], [-1, 0, -1])
    np.testing.assert_array_equal(draft.probs[0].argmax(-1), [3, 4, 5])
    # A text never seen before: an empty tree.
    unseen = jnp.asarray([[7, 6, 5, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]], jnp.int32)
    fresh = init(unseen, jnp.asarray([3]), 32)
    _, nothing = propose(fresh, None, unseen, jnp.asarray([3]))
    assert not np.any(nothing.tree.valid)
    # Once "5 6" follows, the query (5,) retrieves it from the output branches.
    seen = jax.jit(drafter.observe)(fresh, unseen, jnp.asarray([5]))
    _, found = propose(seen, None, unseen.at[0, 5].set(5), jnp.asarray([6]))
    np.testing.assert_array_equal(found.tree.valid[0], [True, True, False])
    np.testing.assert_array_equal(found.tree.token[0, :2], [6, 7])


# Slow tier: the drafts are fixed tokens (one-hot), whose losslessness the verifier's own
# law test proves in the fast tier; this one runs the whole drafter through it.
@pytest.mark.slow
def test_sampled_generation_has_the_target_law():
    """Exact law of 3-token continuations vs samples with trie drafts (chi-square)."""
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=24
    )
    target = models.Model(config, perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4))
    prompt = jnp.asarray([[1, 2, 3, 1, 2, 3, 1]], jnp.int32)
    exact = exact_continuation_law(target, prompt, 3)
    num = 10000
    out = jax.jit(
        lambda t, prompts, lengths, key: generate(
            t,
            prompts,
            lengths,
            key,
            max_new_tokens=3,
            sampling=Sampling(temperature=1.0),
            drafter=trie_retrieval(
                4, num_nodes=6, branch_length=3, max_query=2, capacity=32, per_row=True
            ),
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
        ({"branch_length": 0}, "branch_length"),
        ({"max_query": 0}, "max_query"),
        ({"capacity": 1}, "capacity"),
        ({"capacity": 100}, "capacity"),
        ({"ways": 0}, "ways"),
        ({"per_row": 1}, "per_row"),
        ({"memory": trie_memory(512)}, "capacity"),
        ({"memory": trie_memory(CAPACITY, per_row=True, batch=2)}, "per_row"),
        ({"memory": "trie"}, "memory"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"vocab_size": 16, "capacity": CAPACITY, **kwargs}
    with pytest.raises(ValueError, match=match):
        trie_retrieval(kwargs.pop("vocab_size"), **kwargs)


def test_memory_of_another_vocabulary_or_batch_raises():
    big = trie_insert_documents(
        trie_memory(CAPACITY), jnp.asarray([[30, 31, 2]]), jnp.asarray([3]), vocab_size=40
    )
    with pytest.raises(ValueError, match="memory"):
        trie_retrieval(16, capacity=CAPACITY, memory=big)
    drafter = trie_retrieval(
        16, capacity=CAPACITY, per_row=True, memory=trie_memory(CAPACITY, per_row=True, batch=3)
    )
    with pytest.raises(ValueError, match="memory"):
        drafter.init(jnp.zeros((2, 4), jnp.int32), jnp.full((2,), 4, jnp.int32), 8)


def test_documents_outside_the_vocabulary_raise_eagerly_and_when_checked():
    documents = jnp.asarray([[1, 2, 16, 0]], jnp.int32)
    with pytest.raises(ValueError, match="documents"):
        trie_insert_documents(trie_memory(64), documents, jnp.asarray([3]), vocab_size=16)
    # Past the length the padding is ignored.
    trie_insert_documents(trie_memory(64), documents, jnp.asarray([2]), vocab_size=16)
    insert = lookahead_jax.checked(functools.partial(trie_insert_documents, vocab_size=16))
    with pytest.raises(ValueError, match="documents"):
        insert(trie_memory(64), documents, jnp.asarray([3]))
    with pytest.raises(ValueError, match="lengths"):
        insert(trie_memory(64), documents, jnp.asarray([5]))
    insert(trie_memory(64), documents, jnp.asarray([2]))  # fine


def test_observe_in_one_block_learns_what_blocks_of_64_learn(monkeypatch):
    """``observe`` inserts its windows as one block (``token_trie.OBSERVE_BLOCK``); in equal
    blocks of at most 64 the memory learns the same paths and counts (it never fills)."""
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 5, (4, 40)), jnp.int32)
    prompt_lengths = jnp.asarray([6, 9, 12, 8], jnp.int32)
    drafter = trie_retrieval(16, capacity=1024)  # windows of 12 tokens, observe_tokens 10
    state = jax.jit(drafter.init, static_argnums=2)(tokens[:, :12], prompt_lengths, 64)
    lengths = prompt_lengths + jnp.asarray([9, 4, 9, 1], jnp.int32)
    windows = 4 * (12 - 1 + drafter.observe_tokens)  # 84: two blocks of 42, or one
    assert 64 < windows <= token_trie.OBSERVE_BLOCK
    learnt = []
    for block in (64, token_trie.OBSERVE_BLOCK):
        monkeypatch.setattr(token_trie, "OBSERVE_BLOCK", block)
        learnt.append(jax.jit(lambda s, t, n: drafter.observe(s, t, n))(state, tokens, lengths))
    blocks_of_64, one_block = learnt
    # The memory's clock ticks once per block: two blocks against one.
    clock = int(state.trie.clock[0])
    assert int(blocks_of_64.trie.clock[0]) == clock + 2
    assert int(one_block.trie.clock[0]) == clock + 1
    np.testing.assert_array_equal(one_block.seen, lengths)
    np.testing.assert_array_equal(blocks_of_64.seen, one_block.seen)
    assert helpers.trie_paths(one_block.trie, 0) == helpers.trie_paths(blocks_of_64.trie, 0)
    assert len(helpers.trie_paths(one_block.trie, 0)) > len(helpers.trie_paths(state.trie, 0))
