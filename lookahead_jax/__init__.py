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
    checks,
    data,
    decoding,
    drafting,
    extrapolation,
    metrics,
    models,
    particles,
    predictive_coding,
    sampling,
    sharding,
    trees,
    verification,
)
from lookahead_jax.checks import checked
from lookahead_jax.decoding import (
    Generation,
    GenerationConfig,
    GenerationState,
    GenerationStats,
    GenerationStepInfo,
    generate,
    generation_init,
    generation_result,
    generation_run,
    generation_step,
)
from lookahead_jax.sampling import Sampling

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "GenerationConfig",
    "GenerationState",
    "GenerationStats",
    "GenerationStepInfo",
    "Sampling",
    "checked",
    "checkpoint",
    "checks",
    "data",
    "decoding",
    "drafting",
    "extrapolation",
    "generate",
    "generation_init",
    "generation_result",
    "generation_run",
    "generation_step",
    "metrics",
    "models",
    "particles",
    "predictive_coding",
    "sampling",
    "sharding",
    "trees",
    "verification",
]
