"""LATR: branching exactly on the predicate, capacity, shared prefixes, greedy at tau_abs = 1,
pruning of identical continuations, and the group as a rollout generator."""

import dataclasses
import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lookahead_jax import decoding
from lookahead_jax.sampling import Sampling
from tests.decoding.strategy_models import (
    GREEDY_BATCH,
    GREEDY_EOS,
    GREEDY_NEW,
    GREEDY_WIDTH,
    TableModel,
    assert_prompt_value_checks,
    assert_step_loop_equals_run,
    greedy_reference,
    log_softmax,
    next_logits,
    ragged_prompts,
    sampling_reference,
)

VOCAB = 8
WIDTH = 40
SAMPLING = Sampling(temperature=1.0)


def bigram_model(seed: int, scale: float, sink: float = 0.0) -> TableModel:
    """Random bigram logits; ``sink`` favours token 0 after every token (paths re-merge)."""
    rng = np.random.default_rng(seed)
    table = scale * rng.normal(size=(VOCAB, VOCAB))
    table[:, 0] += sink
    return TableModel.create(table, np.zeros((WIDTH, VOCAB)))


def near_tie_model(seed: int, ties: tuple[int, ...], runner_up: float = 2.8) -> TableModel:
    """A bigram model with a clear favourite after every token, and a close runner-up after
    the tokens in ``ties`` (where the LATR predicate holds)."""
    rng = np.random.default_rng(seed)
    table = 0.3 * rng.normal(size=(VOCAB, VOCAB))
    for a in range(VOCAB):
        favourite = (3 * a + 1) % VOCAB
        table[a, favourite] = 3.0
        if a in ties:
            second = (5 * a + 2) % VOCAB
            table[a, second if second != favourite else (favourite + 1) % VOCAB] = runner_up
    return TableModel.create(table, np.zeros((WIDTH, VOCAB)))


@functools.partial(jax.jit, static_argnames=("params", "max_new", "eos_id"))
@chex.assert_max_traces(n=7)  # one per LATRConfig used below: compiled once per shape
def run(model, prompt, lengths, key, params, max_new, eos_id=None):
    return decoding.latr(
        model, prompt, lengths, key, max_new_tokens=max_new, params=params, eos_id=eos_id
    )


def levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


distance_jit = jax.jit(decoding.normalized_edit_distance)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_normalized_edit_distance_matches_dynamic_programming(data):
    r = data.draw(st.integers(1, 4))
    a = data.draw(st.lists(st.integers(0, 2), min_size=r, max_size=r))
    b = data.draw(st.lists(st.integers(0, 2), min_size=r, max_size=r))
    got = float(distance_jit(jnp.asarray([a]), jnp.asarray([b]))[0])
    assert got == pytest.approx(levenshtein(a, b) / r)


@pytest.mark.parametrize(
    "rules, runner_up, tau_abs",
    [("paper", 2.8, 0.25), ("reference_code", 2.2, 0.1)],
)
def test_branches_exactly_when_the_predicate_holds(rules, runner_up, tau_abs):
    # The authors' code branches on a clear runner-up (p_1 - p_i > tau_rel), the paper on
    # a close one: each rule's model has runner-ups its predicate selects.
    model = near_tie_model(seed=0, ties=(0, 3), runner_up=runner_up)
    params = decoding.LATRConfig(
        num_rollouts=16, tau_abs=tau_abs, tau_rel=0.15, tau_ed=0.0, rules=rules
    )
    prompt, lengths = ragged_prompts(VOCAB, 3, 5, seed=0)
    max_new = 10
    out = run(model, prompt, lengths, jax.random.key(0), params, max_new)
    total_children = 0
    for b in range(3):
        valid = np.flatnonzero(np.asarray(out.valid[b]))
        assert len(valid) < params.num_rollouts, "capacity must not bind in this test"
        assert int(out.handoff_step[b]) == -1
        prompt_row = np.asarray(prompt[b, : lengths[b]]).tolist()
        gen = {int(s): np.asarray(out.tokens[b, s, lengths[b] :]).tolist() for s in valid}
        expected, actual = set(), set()
        for s in valid:
            birth, parent = int(out.birth[b, s]), int(out.parent[b, s])
            assert int(out.num_generated[b, s]) == max_new
            first_own = 0 if parent < 0 else birth + 1
            if parent >= 0:
                actual.add((parent, birth, gen[s][birth]))
                # A child shares its parent's prefix and differs at its birth token.
                assert gen[s][:birth] == gen[parent][:birth]
                assert gen[s][birth] != gen[parent][birth]
            for t in range(first_own, max_new):
                lp = log_softmax(next_logits(model, prompt_row + gen[s][:t]))
                order = np.argsort(-lp, kind="stable")
                p = np.exp(lp[order])
                assert gen[s][t] == int(order[0])  # top-1 while branching
                gap = p[0] - p[1]
                close = gap < params.tau_rel if rules == "paper" else gap > params.tau_rel
                if p[1] > params.tau_abs and close:
                    expected.add((int(s), t, int(order[1])))
        assert actual == expected
        assert int(out.branches[b]) == len(actual) == len(valid) - 1
        total_children += len(actual)
    assert total_children >= 3, "the test model should branch"


def test_group_never_exceeds_n_and_returns_log_probs():
    """Frequent branching: the group fills (never past n), hands off to sampling, and every
    rollout comes with the model's log-probabilities of its tokens."""
    n, max_new = 3, 10
    # With a window of 2, a child is too similar iff its second token equals its parent's.
    params = decoding.LATRConfig(
        num_rollouts=n, tau_abs=0.1, tau_rel=1.0, tau_ed=0.8, prune_window=2
    )
    prompt, lengths = ragged_prompts(VOCAB, 2, 4, seed=1)
    handed_off = pruned = 0
    for seed in range(4):
        model = bigram_model(seed=seed, scale=0.7, sink=1.0)
        out = run(model, prompt, lengths, jax.random.key(seed), params, max_new)
        valid = np.asarray(out.valid)
        assert np.all(valid.sum(1) <= n)
        np.testing.assert_array_equal(out.num_rollouts, valid.sum(1))
        np.testing.assert_array_equal(
            out.num_rollouts, 1 + np.asarray(out.branches) - np.asarray(out.pruned)
        )
        handed_off += int(np.sum(np.asarray(out.handoff_step) >= 0))
        pruned += int(np.sum(out.pruned))
        for b in range(2):
            start = int(lengths[b])
            if int(out.handoff_step[b]) >= 0:
                assert int(out.num_rollouts[b]) == n
            for s in np.flatnonzero(valid[b]):
                row = np.asarray(out.tokens[b, s, : out.lengths[b, s]]).tolist()
                lp = [
                    log_softmax(next_logits(model, row[:i]))[row[i]] for i in range(start, len(row))
                ]
                np.testing.assert_allclose(
                    np.asarray(out.token_log_probs[b, s, : len(lp)]), lp, rtol=1e-4, atol=1e-5
                )
                np.testing.assert_allclose(
                    float(out.log_probs[b, s]), sum(lp), rtol=1e-4, atol=1e-5
                )
        # Lockstep: one call per step while any rollout is live.
        assert np.all(np.asarray(out.compute.model_calls) <= max_new)
    assert handed_off > 0 and pruned > 0


def two_tie_model(diverge_at: int, identical_at: int) -> TableModel:
    """Logits mostly depend on the position (a clear favourite per position), with two
    coin flips: after the one at ``diverge_at`` the runner-up token pulls the next token
    away from the favourite (that child diverges); after ``identical_at`` nothing does
    (that child continues exactly like its parent)."""
    favourite = np.arange(WIDTH) % (VOCAB - 2)  # tokens VOCAB - 2 and VOCAB - 1 never are
    positions = np.zeros((WIDTH, VOCAB))
    positions[np.arange(WIDTH), favourite] = 4.0
    tokens = np.zeros((VOCAB, VOCAB))
    pull = VOCAB - 1  # the diverging runner-up token
    positions[diverge_at, pull] = 4.0
    tokens[pull, VOCAB - 2] = 9.0  # after it: a token the parent does not emit
    other = (identical_at + 3) % VOCAB
    positions[identical_at, other] = 4.0
    return TableModel.create(tokens, positions)


def test_identical_continuations_are_pruned():
    prompt, lengths = jnp.asarray([[1, 2, 3]], jnp.int32), jnp.asarray([3], jnp.int32)
    # Input positions 4 and 8 predict generated tokens 2 (diverging) and 6 (identical).
    model = two_tie_model(diverge_at=4, identical_at=8)
    params = decoding.LATRConfig(num_rollouts=4, tau_ed=0.4, prune_window=4)
    out = run(model, prompt, lengths, jax.random.key(0), params, 14)
    # The root branches at both coin flips; the diverging child also branches at the second.
    assert int(out.branches[0]) == 3
    # Children born at the second flip differ from their parents only at their birth token:
    # distance 1/4 < 0.4, pruned. The diverging child differs at 2 of 4 (0.5): kept.
    assert int(out.pruned[0]) == 2
    assert int(out.num_rollouts[0]) == 2
    child = int(np.flatnonzero(np.asarray(out.parent[0]) >= 0)[0])
    assert int(out.birth[0, child]) == 2


def test_tau_abs_one_is_greedy():
    model = near_tie_model(seed=1, ties=tuple(range(VOCAB)))  # the predicate would hold often
    prompt, lengths = ragged_prompts(VOCAB, GREEDY_BATCH, GREEDY_WIDTH, seed=2)
    params = decoding.LATRConfig(num_rollouts=3, tau_abs=1.0)
    out = run(model, prompt, lengths, jax.random.key(0), params, GREEDY_NEW, eos_id=GREEDY_EOS)
    ref = greedy_reference(model, prompt, lengths)
    np.testing.assert_array_equal(out.tokens[:, 0], ref.tokens)
    np.testing.assert_array_equal(out.num_rollouts, 1)
    np.testing.assert_array_equal(out.branches, 0)


def test_sampled_growth():
    """growth="sample": without branching it is plain sampling; children still share the
    parent's prefix and differ at their birth token."""
    model = near_tie_model(seed=2, ties=(0, 3, 5))
    prompt, lengths = ragged_prompts(VOCAB, GREEDY_BATCH, GREEDY_WIDTH, seed=5)
    key = jax.random.key(3)
    alone = decoding.LATRConfig(num_rollouts=3, tau_abs=1.0, growth="sample")
    out = run(model, prompt, lengths, key, alone, GREEDY_NEW, eos_id=GREEDY_EOS)
    plain = sampling_reference(model, prompt, lengths, key)
    np.testing.assert_array_equal(out.tokens[:, 0], plain.tokens[:, 0])
    np.testing.assert_array_equal(out.num_rollouts, 1)
    params = decoding.LATRConfig(num_rollouts=6, tau_abs=0.05, tau_rel=1.0, growth="sample")
    out = run(model, prompt, lengths, key, params, GREEDY_NEW, eos_id=GREEDY_EOS)
    assert int(np.sum(out.branches)) > 0
    for b in range(GREEDY_BATCH):
        start = int(lengths[b])
        for s in np.flatnonzero(np.asarray(out.valid[b])):
            parent, birth = int(out.parent[b, s]), int(out.birth[b, s])
            if parent >= 0 and bool(out.valid[b, parent]):
                mine = np.asarray(out.tokens[b, s, : start + birth + 1])
                theirs = np.asarray(out.tokens[b, parent, : start + birth + 1])
                np.testing.assert_array_equal(mine[:-1], theirs[:-1])
                assert mine[-1] != theirs[-1]


def test_errors():
    model = bigram_model(seed=0, scale=1.0)
    prompt, lengths = ragged_prompts(VOCAB, 2, 4, seed=0)
    key = jax.random.key(0)
    for params, name in [
        (decoding.LATRConfig(num_rollouts=0), "num_rollouts"),
        (decoding.LATRConfig(top_m=1), "top_m"),
        (decoding.LATRConfig(top_m=VOCAB + 1), "top_m"),
        (decoding.LATRConfig(tau_abs=1.5), "tau_abs"),
        (decoding.LATRConfig(tau_rel=-0.1), "tau_rel"),
        (decoding.LATRConfig(tau_ed=float("nan")), "tau_ed"),
        (decoding.LATRConfig(prune_window=0), "prune_window"),
        (decoding.LATRConfig(growth="beam"), "growth"),
        (decoding.LATRConfig(rules="code"), "rules"),
    ]:
        with pytest.raises(ValueError, match=name):
            decoding.latr(model, prompt, lengths, key, max_new_tokens=4, params=params)


def test_step_loop_equals_run_and_info_counts():
    """The contract: a Python loop of ``latr_step`` equals ``latr_run``; the infos count the
    births and prunings that the result reports."""
    prompt, lengths = jnp.asarray([[1, 2, 3]], jnp.int32), jnp.asarray([3], jnp.int32)
    model = two_tie_model(diverge_at=4, identical_at=8)
    config = decoding.LATRConfig(num_rollouts=4, tau_ed=0.4, prune_window=4, max_new_tokens=14)
    infos, out = assert_step_loop_equals_run(
        decoding.latr_init,
        decoding.latr_step,
        decoding.latr_result,
        decoding.latr_run,
        lambda s: np.any(s.alive & ~s.done),
        jax.random.key(0),
        model,
        prompt,
        lengths,
        config,
    )
    assert sum(int(np.sum(i.spawned)) for i in infos) == int(out.branches[0]) == 3
    assert sum(int(np.sum(i.dropped)) for i in infos) == int(out.pruned[0]) == 2


def test_prompt_value_checks_eager_and_checked():
    model = bigram_model(seed=0, scale=1.0)
    prompt, lengths = ragged_prompts(VOCAB, 2, 4, seed=0)
    config = decoding.LATRConfig(num_rollouts=2, max_new_tokens=4)
    assert_prompt_value_checks(decoding.latr_init, model, prompt, lengths, config)
    assert decoding.LATRParams is decoding.LATRConfig
    assert dataclasses.replace(config, tau_ed=0.5) != config
