"""Trie retrieval with multi-branch drafts (the "Lookahead" framework, Zhao et al., KDD 2024).

Memory. A ``token_trie.TokenTrie`` of fixed capacity holding, for every position of
every text it has seen, the window of ``max_query + branch_length`` tokens starting
there (a suffix trie cut at that depth); a node's count is how often its path
occurred. Three sources fill it:

* *prompt branches*: each request's prompt, at ``init``;
* *output branches*: the committed tokens, as they are committed (``observe``: the
  windows ending in new tokens grow by them; a per-row counter says what was seen);
* *documents*: any corpus inserted ahead of time with :func:`trie_insert_documents`.

Prompt branches do not crowd out outputs: windows that start inside a request's
prompt count as *temporary* (``TokenTrie.temp``); the next request's ``init`` drops
them (``token_trie.drop_temporary``), keeping outputs and documents. When the trie
is full, insertion evicts the least frequent, then least recently used leaf of the
node's set (see ``token_trie``); it never fails or corrupts the trie.

The memory is shared by all rows of a batch (``per_row=False``, one trie) or kept
per row (``per_row=True``, one trie per row: rows never see each other's text).
``Generation.drafter_state`` (a ``TrieRetrievalState``) or its ``trie`` passed as
``memory=`` starts the next request with everything learned so far.

Retrieval (``propose``). The query is the last ``q`` committed tokens, longest
first (``q = max_query`` down to 1), until a query is a path of the trie that has a
continuation. The draft is the *hierarchical multi-branch* tree below it: the
``num_nodes`` most frequent continuations up to ``branch_length`` tokens deep, merged
on shared prefixes (frequency ranking is prefix-closed, so the kept nodes form a
tree; ties go to the shallower node). No match: an empty tree, and the round is a
plain decoding step. Drafts are deterministic: one-hot ``probs`` and
``replacement=True``, so greedy output equals greedy decoding and sampled output
follows the target exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks
from lookahead_jax.drafting import token_trie
from lookahead_jax.drafting.base import (
    TreeDraft,
    TreeDrafter,
    check_block_sizes,
    default_block_sizes,
)
from lookahead_jax.drafting.token_trie import TokenTrie
from lookahead_jax.sampling import Sampling


class TrieRetrievalState(NamedTuple):
    """The trie (``M`` = 1 shared or ``B`` per row, ``C`` = capacity) and what each row fed it."""

    trie: TokenTrie  # [M, C] node arrays (see token_trie.TokenTrie)
    seen: jax.Array  # [B] int32, tokens of each row already inserted
    prompt_lengths: jax.Array  # [B] int32, windows starting before it are prompt branches
    cursors: token_trie.WindowCursors  # [B, max_query + branch_length - 1] unfinished windows


def trie_memory(
    capacity: int = 4096, *, per_row: bool = False, batch: int = 1, ways: int = 16
) -> TokenTrie:
    """An empty memory for :func:`trie_retrieval` (``batch`` tries when ``per_row``)."""
    _checks.check_int("batch", batch, 1)
    token_trie.check_settings(capacity, ways)
    return token_trie.empty_trie(batch if per_row else 1, capacity, ways)


def trie_insert_documents(
    memory: TokenTrie | TrieRetrievalState,
    documents: jax.Array,
    lengths: jax.Array,
    *,
    vocab_size: int,
    max_query: int = 4,
    branch_length: int = 8,
) -> TokenTrie:
    """Inserts documents (a retrieval corpus, a code base) into a trie-retrieval memory.

    Every window of ``max_query + branch_length`` tokens of every document goes into
    every memory of ``memory`` (each row's trie when it is per row), as permanent
    counts (never dropped by ``init``).

    Args:
      memory: a ``TokenTrie`` (e.g. :func:`trie_memory`) or a ``TrieRetrievalState``.
      documents: [S, T] int, token ids in [0, vocab_size) up to each length.
      lengths: [S] int in [0, T].
      vocab_size: the drafter's vocabulary.
      max_query, branch_length: as given to :func:`trie_retrieval` (the window size).
    Returns:
      The memory's ``TokenTrie`` with the documents inserted.
    Raises:
      ValueError: on bad shapes at once; on ids outside the vocabulary or bad lengths at
        once when concrete, else under ``lookahead_jax.checked``.
    """
    trie = memory.trie if isinstance(memory, TrieRetrievalState) else memory
    if not isinstance(trie, TokenTrie):
        raise ValueError(
            f"`memory` must be a TokenTrie or a TrieRetrievalState; got {type(memory)}."
        )
    _checks.check_int("max_query", max_query, 1)
    _checks.check_int("branch_length", branch_length, 1)
    documents, lengths = _checks.check_sequences("documents", documents, lengths, vocab_size)
    num, width = documents.shape
    if num == 0 or width == 0:
        return trie
    memories = trie.num_memories
    index = jnp.repeat(jnp.arange(memories, dtype=jnp.int32), num)
    trie, _ = token_trie.insert_windows(
        trie,
        index,
        jnp.tile(documents, (memories, 1)),
        jnp.zeros((memories * num,), jnp.int32),
        jnp.tile(lengths, memories),
        max_query + branch_length,
        width,
    )
    return trie


def trie_retrieval(
    vocab_size: int,
    *,
    num_nodes: int = 32,
    branch_length: int = 8,
    max_query: int = 4,
    capacity: int = 4096,
    per_row: bool = False,
    ways: int = 16,
    memory: TokenTrie | TrieRetrievalState | None = None,
    block_sizes: tuple[int, ...] | None = None,
) -> TreeDrafter:
    """A ``TreeDrafter`` retrieving multi-branch drafts from a token trie.

    Args:
      vocab_size: V, the target's vocabulary.
      num_nodes: N, the draft tree's node budget (the paper's "decoding length").
      branch_length: deepest draft node (tokens below the last committed one).
      max_query: the longest query (committed tokens matched in the trie).
      capacity: C, trie nodes per memory (a multiple of ``ways``).
      per_row: one trie per row instead of one shared by the batch.
      ways: W, the trie's set size (see ``token_trie``; ``ways = capacity`` is exact
        global eviction, slower lookups).
      memory: the trie to start from: a ``TrieRetrievalState`` (a previous
        ``Generation.drafter_state``) or a ``TokenTrie`` (:func:`trie_memory`, maybe
        with documents). Its shape must match ``capacity``, ``ways`` and ``per_row``
        (and, when per row, the batch). Default: empty.
      block_sizes: node counts the generation loop may score instead of all N
        (``TreeDrafter.block_sizes``), so that a round with no match costs a plain
        decoding step; default: 0, one branch (branch_length), two, N. ``(num_nodes,)``
        always scores N.
    Returns:
      A ``TreeDrafter`` (``replacement=True``, an ``observe`` hook) whose state is a
      ``TrieRetrievalState``.
    """
    _checks.check_int("vocab_size", vocab_size, 1)
    _checks.check_int("num_nodes", num_nodes, 1)
    _checks.check_int("branch_length", branch_length, 1, 63)
    _checks.check_int("max_query", max_query, 1)
    token_trie.check_settings(capacity, ways)
    block_sizes = (
        default_block_sizes(num_nodes, branch_length)
        if block_sizes is None
        else check_block_sizes(block_sizes, num_nodes)
    )
    if not isinstance(per_row, bool):
        raise ValueError(f"`per_row` must be a bool; got {per_row!r}.")
    start = None
    if memory is not None:
        start = memory.trie if isinstance(memory, TrieRetrievalState) else memory
        token_trie.check_memory(start, capacity=capacity, ways=ways, vocab_size=vocab_size)
        if not per_row and start.num_memories != 1:
            raise ValueError(
                f"`memory` holds {start.num_memories} per-row tries but `per_row` is False."
            )
    window = max_query + branch_length
    # A round commits at most branch_length + 1 tokens; the first one also the first token.
    max_new = branch_length + 2

    def memory_index(batch):
        return None if per_row else jnp.zeros((batch,), jnp.int32)

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity_: int) -> TrieRetrievalState:
        del capacity_
        prompt = jnp.asarray(prompt, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        batch, width = prompt.shape
        memories = batch if per_row else 1
        if start is None:
            trie = token_trie.empty_trie(memories, capacity, ways)
        else:
            if start.num_memories != memories:
                raise ValueError(
                    f"`memory` holds {start.num_memories} tries but a per-row memory needs "
                    f"one per row ({batch})."
                )
            trie = token_trie.drop_temporary(start)  # the last request's prompt branches
        trie, cursors = token_trie.insert_windows(
            trie,
            memory_index(batch),
            prompt,
            jnp.zeros((batch,), jnp.int32),
            prompt_lengths,
            window,
            width,
            temporary_before=prompt_lengths,
        )
        return TrieRetrievalState(
            trie=trie, seen=prompt_lengths, prompt_lengths=prompt_lengths, cursors=cursors
        )

    def observe(state: TrieRetrievalState, tokens: jax.Array, lengths: jax.Array):
        batch = tokens.shape[0]
        trie, cursors = token_trie.insert_windows(
            state.trie,
            memory_index(batch),
            tokens,
            state.seen,
            lengths,
            window,
            max_new,
            block=token_trie.OBSERVE_BLOCK,
            cursors=state.cursors,
            temporary_before=state.prompt_lengths,
        )
        seen = jnp.maximum(state.seen, jnp.minimum(lengths, state.seen + max_new))
        return state._replace(trie=trie, seen=seen, cursors=cursors)

    def propose(
        state: TrieRetrievalState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[TrieRetrievalState, TreeDraft]:
        del key, sampling
        batch = tokens.shape[0]
        rows = jnp.arange(batch)
        index = rows if per_row else jnp.zeros((batch,), jnp.int32)
        node, size = token_trie.longest_suffix_match(
            state.trie, index, tokens, lengths, max_query, with_children=True
        )
        tree, _ = token_trie.best_descendants(
            state.trie,
            index,
            node,
            num_nodes=num_nodes,
            max_depth=branch_length,
            max_nodes=jnp.where(size > 0, num_nodes, 0),
        )
        probs = jax.nn.one_hot(tree.token, vocab_size, dtype=jnp.float32)
        return state, TreeDraft(tree, probs, tokens[rows, lengths - 1])

    def update(state, lengths_before, draft, verified, target_logits) -> TrieRetrievalState:
        del lengths_before, draft, verified, target_logits
        return state

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab_size,
        num_nodes=num_nodes,
        max_depth=branch_length,
        replacement=True,
        observe=observe,
        observe_tokens=max_new,  # an insertion costs about the same for 1 token as for max_new
        block_sizes=block_sizes,
    )
