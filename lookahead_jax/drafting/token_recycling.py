"""Token Recycling (Luo et al., 2024): a training-free tree drafter from recycled candidates.

The target's top-k next tokens at every scored position are "recycled" into an
adjacency table ``A [V, k]``: ``A[t]`` lists the tokens the target most recently
ranked highest after token ``t``. A draft tree is the static template filled
level by level (a node's token is ``A[parent token, rank]``), verified in one
target pass; then ``A[token]`` is overwritten with the target's top-k at every
tree node (the root included). The table is shared by all rows and carried
across steps; ``Generation.drafter_state.table`` carries it across requests.

Seeding. At ``init`` the prompts' own bigrams are written first (each token's
observed successor moves to the front of its list, the latest occurrence
first), so a cold table already drafts the prompt's phrases; ``seed_table``
does the same for any document set (pass the result as ``table=``).
Drafts are deterministic (one-hot probabilities), so greedy output equals
greedy decoding and sampled output follows the target exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks, trees
from lookahead_jax.drafting.base import TreeDraft, TreeDrafter
from lookahead_jax.sampling import Sampling


class TokenRecyclingState(NamedTuple):
    table: jax.Array  # [V, k] int32, ranked candidate successors of each token


def initial_table(vocab_size: int, num_candidates: int = 8) -> jax.Array:
    """A cold-start table: every token's candidates are tokens ``0..k-1`` (distinct siblings)."""
    return jnp.broadcast_to(
        jnp.arange(num_candidates, dtype=jnp.int32) % vocab_size, (vocab_size, num_candidates)
    )


def seed_table(table: jax.Array, sequences: jax.Array, lengths: jax.Array) -> jax.Array:
    """Moves every observed successor to the front of its token's candidate list.

    Args:
      table: [V, k] int32 adjacency table (e.g. ``initial_table``).
      sequences: [S, T] int token sequences, left-aligned; ids in [0, V).
      lengths: [S] int in [0, T], real tokens per sequence.
    Returns:
      The table after every bigram ``(t, u)`` of every sequence, in order, put ``u``
      first in ``table[t]`` (the others keep their order; the last one drops out
      unless ``u`` was already listed).
    """
    vocab, _num_candidates = jnp.shape(table)
    sequences, lengths = _checks.check_sequences("sequences", sequences, lengths, vocab)
    width = sequences.shape[1]
    first = sequences[:, :-1].reshape(-1)
    second = sequences[:, 1:].reshape(-1)
    keep = (jnp.arange(1, width)[None, :] < lengths[:, None]).reshape(-1)
    return _move_to_front(jnp.asarray(table, jnp.int32), first, second, keep)


def _move_to_front(table, first, second, keep):
    """Sequential over the bigrams, so repeated first tokens in one call all count."""

    def body(i, table):
        row = table[first[i]]
        listed = row == second[i]
        # Shift right up to the successor's old place (or the end), then put it first.
        until = jnp.where(jnp.any(listed), jnp.argmax(listed), row.shape[0] - 1)
        shifted = jnp.where(jnp.arange(row.shape[0]) <= until, jnp.roll(row, 1), row)
        new = shifted.at[0].set(second[i])
        return table.at[first[i]].set(jnp.where(keep[i], new, row))

    return lax.fori_loop(0, first.shape[0], body, table)


def token_recycling(
    vocab_size: int,
    *,
    num_candidates: int = 8,
    template: trees.Template | None = None,
    memory: jax.Array | TokenRecyclingState | None = None,
    seed_from_prompt: bool = True,
    table: jax.Array | None = None,
) -> TreeDrafter:
    """A ``TreeDrafter`` drafting from the recycled adjacency table.

    Args:
      vocab_size: V, the target's vocabulary.
      num_candidates: k, candidates kept per token (the template's ranks must be < k).
      template: the tree shape (default: the paper's 80-node "2.2.2" template).
      memory: the [V, k] int32 table to start from, or a ``TokenRecyclingState``
        (e.g. ``drafting.memory_of(previous_generation.drafter_state)``, or
        ``seed_table`` over documents); default ``initial_table`` (cold start).
      seed_from_prompt: write the prompts' bigrams into the table at ``init``.
      table: the old name of ``memory`` (kept for existing code).
    """
    if table is not None and memory is not None:
        raise ValueError("pass the starting table as `memory` or as `table`, not both.")
    memory = table if memory is None else memory
    table = memory.table if isinstance(memory, TokenRecyclingState) else memory
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
            f"`memory` (the table) must have shape (vocab_size, num_candidates) = "
            f"{(vocab_size, num_candidates)}; got {tuple(jnp.shape(table))}."
        )

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> TokenRecyclingState:
        del capacity
        start = initial_table(vocab_size, num_candidates) if table is None else table
        start = jnp.asarray(start, jnp.int32)
        if seed_from_prompt:
            prompt = jnp.asarray(prompt, jnp.int32)
            prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
            keep = jnp.arange(1, prompt.shape[1])[None, :] < prompt_lengths[:, None]
            start = _move_to_front(
                start,
                prompt[:, :-1].reshape(-1),
                prompt[:, 1:].reshape(-1),
                keep.reshape(-1),
            )
        return TokenRecyclingState(start)

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
