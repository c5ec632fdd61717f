"""Memory across requests: the part of a drafter's state that the next request keeps.

Drafters that learn from text (Token Recycling's table, the stochastic n-gram
memory, Jacobi lookahead's n-gram pool, the retrieval trie, SuffixDecoding's
global memory of outputs) return their final state in ``Generation.drafter_state``. Its
request-independent part, :func:`memory_of`, is what the next request's drafter
takes as ``memory=``; per-request parts (a row's window, a prompt's branches)
are rebuilt by ``init``. Inside one ``jit``, pass the same kind of memory on
every call (an empty one first) so that the function compiles once::

    @jax.jit
    def serve(target, prompt, lengths, memory):
        drafter = drafting.lookahead(vocab, memory=memory)
        return generate(target, prompt, lengths, key, max_new_tokens=64, drafter=drafter)

    memory = drafting.lookahead_pool(vocab, documents, document_lengths)  # or empty_pool
    for prompt, lengths in requests:
        out = serve(target, prompt, lengths, memory)
        memory = drafting.memory_of(out.drafter_state)
"""

from __future__ import annotations

from typing import Any

from lookahead_jax.drafting.jacobi_lookahead import LookaheadState, NgramPool
from lookahead_jax.drafting.stochastic_ngram import Memory, StochasticNgramState
from lookahead_jax.drafting.suffix_decoding import SuffixDecodingState, memory_after
from lookahead_jax.drafting.token_recycling import TokenRecyclingState
from lookahead_jax.drafting.trie_retrieval import TrieRetrievalState


def memory_of(drafter_state: Any) -> Any:
    """The request-independent part of a drafter's final state (see the module docstring).

    Args:
      drafter_state: ``Generation.drafter_state`` of a drafter that keeps a memory.
    Returns:
      What that drafter's ``memory=`` takes: the [V, k] table (Token Recycling), a
      ``Memory`` (stochastic n-gram), an ``NgramPool`` (lookahead), the trie
      (``token_trie.TokenTrie``: trie retrieval's, prompt branches dropped at the next
      ``init``; SuffixDecoding's ``SuffixMemory`` of outputs, this request's appended).
    Raises:
      ValueError: for a state of a drafter without a memory across requests.
    """
    if isinstance(drafter_state, TokenRecyclingState):
        return drafter_state.table
    if isinstance(drafter_state, StochasticNgramState):
        return Memory(drafter_state.keys, drafter_state.tokens, drafter_state.log_probs)
    if isinstance(drafter_state, LookaheadState):
        return NgramPool(drafter_state.ngrams, drafter_state.num_stored)
    if isinstance(drafter_state, TrieRetrievalState):
        return drafter_state.trie
    if isinstance(drafter_state, SuffixDecodingState):
        return memory_after(drafter_state)
    raise ValueError(
        "`drafter_state` must be the final state of a drafter with a memory across requests "
        "(token_recycling, stochastic_ngram, lookahead, trie_retrieval, suffix_decoding); "
        f"got {type(drafter_state).__name__}."
    )
