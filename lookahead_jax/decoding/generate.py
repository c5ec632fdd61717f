"""Autoregressive and speculative generation, each one ``lax.while_loop``.

Ragged prompt batches, per-row EOS and budget, greedy / temperature / top-k /
top-p sampling. Without a drafter every round emits one token (plain
autoregressive decoding); with a drafter every round drafts up to K tokens,
verifies them in one target pass over K + 1 positions, and emits the accepted
drafts plus one target token.

Invariants kept per row (``L`` = committed tokens, prompt included):
  * the output buffer holds the L committed tokens;
  * the target cache holds the first ``L - 1`` (the last token is fed next);
  * rows never wait for each other: each writes at its own length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks, trees
from lookahead_jax import models as _models
from lookahead_jax.drafting.base import Draft, Drafter, TreeDrafter
from lookahead_jax.drafting.controllers import Controller, constant
from lookahead_jax.sampling import Sampling, log_probs, sample
from lookahead_jax.verification import (
    TreeVerified,
    Verified,
    greedy,
    speculative_sampling,
    tree_greedy,
    tree_speculative_sampling,
)

VERIFIERS = ("greedy", "speculative_sampling")
# (key, draft_tokens [B, K], draft_probs [B, K, V], target_probs [B, K + 1, V], num_draft [B])
Verifier = Callable[..., Verified]


class GenerationStats(NamedTuple):
    """Per-row counters of one generation."""

    target_calls: (
        jax.Array
    )  # [B] int32, target forward passes that advanced this row (incl. prefill)
    drafted: jax.Array  # [B] int32, draft tokens (tree nodes) proposed to the target
    accepted: jax.Array  # [B] int32, draft tokens the target accepted
    accept_histogram: (
        jax.Array
    )  # [B, K + 1] int32, rounds that accepted 0..K drafts (K = max tree depth for trees)


class Generation(NamedTuple):
    """Prompts followed by their continuations, right-padded with ``pad_id``."""

    tokens: jax.Array  # [B, P + max_new_tokens] int32
    lengths: jax.Array  # [B] int32, prompt + generated tokens per row
    num_generated: jax.Array  # [B] int32, generated tokens per row (EOS included)
    stats: GenerationStats
    drafter_state: Any = None  # the drafter's final state (e.g. Token Recycling's table)


class _LoopState(NamedTuple):
    tokens: jax.Array  # [B, W] int32 output buffer
    lengths: jax.Array  # [B] int32 committed tokens per row
    target_cache: _models.KVCache  # holds lengths - 1 tokens per row
    drafter_state: Any
    controller_state: Any
    finished: jax.Array  # [B] bool
    key: jax.Array  # PRNG key
    stats: GenerationStats


def _check_inputs(target, prompt, prompt_lengths, max_new_tokens, drafter, max_draft_tokens):
    config = target.config
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 2, "[batch, max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, config.vocab_size)
    batch, width = jnp.shape(prompt)
    _checks.check_integer("prompt_lengths", prompt_lengths)
    _checks.check_shape("prompt_lengths", prompt_lengths, (batch,), "one length per row")
    _checks.check_range("prompt_lengths", prompt_lengths, 1, width + 1)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int; got {max_new_tokens!r}.")
    if not isinstance(max_draft_tokens, int) or max_draft_tokens < 0:
        raise ValueError(f"`max_draft_tokens` must be an int >= 0; got {max_draft_tokens!r}.")
    if drafter is not None and not isinstance(drafter, Drafter | TreeDrafter):
        raise ValueError(
            f"`drafter` must be a drafting.Drafter or drafting.TreeDrafter; got {type(drafter)}."
        )
    if drafter is not None and drafter.vocab_size != config.vocab_size:
        raise ValueError(
            f"the drafter's vocabulary ({drafter.vocab_size}) must equal the target's "
            f"({config.vocab_size})."
        )
    if isinstance(drafter, TreeDrafter):
        # Tree nodes occupy cache slots beyond the committed tokens, but positions only
        # up to the deepest node.
        if width + max_new_tokens + drafter.max_depth > config.max_length:
            raise ValueError(
                f"prompt width {width} + `max_new_tokens` {max_new_tokens} + the tree's "
                f"max_depth {drafter.max_depth} exceeds the target's "
                f"config.max_length={config.max_length} positions."
            )
        return
    lookahead = max_draft_tokens if drafter is not None else 0
    if width + max_new_tokens + lookahead > config.max_length:
        raise ValueError(
            f"prompt width {width} + `max_new_tokens` {max_new_tokens}"
            + (f" + `max_draft_tokens` {lookahead}" if lookahead else "")
            + f" exceeds the target's config.max_length={config.max_length} positions "
            "(the prompts do not fit the cache)."
        )


def _resolve_verifier(verifier: str | Verifier | None, sampling: Sampling) -> Verifier | str:
    if verifier is None:
        return "greedy" if sampling.greedy else "speculative_sampling"
    if isinstance(verifier, str):
        if verifier not in VERIFIERS:
            raise ValueError(
                f"`verifier` must be one of {VERIFIERS} or a callable; got {verifier!r}."
            )
        if verifier == "greedy" and not sampling.greedy:
            raise ValueError("`verifier='greedy'` needs greedy sampling (temperature 0).")
        return verifier
    if not callable(verifier):
        raise ValueError(
            f"`verifier` must be a name in {VERIFIERS} or a callable; got {verifier!r}."
        )
    return verifier


def generate(
    target: _models.Model,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    drafter: Drafter | None = None,
    verifier: str | Verifier | None = None,
    max_draft_tokens: int = 4,
    controller: Controller | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    exact: bool = False,
) -> Generation:
    """Generates up to ``max_new_tokens`` tokens after each prompt, in one compiled loop.

    Args:
      target: the model whose distribution is sampled.
      prompt: [B, P] int, prompts left-aligned; row ``b`` holds ``prompt_lengths[b]``
        real tokens (the rest is ignored).
      prompt_lengths: [B] int in [1, P].
      key: PRNG key (unused when everything is greedy). Every row draws from its
        own sub-keys, so results do not depend on how the batch is sharded.
      max_new_tokens: generation budget per row (static).
      sampling: temperature / top-k / top-p (static), applied identically to the
        target and the draft distributions; default greedy.
      drafter: ``None`` for autoregressive decoding, a ``Drafter`` of token chains
        (e.g. ``drafting.draft_model(draft)``, ``drafting.prompt_lookup(vocab)``,
        ``drafting.early_exit(target, num_layers)``) or a ``TreeDrafter`` of token
        trees (``drafting.token_recycling(vocab)``, ``drafting.stochastic_ngram(vocab)``,
        ``drafting.draft_model_tree(draft)``), verified in one target pass under
        the tree mask, with the accepted path's KV entries kept.
      verifier: ``"greedy"``, ``"speculative_sampling"`` (lossless), a callable
        ``(key, draft_tokens, draft_probs, target_probs, num_draft) -> Verified``
        (e.g. typical acceptance), or ``None``: greedy when sampling is greedy,
        speculative sampling otherwise.
      max_draft_tokens: static maximum K of a draft block (chain drafters; a tree
        drafter fixes its own capacity).
      controller: chooses each row's active draft length (traced, <= K);
        default ``drafting.constant()`` (always K). Chain drafters only.
      eos_id: a row stops after emitting this token (static; ``None``: never).
      pad_id: fills the output buffer past each row's length.
      exact: run the target with ``apply(..., exact=True)``: every token's logits
        are bitwise independent of how many tokens are scored together, so
        greedy speculative decoding provably emits exactly the tokens of
        (exact) greedy decoding even at near-ties. Slower; off by default,
        where a near-tie within float32 rounding (~1e-5 in a logit) can in
        rare cases flip an argmax between the two.

    Returns:
      ``Generation`` with ``tokens [B, P + max_new_tokens]``, per-row stats and
      the drafter's final state (pass it on to keep e.g. an adjacency table
      across requests).

    Compile the whole generation once per shape by wrapping it in ``jax.jit``,
    building the drafter inside the jitted function so that the draft model's
    parameters are arguments, not constants::

        @jax.jit
        def run(target, draft, prompt, lengths, key):
            return generate(target, prompt, lengths, key, max_new_tokens=64,
                            drafter=drafting.draft_model(draft))
    """
    _check_inputs(target, prompt, prompt_lengths, max_new_tokens, drafter, max_draft_tokens)
    verify = _resolve_verifier(verifier, sampling)
    is_tree = isinstance(drafter, TreeDrafter)
    if is_tree:
        if controller is not None:
            raise ValueError("`controller` applies to chain drafters, not to a TreeDrafter.")
        if not isinstance(verify, str):
            raise ValueError(
                "a TreeDrafter is verified by name: `verifier` must be 'greedy' or "
                f"'speculative_sampling'; got {verifier!r}."
            )
    controller = constant() if controller is None else controller
    num_slots = drafter.num_nodes if is_tree else max_draft_tokens if drafter is not None else 0
    histogram_bins = (drafter.max_depth if is_tree else num_slots) + 1
    batch, width = prompt.shape
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    rows = jnp.arange(batch)
    buffer_width = width + max_new_tokens
    capacity = buffer_width + num_slots
    vocab = target.config.vocab_size

    # Prefill the padded prompts, then forget each row's padding.
    cache = _models.init_cache(
        target.config,
        batch,
        min(capacity, target.config.max_length),
        extra_slots=max(0, capacity - target.config.max_length),
        dtype=getattr(target, "dtype", None),
    )
    logits, cache = target(prompt, cache, exact=exact)
    cache = _models.rewind(cache, prompt_lengths)
    key, first_key = jax.random.split(key)
    first = jax.vmap(lambda k, x: sample(k, x, sampling))(
        jax.random.split(first_key, batch), logits[rows, prompt_lengths - 1]
    )
    positions = jnp.arange(buffer_width)[None, :]
    padded = jnp.pad(prompt, ((0, 0), (0, max_new_tokens)))
    tokens = jnp.where(positions < prompt_lengths[:, None], padded, pad_id)
    tokens = tokens.at[rows, prompt_lengths].set(first)
    lengths = prompt_lengths + 1
    finished = lengths - prompt_lengths >= max_new_tokens
    if eos_id is not None:
        finished |= first == eos_id

    zeros = jnp.zeros((batch,), jnp.int32)
    state = _LoopState(
        tokens=tokens,
        lengths=lengths,
        target_cache=cache,
        drafter_state=None if drafter is None else drafter.init(prompt, prompt_lengths, capacity),
        controller_state=controller.init(batch, num_slots),
        finished=finished,
        key=key,
        stats=GenerationStats(
            target_calls=jnp.ones((batch,), jnp.int32),
            drafted=zeros,
            accepted=zeros,
            accept_histogram=jnp.zeros((batch, histogram_bins), jnp.int32),
        ),
    )

    def body(state: _LoopState) -> _LoopState:
        active = ~state.finished
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        lengths = state.lengths
        num_draft = jnp.clip(controller.num_draft(state.controller_state), 0, num_slots)
        num_draft = jnp.where(active, num_draft, 0)
        drafter_state = state.drafter_state
        if is_tree:
            drafter_state, tree_draft = drafter.propose(
                drafter_state, draft_key, state.tokens, lengths, sampling=sampling
            )
            tree = tree_draft.tree
            last = state.tokens[rows, lengths - 1]
            block = jnp.concatenate([last[:, None], tree.token], axis=1)  # [B, N + 1]
            start = state.target_cache.lengths
            logits, cache = target(
                block,
                state.target_cache,
                tree_mask=trees.block_mask(tree, drafter.max_depth),
                exact=exact,
            )
            if verify == "greedy":
                verified_tree = tree_greedy(tree, logits)
            else:
                verified_tree = tree_speculative_sampling(
                    verify_key,
                    tree,
                    tree_draft.probs,
                    jnp.exp(log_probs(logits, sampling)),
                    replacement=drafter.replacement,
                )
            cache = _models.keep_path(cache, start, verified_tree.path, verified_tree.path_length)
            num_accepted = verified_tree.num_accepted
            drafts = jnp.take_along_axis(block, verified_tree.path[:, 1:], axis=1)  # [B, N]
            next_token = verified_tree.next_token
            num_drafted = jnp.sum(tree.valid, axis=1, dtype=jnp.int32)
        else:
            if drafter is None:
                draft = Draft(
                    tokens=jnp.zeros((batch, 0), jnp.int32),
                    probs=jnp.zeros((batch, 0, vocab), jnp.float32),
                    num_draft=zeros,
                )
            else:
                drafter_state, draft = drafter.propose(
                    drafter_state,
                    draft_key,
                    state.tokens,
                    lengths,
                    num_draft,
                    max_draft=num_slots,
                    sampling=sampling,
                )
            # One target pass over the last committed token and the drafts.
            last = state.tokens[rows, lengths - 1]
            block = jnp.concatenate([last[:, None], draft.tokens], axis=1)  # [B, K + 1]
            logits, cache = target(block, state.target_cache, exact=exact)
            if verify == "greedy":
                verified = greedy(draft.tokens, logits, draft.num_draft)
            else:
                target_probs = jnp.exp(log_probs(logits, sampling))
                if verify == "speculative_sampling":
                    verified = speculative_sampling(
                        verify_key, draft.tokens, draft.probs, target_probs, draft.num_draft
                    )
                else:
                    verified = verify(
                        verify_key, draft.tokens, draft.probs, target_probs, draft.num_draft
                    )
            num_accepted = verified.num_accepted
            drafts = draft.tokens
            next_token = verified.next_token
            num_drafted = draft.num_draft

        # Emitted block: the accepted drafts then the target's token.
        slots = jnp.arange(num_slots + 1)[None, :]
        padded_drafts = jnp.pad(drafts, ((0, 0), (0, 1)))
        emitted = jnp.where(slots < num_accepted[:, None], padded_drafts, next_token[:, None])
        count = num_accepted + 1
        count = jnp.minimum(count, max_new_tokens - (lengths - prompt_lengths))
        stop = jnp.zeros((batch,), bool)
        if eos_id is not None:
            is_eos = (emitted == eos_id) & (slots < count[:, None])
            stop = jnp.any(is_eos, axis=1)
            count = jnp.where(stop, jnp.argmax(is_eos, axis=1) + 1, count)
        count = jnp.where(active, count, 0)
        write_at = jnp.where(slots < count[:, None], lengths[:, None] + slots, buffer_width)
        tokens = state.tokens.at[rows[:, None], write_at].set(emitted, mode="drop")
        new_lengths = lengths + count

        # Target cache: keep the committed tokens but the newest one.
        cache = _models.rewind(cache, jnp.where(active, new_lengths - 1, lengths - 1))
        committed_drafts = jnp.where(active, count - 1, 0)
        if is_tree:
            # The drafter learns which nodes were committed (EOS / budget may cut the path).
            committed = TreeVerified(
                num_accepted=committed_drafts,
                next_token=next_token,
                path=verified_tree.path,
                path_length=committed_drafts + 1,
            )
            drafter_state = drafter.update(drafter_state, lengths, tree_draft, committed, logits)
        elif drafter is not None:
            drafter_state = drafter.update(drafter_state, lengths, committed_drafts)
        controller_state = controller.update(state.controller_state, num_drafted, num_accepted)
        controller_state = jax.tree.map(
            lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            controller_state,
            state.controller_state,
        )
        finished = state.finished | stop | (new_lengths - prompt_lengths >= max_new_tokens)
        counted = active.astype(jnp.int32)
        stats = GenerationStats(
            target_calls=state.stats.target_calls + counted,
            drafted=state.stats.drafted + counted * num_drafted,
            accepted=state.stats.accepted + counted * num_accepted,
            accept_histogram=state.stats.accept_histogram
            + counted[:, None] * jax.nn.one_hot(num_accepted, histogram_bins, dtype=jnp.int32),
        )
        return _LoopState(
            tokens=tokens,
            lengths=new_lengths,
            target_cache=cache,
            drafter_state=drafter_state,
            controller_state=controller_state,
            finished=finished,
            key=key,
            stats=stats,
        )

    state = lax.while_loop(lambda s: ~jnp.all(s.finished), body, state)
    return Generation(
        tokens=state.tokens,
        lengths=state.lengths,
        num_generated=state.lengths - prompt_lengths,
        stats=state.stats,
        drafter_state=state.drafter_state,
    )
