"""A draft model that proposes a dynamic token tree (EAGLE-2 / DySpec-style best-first).

Each round the draft model first catches up with the committed tokens, then
expands the tree depth by depth: the ``beam_width`` nodes with the highest path
probability (product of draft probabilities) are scored together in one call
under the tree mask, their ``branching`` likeliest next tokens become
candidates, and finally the ``num_nodes`` likeliest candidates form the tree
(``trees.build_dynamic_tree``). Children are the draft's top tokens, a fixed
choice given the draft, so each carries a one-hot ``probs`` row: greedy output
equals greedy decoding and sampled output follows the target exactly.

The draft cache holds the committed tokens but the last (the root). Each round
one catch-up call feeds the newly committed tokens, the root included, and gives
the root's next-token scores; each deeper level then scores only its
``beam_width`` new nodes, attending to the cache and to the keys and values of
their expanded ancestors (kept from the earlier levels' calls, never written to
the cache), so a tree of depth D costs D calls of at most ``beam_width`` tokens
rather than D calls over every node expanded so far.
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
    num_expanded = beam_width * max_depth  # the expanded-node slots of build_dynamic_tree

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> DraftTreeState:
        # Catch-up blocks write past the committed tokens.
        slots = capacity + catch_up
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
        # Catch up to every committed token, the root included, in one fixed-width call;
        # its logits at the root score the tree's first level.
        index = jnp.minimum(cache.lengths[:, None] + jnp.arange(catch_up)[None, :], width - 1)
        root_at = jnp.clip(lengths - 1 - cache.lengths, 0, catch_up - 1)
        root_logits, cache = model(tokens[rows[:, None], index], cache, logits_at=root_at[:, None])
        cache = cache._replace(lengths=lengths)  # the committed tokens and the root
        root_depth = lengths - 1  # the root's position; a node at depth d sits d after it

        def scores_of(logits):
            scores = log_probs(logits, sampling) if not sampling.greedy else logits
            return jax.nn.log_softmax(scores, axis=-1)

        # Expanded nodes' keys and values [L, B, W * D, KV, Dh] and their ancestors among
        # them [B, W * D, W * D] (a node's own slot excluded): what deeper nodes attend to.
        shape = (model.config.num_layers, batch, num_expanded, model.config.num_kv_heads)
        dtype = cache.keys.dtype
        context = _models.CacheEntries(
            keys=jnp.zeros((*shape, model.config.head_dim), dtype),
            values=jnp.zeros((*shape, model.config.head_dim), dtype),
        )
        ancestors = jnp.zeros((batch, num_expanded, num_expanded), bool)
        siblings = jnp.broadcast_to(jnp.eye(beam_width, dtype=bool), (batch,) + (beam_width,) * 2)
        level = 0

        def expand(expanded: trees.TokenTree, frontier: jax.Array) -> jax.Array:
            # build_dynamic_tree calls this once per depth, in order: depth 1 expands the
            # root, depth l > 1 the W nodes it put in slots (l - 2) W ... (l - 1) W - 1.
            nonlocal context, ancestors, level
            del frontier  # the slots below are the frontier (static per depth)
            level += 1
            if level == 1:
                return jnp.broadcast_to(scores_of(root_logits), (batch, beam_width, vocab))
            slots = slice((level - 2) * beam_width, (level - 1) * beam_width)
            parent = expanded.parent[:, slots]  # [B, W], ROOT or an earlier slot
            above = jnp.take_along_axis(ancestors, jnp.maximum(parent, 0)[:, :, None], axis=1)
            above = above | jax.nn.one_hot(parent, num_expanded, dtype=bool)  # -1: no entry
            above = jnp.where((parent >= 0)[:, :, None], above, False)
            ancestors = ancestors.at[:, slots].set(above)
            logits, entries = model(
                expanded.token[:, slots],
                cache,
                tree_mask=siblings,  # each node sees itself, the cache and its ancestors
                positions=root_depth[:, None] + expanded.depth[:, slots],
                context=context,
                context_mask=above,
                defer_write=True,
            )
            context = jax.tree.map(lambda c, e: c.at[:, :, slots].set(e), context, entries)
            return scores_of(logits)

        built = trees.build_dynamic_tree(
            expand,
            batch,
            num_nodes=num_nodes,
            beam_width=beam_width,
            branching=branching,
            max_depth=max_depth,
        )
        probs = jax.nn.one_hot(built.tree.token, vocab, dtype=jnp.float32)
        root = tokens[rows, lengths - 1]
        # The next catch-up feeds the root again with whatever gets committed after it.
        cache = cache._replace(lengths=lengths - 1)
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
