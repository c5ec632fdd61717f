"""lookahead_jax: pure, compiled JAX functions for lookahead methods.

Subpackages: ``models`` (reference transformer, KV cache, HF interop, shipped
models), ``data`` (shipped corpus), ``drafting`` and ``verification``
(speculative decoding parts), ``decoding`` (generation loops), ``particles``
(SMC, Kalman reference, language-model particle filtering),
``predictive_coding`` (pyhgf-style HGF networks), ``extrapolation``
(Leap+Verify weight extrapolation), plus the shared
``sampling``, ``sharding`` and ``checkpoint`` helpers.

Importing the package lets XLA:CPU compile small loops into single kernels (see
``lookahead_jax._xla_cpu``; ``LOOKAHEAD_JAX_KEEP_XLA_FLAGS=1`` keeps ``XLA_FLAGS`` as
they are).
"""

from lookahead_jax import _xla_cpu

_xla_cpu.enable_small_loop_kernels()  # before any submodule can create the backend

from lookahead_jax import (  # noqa: E402
    checkpoint,
    checks,
    data,
    decoding,
    distributed,
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
from lookahead_jax._xla_cpu import small_loop_kernels  # noqa: E402
from lookahead_jax.checks import checked  # noqa: E402
from lookahead_jax.decoding import (  # noqa: E402
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
from lookahead_jax.sampling import Sampling  # noqa: E402

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
    "distributed",
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
    "small_loop_kernels",
    "trees",
    "verification",
]
