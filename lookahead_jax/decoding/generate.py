"""Autoregressive and speculative generation: a public round, and a loop over it.

Ragged prompt batches, per-row EOS and budget, greedy / temperature / top-k /
top-p sampling. Without a drafter every round emits one token (plain
autoregressive decoding); with a drafter every round drafts up to K tokens,
verifies them in one target pass over K + 1 positions, and emits the accepted
drafts plus one target token.

The contract (``init`` / ``step`` / ``run``):

* :func:`generation_init` prefills the prompts and samples the first token;
* :func:`generation_step` runs ONE draft–verify round, ``(key, state, ...) ->
  (state, GenerationStepInfo)``, so that a user can write their own loop or
  interleave generation with other work;
* :func:`generation_result` turns a state into a :class:`Generation`;
* :func:`generate` is the three in one compiled ``lax.while_loop``.

Static settings live in one frozen, hashable :class:`GenerationConfig`; the
target and the drafter are arguments (the drafter carries the draft model's
parameters, so build it inside the jitted function).

Invariants kept per row (``L`` = committed tokens, prompt included):
  * the output buffer holds the L committed tokens;
  * the target cache holds the first ``L - 1`` (the last token is fed next);
  * rows never wait for each other: each writes at its own length.

Bad values that ``jit`` hides (prompt ids outside the vocabulary, prompt lengths
outside [1, width]) raise at once on concrete inputs and under
``lookahead_jax.checked``; see ``lookahead_jax.checks``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import _checks, trees
from lookahead_jax import models as _models
from lookahead_jax.drafting.base import (
    Draft,
    Drafter,
    TreeDraft,
    TreeDrafter,
    check_block_sizes,
)
from lookahead_jax.drafting.controllers import (
    Controller,
    CostAware,
    chain_block_sizes,
    constant,
    cost_aware,
    cost_aware_controller,
    tree_cost_aware_controller,
)
from lookahead_jax.drafting.costs import estimate_costs
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


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Static settings of a generation (hashable: pass it as a static argument to ``jit``).

    Attributes:
      max_new_tokens: generation budget per row.
      sampling: temperature / top-k / top-p, applied identically to the target and the
        draft distributions; default greedy.
      verifier: ``"greedy"``, ``"speculative_sampling"`` (lossless), a callable
        ``(key, draft_tokens, draft_probs, target_probs, num_draft) -> Verified``
        (e.g. typical acceptance), or ``None``: greedy when sampling is greedy,
        speculative sampling otherwise.
      max_draft_tokens: maximum K of a draft block (chain drafters; a tree drafter fixes
        its own capacity).
      controller: chooses each round's draft length (traced, <= K; 0 = a plain step,
        the drafter not called): a ``drafting.Controller`` (e.g. ``drafting.constant(k)``,
        ``drafting.heuristic()``) or ``drafting.cost_aware(costs)``; ``None``:
        ``drafting.cost_aware()``, expected tokens per second under a cost model
        estimated from the models' sizes. With a tree drafter a length > 0 drafts the
        tree and 0 skips the drafter for the round.
      eos_id: a row stops after emitting this token (``None``: never); must lie in the
        target's vocabulary.
      pad_id: fills the output buffer past each row's length.
      exact: run the target with ``apply(..., exact=True)`` (see :func:`generate`).
    """

    max_new_tokens: int
    sampling: Sampling = Sampling()
    verifier: str | Verifier | None = None
    max_draft_tokens: int = 4
    controller: Controller | CostAware | None = None
    eos_id: int | None = None
    pad_id: int = 0
    exact: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"`max_new_tokens` must be a positive int; got {self.max_new_tokens!r}."
            )
        if not isinstance(self.max_draft_tokens, int) or self.max_draft_tokens < 0:
            raise ValueError(
                f"`max_draft_tokens` must be an int >= 0; got {self.max_draft_tokens!r}."
            )
        if self.eos_id is not None and not isinstance(self.eos_id, int):
            raise ValueError(f"`eos_id` must be an int or None; got {self.eos_id!r}.")
        _resolve_verifier(self.verifier, self.sampling)


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


class GenerationState(NamedTuple):
    """What the next round needs (W = P + max_new_tokens, the output buffer's width)."""

    tokens: jax.Array  # [B, W] int32, committed tokens per row, then pad_id
    lengths: jax.Array  # [B] int32, committed tokens per row (prompt included)
    prompt_lengths: jax.Array  # [B] int32, prompt tokens per row
    target_cache: _models.KVCache  # holds lengths - 1 tokens per row
    drafter_state: Any  # the drafter's own pytree (None without a drafter)
    controller_state: Any  # the draft-length controller's own pytree
    finished: jax.Array  # [B] bool, rows that hit EOS or their budget
    stats: GenerationStats  # running per-row counters, [B] / [B, K + 1] int32
    observed: jax.Array  # [B] int32, committed tokens the drafter's observe hook has seen


class GenerationStepInfo(NamedTuple):
    """What one round did, per row (diagnostics; never fed back)."""

    active: jax.Array  # [B] bool, rows that were unfinished when the round started
    num_drafted: jax.Array  # [B] int32, draft tokens (tree nodes) proposed this round
    num_accepted: jax.Array  # [B] int32, draft tokens the target accepted this round
    num_emitted: jax.Array  # [B] int32, tokens committed this round (0 for inactive rows)


class _Plan(NamedTuple):
    """Static choices derived from a config and a drafter."""

    verify: str | Verifier
    is_tree: bool
    controller: Controller
    num_slots: int  # K, or the tree's node capacity N
    histogram_bins: int  # K + 1, or max tree depth + 1


class _Round(NamedTuple):
    """A verified draft block, before EOS and budget decide what is committed."""

    drafts: jax.Array  # [B, S] int32, the accepted path's drafts first
    num_drafted: jax.Array  # [B] int32
    num_accepted: jax.Array  # [B] int32
    next_token: jax.Array  # [B] int32, the target's token after the accepted drafts
    entries: _models.CacheEntries  # [L, B, D + 1, KV, Dh] the scored path's keys and values,
    # root first (D = K, or the tree's max depth): the cache keeps the committed ones
    drafter_state: Any
    tree_draft: TreeDraft | None  # trees only: what the drafter's update needs
    tree_path: jax.Array | None  # [B, depth + 1] int32, trees only
    logits: jax.Array | None  # [B, N + 1, V], trees only
    accepted_within: jax.Array | None = None  # [B, S] int32, trees under a sizing controller


# ---- checks ---------------------------------------------------------------------------------


def _check_inputs(target, prompt, prompt_lengths, config: GenerationConfig, drafter) -> None:
    vocab = target.config.vocab_size
    _checks.check_integer("prompt", prompt)
    _checks.check_rank("prompt", prompt, 2, "[batch, max_prompt_length]")
    _checks.check_range("prompt", prompt, 0, vocab)
    batch, width = jnp.shape(prompt)
    _checks.check_integer("prompt_lengths", prompt_lengths)
    _checks.check_shape("prompt_lengths", prompt_lengths, (batch,), "one length per row")
    _checks.check_range("prompt_lengths", prompt_lengths, 1, width + 1)
    _check_static(target, width, config, drafter)


def _check_static(target, width: int, config: GenerationConfig, drafter) -> None:
    """Trace-time checks of the config and the drafter against the target."""
    max_length = target.config.max_length
    vocab = target.config.vocab_size
    max_new_tokens = config.max_new_tokens
    if config.eos_id is not None and not 0 <= config.eos_id < vocab:
        raise ValueError(
            f"`eos_id` must lie in the target's vocabulary [0, {vocab}); got {config.eos_id}."
        )
    if drafter is not None and not isinstance(drafter, Drafter | TreeDrafter):
        raise ValueError(
            f"`drafter` must be a drafting.Drafter or drafting.TreeDrafter; got {type(drafter)}."
        )
    if drafter is not None and drafter.vocab_size != vocab:
        raise ValueError(
            f"the drafter's vocabulary ({drafter.vocab_size}) must equal the target's ({vocab})."
        )
    if config.controller is not None and not isinstance(config.controller, Controller | CostAware):
        raise ValueError(
            "`controller` must be a drafting.Controller, drafting.cost_aware(...) or None; "
            f"got {config.controller!r}."
        )
    if isinstance(drafter, TreeDrafter):
        if not isinstance(_resolve_verifier(config.verifier, config.sampling), str):
            raise ValueError(
                "a TreeDrafter is verified by name: `verifier` must be 'greedy' or "
                f"'speculative_sampling'; got {config.verifier!r}."
            )
        if drafter.block_sizes is not None:
            check_block_sizes(drafter.block_sizes, drafter.num_nodes)
        # Tree nodes occupy cache slots beyond the committed tokens, but positions only
        # up to the deepest node.
        if width + max_new_tokens + drafter.max_depth > max_length:
            raise ValueError(
                f"prompt width {width} + `max_new_tokens` {max_new_tokens} + the tree's "
                f"max_depth {drafter.max_depth} exceeds the target's "
                f"config.max_length={max_length} positions."
            )
        return
    lookahead = config.max_draft_tokens if drafter is not None else 0
    if width + max_new_tokens + lookahead > max_length:
        raise ValueError(
            f"prompt width {width} + `max_new_tokens` {max_new_tokens}"
            + (f" + `max_draft_tokens` {lookahead}" if lookahead else "")
            + f" exceeds the target's config.max_length={max_length} positions "
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


def _controller(config: GenerationConfig, drafter, target, batch: int, num_slots: int):
    """The concrete controller: a cost-aware one gets its cost model (estimated if absent)."""
    controller = config.controller
    if drafter is None:
        return constant(0)  # nothing to draft: every round is a plain step
    if controller is None:
        controller = cost_aware()
    if not isinstance(controller, CostAware):
        return controller
    costs = controller.costs
    if costs is None:
        dtype = getattr(target, "dtype", None) or _models.param_dtype(target.params)
        costs = estimate_costs(
            target.config,
            drafter,
            batch_size=batch,
            max_draft=max(num_slots, 1),
            param_bytes=jnp.dtype(dtype).itemsize,
        )
    if isinstance(drafter, TreeDrafter):
        return tree_cost_aware_controller(controller, costs, num_slots, drafter.block_sizes)
    return cost_aware_controller(controller, costs, num_slots)


def _plan(config: GenerationConfig, drafter, target, batch: int) -> _Plan:
    is_tree = isinstance(drafter, TreeDrafter)
    if is_tree:
        num_slots = drafter.num_nodes
    else:
        num_slots = config.max_draft_tokens if drafter is not None else 0
    return _Plan(
        verify=_resolve_verifier(config.verifier, config.sampling),
        is_tree=is_tree,
        controller=_controller(config, drafter, target, batch, num_slots),
        num_slots=num_slots,
        histogram_bins=(drafter.max_depth if is_tree else num_slots) + 1,
    )


# ---- init: prefill and the first token ------------------------------------------------------


def _prefill(key, target, prompt, prompt_lengths, config: GenerationConfig, capacity: int):
    """Runs the padded prompts through the target and samples each row's first token.

    Returns the output buffer [B, P + max_new_tokens] (prompt, first token, pad_id), the
    cache holding each row's prompt, and the first tokens [B].
    """
    batch, width = prompt.shape
    rows = jnp.arange(batch)
    cache = _models.init_cache(
        target.config,
        batch,
        min(capacity, target.config.max_length),
        extra_slots=max(0, capacity - target.config.max_length),
        dtype=getattr(target, "dtype", None),
    )
    # Logits at each prompt's last token only: [B, 1, V] instead of [B, P, V].
    logits, cache = target(
        prompt, cache, exact=config.exact, logits_at=(prompt_lengths - 1)[:, None]
    )
    cache = _models.rewind(cache, prompt_lengths)  # forget each row's padding
    first = jax.vmap(lambda k, x: sample(k, x, config.sampling))(
        jax.random.split(key, batch), logits[:, 0]
    )
    positions = jnp.arange(width + config.max_new_tokens)[None, :]
    padded = jnp.pad(prompt, ((0, 0), (0, config.max_new_tokens)))
    tokens = jnp.where(positions < prompt_lengths[:, None], padded, config.pad_id)
    tokens = tokens.at[rows, prompt_lengths].set(first)
    return tokens, cache, first


def _drafter_init(drafter, prompt, prompt_lengths, target_cache, capacity: int):
    """The drafter's first state (``None`` without one): from the target's prefilled cache
    where the drafter shares the target's layers (``Drafter.init_from_target``, e.g. an
    early exit: no second prefill of those layers), else from the prompt."""
    if drafter is None:
        return None
    from_target = getattr(drafter, "init_from_target", None)
    if from_target is not None:
        return from_target(target_cache, prompt_lengths, capacity)
    return drafter.init(prompt, prompt_lengths, capacity)


def generation_init(
    key: jax.Array,
    target: _models.Model,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: GenerationConfig,
    drafter: Drafter | TreeDrafter | None = None,
) -> GenerationState:
    """Prefills the prompts and commits each row's first token (one target pass).

    Args:
      key: PRNG key for the first token (unused when sampling is greedy). Every row
        draws from its own sub-key.
      target: the model whose distribution is sampled.
      prompt: [B, P] int, prompts left-aligned; row ``b`` holds ``prompt_lengths[b]``
        real tokens (the rest is ignored). Ids must lie in the target's vocabulary.
      prompt_lengths: [B] int in [1, P].
      config: static settings (:class:`GenerationConfig`).
      drafter: ``None``, a ``Drafter`` or a ``TreeDrafter`` (see :func:`generate`); the
        same one must be passed to every :func:`generation_step`.

    Returns:
      The state before the first draft–verify round.
    """
    _check_inputs(target, prompt, prompt_lengths, config, drafter)
    batch, width = prompt.shape
    plan = _plan(config, drafter, target, batch)
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    # The target cache holds committed tokens only (a round's block is scored without
    # being written, and only its committed path is appended), so it needs no slots for
    # drafts and every round attends over what a plain decoding step attends over. The
    # drafter's own buffers keep room for a full block.
    capacity = width + config.max_new_tokens
    tokens, cache, first = _prefill(key, target, prompt, prompt_lengths, config, capacity)
    lengths = prompt_lengths + 1
    finished = lengths - prompt_lengths >= config.max_new_tokens
    if config.eos_id is not None:
        finished |= first == config.eos_id
    zeros = jnp.zeros((batch,), jnp.int32)
    return GenerationState(
        tokens=tokens,
        lengths=lengths,
        prompt_lengths=prompt_lengths,
        target_cache=cache,
        drafter_state=_drafter_init(
            drafter, prompt, prompt_lengths, cache, capacity + plan.num_slots
        ),
        controller_state=plan.controller.init(batch, plan.num_slots),
        finished=finished,
        stats=GenerationStats(
            target_calls=jnp.ones((batch,), jnp.int32),
            drafted=zeros,
            accepted=zeros,
            accept_histogram=jnp.zeros((batch, plan.histogram_bins), jnp.int32),
        ),
        observed=prompt_lengths,  # init took the prompt
    )


# ---- one round: draft, verify (chain or tree), commit, update ------------------------------


def _chain_round(draft_key, verify_key, state, target, config, drafter, plan, num_draft):
    """Drafts a chain (``drafter=None``: nothing), scores it in one target pass, verifies it.

    The target scores the smallest of ``chain_block_sizes(K)`` that holds every row's
    drafts (a drafter may propose fewer than asked, e.g. prompt lookup without a match).
    """
    batch = state.tokens.shape[0]
    rows = jnp.arange(batch)
    num_slots = plan.num_slots
    nothing = Draft(
        tokens=jnp.zeros((batch, num_slots), jnp.int32),
        probs=jnp.zeros((batch, num_slots, target.config.vocab_size), jnp.float32),
        num_draft=jnp.zeros((batch,), jnp.int32),
    )
    drafter_state, draft = state.drafter_state, nothing
    if drafter is not None:
        if getattr(drafter, "sync_from_target", None) is not None:
            drafter_state = drafter.sync_from_target(drafter_state, state.target_cache)
        drafter_state, draft = drafter.propose(
            drafter_state,
            draft_key,
            state.tokens,
            state.lengths,
            num_draft,
            max_draft=num_slots,
            sampling=config.sampling,
        )
    # One target pass over the last committed token and the drafts.
    last = state.tokens[rows, state.lengths - 1]
    block = jnp.concatenate([last[:, None], draft.tokens], axis=1)  # [B, K + 1]
    used = jnp.arange(num_slots)[None, :] < draft.num_draft[:, None]
    logits, entries, _ = _score_used(
        target, block, state.target_cache, None, used, chain_block_sizes(num_slots), config
    )
    if plan.verify == "greedy":
        verified = greedy(draft.tokens, logits, draft.num_draft)
    else:
        target_probs = jnp.exp(log_probs(logits, config.sampling))
        verify = speculative_sampling if plan.verify == "speculative_sampling" else plan.verify
        verified = verify(verify_key, draft.tokens, draft.probs, target_probs, draft.num_draft)
    return _Round(
        drafts=draft.tokens,
        num_drafted=draft.num_draft,
        num_accepted=verified.num_accepted,
        next_token=verified.next_token,
        entries=entries,  # a chain's path is its block
        drafter_state=drafter_state,
        tree_draft=None,
        tree_path=None,
        logits=None,
    )


def _score_used(target, block, cache, mask, used, sizes, config):
    """Scores the root and the first ``size`` block tokens after it, the smallest of
    ``sizes`` that holds every ``used`` one ([B, N] bool); logits past it are zeros.

    ``mask``: the block's tree mask [B, N + 1, N + 1], or ``None`` (causal: a chain).
    Returns logits [B, N + 1, V], the block's cache entries [L, B, N + 1, KV, Dh] (the
    cache itself is only read: written after the round's conditionals, XLA would copy
    it in and out of each) and ``size`` (tokens past it were not scored: the caller
    must not use them).
    """
    num_nodes = block.shape[1] - 1
    sizes = tuple(sizes) if sizes else (num_nodes,)

    def score(size):
        def branch(cache):
            tree_mask = None if mask is None else mask[:, : size + 1, : size + 1]
            logits, entries = target(
                block[:, : size + 1],
                cache,
                tree_mask=tree_mask,
                exact=config.exact,
                defer_write=True,
            )
            return _pad_tokens(logits, num_nodes + 1, 1), _pad_entries(entries, num_nodes + 1)

        return branch

    if len(sizes) == 1:
        return (*score(sizes[0])(cache), sizes[0])
    needed = jnp.max(jnp.where(used, jnp.arange(1, num_nodes + 1), 0))  # last used + 1
    choice = jnp.searchsorted(jnp.asarray(sizes), needed)  # the smallest size >= needed
    logits, entries = lax.switch(choice, [score(size) for size in sizes], cache)
    return logits, entries, jnp.asarray(sizes)[choice]


def _pad_tokens(x: jax.Array, width: int, axis: int) -> jax.Array:
    """``x`` zero-padded along ``axis`` to ``width`` entries."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, width - x.shape[axis])
    return jnp.pad(x, pad)


def _pad_entries(entries: _models.CacheEntries, width: int) -> _models.CacheEntries:
    """Cache entries [L, B, S, KV, Dh] zero-padded to ``width`` tokens."""
    return jax.tree.map(lambda x: _pad_tokens(x, width, 2), entries)


def _tree_round(draft_key, verify_key, state, target, config, drafter, plan, active, size):
    """Drafts a token tree, scores it under the tree mask and keeps the accepted path.

    ``size`` ([] int32): a sizing controller's cut, the tree's first ``size`` nodes (a
    prefix-closed subtree: nodes are in topological order). Drafters with their own mask
    are never cut.
    """
    rows = jnp.arange(state.tokens.shape[0])
    num_nodes = plan.num_slots
    last = state.tokens[rows, state.lengths - 1]
    drafter_state, tree_draft = drafter.propose(
        state.drafter_state, draft_key, state.tokens, state.lengths, sampling=config.sampling
    )
    tree = tree_draft.tree
    block = jnp.concatenate([last[:, None], tree.token], axis=1)  # [B, N + 1]
    sizes = plan.controller.tree_sizes
    if tree_draft.mask is None:
        if sizes is not None:
            tree = tree._replace(valid=tree.valid & (jnp.arange(num_nodes) < size))
        mask = trees.block_mask(tree, drafter.max_depth)
        used = tree.valid & active[:, None]
        logits, entries, scored = _score_used(
            target, block, state.target_cache, mask, used, sizes or drafter.block_sizes, config
        )
        # Nodes past the scored block (only finished rows have any) are dropped.
        tree = tree._replace(valid=tree.valid & (jnp.arange(num_nodes) < scored))
        tree_draft = tree_draft._replace(tree=tree)
    else:  # the drafter's own mask: its invalid nodes are scored too (a lookahead window)
        logits, entries = target(
            block,
            state.target_cache,
            tree_mask=tree_draft.mask,
            exact=config.exact,
            defer_write=True,
        )
    tree = tree_draft.tree
    if plan.verify == "greedy":
        verified = tree_greedy(tree, logits)
    else:
        verified = tree_speculative_sampling(
            verify_key,
            tree,
            tree_draft.probs,
            jnp.exp(log_probs(logits, config.sampling)),
            replacement=drafter.replacement,
        )
    # The accepted path's entries, root first (the commit writes the committed ones).
    path_rows = jnp.arange(verified.path.shape[0])[:, None]
    path = verified.path[:, : plan.histogram_bins]  # a path holds at most max_depth + 1
    entries = jax.tree.map(lambda x: x[:, path_rows, path], entries)
    accepted_within = None
    if sizes is not None:
        # Nodes the cut tree would have accepted at each size: the path's nodes below it
        # (their indices increase along the path). Sizes above the cut were not observed.
        node = verified.path[:, 1:] - 1  # [B, depth]
        on_path = jnp.arange(node.shape[1])[None, :] < verified.num_accepted[:, None]
        cut = jnp.asarray(sizes, jnp.int32)
        within = jnp.sum(on_path[:, :, None] & (node[:, :, None] < cut), axis=1)  # [B, S]
        cut_size = num_nodes if tree_draft.mask is not None else size
        accepted_within = jnp.where(cut[None, :] <= cut_size, within, -1).astype(jnp.int32)
    return _Round(
        drafts=jnp.take_along_axis(block, verified.path[:, 1:], axis=1),  # [B, N]
        num_drafted=jnp.sum(tree.valid, axis=1, dtype=jnp.int32),
        num_accepted=verified.num_accepted,
        next_token=verified.next_token,
        entries=entries,
        drafter_state=drafter_state,
        tree_draft=tree_draft,
        tree_path=verified.path,
        logits=logits,
        accepted_within=accepted_within,
    )


def _commit(state: GenerationState, round_: _Round, config: GenerationConfig, active, num_slots):
    """Writes the accepted drafts and the target's token, cut at EOS and at the budget.

    Returns the new buffer [B, W], the new lengths [B], the tokens committed per row [B]
    (0 for inactive rows) and whether each row emitted EOS [B].
    """
    lengths = state.lengths
    rows = jnp.arange(lengths.shape[0])
    buffer_width = state.tokens.shape[1]
    slots = jnp.arange(num_slots + 1)[None, :]
    padded_drafts = jnp.pad(round_.drafts, ((0, 0), (0, 1)))
    emitted = jnp.where(
        slots < round_.num_accepted[:, None], padded_drafts, round_.next_token[:, None]
    )
    count = round_.num_accepted + 1
    count = jnp.minimum(count, config.max_new_tokens - (lengths - state.prompt_lengths))
    stop = jnp.zeros_like(active)
    if config.eos_id is not None:
        is_eos = (emitted == config.eos_id) & (slots < count[:, None])
        stop = jnp.any(is_eos, axis=1)
        count = jnp.where(stop, jnp.argmax(is_eos, axis=1) + 1, count)
    count = jnp.where(active, count, 0)
    write_at = jnp.where(slots < count[:, None], lengths[:, None] + slots, buffer_width)
    tokens = state.tokens.at[rows[:, None], write_at].set(emitted, mode="drop")
    return tokens, lengths + count, count, stop


def _update_drafter(state, round_: _Round, drafter, plan: _Plan, committed_drafts, drafted):
    """Tells the drafter which drafts were committed (EOS / budget may cut the path).

    ``update`` only follows rounds that called ``propose`` (``drafted``, static); a tree
    drafter's ``observe`` is called by :func:`generation_step` (:func:`_observe`).
    """
    if drafter is None or not drafted:
        return round_.drafter_state
    if plan.is_tree:
        committed = TreeVerified(
            num_accepted=committed_drafts,
            next_token=round_.next_token,
            path=round_.tree_path,
            path_length=committed_drafts + 1,
        )
        return drafter.update(
            round_.drafter_state, state.lengths, round_.tree_draft, committed, round_.logits
        )
    return drafter.update(round_.drafter_state, state.lengths, committed_drafts)


def _update_controller(state, round_: _Round, plan: _Plan, active):
    """Advances the controller for the rows that were active (the others keep theirs)."""
    accepted = round_.num_accepted
    if plan.controller.tree_sizes is not None:  # a sizing controller sees every cut
        accepted = round_.accepted_within
        if accepted is None:  # a plain step: nothing observed
            shape = (round_.num_accepted.shape[0], len(plan.controller.tree_sizes))
            accepted = jnp.full(shape, -1, jnp.int32)
    controller_state = plan.controller.update(state.controller_state, round_.num_drafted, accepted)
    return jax.tree.map(
        lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        controller_state,
        state.controller_state,
    )


def _accumulate(stats: GenerationStats, round_: _Round, active, bins: int) -> GenerationStats:
    counted = active.astype(jnp.int32)
    return GenerationStats(
        target_calls=stats.target_calls + counted,
        drafted=stats.drafted + counted * round_.num_drafted,
        accepted=stats.accepted + counted * round_.num_accepted,
        accept_histogram=stats.accept_histogram
        + counted[:, None] * jax.nn.one_hot(round_.num_accepted, bins, dtype=jnp.int32),
    )


def generation_step(
    key: jax.Array,
    state: GenerationState,
    target: _models.Model,
    config: GenerationConfig,
    drafter: Drafter | TreeDrafter | None = None,
) -> tuple[GenerationState, GenerationStepInfo]:
    """One draft–verify round: every unfinished row commits 1 to K + 1 tokens.

    Finished rows are left unchanged (the target still runs over the whole batch), so a
    loop may call this until ``jnp.all(state.finished)`` or for a fixed number of rounds.

    Args:
      key: PRNG key of this round (sub-keys 1 and 2 of ``jax.random.split(key, 3)`` draw
        the drafts and the verification; :func:`generate` passes sub-key 0 on to the next
        round). Unused when everything is greedy and the drafter is deterministic.
      state: from :func:`generation_init` or a previous step.
      target: the model given to :func:`generation_init`.
      config: the config given to :func:`generation_init` (static).
      drafter: the drafter given to :func:`generation_init`.

    Returns:
      The new state and a :class:`GenerationStepInfo` of this round.
    """
    _check_static(target, state.tokens.shape[1] - config.max_new_tokens, config, drafter)
    plan = _plan(config, drafter, target, state.tokens.shape[0])
    return _step(key, state, target, config, drafter, plan)


def _num_draft(state: GenerationState, plan: _Plan) -> jax.Array:
    """The controller's draft length per row for the next round ([B] int32; 0 if finished)."""
    active = ~state.finished
    num_draft = plan.controller.num_draft(state.controller_state, active)
    return jnp.where(active, jnp.clip(num_draft, 0, plan.num_slots), 0)


def _step(
    key, state, target, config, drafter, plan: _Plan, kind="either", num_draft=None, observe=True
):
    """:func:`generation_step`. ``kind``: ``"either"`` asks the controller and drafts or not;
    ``"plain"`` / ``"drafting"`` are rounds the caller knows the controller leaves plain /
    drafts (:func:`generation_run` asks it in its loop condition and passes its answer,
    ``num_draft`` [B]), without the conditional. ``observe=False``: the caller runs the
    drafter's ``observe`` between rounds itself (:func:`_observe_due`)."""
    _, draft_key, verify_key = jax.random.split(key, 3)
    active = ~state.finished
    if kind == "plain":
        num_draft = jnp.zeros_like(state.lengths)
    elif num_draft is None:
        num_draft = _num_draft(state, plan)

    # The target cache goes into the round's conditionals read-only and is written once
    # after them: written inside a branch, XLA copies the whole cache in and out of the
    # conditional every round (which made a round that drafts nothing cost up to 1.3
    # plain steps at batch 16).
    cache = state.target_cache
    state = state._replace(target_cache=None)
    drafting = jnp.any(num_draft > 0)
    if observe and _observes(drafter) and kind != "plain":
        state = _observe(drafter, state, _observe_due(drafter, state, drafting, after=False))

    def speculative(state, cache):
        state = state._replace(target_cache=cache)
        if plan.is_tree:
            size = jnp.max(num_draft)  # the batch's cut (rows draft alike)
            round_ = _tree_round(
                draft_key, verify_key, state, target, config, drafter, plan, active, size
            )
        else:
            round_ = _chain_round(
                draft_key, verify_key, state, target, config, drafter, plan, num_draft
            )
        return _finish_step(state, round_, config, drafter, plan, active, drafted=True)

    def plain(state, cache):
        # Exactly a step without a drafter: one token scored, nothing proposed or padded.
        state = state._replace(target_cache=cache)
        plain_plan = plan._replace(num_slots=0)
        round_ = _chain_round(
            draft_key, verify_key, state, target, config, None, plain_plan, num_draft
        )
        return _finish_step(
            state, round_, config, drafter, plan, active, drafted=False, pad=kind == "either"
        )

    if drafter is None or kind == "plain":
        new_state, info, entries = plain(state, cache)
    elif kind == "drafting":
        new_state, info, entries = speculative(state, cache)
    else:
        # A round that drafts nothing (the controller chose 0 for every row) costs a plain
        # step.
        new_state, info, entries = lax.cond(drafting, speculative, plain, state, cache)
    # The cache keeps the committed tokens but the newest one: the root and the committed
    # drafts of the path (num_emitted of them; none for finished rows).
    cache = _models.append(cache, entries, count=info.num_emitted)
    if observe and _observes(drafter):
        new_state = _observe(drafter, new_state, _observe_due(drafter, new_state, after=True))
    return new_state._replace(target_cache=cache), info


def _at_most_once(run: jax.Array, fn, carry):
    """``fn(carry)`` if ``run`` ([] bool) else ``carry``, as a ``while_loop`` of one trip or
    none. Not ``lax.cond``: on XLA:CPU a conditional copies the buffers its branch writes
    (a KV cache, a drafter's memory) in and out, where a loop updates them in place; and a
    traced trip count keeps the compiler from folding the loop into its parent."""

    def once(inner):
        return fn(inner[0]), jnp.zeros((), bool)

    return lax.while_loop(lambda inner: inner[1], once, (carry, run))[0]


def _observes(drafter) -> bool:
    return isinstance(drafter, TreeDrafter) and drafter.observe is not None


def _observe_after(drafter: TreeDrafter) -> int:
    """Pending tokens that make the loop call ``observe`` (1: after every round)."""
    return 1 if drafter.observe_tokens is None else drafter.observe_tokens - 1


def _observe_due(drafter, state: GenerationState, drafting=None, *, after: bool) -> jax.Array:
    """Whether ``observe`` runs now ([] bool): some row has tokens the drafter has not seen,
    and a proposal follows (``drafting`` [] bool; a proposal sees every committed token)
    or, ``after`` a round, a row holds :func:`_observe_after` of them or every row is done.
    Between two rounds ``observe`` runs at most once, whether its call sits after the first
    round, before the second (``generation_step``) or between them (``generation_run``)."""
    pending = state.lengths - state.observed
    due = jnp.zeros((), bool) if drafting is None else drafting
    if after:
        due = due | jnp.any(pending >= _observe_after(drafter)) | jnp.all(state.finished)
    return due & jnp.any(pending > 0)


def _observe(drafter: TreeDrafter, state: GenerationState, when: jax.Array) -> GenerationState:
    """``state`` after ``drafter.observe`` of its committed tokens if ``when`` ([] bool).

    A drafter with ``observe_tokens`` (memories whose update costs about the same for one
    token as for many) learns committed tokens in batches: after plain rounds they wait
    until a row holds ``observe_tokens - 1`` of them, a proposal or the end of the
    generation. In :func:`_at_most_once`, not a conditional: the memory is updated in place.
    """

    drafter_state = _at_most_once(
        when,
        lambda drafter_state: drafter.observe(drafter_state, state.tokens, state.lengths),
        state.drafter_state,
    )
    observed = jnp.where(when, state.lengths, state.observed)
    return state._replace(drafter_state=drafter_state, observed=observed)


def _finish_step(state, round_, config, drafter, plan, active, *, drafted: bool, pad=True):
    """Commits a verified round and updates the drafter, the controller and the counters.

    Returns the new state without its target cache, the round's info and the cache entries
    of the path [L, B, D + 1, KV, Dh] (``pad``: padded to one width for every kind of round,
    as the branches of a conditional must be).
    """
    num_slots = round_.drafts.shape[1]
    tokens, new_lengths, count, stop = _commit(state, round_, config, active, num_slots)
    committed_drafts = jnp.where(active, count - 1, 0)
    budget_spent = new_lengths - state.prompt_lengths >= config.max_new_tokens
    new_state = GenerationState(
        tokens=tokens,
        lengths=new_lengths,
        prompt_lengths=state.prompt_lengths,
        target_cache=None,
        drafter_state=_update_drafter(state, round_, drafter, plan, committed_drafts, drafted),
        controller_state=_update_controller(state, round_, plan, active),
        finished=state.finished | stop | budget_spent,
        stats=_accumulate(state.stats, round_, active, plan.histogram_bins),
        observed=state.observed,
    )
    info = GenerationStepInfo(
        active=active,
        num_drafted=jnp.where(active, round_.num_drafted, 0),
        num_accepted=jnp.where(active, round_.num_accepted, 0),
        num_emitted=count,
    )
    entries = _pad_entries(round_.entries, plan.histogram_bins) if pad else round_.entries
    return new_state, info, entries


# ---- finalize and the whole loop ------------------------------------------------------------


def generation_result(state: GenerationState) -> Generation:
    """The generation held by ``state`` (complete once ``jnp.all(state.finished)``)."""
    return Generation(
        tokens=state.tokens,
        lengths=state.lengths,
        num_generated=state.lengths - state.prompt_lengths,
        stats=state.stats,
        drafter_state=state.drafter_state,
    )


def generate(
    target: _models.Model,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    drafter: Drafter | TreeDrafter | None = None,
    verifier: str | Verifier | None = None,
    max_draft_tokens: int = 4,
    controller: Controller | CostAware | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    exact: bool = False,
) -> Generation:
    """Generates up to ``max_new_tokens`` tokens after each prompt, in one compiled loop.

    Equivalent to :func:`generation_init`, :func:`generation_step` in a
    ``lax.while_loop`` until every row is finished, and :func:`generation_result`, with
    ``key, init_key = jax.random.split(key)`` for the first token and, per round,
    ``generation_step(key, ...)`` followed by ``key = jax.random.split(key, 3)[0]``.

    Args:
      target: the model whose distribution is sampled.
      prompt: [B, P] int, prompts left-aligned; row ``b`` holds ``prompt_lengths[b]``
        real tokens (the rest is ignored). Ids must lie in [0, vocab_size).
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
      controller: chooses each round's draft length (traced, <= K; 0: a plain step):
        a ``drafting.Controller`` or ``drafting.cost_aware(costs)``; default
        ``drafting.cost_aware()`` with a cost model estimated from the models' sizes
        (see :class:`GenerationConfig`).
      eos_id: a row stops after emitting this token (static; ``None``: never); must
        lie in [0, vocab_size).
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

    Raises:
      ValueError: on bad shapes or static settings at once; on prompt ids outside the
      vocabulary or prompt lengths outside [1, P] at once when they are concrete, and
      under ``lookahead_jax.checked`` when they are traced (a plain ``jit`` skips them).

    Compile the whole generation once per shape by wrapping it in ``jax.jit``,
    building the drafter inside the jitted function so that the draft model's
    parameters are arguments, not constants::

        @jax.jit
        def run(target, draft, prompt, lengths, key):
            return generate(target, prompt, lengths, key, max_new_tokens=64,
                            drafter=drafting.draft_model(draft))
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        verifier=verifier,
        max_draft_tokens=max_draft_tokens,
        controller=controller,
        eos_id=eos_id,
        pad_id=pad_id,
        exact=exact,
    )
    return generation_run(key, target, prompt, prompt_lengths, config, drafter)


def generation_run(
    key: jax.Array,
    target: _models.Model,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: GenerationConfig,
    drafter: Drafter | TreeDrafter | None = None,
) -> Generation:
    """The contract's ``run``: :func:`generate` with the key first and a config.

    :func:`generation_init`, then :func:`generation_step` in a ``lax.while_loop`` until every
    row is finished, then :func:`generation_result`; the same tokens as :func:`generate`
    with the same key and settings. Shapes and errors as in :func:`generate`.
    """
    key, init_key = jax.random.split(key)
    state = generation_init(init_key, target, prompt, prompt_lengths, config, drafter)
    plan = _plan(config, drafter, target, prompt.shape[0])

    def round_(carry, kind="either"):
        state, key = carry
        # With a drafter only plain rounds come here; their drafter's observe runs at the
        # top of the loop of drafting rounds (`drafting_rounds`).
        state, _ = _step(key, state, target, config, drafter, plan, kind, observe=False)
        return state, jax.random.split(key, 3)[0]

    def unfinished(carry):
        return ~jnp.all(carry[0].finished)

    if drafter is None:
        carry = lax.while_loop(unfinished, round_, (state, key))
        return generation_result(carry[0])

    # The rounds the controller drafts run in a loop inside the main one, and the main
    # loop's body is a plain round: a plain round is not inside a conditional (which cost
    # a round 10-23% more on XLA:CPU at batch 1) and pays no drafting machinery.
    observes = _observes(drafter)

    def drafting_rounds(carry):
        # The controller's choice for the next round is asked once, after each round (and
        # once before the main loop): the loops' conditions read it and the round uses it (0
        # for finished rows). A drafter with an ``observe`` hook learns the committed tokens
        # at the top of this loop, its one call in the program (the memory update is most
        # of a trie drafter's program: one call site per round compiled it three times);
        # the loop then also takes trips that only observe (after a plain round, or once
        # every row is done), and the round is in a loop of its own, of one trip or none.
        def drafting_round(carry):
            state, key, num_draft = carry
            state, _ = _step(
                key, state, target, config, drafter, plan, "drafting", num_draft, observe=False
            )
            return state, jax.random.split(key, 3)[0], _num_draft(state, plan)

        def observing_round(carry):
            state, key, num_draft = carry
            drafting = jnp.any(num_draft > 0)
            state = _observe(drafter, state, _observe_due(drafter, state, drafting, after=True))
            return _at_most_once(drafting, drafting_round, (state, key, num_draft))

        def more(carry):
            state, _, num_draft = carry
            drafting = jnp.any(num_draft > 0)
            return drafting | _observe_due(drafter, state, drafting, after=True)

        if observes:
            return lax.while_loop(more, observing_round, carry)
        return lax.while_loop(lambda c: jnp.any(c[2] > 0), drafting_round, carry)

    # The main loop's body is the plain round, in a loop of one trip, followed by the loop
    # of drafting rounds: two loops one after the other and little else. With the plain
    # round's kernels beside the drafting loop in that body, a drafting round nested there
    # cost 1.3-1.5x the same round at the top level on XLA:CPU at batch 1 in some runs
    # (byte pair; in a profile its layer kernels ran on one thread where the top-level
    # loop ran them on two; plain rounds nested the other way round slowed alike; other
    # runs on the same machine showed no difference), so a generation that took one plain
    # round could run every later drafting round slower. Wrapped in its own loop (the trip
    # count a traced value, so the compiler keeps it), neither slowed in those runs.
    # The plain round runs only when the controller leaves the next round plain for every
    # row: in the first trip of the main loop it may draft at once. (Not a loop of drafting
    # rounds before the main loop: that traced and compiled the whole drafting round twice.)
    def plain_round(carry):
        def round_plain(carry):
            state, key = round_(carry[:2], kind="plain")
            return state, key, _num_draft(state, plan)

        state, _, num_draft = carry
        due = ~jnp.all(state.finished) & ~jnp.any(num_draft > 0)
        return _at_most_once(due, round_plain, carry)

    def body(carry):
        return drafting_rounds(plain_round(carry))

    carry = lax.while_loop(unfinished, body, (state, key, _num_draft(state, plan)))
    return generation_result(carry[0])
