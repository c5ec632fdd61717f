"""Language-model particle filtering: buffers, resampling on rewards, both weightings, ePF."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lookahead_jax
from lookahead_jax import models, particles

VOCAB, DELIM, END, MARK = 8, 1, 2, 5
N, STEPS, STEP_TOKENS, P = 8, 3, 3, 4
CONFIG = models.TransformerConfig(
    vocab_size=VOCAB, num_layers=1, num_heads=1, d_model=8, max_length=16
)
MARK_PROMPT = jnp.asarray([3, 4, 6, 0], jnp.int32)  # 3 real tokens, padded
FLAT_PROMPT = MARK_PROMPT.at[0].set(4)
NAN_PROMPT = MARK_PROMPT.at[0].set(6)
SOFT_PROMPT = MARK_PROMPT.at[0].set(5)


@pytest.fixture(scope="module")
def model():
    return models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(0)))


def reward(tokens, lengths):
    """A process reward chosen by the prompt's first token, so one compilation serves all.

    3: 1 if the generated part contains MARK else 0 (an extreme, overconfident reward);
    5: 0.8 if MARK else 0.2 (a softer reward); 4: a flat 0.5; 6: NaN (cannot score).
    """
    column = jnp.arange(tokens.shape[1])[None]
    generated = (column >= 3) & (column < lengths[:, None])
    marked = jnp.where(jnp.any(generated & (tokens == MARK), axis=1), 1.0, 0.0)
    mode = tokens[:, :1]
    soft = 0.2 + 0.6 * marked
    choices = [marked[:, None], soft[:, None], 0.5]
    return jnp.select([mode == 3, mode == 5, mode == 4], choices, jnp.nan)[:, 0]


@functools.partial(jax.jit, static_argnames=("weighting", "schedule", "lookahead"))
@chex.assert_max_traces(n=4)  # one per (weighting, schedule, lookahead) used below
def run(key, model, prompt, weighting, schedule, lookahead=0):
    return particles.lm_particle_filter(
        key,
        model,
        prompt,
        3,
        reward,
        num_particles=N,
        max_steps=STEPS,
        max_step_tokens=STEP_TOKENS,
        delimiter_id=DELIM,
        end_id=END,
        weighting=weighting,
        schedule=schedule,
        lookahead=lookahead,
        lookahead_weight=1.0,
    )


def has_mark(pool):
    return np.asarray(reward(pool.tokens.at[:, 0].set(3), pool.lengths)) == 1.0


def _check_buffers(result):
    pool = result.particles
    tokens, lengths = np.asarray(pool.tokens), np.asarray(pool.lengths)
    assert tokens.shape == (N, P + STEPS * STEP_TOKENS)
    np.testing.assert_array_equal(tokens[:, :3], np.broadcast_to(tokens[:1, :3], (N, 3)))
    np.testing.assert_array_equal(np.asarray(pool.cache.lengths), lengths)
    for row, length in zip(tokens, lengths, strict=True):
        assert 3 < length <= 3 + STEPS * STEP_TOKENS
        assert (row[length:] == 0).all()
        generated = row[3:length]
        # Steps end at a delimiter/end marker or at the cap; nothing follows an end marker.
        if END in generated.tolist():
            assert generated.tolist().index(END) == len(generated) - 1
    assert np.asarray(pool.finished).all()  # max_steps rounds finish every particle


def test_buffers_and_compile_once(model):
    first = run(jax.random.key(1), model, MARK_PROMPT, "published", "none")
    second = run(jax.random.key(2), model, FLAT_PROMPT, "published", "none")  # no retrace
    for result, prompt in ((first, MARK_PROMPT), (second, FLAT_PROMPT)):
        _check_buffers(result)
        np.testing.assert_array_equal(result.particles.tokens[:, :3], np.tile(prompt[:3], (N, 1)))
        assert 0 <= int(result.best) < N
        assert np.asarray(result.history.num_unique).shape == (STEPS,)


def test_resampling_follows_the_reward(model):
    # Extreme rewards: once some particle has MARK, every survivor descends from one.
    seen = 0
    for seed in range(4):
        result = run(jax.random.key(seed), model, MARK_PROMPT, "published", "none")
        marked = has_mark(result.particles)
        if marked.any():
            seen += 1
            assert marked.all(), seed  # the marked prefixes took over the pool
            assert float(result.particles.reward_logits[int(result.best)]) > 15.0
    assert seen >= 2  # the check above was exercised
    # A flat reward gives uniform weights: never resampled, all particles kept.
    flat = run(jax.random.key(0), model, FLAT_PROMPT, "published", "none")
    assert not np.asarray(flat.history.resampled).any()
    np.testing.assert_array_equal(flat.history.num_unique, np.full(STEPS, N))
    np.testing.assert_allclose(flat.particles.log_weights, 0.0, atol=1e-6)  # logit(0.5)


def test_smc_weighting(model):
    result = run(jax.random.key(3), model, MARK_PROMPT, "smc", "none")
    extremes = np.asarray(particles.logit_reward(jnp.asarray([0.0, 1.0])))
    assert np.isin(np.asarray(result.particles.reward_logits), extremes).all()
    # Increments since the last resampling: after a resampling round the weights are 0,
    # and a round without resampling adds logit(s_t) - logit(s_{t-1}) per particle.
    resampled = np.asarray(result.history.resampled)
    if resampled[-1]:
        np.testing.assert_array_equal(result.particles.log_weights, 0.0)
    assert np.isfinite(np.asarray(result.particles.log_weights)).all()
    _check_buffers(result)


def test_logit_reward():
    values = np.asarray(particles.logit_reward(jnp.asarray([0.0, 0.5, 0.9, 1.0, jnp.nan])))
    np.testing.assert_allclose(
        values[:3], [np.log(1e-7 / (1 - 1e-7)), 0.0, np.log(9.0)], rtol=1e-5, atol=1e-6
    )
    # float32 cannot hold 1 - 1e-7: the upper clip is its nearest float32, 1 - 2^-23.
    np.testing.assert_allclose(values[3], np.log((1 - 2.0**-23) / 2.0**-23), rtol=1e-5)
    assert np.isnan(values[4])


def test_nan_rewards_are_defined(model):
    result = run(jax.random.key(4), model, NAN_PROMPT, "published", "none")
    assert np.asarray(result.history.degenerate).all()
    _check_buffers(result)
    assert np.isfinite(np.asarray(result.particles.next_logits)).all()


def test_entropic_annealing_spreads_the_pool(model):
    strict = 0
    for seed in range(4):
        plain = run(jax.random.key(seed), model, SOFT_PROMPT, "published", "none")
        annealed = run(jax.random.key(seed), model, SOFT_PROMPT, "published", "ess")
        assert (np.asarray(plain.history.temperature) == 1.0).all()
        t = np.asarray(annealed.history.temperature)
        # Same key: round 1 generates the same steps, so the weights before the first
        # resampling are equal. Round 1 is at progress 1/3 < 0.5: when the reward
        # collapses the ESS below N / 2, T > 1 and the tempered systematic draw keeps
        # at least as many distinct particles; with 1 or 2 marked of 8 (ESS < 3) the
        # expected number of unmarked survivors more than doubles (2.1 -> 5.4 and
        # 1.3 -> 3.3), so strictly more distinct particles survive.
        ess, before, after = (
            float(plain.history.ess[0]),
            int(plain.history.num_unique[0]),
            int(annealed.history.num_unique[0]),
        )
        if ess < 0.5 * N:
            assert t[0] > 1.0 and after >= before
        else:
            assert t[0] == 1.0  # the gate stays closed for a healthy set
        if ess < 3.0:
            strict += 1
            assert after > before, (seed, before, after)
        assert (t[1:] == 1.0).all()  # rounds 2 and 3 are past the early phase
    assert strict >= 1  # the strict case was exercised


def test_lookahead_modulation(model):
    # lambda = 1 with the mean: a particle's resampling weight is the mean reward logit
    # of its M successors. With the extreme reward, parents whose successors never
    # show MARK are dropped whenever some parent's successors do.
    for seed in range(3):
        result = run(jax.random.key(seed), model, MARK_PROMPT, "published", "none", 4)
        _check_buffers(result)
        history = result.history
        assert np.asarray(history.ancestors).shape == (STEPS, N)
        pool = result.particles
        np.testing.assert_array_equal(pool.log_weights, pool.reward_logits)
        extremes = np.asarray(particles.logit_reward(jnp.asarray([0.0, 1.0])))
        assert np.isin(np.asarray(pool.reward_logits), extremes).all()  # every one scored
        # Rewards are the chosen successors' own: marked exactly where MARK appears.
        np.testing.assert_array_equal(np.asarray(pool.reward_logits) > 0, has_mark(pool))
        # A round whose successors showed MARK somewhere keeps only parents whose
        # successor mean is highest; then the best answer is a marked one.
        if has_mark(pool).any():
            assert float(pool.reward_logits[int(result.best)]) > 15.0
    with pytest.raises(ValueError, match="look-ahead modulation is defined for"):
        particles.lm_particle_filter(
            jax.random.key(0),
            model,
            MARK_PROMPT,
            3,
            reward,
            num_particles=N,
            max_steps=STEPS,
            max_step_tokens=STEP_TOKENS,
            delimiter_id=DELIM,
            end_id=END,
            weighting="smc",
            lookahead=2,
        )


def test_majority_vote():
    answers = jnp.asarray([3, 1, 3, 1, 2, 1], jnp.int32)
    valid = jnp.asarray([True, True, True, False, True, True])
    assert int(particles.majority_vote(answers, valid)) == 1  # 1: twice valid, 3: twice -> 1
    assert int(particles.majority_vote(answers, valid.at[5].set(False))) == 3
    assert int(particles.majority_vote(answers, jnp.zeros(6, bool))) == -1


def test_errors(model):
    kwargs = dict(
        num_particles=N, max_steps=STEPS, max_step_tokens=STEP_TOKENS, delimiter_id=1, end_id=2
    )
    with pytest.raises(ValueError, match=r"exceeds the model's config\.max_length=16"):
        particles.lm_particle_filter(
            jax.random.key(0), model, MARK_PROMPT, 3, reward, **{**kwargs, "max_steps": 5}
        )
    with pytest.raises(ValueError, match="`weighting` must be one of"):
        particles.lm_particle_filter(
            jax.random.key(0), model, MARK_PROMPT, 3, reward, weighting="sum", **kwargs
        )
    with pytest.raises(ValueError, match="`prompt` must lie in"):
        particles.lm_particle_filter(
            jax.random.key(0), model, MARK_PROMPT.at[0].set(99), 3, reward, **kwargs
        )


# The contract: config + init/step/run. The "base" schedule with the gate open whenever the
# weights are not uniform gives T = 2 - progress, so the resumed rounds must carry the
# round index to get the same temperature as one run.
RUN_CONFIG = particles.LMParticleFilterConfig(
    num_particles=N,
    max_steps=STEPS,
    max_step_tokens=STEP_TOKENS,
    delimiter_id=DELIM,
    end_id=END,
    schedule="base",
    ess_threshold=1.0,
    early_phase=1.0,
)


@functools.partial(jax.jit, static_argnames=("config", "num_rounds"))
@chex.assert_max_traces(n=2)  # one per num_rounds used below (3 and 1)
def run_rounds(key, model, state, config, num_rounds):
    return particles.lm_run(
        key, model, None, None, reward, config, state=state, num_rounds=num_rounds
    )


def test_lm_run_resumes_from_its_state_and_compiles_once(model):
    """Three one-round runs, each continuing the last, equal three rounds at once (ePF)."""
    chex.clear_trace_counter()
    key = jax.random.key(1)
    start = particles.lm_init(key, model, SOFT_PROMPT, 3, RUN_CONFIG)
    assert int(start.round_index) == 0
    whole = run_rounds(key, model, start, RUN_CONFIG, STEPS)
    parts, state = [], start
    for _ in range(STEPS):  # three runs of one round, each continuing the last
        part = run_rounds(key, model, state, RUN_CONFIG, 1)
        parts.append(part.history)
        state = part.particles
    run_rounds(jax.random.key(2), model, start, RUN_CONFIG, STEPS)  # no retrace
    assert int(state.round_index) == STEPS
    np.testing.assert_allclose(parts[1].temperature[0], 2.0 - 2.0 / STEPS, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(whole.particles), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(particles.best_particle(state)) == int(whole.best)
    for name in ("ancestors", "temperature", "resampled", "ess"):
        joined = np.concatenate([np.asarray(getattr(h, name)) for h in parts])
        np.testing.assert_array_equal(joined, getattr(whole.history, name))


def out_of_range_reward(tokens, lengths):
    return reward(tokens, lengths) + 1.0  # 1.2 or 1.8 for the soft prompt: not in [0, 1]


def test_rewards_outside_unit_interval_are_an_error(model):
    """Rewards outside [0, 1] used to be clipped silently; now a ValueError naming them."""
    match = r"`reward_fn` must return rewards in \[0, 1\].*got values in \[1\.2"
    start = particles.lm_init(jax.random.key(0), model, SOFT_PROMPT, 3, RUN_CONFIG)
    with pytest.raises(ValueError, match=match):  # eager run: checked for the caller
        particles.lm_particle_filter(
            jax.random.key(0), model, SOFT_PROMPT, 3, out_of_range_reward,
            num_particles=N, max_steps=1, max_step_tokens=STEP_TOKENS, delimiter_id=DELIM,
            end_id=END,
        )  # fmt: skip
    checked_run = lookahead_jax.checked(
        lambda key, model, state: particles.lm_run(
            key, model, None, None, out_of_range_reward, RUN_CONFIG, state=state, num_rounds=1
        )
    )
    with pytest.raises(ValueError, match=match):  # under jit, with the checks on
        checked_run(jax.random.key(0), model, start)
