"""CNTP: plain sampling below H_lo, minimum-perplexity segments that end at their first stop."""

import dataclasses
import functools

import chex
import jax
import numpy as np
import pytest

from lookahead_jax import decoding
from lookahead_jax.sampling import Sampling
from tests.decoding.strategy_models import (
    GREEDY_BATCH,
    GREEDY_EOS,
    GREEDY_NEW,
    GREEDY_WIDTH,
    TINY,
    assert_prompt_value_checks,
    contract_model,
    log_softmax,
    next_logits,
    ragged_prompts,
    sampling_reference,
    sequence_logits,
    tiny_transformer,
)

MAX_NEW = GREEDY_NEW
EOS = GREEDY_EOS
STOPS = (2, 7)
SAMPLING = Sampling(temperature=1.0)
# H_lo above every entropy of a 16-token vocabulary (log 16 = 2.77): always one trial.
NEVER = decoding.CNTPConfig(entropy_low=3.0, entropy_high=4.0, max_trials=4, stop_tokens=STOPS)
# Every step with H > 1e-6 runs N_max trials.
ALWAYS = decoding.CNTPConfig(
    entropy_low=0.0, entropy_high=1e-6, max_trials=4, max_segment_tokens=5, stop_tokens=STOPS
)


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(seed=2, sharpness=2.0)


def config(params):
    return dataclasses.replace(params, max_new_tokens=MAX_NEW, sampling=SAMPLING, eos_id=EOS)


@functools.partial(jax.jit, static_argnames=("params",))
@chex.assert_max_traces(n=2)  # NEVER and ALWAYS
def run(model, prompt, lengths, key, params):
    return decoding.cntp_run(key, model, prompt, lengths, config(params))


@jax.jit
def init(model, prompt, lengths):
    return decoding.cntp_init(model, prompt, lengths, config(ALWAYS))


@jax.jit
@chex.assert_max_traces(n=1)
def step(key, state, model):
    return decoding.cntp_step(key, state, model, config(ALWAYS))


@pytest.mark.parametrize("seed", [0, 1])
def test_below_low_entropy_bound_equals_plain_sampling(model, seed):
    prompt, lengths = ragged_prompts(TINY.vocab_size, GREEDY_BATCH, GREEDY_WIDTH, seed=seed)
    key = jax.random.key(seed)
    out = run(model, prompt, lengths, key, NEVER)
    plain = sampling_reference(model, prompt, lengths, key)  # rollout 0: plain sampling
    np.testing.assert_array_equal(out.tokens, plain.tokens[:, 0])
    np.testing.assert_array_equal(out.num_generated, plain.num_generated[:, 0])
    np.testing.assert_array_equal(out.multi_trial_steps, 0)
    np.testing.assert_array_equal(out.steps, out.num_generated)
    np.testing.assert_allclose(out.token_log_probs, plain.token_log_probs[:, 0], rtol=1e-6)
    # One call per token (prefill included); the last token is never fed.
    np.testing.assert_array_equal(out.compute.model_calls, out.num_generated)
    np.testing.assert_array_equal(out.compute.tokens_evaluated, lengths + out.num_generated - 1)


def test_trials_commit_min_perplexity_segment_ending_at_first_stop(model):
    """Also the contract: this Python loop of ``cntp_step`` equals ``cntp_run``."""
    batch = 4
    prompt, lengths = ragged_prompts(TINY.vocab_size, batch, 6, seed=4)
    key = jax.random.key(3)
    state = init(model, prompt, lengths)
    sequences = [np.asarray(prompt[b, : lengths[b]]).tolist() for b in range(batch)]
    checked_segments = 0
    while not bool(np.all(state.finished)):
        before = state
        state, info = step(key, state, model)
        for b in range(batch):
            if bool(before.finished[b]):
                assert int(info.num_trials[b]) == 0
                continue
            n = int(info.num_trials[b])
            assert n == ALWAYS.max_trials
            remaining = MAX_NEW - int(before.num_generated[b])
            cap = min(ALWAYS.max_segment_tokens, remaining)
            ppl = []
            for j in range(n):
                length = int(info.trial_lengths[b, j])
                trial = np.asarray(info.trial_tokens[b, j, :length]).tolist()
                stops = [i for i, t in enumerate(trial) if t in (*STOPS, EOS)]
                # A segment ends at its first stop token, or at the cap without one.
                assert stops == [length - 1] or (not stops and length == cap), (trial, cap)
                # Its perplexity, scored independently by a full forward pass.
                logits = sequence_logits(model, sequences[b] + trial)
                lp = log_softmax(logits[len(sequences[b]) - 1 : -1])
                nll = -np.mean(lp[np.arange(length), trial])
                np.testing.assert_allclose(
                    float(info.trial_perplexity[b, j]), np.exp(nll), rtol=1e-4
                )
                ppl.append(np.exp(nll))
            chosen = int(info.chosen[b])
            assert float(info.trial_perplexity[b, chosen]) == float(
                np.min(np.asarray(info.trial_perplexity[b, :n]))
            )
            assert np.all(np.isinf(np.asarray(info.trial_perplexity[b, n:])))
            segment = np.asarray(info.trial_tokens[b, chosen, : info.trial_lengths[b, chosen]])
            start = int(before.num_generated[b])
            committed = np.asarray(state.generated[b, start : start + len(segment)])
            np.testing.assert_array_equal(committed, segment)
            sequences[b] += segment.tolist()
            checked_segments += 1
            # The committed cache continues from the chosen trial: its next-token logits.
            if not bool(state.finished[b]):
                np.testing.assert_allclose(
                    np.asarray(state.next_logits[b]),
                    next_logits(model, sequences[b]),
                    rtol=1e-4,
                    atol=1e-4,
                )
    assert checked_segments >= batch
    for b in range(batch):
        assert len(sequences[b]) == int(lengths[b]) + int(state.num_generated[b])
    expected = run(model, prompt, lengths, key, ALWAYS)
    chex.assert_trees_all_close(
        decoding.cntp_result(state, config(ALWAYS)), expected, rtol=1e-5, atol=1e-6
    )


def test_prompt_value_checks_eager_and_checked():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    assert_prompt_value_checks(decoding.cntp_init, contract_model(), prompt, lengths, config(NEVER))


def test_step_info_and_config():
    assert decoding.CNTPParams is decoding.CNTPConfig
    assert decoding.CNTPStepInfo is decoding.CNTPInfo
    assert hash(config(ALWAYS)) == hash(config(ALWAYS))


def test_full_run_counts_and_ragged_rows(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 4, 6, seed=5)
    out = run(model, prompt, lengths, jax.random.key(1), ALWAYS)
    for b in range(4):
        n = int(out.num_generated[b])
        row = np.asarray(out.tokens[b])
        np.testing.assert_array_equal(row[: lengths[b]], np.asarray(prompt[b, : lengths[b]]))
        np.testing.assert_array_equal(row[lengths[b] + n :], 0)
        generated = row[lengths[b] : lengths[b] + n].tolist()
        assert EOS not in generated[:-1]
        assert n == MAX_NEW or generated[-1] == EOS
    assert np.all(np.asarray(out.multi_trial_steps) == np.asarray(out.steps))
    # Trials cost more tokens than the committed ones.
    assert np.all(
        np.asarray(out.compute.tokens_evaluated) > np.asarray(lengths + out.num_generated)
    )


def test_errors(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    key = jax.random.key(0)
    bad = [
        (decoding.CNTPConfig(entropy_low=1.0, entropy_high=1.0), "entropy_high"),
        (decoding.CNTPConfig(entropy_low=-1.0), "entropy_low"),
        (decoding.CNTPConfig(max_trials=0), "max_trials"),
        (decoding.CNTPConfig(max_segment_tokens=0), "max_segment_tokens"),
        (decoding.CNTPConfig(), "stop_tokens"),  # byte punctuation is outside a 16-token vocab
    ]
    for params, name in bad:
        with pytest.raises(ValueError, match=name):
            decoding.cntp(model, prompt, lengths, key, max_new_tokens=4, params=params)
    with pytest.raises(ValueError, match="sampling"):
        decoding.cntp(
            model, prompt, lengths, key, max_new_tokens=4, params=NEVER, sampling=Sampling()
        )
