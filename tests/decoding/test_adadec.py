"""AdaDec: tau = inf is greedy, pauses exactly where H >= tau, the lookahead score, the fit."""

import functools
import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lookahead_jax import decoding
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.decoding.adadec import lookahead_scores
from tests.decoding.strategy_models import (
    GREEDY_EOS,
    GREEDY_NEW,
    TINY,
    assert_prompt_value_checks,
    assert_step_loop_equals_run,
    contract_model,
    entropy,
    greedy_reference,
    log_softmax,
    next_logits,
    ragged_prompts,
    sequence_logits,
    tiny_transformer,
)

MAX_NEW = GREEDY_NEW
EOS = GREEDY_EOS


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(seed=4, sharpness=15.0)


@functools.partial(jax.jit, static_argnames=("params",))
@chex.assert_max_traces(n=2)  # tau = inf and one finite tau
def run(model, prompt, lengths, params):
    return decoding.adadec(
        model, prompt, lengths, max_new_tokens=MAX_NEW, params=params, eos_id=EOS
    )


def test_infinite_threshold_equals_greedy(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 4, 6, seed=0)
    out = run(model, prompt, lengths, decoding.AdaDecConfig(threshold=math.inf))
    ref = greedy_reference(model, prompt, lengths)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.num_generated, ref.num_generated)
    np.testing.assert_array_equal(out.pauses, 0)
    np.testing.assert_array_equal(out.compute.model_calls, ref.stats.target_calls)


def test_pauses_exactly_where_entropy_reaches_tau(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 4, 6, seed=1)
    params = decoding.AdaDecConfig(threshold=1.2, lookahead_steps=3)
    out = run(model, prompt, lengths, params)
    steps = pauses = 0
    for b in range(4):
        n = int(out.num_generated[b])
        row = np.asarray(out.tokens[b, : lengths[b] + n])
        # Entropy before each generated token, from one cache-free forward pass.
        h = entropy(sequence_logits(model, row.tolist())[lengths[b] - 1 : lengths[b] - 1 + n])
        np.testing.assert_allclose(np.asarray(out.entropies[b, :n]), h, rtol=1e-4, atol=1e-4)
        clear = np.abs(h - params.threshold) > 1e-3  # float32 ambiguity at the boundary
        assert clear.mean() > 0.8
        paused = np.asarray(out.paused[b, :n])
        np.testing.assert_array_equal(paused[clear], (h >= params.threshold)[clear])
        assert int(out.pauses[b]) == int(paused.sum())
        steps += n
        pauses += int(paused.sum())
    assert 0 < pauses < steps, "the threshold should split this model's steps"
    # Pausing rows pay for the lookahead: L calls and B + (L - 1) B W tokens per pause.
    extra_calls = np.asarray(out.compute.model_calls) - np.asarray(out.num_generated)
    np.testing.assert_array_equal(extra_calls, 3 * np.asarray(out.pauses))
    assert int(np.sum(out.changed)) <= pauses


def naive_beam_lookahead(model, sequence, params):
    """Beam search with full forward passes: the definition of AdaDec's candidate score."""
    lp0 = log_softmax(next_logits(model, sequence))
    candidates = np.argsort(-lp0, kind="stable")[: params.num_candidates]
    scores = []
    for c in candidates:
        beams = [([int(c)], 0.0)]
        for _ in range(params.lookahead_steps):
            options = []
            for tokens, score in beams:
                lp = log_softmax(next_logits(model, sequence + tokens))
                options += [([*tokens, v], score + lp[v]) for v in range(len(lp))]
            options.sort(key=lambda o: -o[1])
            beams = options[: params.beam_width]
        best = max(score for _, score in beams)
        scores.append((lp0[c] + best) / (params.lookahead_steps + 1))
    return candidates, np.asarray(scores)


def test_lookahead_scores_equal_naive_beam_search(model):
    params = decoding.AdaDecConfig(num_candidates=3, beam_width=2, lookahead_steps=3)
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 5, seed=3)

    logits, cache = jax.jit(
        lambda m, p, n: common.prefill(m, p, n, p.shape[1] + params.lookahead_steps)
    )(model, prompt, lengths)
    cand, score = jax.jit(lookahead_scores, static_argnames=("params", "eos_id"))(
        model, cache, logits, params
    )
    for b in range(2):
        expected_cand, expected = naive_beam_lookahead(
            model, np.asarray(prompt[b, : lengths[b]]).tolist(), params
        )
        np.testing.assert_array_equal(np.asarray(cand[b]), expected_cand)
        np.testing.assert_allclose(np.asarray(score[b]), expected, rtol=1e-4, atol=1e-5)


fit_jit = jax.jit(decoding.fit_entropy_threshold)


@settings(max_examples=8, deadline=None)
@given(tau=st.floats(0.5, 3.0), noise=st.floats(0.0, 0.15), seed=st.integers(0, 1000))
def test_threshold_fit_recovers_a_planted_boundary(tau, noise, seed):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 4.0, 4000)
    labels = (h < tau) ^ (rng.uniform(size=h.shape) < noise)
    fit = fit_jit(jnp.asarray(h), jnp.asarray(labels))
    assert float(fit.weight) < 0  # high entropy: greedy less often right
    assert abs(float(fit.threshold) - tau) < 0.15
    # pause_rate is a float32 mean: equal up to float32 rounding.
    np.testing.assert_allclose(float(fit.pause_rate), np.mean(h >= float(fit.threshold)), rtol=1e-6)
    assert float(fit.accuracy) >= 1 - noise - 0.03
    # tau = (logit p* - b) / w.
    logit = np.log(float(fit.cut) / (1 - float(fit.cut)))
    np.testing.assert_allclose(
        float(fit.threshold), (logit - float(fit.bias)) / float(fit.weight), rtol=1e-3, atol=1e-3
    )


def test_fit_on_a_model_and_text(model):
    rng = np.random.default_rng(0)
    windows = rng.integers(0, TINY.vocab_size, (5, 17))
    fit = decoding.fit_adadec_threshold(model, windows, batch_size=2)
    assert np.isfinite(float(fit.threshold))
    logits = np.stack([sequence_logits(model, w[:-1].tolist()) for w in windows])
    h = entropy(logits).reshape(-1)
    correct = (logits.argmax(-1) == windows[:, 1:]).reshape(-1)
    np.testing.assert_allclose(float(fit.greedy_accuracy), correct.mean())
    np.testing.assert_allclose(float(fit.pause_rate), np.mean(h >= float(fit.threshold)), atol=1e-2)


def test_errors(model):
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    for params, name in [
        (decoding.AdaDecConfig(threshold=float("nan")), "threshold"),
        (decoding.AdaDecConfig(num_candidates=0), "num_candidates"),
        (decoding.AdaDecConfig(beam_width=17), "beam_width"),
        (decoding.AdaDecConfig(lookahead_steps=0), "lookahead_steps"),
        (decoding.AdaDecConfig(lookahead_steps=TINY.max_length), "max_length"),
    ]:
        with pytest.raises(ValueError, match=name):
            decoding.adadec(model, prompt, lengths, max_new_tokens=4, params=params)
    with pytest.raises(ValueError, match="labels"):
        decoding.fit_entropy_threshold(jnp.zeros(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="windows"):
        decoding.fit_adadec_threshold(model, np.zeros((2, 1), np.int32))


CONFIG = decoding.AdaDecConfig(threshold=1.5, lookahead_steps=2, max_new_tokens=MAX_NEW, eos_id=EOS)


def test_step_loop_equals_run_and_infos():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 3, 5, seed=1)
    infos, out = assert_step_loop_equals_run(
        decoding.adadec_init,
        decoding.adadec_step,
        decoding.adadec_result,
        decoding.adadec_run,
        lambda s: not np.all(s.finished),
        jax.random.key(0),
        contract_model(),
        prompt,
        lengths,
        CONFIG,
    )
    pauses = sum(np.asarray(i.paused, np.int32) for i in infos)
    np.testing.assert_array_equal(pauses, out.pauses)
    assert 0 < int(np.sum(out.pauses)) < int(np.sum(out.num_generated))
    for i in infos:  # a pause exactly where H >= tau, on active rows
        np.testing.assert_array_equal(i.paused, i.active & (i.entropy >= CONFIG.threshold))


def test_prompt_value_checks_eager_and_checked():
    prompt, lengths = ragged_prompts(TINY.vocab_size, 2, 4, seed=0)
    assert_prompt_value_checks(decoding.adadec_init, contract_model(), prompt, lengths, CONFIG)
    assert decoding.AdaDecParams is decoding.AdaDecConfig
