"""First-Finish search: ``n`` samples in lockstep, stop at the first EOS, return that trace.

Agarwal et al. 2025 ("First Finish Search: Efficient Test-Time Scaling in Large
Language Models") observe that among parallel reasoning traces the shortest is
more often correct, so decoding can stop as soon as any trace finishes. It is
exactly "run all ``n`` to completion and keep the shortest" (ties: the lowest
rollout index) at the cost of ``n`` times the shortest trace instead of the sum
of all of them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.decoding.rollouts import sample_rollouts
from lookahead_jax.sampling import Sampling


class FirstFinish(NamedTuple):
    """The first trace to finish per prompt."""

    tokens: jax.Array  # [B, P + N] int32, prompt then the winning trace, pad_id after
    lengths: jax.Array  # [B] int32, prompt + generated tokens of the winner
    num_generated: jax.Array  # [B] int32, generated tokens of the winner (EOS included)
    winner: jax.Array  # [B] int32, rollout index of the winner (lowest among ties)
    finished: jax.Array  # [B] bool, some trace emitted EOS within the budget
    log_prob: jax.Array  # [B] float32, log-probability of the winning trace
    compute: common.Compute  # all n traces up to the stop


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
    """First-Finish search over ``num_samples`` sampled traces per prompt (one compiled loop).

    Samples are those of ``sample_rollouts(..., num_rollouts=num_samples)`` with
    the same key, stopped as soon as one of a prompt's traces emits ``eos_id``.
    When no trace ends within ``max_new_tokens``, trace 0 (at full length) is
    returned with ``finished = False``.
    """
    common.check_int("num_samples", num_samples, 1)
    common.check_token("eos_id", eos_id, model.config.vocab_size, optional=False)
    group = sample_rollouts(
        model,
        prompt,
        prompt_lengths,
        key,
        max_new_tokens=max_new_tokens,
        num_rollouts=num_samples,
        sampling=sampling,
        eos_id=eos_id,
        pad_id=pad_id,
        stop_at_first_eos=True,
    )
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
