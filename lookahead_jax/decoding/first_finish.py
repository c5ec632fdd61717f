"""First-Finish search: ``n`` samples in lockstep, stop at the first EOS, return that trace.

Agarwal et al. 2025 ("First Finish Search: Efficient Test-Time Scaling in Large
Language Models") observe that among parallel reasoning traces the shortest is
more often correct, so decoding can stop as soon as any trace finishes. It is
exactly "run all ``n`` to completion and keep the shortest" (ties: the lowest
rollout index) at the cost of ``n`` times the shortest trace instead of the sum
of all of them.

Contract: ``FirstFinishConfig``, ``first_finish_init(model, prompt, prompt_lengths,
config) -> FirstFinishState``, ``first_finish_step(key, state, model, config) ->
(FirstFinishState, FirstFinishInfo)``, ``first_finish_run(key, model, prompt,
prompt_lengths, config) -> FirstFinish``. The state and info are those of the
plain rollouts (``rollouts.py``) with ``stop_at_first_eos``; ``first_finish`` is
the keyword form of ``first_finish_run``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.decoding import rollouts as _rollouts
from lookahead_jax.sampling import Sampling

FirstFinishState = _rollouts.RolloutState
FirstFinishInfo = _rollouts.RolloutInfo


@dataclasses.dataclass(frozen=True)
class FirstFinishConfig:
    """Static settings of First-Finish search (hashable).

    Attributes:
      num_samples: traces per prompt.
      max_new_tokens: tokens per trace at most.
      eos_id: the token that finishes a trace (required).
      sampling: the distribution the traces sample from.
      pad_id: fills ``FirstFinish.tokens`` past the winner's length.
    """

    num_samples: int = 4
    max_new_tokens: int = 32
    eos_id: int | None = None
    sampling: Sampling = Sampling(temperature=1.0)
    pad_id: int = 0

    def rollouts(self) -> _rollouts.RolloutConfig:
        """The lockstep-rollout config this search runs."""
        return _rollouts.RolloutConfig(
            num_rollouts=self.num_samples,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            stop_at_first_eos=True,
        )


class FirstFinish(NamedTuple):
    """The first trace to finish per prompt."""

    tokens: jax.Array  # [B, P + N] int32, prompt then the winning trace, pad_id after
    lengths: jax.Array  # [B] int32, prompt + generated tokens of the winner
    num_generated: jax.Array  # [B] int32, generated tokens of the winner (EOS included)
    winner: jax.Array  # [B] int32, rollout index of the winner (lowest among ties)
    finished: jax.Array  # [B] bool, some trace emitted EOS within the budget
    log_prob: jax.Array  # [B] float32, log-probability of the winning trace
    compute: common.Compute  # all n traces up to the stop


def _check_config(model: Any, config: FirstFinishConfig) -> None:
    common.check_int("num_samples", config.num_samples, 1)
    common.check_token("eos_id", config.eos_id, model.config.vocab_size, optional=False)


def first_finish_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: FirstFinishConfig
) -> FirstFinishState:
    """Checks the inputs and prefills ``num_samples`` lanes per prompt."""
    _check_config(model, config)
    return _rollouts.rollout_init(model, prompt, prompt_lengths, config.rollouts())


def first_finish_step(
    key: jax.Array, state: FirstFinishState, model: Any, config: FirstFinishConfig
) -> tuple[FirstFinishState, FirstFinishInfo]:
    """One token per unfinished trace; a prompt's traces all stop once one emits EOS."""
    return _rollouts.rollout_step(key, state, model, config.rollouts())


def first_finish_result(state: FirstFinishState, config: FirstFinishConfig) -> FirstFinish:
    """The winning trace per prompt of a (finished) state."""
    group = _rollouts.rollout_result(state, config.rollouts())
    finished = jnp.any(group.ended_with_eos, axis=1)
    winner = jnp.where(finished, jnp.argmax(group.ended_with_eos, axis=1), 0).astype(jnp.int32)
    rows = jnp.arange(winner.shape[0])
    return FirstFinish(
        tokens=group.tokens[rows, winner],
        lengths=group.lengths[rows, winner],
        num_generated=group.num_generated[rows, winner],
        winner=winner,
        finished=finished,
        log_prob=group.log_probs[rows, winner],
        compute=group.compute,
    )


def first_finish_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: FirstFinishConfig,
) -> FirstFinish:
    """First-Finish search over ``num_samples`` sampled traces per prompt (one compiled loop).

    Samples are those of ``sample_rollouts(..., num_rollouts=num_samples)`` with
    the same key, stopped as soon as one of a prompt's traces emits ``eos_id``.
    When no trace ends within ``max_new_tokens``, trace 0 (at full length) is
    returned with ``finished = False``.
    """
    state = first_finish_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: ~jnp.all(s.done), lambda s: first_finish_step(key, s, model, config)[0], state
    )
    return first_finish_result(state, config)


def first_finish(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    num_samples: int = 4,
    eos_id: int,
    sampling: Sampling = Sampling(temperature=1.0),
    pad_id: int = 0,
) -> FirstFinish:
    """The keyword form of ``first_finish_run`` (same outputs for the same key)."""
    config = FirstFinishConfig(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        sampling=sampling,
        pad_id=pad_id,
    )
    return first_finish_run(key, model, prompt, prompt_lengths, config)
