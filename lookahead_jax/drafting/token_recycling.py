"""Token Recycling (Luo et al., 2024): a training-free tree drafter from recycled candidates.

The target's top-k next tokens at every scored position are "recycled" into an
adjacency table ``A [V, k]``: ``A[t]`` lists the tokens the target most recently
ranked highest after token ``t``. A draft tree is the static template filled
level by level (a node's token is ``A[parent token, rank]``), verified in one
target pass; then ``A[token]`` is overwritten with the target's top-k at every
tree node (the root included). The table is shared by all rows and carried
across steps; ``Generation.drafter_state.table`` carries it across requests.
Drafts are deterministic (one-hot probabilities), so greedy output equals
greedy decoding and sampled output follows the target exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import trees
from lookahead_jax.drafting.base import TreeDraft, TreeDrafter
from lookahead_jax.sampling import Sampling


class TokenRecyclingState(NamedTuple):
    table: jax.Array  # [V, k] int32, ranked candidate successors of each token


def initial_table(vocab_size: int, num_candidates: int = 8) -> jax.Array:
    """A cold-start table: every token's candidates are tokens ``0..k-1`` (distinct siblings)."""
    return jnp.broadcast_to(
        jnp.arange(num_candidates, dtype=jnp.int32) % vocab_size, (vocab_size, num_candidates)
    )


def token_recycling(
    vocab_size: int,
    *,
    num_candidates: int = 8,
    template: trees.Template | None = None,
    table: jax.Array | None = None,
) -> TreeDrafter:
    """A ``TreeDrafter`` drafting from the recycled adjacency table.

    Args:
      vocab_size: V, the target's vocabulary.
      num_candidates: k, candidates kept per token (the template's ranks must be < k).
      template: the tree shape (default: the paper's 80-node "2.2.2" template).
      table: [V, k] int32 table to start from (e.g. the ``drafter_state.table`` of a
        previous ``Generation``); default ``initial_table`` (cold start).
    """
    template = trees.token_recycling_template() if template is None else template
    if not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"`num_candidates` must be a positive int; got {num_candidates!r}.")
    if int(template.rank.max()) >= num_candidates:
        raise ValueError(
            f"the template uses sibling rank {int(template.rank.max())} but the table keeps "
            f"only `num_candidates`={num_candidates} candidates per token."
        )
    if table is not None and tuple(jnp.shape(table)) != (vocab_size, num_candidates):
        raise ValueError(
            f"`table` must have shape (vocab_size, num_candidates) = "
            f"{(vocab_size, num_candidates)}; got {tuple(jnp.shape(table))}."
        )

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> TokenRecyclingState:
        del prompt, prompt_lengths, capacity
        start = initial_table(vocab_size, num_candidates) if table is None else table
        return TokenRecyclingState(jnp.asarray(start, jnp.int32))

    def propose(
        state: TokenRecyclingState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[TokenRecyclingState, TreeDraft]:
        del key, sampling
        rows = jnp.arange(tokens.shape[0])
        root = tokens[rows, lengths - 1]
        tree = trees.fill_template(template, root, lambda parents: state.table[parents])
        probs = jax.nn.one_hot(tree.token, vocab_size, dtype=jnp.float32)
        return state, TreeDraft(tree, probs, root)

    def update(state, lengths_before, draft, verified, target_logits) -> TokenRecyclingState:
        del lengths_before, verified
        tree = draft.tree
        block_tokens = jnp.concatenate([draft.root[:, None], tree.token], axis=1)
        _, top = lax.top_k(target_logits, num_candidates)  # [B, N + 1, k]
        valid = jnp.concatenate([jnp.ones_like(tree.valid[:, :1]), tree.valid], axis=1)
        index = jnp.where(valid, block_tokens, vocab_size).reshape(-1)  # invalid: dropped
        table = state.table.at[index].set(
            top.reshape(-1, num_candidates).astype(jnp.int32), mode="drop"
        )
        return TokenRecyclingState(table)

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab_size,
        num_nodes=template.num_nodes,
        max_depth=template.max_depth,
        replacement=True,
    )
