"""Plain sampling of ``n`` rollouts per prompt in lockstep: one ``lax.while_loop``.

The baseline of every lookahead strategy (greedy with ``Sampling()``, ancestral
sampling with a temperature) and the engine of First-Finish search. Rollout
``j`` of prompt ``b`` draws its ``i``-th token with the key
``fold_in(fold_in(split(key, B)[b], j), i)`` (see ``_strategy_common``), so
rollout 0 is *the* plain sample of a prompt that other strategies reproduce
when they fall back to plain sampling.

Contract: ``RolloutConfig``, ``rollout_init(model, prompt, prompt_lengths, config)
-> RolloutState``, ``rollout_step(key, state, model, config) -> (RolloutState,
RolloutInfo)``, ``rollout_run(key, model, prompt, prompt_lengths, config) ->
Rollouts``; ``sample_rollouts`` is the keyword form of ``rollout_run``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.sampling import Sampling


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static settings of plain lockstep rollouts (hashable: a static argument to ``jit``).

    Attributes:
      num_rollouts: rollouts per prompt.
      max_new_tokens: tokens generated per rollout at most.
      sampling: the sampling distribution; ``Sampling()`` is greedy.
      eos_id: a rollout ends after emitting it (``None``: never).
      pad_id: fills ``Rollouts.tokens`` past each length.
      stop_at_first_eos: stop *every* rollout of a prompt as soon as one of them
        emits ``eos_id`` (First-Finish search).
    """

    num_rollouts: int = 1
    max_new_tokens: int = 32
    sampling: Sampling = Sampling(temperature=1.0)
    eos_id: int | None = None
    pad_id: int = 0
    stop_at_first_eos: bool = False


class Rollouts(NamedTuple):
    """A group of rollouts per prompt."""

    tokens: jax.Array  # [B, n, P + N] int32, prompt then rollout, pad_id past each length
    lengths: jax.Array  # [B, n] int32, prompt + generated tokens
    num_generated: jax.Array  # [B, n] int32, generated tokens (EOS included)
    token_log_probs: jax.Array  # [B, n, N] float32, log p of each generated token (0 past it)
    log_probs: jax.Array  # [B, n] float32, sum of token_log_probs
    ended_with_eos: jax.Array  # [B, n] bool, the rollout's last token is eos_id
    compute: common.Compute


class RolloutState(NamedTuple):
    """Carried state of the lockstep loop (lanes are rows ``b * n + j`` of the model batch)."""

    prompt: jax.Array  # [B, P] int32, the prompts
    prompt_lengths: jax.Array  # [B] int32
    generated: jax.Array  # [B, n, N] int32 generated tokens
    token_log_probs: jax.Array  # [B, n, N] float32
    num_generated: jax.Array  # [B, n] int32
    next_logits: jax.Array  # [B * n, V] float32, logits of each lane's next token
    cache: _models.KVCache  # [B * n] rows, every committed token of each lane
    done: jax.Array  # [B, n] bool
    eos: jax.Array  # [B, n] bool, the lane emitted eos_id
    step: jax.Array  # [] int32, generated tokens so far (lanes move in lockstep)
    compute: common.Compute  # [B] counters


class RolloutInfo(NamedTuple):
    """What one step did (diagnostics, never fed back)."""

    tokens: jax.Array  # [B, n] int32, the token each lane drew (garbage where not active)
    log_probs: jax.Array  # [B, n] float32, its log p under the sampling distribution
    active: jax.Array  # [B, n] bool, the lane drew a token this step


def _check_config(model: Any, config: RolloutConfig) -> None:
    common.check_budget(model, config.max_new_tokens, config.eos_id)
    common.check_int("num_rollouts", config.num_rollouts, 1)
    if config.stop_at_first_eos and config.eos_id is None:
        raise ValueError("`stop_at_first_eos=True` needs an `eos_id`; got eos_id=None.")


def rollout_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: RolloutConfig
) -> RolloutState:
    """Checks the inputs, prefills the prompts once and copies them to ``num_rollouts`` lanes."""
    _check_config(model, config)
    prompt, prompt_lengths = common.prepare_prompts(
        model, prompt, prompt_lengths, config.max_new_tokens
    )
    batch, width = prompt.shape
    n, max_new = config.num_rollouts, config.max_new_tokens
    logits, cache = common.prefill(model, prompt, prompt_lengths, width + max_new)
    return RolloutState(
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        generated=jnp.zeros((batch, n, max_new), jnp.int32),
        token_log_probs=jnp.zeros((batch, n, max_new), jnp.float32),
        num_generated=jnp.zeros((batch, n), jnp.int32),
        next_logits=jnp.repeat(logits.astype(jnp.float32), n, axis=0),
        cache=common.repeat_rows(cache, n),
        done=jnp.zeros((batch, n), bool),
        eos=jnp.zeros((batch, n), bool),
        step=jnp.zeros((), jnp.int32),
        compute=common.Compute(
            model_calls=jnp.ones((batch,), jnp.int32), tokens_evaluated=prompt_lengths
        ),
    )


def rollout_step(
    key: jax.Array, state: RolloutState, model: Any, config: RolloutConfig
) -> tuple[RolloutState, RolloutInfo]:
    """Every unfinished lane draws one token; lanes that continue feed it to the model.

    ``key`` is the run's key (the same at every step; the token index is folded in).
    """
    batch, n, max_new = state.generated.shape
    keys = common.lane_keys(key, batch, n)
    active = ~state.done  # [B, n]
    logits = state.next_logits.reshape(batch, n, -1)
    tokens, lp = common.draw(common.token_keys(keys, state.step), logits, config.sampling)
    write = jnp.where(active, state.step, max_new)
    rows, lanes = jnp.arange(batch)[:, None], jnp.arange(n)[None, :]
    generated = state.generated.at[rows, lanes, write].set(tokens, mode="drop")
    token_lp = state.token_log_probs.at[rows, lanes, write].set(lp, mode="drop")
    num_generated = state.num_generated + active
    eos = state.eos
    if config.eos_id is not None:
        eos = eos | (active & (tokens == config.eos_id))
    done = state.done | eos | (num_generated >= max_new)
    if config.stop_at_first_eos:
        done = done | jnp.any(eos, axis=1, keepdims=True)
    # Lanes that go on need the next distribution: one call over one token each.
    cont = active & ~done
    next_logits, cache = common.feed(model, state.cache, tokens.reshape(-1), cont.reshape(-1))
    next_logits = jnp.where(cont.reshape(-1, 1), next_logits, state.next_logits)
    compute = common.Compute(
        model_calls=state.compute.model_calls + jnp.any(cont, axis=1),
        tokens_evaluated=state.compute.tokens_evaluated + jnp.sum(cont, axis=1, dtype=jnp.int32),
    )
    new_state = state._replace(
        generated=generated,
        token_log_probs=token_lp,
        num_generated=num_generated,
        next_logits=next_logits,
        cache=cache,
        done=done,
        eos=eos,
        step=state.step + 1,
        compute=compute,
    )
    return new_state, RolloutInfo(tokens=tokens, log_probs=lp, active=active)


def rollout_result(state: RolloutState, config: RolloutConfig) -> Rollouts:
    """The ``Rollouts`` of a (finished) state."""
    return Rollouts(
        tokens=common.assemble(
            state.prompt, state.prompt_lengths, state.generated, state.num_generated, config.pad_id
        ),
        lengths=state.prompt_lengths[:, None] + state.num_generated,
        num_generated=state.num_generated,
        token_log_probs=state.token_log_probs,
        log_probs=jnp.sum(state.token_log_probs, axis=-1),
        ended_with_eos=state.eos,
        compute=state.compute,
    )


def rollout_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: RolloutConfig,
) -> Rollouts:
    """``rollout_init`` then ``rollout_step`` until every lane is done (one ``while_loop``).

    Args:
      key: PRNG key (see the module docstring for how it is split).
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int, left-aligned prompts; ``prompt_lengths`` [B] in [1, P].
      config: ``RolloutConfig`` (static).

    Returns:
      ``Rollouts`` with the tokens, per-token log-probabilities (under the
      sampling distribution; temperature 1 when greedy) and the compute spent.
    """
    state = rollout_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: ~jnp.all(s.done), lambda s: rollout_step(key, s, model, config)[0], state
    )
    return rollout_result(state, config)


def sample_rollouts(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    num_rollouts: int = 1,
    sampling: Sampling = Sampling(temperature=1.0),
    eos_id: int | None = None,
    pad_id: int = 0,
    stop_at_first_eos: bool = False,
) -> Rollouts:
    """Samples ``num_rollouts`` independent continuations of each prompt, in one compiled loop.

    The keyword form of ``rollout_run`` (same outputs for the same key); the arguments
    are the fields of ``RolloutConfig``.
    """
    config = RolloutConfig(
        num_rollouts=num_rollouts,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_id=eos_id,
        pad_id=pad_id,
        stop_at_first_eos=stop_at_first_eos,
    )
    return rollout_run(key, model, prompt, prompt_lengths, config)
