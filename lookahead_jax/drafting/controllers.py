"""Draft-length controllers: how many tokens each row drafts next (a traced value <= static K).

A controller is ``Controller(init, num_draft, update)``:
``state = init(batch_size, max_draft)``, ``k = num_draft(state, active)`` ([B] int32;
``active [B]`` bool marks the unfinished rows, ``None``: all),
``state = update(state, num_drafted, num_accepted)`` after each verification.

:func:`cost_aware` (the generation loop's default with a drafter) chooses the length
that maximises expected tokens per second under a measured or estimated cost model
(``drafting.CostModel``), plain decoding (0) included; with a tree drafter it decides
each round whether to draft the tree or take a plain step.

The factories below return controllers that compare and hash by their settings
(``heuristic(2) == heuristic(2)``), so a controller passed as a static argument of
``jax.jit`` reuses the compiled program instead of compiling a new one per call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Controller(NamedTuple):
    init: Callable[[int, int], Any]
    num_draft: Callable[..., jax.Array]  # (state, active [B] bool | None) -> [B] int32
    update: Callable[[Any, jax.Array, jax.Array], Any]
    # Tree controllers only: the sizes a tree may be cut to; ``update`` then takes
    # ``accepted_within [B, len(tree_sizes)]`` (-1 where not observed) as its third argument.
    tree_sizes: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class _Bound:
    """``functools.partial(fn, *settings)`` that compares and hashes by value."""

    fn: Callable[..., Any]
    settings: tuple[Any, ...] = ()

    def __call__(self, *args: Any) -> Any:
        return self.fn(*self.settings, *args)


def _identity(state: Any, active: jax.Array | None = None) -> Any:
    del active
    return state


def _keep(state: Any, num_drafted: jax.Array, num_accepted: jax.Array) -> Any:
    del num_drafted, num_accepted
    return state


def constant(num_draft: int | None = None) -> Controller:
    """Always draft ``num_draft`` tokens (default: the static maximum K)."""

    return Controller(
        init=_Bound(_constant_init, (num_draft,)), num_draft=_Bound(_identity), update=_Bound(_keep)
    )


def _constant_init(num_draft: int | None, batch_size: int, max_draft: int) -> jax.Array:
    k = max_draft if num_draft is None else min(num_draft, max_draft)
    if k < 0:
        raise ValueError(f"`num_draft` must be >= 0; got {num_draft!r}.")
    return jnp.full((batch_size,), k, jnp.int32)


def heuristic(
    initial: int = 5, minimum: int = 1, increase: int = 2, decrease: int = 1
) -> Controller:
    """HuggingFace's "heuristic" schedule: +2 after a fully accepted block, else -1 (>= 1).

    Each row keeps its own length, clipped to ``[minimum, K]``.
    """
    if not 0 <= minimum <= initial:
        raise ValueError(f"need 0 <= minimum <= initial; got minimum={minimum}, initial={initial}.")

    return Controller(
        init=_Bound(_heuristic_init, (initial,)),
        num_draft=_Bound(_identity),
        update=_Bound(_heuristic_update, (minimum, increase, decrease)),
    )


def _heuristic_init(initial: int, batch_size: int, max_draft: int) -> jax.Array:
    return jnp.full((batch_size,), min(initial, max_draft), jnp.int32)


def _heuristic_update(
    minimum: int,
    increase: int,
    decrease: int,
    state: jax.Array,
    num_drafted: jax.Array,
    num_accepted: jax.Array,
) -> jax.Array:
    # The static maximum is not needed: generate clips to it before drafting.
    all_accepted = num_accepted >= num_drafted
    step = jnp.where(all_accepted, increase, -decrease)
    return jnp.maximum(state + step, minimum).astype(jnp.int32)


class EmaState(NamedTuple):
    accepted: jax.Array  # [B] float32, EMA of accepted drafts per round


def ema(
    initial: int = 4,
    minimum: int = 1,
    decay: float = 0.7,
    margin: int = 1,
) -> Controller:
    """DiffuSpec-style adaptive draft length from an EMA of acceptance feedback.

    After each round ``ema <- decay * ema + (1 - decay) * num_accepted``; the next
    length is ``clip(ceil(ema) + margin, minimum, K)``: draft about as far as
    recent rounds got accepted, plus ``margin`` tokens to probe for more. Each
    row keeps its own EMA.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"`decay` must lie in [0, 1); got {decay!r}.")
    if not 0 <= minimum <= initial:
        raise ValueError(f"need 0 <= minimum <= initial; got minimum={minimum}, initial={initial}.")
    if not isinstance(margin, int) or margin < 0:
        raise ValueError(f"`margin` must be an int >= 0; got {margin!r}.")

    return Controller(
        init=_Bound(_ema_init, (initial, margin)),
        num_draft=_Bound(_ema_num_draft, (minimum, margin)),
        update=_Bound(_ema_update, (decay,)),
    )


def _ema_init(initial: int, margin: int, batch_size: int, max_draft: int) -> EmaState:
    start = jnp.full((batch_size,), float(min(initial, max_draft) - margin), jnp.float32)
    return EmaState(accepted=start)


def _ema_num_draft(minimum: int, margin: int, state: EmaState, active=None) -> jax.Array:
    del active
    length = jnp.round(state.accepted).astype(jnp.int32) + margin
    return jnp.maximum(length, minimum).astype(jnp.int32)


def _ema_update(
    decay: float, state: EmaState, num_drafted: jax.Array, num_accepted: jax.Array
) -> EmaState:
    del num_drafted
    return EmaState(decay * state.accepted + (1 - decay) * num_accepted.astype(jnp.float32))


class AcceptanceRateState(NamedTuple):
    accepted: jax.Array  # [B] float32, EMA of accepted draft tokens
    tested: jax.Array  # [B] float32, EMA of draft tokens the target examined
    lengths: jax.Array  # [B, K] float32, candidate draft lengths 1..K (carries K)


def expected_speedup(
    draft_cost: float,
    initial_rate: float = 0.6,
    decay: float = 0.9,
    minimum: int = 1,
) -> Controller:
    """DEL-style draft length: maximise expected tokens per unit of compute.

    With a per-token acceptance rate ``a`` (an EMA, estimated as accepted over
    examined drafts, where a round examines the accepted drafts plus the first
    rejected one) and a draft costing ``draft_cost`` target calls per token,
    ``d`` drafts give ``(1 - a^(d+1)) / (1 - a)`` tokens for ``d c + 1`` calls;
    the controller picks the ``d`` in ``[minimum, K]`` maximising their ratio.
    For an early exit after ``l`` of ``L`` layers, ``draft_cost = l / L``.
    """
    if not draft_cost >= 0:
        raise ValueError(f"`draft_cost` must be >= 0; got {draft_cost!r}.")
    if not 0 <= initial_rate <= 1:
        raise ValueError(f"`initial_rate` must lie in [0, 1]; got {initial_rate!r}.")
    if not 0 <= decay < 1:
        raise ValueError(f"`decay` must lie in [0, 1); got {decay!r}.")

    return Controller(
        init=_Bound(_speedup_init, (initial_rate,)),
        num_draft=_Bound(_speedup_num_draft, (draft_cost, minimum)),
        update=_Bound(_speedup_update, (decay,)),
    )


def _speedup_init(initial_rate: float, batch_size: int, max_draft: int) -> AcceptanceRateState:
    lengths = jnp.arange(1, max(max_draft, 1) + 1, dtype=jnp.float32)
    return AcceptanceRateState(
        accepted=jnp.full((batch_size,), initial_rate, jnp.float32),
        tested=jnp.ones((batch_size,), jnp.float32),
        lengths=jnp.broadcast_to(lengths, (batch_size, lengths.shape[0])),
    )


def _speedup_num_draft(
    draft_cost: float, minimum: int, state: AcceptanceRateState, active=None
) -> jax.Array:
    del active
    rate = jnp.clip(state.accepted / jnp.maximum(state.tested, 1e-6), 0.0, 1 - 1e-6)
    d = state.lengths
    tokens = (1 - rate[:, None] ** (d + 1)) / (1 - rate[:, None])
    speed = jnp.where(d >= minimum, tokens / (d * draft_cost + 1), -1.0)
    return jnp.take_along_axis(d, jnp.argmax(speed, axis=1)[:, None], axis=1)[:, 0].astype(
        jnp.int32
    )


def _speedup_update(
    decay: float, state: AcceptanceRateState, num_drafted: jax.Array, num_accepted: jax.Array
) -> AcceptanceRateState:
    tested = jnp.minimum(num_accepted + 1, num_drafted).astype(jnp.float32)
    return AcceptanceRateState(
        accepted=decay * state.accepted + (1 - decay) * num_accepted.astype(jnp.float32),
        tested=decay * state.tested + (1 - decay) * tested,
        lengths=state.lengths,
    )


# ---- the cost-aware controller: expected tokens per second, plain decoding included ----------


def chain_block_sizes(max_draft: int) -> tuple[int, ...]:
    """The draft lengths a round may score: 0 (a plain step), 1, 2, 4, ... and K.

    The generation loop compiles one target call per size and scores the smallest one
    that holds every row's drafts, so a round pays for what it drafted.
    """
    sizes, n = {0, max_draft}, 1
    while n < max_draft:
        sizes.add(n)
        n *= 2
    return tuple(sorted(sizes))


@dataclasses.dataclass(frozen=True)
class CostAware:
    """Settings of the cost-aware controller (see :func:`cost_aware`). Hashable."""

    costs: Any = None  # drafting.CostModel, or None: estimated from model sizes
    initial_rate: float = 0.6
    decay: float = 0.8
    probe_overhead: float = 0.03


def cost_aware(
    costs: Any = None,
    *,
    initial_rate: float = 0.6,
    decay: float = 0.8,
    probe_overhead: float = 0.03,
) -> CostAware:
    """Drafts what maximises expected tokens per second; 0 (a plain step) when nothing pays.

    Chains: each row keeps an EMA of its per-token acceptance ``a`` (accepted over
    examined drafts, a round examining its accepted drafts and the first rejected one);
    a draft of ``k`` yields ``(1 - a^(k+1)) / (1 - a)`` tokens. Every round the batch
    drafts the ``k`` in :func:`chain_block_sizes` that maximises the sum over unfinished
    rows of expected tokens over the round's cost ``costs.round_seconds(k)`` (one target
    call over ``k + 1`` tokens, the drafter's proposal and upkeep; ``k = 0``: a plain
    step). All rows draft the same ``k``: the call is as wide as its widest row anyway.

    Trees: every round verifies the tree's first ``n`` nodes (a subtree), ``n`` among
    :func:`tree_sizes` (the drafter's ``block_sizes``, else 0, 4, 8, ... N), chosen the
    same way from each row's EMA of the nodes it would have accepted at every ``n`` (the
    loop reports what each cut would have accepted); ``n = 0`` skips the drafter.

    After a stretch of rounds without drafting the batch drafts once (the smallest chain
    size; trees: the whole tree) to re-measure acceptance, so a
    text that becomes predictable is noticed. The stretch is as long as it takes for
    probes to cost at most ``probe_overhead`` of plain decoding's time:
    ``ceil(extra / probe_overhead)`` rounds for a probe that costs ``1 + extra`` plain
    steps.

    Greedy outputs never depend on the choice (every round is verified); sampled
    outputs keep the target's law. This is the generation loop's default whenever a
    drafter is given and no controller is.

    Args:
      costs: a ``drafting.CostModel`` (``calibrate_costs`` on the device, or
        ``estimate_costs``); ``None``: estimated from the models' sizes at trace time.
      initial_rate: the acceptance assumed before a row has drafted; for chains it stays
        in the estimate as one examined draft weighted ``decay`` (so a first round of one
        accepted draft does not read as certainty).
      decay: EMA decay of the acceptance statistics per round.
      probe_overhead: the share of time probes may cost while nothing pays (> 0).
    """
    if not 0 <= initial_rate <= 1:
        raise ValueError(f"`initial_rate` must lie in [0, 1]; got {initial_rate!r}.")
    if not 0 <= decay < 1:
        raise ValueError(f"`decay` must lie in [0, 1); got {decay!r}.")
    if not probe_overhead > 0:
        raise ValueError(f"`probe_overhead` must be > 0; got {probe_overhead!r}.")
    return CostAware(costs, float(initial_rate), float(decay), float(probe_overhead))


def _probe_interval(probe_seconds: float, plain_seconds: float, overhead: float) -> int:
    """Rounds between probes so that probing costs at most ``overhead`` of plain decoding."""
    extra = max(probe_seconds - plain_seconds, 0.0) / plain_seconds
    return max(1, math.ceil(extra / overhead - 1e-9))


class CostAwareState(NamedTuple):
    accepted: jax.Array  # [B] float32, EMA of accepted drafts per drafting round
    examined: jax.Array  # [B] float32, EMA of drafts the target examined per drafting round
    seen: jax.Array  # [B] bool, rows that drafted at least once (before: the prior)
    idle: jax.Array  # [B] int32, rounds since the row last drafted


def _cost_init(initial_rate: float, batch_size: int, max_draft: int):
    del max_draft
    full = functools.partial(jnp.full, (batch_size,), dtype=jnp.float32)
    return CostAwareState(
        accepted=full(initial_rate),
        examined=full(1.0),
        seen=jnp.zeros((batch_size,), bool),
        idle=jnp.zeros((batch_size,), jnp.int32),
    )


def _probe(state: CostAwareState, active, probe_every: int):
    idle = jnp.where(active, state.idle, probe_every)
    return jnp.any(active) & (jnp.min(idle) >= probe_every)


def _chain_num_draft(sizes, seconds, probe_every, state: CostAwareState, active=None):
    active = jnp.ones(state.idle.shape, bool) if active is None else active
    rate = jnp.clip(state.accepted / jnp.maximum(state.examined, 1e-6), 0.0, 1 - 1e-6)
    k = jnp.asarray(sizes, jnp.float32)[None, :]  # [1, S]
    tokens = (1 - rate[:, None] ** (k + 1)) / (1 - rate[:, None])  # [B, S]
    speed = jnp.sum(jnp.where(active[:, None], tokens, 0.0), axis=0) / jnp.asarray(seconds)
    choice = jnp.argmax(speed)
    # Sizes[1] is the smallest draft: a probe after a long stretch of plain steps.
    choice = jnp.where((choice == 0) & _probe(state, active, probe_every), 1, choice)
    return jnp.full(state.idle.shape, jnp.asarray(sizes, jnp.int32)[choice])


class TreeCostState(NamedTuple):
    accepted: jax.Array  # [B, S] float32, EMA of accepted nodes had the tree been cut at size s
    seen: jax.Array  # [B, S] bool, sizes observed at least once (before: the prior)
    idle: jax.Array  # [B] int32, rounds since the row last drafted


def _tree_init(num_sizes: int, initial: float, batch_size: int, max_draft: int):
    del max_draft
    # Sizes[0] = 0 (a plain step) accepts nothing. The prior decides the first round, as
    # for chains (a first probe of the whole tree cost a generation of 56 tokens 10-19%
    # where the tree does not pay, e.g. 8-11 plain rounds' worth on a CPU).
    accepted = jnp.full((batch_size, num_sizes), initial, jnp.float32).at[:, 0].set(0.0)
    seen = jnp.zeros((batch_size, num_sizes), bool)
    return TreeCostState(accepted, seen, jnp.zeros((batch_size,), jnp.int32))


def _tree_num_draft(sizes, seconds, probe_every, state: TreeCostState, active=None):
    active = jnp.ones(state.idle.shape, bool) if active is None else active
    tokens = jnp.sum(jnp.where(active[:, None], 1.0 + state.accepted, 0.0), axis=0)  # [S]
    choice = jnp.argmax(tokens / jnp.asarray(seconds, jnp.float32))
    probe = jnp.any(active) & (jnp.min(jnp.where(active, state.idle, probe_every)) >= probe_every)
    size = jnp.where(probe, sizes[-1], jnp.asarray(sizes, jnp.int32)[choice])
    return jnp.full(state.idle.shape, size, jnp.int32)


def _tree_update(decay, state: TreeCostState, num_drafted, accepted_within) -> TreeCostState:
    """``accepted_within [B, S]``: accepted nodes below each size (-1: size not observed)."""
    drafted = num_drafted > 0
    observed = drafted[:, None] & (accepted_within >= 0)
    value = accepted_within.astype(jnp.float32)
    # The first observation is averaged with the prior, which weighs `decay` of one round
    # (as for chains); later ones are averaged in.
    first = (decay * state.accepted + value) / (1 + decay)
    new = jnp.where(state.seen, decay * state.accepted + (1 - decay) * value, first)
    return TreeCostState(
        accepted=jnp.where(observed, new, state.accepted),
        seen=state.seen | observed,
        idle=jnp.where(drafted, 0, state.idle + 1).astype(jnp.int32),
    )


def _cost_update(decay, state: CostAwareState, num_drafted, num_accepted) -> CostAwareState:
    drafted = num_drafted > 0
    examined = jnp.minimum(num_accepted + 1, num_drafted).astype(jnp.float32)

    def ema(old, new):
        # The first observation is added to the prior, which weighs `decay` of one round
        # (a ratio of sums: a first probe that accepts its one draft moves a = 0.6 to 0.82,
        # where replacing the prior made it 1 and asked for the longest draft at once);
        # later ones are averaged in.
        new = jnp.where(state.seen, decay * old + (1 - decay) * new, decay * old + new)
        return jnp.where(drafted, new, old)

    return CostAwareState(
        accepted=ema(state.accepted, num_accepted.astype(jnp.float32)),
        examined=ema(state.examined, examined),
        seen=state.seen | drafted,
        idle=jnp.where(drafted, 0, state.idle + 1).astype(jnp.int32),
    )


def cost_aware_controller(settings: CostAware, costs: Any, max_draft: int) -> Controller:
    """The chain :class:`Controller` of ``settings`` with the cost model ``costs`` resolved."""
    sizes = chain_block_sizes(max_draft)
    seconds = tuple(float(s) for s in costs.round_seconds(sizes))
    probe_every = _probe_interval(
        seconds[min(1, len(sizes) - 1)], seconds[0], settings.probe_overhead
    )
    return Controller(
        init=_Bound(_cost_init, (settings.initial_rate,)),
        num_draft=_Bound(_chain_num_draft, (sizes, seconds, probe_every)),
        update=_Bound(_cost_update, (settings.decay,)),
    )


def tree_sizes(num_nodes: int, block_sizes=None) -> tuple[int, ...]:
    """The tree sizes a cost-aware round may cut a tree to: a drafter's own block sizes,
    else 0 (a plain step), 4, 8, 16, ... and ``num_nodes`` (its first nodes, a subtree)."""
    if block_sizes:
        return tuple(sorted({0, *block_sizes}))
    sizes, n = {0, num_nodes}, 4
    while n < num_nodes:
        sizes.add(n)
        n *= 2
    return tuple(sorted(sizes))


def tree_cost_aware_controller(
    settings: CostAware, costs: Any, num_nodes: int, block_sizes=None
) -> Controller:
    """The tree :class:`Controller` of ``settings``: how many of the tree's first nodes to
    verify, among :func:`tree_sizes` (0: a plain step).

    Each row keeps, per size, an EMA of the nodes it would have accepted had the tree been
    cut there (the loop reports them: a cut keeps a prefix-closed subtree, and the
    accepted path's nodes below the cut are what the cut tree accepts). A round costs
    ``costs.tree_round_seconds(size, num_nodes)``; the size with the most expected tokens
    per second wins. Its ``update`` takes ``accepted_within [B, S]``
    in place of ``num_accepted`` (``Controller.tree_sizes`` tells the loop).
    """
    sizes = tree_sizes(num_nodes, block_sizes)
    seconds = tuple(float(s) for s in costs.tree_round_seconds(sizes, num_nodes))
    probe_every = _probe_interval(seconds[-1], seconds[0], settings.probe_overhead)
    return Controller(
        init=_Bound(_tree_init, (len(sizes), 2 * settings.initial_rate)),
        num_draft=_Bound(_tree_num_draft, (sizes, seconds, probe_every)),
        update=_Bound(_tree_update, (settings.decay,)),
        tree_sizes=sizes,
    )


def _fixed_cut(size: int, state: jax.Array, active: jax.Array | None = None) -> jax.Array:
    del active
    return jnp.full(state.shape, size, jnp.int32)


def fixed_tree_cut(size: int, num_nodes: int, block_sizes=None) -> Controller:
    """A tree :class:`Controller` that verifies the tree's first ``size`` nodes every round
    (one of :func:`tree_sizes`; 0: every round plain): what ``calibrate_costs`` times."""
    sizes = tree_sizes(num_nodes, block_sizes)
    if size not in sizes:
        raise ValueError(f"`size` must be one of the tree sizes {sizes}; got {size!r}.")
    return Controller(
        init=_Bound(_constant_init, (0,)),  # unused: the cut is fixed
        num_draft=_Bound(_fixed_cut, (size,)),
        update=_Bound(_keep),
        tree_sizes=sizes,
    )
