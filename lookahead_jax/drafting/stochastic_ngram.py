"""Stochastic n-gram tree drafting in the spirit of STAND (training-free, lossless).

An n-gram *memory* maps a recent context to the target's next-token
distribution there, compressed to its top ``k`` tokens and their log-probs.
Drafting samples a token tree from it; verification is the lossless
without-replacement multi-draft rule, so sampled output follows the target
exactly and greedy output equals greedy decoding.

Memory. For every context length ``n = 1..order`` there is a table of ``S``
(``table_size``) slots. A context ``(t_1, ..., t_n)`` (the last ``n`` tokens of
a committed sequence, or of a committed sequence followed by a tree path) lives
in slot ``t_n % S`` when ``n = 1`` (exact when ``S >= V``) and in a hashed slot
otherwise. Each slot stores its full context (so a lookup never returns another
context's distribution), the target's ``k`` likeliest next tokens and their
log-probabilities under the *unprocessed* distribution (temperature 1, no
top-k/top-p): the memory is independent of how a request samples, and can be
reused across requests with different settings. A lookup backs off from the
longest context (``order`` tokens) to the shortest that is stored. Colliding
contexts overwrite each other (most recent wins). The memory is shared by all
rows of a batch and carried across steps; ``Generation.drafter_state`` returned
by ``generate`` can be passed back as ``memory=`` to keep it across requests.

Writing (``update``). After the target scored a tree, the top ``k`` of its
log-softmax at the root and at every valid node is written under each of that
slot's contexts (every length ``1..order``; ``write`` does the same for any
contexts, e.g. to seed a memory from a corpus). When several writes of one update hit the same slot,
the committed path wins over other nodes, then the later (deeper, later row).

Drafting (``propose``). The tree has a static shape: ``widths[d]`` children per
node at depth ``d`` (the root at depth 0), or any ``trees.Template`` whose
siblings are listed in rank order. The children of a node are drawn *without
replacement, in draw order* from ``q``, the stored distribution of the node's
context processed as the target's sampling (temperature, then top-k / top-p
among the ``k`` stored tokens) and renormalised: a Gumbel-top-k draw. The
child of rank ``r`` is the ``r``-th draw. Every sibling's ``probs`` row is its
parent's ``q``. A node whose context is not stored gets no (valid) children,
nor does a rank beyond the number of tokens with ``q > 0``. Under greedy
sampling the children are the stored tokens in rank order (deterministic).

References: STAND (stochastic adaptive n-gram drafting: n-gram tables of
compressed target distributions shared by samples, Gumbel-top-k trees);
SpecInfer / "multi-draft" without-replacement verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, trees
from lookahead_jax.drafting.base import TreeDraft, TreeDrafter
from lookahead_jax.sampling import Sampling, log_probs

EMPTY = -1  # a token position before the sequence start / a free memory slot
_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)


class StochasticNgramState(NamedTuple):
    """The n-gram memory (``O`` = order, ``S`` = table_size, ``k`` = num_candidates).

    Level ``n - 1`` of each table holds contexts of ``n`` tokens.
    """

    keys: jax.Array  # [O, S, O] int32, each slot's context, left-padded with -1 (all -1: free)
    tokens: jax.Array  # [O, S, k] int32, the target's likeliest next tokens, best first
    log_probs: jax.Array  # [O, S, k] float32, their target log-probs (temperature 1)
    contexts: jax.Array  # [B, N + 1, O] int32, contexts of the last proposed block (root first)


class Memory(NamedTuple):
    """The request-independent part of ``StochasticNgramState`` (what ``memory=`` takes)."""

    keys: jax.Array  # [O, S, O] int32
    tokens: jax.Array  # [O, S, k] int32
    log_probs: jax.Array  # [O, S, k] float32


def empty_memory(order: int, table_size: int, num_candidates: int) -> Memory:
    """A memory with every slot free (nothing is drafted until something is written)."""
    return Memory(
        keys=jnp.full((order, table_size, order), EMPTY, jnp.int32),
        tokens=jnp.zeros((order, table_size, num_candidates), jnp.int32),
        log_probs=jnp.full((order, table_size, num_candidates), -jnp.inf, jnp.float32),
    )


def _level_keys(contexts: jax.Array) -> jax.Array:
    """``[..., O]`` contexts -> ``[O, ..., O]``: level ``n - 1`` keeps the last ``n`` tokens."""
    order = contexts.shape[-1]
    position = jnp.arange(order)
    keep = position[None, :] >= (order - 1 - jnp.arange(order))[:, None]  # [O(level), O]
    keep = keep.reshape((order,) + (1,) * (contexts.ndim - 1) + (order,))
    return jnp.where(keep, contexts[None], EMPTY)


def _slots(level_keys: jax.Array, table_size: int) -> tuple[jax.Array, jax.Array]:
    """Slot index ``[O, ...]`` of each level's key and whether the key is a full context."""
    order = level_keys.shape[-1]
    last = level_keys[..., -1]
    hashed = jnp.full(last.shape, _FNV_OFFSET, jnp.uint32)
    for j in range(order):
        token = (level_keys[..., j] + 1).astype(jnp.uint32)  # padding -1 hashes as 0
        hashed = (hashed ^ token) * _FNV_PRIME
    hashed = hashed ^ (hashed >> 15)
    hashed = (hashed % np.uint32(table_size)).astype(jnp.int32)
    unigram = jnp.maximum(last, 0) % table_size
    is_unigram = (jnp.arange(order) == 0).reshape((order,) + (1,) * (last.ndim - 1))
    slot = jnp.where(is_unigram, unigram, hashed)
    # A level-n key is complete when its last n tokens are real tokens.
    needed = level_keys.shape[-1] - 1 - jnp.arange(order)  # first position used per level
    position = jnp.arange(order)
    used = position >= needed.reshape((order,) + (1,) * (last.ndim - 1) + (1,))
    complete = jnp.all(jnp.where(used, level_keys >= 0, True), axis=-1)
    return slot, complete


def lookup(
    memory: Memory | StochasticNgramState, contexts: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The stored distribution of the longest stored suffix of each context.

    Args:
      memory: the n-gram memory (a ``StochasticNgramState`` works too).
      contexts: [..., O] int32, the last ``O`` tokens of each sequence, oldest
        first, left-padded with -1 when the sequence is shorter.
    Returns:
      ``(tokens [..., k] int32, log_probs [..., k] float32, found [...] bool)``:
      the target's likeliest next tokens and their stored (temperature 1)
      log-probs; ``found`` is False (and log_probs -inf) when no suffix is stored.
    """
    order, table_size, _ = memory.keys.shape
    contexts = jnp.asarray(contexts, jnp.int32)
    if contexts.shape[-1] != order:
        raise ValueError(
            f"`contexts` must end in an axis of the memory's order {order}; "
            f"got shape {contexts.shape}."
        )
    level_keys = _level_keys(contexts)  # [O, ..., O]
    slot, complete = _slots(level_keys, table_size)  # [O, ...]
    levels = jnp.arange(order).reshape((order,) + (1,) * (slot.ndim - 1))
    stored = memory.keys[levels, slot]  # [O, ..., O]
    hit = complete & jnp.all(stored == level_keys, axis=-1)  # [O, ...]
    # Back off: the longest stored context wins.
    best = order - 1 - jnp.argmax(hit[::-1], axis=0)  # [...]
    found = jnp.any(hit, axis=0)
    best_slot = jnp.take_along_axis(slot, best[None], axis=0)[0]
    tokens = memory.tokens[best, best_slot]
    values = jnp.where(found[..., None], memory.log_probs[best, best_slot], -jnp.inf)
    return tokens, values, found


def write(
    memory: Memory | StochasticNgramState,
    contexts: jax.Array,
    logits: jax.Array,
    mask: jax.Array | None = None,
    priority: jax.Array | None = None,
) -> Memory:
    """Stores the target's next-token distribution after each context, at every length.

    Args:
      memory: the n-gram memory.
      contexts: [M, O] int32 contexts (left-padded with -1).
      logits: [M, V] the target's logits after each context.
      mask: [M] bool, which rows to write (default all).
      priority: [M] int32, distinct; when rows hit the same slot the highest
        wins (default: the later row).
    Returns:
      The updated ``Memory`` (top-k tokens and temperature-1 log-probs).
    """
    num_candidates = memory.tokens.shape[-1]
    values, top = lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), num_candidates)
    return _write_ranked(memory, contexts, top.astype(jnp.int32), values, mask, priority)


def _write_ranked(memory, contexts, top, values, mask=None, priority=None) -> Memory:
    """``write`` with each row's ``k`` ranked tokens [M, k] and log-probs [M, k] given."""
    order, table_size, _ = memory.keys.shape
    num_candidates = memory.tokens.shape[-1]
    contexts = jnp.asarray(contexts, jnp.int32)
    num = contexts.shape[0]
    mask = jnp.ones((num,), bool) if mask is None else mask
    priority = jnp.arange(num, dtype=jnp.int32) if priority is None else priority
    level_keys = _level_keys(contexts)  # [O, M, O]
    slot, complete = _slots(level_keys, table_size)  # [O, M]
    ok = complete & mask[None, :]
    levels = jnp.broadcast_to(jnp.arange(order)[:, None], slot.shape)
    rank = jnp.where(ok, priority[None, :], -1)
    winner = jnp.full((order, table_size), -1, jnp.int32).at[levels, slot].max(rank)
    wins = ok & (winner[levels, slot] == rank)
    target_slot = jnp.where(wins, slot, table_size)  # losers are dropped
    keys = memory.keys.at[levels, target_slot].set(level_keys, mode="drop")
    tokens = memory.tokens.at[levels, target_slot].set(
        jnp.broadcast_to(top, (order, num, num_candidates)), mode="drop"
    )
    log_p = memory.log_probs.at[levels, target_slot].set(
        jnp.broadcast_to(values, (order, num, num_candidates)), mode="drop"
    )
    return Memory(keys, tokens, log_p)


def _observed_successors(memory, sequences, lengths) -> Memory:
    """Writes each context of the sequences with its observed next token (probability 1)."""
    order = memory.keys.shape[0]
    num_candidates = memory.tokens.shape[-1]
    num, width = sequences.shape
    end = jnp.arange(width - 1)  # the context ends at position i, its successor is i + 1
    back = end[:, None] - order + 1 + jnp.arange(order)[None, :]  # [T - 1, O]
    contexts = jnp.where(back[None] >= 0, sequences[:, jnp.maximum(back, 0)], EMPTY)
    successor = sequences[:, 1:]
    keep = end[None, :] + 1 < lengths[:, None]
    top = jnp.zeros((num, width - 1, num_candidates), jnp.int32).at[..., 0].set(successor)
    values = jnp.full((num, width - 1, num_candidates), -jnp.inf, jnp.float32).at[..., 0].set(0.0)
    # Row-major priority: a later occurrence of a context wins over an earlier one.
    return _write_ranked(
        memory,
        contexts.reshape(-1, order),
        top.reshape(-1, num_candidates),
        values.reshape(-1, num_candidates),
        keep.reshape(-1),
    )


def seed_memory(
    memory: Memory | StochasticNgramState,
    sequences: jax.Array,
    lengths: jax.Array,
    vocab_size: int,
) -> Memory:
    """Writes every context of a document set with the token that followed it.

    Each stored context gets its observed successor with probability 1 (the latest
    occurrence wins), until the target's own distribution is written there.

    Args:
      memory: the n-gram memory (e.g. ``empty_memory(order, table_size, k)``).
      sequences: [S, T] int token sequences, left-aligned; ids in [0, V).
      lengths: [S] int in [0, T], real tokens per sequence.
      vocab_size: V, the vocabulary the ids must lie in.
    Returns:
      The updated ``Memory`` (pass it as ``stochastic_ngram(..., memory=...)``).
    """
    sequences, lengths = _checks.check_sequences("sequences", sequences, lengths, vocab_size)
    return _observed_successors(memory, sequences, lengths)


def _template_from_widths(widths: Sequence[int]) -> trees.Template:
    levels: list[list[tuple[int, ...]]] = [[()]]
    for width in widths:
        levels.append([(*p, r) for p in levels[-1] for r in range(width)])
    return trees.template_from_rank_paths([p for level in levels[1:] for p in level])


def _check_sibling_order(template: trees.Template) -> int:
    """Siblings must appear in rank order 0, 1, ... (draw order); returns the max fan-out."""
    fan_out = 0
    for p in np.unique(template.parent):
        ranks = template.rank[template.parent == p]
        if not np.array_equal(ranks, np.arange(len(ranks))):
            raise ValueError(
                "the template's siblings must be listed in rank order 0, 1, 2, ... (their "
                f"draw order); the children of node {int(p)} have ranks {ranks.tolist()}."
            )
        fan_out = max(fan_out, len(ranks))
    return fan_out


def stochastic_ngram(
    vocab_size: int,
    *,
    order: int = 2,
    num_candidates: int = 8,
    widths: Sequence[int] | None = (4, 2, 2, 1, 1),
    template: trees.Template | None = None,
    table_size: int | None = None,
    memory: Memory | StochasticNgramState | None = None,
    seed_from_prompt: bool = True,
) -> TreeDrafter:
    """A ``TreeDrafter`` sampling Gumbel-top-k token trees from an n-gram memory.

    Args:
      vocab_size: V, the target's vocabulary.
      order: O, the longest context (in tokens, the last committed one included)
        the memory is keyed on; shorter contexts down to one token are the backoff.
      num_candidates: k, tokens stored per context (a node has at most k children).
      widths: children per node at each depth (a full tree; ``(4, 2)`` has
        4 + 8 nodes). Ignored when ``template`` is given.
      template: any static tree shape whose siblings are listed in rank order.
      table_size: S, slots per context length (default ``max(4 V, 4096)``;
        contexts of one token are stored exactly when S >= V).
      memory: a ``Memory`` / ``StochasticNgramState`` to start from (e.g. the
        ``drafter_state`` of a previous ``Generation``, or ``seed_memory`` over
        documents); default empty.
      seed_from_prompt: at ``init``, write every context of the prompts with the token
        that followed it (probability 1), so the first rounds already draft the
        prompt's phrases; the target's distributions overwrite them as it scores.
    Returns:
      A ``TreeDrafter`` with ``replacement=False`` (siblings are drawn without
      replacement from their parent's distribution), whose state is a
      ``StochasticNgramState``.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"`vocab_size` must be a positive int; got {vocab_size!r}.")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"`order` must be a positive int; got {order!r}.")
    if not isinstance(num_candidates, int) or not 1 <= num_candidates <= vocab_size:
        raise ValueError(
            f"`num_candidates` must be an int in [1, vocab_size={vocab_size}]; "
            f"got {num_candidates!r}."
        )
    if template is None:
        if (
            widths is None
            or len(widths) == 0
            or not all(isinstance(w, int) and w >= 1 for w in widths)
        ):
            raise ValueError(
                f"`widths` must be a non-empty sequence of positive ints; got {widths!r}."
            )
        template = _template_from_widths(widths)
    elif not isinstance(template, trees.Template):
        raise ValueError(f"`template` must be a trees.Template; got {type(template)}.")
    fan_out = _check_sibling_order(template)
    if fan_out > num_candidates:
        raise ValueError(
            f"the tree gives a node {fan_out} children but the memory keeps only "
            f"`num_candidates`={num_candidates} tokens per context."
        )
    table_size = max(4 * vocab_size, 4096) if table_size is None else table_size
    if not isinstance(table_size, int) or table_size < 1:
        raise ValueError(f"`table_size` must be a positive int; got {table_size!r}.")
    if memory is not None:
        want = {
            "keys": (order, table_size, order),
            "tokens": (order, table_size, num_candidates),
            "log_probs": (order, table_size, num_candidates),
        }
        for name, shape in want.items():
            got = tuple(jnp.shape(getattr(memory, name)))
            if got != shape:
                raise ValueError(
                    f"`memory.{name}` must have shape (order, table_size, ...) = {shape}; "
                    f"got {got}."
                )
        memory = Memory(memory.keys, memory.tokens, memory.log_probs)

    num_nodes = template.num_nodes
    parent = jnp.asarray(template.parent)
    rank = jnp.asarray(template.rank)
    depth = jnp.asarray(template.depth)
    slot_depth = jnp.concatenate([jnp.zeros((1,), jnp.int32), depth])  # [N + 1], root first

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> StochasticNgramState:
        del capacity
        start = empty_memory(order, table_size, num_candidates) if memory is None else memory
        if seed_from_prompt:
            start = _observed_successors(
                start, jnp.asarray(prompt, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32)
            )
        batch = prompt.shape[0]
        return StochasticNgramState(
            keys=jnp.asarray(start.keys, jnp.int32),
            tokens=jnp.asarray(start.tokens, jnp.int32),
            log_probs=jnp.asarray(start.log_probs, jnp.float32),
            contexts=jnp.full((batch, num_nodes + 1, order), EMPTY, jnp.int32),
        )

    def propose(
        state: StochasticNgramState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[StochasticNgramState, TreeDraft]:
        batch = tokens.shape[0]
        rows = jnp.arange(batch)
        root = tokens[rows, lengths - 1]
        back = lengths[:, None] - order + jnp.arange(order)[None, :]  # [B, O]
        root_context = jnp.where(
            back >= 0, tokens[rows[:, None], jnp.maximum(back, 0)], EMPTY
        ).astype(jnp.int32)
        contexts = jnp.full((batch, num_nodes + 1, order), EMPTY, jnp.int32)
        contexts = contexts.at[:, 0].set(root_context)
        node_token = jnp.zeros((batch, num_nodes), jnp.int32)
        node_valid = jnp.zeros((batch, num_nodes), bool)
        slot_valid = jnp.zeros((batch, num_nodes + 1), bool).at[:, 0].set(True)
        # Each slot's drawn children (ranked tokens) and draft distribution over its k tokens.
        ranked = jnp.zeros((batch, num_nodes + 1, num_candidates), jnp.int32)
        ranked_ok = jnp.zeros((batch, num_nodes + 1, num_candidates), bool)
        slot_tokens = jnp.zeros((batch, num_nodes + 1, num_candidates), jnp.int32)
        slot_q = jnp.zeros((batch, num_nodes + 1, num_candidates), jnp.float32)
        parent_slot = jnp.broadcast_to(parent + 1, (batch, num_nodes))
        index = jnp.broadcast_to(rank[None, :, None], (batch, num_nodes, 1))

        def fill_level(level, carry):
            contexts, node_token, node_valid, slot_valid, ranked, ranked_ok, slot_tokens, slot_q = (
                carry
            )
            # Draw the children of every slot at depth level - 1 (their contexts are known).
            cand, stored, found = lookup(state, contexts)  # [B, N + 1, k], [B, N + 1]
            stored = jnp.where(found[..., None], stored, 0.0)  # no NaN from empty slots
            if sampling.greedy:
                q = jnp.exp(jax.nn.log_softmax(stored, axis=-1))
                order_ = jnp.broadcast_to(jnp.arange(num_candidates), cand.shape)
                finite = jnp.isfinite(stored)
            else:
                processed = log_probs(stored, sampling)  # renormalised over the k tokens
                q = jnp.exp(processed)
                gumbel = jax.random.gumbel(jax.random.fold_in(key, level), cand.shape, jnp.float32)
                _, order_ = lax.top_k(processed + gumbel, num_candidates)  # draw order
                finite = jnp.isfinite(processed)
            draws = jnp.take_along_axis(cand, order_, axis=-1)
            draws_ok = jnp.take_along_axis(finite, order_, axis=-1) & found[..., None]
            expand = (slot_depth == level - 1)[None, :, None] & slot_valid[..., None]
            ranked = jnp.where(expand, draws, ranked)
            ranked_ok = jnp.where(expand, draws_ok, ranked_ok)
            slot_tokens = jnp.where(expand, cand, slot_tokens)
            slot_q = jnp.where(expand & found[..., None], q, slot_q)
            # Fill the nodes at this depth: the child of rank r is the parent's r-th draw.
            token = jnp.take_along_axis(ranked[rows[:, None], parent_slot], index, axis=2)[..., 0]
            ok = jnp.take_along_axis(ranked_ok[rows[:, None], parent_slot], index, axis=2)[..., 0]
            ok = ok & slot_valid[rows[:, None], parent_slot]
            at_level = (depth == level)[None, :]
            node_token = jnp.where(at_level, jnp.where(ok, token, 0), node_token)
            node_valid = jnp.where(at_level, ok, node_valid)
            slot_valid = slot_valid.at[:, 1:].set(node_valid)
            parent_context = contexts[rows[:, None], parent_slot]  # [B, N, O]
            child_context = jnp.concatenate([parent_context[..., 1:], node_token[..., None]], -1)
            child_context = jnp.where(node_valid[..., None], child_context, EMPTY)
            contexts = contexts.at[:, 1:].set(
                jnp.where(at_level[..., None], child_context, contexts[:, 1:])
            )
            return (
                contexts,
                node_token,
                node_valid,
                slot_valid,
                ranked,
                ranked_ok,
                slot_tokens,
                slot_q,
            )

        carry = (
            contexts,
            node_token,
            node_valid,
            slot_valid,
            ranked,
            ranked_ok,
            slot_tokens,
            slot_q,
        )
        carry = lax.fori_loop(1, template.max_depth + 1, fill_level, carry)
        contexts, node_token, node_valid, _, _, _, slot_tokens, slot_q = carry
        # probs: each node's parent's q over the vocabulary (uniform where nothing is stored).
        parent_q = slot_q[rows[:, None], parent_slot]  # [B, N, k]
        parent_tokens = slot_tokens[rows[:, None], parent_slot]
        probs = jnp.zeros((batch, num_nodes, vocab_size), jnp.float32)
        probs = probs.at[
            rows[:, None, None], jnp.arange(num_nodes)[None, :, None], parent_tokens
        ].add(parent_q)
        has_q = jnp.sum(probs, axis=-1, keepdims=True) > 0
        probs = jnp.where(has_q, probs, 1.0 / vocab_size)
        tree = trees.TokenTree(
            parent=jnp.where(node_valid, parent_slot - 1, trees.ROOT).astype(jnp.int32),
            depth=jnp.broadcast_to(depth, (batch, num_nodes)),
            token=node_token,
            valid=node_valid,
        )
        return state._replace(contexts=contexts), TreeDraft(tree, probs, root)

    def update(state, lengths_before, draft, verified, target_logits) -> StochasticNgramState:
        del lengths_before
        batch = draft.tree.valid.shape[0]
        rows = jnp.arange(batch)
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), draft.tree.valid], axis=1)
        steps = jnp.arange(num_nodes + 1)[None, :]
        on_path = steps < verified.path_length[:, None]
        committed = (
            jnp.zeros((batch, num_nodes + 1), bool)
            .at[rows[:, None], jnp.where(on_path, verified.path, num_nodes + 1)]
            .set(True, mode="drop")
        )
        flat = jnp.arange(batch * (num_nodes + 1), dtype=jnp.int32).reshape(batch, -1)
        priority = flat + jnp.where(committed, batch * (num_nodes + 1), 0)
        vocab = target_logits.shape[-1]
        written = write(
            state,
            state.contexts.reshape(-1, order),
            target_logits.reshape(-1, vocab),
            mask=valid.reshape(-1),
            priority=priority.reshape(-1),
        )
        return state._replace(keys=written.keys, tokens=written.tokens, log_probs=written.log_probs)

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab_size,
        num_nodes=num_nodes,
        max_depth=template.max_depth,
        replacement=False,
    )
