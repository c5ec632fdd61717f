"""Draft-length controllers: how many tokens each row drafts next (a traced value <= static K).

A controller is ``Controller(init, num_draft, update)``:
``state = init(batch_size, max_draft)``, ``k = num_draft(state)`` ([B] int32),
``state = update(state, num_drafted, num_accepted)`` after each verification.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Controller(NamedTuple):
    init: Callable[[int, int], Any]
    num_draft: Callable[[Any], jax.Array]
    update: Callable[[Any, jax.Array, jax.Array], Any]


def constant(num_draft: int | None = None) -> Controller:
    """Always draft ``num_draft`` tokens (default: the static maximum K)."""

    def init(batch_size: int, max_draft: int) -> jax.Array:
        k = max_draft if num_draft is None else min(num_draft, max_draft)
        if k < 0:
            raise ValueError(f"`num_draft` must be >= 0; got {num_draft!r}.")
        return jnp.full((batch_size,), k, jnp.int32)

    return Controller(init=init, num_draft=lambda state: state, update=lambda s, d, a: s)


def heuristic(
    initial: int = 5, minimum: int = 1, increase: int = 2, decrease: int = 1
) -> Controller:
    """HuggingFace's "heuristic" schedule: +2 after a fully accepted block, else -1 (>= 1).

    Each row keeps its own length, clipped to ``[minimum, K]``.
    """
    if not 0 <= minimum <= initial:
        raise ValueError(f"need 0 <= minimum <= initial; got minimum={minimum}, initial={initial}.")

    def init(batch_size: int, max_draft: int) -> jax.Array:
        return jnp.full((batch_size,), min(initial, max_draft), jnp.int32)

    def update(state: jax.Array, num_drafted: jax.Array, num_accepted: jax.Array) -> jax.Array:
        # The static maximum is not needed: generate clips to it before drafting.
        all_accepted = num_accepted >= num_drafted
        step = jnp.where(all_accepted, increase, -decrease)
        return jnp.maximum(state + step, minimum).astype(jnp.int32)

    return Controller(init=init, num_draft=lambda state: state, update=update)
