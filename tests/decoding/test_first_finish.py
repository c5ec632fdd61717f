"""Plain lockstep rollouts and First-Finish search."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import decoding
from lookahead_jax.sampling import Sampling, log_probs
from tests.decoding.strategy_models import (
    GREEDY_BATCH,
    GREEDY_EOS,
    GREEDY_NEW,
    GREEDY_WIDTH,
    TINY,
    assert_prompt_value_checks,
    assert_step_loop_equals_run,
    contract_model,
    greedy_reference,
    next_logits,
    ragged_prompts,
    sampling_reference,
    tiny_transformer,
)

MAX_NEW = GREEDY_NEW
EOS = GREEDY_EOS
SAMPLING = Sampling(temperature=1.0)


@pytest.fixture(scope="module")
def model():
    # Sharper logits and a likely EOS so that traces end at different lengths.
    m = tiny_transformer(seed=3, sharpness=3.0)
    wte = m.params["wte"]
    return type(m)(m.config, dict(m.params, wte=wte.at[EOS].multiply(1.5)))


@jax.jit
def run_greedy(model, prompt, lengths):
    return decoding.sample_rollouts(
        model,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=MAX_NEW,
        sampling=Sampling(),
        eos_id=EOS,
    )


@functools.partial(jax.jit, static_argnames=("num",))
@chex.assert_max_traces(n=1)
def run_ffs(model, prompt, lengths, key, num):
    return decoding.first_finish(
        model, prompt, lengths, key, max_new_tokens=MAX_NEW, num_samples=num, eos_id=EOS
    )


def naive_sample(model, prompt_row, row, lane, key, batch, max_new, eos_id):
    """Full forward pass per token; the documented key of (row, lane, token index)."""
    row_key = jax.random.split(key, batch)[row]
    lane_key = jax.random.fold_in(row_key, lane)
    sequence, total = list(prompt_row), 0.0
    for i in range(max_new):
        lp = log_probs(jnp.asarray(next_logits(model, sequence)), SAMPLING)
        token = int(jax.random.categorical(jax.random.fold_in(lane_key, i), lp))
        total += float(lp[token])
        sequence.append(token)
        if token == eos_id:
            break
    return sequence, total


def test_rollouts_equal_naive_sampling_on_ragged_batch(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, GREEDY_BATCH, GREEDY_WIDTH, seed=0)
    key = jax.random.key(7)
    out = sampling_reference(model, prompt, lengths, key)
    for b in range(3):
        for j in (0, 3):
            expected, total = naive_sample(
                model, np.asarray(prompt[b, : lengths[b]]), b, j, key, GREEDY_BATCH, MAX_NEW, EOS
            )
            n = int(out.lengths[b, j])
            assert out.tokens[b, j, :n].tolist() == expected
            assert np.all(np.asarray(out.tokens[b, j, n:]) == 0)
            assert bool(out.ended_with_eos[b, j]) == (expected[-1] == EOS)
            np.testing.assert_allclose(float(out.log_probs[b, j]), total, rtol=1e-4, atol=1e-4)


def test_greedy_rollouts_equal_generate(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, GREEDY_BATCH, GREEDY_WIDTH, seed=1)
    out = run_greedy(model, prompt, lengths)
    ref = greedy_reference(model, prompt, lengths)
    np.testing.assert_array_equal(out.tokens[:, 0], ref.tokens)
    np.testing.assert_array_equal(out.num_generated[:, 0], ref.num_generated)
    # One call per generated token (prefill included), like `generate`'s target_calls.
    np.testing.assert_array_equal(out.compute.model_calls, ref.stats.target_calls)


def test_first_finish_equals_shortest_of_all_completed(model):
    num, batch = 4, GREEDY_BATCH
    outcomes = set()
    for seed in range(4):
        prompt, lengths = ragged_prompts(TINY.vocab_size, batch, GREEDY_WIDTH, seed=seed)
        key = jax.random.key(seed)
        ffs = run_ffs(model, prompt, lengths, key, num)
        full = sampling_reference(model, prompt, lengths, key)  # all 4 run to completion
        finished = np.asarray(full.ended_with_eos)
        gen = np.where(finished, np.asarray(full.num_generated), MAX_NEW + 1)
        for b in range(batch):
            # The shortest finished trace, lowest index among ties; trace 0 if none finished.
            winner = int(np.argmin(gen[b])) if finished[b].any() else 0
            outcomes.add(bool(finished[b].any()))
            assert bool(ffs.finished[b]) == bool(finished[b].any())
            assert int(ffs.winner[b]) == winner
            np.testing.assert_array_equal(ffs.tokens[b], full.tokens[b, winner])
            assert int(ffs.lengths[b]) == int(full.lengths[b, winner])
            np.testing.assert_allclose(
                float(ffs.log_prob[b]), float(full.log_probs[b, winner]), rtol=1e-6
            )
            # All traces ran in lockstep only up to the winner's length.
            assert int(ffs.compute.model_calls[b]) == int(full.num_generated[b, winner])
            assert int(ffs.compute.tokens_evaluated[b]) <= int(full.compute.tokens_evaluated[b])
    assert outcomes == {True, False}, "both a finished and an unfinished prompt should occur"


def test_errors(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_samples"):
        decoding.first_finish(
            model, prompt, lengths, key, max_new_tokens=4, num_samples=0, eos_id=EOS
        )
    with pytest.raises(ValueError, match="eos_id"):
        decoding.first_finish(model, prompt, lengths, key, max_new_tokens=4, eos_id=99)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.sample_rollouts(model, prompt, lengths, key, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_length"):
        decoding.sample_rollouts(model, prompt, lengths, key, max_new_tokens=TINY.max_length)
    with pytest.raises(ValueError, match="prompt_lengths"):
        decoding.sample_rollouts(model, prompt, lengths + 10, key, max_new_tokens=4)
    with pytest.raises(ValueError, match="eos_id"):
        decoding.sample_rollouts(
            model, prompt, lengths, key, max_new_tokens=4, stop_at_first_eos=True
        )


ROLLOUT_CONFIG = decoding.RolloutConfig(
    num_rollouts=3, max_new_tokens=MAX_NEW, sampling=SAMPLING, eos_id=EOS
)
FFS_CONFIG = decoding.FirstFinishConfig(num_samples=3, max_new_tokens=MAX_NEW, eos_id=EOS)


def test_rollout_step_loop_equals_run():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 3, 5, seed=2)
    infos, _ = assert_step_loop_equals_run(
        decoding.rollout_init,
        decoding.rollout_step,
        decoding.rollout_result,
        decoding.rollout_run,
        lambda s: not np.all(s.done),
        jax.random.key(5),
        contract_model(),
        prompt,
        lengths,
        ROLLOUT_CONFIG,
    )
    assert 1 <= len(infos) <= MAX_NEW
    assert infos[0].tokens.shape == infos[0].active.shape == (3, ROLLOUT_CONFIG.num_rollouts)
    assert bool(np.all(infos[0].active))


def test_first_finish_step_loop_equals_run():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 3, 5, seed=3)
    assert_step_loop_equals_run(
        decoding.first_finish_init,
        decoding.first_finish_step,
        decoding.first_finish_result,
        decoding.first_finish_run,
        lambda s: not np.all(s.done),
        jax.random.key(6),
        contract_model(),
        prompt,
        lengths,
        FFS_CONFIG,
    )


def test_prompt_value_checks_eager_and_checked():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    assert_prompt_value_checks(
        decoding.rollout_init, contract_model(), prompt, lengths, ROLLOUT_CONFIG
    )
    assert_prompt_value_checks(
        decoding.first_finish_init, contract_model(), prompt, lengths, FFS_CONFIG
    )


def test_configs_are_hashable_static_args():
    assert hash(ROLLOUT_CONFIG) == hash(dataclasses.replace(ROLLOUT_CONFIG))
    assert FFS_CONFIG.rollouts().stop_at_first_eos
    with pytest.raises(dataclasses.FrozenInstanceError):
        FFS_CONFIG.num_samples = 2  # type: ignore[misc]
