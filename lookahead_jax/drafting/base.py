"""The protocol every drafter follows, and the draft it returns.

A drafter is a ``NamedTuple`` of three pure functions over its own state pytree
(optax style), so the generation loop treats a draft model, an n-gram table or
an early exit alike::

    state = drafter.init(prompt, prompt_lengths, capacity)
    state, draft = drafter.propose(state, key, tokens, lengths, num_draft,
                                   max_draft=K, sampling=sampling)
    state = drafter.update(state, lengths_before, num_accepted)

``tokens [B, W]`` / ``lengths [B]`` are the committed sequences (prompt and
generated tokens so far) that the loop owns; a drafter reads them and never
writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

DrafterState = Any  # each drafter's own pytree


class Draft(NamedTuple):
    """One block of proposed tokens per row."""

    tokens: jax.Array  # [B, K] int32, proposed tokens (past num_draft: ignored)
    probs: (
        jax.Array
    )  # [B, K, V] float32, distribution each token was drawn from (one-hot if deterministic)
    num_draft: jax.Array  # [B] int32 in [0, K], tokens actually proposed per row


class Drafter(NamedTuple):
    """Pure functions of a drafter (see the module docstring for the call pattern).

    Attributes:
      init: ``(prompt [B, P], prompt_lengths [B], capacity) -> state``; ``capacity``
        is the longest sequence (prompt + generated + K) the loop will hold.
      propose: ``(state, key, tokens [B, W], lengths [B], num_draft [B], *,
        max_draft, sampling) -> (state, Draft)``: up to ``num_draft[b] <= max_draft``
        tokens continuing each committed sequence.
      update: ``(state, lengths_before [B], num_accepted [B]) -> state`` after the
        target verified the block proposed at ``lengths_before``.
      vocab_size: the vocabulary the drafter proposes from (must equal the target's).
      model_config: the config of the model the drafter runs per drafted token (a draft
        model, an early exit), for cost estimates; ``None``: no model (tables, lookups).
      init_from_target: optional ``(target_cache, prompt_lengths [B], capacity) -> state``,
        the state ``init`` returns, built from the target's KV cache after the prompt's
        prefill (``models.KVCache``, each row's prompt committed) by a drafter that shares
        the target's layers (the early exit) instead of running them again. The
        generation loop prefers it to ``init``; ``None``: ``init`` only.
      sync_from_target: optional ``(state, target_cache) -> state``, called by the
        generation loop before each proposal with the target's cache (each row's committed
        tokens but the newest): such a drafter catches up after rounds without drafting
        by copying what it shares with the target instead of computing it. ``None``: none.
    """

    init: Callable[..., DrafterState]
    propose: Callable[..., tuple[DrafterState, Draft]]
    update: Callable[..., DrafterState]
    vocab_size: int
    model_config: Any = None
    init_from_target: Callable[..., DrafterState] | None = None
    sync_from_target: Callable[..., DrafterState] | None = None


class TreeDraft(NamedTuple):
    """One token tree per row (see ``lookahead_jax.trees``).

    ``mask`` lets a drafter score nodes that are not verified: nodes marked invalid in
    ``tree`` are never accepted, but with a mask of its own the drafter decides what each
    block token attends to (its position is the number of tokens it sees, root
    included, minus one), and reads the target's outputs there in ``update``. Jacobi
    lookahead decoding's window is such a branch. ``None``: ``trees.block_mask(tree)``.
    """

    tree: Any  # trees.TokenTree [B, N]
    probs: jax.Array  # [B, N, V] float32, distribution node i was drawn from (one-hot if fixed)
    root: jax.Array  # [B] int32, the last committed token, which the tree hangs below
    mask: jax.Array | None = None  # [B, N + 1, N + 1] bool, the block's attention (root first)


class TreeDrafter(NamedTuple):
    """Pure functions of a drafter that proposes token trees.

    Attributes:
      init: ``(prompt [B, P], prompt_lengths [B], capacity) -> state``.
      propose: ``(state, key, tokens [B, W], lengths [B], *, sampling) -> (state, TreeDraft)``:
        a tree of at most ``num_nodes`` nodes below each row's last committed token.
      update: ``(state, lengths_before [B], draft: TreeDraft, verified: TreeVerified,
        target_logits [B, N + 1, V]) -> state`` after the target scored the tree
        (logits at the root and every node) and verification chose a path.
      vocab_size: the vocabulary (must equal the target's).
      num_nodes: static tree capacity N.
      max_depth: static bound on node depths (positions needed past the root).
      replacement: how siblings were drawn (``True``: independently, each from
        its own ``probs`` row, one-hot for fixed candidates; ``False``: without
        replacement from the first sibling's row), which selects the lossless
        verification rule under sampling.
      observe: optional ``(state, tokens [B, W], lengths [B]) -> state``, called after
        every round's commit with the committed buffer and the new lengths (rows that
        did not advance keep theirs): how a memory learns the text as it is committed
        (drafters keep their own count of what they have seen). Not called at ``init``,
        which gets the prompt.
      observe_tokens: optional static bound on the tokens per row one ``observe`` call
        learns, for memories whose update costs about the same for one token as for
        that many: the loop then calls ``observe`` only once a row holds
        ``observe_tokens - 1`` unseen tokens, before a ``propose`` and when every row
        has finished (``None``: after every round).
      block_sizes: optional increasing static node counts the loop may score instead
        of all ``num_nodes`` (the last must be ``num_nodes``; 0 = a plain decoding
        step): each round scores the smallest one that holds every unfinished row's
        valid nodes, so a drafter whose trees vary in size (nothing retrieved, a
        short match) pays for what it drafted, at one compiled forward pass per
        size. It needs the valid nodes first (trees built front to back); drafters
        with their own mask always score everything. ``None``: always ``num_nodes``.
      model_config: the config of the model that drafts the tree (cost estimates);
        ``None``: no model.
    """

    init: Callable[..., DrafterState]
    propose: Callable[..., tuple[DrafterState, TreeDraft]]
    update: Callable[..., DrafterState]
    vocab_size: int
    num_nodes: int
    max_depth: int
    replacement: bool = True
    observe: Callable[..., DrafterState] | None = None
    observe_tokens: int | None = None
    block_sizes: tuple[int, ...] | None = None
    model_config: Any = None


def default_block_sizes(num_nodes: int, branch_depth: int) -> tuple[int, ...]:
    """Block sizes for a drafter of variable tree sizes: nothing, one branch, two, all.

    ``branch_depth`` is the drafter's deepest branch (a text seen once retrieves one
    chain of about that many nodes).
    """
    return tuple(
        sorted({0, min(num_nodes, branch_depth), min(num_nodes, 2 * branch_depth), num_nodes})
    )


def check_block_sizes(block_sizes, num_nodes: int) -> tuple[int, ...]:
    """``block_sizes`` as a tuple; ValueError unless increasing ints in [0, N] ending at N."""
    sizes = tuple(block_sizes)
    ok = all(isinstance(n, int) and not isinstance(n, bool) for n in sizes)
    ok = ok and len(sizes) > 0 and list(sizes) == sorted(set(sizes))
    ok = ok and sizes[0] >= 0 and sizes[-1] == num_nodes
    if not ok:
        raise ValueError(
            "`block_sizes` must be increasing ints in [0, num_nodes] ending at "
            f"num_nodes={num_nodes}; got {block_sizes!r}."
        )
    return sizes
