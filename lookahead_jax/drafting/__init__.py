"""Drafters for speculative decoding (token chains and token trees) and draft-length controllers.

``cost_aware`` (the default controller) with a ``CostModel`` from ``calibrate_costs`` or
``estimate_costs`` drafts only what pays in expected tokens per second.
"""

from lookahead_jax.drafting.base import Draft, Drafter, TreeDraft, TreeDrafter
from lookahead_jax.drafting.controllers import (
    Controller,
    CostAware,
    chain_block_sizes,
    constant,
    cost_aware,
    ema,
    expected_speedup,
    fixed_tree_cut,
    heuristic,
    tree_sizes,
)
from lookahead_jax.drafting.costs import CostModel, calibrate_costs, estimate_costs
from lookahead_jax.drafting.draft_model import DraftModelState, draft_model
from lookahead_jax.drafting.draft_tree import DraftTreeState, draft_model_tree
from lookahead_jax.drafting.early_exit import (
    ExitChoice,
    choose_exit,
    early_exit,
    early_exit_model,
    layer_acceptance,
)
from lookahead_jax.drafting.jacobi_lookahead import (
    LookaheadState,
    NgramPool,
    insert_ngrams,
    lookahead,
    lookahead_pool,
)
from lookahead_jax.drafting.memory import memory_of
from lookahead_jax.drafting.prompt_lookup import (
    PromptLookupState,
    find_continuation,
    prompt_lookup,
)
from lookahead_jax.drafting.stochastic_ngram import (
    Memory,
    StochasticNgramState,
    empty_memory,
    seed_memory,
    stochastic_ngram,
)
from lookahead_jax.drafting.suffix_decoding import (
    SuffixDecodingState,
    SuffixMemory,
    suffix_decoding,
    suffix_memory,
)
from lookahead_jax.drafting.token_recycling import (
    TokenRecyclingState,
    initial_table,
    seed_table,
    token_recycling,
)
from lookahead_jax.drafting.trie_retrieval import (
    TrieRetrievalState,
    trie_insert_documents,
    trie_memory,
    trie_retrieval,
)

__all__ = [
    "Controller",
    "CostAware",
    "CostModel",
    "Draft",
    "DraftModelState",
    "DraftTreeState",
    "Drafter",
    "ExitChoice",
    "LookaheadState",
    "Memory",
    "NgramPool",
    "PromptLookupState",
    "StochasticNgramState",
    "SuffixDecodingState",
    "SuffixMemory",
    "TokenRecyclingState",
    "TreeDraft",
    "TreeDrafter",
    "TrieRetrievalState",
    "calibrate_costs",
    "chain_block_sizes",
    "choose_exit",
    "constant",
    "cost_aware",
    "draft_model",
    "draft_model_tree",
    "early_exit",
    "early_exit_model",
    "ema",
    "empty_memory",
    "estimate_costs",
    "expected_speedup",
    "find_continuation",
    "fixed_tree_cut",
    "heuristic",
    "initial_table",
    "insert_ngrams",
    "layer_acceptance",
    "lookahead",
    "lookahead_pool",
    "memory_of",
    "prompt_lookup",
    "seed_memory",
    "seed_table",
    "stochastic_ngram",
    "suffix_decoding",
    "suffix_memory",
    "token_recycling",
    "tree_sizes",
    "trie_insert_documents",
    "trie_memory",
    "trie_retrieval",
]
