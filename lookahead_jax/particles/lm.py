"""Particle filtering for language-model inference-time scaling, as one compiled ``lax.scan``.

Particles are partial generations in a fixed-size token buffer. Each round
extends every live particle by one *step* (sampled tokens up to a delimiter, an
end marker, or a per-step token cap) with any model callable like
``models.apply``; a process reward function scores every prefix; the particles
are resampled. After ``max_steps`` rounds the answer is the particle with the
highest final reward (Puri et al. 2025, "A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods").

Weightings (``weighting``):

* ``"published"``: the log-weight is ``logit(clip(reward, 1e-7, 1 - 1e-7))``,
  *replaced* every round (the reference implementation).
* ``"smc"``: the SMC-correct increment: the log-weight grows by
  ``logit(reward_t) - logit(reward_{t-1})`` and is reset to 0 by resampling.

Look-ahead modulation (``lookahead=M``, ePF's second ingredient) scores a
particle by M sampled successor steps; the paper gives no formula, so the one
used here is our formulation (see ``lm_particle_filter``).

Finished particles (end marker or ``max_steps`` reached) stay in the pool with
their last reward and are not re-scored. Entropic annealing (``schedule``, see
``particles/entropic.py``) tempers only the resampling draw; the answer is
always selected with the untempered rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks
from lookahead_jax import models as _models
from lookahead_jax.particles import entropic as _entropic
from lookahead_jax.particles import smc as _smc
from lookahead_jax.sampling import Sampling, sample

RewardFn = Callable[[jax.Array, jax.Array], jax.Array]
WEIGHTINGS = ("published", "smc")
REWARD_CLIP = 1e-7


class LMParticles(NamedTuple):
    """The particle pool between rounds."""

    tokens: jax.Array  # [N, W] int32, prompt + generated tokens, pad past each length
    lengths: jax.Array  # [N] int32, tokens written per particle
    cache: _models.KVCache  # keys/values [L, N, W, KV, Dh], lengths [N] (= lengths)
    next_logits: jax.Array  # [N, V] float32, the model's logits for each particle's next token
    finished: jax.Array  # [N] bool, emitted the end marker or used max_steps steps
    steps: jax.Array  # [N] int32, reasoning steps completed
    reward_logits: jax.Array  # [N] float, logit of the last reward (0 before the first)
    log_weights: jax.Array  # [N] float, resampling log-weights (see `weighting`)


class LMRoundInfo(NamedTuple):
    """Diagnostics of one round (stacked over rounds: leading axis max_steps)."""

    ancestors: jax.Array  # [N] int32, arange(N) when not resampled
    resampled: jax.Array  # [] bool
    ess: jax.Array  # [] float, ESS of the untempered log-weights before resampling
    temperature: jax.Array  # [] float, the resampling temperature (1 without annealing)
    degenerate: jax.Array  # [] bool, every log-weight was -inf/NaN: uniform fallback
    num_unique: jax.Array  # [] int32, distinct particles kept (diversity after resampling)
    num_finished: jax.Array  # [] int32, finished particles after the round


class LMFilterResult(NamedTuple):
    """The final pool, the selected answer and the per-round history."""

    particles: LMParticles
    best: jax.Array  # [] int32, index of the highest final reward (finished ones first)
    history: LMRoundInfo  # leaves with a leading [max_steps] axis


def logit_reward(reward: jax.Array) -> jax.Array:
    """``logit(clip(reward, 1e-7, 1 - 1e-7))``; NaN stays NaN (weight zero downstream)."""
    r = jnp.clip(reward.astype(jnp.float32), REWARD_CLIP, 1.0 - REWARD_CLIP)
    return jnp.log(r) - jnp.log1p(-r)


def majority_vote(answers: jax.Array, valid: jax.Array) -> jax.Array:
    """The most frequent value of ``answers [N]`` int among ``valid [N]`` bool (ties: smallest).

    Returns ``[] int32``; -1 when nothing is valid.
    """
    _checks.check_integer("answers", answers)
    _checks.check_rank("answers", answers, 1, "one answer per particle")
    _checks.check_shape("valid", valid, jnp.shape(answers), "one flag per answer")
    same = (answers[:, None] == answers[None, :]) & valid[None, :]
    votes = jnp.where(valid, jnp.sum(same, axis=1), -1)
    top = jnp.max(votes)
    # Among the answers with the most votes, the smallest value.
    big = jnp.iinfo(jnp.int32).max
    winner = jnp.min(jnp.where(valid & (votes == top), answers, big))
    return jnp.where(top > 0, winner, -1).astype(jnp.int32)


def _gather_particles(particles: LMParticles, ancestors: jax.Array) -> LMParticles:
    cache = particles.cache
    return particles._replace(
        tokens=particles.tokens[ancestors],
        lengths=particles.lengths[ancestors],
        cache=cache._replace(
            keys=cache.keys[:, ancestors],
            values=cache.values[:, ancestors],
            lengths=cache.lengths[ancestors],
        ),
        next_logits=particles.next_logits[ancestors],
        finished=particles.finished[ancestors],
        steps=particles.steps[ancestors],
        reward_logits=particles.reward_logits[ancestors],
        log_weights=particles.log_weights[ancestors],
    )


def lm_particle_filter(
    key: jax.Array,
    model: _models.Model,
    prompt: jax.Array,
    prompt_length: jax.Array | int,
    reward_fn: RewardFn,
    *,
    num_particles: int,
    max_steps: int,
    max_step_tokens: int,
    delimiter_id: int,
    end_id: int,
    sampling: Sampling = Sampling(temperature=1.0),
    weighting: str = "published",
    schedule: str = "none",
    resample_threshold: float = 1.0,
    method: str = "systematic",
    ess_threshold: float = 0.5,
    early_phase: float = 0.5,
    lookahead: int = 0,
    lookahead_weight: float = 0.5,
    lookahead_agg: str = "mean",
    pad_id: int = 0,
) -> LMFilterResult:
    """Particle filtering over reasoning steps of a language model, in one compiled program.

    Args:
      key: PRNG key.
      model: any ``models.Model`` (callable like ``models.apply``).
      prompt: [P] int, the prompt left-aligned (``prompt_length`` real tokens).
      prompt_length: [] int in [1, P].
      reward_fn: ``(tokens [N, W] int32, lengths [N] int32) -> rewards [N]`` in [0, 1],
        the process reward of every prefix (jit-able, static). NaN means "cannot
        score": weight zero; if every reward is NaN the round falls back to uniform
        resampling and flags ``degenerate``.
      num_particles: N (static).
      max_steps: rounds, i.e. reasoning steps per particle at most (static).
      max_step_tokens: tokens per step at most (static). The buffer width is
        ``W = P + max_steps * max_step_tokens`` and must fit ``model.config.max_length``.
      delimiter_id: token that ends a step (static).
      end_id: token that ends a whole solution (the particle is then finished).
      sampling: how each token is drawn (static; default temperature 1).
      weighting: ``"published" | "smc"`` (static; module docstring).
      schedule: entropic annealing ``"none" | "ess" | "entropy" | "base"`` (static).
      resample_threshold: resample when ESS < threshold * N; 1.0 (default) resamples
        every round unless the weights are exactly uniform, like the reference.
      method: resampling method (static).
      ess_threshold, early_phase: the annealing gate (``entropic_temperature``).
      lookahead: M > 0 switches on look-ahead modulation with M successors per
        particle (static; ``weighting="published"`` only). Our formulation, see
        ``lookahead_round`` below: ``w + lookahead_weight * (agg - w)``.
      lookahead_weight: lambda in [0, 1].
      lookahead_agg: ``"mean" | "max"`` over the successors' reward logits (static).
      pad_id: fills the buffer past each length.

    Returns:
      ``LMFilterResult``; ``tokens[best, :lengths[best]]`` is the answer.
    """
    config = model.config
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 1, "[max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, config.vocab_size)
    _checks.check_range("prompt_length", prompt_length, 1, jnp.shape(prompt)[0] + 1)
    for name, value in (
        ("num_particles", num_particles),
        ("max_steps", max_steps),
        ("max_step_tokens", max_step_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {WEIGHTINGS}; got {weighting!r}.")
    _entropic.check_schedule(schedule)
    _smc.check_threshold(resample_threshold)
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise ValueError(f"`lookahead` must be a non-negative int; got {lookahead!r}.")
    if lookahead and weighting != "published":
        raise ValueError(
            f"look-ahead modulation is defined for weighting='published'; got {weighting!r}."
        )
    if lookahead_agg not in ("mean", "max"):
        raise ValueError(f"`lookahead_agg` must be 'mean' or 'max'; got {lookahead_agg!r}.")
    width = jnp.shape(prompt)[0] + max_steps * max_step_tokens
    if width > config.max_length:
        raise ValueError(
            f"prompt width {jnp.shape(prompt)[0]} + `max_steps` * `max_step_tokens` "
            f"({max_steps} * {max_step_tokens}) = {width} exceeds the model's "
            f"config.max_length={config.max_length}."
        )
    n = num_particles
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_length = jnp.asarray(prompt_length, jnp.int32)
    positions = jnp.arange(width)[None, :]

    # Prefill the prompt once per particle (every row is the same prompt).
    prompts = jnp.broadcast_to(prompt, (n, prompt.shape[0]))
    lengths = jnp.full((n,), prompt_length, jnp.int32)
    cache = _models.init_cache(config, n, width, dtype=getattr(model, "dtype", None))
    logits, cache = model(prompts, cache)
    cache = _models.rewind(cache, lengths)
    tokens = jnp.where(
        positions < prompt_length, jnp.pad(prompts, ((0, 0), (0, width - prompt.shape[0]))), pad_id
    )
    zeros = jnp.zeros((n,), jnp.float32)
    pool = LMParticles(
        tokens=tokens,
        lengths=lengths,
        cache=cache,
        next_logits=logits[:, prompt_length - 1].astype(jnp.float32),
        finished=jnp.zeros((n,), bool),
        steps=jnp.zeros((n,), jnp.int32),
        reward_logits=zeros,
        log_weights=zeros,
    )

    def extend(pool: LMParticles, key: jax.Array) -> LMParticles:
        """One reasoning step for every live particle (a fixed number of token slots)."""
        live = ~pool.finished
        count = pool.tokens.shape[0]  # N, or N * M successors under look-ahead
        row_ids = jnp.arange(count)

        def token_step(carry, token_key):
            pool, step_done = carry
            active = live & ~step_done
            keys = jax.random.split(token_key, count)
            token = jax.vmap(lambda k, x: sample(k, x, sampling))(keys, pool.next_logits)
            logits, cache = model(token[:, None], pool.cache)
            # Inactive rows ran along (fixed shapes) but keep their cache length.
            cache = cache._replace(lengths=jnp.where(active, cache.lengths, pool.cache.lengths))
            write_at = jnp.where(active, pool.lengths, width)  # past the end: dropped
            pool = pool._replace(
                tokens=pool.tokens.at[row_ids, write_at].set(token, mode="drop"),
                lengths=pool.lengths + active,
                cache=cache,
                next_logits=jnp.where(active[:, None], logits[:, 0], pool.next_logits),
                finished=pool.finished | (active & (token == end_id)),
            )
            done = step_done | (active & ((token == delimiter_id) | (token == end_id)))
            return (pool, done), None

        (pool, _), _ = lax.scan(
            token_step, (pool, jnp.zeros((count,), bool)), jax.random.split(key, max_step_tokens)
        )
        steps = pool.steps + live
        return pool._replace(steps=steps, finished=pool.finished | (steps >= max_steps))

    def score(pool: LMParticles, live: jax.Array) -> jax.Array:
        """Reward logits after a step: re-scored where the particle moved, else kept."""
        new_logits = logit_reward(reward_fn(pool.tokens, pool.lengths))
        return jnp.where(live, new_logits, pool.reward_logits)

    def select(log_weights, index, key):
        """Tempered adaptive resampling; never once nothing is live."""
        temperature = _entropic.entropic_temperature(
            log_weights,
            (index + 1.0) / max_steps,
            schedule=schedule,
            ess_threshold=ess_threshold,
            early_phase=early_phase,
        )
        chosen = _smc.adaptive_resample(
            key,
            log_weights,
            resample_threshold=resample_threshold,
            method=method,
            selection_log_weights=log_weights / temperature,
        )
        return chosen, temperature

    def info_for(pool, chosen, resampled, ancestors, temperature):
        kept = jnp.zeros((n,), jnp.int32).at[ancestors].set(1)
        return LMRoundInfo(
            ancestors=ancestors,
            resampled=resampled,
            ess=chosen.ess,
            temperature=temperature,
            degenerate=chosen.degenerate,
            num_unique=jnp.sum(kept),
            num_finished=jnp.sum(pool.finished).astype(jnp.int32),
        )

    def round_(pool: LMParticles, inputs):
        index, key = inputs
        move_key, resample_key = jax.random.split(key)
        live = ~pool.finished
        pool = extend(pool, move_key)
        new_logits = score(pool, live)
        if weighting == "published":
            log_weights = new_logits
        else:
            log_weights = pool.log_weights + jnp.where(live, new_logits - pool.reward_logits, 0.0)
        log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
        pool = pool._replace(reward_logits=new_logits, log_weights=log_weights)
        chosen, temperature = select(log_weights, index, resample_key)
        # Once nothing is live, resampling could only lose finished answers.
        resampled = chosen.resampled & jnp.any(~pool.finished)
        ancestors = jnp.where(resampled, chosen.ancestors, jnp.arange(n, dtype=jnp.int32))
        pool = _gather_particles(pool, ancestors)
        if weighting == "smc":
            pool = pool._replace(
                log_weights=jnp.where(resampled, 0.0, chosen.log_weights).astype(jnp.float32)
            )
        return pool, info_for(pool, chosen, resampled, ancestors, temperature)

    def lookahead_round(pool: LMParticles, inputs):
        """Look-ahead modulation (our formulation; the ePF paper gives no formula).

        Every particle proposes M successor steps, scored by the reward; the
        resampling log-weight becomes w + lambda * (agg_j logit(s'_j) - w) with
        agg = mean or max over the M successors. Each resampled particle then
        continues from a uniformly chosen successor of its parent (the successors
        are reused as the next step, so a round costs one extension of N * M rows).
        """
        index, key = inputs
        move_key, resample_key, pick_key = jax.random.split(key, 3)
        live = ~pool.finished
        parents = jnp.repeat(jnp.arange(n, dtype=jnp.int32), lookahead)  # [N * M]
        successors = extend(_gather_particles(pool, parents), move_key)
        succ_rewards = score(successors, live[parents])  # [N * M]
        successors = successors._replace(reward_logits=succ_rewards)
        succ_logits = jnp.where(jnp.isnan(succ_rewards), -jnp.inf, succ_rewards)
        grouped = succ_logits.reshape(n, lookahead)
        agg = jnp.max(grouped, axis=1) if lookahead_agg == "max" else jnp.mean(grouped, axis=1)
        base = jnp.where(jnp.isnan(pool.log_weights), -jnp.inf, pool.log_weights)
        # Before the first round every weight is 0 (nothing scored yet): same formula.
        modulated = jnp.where(live, base + lookahead_weight * (agg - base), base)
        modulated = jnp.where(jnp.isnan(modulated), -jnp.inf, modulated)
        chosen, temperature = select(modulated, index, resample_key)
        resampled = chosen.resampled & jnp.any(live)
        ancestors = jnp.where(resampled, chosen.ancestors, jnp.arange(n, dtype=jnp.int32))
        pick = jax.random.randint(pick_key, (n,), 0, lookahead)
        pool = _gather_particles(successors, ancestors * lookahead + pick)
        # Published weighting: the chosen successor's reward is the new weight.
        pool = pool._replace(
            log_weights=jnp.where(jnp.isnan(pool.reward_logits), -jnp.inf, pool.reward_logits)
        )
        return pool, info_for(pool, chosen, resampled, ancestors, temperature)

    keys = jax.random.split(key, max_steps)
    body = lookahead_round if lookahead else round_
    pool, history = lax.scan(body, pool, (jnp.arange(max_steps), keys))
    # The answer: highest untempered reward, preferring finished particles.
    final = jnp.where(jnp.isnan(pool.reward_logits), -jnp.inf, pool.reward_logits)
    eligible = pool.finished | ~jnp.any(pool.finished)
    best = jnp.argmax(jnp.where(eligible, final, -jnp.inf)).astype(jnp.int32)
    return LMFilterResult(particles=pool, best=best, history=history)
