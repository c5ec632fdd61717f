"""SuffixDecoding (Oliaro et al., NeurIPS 2025): speculation trees from suffix trees.

Memory. Two suffix trees, cut at depth ``max_depth + spec_depth`` (a node's count is how
often its path occurred), both read straight from text (``suffix_match``: the longest
suffix match and the counts of its continuations come from the text itself, so nothing is
inserted as tokens are committed and a round that drafts nothing pays nothing):

* a *per-request* tree per row, over the row's prompt and output so far (the committed
  tokens the generation loop holds);
* a *global* tree over outputs: the batch's outputs so far and those of earlier requests
  (``SuffixMemory``: a ring of ``capacity`` tokens, the outputs one after the other, the
  oldest overwritten first), shared by the batch and carried from request to request:
  ``drafting.memory_of`` of a generation's ``drafter_state`` appends that batch's outputs.

Match. In each tree, the longest suffix of the committed tokens (at most ``max_depth``
tokens) that occurs followed by a continuation.

Speculation tree. From the matched node, grown best-first by empirical probability:
a node's score is the product of ``count(child) / count(parent)`` along its path
from the match, with the first factor over the continuations actually seen (the
matched node's children's counts), which telescopes to ``count(node) / total``.
Nodes under ``min_token_prob`` are not added; at most ``spec_depth`` deep and
``min(num_nodes, floor(max_spec_factor * match_length))`` nodes, so long matches
speculate far and short ones barely at all. Counts are over the match's
``num_occurrences`` most recent occurrences (exact below that). Each tree proposes such a
tree; a row takes the one with the larger total score (expected accepted tokens), the
per-request one on a tie. Drafts are deterministic (one-hot ``probs``,
``replacement=True``): greedy output equals greedy decoding and sampled output
follows the target exactly.

Why text and not tries: this library's first version kept both as tries of ``capacity``
nodes and inserted every committed token (about 10 dependent depth steps of small
kernels per insertion). On 2 CPU cores with the byte-level pair that upkeep alone made
generation with every round plain 0.67-0.80x as fast as plain decoding (batch 16 / 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks, trees
from lookahead_jax.drafting import suffix_match
from lookahead_jax.drafting.base import (
    TreeDraft,
    TreeDrafter,
    check_block_sizes,
    default_block_sizes,
)
from lookahead_jax.sampling import Sampling

# The loop calls ``observe`` (a copy of the committed tokens) only before a proposal and at
# the end: nothing is learnt in between, so plain rounds never wait for it.
_OBSERVE_ONLY_WHEN_NEEDED = 1 << 30


class SuffixMemory(NamedTuple):
    """Earlier requests' outputs, one after the other in a ring of ``C`` tokens."""

    tokens: jax.Array  # [C] int32, the outputs' tokens (0 where empty)
    source: jax.Array  # [C] int32, the output each token belongs to (-1: empty)
    next: jax.Array  # [] int32, where the next output's first token goes
    num_outputs: jax.Array  # [] int32, outputs appended so far (the next source id)

    @property
    def capacity(self) -> int:
        return self.tokens.shape[0]


class SuffixDecodingState(NamedTuple):
    """The global memory and what each row has committed (for ``memory_of``)."""

    memory: SuffixMemory  # [C] the global memory of earlier outputs (carried across requests)
    tokens: jax.Array  # [B, T] int32, each row's committed tokens as last observed
    lengths: jax.Array  # [B] int32, their lengths
    prompt_lengths: jax.Array  # [B] int32, outputs start here (what the global memory takes)


def suffix_memory(capacity: int = 4096) -> SuffixMemory:
    """An empty global memory of ``capacity`` tokens for :func:`suffix_decoding`."""
    _checks.check_int("capacity", capacity, 2)
    return SuffixMemory(
        tokens=jnp.zeros((capacity,), jnp.int32),
        source=jnp.full((capacity,), -1, jnp.int32),
        next=jnp.zeros((), jnp.int32),
        num_outputs=jnp.zeros((), jnp.int32),
    )


def remember_outputs(
    memory: SuffixMemory, tokens: jax.Array, lengths: jax.Array, prompt_lengths: jax.Array
) -> SuffixMemory:
    """``memory`` with each row's output ``tokens[b, prompt_lengths[b] : lengths[b]]``
    appended, row after row (the oldest tokens overwritten when the ring is full)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    batch, width = tokens.shape
    capacity = memory.capacity
    size = jnp.clip(jnp.asarray(lengths) - jnp.asarray(prompt_lengths), 0, width)
    offset = jnp.cumsum(size) - size  # [B]: where each output starts after `next`
    total = jnp.sum(size)
    step = jnp.arange(width)[None, :]
    index = offset[:, None] + step  # [B, T]: place in the appended stream
    # Only the stream's last `capacity` tokens land (so no two writes share a slot).
    keep = (step < size[:, None]) & (index >= total - capacity)
    slot = jnp.where(keep, (memory.next + index) % capacity, capacity)
    position = jnp.clip(jnp.asarray(prompt_lengths)[:, None] + step, 0, width - 1)
    written = jnp.take_along_axis(tokens, position, axis=1)
    source = jnp.broadcast_to(memory.num_outputs + jnp.arange(batch)[:, None], slot.shape)
    return SuffixMemory(
        tokens=memory.tokens.at[slot].set(written, mode="drop"),
        source=memory.source.at[slot].set(source, mode="drop"),
        next=((memory.next + total) % capacity).astype(jnp.int32),
        num_outputs=(memory.num_outputs + batch).astype(jnp.int32),
    )


def memory_after(state: SuffixDecodingState) -> SuffixMemory:
    """The global memory with the outputs ``state`` holds appended (``drafting.memory_of``)."""
    return remember_outputs(state.memory, state.tokens, state.lengths, state.prompt_lengths)


def _check_memory(memory: object, vocab_size: int) -> SuffixMemory:
    if isinstance(memory, SuffixDecodingState):
        memory = memory_after(memory)
    if not isinstance(memory, SuffixMemory):
        raise ValueError(
            "`memory` must be a SuffixMemory (`suffix_memory`, `drafting.memory_of`) or a "
            f"SuffixDecodingState; got {type(memory).__name__}."
        )
    if memory.tokens.ndim != 1 or memory.source.shape != memory.tokens.shape:
        raise ValueError(
            "`memory` must hold `tokens` and `source` of one shape [C]; got "
            f"{memory.tokens.shape} and {memory.source.shape}."
        )
    _checks.check_range("memory", memory.tokens, 0, vocab_size)
    return memory


def suffix_decoding(
    vocab_size: int,
    *,
    num_nodes: int = 32,
    max_depth: int = 16,
    max_spec_factor: float = 2.0,
    min_token_prob: float = 0.1,
    capacity: int = 4096,
    spec_depth: int = 8,
    num_occurrences: int = 32,
    memory: SuffixMemory | SuffixDecodingState | None = None,
    block_sizes: tuple[int, ...] | None = None,
) -> TreeDrafter:
    """A ``TreeDrafter`` growing speculation trees from per-request and global suffix trees.

    Args:
      vocab_size: V, the target's vocabulary.
      num_nodes: N, the largest speculation tree.
      max_depth: the longest suffix of the committed tokens that is matched.
      max_spec_factor: a match of ``k`` tokens speculates at most
        ``floor(max_spec_factor * k)`` nodes.
      min_token_prob: nodes whose empirical probability is below it are not drafted.
      capacity: C, tokens of earlier outputs the global memory keeps.
      spec_depth: the deepest speculated token (the tree's ``max_depth``).
      num_occurrences: a match's most recent occurrences whose continuations are counted
        (per tree; the counts are exact while a match occurs at most this often). The
        proposal's pairwise comparison of continuations costs
        ``B * num_occurrences**2 * spec_depth``.
      memory: the global memory to start from: a ``SuffixMemory`` (:func:`suffix_memory`,
        ``drafting.memory_of``) or a ``SuffixDecodingState`` (a previous
        ``Generation.drafter_state``, whose outputs are appended first). Default: empty.
      block_sizes: node counts the generation loop may score instead of all N
        (``TreeDrafter.block_sizes``), so that a round with no match costs a plain
        decoding step; default: 0, one branch (spec_depth), two, N. ``(num_nodes,)``
        always scores N.
    Returns:
      A ``TreeDrafter`` (``replacement=True``, an ``observe`` hook that keeps the committed
      tokens for ``memory_of``) whose state is a ``SuffixDecodingState``.
    """
    _checks.check_int("vocab_size", vocab_size, 1)
    _checks.check_int("num_nodes", num_nodes, 1)
    _checks.check_int("max_depth", max_depth, 1)
    _checks.check_int("spec_depth", spec_depth, 1, 63)
    _checks.check_int("num_occurrences", num_occurrences, 1)
    _checks.check_int("capacity", capacity, 2)
    _checks.check_float("max_spec_factor", max_spec_factor, 0.0, low_open=True)
    _checks.check_float("min_token_prob", min_token_prob, 0.0, 1.0)
    if math.isinf(float(max_spec_factor)):
        raise ValueError(f"`max_spec_factor` must be finite; got {max_spec_factor!r}.")
    block_sizes = (
        default_block_sizes(num_nodes, spec_depth)
        if block_sizes is None
        else check_block_sizes(block_sizes, num_nodes)
    )
    start = None if memory is None else _check_memory(memory, vocab_size)
    if start is not None and start.capacity != capacity:
        raise ValueError(
            f"`memory` holds {start.capacity} tokens; this drafter has `capacity`={capacity}."
        )
    options = dict(
        num_nodes=num_nodes,
        depth=spec_depth,
        num_occurrences=num_occurrences,
        max_spec_factor=float(max_spec_factor),
        min_token_prob=float(min_token_prob),
    )

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity_: int) -> SuffixDecodingState:
        prompt = jnp.asarray(prompt, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        width = prompt.shape[1]
        size = max(capacity_, width)
        return SuffixDecodingState(
            memory=suffix_memory(capacity) if start is None else start,
            tokens=jnp.pad(prompt, ((0, 0), (0, size - width))),
            lengths=prompt_lengths,
            prompt_lengths=prompt_lengths,
        )

    def observe(state: SuffixDecodingState, tokens: jax.Array, lengths: jax.Array):
        tokens = jnp.asarray(tokens, jnp.int32)
        size = state.tokens.shape[1]
        if tokens.shape[1] >= size:
            kept = tokens[:, :size]
        else:
            kept = state.tokens.at[:, : tokens.shape[1]].set(tokens)
        lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), size)
        return state._replace(tokens=kept, lengths=lengths)

    def propose(
        state: SuffixDecodingState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[SuffixDecodingState, TreeDraft]:
        del key, sampling
        tokens = jnp.asarray(tokens, jnp.int32)
        batch, width = tokens.shape
        rows = jnp.arange(batch, dtype=jnp.int32)
        query, query_lengths = suffix_match.last_tokens(tokens, lengths, max_depth)
        position = jnp.arange(width, dtype=jnp.int32)[None, :]
        own, own_score, _ = suffix_match.draft_tree(
            tokens,
            jnp.where(position < lengths[:, None], 0, -1),
            position,
            query,
            query_lengths,
            **options,
        )
        # The global tree: earlier requests' outputs (the ring, the slot written last the
        # newest) and this batch's outputs so far (newer still), one source per output.
        memory = state.memory
        slots = jnp.arange(memory.capacity, dtype=jnp.int32)
        age = (slots - memory.next) % memory.capacity
        output = (position >= state.prompt_lengths[:, None]) & (position < lengths[:, None])
        current = jnp.where(output, memory.num_outputs + rows[:, None], -1)
        corpus = jnp.concatenate([memory.tokens, tokens.reshape(-1)])[None]
        corpus_source = jnp.concatenate([memory.source, current.reshape(-1)])[None]
        recency = jnp.concatenate([age, memory.capacity + jnp.arange(batch * width)])[None]
        past, past_score, _ = suffix_match.draft_tree(
            corpus, corpus_source, recency, query, query_lengths, **options
        )
        use_past = (past_score > own_score)[:, None]
        tree = trees.TokenTree(*(jnp.where(use_past, b, a) for a, b in zip(own, past, strict=True)))
        probs = jax.nn.one_hot(tree.token, vocab_size, dtype=jnp.float32)
        return state, TreeDraft(tree, probs, tokens[rows, lengths - 1])

    def update(state, lengths_before, draft, verified, target_logits) -> SuffixDecodingState:
        del lengths_before, draft, verified, target_logits
        return state

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab_size,
        num_nodes=num_nodes,
        max_depth=spec_depth,
        replacement=True,
        observe=observe,
        observe_tokens=_OBSERVE_ONLY_WHEN_NEEDED,
        block_sizes=block_sizes,
    )
