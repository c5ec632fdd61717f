"""Draft-length controllers: how many tokens each row drafts next (a traced value <= static K).

A controller is ``Controller(init, num_draft, update)``:
``state = init(batch_size, max_draft)``, ``k = num_draft(state)`` ([B] int32),
``state = update(state, num_drafted, num_accepted)`` after each verification.

The factories below return controllers that compare and hash by their settings
(``heuristic(2) == heuristic(2)``), so a controller passed as a static argument of
``jax.jit`` reuses the compiled program instead of compiling a new one per call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Controller(NamedTuple):
    init: Callable[[int, int], Any]
    num_draft: Callable[[Any], jax.Array]
    update: Callable[[Any, jax.Array, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class _Bound:
    """``functools.partial(fn, *settings)`` that compares and hashes by value."""

    fn: Callable[..., Any]
    settings: tuple[Any, ...] = ()

    def __call__(self, *args: Any) -> Any:
        return self.fn(*self.settings, *args)


def _identity(state: Any) -> Any:
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


def _ema_num_draft(minimum: int, margin: int, state: EmaState) -> jax.Array:
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


def _speedup_num_draft(draft_cost: float, minimum: int, state: AcceptanceRateState) -> jax.Array:
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
