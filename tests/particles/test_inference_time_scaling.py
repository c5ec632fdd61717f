"""The inference-time-scaling benchmark: an exact verifier, a real trap, sane figures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import inference_time_scaling as its
from lookahead_jax import models

ENV = its.Environment()  # the defaults: K = 4 actions, D = 8 steps, reveal after 3
D, START = ENV.depth, ENV.start_id
CORRECT = jnp.asarray([0, 1, 2, 3, 0, 1, 2, 3], jnp.int32)
DECOY = jnp.asarray([2, 1, 2, 3, 0, 1, 2, 3], jnp.int32)  # differs only at the first step
INSTANCE = its.Instance(CORRECT, DECOY, jnp.asarray(True))


def rows(*paths):
    """Start token + actions, padded to the buffer width; returns (tokens, lengths)."""
    tokens = np.zeros((len(paths), ENV.width), np.int32)
    lengths = np.zeros(len(paths), np.int32)
    for i, path in enumerate(paths):
        tokens[i, 0] = START
        tokens[i, 1 : 1 + len(path)] = path
        lengths[i] = 1 + len(path)
    return jnp.asarray(tokens), jnp.asarray(lengths)


def test_verifier_is_exact_on_hand_made_cases():
    correct = list(np.asarray(CORRECT))
    last_wrong = [*correct[:-1], (correct[-1] + 1) % 4]
    tokens, lengths = rows(correct, last_wrong, list(np.asarray(DECOY)), correct[:-1], [])
    verdict = np.asarray(its.verify(ENV, INSTANCE, tokens, lengths))
    np.testing.assert_array_equal(verdict, [True, False, False, False, False])
    # Whatever sits past the length is ignored; a wrong start token is not a solution.
    padded = tokens.at[3, D].set(correct[-1])
    assert not bool(its.verify(ENV, INSTANCE, padded, lengths)[3])
    assert not bool(its.verify(ENV, INSTANCE, tokens.at[0, 0].set(0), lengths)[0])


def test_process_reward_is_overconfident_early_then_right():
    for depth in range(1, D + 1):
        tokens, lengths = rows(
            list(np.asarray(CORRECT[:depth])),
            list(np.asarray(DECOY[:depth])),
            [1] * depth,  # leaves both paths at the first step (1 != 0, 1 != 2)
        )
        correct, decoy, off = np.asarray(its.process_reward(ENV, INSTANCE, tokens, lengths))
        if depth <= ENV.reveal_depth:
            assert decoy > correct > off  # the plausible-but-wrong branch looks best
        else:
            assert correct > off > decoy  # the error has become evident


def test_proposal_distribution_and_apply_contract():
    policy = its.SyntheticPolicy.create(ENV, INSTANCE)
    cache = models.init_cache(policy.config, 3, ENV.width)
    # Prefill the start token, then append one action per row, as the filter does.
    logits, cache = policy(jnp.full((3, 1), START, jnp.int32), cache)
    probs = np.exp(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert probs[0, START] == 0 and probs[0, ENV.end_id] == 0
    # Trap instance: the decoy's first step is the mode, the correct one the runner-up.
    assert probs[0, int(DECOY[0])] == pytest.approx(ENV.mode_prob)
    assert probs[0, int(CORRECT[0])] == pytest.approx(ENV.runner_up_prob)
    step = jnp.asarray([[int(CORRECT[0])], [int(DECOY[0])], [1]], jnp.int32)
    logits, cache = policy(step, cache)
    np.testing.assert_array_equal(cache.lengths, [2, 2, 2])
    tokens, lengths = rows([int(CORRECT[0])], [int(DECOY[0])], [1])
    np.testing.assert_allclose(
        logits[:, 0], its.proposal_log_probs(ENV, INSTANCE, tokens, lengths), rtol=1e-6
    )
    probs = np.exp(np.asarray(logits[:, 0]))
    assert probs[0, int(CORRECT[1])] == pytest.approx(ENV.step_prob)  # continue the branch
    assert probs[1, int(DECOY[1])] == pytest.approx(ENV.step_prob)
    np.testing.assert_allclose(probs[2, :4], 0.25)  # a dead end is uniform


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    config = its.default_config()
    config.update(
        num_seeds=400,
        budgets=(4,),
        methods=("greedy", "best_of_n", "pf", "epf_ess_lookahead"),
        lm_demo=False,
        output_dir=str(tmp_path_factory.mktemp("its")),
    )
    return config, its.run(config)


def _instances(config):
    # The same instances the benchmark draws (same seed, same split).
    instance_key, _ = jax.random.split(jax.random.key(config.seed))
    env = its.Environment.from_config(config)
    return jax.vmap(lambda k: its.sample_instance(k, env))(
        jax.random.split(instance_key, config.num_seeds)
    )


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_the_trap_exists(tiny_results):
    config, results = tiny_results
    traps = np.asarray(_instances(config).trap)
    # Trap instances occur with the stated probability (4 standard errors) ...
    se = np.sqrt(config.trap_rate * (1 - config.trap_rate) / traps.size)
    assert abs(traps.mean() - config.trap_rate) < 4 * se
    # ... and greedy (the proposal's argmax path, run through the particle filter)
    # is right on exactly the other instances.
    greedy = next(r for r in results["rows"] if r["method"] == "greedy")
    assert greedy["success_rate"] == pytest.approx(1.0 - traps.mean(), abs=1e-12)


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_best_of_n_matches_the_proposal(tiny_results):
    # Best-of-N succeeds iff one of N independent proposals is the answer key, which
    # has probability p = (first-step prob) * step_prob^(D - 1): exact expectation.
    config, results = tiny_results
    traps = np.asarray(_instances(config).trap)
    first = np.where(traps, config.runner_up_prob, config.mode_prob)
    p = first * config.step_prob ** (config.depth - 1)
    expected = 1.0 - (1.0 - p) ** 4
    row = next(r for r in results["rows"] if r["method"] == "best_of_n")
    se = np.sqrt(np.sum(expected * (1 - expected))) / traps.size
    assert abs(row["success_rate"] - expected.mean()) < 4 * se


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_structural_invariants(tiny_results):
    config, results = tiny_results
    assert [r["method"] for r in results["rows"]] == list(config.methods)
    for r in results["rows"]:
        n = r["num_particles"]
        assert 0.0 <= r["success_rate"] <= 1.0
        # The final reward of a correct complete solution beats every other one, so
        # selection never misses a correct particle: success is coverage.
        assert r["success_rate"] == r["coverage_rate"]
        diversity = np.asarray(r["diversity"])
        assert diversity.shape == (config.depth,)
        assert ((diversity >= 1.0 / n - 1e-9) & (diversity <= 1.0)).all()
        assert 1.0 <= r["distinct_final"] <= n
        # Distinct step-t prefixes of the final pool can only grow with t.
        lineages = np.asarray(r["lineages"])
        assert lineages.shape == (config.depth,)
        assert (np.diff(lineages) >= -1e-9).all() and lineages[0] >= 1.0 - 1e-9
        assert lineages[0] <= min(n, config.branching) + 1e-9  # K first actions at most
        assert lineages[-1] == pytest.approx(r["distinct_final"])
    by_method = {r["method"]: r for r in results["rows"]}
    np.testing.assert_array_equal(by_method["best_of_n"]["diversity"], 1.0)  # never resamples
    assert by_method["epf_ess_lookahead"]["proposal_calls"] == 4 * config.lookahead * config.depth
    assert "minus_pf" in by_method["epf_ess_lookahead"]
    written = json.loads((its.pathlib.Path(config.output_dir) / "results.json").read_text())
    assert written["rows"] == results["rows"]
    assert (its.pathlib.Path(config.output_dir) / "results.png").stat().st_size > 0
    table = its.format_table(results)
    assert all(m in table for m in config.methods)


def test_lm_reward_is_the_targets_geometric_mean_probability():
    target = models.Model(*models.load_pretrained("tiny-target"))
    tokens = jnp.asarray([list(b"the cat sat."), list(b"qzx cat sat.")], jnp.int32)
    lengths = jnp.asarray([12, 9], jnp.int32)
    reward = np.asarray(its.lm_reward(target, 4)(tokens, lengths))
    log_probs = -np.asarray(models.next_token_nll(target, tokens))  # predicts 1..11
    expected = [np.exp(log_probs[0, 3:11].mean()), np.exp(log_probs[1, 3:8].mean())]
    np.testing.assert_allclose(reward, expected, rtol=1e-5)
    assert ((reward > 0) & (reward <= 1)).all()
