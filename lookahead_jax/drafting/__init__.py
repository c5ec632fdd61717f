"""Drafters for speculative decoding and draft-length controllers."""

from lookahead_jax.drafting.base import Draft, Drafter
from lookahead_jax.drafting.controllers import Controller, constant, heuristic
from lookahead_jax.drafting.draft_model import DraftModelState, draft_model
from lookahead_jax.drafting.prompt_lookup import (
    PromptLookupState,
    find_continuation,
    prompt_lookup,
)

__all__ = [
    "Controller",
    "Draft",
    "DraftModelState",
    "Drafter",
    "PromptLookupState",
    "constant",
    "draft_model",
    "find_continuation",
    "heuristic",
    "prompt_lookup",
]
