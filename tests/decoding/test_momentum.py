"""Momentum decoding: alpha = 0 is greedy; each choice is argmax of p - alpha R(L)."""

import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lookahead_jax import decoding
from lookahead_jax.decoding.momentum import repeat_lengths
from tests.decoding.strategy_models import (
    GREEDY_EOS,
    GREEDY_NEW,
    TINY,
    assert_prompt_value_checks,
    assert_step_loop_equals_run,
    contract_model,
    greedy_reference,
    next_logits,
    ragged_prompts,
    tiny_transformer,
)

MAX_NEW = GREEDY_NEW
EOS = GREEDY_EOS


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(seed=1, sharpness=2.0)


@functools.partial(jax.jit, static_argnames=("alpha", "top_k", "eos_id"))
@chex.assert_max_traces(n=5)  # 3 (alpha, eos) settings on the transformer, 2 on a table model
def run(model, prompt, lengths, alpha, top_k=4, eos_id=EOS):
    return decoding.momentum_decoding(
        model, prompt, lengths, max_new_tokens=MAX_NEW, alpha=alpha, top_k=top_k, eos_id=eos_id
    )


def brute_repeat_length(sequence, candidate, max_ngram):
    """The longest n <= max_ngram such that sequence[-(n-1):] + [candidate] occurs in sequence."""
    best = 0
    for n in range(1, max_ngram + 1):
        if n - 1 > len(sequence):
            break
        pattern = ([*sequence[len(sequence) - (n - 1) :], candidate]) if n > 1 else [candidate]
        found = any(sequence[j : j + n] == pattern for j in range(0, len(sequence) - n + 1))
        if found:
            best = n
    return best


def test_alpha_zero_equals_greedy(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 4, 6, seed=0)
    out = run(model, prompt, lengths, 0.0)
    ref = greedy_reference(model, prompt, lengths)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(out.changed, 0)
    np.testing.assert_array_equal(out.compute.model_calls, ref.stats.target_calls)


@settings(max_examples=60, deadline=None)
@given(
    sequence=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    candidates=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    max_ngram=st.integers(1, 5),
)
def test_repeat_lengths_match_brute_force(sequence, candidates, max_ngram):
    width = 12
    tokens = np.zeros((1, width), np.int32)
    tokens[0, : len(sequence)] = sequence
    got = repeat_lengths(
        jnp.asarray(tokens), jnp.asarray([len(sequence)]), jnp.asarray([candidates]), max_ngram
    )
    expected = [brute_repeat_length(sequence, c, max_ngram) for c in candidates]
    assert np.asarray(got)[0].tolist() == expected


@pytest.mark.parametrize("eos_id", [EOS, None])
def test_each_choice_is_the_resistance_argmax(model, eos_id):
    alpha, top_k = 0.2, 4
    prompt, lengths = ragged_prompts(TINY.vocab_size, 3, 6, seed=2)
    out = run(model, prompt, lengths, alpha, top_k, eos_id)
    changed = 0
    for b in range(3):
        sequence = np.asarray(prompt[b, : lengths[b]]).tolist()
        for i in range(int(out.num_generated[b])):
            logits = next_logits(model, sequence)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top = np.argsort(-probs, kind="stable")[:top_k]
            reps = [brute_repeat_length(sequence, int(v), 5) for v in top]
            score = probs[top] - alpha * np.asarray(reps, np.float64)
            pick = int(np.argmax(score))
            token = int(out.tokens[b, len(sequence)])
            assert token == int(top[pick]), (b, i)
            assert int(out.repeat_lengths[b, i]) == reps[pick]
            changed += pick != 0
            sequence.append(token)
            if token == eos_id:
                break
        assert len(sequence) == int(out.lengths[b])
    assert changed == int(np.sum(out.changed))
    assert changed > 0, "momentum should change some greedy choice on this model"


def test_momentum_breaks_a_greedy_loop():
    """A bigram model whose greedy path is a 3-cycle: the resistance leaves the loop."""
    from tests.decoding.strategy_models import TableModel

    vocab = 8
    table = np.full((vocab, vocab), -2.0)
    for a in range(vocab):
        table[a, (a + 1) % 3] = 1.0  # greedy: 0 -> 1 -> 2 -> 0 ...
        table[a, 3 + a % 5] = 0.5  # a runner-up outside the loop
    model = TableModel.create(table, np.zeros((40, vocab)))
    prompt, lengths = jnp.asarray([[0, 1, 2, 0]], jnp.int32), jnp.asarray([4], jnp.int32)
    greedy = run(model, prompt, lengths, 0.0, 4, None)
    momentum = run(model, prompt, lengths, 0.2, 4, None)
    loop = set(np.asarray(greedy.tokens[0, 4:]).tolist())
    assert loop == {0, 1, 2}
    assert set(np.asarray(momentum.tokens[0, 4:]).tolist()) - {0, 1, 2}


def test_errors(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    for kwargs, name in [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 17}, "top_k"),
        ({"max_ngram": 0}, "max_ngram"),
        ({"eos_id": 16}, "eos_id"),
    ]:
        with pytest.raises(ValueError, match=name):
            decoding.momentum_decoding(model, prompt, lengths, max_new_tokens=4, **kwargs)


CONFIG = decoding.MomentumConfig(alpha=0.2, top_k=4, max_new_tokens=MAX_NEW, eos_id=EOS)


def test_step_loop_equals_run_and_infos():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 3, 5, seed=1)
    infos, out = assert_step_loop_equals_run(
        decoding.momentum_init,
        decoding.momentum_step,
        decoding.momentum_result,
        decoding.momentum_run,
        lambda s: not np.all(s.finished),
        jax.random.key(0),
        contract_model(),
        prompt,
        lengths,
        CONFIG,
    )
    changed = sum(np.asarray(i.active & (i.token != i.greedy), np.int32) for i in infos)
    np.testing.assert_array_equal(changed, out.changed)
    assert int(np.sum(out.changed)) > 0  # the resistance changed some choices


def test_prompt_value_checks_eager_and_checked():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    assert_prompt_value_checks(decoding.momentum_init, contract_model(), prompt, lengths, CONFIG)
