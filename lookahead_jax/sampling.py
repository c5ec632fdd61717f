"""Sampling utilities shared by decoding, drafting and verification.

``Sampling`` describes how logits become a next-token distribution
(temperature, top-k, top-p). The same transformation must be applied to the
target and the draft distributions for lossless speculative sampling, so it
lives here, in one place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to turn logits into a next-token distribution. Static (hashable).

    Attributes:
      temperature: 0 means greedy (argmax); otherwise logits are divided by it.
      top_k: keep only the k most likely tokens (``None``: all).
      top_p: keep the smallest set of most likely tokens whose mass reaches p
        (``None``: all).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"`temperature` must be >= 0; got {self.temperature!r}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"`top_k` must be a positive int or None; got {self.top_k!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1] or be None; got {self.top_p!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def log_probs(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """Log-probabilities ``[..., V]`` of the sampling distribution (-inf where excluded).

    Greedy sampling gives a one-hot distribution on the argmax (first index on ties).
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if sampling.greedy:
        best = jnp.argmax(logits, axis=-1)
        return jnp.where(jax.nn.one_hot(best, vocab, dtype=bool), 0.0, -jnp.inf)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < vocab:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if sampling.top_p is not None and sampling.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
        # Keep a token if the mass strictly before it is below p (the top token always stays).
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < sampling.top_p
        keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def sample(key: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row of ``logits [..., V]`` -> ``[...]`` int32."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, log_probs(logits, sampling), axis=-1).astype(jnp.int32)
