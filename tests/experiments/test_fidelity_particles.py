"""experiments/fidelity_particles.py: the task, the reward stand-ins, the statistics, and the
script end to end (slow tier)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import fidelity_particles as fp
from tests.helpers import run_experiment


def test_solution_tokens_and_answer_value_read_back_the_sum():
    a = jnp.asarray([[9, 9, 1], [3, 0, 0]])  # 199 and 3, least significant digit first
    b = jnp.asarray([[1, 0, 0], [4, 5, 0]])  # 1 and 54
    tokens = fp.solution_tokens(a, b)
    # 199 + 1: digits 0, 0, 2 with carries 1, 1, 0.
    assert tokens[0].tolist() == [0, 1, fp.DELIM, 0, 1, fp.DELIM, 2, 0, fp.END]
    assert fp.answer_value(tokens).tolist() == [200, 57]
    # The no-carry decoy drops every carry: 199 "+" 1 -> 190.
    assert fp.answer_value(fp.solution_tokens(a, b, carry_in=False)).tolist() == [190, 57]
    broken = tokens.at[0, 2].set(fp.END)
    assert fp.answer_value(broken).tolist() == [-1, 57]


def test_problems_prompt_interleaves_digits():
    problems = fp.sample_problems(jax.random.key(0), 5, 3)
    assert problems.prompt.shape == (5, fp.prompt_length(3))
    p = np.asarray(problems.prompt)
    assert (
        (p[:, 0] == fp.BOS).all() and (p[:, 3] == fp.PLUS).all() and (p[:, -1] == fp.EQUALS).all()
    )
    a, b = p[:, 1::3][:, :3], p[:, 2::3][:, :3]
    total = (a * 10 ** np.arange(3)).sum(1) + (b * 10 ** np.arange(3)).sum(1)
    assert np.asarray(fp.answer_value(problems.solution)).tolist() == total.tolist()


def test_noisy_prm_has_the_requested_auc_and_is_deterministic_per_prefix():
    assert math.isclose(fp.prm_scale(0.5), 0.0, abs_tol=1e-12)
    problems = fp.sample_problems(jax.random.key(1), 1, 3)
    p_len = fp.prompt_length(3)
    reference = jnp.concatenate([problems.prompt[0], problems.solution[0]])
    decoy = jnp.concatenate([problems.prompt[0], problems.decoy[0]])
    # 2000 random one-step prefixes (first answer step): live iff equal to the reference.
    steps = jax.random.randint(jax.random.key(2), (2000, 3), 0, 10)
    steps = steps.at[:1000].set(reference[p_len : p_len + 3])  # same live prefix: same score
    tokens = jnp.concatenate([jnp.broadcast_to(reference[:p_len], (2000, p_len)), steps], 1)
    tokens = jnp.pad(tokens, ((0, 0), (0, 6)), constant_values=fp.PAD)
    lengths = jnp.full((2000,), p_len + 3)
    reward = fp.reward_params("prm_auc0.9", fp.default_config())
    score = jax.jit(lambda k, t, n: fp.process_reward(reward, k, reference, decoy, p_len, t, n))
    scores = np.asarray(score(jax.random.key(3), tokens, lengths))
    assert np.all(scores[:1000] == scores[0])  # one prefix, one score
    # AUC over distinct prefixes: vary the noise key to get many live draws.
    keys = jax.random.split(jax.random.key(4), 400)
    live = np.asarray(jax.vmap(lambda k: score(k, tokens[:1], lengths[:1])[0])(keys))
    dead_rows = ~np.all(np.asarray(steps[1000:]) == np.asarray(reference[p_len : p_len + 3]), 1)
    dead = scores[1000:][dead_rows]
    auc = np.mean(live[:, None] > dead[None, :])
    assert abs(auc - 0.9) < 0.03


def test_decoy_reward_is_overconfident_early_then_revealed():
    c = fp.default_config()
    problems = fp.sample_problems(jax.random.key(5), 64, 4)
    # A problem whose first column carries, so the decoy differs at step 0.
    index = int(np.argmax(np.asarray(problems.solution[:, 1]) == 1))
    p_len = fp.prompt_length(4)
    reference = jnp.concatenate([problems.prompt[index], problems.solution[index]])
    decoy = jnp.concatenate([problems.prompt[index], problems.decoy[index]])
    rows = jnp.stack([reference, decoy])
    reward = fp.reward_params("decoy", c)

    def score(steps):
        lengths = jnp.full((2,), p_len + 3 * steps)
        return np.asarray(
            fp.process_reward(reward, jax.random.key(0), reference, decoy, p_len, rows, lengths)
        )

    assert np.allclose(score(1), [0.5, 0.95])  # early: the decoy looks better
    assert np.allclose(score(4), [0.9, 0.05])  # revealed


def test_scaling_rate():
    budgets = (1, 2, 4, 8)
    rng = np.random.default_rng(0)
    # Accuracy 0.2, 0.3, 0.4, 0.5: +0.1 per doubling.
    success = np.stack([rng.random(4000) < p for p in (0.2, 0.3, 0.4, 0.5)])
    rate = fp.scaling_rate(budgets, success, reps=200)
    assert abs(rate["rate"] - 0.1) < 0.02 and rate["low"] < rate["rate"] < rate["high"]
    diff = fp.paired_difference(np.ones(10, bool), np.zeros(10, bool), reps=50)
    assert diff == dict(diff=1.0, low=1.0, high=1.0)


@pytest.mark.slow
def test_fidelity_particles_runs_and_writes_its_figure(tmp_path):
    saved, stdout = run_experiment("fidelity_particles", tmp_path, timeout=600)
    assert (tmp_path / "results.png").is_file()
    assert saved["rewards"] == ["prm_auc0.9", "decoy"]
    methods = {row["method"] for row in saved["curves"]}
    assert methods == {"best_of_n", "pf", "majority", "pass_at_n"}
    for row in saved["curves"]:
        for cell in row["cells"]:
            assert 0.0 <= cell["low"] <= cell["acc"] <= cell["high"] <= 1.0
    assert len(saved["ablations"]) == 2
    assert "PF-BoN" in stdout
