"""Jacobi lookahead decoding (Fu et al., ICML 2024) as a tree drafter.

No draft model: the target itself proposes. Every round scores, in the same
target pass as the verification, a *lookahead branch* that runs one Jacobi
iteration over a 2-D window, and a *verification branch* of n-grams from a pool.

Window. ``N - 1`` rows by ``W`` columns of guessed tokens (``N`` = ``ngram``,
``W`` = ``window``). With the root (the last committed token) at depth 0, the
token in row ``r``, column ``j`` sits at depth ``j + 1 + r``: row 0 guesses the
next ``W`` tokens, each later row one step further. It attends to the root,
row 0 up to its own column and the earlier rows of its own column, so it sees
exactly one token at every depth before its own (its column's *path*), and the
target's output there predicts the token after that path. Column ``j`` with
that prediction is an n-gram ``(window[0, j], ..., window[N - 2, j], out[j])``
that goes into the pool; then the window moves up one row and the predictions
become its last row (the Jacobi update).

Pool. At most ``G`` (``guesses``) n-grams per first token, ``[V, G, N - 1]``
continuations, shared by the rows of a batch; a full key replaces its oldest
entry, and an n-gram already stored is not stored twice. It is seeded with the
prompts' own n-grams at ``init`` and can be carried across requests
(``memory=gen.drafter_state``) or built from documents (:func:`lookahead_pool`).

Verification branch. The pool's n-grams whose first token is the root, as up
to ``G`` parallel chains of ``N - 1`` nodes below the root; the window's nodes
are marked invalid in the tree (never accepted) but scored under the drafter's
own attention mask (``TreeDraft.mask``), and the two branches never see each
other.

Sampling. Candidates are fixed tokens (one-hot ``probs``), verified by the
lossless tree rule, so sampled output follows the target exactly and greedy
output equals greedy decoding. The lookahead branch only proposes: it always
takes the target's argmax (as the paper's greedy lookahead does).

Cost. Each round scores ``1 + (G + W)(N - 1)`` tokens instead of 1: worth it
where the target's forward pass is memory-bound (spare compute per call),
which is the paper's setting (7B-70B on GPUs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, trees
from lookahead_jax.drafting.base import TreeDraft, TreeDrafter
from lookahead_jax.sampling import Sampling


class NgramPool(NamedTuple):
    """The request-independent memory of :func:`lookahead` (what ``memory=`` takes)."""

    ngrams: jax.Array  # [V, G, N - 1] int32, continuations stored under each first token
    num_stored: jax.Array  # [V] int32, n-grams ever stored per key (slot = num_stored % G)


class LookaheadState(NamedTuple):
    """The n-gram pool and each row's Jacobi window."""

    ngrams: jax.Array  # [V, G, N - 1] int32, the pool (see NgramPool)
    num_stored: jax.Array  # [V] int32
    window: jax.Array  # [B, N - 1, W] int32, row r column j guesses depth j + 1 + r
    num_seen: jax.Array  # [B] int32, committed tokens whose n-grams are in the pool


def empty_pool(vocab_size: int, guesses: int, ngram: int) -> NgramPool:
    """A pool with nothing stored (no candidates until something is inserted)."""
    return NgramPool(
        ngrams=jnp.zeros((vocab_size, guesses, ngram - 1), jnp.int32),
        num_stored=jnp.zeros((vocab_size,), jnp.int32),
    )


def _insert(ngrams, num_stored, items, keep):
    """Stores ``items [M, N]`` (first token, continuation) where ``keep [M]``, in order.

    Sequential over items, so two items with the same first token in one call both land
    (a scatter would keep one): each is skipped if its key already holds it, else it
    replaces the key's oldest entry.
    """
    guesses = ngrams.shape[1]
    if items.shape[0] == 0:
        return ngrams, num_stored

    def body(i, carry):
        ngrams, num_stored = carry
        first = items[i, 0]
        rest = items[i, 1:]
        stored = ngrams[first]  # [G, N - 1]
        filled = jnp.arange(guesses) < num_stored[first]
        duplicate = jnp.any(filled & jnp.all(stored == rest[None, :], axis=1))
        store = keep[i] & ~duplicate
        slot = num_stored[first] % guesses
        ngrams = ngrams.at[first, slot].set(jnp.where(store, rest, stored[slot]))
        num_stored = num_stored.at[first].add(store.astype(jnp.int32))
        return ngrams, num_stored

    return lax.fori_loop(0, items.shape[0], body, (ngrams, num_stored))


def _sequence_ngrams(sequences, lengths, ngram):
    """Every n-gram of each sequence: ``items [S * T, N]`` and ``keep [S * T]``."""
    _num, width = sequences.shape
    start = jnp.arange(width)
    index = jnp.clip(start[:, None] + jnp.arange(ngram)[None, :], 0, width - 1)  # [T, N]
    items = sequences[:, index]  # [S, T, N]
    keep = start[None, :] + ngram <= lengths[:, None]
    return items.reshape(-1, ngram), keep.reshape(-1)


def insert_ngrams(
    pool: NgramPool | LookaheadState, sequences: jax.Array, lengths: jax.Array
) -> NgramPool:
    """Stores every n-gram of each sequence (e.g. a document set) in the pool.

    Args:
      pool: the pool (a ``LookaheadState`` works too).
      sequences: [S, T] int token sequences, left-aligned; ids in [0, V).
      lengths: [S] int in [0, T], real tokens per sequence.
    Returns:
      The updated ``NgramPool``.
    """
    vocab, _, rest = pool.ngrams.shape
    sequences, lengths = _checks.check_sequences("sequences", sequences, lengths, vocab)
    items, keep = _sequence_ngrams(sequences, lengths, rest + 1)
    ngrams, num_stored = _insert(pool.ngrams, pool.num_stored, items, keep)
    return NgramPool(ngrams, num_stored)


def lookahead_pool(
    vocab_size: int,
    sequences: jax.Array | None = None,
    lengths: jax.Array | None = None,
    *,
    ngram: int = 4,
    guesses: int = 5,
) -> NgramPool:
    """A pool for ``lookahead(..., memory=pool)``: empty, or filled from documents.

    Args:
      vocab_size: V.
      sequences: optional [S, T] int documents (see :func:`insert_ngrams`).
      lengths: [S] int, real tokens per document (required with ``sequences``).
      ngram, guesses: as in :func:`lookahead` (they fix the pool's shape).
    """
    _check_sizes(vocab_size, 1, ngram, guesses)
    pool = empty_pool(vocab_size, guesses, ngram)
    if sequences is None:
        return pool
    if lengths is None:
        raise ValueError("`lengths` must be given with `sequences` (one length per document).")
    return insert_ngrams(pool, sequences, lengths)


def _check_sizes(vocab_size, window, ngram, guesses) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"`vocab_size` must be a positive int; got {vocab_size!r}.")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` must be an int >= 1; got {window!r}.")
    if not isinstance(ngram, int) or ngram < 2:
        raise ValueError(f"`ngram` must be an int >= 2 (a first token and a guess); got {ngram!r}.")
    if not isinstance(guesses, int) or guesses < 1:
        raise ValueError(f"`guesses` must be an int >= 1; got {guesses!r}.")


def _layout(window: int, ngram: int, guesses: int):
    """Static node layout: G chains of N - 1, then the window row by row.

    Returns parent [M], depth [M] (the verification chains' first) and the block mask
    [M + 1, M + 1] with the root at index 0, as NumPy arrays.
    """
    rest = ngram - 1
    num_chain = guesses * rest
    num_nodes = num_chain + window * rest
    parent = np.full((num_nodes,), trees.ROOT, np.int32)
    depth = np.zeros((num_nodes,), np.int32)
    mask = np.zeros((num_nodes + 1, num_nodes + 1), bool)
    mask[:, 0] = True
    mask[np.arange(num_nodes + 1), np.arange(num_nodes + 1)] = True
    for g in range(guesses):
        for d in range(rest):
            node = g * rest + d
            parent[node] = trees.ROOT if d == 0 else node - 1
            depth[node] = d + 1
            mask[node + 1, g * rest + 1 : node + 2] = True

    def window_node(r, j):
        return num_chain + r * window + j

    for r in range(rest):
        for j in range(window):
            node = window_node(r, j)
            depth[node] = j + 1 + r
            for jj in range(j + 1):  # row 0 up to this column
                mask[node + 1, window_node(0, jj) + 1] = True
            for rr in range(1, r + 1):  # this column's earlier rows (and itself)
                mask[node + 1, window_node(rr, j) + 1] = True
    return parent, depth, mask


def lookahead(
    vocab_size: int,
    *,
    window: int = 5,
    ngram: int = 4,
    guesses: int = 5,
    memory: NgramPool | LookaheadState | None = None,
    seed_from_prompt: bool = True,
    learn_from_output: bool = True,
) -> TreeDrafter:
    """A ``TreeDrafter`` running Jacobi lookahead decoding (see the module docstring).

    Args:
      vocab_size: V, the target's vocabulary.
      window: W, the lookahead window's width (tokens guessed ahead per row).
      ngram: N, the n-gram size (the window has N - 1 rows; candidates are N - 1
        tokens after the root).
      guesses: G, n-grams kept per first token and verified per round.
      memory: a pool to start from: the ``drafter_state`` of a previous generation
        (memory across requests) or :func:`lookahead_pool` over documents;
        default empty.
      seed_from_prompt: store the prompts' own n-grams at ``init`` (the paper's
        prompt seeding).
      learn_from_output: also store the n-grams of the committed output as it is
        committed (the paper's pool holds only the lookahead branch's n-grams; the
        output's own n-grams are what a later request repeating it needs).
    Returns:
      A ``TreeDrafter`` of ``(G + W)(N - 1)`` nodes (``G (N - 1)`` verified), whose
      state is a ``LookaheadState``.
    """
    _check_sizes(vocab_size, window, ngram, guesses)
    rest = ngram - 1
    if memory is not None:
        want = {"ngrams": (vocab_size, guesses, rest), "num_stored": (vocab_size,)}
        for name, shape in want.items():
            got = tuple(jnp.shape(getattr(memory, name)))
            if got != shape:
                raise ValueError(
                    f"`memory.{name}` must have shape {shape} (vocab_size, guesses, ngram - 1) "
                    f"for this drafter; got {got}."
                )
        memory = NgramPool(memory.ngrams, memory.num_stored)
    parent, depth, mask = _layout(window, ngram, guesses)
    num_chain = guesses * rest
    num_nodes = parent.shape[0]
    max_depth = int(depth.max())

    def init(prompt: jax.Array, prompt_lengths: jax.Array, capacity: int) -> LookaheadState:
        del capacity
        pool = empty_pool(vocab_size, guesses, ngram) if memory is None else memory
        prompt = jnp.asarray(prompt, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        ngrams, num_stored = jnp.asarray(pool.ngrams, jnp.int32), pool.num_stored
        if seed_from_prompt:
            items, keep = _sequence_ngrams(prompt, prompt_lengths, ngram)
            ngrams, num_stored = _insert(ngrams, num_stored, items, keep)
        # The window starts as tokens drawn from each row's prompt (a fixed key: init
        # must be deterministic; the guesses only seed the Jacobi iteration).
        batch = prompt.shape[0]
        draws = jax.random.randint(jax.random.key(0), (batch, rest, window), 0, 2**30)
        picks = draws % prompt_lengths[:, None, None]
        start = jnp.take_along_axis(prompt, picks.reshape(batch, -1), axis=1)
        return LookaheadState(
            ngrams=ngrams,
            num_stored=jnp.asarray(num_stored, jnp.int32),
            window=start.reshape(batch, rest, window),
            num_seen=prompt_lengths,
        )

    def propose(
        state: LookaheadState,
        key: jax.Array,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        sampling: Sampling,
    ) -> tuple[LookaheadState, TreeDraft]:
        del key, sampling
        batch = tokens.shape[0]
        rows = jnp.arange(batch)
        root = tokens[rows, lengths - 1]
        candidates = state.ngrams[root]  # [B, G, N - 1]
        available = jnp.minimum(state.num_stored[root], guesses)  # [B]
        chain_valid = jnp.arange(guesses)[None, :] < available[:, None]  # [B, G]
        token = jnp.concatenate(
            [candidates.reshape(batch, num_chain), state.window.reshape(batch, -1)], axis=1
        )
        valid = jnp.concatenate(
            [
                jnp.repeat(chain_valid, rest, axis=1),
                jnp.zeros((batch, num_nodes - num_chain), bool),
            ],
            axis=1,
        )
        tree = trees.TokenTree(
            parent=jnp.broadcast_to(jnp.asarray(parent), (batch, num_nodes)),
            depth=jnp.broadcast_to(jnp.asarray(depth), (batch, num_nodes)),
            token=token,
            valid=valid,
        )
        probs = jax.nn.one_hot(token, vocab_size, dtype=jnp.float32)
        block_mask = jnp.broadcast_to(jnp.asarray(mask), (batch, num_nodes + 1, num_nodes + 1))
        return state, TreeDraft(tree, probs, root, block_mask)

    def update(state, lengths_before, draft, verified, target_logits) -> LookaheadState:
        del lengths_before, verified
        batch = draft.root.shape[0]
        # The target's next token after every window position (block index node + 1).
        out = jnp.argmax(target_logits[:, 1 + num_chain :], axis=-1).astype(jnp.int32)
        out = out.reshape(batch, rest, window)
        # Column j and the prediction after its last row form an n-gram.
        items = jnp.concatenate([state.window, out[:, -1:]], axis=1)  # [B, N, W]
        items = jnp.swapaxes(items, 1, 2).reshape(-1, ngram)  # [B * W, N]
        ngrams, num_stored = _insert(
            state.ngrams, state.num_stored, items, jnp.ones((items.shape[0],), bool)
        )
        # Jacobi update: rows move up one step; the predictions become the last row.
        moved = jnp.concatenate([state.window[:, 1:], out[:, -1:]], axis=1)
        return state._replace(ngrams=ngrams, num_stored=num_stored, window=moved)

    def observe(state: LookaheadState, tokens: jax.Array, lengths: jax.Array) -> LookaheadState:
        # The n-grams ending at the tokens committed this round (at most N: N - 1
        # accepted and one from the target), so the pool remembers the output itself.
        batch, width = tokens.shape
        ends = lengths[:, None] - 1 - jnp.arange(ngram)[::-1][None, :]  # [B, N], oldest first
        starts = ends - ngram + 1
        keep = (ends >= state.num_seen[:, None]) & (starts >= 0)
        index = jnp.clip(starts[..., None] + jnp.arange(ngram), 0, width - 1)  # [B, N, N]
        items = tokens[jnp.arange(batch)[:, None, None], index]
        if learn_from_output:
            ngrams, num_stored = _insert(
                state.ngrams, state.num_stored, items.reshape(-1, ngram), keep.reshape(-1)
            )
            state = state._replace(ngrams=ngrams, num_stored=num_stored)
        return state._replace(num_seen=lengths)

    return TreeDrafter(
        init=init,
        propose=propose,
        update=update,
        vocab_size=vocab_size,
        num_nodes=num_nodes,
        max_depth=max_depth,
        replacement=True,
        observe=observe,
        # Its own mask scores the window with the candidates: all or nothing (0, a plain
        # step, when a cost-aware controller says the round does not pay).
        block_sizes=(num_nodes,),
    )


__all__ = [
    "LookaheadState",
    "NgramPool",
    "empty_pool",
    "insert_ngrams",
    "lookahead",
    "lookahead_pool",
]
