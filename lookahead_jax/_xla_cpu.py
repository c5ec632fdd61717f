"""XLA:CPU compiles small loops into single kernels when lookahead_jax is imported first.

Since JAX 0.4.32, XLA:CPU runs a compiled program as a sequence of "thunks" (one per
fused kernel or loop), and a ``lax.scan``/``while_loop`` body pays a dispatch cost
per kernel per iteration; with more than 8 kernels touching buffers over 512 bytes
the kernels of one iteration are even handed between threads. Loops of scalar work
(an HGF step, a particle filter over a few particles, a Kalman filter) then spend
most of their time dispatching: measured on 2 cores, the 3-level HGF with unbounded
volatility updates ran at ~2.5 us per step, of which ~0.5 us is arithmetic.

XLA has a pass that compiles a whole loop into one kernel (as the pre-0.4.32 runtime
did) when the loop accesses less than ``xla_cpu_small_while_loop_byte_threshold``
bytes per iteration, 1 KiB by default; one HGF step with unbounded updates accesses
~1.3 KiB (3-level network) to ~3 KiB (6 nodes, two inputs). Importing lookahead_jax
raises that threshold to 16 KiB through ``XLA_FLAGS`` (the only way to set it: it is
not a per-``jit`` compiler option), so loops of scalar or small-vector work compile to
one kernel; loops over larger arrays (1,000 HGF subjects under ``vmap``, a model's
forward pass) are not affected, and neither are loops with matrix products,
convolutions, scatters or custom calls, which XLA never hoists. pyhgf does the same
kind of thing (it switches XLA:CPU to the old runtime at import, where jaxlib still
has it).

Why 16 KiB and not more: a hoisted loop is compiled as one function, where LLVM may
fuse a product with the sum that follows it across what were separate kernels; the
transformer's exact mode, which keeps products and sums apart so that its results do
not depend on how work is split, then no longer matched bit for bit between a program
whose row-block loop was hoisted and one whose loop was not (its test caught it at a
64 KiB threshold; at 16 KiB those loops stay unhoisted).

It takes effect only when lookahead_jax is imported before JAX creates its CPU
backend (before the first computation); it never overrides a threshold the user set
in ``XLA_FLAGS``; ``LOOKAHEAD_JAX_KEEP_XLA_FLAGS=1`` turns it off. GPUs and TPUs
ignore the option. :func:`small_loop_kernels` says whether it is in force.
"""

from __future__ import annotations

import os
import re

try:  # private: whether JAX already created its backends (then XLA_FLAGS is read)
    import jax._src.xla_bridge as _xla_bridge
except ImportError:  # pragma: no cover - moved in some JAX version
    _xla_bridge = None

OPTION = "xla_cpu_small_while_loop_byte_threshold"
THRESHOLD_BYTES = 16 * 1024
OPT_OUT = "LOOKAHEAD_JAX_KEEP_XLA_FLAGS"
_EXTRA = "--xla_backend_extra_options"


def with_small_loop_threshold(flags: str, threshold: int = THRESHOLD_BYTES) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the small-loop threshold added, merged into
    an existing ``--xla_backend_extra_options`` (a second one would replace the first);
    unchanged if the threshold is already set."""
    if OPTION in flags:
        return flags
    option = f"{OPTION}={threshold}"
    match = re.search(rf"{_EXTRA}=(\S*)", flags)
    if match is None:
        return f"{flags} {_EXTRA}={option}".strip()
    merged = f"{match.group(1)},{option}" if match.group(1) else option
    return flags[: match.start()] + f"{_EXTRA}={merged}" + flags[match.end() :]


def _backends_initialized() -> bool:
    initialized = getattr(_xla_bridge, "backends_are_initialized", None)  # None-safe
    return bool(initialized()) if initialized is not None else False


def enable_small_loop_kernels() -> bool:
    """Adds the threshold to ``XLA_FLAGS`` unless opted out, already set, or too late
    (the backend exists); returns whether it changed ``XLA_FLAGS``."""
    if os.environ.get(OPT_OUT, "") not in ("", "0") or _backends_initialized():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    new = with_small_loop_threshold(flags)
    if new == flags:
        return False
    os.environ["XLA_FLAGS"] = new
    return True


def small_loop_kernels() -> int | None:
    """The small-loop threshold in bytes that ``XLA_FLAGS`` sets (None: XLA's default,
    1 KiB). It is in force if it was set before JAX created its CPU backend."""
    match = re.search(rf"{OPTION}=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(match.group(1)) if match else None
