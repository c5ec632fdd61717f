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
used here is our formulation (see ``_lookahead_round``).

Contract: ``LMParticleFilterConfig`` (static), ``lm_init(key, model, prompt,
prompt_length, config) -> LMState``, ``lm_step(key, state, model, reward_fn, config) ->
(LMState, LMRoundInfo)`` and ``lm_run`` scanning it (it can continue from a state);
``lm_particle_filter`` is ``lm_run`` with keywords. Rewards outside [0, 1] are an
error, never clipped.

Finished particles (end marker or ``max_steps`` reached) stay in the pool with
their last reward and are not re-scored. Entropic annealing (``schedule``, see
``particles/entropic.py``) tempers only the resampling draw; the answer is
always selected with the untempered rewards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks, checks
from lookahead_jax import models as _models
from lookahead_jax.particles import entropic as _entropic
from lookahead_jax.particles import smc as _smc
from lookahead_jax.sampling import Sampling, sample

RewardFn = Callable[[jax.Array, jax.Array], jax.Array]
WEIGHTINGS = ("published", "smc")
REWARD_CLIP = 1e-7


class LMState(NamedTuple):
    """The particle pool between rounds (the filter's state)."""

    tokens: jax.Array  # [N, W] int32, prompt + generated tokens, pad past each length
    lengths: jax.Array  # [N] int32, tokens written per particle
    cache: _models.KVCache  # keys/values [L, N, W, KV, Dh], lengths [N] (= lengths)
    next_logits: jax.Array  # [N, V] float32, the model's logits for each particle's next token
    finished: jax.Array  # [N] bool, emitted the end marker or used max_steps steps
    steps: jax.Array  # [N] int32, reasoning steps completed
    reward_logits: jax.Array  # [N] float, logit of the last reward (0 before the first)
    log_weights: jax.Array  # [N] float, resampling log-weights (see `weighting`)
    round_index: jax.Array  # [] int32, rounds completed (drives the round key and progress)


# deprecated alias of LMState, kept for existing code
LMParticles = LMState


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

    particles: LMState  # the final state: pass as `state=` to `lm_run` to continue
    best: jax.Array  # [] int32, index of the highest final reward (finished ones first)
    history: LMRoundInfo  # leaves with a leading [num_rounds] axis (max_steps by default)


def logit_reward(reward: jax.Array) -> jax.Array:
    """``logit(clip(reward, 1e-7, 1 - 1e-7))`` in float32; NaN stays NaN (weight zero).

    The clip only keeps the valid endpoints 0 and 1 finite; rewards outside [0, 1] are
    rejected by the filter (``check_rewards``) before they get here.
    """
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


def check_rewards(rewards: jax.Array) -> None:
    """``reward_fn`` outputs must lie in [0, 1] or be NaN ("cannot score").

    Concrete: ``ValueError`` at once; traced: through ``lookahead_jax.checks`` (a
    ``ValueError`` under ``lookahead_jax.checked``, free under plain ``jit``).
    """
    rewards = jnp.asarray(rewards)
    valid = jnp.isnan(rewards) | ((rewards >= 0) & (rewards <= 1))
    checks.check_value(
        jnp.all(valid),
        "`reward_fn` must return rewards in [0, 1] (or NaN for 'cannot score'); "
        "got values in [{low}, {high}].",
        low=jnp.nanmin(rewards),
        high=jnp.nanmax(rewards),
    )


def _gather_particles(particles: LMState, ancestors: jax.Array) -> LMState:
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


@dataclasses.dataclass(frozen=True)
class LMParticleFilterConfig:
    """Static configuration of language-model particle filtering (hashable).

    Attributes:
      num_particles: N.
      max_steps: rounds, i.e. reasoning steps per particle at most.
      max_step_tokens: tokens per step at most. The buffer width is
        ``W = P + max_steps * max_step_tokens`` and must fit ``model.config.max_length``.
      delimiter_id: token that ends a step.
      end_id: token that ends a whole solution (the particle is then finished).
      sampling: how each token is drawn (default temperature 1).
      weighting: ``"published" | "smc"`` (module docstring).
      schedule: entropic annealing ``"none" | "ess" | "entropy" | "base"``: the
        entropic particle filter (ePF) is this filter with a schedule other than "none".
      resample_threshold: resample when ESS < threshold * N; 1.0 (default) resamples
        every round unless the weights are exactly uniform, like the reference.
      method: resampling method.
      ess_threshold, early_phase: the annealing gate (``entropic_temperature``).
      lookahead: M > 0 switches on look-ahead modulation with M successors per particle
        (``weighting="published"`` only). Our formulation: ``w + lookahead_weight *
        (agg - w)`` (see ``_lookahead_round``).
      lookahead_weight: lambda in [0, 1].
      lookahead_agg: ``"mean" | "max"`` over the successors' reward logits.
      pad_id: fills the buffer past each length.
    """

    num_particles: int
    max_steps: int
    max_step_tokens: int
    delimiter_id: int
    end_id: int
    sampling: Sampling = Sampling(temperature=1.0)
    weighting: str = "published"
    schedule: str = "none"
    resample_threshold: float = 1.0
    method: str = "systematic"
    ess_threshold: float = 0.5
    early_phase: float = 0.5
    lookahead: int = 0
    lookahead_weight: float = 0.5
    lookahead_agg: str = "mean"
    pad_id: int = 0

    def __post_init__(self):
        for name in ("num_particles", "max_steps", "max_step_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}; got {self.weighting!r}.")
        _entropic.check_schedule(self.schedule)
        _smc.check_threshold(self.resample_threshold)
        lookahead = self.lookahead
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"`lookahead` must be a non-negative int; got {lookahead!r}.")
        if lookahead and self.weighting != "published":
            raise ValueError(
                f"look-ahead modulation is defined for weighting='published'; "
                f"got {self.weighting!r}."
            )
        if self.lookahead_agg not in ("mean", "max"):
            raise ValueError(
                f"`lookahead_agg` must be 'mean' or 'max'; got {self.lookahead_agg!r}."
            )


def lm_init(
    key: jax.Array,
    model: _models.Model,
    prompt: jax.Array,
    prompt_length: jax.Array | int,
    config: LMParticleFilterConfig,
) -> LMState:
    """The pool before the first round: the prompt prefilled once per particle.

    Args:
      key: PRNG key, unused (the prefill is deterministic); taken for the library's
        key-first contract.
      model: any ``models.Model`` (callable like ``models.apply``).
      prompt: [P] int, the prompt left-aligned (``prompt_length`` real tokens).
      prompt_length: [] int in [1, P].
      config: :class:`LMParticleFilterConfig`.
    """
    del key
    model_config = model.config
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 1, "[max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, model_config.vocab_size)
    _checks.check_range("prompt_length", prompt_length, 1, jnp.shape(prompt)[0] + 1)
    width = jnp.shape(prompt)[0] + config.max_steps * config.max_step_tokens
    if width > model_config.max_length:
        raise ValueError(
            f"prompt width {jnp.shape(prompt)[0]} + `max_steps` * `max_step_tokens` "
            f"({config.max_steps} * {config.max_step_tokens}) = {width} exceeds the model's "
            f"config.max_length={model_config.max_length}."
        )
    n = config.num_particles
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_length = jnp.asarray(prompt_length, jnp.int32)
    positions = jnp.arange(width)[None, :]
    prompts = jnp.broadcast_to(prompt, (n, prompt.shape[0]))
    lengths = jnp.full((n,), prompt_length, jnp.int32)
    cache = _models.init_cache(model_config, n, width, dtype=getattr(model, "dtype", None))
    # Logits at the prompt's last token only ([N, 1, V], not [N, P, V]).
    logits, cache = model(prompts, cache, logits_at=(lengths - 1)[:, None])
    cache = _models.rewind(cache, lengths)
    tokens = jnp.where(
        positions < prompt_length,
        jnp.pad(prompts, ((0, 0), (0, width - prompt.shape[0]))),
        config.pad_id,
    )
    zeros = jnp.zeros((n,), jnp.float32)
    return LMState(
        tokens=tokens,
        lengths=lengths,
        cache=cache,
        next_logits=logits[:, 0].astype(jnp.float32),
        finished=jnp.zeros((n,), bool),
        steps=jnp.zeros((n,), jnp.int32),
        reward_logits=zeros,
        log_weights=zeros,
        round_index=jnp.zeros((), jnp.int32),
    )


def _extend(pool: LMState, key: jax.Array, model, config: LMParticleFilterConfig) -> LMState:
    """One reasoning step for every live particle (a fixed number of token slots)."""
    live = ~pool.finished
    count, width = pool.tokens.shape  # N, or N * M successors under look-ahead
    row_ids = jnp.arange(count)

    def token_step(carry, token_key):
        pool, step_done = carry
        active = live & ~step_done
        keys = jax.random.split(token_key, count)
        token = jax.vmap(lambda k, x: sample(k, x, config.sampling))(keys, pool.next_logits)
        logits, cache = model(token[:, None], pool.cache)
        # Inactive rows ran along (fixed shapes) but keep their cache length.
        cache = cache._replace(lengths=jnp.where(active, cache.lengths, pool.cache.lengths))
        write_at = jnp.where(active, pool.lengths, width)  # past the end: dropped
        pool = pool._replace(
            tokens=pool.tokens.at[row_ids, write_at].set(token, mode="drop"),
            lengths=pool.lengths + active,
            cache=cache,
            next_logits=jnp.where(active[:, None], logits[:, 0], pool.next_logits),
            finished=pool.finished | (active & (token == config.end_id)),
        )
        done = step_done | (active & ((token == config.delimiter_id) | (token == config.end_id)))
        return (pool, done), None

    (pool, _), _ = lax.scan(
        token_step,
        (pool, jnp.zeros((count,), bool)),
        jax.random.split(key, config.max_step_tokens),
    )
    steps = pool.steps + live
    return pool._replace(steps=steps, finished=pool.finished | (steps >= config.max_steps))


def _score(pool: LMState, live: jax.Array, reward_fn: RewardFn) -> jax.Array:
    """Reward logits after a step: re-scored where the particle moved, else kept."""
    rewards = reward_fn(pool.tokens, pool.lengths)
    check_rewards(rewards)
    return jnp.where(live, logit_reward(rewards), pool.reward_logits)


def _select(log_weights, index, key, config: LMParticleFilterConfig):
    """Tempered adaptive resampling."""
    temperature = _entropic.entropic_temperature(
        log_weights,
        (index + 1.0) / config.max_steps,
        schedule=config.schedule,
        ess_threshold=config.ess_threshold,
        early_phase=config.early_phase,
    )
    chosen = _smc.adaptive_resample(
        key,
        log_weights,
        resample_threshold=config.resample_threshold,
        method=config.method,
        selection_log_weights=log_weights / temperature,
    )
    return chosen, temperature


def _info(pool, chosen, resampled, ancestors, temperature):
    n = ancestors.shape[0]
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


def _plain_round(key, pool: LMState, model, reward_fn, config: LMParticleFilterConfig):
    n = config.num_particles
    index = pool.round_index
    move_key, resample_key = jax.random.split(key)
    live = ~pool.finished
    pool = _extend(pool, move_key, model, config)
    new_logits = _score(pool, live, reward_fn)
    if config.weighting == "published":
        log_weights = new_logits
    else:
        log_weights = pool.log_weights + jnp.where(live, new_logits - pool.reward_logits, 0.0)
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    pool = pool._replace(reward_logits=new_logits, log_weights=log_weights)
    chosen, temperature = _select(log_weights, index, resample_key, config)
    # Once nothing is live, resampling could only lose finished answers.
    resampled = chosen.resampled & jnp.any(~pool.finished)
    ancestors = jnp.where(resampled, chosen.ancestors, jnp.arange(n, dtype=jnp.int32))
    pool = _gather_particles(pool, ancestors)
    if config.weighting == "smc":
        pool = pool._replace(
            log_weights=jnp.where(resampled, 0.0, chosen.log_weights).astype(jnp.float32)
        )
    return pool, _info(pool, chosen, resampled, ancestors, temperature)


def _lookahead_round(key, pool: LMState, model, reward_fn, config: LMParticleFilterConfig):
    """Look-ahead modulation (our formulation; the ePF paper gives no formula).

    Every particle proposes M successor steps, scored by the reward; the resampling
    log-weight becomes w + lambda * (agg_j logit(s'_j) - w) with agg = mean or max over
    the M successors. Each resampled particle then continues from a uniformly chosen
    successor of its parent (the successors are reused as the next step, so a round
    costs one extension of N * M rows).
    """
    n, m = config.num_particles, config.lookahead
    index = pool.round_index
    move_key, resample_key, pick_key = jax.random.split(key, 3)
    live = ~pool.finished
    parents = jnp.repeat(jnp.arange(n, dtype=jnp.int32), m)  # [N * M]
    successors = _extend(_gather_particles(pool, parents), move_key, model, config)
    succ_rewards = _score(successors, live[parents], reward_fn)  # [N * M]
    successors = successors._replace(reward_logits=succ_rewards)
    succ_logits = jnp.where(jnp.isnan(succ_rewards), -jnp.inf, succ_rewards)
    grouped = succ_logits.reshape(n, m)
    reduce = jnp.max if config.lookahead_agg == "max" else jnp.mean
    agg = reduce(grouped, axis=1)
    base = jnp.where(jnp.isnan(pool.log_weights), -jnp.inf, pool.log_weights)
    # Before the first round every weight is 0 (nothing scored yet): same formula.
    modulated = jnp.where(live, base + config.lookahead_weight * (agg - base), base)
    modulated = jnp.where(jnp.isnan(modulated), -jnp.inf, modulated)
    chosen, temperature = _select(modulated, index, resample_key, config)
    resampled = chosen.resampled & jnp.any(live)
    ancestors = jnp.where(resampled, chosen.ancestors, jnp.arange(n, dtype=jnp.int32))
    pick = jax.random.randint(pick_key, (n,), 0, m)
    pool = _gather_particles(successors, ancestors * m + pick)
    # Published weighting: the chosen successor's reward is the new weight.
    pool = pool._replace(
        log_weights=jnp.where(jnp.isnan(pool.reward_logits), -jnp.inf, pool.reward_logits)
    )
    return pool, _info(pool, chosen, resampled, ancestors, temperature)


def lm_step(
    key: jax.Array,
    state: LMState,
    model: _models.Model,
    reward_fn: RewardFn,
    config: LMParticleFilterConfig,
) -> tuple[LMState, LMRoundInfo]:
    """One round: extend every live particle by a step, score, (tempered) resample.

    Args:
      key: PRNG key of this round (:func:`lm_run` uses ``split(key, max_steps)[round]``).
      state: :class:`LMState`; its ``round_index`` sets the annealing progress.
      model: any ``models.Model``.
      reward_fn: ``(tokens [N, W] int32, lengths [N] int32) -> rewards [N]`` in [0, 1]
        (jit-able, static). NaN means "cannot score": weight zero; if every reward is
        NaN the round falls back to uniform resampling and flags ``degenerate``.
        Rewards outside [0, 1] are an error (see :func:`check_rewards`).
      config: :class:`LMParticleFilterConfig` (static).
    Returns:
      ``(LMState, LMRoundInfo)``.
    """
    body = _lookahead_round if config.lookahead else _plain_round
    pool, info = body(key, state, model, reward_fn, config)
    return pool._replace(round_index=state.round_index + 1), info


def best_particle(state: LMState) -> jax.Array:
    """[] int32: the highest untempered reward, preferring finished particles."""
    final = jnp.where(jnp.isnan(state.reward_logits), -jnp.inf, state.reward_logits)
    eligible = state.finished | ~jnp.any(state.finished)
    return jnp.argmax(jnp.where(eligible, final, -jnp.inf)).astype(jnp.int32)


def _is_traced(*values) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values))


def lm_run(
    key: jax.Array,
    model: _models.Model,
    prompt: jax.Array,
    prompt_length: jax.Array | int,
    reward_fn: RewardFn,
    config: LMParticleFilterConfig,
    state: LMState | None = None,
    num_rounds: int | None = None,
) -> LMFilterResult:
    """Particle filtering over reasoning steps of a language model, as one ``lax.scan``.

    Args:
      key: PRNG key; round ``r`` uses ``split(key, max_steps)[r]`` whether it runs in
        one call or in a call continuing from ``state`` (pass the same key).
      model, prompt, prompt_length: as :func:`lm_init` (prompt unused with ``state``).
      reward_fn: as :func:`lm_step`.
      config: :class:`LMParticleFilterConfig` (static).
      state: continue from this state (a previous result's ``particles``); default:
        :func:`lm_init`.
      num_rounds: rounds to run (static); default ``max_steps`` (all of them).

    Returns:
      ``LMFilterResult``; ``tokens[best, :lengths[best]]`` is the answer. Called
      outside ``jit``, the reward check raises ``ValueError`` (the run goes through
      ``lookahead_jax.checked``); under ``jit``, wrap with ``checked`` to keep it.
    """
    if num_rounds is None:
        num_rounds = config.max_steps
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
        raise ValueError(f"`num_rounds` must be a positive int; got {num_rounds!r}.")
    if state is None:
        state = lm_init(key, model, prompt, prompt_length, config)

    def scan_rounds(key, state):
        keys = jax.random.split(key, config.max_steps)

        def body(state, _):
            round_key = keys[jnp.minimum(state.round_index, config.max_steps - 1)]
            return lm_step(round_key, state, model, reward_fn, config)

        state, history = lax.scan(body, state, None, length=num_rounds)
        return LMFilterResult(particles=state, best=best_particle(state), history=history)

    if _is_traced(key, state):
        return scan_rounds(key, state)
    # Eager call: the rewards are traced inside the scan; run the checks anyway.
    return checks.checked(scan_rounds, jit=False)(key, state)


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
    """:func:`lm_run` with the configuration as keywords (kept for existing code).

    Equal to ``lm_run(key, model, prompt, prompt_length, reward_fn,
    LMParticleFilterConfig(num_particles=..., ...))``; see
    :class:`LMParticleFilterConfig` for the keywords.
    """
    config = LMParticleFilterConfig(
        num_particles=num_particles,
        max_steps=max_steps,
        max_step_tokens=max_step_tokens,
        delimiter_id=delimiter_id,
        end_id=end_id,
        sampling=sampling,
        weighting=weighting,
        schedule=schedule,
        resample_threshold=resample_threshold,
        method=method,
        ess_threshold=ess_threshold,
        early_phase=early_phase,
        lookahead=lookahead,
        lookahead_weight=lookahead_weight,
        lookahead_agg=lookahead_agg,
        pad_id=pad_id,
    )
    return lm_run(key, model, prompt, prompt_length, reward_fn, config)
