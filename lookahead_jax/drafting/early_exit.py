"""Early-exit self-speculation (DEL-style): the first layers draft, the whole target verifies.

``early_exit_model(target, l)`` is the target cut after ``l`` of its ``L`` blocks,
read out through the target's own final LayerNorm and tied head; it drafts
like any draft model (``early_exit`` = ``draft_model`` of it). No extra
weights. The exit keeps its own KV cache for its ``l`` layers (a catch-up of
one or two committed tokens per round) rather than sharing the target's; in the
generation loop that cache starts as a copy of the target's first ``l`` layers after
the prefill and is copied from them again when plain rounds left it behind.

The exit depth and draft length are chosen as DEL does, from per-layer
acceptance estimates ``a_l`` (how often exit ``l``'s greedy token equals the
target's): expected tokens per round ``(1 - a^(d+1)) / (1 - a)`` over its cost
``d l + L`` in layer evaluations, maximised over ``(l, d)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.drafting.base import Drafter
from lookahead_jax.drafting.draft_model import DraftModelState, check_capacity, draft_model


def early_exit_model(target: _models.Model, num_layers: int) -> _models.Model:
    """The first ``num_layers`` blocks of ``target`` with its final norm and head."""
    total = target.config.num_layers
    if not isinstance(num_layers, int) or not 1 <= num_layers < total:
        raise ValueError(
            f"`num_layers` must be an int in [1, {total - 1}] (the target has {total} layers); "
            f"got {num_layers!r}."
        )
    params = dict(target.params)
    params["layers"] = jax.tree.map(lambda x: x[:num_layers], target.params["layers"])
    config = target.config.truncated(num_layers)
    return _models.Model(config, params)


def early_exit(target: _models.Model, num_layers: int) -> Drafter:
    """A ``Drafter`` drafting with the target's first ``num_layers`` blocks (self-speculation).

    In the generation loop its cache starts as a copy of the target's first ``num_layers``
    layers after the prompt's prefill (``init_from_target``): those layers' keys and values
    are the exit's own, so its prefill is not run again (at batch 4 on the byte pair a
    second prefill of half the target cost ~15% of a 56-token generation, paid even when
    the controller never drafts). Before a proposal that follows plain rounds it copies
    them again (``sync_from_target``) instead of feeding the tokens it missed through the
    exit (a probe after a stretch of plain rounds cost ~10 plain steps at batch 4).
    ``init`` and ``propose`` alone (outside the loop) still compute the cache.
    """
    model = early_exit_model(target, num_layers)
    drafter = draft_model(model)
    cache_dtype = getattr(model, "dtype", None)
    cache_dtype = jnp.float32 if cache_dtype is None else cache_dtype  # as init_cache's

    def init_from_target(
        target_cache: _models.KVCache, prompt_lengths: jax.Array, capacity: int
    ) -> DraftModelState:
        check_capacity(model, capacity)
        slots = min(capacity, target_cache.capacity)
        pad = ((0, 0), (0, 0), (0, capacity - slots), (0, 0), (0, 0))
        keys, values = (
            jnp.pad(kv[:num_layers, :, :slots].astype(cache_dtype), pad)
            for kv in (target_cache.keys, target_cache.values)
        )
        lengths = jnp.minimum(jnp.asarray(prompt_lengths, jnp.int32), target_cache.lengths)
        return DraftModelState(_models.KVCache(keys, values, lengths))

    def sync_from_target(state: DraftModelState, target_cache: _models.KVCache) -> DraftModelState:
        # After plain rounds the exit's cache lags the committed tokens; the target's cache
        # holds them (all but the newest) in its first layers: copied when some row lags
        # more than the one token a proposal feeds anyway, instead of feeding the missing
        # tokens through the exit (which made a probe after a stretch of plain rounds cost
        # several plain steps). A loop of one trip or none: the copy is in place.
        cache = state.cache
        slots = min(cache.capacity, target_cache.capacity)
        due = jnp.any(target_cache.lengths - cache.lengths > 1)

        def copy(carry):
            cache, _ = carry
            keys, values = (
                lax.dynamic_update_slice(
                    own, shared[:num_layers, :, :slots].astype(own.dtype), (0,) * own.ndim
                )
                for own, shared in (
                    (cache.keys, target_cache.keys),
                    (cache.values, target_cache.values),
                )
            )
            lengths = jnp.maximum(cache.lengths, target_cache.lengths)
            return _models.KVCache(keys, values, lengths), jnp.zeros((), bool)

        cache, _ = lax.while_loop(lambda carry: carry[1], copy, (cache, due))
        return DraftModelState(cache)

    return drafter._replace(init_from_target=init_from_target, sync_from_target=sync_from_target)


def layer_acceptance(target: _models.Model, tokens: jax.Array) -> jax.Array:
    """``[L - 1]``: how often exit ``l = 1..L-1``'s greedy token equals the target's.

    Args:
      target: the model.
      tokens: [B, S] int, text to measure on (e.g. held-out windows or the prompts).
    Returns:
      Agreement rate per exit depth, from one forward pass (all hidden states).
    """
    logits, _, hidden = target(jnp.asarray(tokens), return_hidden=True)
    final = jnp.argmax(logits, axis=-1)
    exits = _models.logits_from_hidden(target.config, target.params, hidden[1:-1])
    return jnp.mean(jnp.argmax(exits, axis=-1) == final[None], axis=(1, 2))


class ExitChoice(NamedTuple):
    num_layers: int  # chosen exit depth l
    num_draft: int  # chosen draft length d
    speedup: float  # modelled tokens per layer-evaluation, relative to autoregressive
    table: np.ndarray  # [L - 1, max_draft] modelled speedup of every (l, d)


def choose_exit(acceptance, num_layers: int, max_draft: int) -> ExitChoice:
    """Chooses ``(l, d)`` maximising modelled speedup ``L (1 - a_l^(d+1)) / ((1 - a_l)(d l + L))``.

    Args:
      acceptance: [L - 1] per-exit acceptance estimates (``layer_acceptance``).
      num_layers: L, the target's depth.
      max_draft: largest d considered.
    """
    acceptance = np.asarray(acceptance, np.float64)
    if acceptance.shape != (num_layers - 1,):
        raise ValueError(
            f"`acceptance` must have shape ({num_layers - 1},) (one rate per exit); "
            f"got {acceptance.shape}."
        )
    if not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"`max_draft` must be a positive int; got {max_draft!r}.")
    a = np.clip(acceptance, 0.0, 1.0 - 1e-9)[:, None]
    d = np.arange(1, max_draft + 1)[None, :]
    layers = np.arange(1, num_layers)[:, None]
    expected = (1 - a ** (d + 1)) / (1 - a)
    table = num_layers * expected / (d * layers + num_layers)
    best = np.unravel_index(np.argmax(table), table.shape)
    return ExitChoice(int(best[0] + 1), int(best[1] + 1), float(table[best]), table)
