"""LATR, Lookahead Tree-Based Rollouts: a group of diverse rollouts grown as a tree.

Xing et al. 2025 ("Lookahead Tree-Based Rollouts for Enhanced Trajectory-Level
Exploration in Reinforcement Learning with Verifiable Rewards"). Up to ``n``
rollouts per prompt live in ``n`` slots and advance one token per step in
lockstep:

* **branching** (until the group is full): every rollout takes its top-1
  token (``growth="greedy"``, the default; ``growth="sample"`` samples it
  instead); each other top-``m`` candidate ``i`` with ``p_i > tau_abs`` and
  ``p_1 - p_i < tau_rel`` spawns a child rollout in a free slot (candidates in
  slot order, then rank order, into free slots in index order; none once no
  slot is free). The child copies its parent's prefix and KV cache and takes
  candidate ``i`` at its birth step;
* **lookahead pruning**: ``r`` steps after its birth, a child's tokens since
  birth are compared with its parent's over the same ``r`` positions; a child
  whose normalised edit distance to the parent is ``< tau_ed`` is dropped (its
  slot is freed). The check is skipped when either of them emitted EOS in the
  window, when the parent no longer exists, and for children born ``r`` or fewer
  steps before the budget ends (their window never completes);
* **hand-off**: once all ``n`` slots hold rollouts that passed (or are exempt
  from) their check, the group is full and every rollout continues with
  ordinary sampling (``sampling``) to the end.

With ``tau_abs = 1`` (and ``n >= 2``) nothing ever branches: the single
rollout is greedy decoding (plain sampling with ``growth="sample"``); with
``n = 1`` the group is full from the start, i.e. plain sampling (rollout 0 of
``sample_rollouts``, same keys). ``latr``
returns the group with per-token log-probabilities (the model's, at
temperature 1), ready for GRPO-style losses: a rollout generator.

Contract: ``LATRConfig``, ``latr_init(model, prompt, prompt_lengths, config) ->
LATRState``, ``latr_step(key, state, model, config) -> (LATRState, LATRInfo)``,
``latr_run(key, model, prompt, prompt_lengths, config) -> LATRResult``; ``latr`` is
the keyword form of ``latr_run``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import metrics
from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.metrics import normalized_edit_distance
from lookahead_jax.sampling import Sampling


@dataclasses.dataclass(frozen=True)
class LATRConfig:
    """Static settings of LATR (hashable: a static argument to ``jit``).

    Attributes:
      num_rollouts: n, slots per prompt.
      top_m: m, candidates per step (the top-1 plus m - 1 possible branches).
      tau_abs, tau_rel: the branching thresholds.
      tau_ed: children closer than this (normalised edit distance) are pruned.
      prune_window: r, steps after birth at which a child is checked.
      growth: the rollouts' own token while branching: "greedy" (the spec: top-1, so
        tau_abs = 1 is greedy decoding) or "sample" (from ``sampling``, so tau_abs = 1
        is plain sampling).
      rules: "paper" (as the paper's text and our spec: branch when ``p_1 - p_i <
        tau_rel``; hand off once every slot holds a checked rollout, for good) or
        "reference_code" (the authors' public code as read for issue 19: branch when
        ``p_1 - p_i > tau_rel``; hand off while every slot holds a rollout, checked or
        not, and resume branching when a pruned child frees a slot). A named variant
        for reproductions; ``experiments/fidelity_strategies.py`` compares the two.
      max_new_tokens: tokens per rollout at most.
      sampling: the distribution after the hand-off.
      eos_id: ends a rollout (``None``: never).
      pad_id: fills ``tokens`` past each length (and empty slots).
    """

    num_rollouts: int = 8
    top_m: int = 2
    tau_abs: float = 0.25
    tau_rel: float = 0.15
    tau_ed: float = 0.4
    prune_window: int = 20
    growth: str = "greedy"
    rules: str = "paper"
    max_new_tokens: int = 32
    sampling: Sampling = Sampling(temperature=1.0)
    eos_id: int | None = None
    pad_id: int = 0


# deprecated alias of LATRConfig, kept for existing code
LATRParams = LATRConfig
DEFAULT_PARAMS = LATRConfig()


class LATRResult(NamedTuple):
    tokens: jax.Array  # [B, n, P + N] int32, prompt then rollout, pad_id after (and empty slots)
    lengths: jax.Array  # [B, n] int32 (prompt length for empty slots)
    num_generated: jax.Array  # [B, n] int32 (0 for empty slots)
    valid: jax.Array  # [B, n] bool, the slot holds a rollout at the end
    token_log_probs: jax.Array  # [B, n, N] float32, model log p (temperature 1), 0 past it
    log_probs: jax.Array  # [B, n] float32, sum of token_log_probs
    parent: jax.Array  # [B, n] int32, slot of the parent at birth (-1: the root)
    birth: jax.Array  # [B, n] int32, generated index of the first own token (0: root)
    num_rollouts: jax.Array  # [B] int32, valid rollouts
    branches: jax.Array  # [B] int32, children ever born
    pruned: jax.Array  # [B] int32, children dropped by the lookahead check
    handoff_step: jax.Array  # [B] int32, step at which sampling took over (-1: never)
    compute: common.Compute


class LATRState(NamedTuple):
    prompt: jax.Array  # [B, P] int32
    prompt_lengths: jax.Array  # [B] int32
    generated: jax.Array  # [B, n, N] int32
    token_log_probs: jax.Array  # [B, n, N] float32
    num_generated: jax.Array  # [B, n] int32
    next_logits: jax.Array  # [B * n, V] float32
    cache: _models.KVCache  # [B * n] rows
    alive: jax.Array  # [B, n] bool, slot holds a rollout
    done: jax.Array  # [B, n] bool, rollout ended (EOS or budget)
    eos: jax.Array  # [B, n] bool
    parent: jax.Array  # [B, n] int32
    parent_uid: jax.Array  # [B, n] int32, uid of the parent at birth
    uid: jax.Array  # [B, n] int32, unique id of the slot's current rollout
    next_uid: jax.Array  # [B] int32
    birth: jax.Array  # [B, n] int32
    checked: jax.Array  # [B, n] bool, passed or exempt from the pruning check
    sampling_mode: jax.Array  # [B] bool, handed off to ordinary sampling
    handoff_step: jax.Array  # [B] int32
    branches: jax.Array  # [B] int32
    pruned: jax.Array  # [B] int32
    step: jax.Array  # [] int32
    compute: common.Compute  # [B] counters


class LATRInfo(NamedTuple):
    """What one step did (diagnostics, never fed back)."""

    tokens: jax.Array  # [B, n] int32, each slot's token (garbage where not active)
    active: jax.Array  # [B, n] bool, the slot wrote a token this step (children included)
    spawned: jax.Array  # [B, n] bool, a child was born in the slot this step
    dropped: jax.Array  # [B, n] bool, the slot's child was pruned this step
    sampling_mode: jax.Array  # [B] bool, the group has handed off to ordinary sampling


def _check_config(model, config: LATRConfig) -> None:
    common.check_budget(model, config.max_new_tokens, config.eos_id)
    common.check_int("num_rollouts", config.num_rollouts, 1)
    common.check_int("top_m", config.top_m, 2, model.config.vocab_size)
    common.check_float("tau_abs", config.tau_abs, 0.0, 1.0)
    common.check_float("tau_rel", config.tau_rel, 0.0, 1.0)
    common.check_float("tau_ed", config.tau_ed, 0.0, 1.0)
    common.check_int("prune_window", config.prune_window, 1)
    if config.growth not in ("greedy", "sample"):
        raise ValueError(f"`growth` must be 'greedy' or 'sample'; got {config.growth!r}.")
    if config.rules not in ("paper", "reference_code"):
        raise ValueError(f"`rules` must be 'paper' or 'reference_code'; got {config.rules!r}.")


def latr_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: LATRConfig
) -> LATRState:
    """Checks the inputs, prefills the prompts and places one root rollout per prompt."""
    _check_config(model, config)
    prompt, prompt_lengths = common.prepare_prompts(
        model, prompt, prompt_lengths, config.max_new_tokens
    )
    batch, width = prompt.shape
    n, max_new_tokens = config.num_rollouts, config.max_new_tokens
    logits, cache = common.prefill(model, prompt, prompt_lengths, width + max_new_tokens)
    slots = jnp.arange(n)[None, :]
    zeros = jnp.zeros((batch,), jnp.int32)
    return LATRState(
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        generated=jnp.zeros((batch, n, max_new_tokens), jnp.int32),
        token_log_probs=jnp.zeros((batch, n, max_new_tokens), jnp.float32),
        num_generated=jnp.zeros((batch, n), jnp.int32),
        next_logits=jnp.repeat(logits.astype(jnp.float32), n, axis=0),
        cache=common.repeat_rows(cache, n),
        alive=jnp.broadcast_to(slots == 0, (batch, n)),
        done=jnp.zeros((batch, n), bool),
        eos=jnp.zeros((batch, n), bool),
        parent=jnp.full((batch, n), -1, jnp.int32),
        parent_uid=jnp.full((batch, n), -1, jnp.int32),
        uid=jnp.zeros((batch, n), jnp.int32),
        next_uid=jnp.ones((batch,), jnp.int32),
        birth=jnp.zeros((batch, n), jnp.int32),
        checked=jnp.ones((batch, n), bool),
        sampling_mode=jnp.zeros((batch,), bool),
        handoff_step=jnp.full((batch,), -1, jnp.int32),
        branches=zeros,
        pruned=zeros,
        step=jnp.zeros((), jnp.int32),
        compute=common.Compute(jnp.ones((batch,), jnp.int32), prompt_lengths),
    )


def latr_step(
    key: jax.Array, state: LATRState, model: Any, config: LATRConfig
) -> tuple[LATRState, LATRInfo]:
    """Prunes the children due for their check, then every live rollout emits one token
    (branching or sampling) and feeds it.

    ``key`` is the run's key (the same at every step): slot ``j`` of row ``b`` uses
    rollout ``j``'s keys of ``sample_rollouts`` at the step's token index.
    """
    params, sampling, eos_id = config, config.sampling, config.eos_id
    batch, n, max_new = state.generated.shape
    keys = common.lane_keys(key, batch, n)
    r = params.prune_window
    t = state.step
    rows = jnp.arange(batch)[:, None]
    slots = jnp.arange(n)[None, :]

    # 1. Lookahead pruning of the children whose window [birth, birth + r) just completed.
    due = state.alive & ~state.checked & (t - state.birth == r)
    par = jnp.clip(state.parent, 0, n - 1)
    parent_here = state.alive[rows, par] & (state.uid[rows, par] == state.parent_uid)
    window = state.birth[..., None] + jnp.arange(r)  # [B, n, r]
    window = jnp.clip(window, 0, max_new - 1)
    mine = jnp.take_along_axis(state.generated, window, axis=-1)
    theirs = jnp.take_along_axis(state.generated[rows, par], window, axis=-1)
    ended = state.eos | state.eos[rows, par] | (state.num_generated[rows, par] < state.birth + r)
    distance = normalized_edit_distance(mine, theirs)
    drop = due & parent_here & ~ended & (distance < params.tau_ed)
    alive = state.alive & ~drop
    checked = state.checked | due
    pruned = state.pruned + jnp.sum(drop, axis=1, dtype=jnp.int32)

    # 2. Hand-off once all n slots hold checked rollouts.
    code_rules = params.rules == "reference_code"
    full = jnp.all(alive if code_rules else alive & checked, axis=1)
    handoff_now = full & ~state.sampling_mode
    sampling_mode = full if code_rules else state.sampling_mode | full
    handoff_step = jnp.where(handoff_now, t, state.handoff_step)

    # 3. One token per live rollout: top-1 while branching (a sample with growth="sample"),
    #    a sample once handed off.
    m = params.top_m
    active = alive & ~state.done
    logits = state.next_logits.reshape(batch, n, -1)
    lp = metrics.log_softmax(logits)
    top_lp, top_tok = lax.top_k(lp, m)  # [B, n, m]
    top_tok = top_tok.astype(jnp.int32)
    top_p = jnp.exp(top_lp)
    sampled, _ = common.draw(common.token_keys(keys, t), logits, sampling)
    own = top_tok[..., 0] if params.growth == "greedy" else sampled
    token = jnp.where(sampling_mode[:, None], sampled, own)

    # 4. Branch candidates: top-m tokens other than the rollout's own, into free slots.
    cand = (
        active[..., None]
        & ~sampling_mode[:, None, None]
        & (top_tok != own[..., None])
        & (top_p > params.tau_abs)
        & (
            (top_p[..., :1] - top_p > params.tau_rel)
            if code_rules
            else (top_p[..., :1] - top_p < params.tau_rel)
        )
    )  # [B, n, m]; with greedy growth rank 0 is the rollout's own token
    flat = cand.reshape(batch, -1)
    num_cand = jnp.sum(flat, axis=1)
    order = jnp.argsort(~flat, axis=1, stable=True)  # true candidates first, in order
    free = ~alive
    free_rank = jnp.cumsum(free, axis=1) - 1
    spawn = free & (free_rank < num_cand[:, None])  # [B, n]
    src = order[rows, jnp.clip(free_rank, 0, n * m - 1)]
    src_parent, src_rank = src // m, src % m
    src_parent = jnp.where(spawn, src_parent, slots)
    child_token = top_tok[rows, src_parent, src_rank]
    token = jnp.where(spawn, child_token, token)

    from_slot = jnp.where(spawn, src_parent, slots)
    generated = state.generated[rows, from_slot]
    token_lp_buf = state.token_log_probs[rows, from_slot]
    num_generated = state.num_generated[rows, from_slot]
    eos = jnp.where(spawn, False, state.eos)
    writer = active | spawn
    index = jnp.where(writer, t, max_new)
    generated = generated.at[rows, slots, index].set(token, mode="drop")
    token_lp = metrics.token_log_probs(lp[rows, from_slot], token)
    token_lp_buf = token_lp_buf.at[rows, slots, index].set(token_lp, mode="drop")
    num_generated = num_generated + writer
    if eos_id is not None:
        eos = eos | (writer & (token == eos_id))
    alive = alive | spawn
    done = jnp.where(spawn, False, state.done) | eos | (writer & (num_generated >= max_new))
    uid = jnp.where(spawn, state.next_uid[:, None] + jnp.cumsum(spawn, axis=1) - 1, state.uid)
    parent_uid = jnp.where(spawn, state.uid[rows, src_parent], state.parent_uid)

    def copy_caches(_):
        index = (jnp.arange(batch)[:, None] * n + from_slot).reshape(-1)
        return common.take_rows(state.cache, index)

    cache = lax.cond(jnp.any(spawn), copy_caches, lambda _: state.cache, None)
    cont = writer & ~done
    next_logits, cache = common.feed(model, cache, token.reshape(-1), cont.reshape(-1))
    next_logits = jnp.where(cont.reshape(-1, 1), next_logits, state.next_logits)
    new_state = state._replace(
        generated=generated,
        token_log_probs=token_lp_buf,
        num_generated=num_generated,
        next_logits=next_logits,
        cache=cache,
        alive=alive,
        done=done,
        eos=eos,
        parent=jnp.where(spawn, src_parent, state.parent),
        parent_uid=parent_uid,
        uid=uid,
        next_uid=state.next_uid + jnp.sum(spawn, axis=1, dtype=jnp.int32),
        birth=jnp.where(spawn, t, state.birth),
        checked=jnp.where(spawn, t + r >= max_new, checked),
        sampling_mode=sampling_mode,
        handoff_step=handoff_step,
        branches=state.branches + jnp.sum(spawn, axis=1, dtype=jnp.int32),
        pruned=pruned,
        step=t + 1,
        compute=common.Compute(
            state.compute.model_calls + jnp.any(cont, axis=1),
            state.compute.tokens_evaluated + jnp.sum(cont, axis=1, dtype=jnp.int32),
        ),
    )
    info = LATRInfo(
        tokens=token, active=writer, spawned=spawn, dropped=drop, sampling_mode=sampling_mode
    )
    return new_state, info


def latr_result(state: LATRState, config: LATRConfig) -> LATRResult:
    """The ``LATRResult`` of a (finished) state."""
    num_generated = jnp.where(state.alive, state.num_generated, 0)
    token_lp = jnp.where(
        jnp.arange(config.max_new_tokens) < num_generated[..., None], state.token_log_probs, 0.0
    )
    return LATRResult(
        tokens=common.assemble(
            state.prompt, state.prompt_lengths, state.generated, num_generated, config.pad_id
        ),
        lengths=state.prompt_lengths[:, None] + num_generated,
        num_generated=num_generated,
        valid=state.alive,
        token_log_probs=token_lp,
        log_probs=jnp.sum(token_lp, axis=-1),
        parent=jnp.where(state.alive, state.parent, -1),
        birth=state.birth,
        num_rollouts=jnp.sum(state.alive, axis=1, dtype=jnp.int32),
        branches=state.branches,
        pruned=state.pruned,
        handoff_step=state.handoff_step,
        compute=state.compute,
    )


def latr_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: LATRConfig,
) -> LATRResult:
    """Grows up to ``config.num_rollouts`` rollouts per prompt as a tree, in one compiled loop.

    Args:
      key: PRNG key for the sampling phase (slot ``j`` of row ``b`` uses rollout
        ``j``'s keys of ``sample_rollouts``).
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      config: ``LATRConfig`` (static).

    Returns:
      ``LATRResult``: the group of rollouts (``valid`` marks the occupied slots)
      with their per-token log-probabilities, the tree (parent, birth) and counts.
    """
    state = latr_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: jnp.any(s.alive & ~s.done), lambda s: latr_step(key, s, model, config)[0], state
    )
    return latr_result(state, config)


def latr(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    params: LATRConfig = DEFAULT_PARAMS,
    sampling: Sampling = Sampling(temperature=1.0),
    eos_id: int | None = None,
    pad_id: int = 0,
) -> LATRResult:
    """The keyword form of ``latr_run``: ``params``' algorithm settings with
    ``max_new_tokens``, ``sampling``, ``eos_id`` and ``pad_id`` from the keywords."""
    config = dataclasses.replace(
        params, max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id, pad_id=pad_id
    )
    return latr_run(key, model, prompt, prompt_lengths, config)
