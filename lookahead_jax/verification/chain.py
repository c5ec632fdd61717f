"""Verification of a chain of K drafted tokens against one target pass (model-free).

Every verifier returns ``Verified(num_accepted, next_token)``: row ``b`` keeps
its first ``num_accepted[b]`` draft tokens and then emits ``next_token[b]``
(the target's correction at the first rejection, or the bonus token when every
active draft was accepted). ``num_draft [B]`` optionally limits each row to its
first ``num_draft[b]`` drafts (a traced active length under a static maximum K);
drafts past it count as not proposed.

Distributions passed in must already be the *sampling* distributions
(temperature, top-k, top-p applied identically to target and draft, see
``lookahead_jax.sampling``): the rejection rule is exact for those.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_jax import _checks

# Medusa's typical-acceptance thresholds: both orders appear in published code.
MEDUSA_THRESHOLDS = {"posterior_threshold": 0.09, "posterior_alpha": 0.3}
MEDUSA_THRESHOLDS_SWAPPED = {"posterior_threshold": 0.3, "posterior_alpha": 0.09}


class Verified(NamedTuple):
    """Outcome of verifying one block of drafts per row."""

    num_accepted: jax.Array  # [B] int32 in [0, num_draft]: leading drafts kept
    next_token: jax.Array  # [B] int32: token emitted after the kept drafts


def _check_drafts(draft_tokens, target, num_draft, target_name: str) -> tuple[int, int]:
    _checks.check_integer("draft_tokens", draft_tokens)
    _checks.check_rank("draft_tokens", draft_tokens, 2, "[batch, num_draft_tokens]")
    batch, k = jnp.shape(draft_tokens)
    _checks.check_rank(target_name, target, 3, "[batch, num_draft_tokens + 1, vocab]")
    _checks.check_shape(target_name, target, (batch, k + 1, None), "[B, K + 1, V]")
    _checks.check_range("draft_tokens", draft_tokens, 0, jnp.shape(target)[-1])
    if num_draft is not None:
        _checks.check_integer("num_draft", num_draft)
        _checks.check_shape("num_draft", num_draft, (batch,), "one active draft length per row")
        _checks.check_range("num_draft", num_draft, 0, k + 1)
    return batch, k


def _active(num_draft, batch: int, k: int) -> jax.Array:
    """[B, K] bool: draft position i is active for row b."""
    if num_draft is None:
        return jnp.ones((batch, k), bool)
    return jnp.arange(k)[None, :] < jnp.asarray(num_draft)[:, None]


def _leading_count(accept: jax.Array) -> jax.Array:
    """Length of the leading run of True along the last axis: [B, K] -> [B] int32."""
    return jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=-1), axis=-1, dtype=jnp.int32)


def greedy(
    draft_tokens: jax.Array, target_logits: jax.Array, num_draft: jax.Array | None = None
) -> Verified:
    """Greedy verification: keep drafts while they equal the target's argmax.

    Args:
      draft_tokens: [B, K] int.
      target_logits: [B, K + 1, V]; position ``i`` scores the token after
        ``draft_tokens[:, :i]``.
      num_draft: optional [B] int in [0, K], active drafts per row.
    Returns:
      ``Verified``; ``next_token`` is the argmax at the first mismatch (or bonus).
    """
    batch, k = _check_drafts(draft_tokens, target_logits, num_draft, "target_logits")
    choice = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)  # [B, K + 1]
    accept = (draft_tokens == choice[:, :k]) & _active(num_draft, batch, k)
    num_accepted = _leading_count(accept)
    next_token = jnp.take_along_axis(choice, num_accepted[:, None], axis=1)[:, 0]
    return Verified(num_accepted, next_token)


def acceptance_probability(target_p: jax.Array, draft_q: jax.Array) -> jax.Array:
    """``min(1, p / q)`` elementwise; 1 where ``q == 0`` (such a draft cannot occur)."""
    safe_q = jnp.where(draft_q > 0, draft_q, 1.0)
    return jnp.where(draft_q > 0, jnp.minimum(1.0, target_p / safe_q), 1.0)


def residual_distribution(target_probs: jax.Array, draft_probs: jax.Array) -> jax.Array:
    """``norm(max(0, p - q))`` over the last axis.

    When ``p == q`` the residual is 0/0; rejection then has probability 0, but
    the value must stay finite, so ``p`` itself is returned there.
    """
    residual = jnp.maximum(target_probs - draft_probs, 0.0)
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    return jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), target_probs)


def _check_probs(name: str, probs, batch: int, k: int) -> None:
    _checks.check_shape(name, probs, (batch, k, None), f"[B={batch}, {k}, V]")


def speculative_sampling(
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
    num_draft: jax.Array | None = None,
) -> Verified:
    """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    Draft ``x_i`` is accepted with probability ``min(1, p_i(x_i) / q_i(x_i))``; at
    the first rejection the next token is drawn from ``norm(max(0, p_i - q_i))``;
    if every active draft is accepted, a bonus token is drawn from ``p_{k+1}``.
    The emitted tokens then follow the target distribution exactly. A
    deterministic drafter passes one-hot ``draft_probs``.

    Args:
      key: PRNG key; each row uses its own sub-key (results do not depend on
        how the batch is sharded).
      draft_tokens: [B, K] int, the proposed tokens.
      draft_probs: [B, K, V], the distribution each draft was sampled from.
      target_probs: [B, K + 1, V], the target's distributions after each prefix.
      num_draft: optional [B] int in [0, K], active drafts per row.
    Returns:
      ``Verified``.
    """
    batch, k = _check_drafts(draft_tokens, target_probs, num_draft, "target_probs")
    vocab = jnp.shape(target_probs)[-1]
    _check_probs("draft_probs", draft_probs, batch, k)
    if jnp.shape(draft_probs)[-1] != vocab:
        raise ValueError(
            f"`draft_probs` and `target_probs` must share the vocabulary size; got "
            f"{jnp.shape(draft_probs)[-1]} and {vocab}."
        )
    target_probs = jnp.asarray(target_probs, jnp.float32)
    draft_probs = jnp.asarray(draft_probs, jnp.float32)
    active = _active(num_draft, batch, k)
    row_keys = jax.random.split(key, batch)

    def one_row(row_key, tokens, q, p, row_active):
        accept_key, token_key = jax.random.split(row_key)
        p_x = jnp.take_along_axis(p[:k], tokens[:, None], axis=-1)[:, 0]
        q_x = jnp.take_along_axis(q, tokens[:, None], axis=-1)[:, 0]
        uniform = jax.random.uniform(accept_key, (k,))
        accept = (uniform < acceptance_probability(p_x, q_x)) & row_active
        num_accepted = _leading_count(accept[None])[0]
        rejected = num_accepted < jnp.sum(row_active)
        # p[num_accepted] is the bonus distribution p_{k+1} when nothing was rejected.
        p_next = p[num_accepted]
        q_next = jnp.where(rejected, q[jnp.minimum(num_accepted, k - 1)] if k else 0.0, 0.0)
        dist = jnp.where(rejected, residual_distribution(p_next, q_next), p_next)
        next_token = jax.random.categorical(token_key, jnp.log(dist))
        return num_accepted, next_token.astype(jnp.int32)

    num_accepted, next_token = jax.vmap(one_row)(
        row_keys, jnp.asarray(draft_tokens, jnp.int32), draft_probs, target_probs, active
    )
    return Verified(num_accepted, next_token)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy in nats over the last axis (0 log 0 = 0)."""
    safe = jnp.where(probs > 0, probs, 1.0)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0), axis=-1)


def typical_acceptance(
    key: jax.Array,
    draft_tokens: jax.Array,
    target_probs: jax.Array,
    *,
    posterior_threshold: float,
    posterior_alpha: float,
    num_draft: jax.Array | None = None,
) -> Verified:
    """Typical acceptance (Medusa; lossy): keep drafts the target finds plausible enough.

    Draft ``x_i`` is accepted when ``p_i(x_i) > min(posterior_threshold,
    posterior_alpha * exp(-H(p_i)))``; the longest accepted prefix is kept and the
    next token is the target's own choice, sampled from ``p`` at that position
    (the argmax when ``p`` is one-hot, so at temperature 0 this is greedy
    verification). Both thresholds are required: published defaults differ,
    see ``MEDUSA_THRESHOLDS`` and ``MEDUSA_THRESHOLDS_SWAPPED``.

    Args:
      key: PRNG key for the next token (per-row sub-keys).
      draft_tokens: [B, K] int.
      target_probs: [B, K + 1, V] sampling distributions of the target.
      posterior_threshold: epsilon, the hard cap of the acceptance threshold.
      posterior_alpha: delta, the entropy-scaled threshold factor.
      num_draft: optional [B] int in [0, K], active drafts per row.
    """
    batch, k = _check_drafts(draft_tokens, target_probs, num_draft, "target_probs")
    for name, value in (
        ("posterior_threshold", posterior_threshold),
        ("posterior_alpha", posterior_alpha),
    ):
        if not value >= 0:
            raise ValueError(f"`{name}` must be >= 0; got {value!r}.")
    target_probs = jnp.asarray(target_probs, jnp.float32)
    p_x = jnp.take_along_axis(target_probs[:, :k], draft_tokens[..., None], axis=-1)[..., 0]
    threshold = jnp.minimum(
        posterior_threshold, posterior_alpha * jnp.exp(-entropy(target_probs[:, :k]))
    )
    accept = (p_x > threshold) & _active(num_draft, batch, k)
    num_accepted = _leading_count(accept)
    next_dist = jnp.take_along_axis(target_probs, num_accepted[:, None, None], axis=1)[:, 0]
    row_keys = jax.random.split(key, batch)
    next_token = jax.vmap(jax.random.categorical)(row_keys, jnp.log(next_dist))
    return Verified(num_accepted, next_token.astype(jnp.int32))
