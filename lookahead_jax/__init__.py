"""lookahead_jax: pure, compiled JAX functions for lookahead methods.

Subpackages: ``models`` (reference transformer, KV cache, HF interop, shipped
models), ``data`` (shipped corpus), ``drafting`` and ``verification``
(speculative decoding parts), ``decoding`` (generation loops), ``particles``
(SMC, Kalman reference, language-model particle filtering),
``predictive_coding`` (pyhgf-style HGF networks), ``extrapolation``
(Leap+Verify weight extrapolation), plus the shared
``sampling``, ``sharding`` and ``checkpoint`` helpers.
"""

from lookahead_jax import (
    checkpoint,
    data,
    decoding,
    drafting,
    extrapolation,
    models,
    particles,
    predictive_coding,
    sampling,
    sharding,
    trees,
    verification,
)
from lookahead_jax.decoding import Generation, GenerationStats, generate
from lookahead_jax.sampling import Sampling

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "GenerationStats",
    "Sampling",
    "checkpoint",
    "data",
    "decoding",
    "drafting",
    "extrapolation",
    "generate",
    "models",
    "particles",
    "predictive_coding",
    "sampling",
    "sharding",
    "trees",
    "verification",
]
