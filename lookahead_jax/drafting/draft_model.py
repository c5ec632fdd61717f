"""A smaller model of the same vocabulary drafts K tokens autoregressively with its own KV cache.

The draft cache is kept one or two tokens behind the committed sequence: at
each proposal the missing tokens (the target's last emitted token, and the last
draft token when a whole block was accepted) are fed in one fixed-width call of
two tokens, and after verification the cache is rewound to the accepted prefix.
No re-prefill ever happens. Rounds in which the loop does not draft (a controller
chose a plain step) leave the cache further behind; the next proposal first feeds
the missing tokens in calls of ``K + 1`` (:func:`feed_committed`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.drafting.base import Draft, Drafter
from lookahead_jax.sampling import Sampling, log_probs


class DraftModelState(NamedTuple):
    cache: _models.KVCache  # draft KV cache; lengths [B] = committed lengths - 1 or - 2


def _probs(logits: jax.Array, sampling: Sampling) -> jax.Array:
    return jnp.exp(log_probs(logits, sampling))


def feed_committed(model, cache, tokens: jax.Array, upto: jax.Array, width: int):
    """Feeds each row's committed ``tokens [B, W]`` from its cache length up to ``upto [B]``.

    Calls of ``width`` tokens, as many as the row furthest behind needs (none when every
    row is caught up); a row already there writes past its length and keeps it, so the
    cache must hold ``width`` slots past ``upto``. Returns the cache, lengths ``upto``
    (rows ahead of ``upto`` keep theirs).
    """
    rows = jnp.arange(tokens.shape[0])

    def body(cache):
        index = jnp.minimum(
            cache.lengths[:, None] + jnp.arange(width)[None, :], tokens.shape[1] - 1
        )
        _, fed = model(tokens[rows[:, None], index], cache)
        return fed._replace(
            lengths=jnp.maximum(cache.lengths, jnp.minimum(cache.lengths + width, upto))
        )

    return lax.while_loop(lambda c: jnp.any(c.lengths < upto), body, cache)


def check_capacity(model: _models.Model, capacity: int) -> None:
    """Raises ``ValueError`` if a draft model cannot hold ``capacity`` positions."""
    if capacity > model.config.max_length:
        raise ValueError(
            f"the draft model holds {model.config.max_length} positions but generation "
            f"needs {capacity} (prompt width + max_new_tokens + max_draft_tokens)."
        )


def draft_model(model: _models.Model) -> Drafter:
    """A ``Drafter`` that runs ``model`` autoregressively (K calls per block).

    Args:
      model: the draft model; its vocabulary must equal the target's.
    """

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> DraftModelState:
        check_capacity(model, capacity)
        cache = _models.init_cache(
            model.config, prompt.shape[0], capacity, dtype=getattr(model, "dtype", None)
        )
        _, cache = model(prompt, cache)
        return DraftModelState(_models.rewind(cache, prompt_lengths))

    def propose(
        state: DraftModelState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        num_draft: jax.Array,
        *,
        max_draft: int,
        sampling: Sampling,
    ) -> tuple[DraftModelState, Draft]:
        batch = tokens.shape[0]
        rows = jnp.arange(batch)
        # After rounds without drafting: feed all but the last two missing tokens first.
        cache = feed_committed(model, state.cache, tokens, lengths - 2, max(2, max_draft + 1))
        # Catch up with the committed tokens the cache has not seen (1 or 2 per row).
        behind = lengths - cache.lengths
        index = jnp.minimum(cache.lengths[:, None] + jnp.arange(2)[None, :], tokens.shape[1] - 1)
        logits, cache = model(tokens[rows[:, None], index], cache)
        cache = cache._replace(lengths=lengths)  # drops the padding token where behind == 1
        logits = logits[rows, behind - 1]  # [B, V]

        vocab = model.config.vocab_size
        draft_tokens = jnp.zeros((batch, max_draft), jnp.int32)
        draft_probs = jnp.zeros((batch, max_draft, vocab), jnp.float32)
        if max_draft == 0:
            return DraftModelState(cache), Draft(draft_tokens, draft_probs, num_draft)
        steps = jnp.max(num_draft)

        def sample(i, key, logits, draft_tokens, draft_probs):
            key, step_key = jax.random.split(key)
            probs = _probs(logits, sampling)
            if sampling.greedy:
                token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            else:
                row_keys = jax.random.split(step_key, batch)
                token = jax.vmap(jax.random.categorical)(row_keys, jnp.log(probs)).astype(jnp.int32)
            draft_tokens = lax.dynamic_update_slice(draft_tokens, token[:, None], (0, i))
            draft_probs = lax.dynamic_update_slice(draft_probs, probs[:, None], (0, i, 0))
            return key, token, draft_tokens, draft_probs

        # The first token comes from the catch-up call's logits and each later one from
        # feeding the token before it, so the last token is never fed and the loop needs no
        # conditional. (A loop whose body skipped the last feed in a `lax.cond` ran constant
        # K = 4 generations at batch 1, greedy, 1.01-1.05x slower on the byte pair and
        # 1.14-1.16x on the BPE pair, same tokens; XLA:CPU.)
        key, token, first_tokens, first_probs = sample(
            jnp.int32(0), key, logits, draft_tokens, draft_probs
        )
        drafts = steps > 0  # a round where no row drafts leaves the buffers zero
        draft_tokens = jnp.where(drafts, first_tokens, draft_tokens)
        draft_probs = jnp.where(drafts, first_probs, draft_probs)

        def body(carry):
            i, key, token, cache, draft_tokens, draft_probs = carry
            step_logits, cache = model(token[:, None], cache)
            key, token, draft_tokens, draft_probs = sample(
                i, key, step_logits[:, 0], draft_tokens, draft_probs
            )
            return i + 1, key, token, cache, draft_tokens, draft_probs

        carry = (jnp.int32(1), key, token, cache, draft_tokens, draft_probs)
        _, _, _, cache, draft_tokens, draft_probs = lax.while_loop(
            lambda c: c[0] < steps, body, carry
        )
        return DraftModelState(cache), Draft(draft_tokens, draft_probs, num_draft)

    def update(
        state: DraftModelState, lengths_before: jax.Array, num_accepted: jax.Array
    ) -> DraftModelState:
        # Keep the entries of the accepted drafts; rewind clips to what was fed.
        return DraftModelState(_models.rewind(state.cache, lengths_before + num_accepted))

    return Drafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=model.config.vocab_size,
        model_config=model.config,
    )
