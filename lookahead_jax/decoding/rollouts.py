"""Plain sampling of ``n`` rollouts per prompt in lockstep: one ``lax.while_loop``.

The baseline of every lookahead strategy (greedy with ``Sampling()``, ancestral
sampling with a temperature) and the engine of First-Finish search. Rollout
``j`` of prompt ``b`` draws its ``i``-th token with the key
``fold_in(fold_in(split(key, B)[b], j), i)`` (see ``_strategy_common``), so
rollout 0 is *the* plain sample of a prompt that other strategies reproduce
when they fall back to plain sampling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.sampling import Sampling


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

    generated: jax.Array  # [B, n, N] int32 generated tokens
    token_log_probs: jax.Array  # [B, n, N] float32
    num_generated: jax.Array  # [B, n] int32
    next_logits: jax.Array  # [B * n, V] float32, logits of each lane's next token
    cache: _models.KVCache  # [B * n] rows, every committed token of each lane
    done: jax.Array  # [B, n] bool
    eos: jax.Array  # [B, n] bool, the lane emitted eos_id
    step: jax.Array  # [] int32, generated tokens so far (lanes move in lockstep)
    compute: common.Compute


def rollout_init(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    *,
    num_rollouts: int,
    max_new_tokens: int,
) -> RolloutState:
    """Prefills the prompts once and copies them to ``num_rollouts`` lanes each."""
    batch, width = prompt.shape
    logits, cache = common.prefill(model, prompt, prompt_lengths, width + max_new_tokens)
    n = num_rollouts
    return RolloutState(
        generated=jnp.zeros((batch, n, max_new_tokens), jnp.int32),
        token_log_probs=jnp.zeros((batch, n, max_new_tokens), jnp.float32),
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
    model: Any,
    state: RolloutState,
    keys: jax.Array,
    *,
    sampling: Sampling,
    eos_id: int | None,
    stop_at_first_eos: bool,
) -> RolloutState:
    """Every unfinished lane draws one token; lanes that continue feed it to the model."""
    batch, n, max_new = state.generated.shape
    active = ~state.done  # [B, n]
    logits = state.next_logits.reshape(batch, n, -1)
    tokens, lp = common.draw(common.token_keys(keys, state.step), logits, sampling)
    write = jnp.where(active, state.step, max_new)
    rows, lanes = jnp.arange(batch)[:, None], jnp.arange(n)[None, :]
    generated = state.generated.at[rows, lanes, write].set(tokens, mode="drop")
    token_lp = state.token_log_probs.at[rows, lanes, write].set(lp, mode="drop")
    num_generated = state.num_generated + active
    eos = state.eos
    if eos_id is not None:
        eos = eos | (active & (tokens == eos_id))
    done = state.done | eos | (num_generated >= max_new)
    if stop_at_first_eos:
        done = done | jnp.any(eos, axis=1, keepdims=True)
    # Lanes that go on need the next distribution: one call over one token each.
    cont = active & ~done
    next_logits, cache = common.feed(model, state.cache, tokens.reshape(-1), cont.reshape(-1))
    next_logits = jnp.where(cont.reshape(-1, 1), next_logits, state.next_logits)
    compute = common.Compute(
        model_calls=state.compute.model_calls + jnp.any(cont, axis=1),
        tokens_evaluated=state.compute.tokens_evaluated + jnp.sum(cont, axis=1, dtype=jnp.int32),
    )
    return RolloutState(
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

    Args:
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int, left-aligned prompts; ``prompt_lengths`` [B] in [1, P].
      key: PRNG key (see the module docstring for how it is split).
      max_new_tokens: tokens generated per rollout at most (static).
      num_rollouts: rollouts per prompt (static).
      sampling: the sampling distribution; ``Sampling()`` is greedy.
      eos_id: a rollout ends after emitting it (static; ``None``: never).
      pad_id: fills ``tokens`` past each length.
      stop_at_first_eos: stop *every* rollout of a prompt as soon as one of them
        emits ``eos_id`` (First-Finish search; see ``first_finish``).

    Returns:
      ``Rollouts`` with the tokens, per-token log-probabilities (under the
      sampling distribution; temperature 1 when greedy) and the compute spent.
    """
    batch, _ = common.check_prompts(model, prompt, prompt_lengths, max_new_tokens)
    common.check_int("num_rollouts", num_rollouts, 1)
    common.check_token("eos_id", eos_id, model.config.vocab_size)
    if stop_at_first_eos and eos_id is None:
        raise ValueError("`stop_at_first_eos=True` needs an `eos_id`; got eos_id=None.")
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    keys = common.lane_keys(key, batch, num_rollouts)
    state = rollout_init(
        model, prompt, prompt_lengths, num_rollouts=num_rollouts, max_new_tokens=max_new_tokens
    )
    state = lax.while_loop(
        lambda s: ~jnp.all(s.done),
        lambda s: rollout_step(
            model, s, keys, sampling=sampling, eos_id=eos_id, stop_at_first_eos=stop_at_first_eos
        ),
        state,
    )
    return Rollouts(
        tokens=common.assemble(
            prompt, prompt_lengths, state.generated, state.num_generated, pad_id
        ),
        lengths=prompt_lengths[:, None] + state.num_generated,
        num_generated=state.num_generated,
        token_log_probs=state.token_log_probs,
        log_probs=jnp.sum(state.token_log_probs, axis=-1),
        ended_with_eos=state.eos,
        compute=state.compute,
    )
