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
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.sampling import Sampling


class LATRParams(NamedTuple):
    """Static parameters (hashable)."""

    num_rollouts: int = 8  # n
    top_m: int = 2  # m, candidates per step (the top-1 plus m - 1 possible branches)
    tau_abs: float = 0.25
    tau_rel: float = 0.15
    tau_ed: float = 0.4
    prune_window: int = 20  # r
    # The rollouts' own token while branching: "greedy" (the spec: top-1, so tau_abs = 1 is
    # greedy decoding) or "sample" (from `sampling`, so tau_abs = 1 is plain sampling).
    growth: str = "greedy"


DEFAULT_PARAMS = LATRParams()


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
    compute: common.Compute


def normalized_edit_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Levenshtein distance of ``a [..., r]`` and ``b [..., r]`` divided by ``r``."""
    r = a.shape[-1]
    lead = a.shape[:-1]
    cols = jnp.arange(r + 1)
    prev = jnp.broadcast_to(cols, (*lead, r + 1)).astype(jnp.int32)

    def row(prev, i):
        sub = (a[..., i][..., None] != b).astype(jnp.int32)  # [..., r]
        tmp = jnp.concatenate(
            [
                jnp.full((*lead, 1), i + 1, jnp.int32),
                jnp.minimum(prev[..., 1:] + 1, prev[..., :-1] + sub),
            ],
            axis=-1,
        )
        # Insertions within the row: cur[j] = min_k<=j tmp[k] + (j - k).
        cur = lax.cummin(tmp - cols, axis=tmp.ndim - 1) + cols
        return cur, None

    last, _ = lax.scan(row, prev, jnp.arange(r))
    return last[..., r].astype(jnp.float32) / r


def _check(model, params: LATRParams, eos_id, max_new_tokens) -> None:
    common.check_int("num_rollouts", params.num_rollouts, 1)
    common.check_int("top_m", params.top_m, 2, model.config.vocab_size)
    common.check_float("tau_abs", params.tau_abs, 0.0, 1.0)
    common.check_float("tau_rel", params.tau_rel, 0.0, 1.0)
    common.check_float("tau_ed", params.tau_ed, 0.0, 1.0)
    common.check_int("prune_window", params.prune_window, 1)
    if params.growth not in ("greedy", "sample"):
        raise ValueError(f"`growth` must be 'greedy' or 'sample'; got {params.growth!r}.")
    common.check_token("eos_id", eos_id, model.config.vocab_size)


def latr_init(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    *,
    params: LATRParams,
    max_new_tokens: int,
) -> LATRState:
    batch, width = prompt.shape
    n = params.num_rollouts
    logits, cache = common.prefill(model, prompt, prompt_lengths, width + max_new_tokens)
    slots = jnp.arange(n)[None, :]
    zeros = jnp.zeros((batch,), jnp.int32)
    return LATRState(
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
    model: Any,
    state: LATRState,
    keys: jax.Array,
    *,
    params: LATRParams,
    sampling: Sampling,
    eos_id: int | None = None,
) -> LATRState:
    """Prunes the children due for their check, then every live rollout emits one token
    (branching or sampling) and feeds it.

    ``keys`` is ``[B, n]`` from ``_strategy_common.lane_keys(key, B, n)``.
    """
    batch, n, max_new = state.generated.shape
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
    full = jnp.all(alive & checked, axis=1)
    handoff_now = full & ~state.sampling_mode
    sampling_mode = state.sampling_mode | full
    handoff_step = jnp.where(handoff_now, t, state.handoff_step)

    # 3. One token per live rollout: top-1 while branching (a sample with growth="sample"),
    #    a sample once handed off.
    m = params.top_m
    active = alive & ~state.done
    logits = state.next_logits.reshape(batch, n, -1)
    lp = jax.nn.log_softmax(logits, axis=-1)
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
        & (top_p[..., :1] - top_p < params.tau_rel)
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
    token_lp = jnp.take_along_axis(lp[rows, from_slot], token[..., None], axis=-1)[..., 0]
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
    return LATRState(
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


def latr(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    params: LATRParams = DEFAULT_PARAMS,
    sampling: Sampling = Sampling(temperature=1.0),
    eos_id: int | None = None,
    pad_id: int = 0,
) -> LATRResult:
    """Grows up to ``params.num_rollouts`` rollouts per prompt as a tree, in one compiled loop.

    Args:
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      key: PRNG key for the sampling phase (slot ``j`` of row ``b`` uses rollout
        ``j``'s keys of ``sample_rollouts``).
      max_new_tokens: tokens per rollout at most (static).
      params: ``LATRParams`` (n, m, tau_abs, tau_rel, tau_ed, r); static.
      sampling: the distribution after the hand-off (static).
      eos_id: ends a rollout (static; ``None``: never).

    Returns:
      ``LATRResult``: the group of rollouts (``valid`` marks the occupied slots)
      with their per-token log-probabilities, the tree (parent, birth) and counts.
    """
    batch, _ = common.check_prompts(model, prompt, prompt_lengths, max_new_tokens)
    _check(model, params, eos_id, max_new_tokens)
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    keys = common.lane_keys(key, batch, params.num_rollouts)
    state = latr_init(model, prompt, prompt_lengths, params=params, max_new_tokens=max_new_tokens)
    state = lax.while_loop(
        lambda s: jnp.any(s.alive & ~s.done),
        lambda s: latr_step(model, s, keys, params=params, sampling=sampling, eos_id=eos_id),
        state,
    )
    num_generated = jnp.where(state.alive, state.num_generated, 0)
    token_lp = jnp.where(
        jnp.arange(max_new_tokens) < num_generated[..., None], state.token_log_probs, 0.0
    )
    return LATRResult(
        tokens=common.assemble(prompt, prompt_lengths, state.generated, num_generated, pad_id),
        lengths=prompt_lengths[:, None] + num_generated,
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
