"""SuffixDecoding (Oliaro et al., NeurIPS 2025): speculation trees from suffix tries.

Memory. Two ``token_trie.TokenTrie`` suffix tries, cut at depth
``max_depth + spec_depth`` (the path of every window of that many tokens starting at
every position; a node's count is how often its path occurred):

* a *per-request* trie per row (``M = B``), over the row's prompt and its outputs,
  rebuilt at ``init`` and grown by ``observe`` as tokens are committed;
* a *global* trie (``M = 1``) over the outputs of every request (windows starting at
  or after the prompt), shared by the batch and carried from request to request
  (``Generation.drafter_state`` or its ``memory`` field as ``memory=``). When full it
  evicts the least recently used leaf of the node's set (``policy="lru"``), so it keeps
  the recent requests.

Match. In each trie, the longest suffix of the committed tokens (at most
``max_depth`` tokens) that is a path with a continuation.

Speculation tree. From the matched node, grown best-first by empirical probability:
a node's score is the product of ``count(child) / count(parent)`` along its path
from the match, with the first factor over the continuations actually seen (the
matched node's children's counts), which telescopes to ``count(node) / total``.
Nodes under ``min_token_prob`` are not added; at most ``spec_depth`` deep and
``min(num_nodes, floor(max_spec_factor * match_length))`` nodes, so long matches
speculate far and short ones barely at all. Each trie proposes such a tree; a row
takes the one with the larger total score (expected accepted tokens), the
per-request one on a tie. Drafts are deterministic (one-hot ``probs``,
``replacement=True``): greedy output equals greedy decoding and sampled output
follows the target exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks, trees
from lookahead_jax.drafting import token_trie
from lookahead_jax.drafting.base import (
    TreeDraft,
    TreeDrafter,
    check_block_sizes,
    default_block_sizes,
)
from lookahead_jax.drafting.token_trie import TokenTrie
from lookahead_jax.sampling import Sampling


class SuffixDecodingState(NamedTuple):
    """Both tries (``C`` = capacity) and what each row fed them."""

    request: TokenTrie  # [B, C] per-row tries over this request's prompt and outputs
    memory: TokenTrie  # [1, C] the global trie over outputs (carried across requests)
    seen: jax.Array  # [B] int32, tokens of each row already inserted
    prompt_lengths: jax.Array  # [B] int32, outputs start here (what the global trie takes)
    request_cursors: token_trie.WindowCursors  # [B, max_depth + spec_depth - 1]
    memory_cursors: token_trie.WindowCursors  # [B, max_depth + spec_depth - 1]


def suffix_memory(capacity: int = 4096, *, ways: int = 16) -> TokenTrie:
    """An empty global trie for :func:`suffix_decoding`."""
    token_trie.check_settings(capacity, ways)
    return token_trie.empty_trie(1, capacity, ways)


def _tree(trie, index, node, size, *, num_nodes, spec_depth, factor, min_prob):
    """Best-first tree below each matched node and its score (sum of probabilities)."""
    below = trie.parent[index] == node[:, None]  # [B, C]: the matched node's children
    total = jnp.sum(jnp.where(below, trie.count[index], 0), axis=1)  # [B]
    min_count = jnp.ceil(min_prob * total.astype(jnp.float32) - 1e-6).astype(jnp.int32)
    max_nodes = jnp.minimum(num_nodes, jnp.floor(factor * size).astype(jnp.int32))
    max_nodes = jnp.where(size > 0, max_nodes, 0)
    tree, counts = token_trie.best_descendants(
        trie,
        index,
        node,
        num_nodes=num_nodes,
        max_depth=spec_depth,
        min_count=jnp.maximum(min_count, 1),
        max_nodes=max_nodes,
    )
    score = jnp.sum(counts, axis=1) / jnp.maximum(total, 1).astype(jnp.float32)
    return tree, score


def suffix_decoding(
    vocab_size: int,
    *,
    num_nodes: int = 32,
    max_depth: int = 16,
    max_spec_factor: float = 2.0,
    min_token_prob: float = 0.1,
    capacity: int = 4096,
    spec_depth: int = 8,
    ways: int = 16,
    memory: TokenTrie | SuffixDecodingState | None = None,
    block_sizes: tuple[int, ...] | None = None,
) -> TreeDrafter:
    """A ``TreeDrafter`` growing speculation trees from per-request and global suffix tries.

    Args:
      vocab_size: V, the target's vocabulary.
      num_nodes: N, the largest speculation tree.
      max_depth: the longest suffix of the committed tokens that is matched.
      max_spec_factor: a match of ``k`` tokens speculates at most
        ``floor(max_spec_factor * k)`` nodes.
      min_token_prob: nodes whose empirical probability is below it are not drafted.
      capacity: C, nodes per trie (per row for the per-request tries; a multiple of
        ``ways``).
      spec_depth: the deepest speculated token (the tree's ``max_depth``; the tries
        keep paths of ``max_depth + spec_depth`` tokens).
      ways: W, the tries' set size (see ``token_trie``).
      memory: the global trie to start from: a ``SuffixDecodingState`` (a previous
        ``Generation.drafter_state``) or a one-memory ``TokenTrie``
        (:func:`suffix_memory`). Default: empty.
      block_sizes: node counts the generation loop may score instead of all N
        (``TreeDrafter.block_sizes``), so that a round with no match costs a plain
        decoding step; default: 0, one branch (spec_depth), two, N. ``(num_nodes,)``
        always scores N.
    Returns:
      A ``TreeDrafter`` (``replacement=True``, an ``observe`` hook) whose state is a
      ``SuffixDecodingState``.
    """
    _checks.check_int("vocab_size", vocab_size, 1)
    _checks.check_int("num_nodes", num_nodes, 1)
    _checks.check_int("max_depth", max_depth, 1)
    _checks.check_int("spec_depth", spec_depth, 1, 63)
    _checks.check_float("max_spec_factor", max_spec_factor, 0.0, low_open=True)
    _checks.check_float("min_token_prob", min_token_prob, 0.0, 1.0)
    if math.isinf(float(max_spec_factor)):
        raise ValueError(f"`max_spec_factor` must be finite; got {max_spec_factor!r}.")
    token_trie.check_settings(capacity, ways)
    block_sizes = (
        default_block_sizes(num_nodes, spec_depth)
        if block_sizes is None
        else check_block_sizes(block_sizes, num_nodes)
    )
    start = None
    if memory is not None:
        start = memory.memory if isinstance(memory, SuffixDecodingState) else memory
        token_trie.check_memory(start, capacity=capacity, ways=ways, vocab_size=vocab_size)
        if start.num_memories != 1:
            raise ValueError(
                f"`memory` must be one global trie; got {start.num_memories} memories."
            )
    window = max_depth + spec_depth
    max_new = spec_depth + 2  # a round commits <= spec_depth + 1 tokens (+ the first token)
    options = dict(
        num_nodes=num_nodes,
        spec_depth=spec_depth,
        factor=float(max_spec_factor),
        min_prob=float(min_token_prob),
    )

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity_: int) -> SuffixDecodingState:
        del capacity_
        prompt = jnp.asarray(prompt, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        batch, width = prompt.shape
        request, request_cursors = token_trie.insert_windows(
            token_trie.empty_trie(batch, capacity, ways),
            None,
            prompt,
            jnp.zeros((batch,), jnp.int32),
            prompt_lengths,
            window,
            width,
        )
        global_ = token_trie.empty_trie(1, capacity, ways) if start is None else start
        nowhere = jnp.full((batch, window - 1), -1, jnp.int32)
        return SuffixDecodingState(
            request=request,
            memory=global_,
            seen=prompt_lengths,
            prompt_lengths=prompt_lengths,
            request_cursors=request_cursors,
            memory_cursors=token_trie.WindowCursors(nowhere, jnp.zeros_like(nowhere)),
        )

    def observe(state: SuffixDecodingState, tokens: jax.Array, lengths: jax.Array):
        batch = tokens.shape[0]
        request, request_cursors = token_trie.insert_windows(
            state.request,
            None,
            tokens,
            state.seen,
            lengths,
            window,
            max_new,
            block=token_trie.OBSERVE_BLOCK,
            cursors=state.request_cursors,
        )
        global_, memory_cursors = token_trie.insert_windows(
            state.memory,
            jnp.zeros((batch,), jnp.int32),
            tokens,
            state.seen,
            lengths,
            window,
            max_new,
            block=token_trie.OBSERVE_BLOCK,
            cursors=state.memory_cursors,
            count_from=state.prompt_lengths,
            policy="lru",
        )
        seen = jnp.maximum(state.seen, jnp.minimum(lengths, state.seen + max_new))
        return state._replace(
            request=request,
            memory=global_,
            seen=seen,
            request_cursors=request_cursors,
            memory_cursors=memory_cursors,
        )

    def propose(
        state: SuffixDecodingState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[SuffixDecodingState, TreeDraft]:
        del key, sampling
        batch = tokens.shape[0]
        rows = jnp.arange(batch, dtype=jnp.int32)
        shared = jnp.zeros((batch,), jnp.int32)
        candidates = []
        for trie, index in ((state.request, rows), (state.memory, shared)):
            node, size = token_trie.longest_suffix_match(
                trie, index, tokens, lengths, max_depth, with_children=True
            )
            candidates.append(_tree(trie, index, node, size, **options))
        (own, own_score), (past, past_score) = candidates
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
        observe_tokens=max_new,  # an insertion costs about the same for 1 token as for max_new
        block_sizes=block_sizes,
    )
