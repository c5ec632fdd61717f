"""Activation fingerprints of a model and the cosine similarity between two of them.

A fingerprint is what a model "says" about a fixed set of probe sequences: the
final-norm hidden state of every probe, mean-pooled over its real tokens. Two
checkpoints ``Delta`` steps apart whose fingerprints point the same way are in a
stable regime of training (``regimes.classify_regime``).

Padding is masked out of the pool (the original Leap+Verify code pools over
padding too); with a causal model a padded probe then has exactly the
fingerprint of the unpadded one.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lookahead_jax import _checks
from lookahead_jax.models import Params, TransformerConfig, apply, final_norm

SimilarityMode = Literal["concat", "per_probe"]
SIMILARITY_MODES = ("concat", "per_probe")


def probe_mask(lengths: jax.Array, width: int) -> jax.Array:
    """``lengths [P]`` int -> ``mask [P, width]`` bool, true on each probe's real tokens."""
    _checks.check_rank("lengths", lengths, 1, "[num_probes]")
    return jnp.arange(width)[None, :] < jnp.asarray(lengths)[:, None]


def mean_pool(features: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``features [P, S, D]`` over positions where ``mask [P, S]`` is true: ``[P, D]``.

    A probe without any real token pools to zeros (never NaN).
    """
    _checks.check_rank("features", features, 3, "[num_probes, length, width]")
    _checks.check_shape("mask", mask, features.shape[:2], "[num_probes, length] like `features`")
    weights = jnp.asarray(mask, features.dtype)[..., None]  # [P, S, 1]
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # [P, 1]
    return jnp.sum(features * weights, axis=1) / count


def model_fingerprint(
    config: TransformerConfig,
    params: Params,
    probes: jax.Array,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Fingerprint of the reference transformer: ``[P, D]`` float32.

    Args:
      config: the model's configuration (static).
      params: its parameters.
      probes: ``[P, S]`` int token ids of the fixed probe sequences (zero-padded).
      lengths: ``[P]`` int real length of each probe; ``None``: all ``S`` tokens are real.

    Returns:
      The final-LayerNorm output after the last block, mean-pooled over each
      probe's real tokens: ``[P, D]``.
    """
    _checks.check_rank("probes", probes, 2, "[num_probes, length]")
    _checks.check_integer("probes", probes)
    num, width = probes.shape
    if lengths is None:
        lengths = jnp.full((num,), width, jnp.int32)
    _checks.check_shape("lengths", lengths, (num,), "[num_probes]")
    _, _, hidden = apply(config, params, probes, return_hidden=True)  # [L + 1, P, S, D]
    normed = final_norm(config, params, hidden[-1]).astype(jnp.float32)  # [P, S, D]
    return mean_pool(normed, probe_mask(lengths, width))


def cosine_similarity(
    a: jax.Array, b: jax.Array, mode: SimilarityMode = "concat", eps: float = 1e-12
) -> jax.Array:
    """Cosine similarity ``[]`` of two fingerprints ``[P, D]``.

    Args:
      a, b: fingerprints of the same shape.
      mode: ``"concat"`` (the paper): one cosine over the flattened fingerprints;
        ``"per_probe"`` (the original code): the mean of the ``P`` per-probe cosines.
      eps: guards the norms of all-zero fingerprints.
    """
    if mode not in SIMILARITY_MODES:
        raise ValueError(f"`mode` must be one of {SIMILARITY_MODES}; got {mode!r}.")
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`a` and `b` must have the same shape; got {jnp.shape(a)} and {jnp.shape(b)}."
        )
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if mode == "concat":
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    else:
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.mean(dot / jnp.maximum(norms, eps))
