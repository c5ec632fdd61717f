"""A draft model that proposes a dynamic token tree (EAGLE-2 / DySpec-style best-first).

Each round the draft model first catches up with the committed tokens, then
expands the tree depth by depth: the ``beam_width`` nodes with the highest path
probability (product of draft probabilities) are scored together in one call
under the tree mask, their ``branching`` likeliest next tokens become
candidates, and finally the ``num_nodes`` likeliest candidates form the tree
(``trees.build_dynamic_tree``). Children are the draft's top tokens, a fixed
choice given the draft, so each carries a one-hot ``probs`` row: greedy output
equals greedy decoding and sampled output follows the target exactly.

The draft cache holds the committed tokens but the last (the root); each
expansion call re-scores the expanded nodes so far on top of it and is then
discarded, so nothing needs to be gathered back after verification.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import models as _models
from lookahead_jax import trees
from lookahead_jax.drafting.base import TreeDraft, TreeDrafter
from lookahead_jax.drafting.draft_model import feed_committed
from lookahead_jax.sampling import Sampling, log_probs


class DraftTreeState(NamedTuple):
    cache: _models.KVCache  # draft KV cache; lengths [B] <= committed lengths - 1


def draft_model_tree(
    model: _models.Model,
    *,
    num_nodes: int = 32,
    beam_width: int = 4,
    branching: int = 4,
    max_depth: int = 6,
) -> TreeDrafter:
    """A ``TreeDrafter`` growing a budgeted best-first tree with ``model``.

    Args:
      model: the draft model (same vocabulary as the target).
      num_nodes: N, nodes per tree.
      beam_width: W, nodes expanded per depth (one draft call per depth).
      branching: candidate children per expanded node.
      max_depth: D, deepest node.
    """
    for name, value in (
        ("num_nodes", num_nodes),
        ("beam_width", beam_width),
        ("branching", branching),
        ("max_depth", max_depth),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    vocab = model.config.vocab_size
    catch_up = max_depth + 2  # committed tokens a round can add: accepted path + 1
    expansion = 1 + beam_width * max_depth  # root + expanded-node buffer

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> DraftTreeState:
        # Catch-up and expansion blocks write past the committed tokens.
        slots = capacity + max(catch_up, expansion)
        cache = _models.init_cache(
            model.config,
            prompt.shape[0],
            min(slots, model.config.max_length),
            extra_slots=max(0, slots - model.config.max_length),
            dtype=getattr(model, "dtype", None),
        )
        _, cache = model(prompt, cache)
        return DraftTreeState(_models.rewind(cache, prompt_lengths))

    def propose(
        state: DraftTreeState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[DraftTreeState, TreeDraft]:
        del key
        batch, width = tokens.shape
        rows = jnp.arange(batch)
        # After rounds without drafting, first feed what lies beyond one call's reach.
        cache = feed_committed(model, state.cache, tokens, lengths - catch_up, catch_up)
        # Catch up to every committed token but the root, in one fixed-width call.
        index = jnp.minimum(cache.lengths[:, None] + jnp.arange(catch_up)[None, :], width - 1)
        _, cache = model(tokens[rows[:, None], index], cache)
        cache = cache._replace(lengths=lengths - 1)
        root = tokens[rows, lengths - 1]

        def expand(expanded: trees.TokenTree, frontier: jax.Array) -> jax.Array:
            block = jnp.concatenate([root[:, None], expanded.token], axis=1)
            # Scored, not written (a written copy of the cache would be made per call).
            logits, _ = model(block, cache, tree_mask=trees.block_mask(expanded), defer_write=True)
            scores = log_probs(logits, sampling) if not sampling.greedy else logits
            scores = jax.nn.log_softmax(scores, axis=-1)
            return jnp.take_along_axis(scores, (frontier + 1)[:, :, None], axis=1)

        built = trees.build_dynamic_tree(
            expand,
            batch,
            num_nodes=num_nodes,
            beam_width=beam_width,
            branching=branching,
            max_depth=max_depth,
        )
        probs = jax.nn.one_hot(built.tree.token, vocab, dtype=jnp.float32)
        return DraftTreeState(cache), TreeDraft(built.tree, probs, root)

    def update(state, lengths_before, draft, verified, target_logits) -> DraftTreeState:
        del lengths_before, draft, verified, target_logits
        return state  # the next catch-up feeds whatever was committed

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab,
        num_nodes=num_nodes,
        max_depth=max_depth,
        replacement=True,
        model_config=model.config,
    )
