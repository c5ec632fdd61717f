"""SuffixDecoding: lossless greedy and sampling, adaptive trees, the global memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import drafting, models, trees
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.drafting import token_trie
from lookahead_jax.drafting.suffix_decoding import (
    SuffixDecodingState,
    SuffixMemory,
    remember_outputs,
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


def stored_outputs(memory: SuffixMemory) -> list[list[int]]:
    """The memory's outputs, oldest first (each a run of one source id)."""
    tokens, source = np.asarray(memory.tokens), np.asarray(memory.source)
    start = int(memory.next)
    ring = np.roll(np.arange(memory.capacity), -start)  # oldest slot first
    runs = {}
    for slot in ring:
        if source[slot] >= 0:
            runs.setdefault(int(source[slot]), []).append(int(tokens[slot]))
    return [runs[k] for k in sorted(runs)]


# The tests that run suffix decoding's generation (~4 s to compile each) are slow-tier; the
# fast tier keeps its memory and tree-building tests here and in test_suffix_match.py, and
# runs tree verification through trie retrieval's generation
# (tests/drafting/test_trie_retrieval.py).
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
    # The state kept the committed tokens; memory_of appends the outputs (not the prompts),
    # one run per row, and leaves the memory the request started from as it was.
    np.testing.assert_array_equal(state.lengths, out.lengths)
    assert int(jnp.max(state.memory.source)) == -1
    memory = drafting.memory_of(state)
    outputs = [
        np.asarray(out.tokens[b, int(lengths[b]) : int(out.lengths[b])]).tolist() for b in range(4)
    ]
    assert stored_outputs(memory) == outputs
    assert int(memory.num_outputs) == 4


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
    again = spec(target, prompt, lengths, drafting.memory_of(first.drafter_state))
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert int(again.stats.target_calls.sum()) < int(first.stats.target_calls.sum())
    assert int(again.stats.accepted.sum()) > int(first.stats.accepted.sum())
    assert np.asarray(again.stats.accept_histogram)[:, 4:].sum() > 0
    suffix_decoding(16, capacity=CAPACITY, memory=first.drafter_state)  # the state works too


def test_memory_keeps_the_newest_outputs_within_capacity_over_a_long_stream():
    capacity = 64
    rng = np.random.default_rng(0)
    remember = jax.jit(remember_outputs)
    memory, stream = suffix_memory(capacity), []
    for _ in range(12):
        tokens = jnp.asarray(rng.integers(0, 6, (3, 20)), jnp.int32)
        prompt_lengths = rng.integers(0, 8, 3)
        lengths = prompt_lengths + rng.integers(0, 13, 3)
        memory = remember(memory, tokens, jnp.asarray(lengths), jnp.asarray(prompt_lengths))
        stream += [np.asarray(tokens[b, prompt_lengths[b] : lengths[b]]).tolist() for b in range(3)]
    kept = stored_outputs(memory)
    flat = [t for run in stream for t in run]
    assert sum(len(run) for run in kept) == min(capacity, len(flat))
    assert [t for run in kept for t in run] == flat[-capacity:]  # the newest tokens, in order
    assert kept[-1] == stream[-1] or not stream[-1]
    assert int(memory.num_outputs) == 36
    drafter = suffix_decoding(16, capacity=capacity, max_depth=4, spec_depth=3, memory=memory)
    text = jnp.asarray(rng.integers(0, 6, (2, 30)), jnp.int32)
    state = drafter.init(text, jnp.asarray([30, 12]), 30)
    propose = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))
    _, draft = propose(state, None, text, jnp.asarray([30, 12]))
    trees.check_tree(draft.tree)
    assert bool(draft.tree.valid.any()) and int(draft.tree.depth.max()) <= 3


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
        ({"capacity": 1}, "capacity"),
        ({"num_occurrences": 0}, "num_occurrences"),
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
    memory = memory._replace(tokens=memory.tokens.at[5].set(20))
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


@pytest.mark.slow
def test_any_memory_cannot_change_greedy_output(target):
    """A carried memory of arbitrary tokens and source ids (a corrupted or hand-made
    checkpoint) drafts differently, never emits differently."""
    prompt, lengths = ragged_prompts(4, seed=5)
    first = spec(target, prompt, lengths, empty())
    rng = np.random.default_rng(0)
    memory = SuffixMemory(
        tokens=jnp.asarray(rng.integers(0, CONFIG.vocab_size, CAPACITY), jnp.int32),
        source=jnp.asarray(rng.integers(-1, 3, CAPACITY), jnp.int32),
        next=jnp.asarray(7, jnp.int32),
        num_outputs=jnp.asarray(3, jnp.int32),
    )
    again = spec(target, prompt, lengths, memory)
    np.testing.assert_array_equal(again.lengths, first.lengths)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert int(again.stats.accepted.sum()) > 0
