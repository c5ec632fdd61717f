"""Trace-time input checks shared by every pillar.

Errors are raised while a function is traced, so a user sees a ``ValueError``
naming the argument, what was expected and what came, instead of an XLA error
or a silent NaN. Value checks (e.g. token ids inside the
vocabulary) raise at once when the value is concrete and otherwise go through the
library's one runtime-check mechanism, ``lookahead_jax.checks`` (on under ``checked``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import checks


def concrete_value(x: Any) -> np.ndarray | None:
    """Returns ``x`` as a NumPy array when its value is known, else ``None``."""
    if isinstance(x, np.ndarray | np.generic | int | float | bool):
        return np.asarray(x)
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_rank(name: str, x: Any, rank: int, meaning: str) -> None:
    ndim = jnp.ndim(x)
    if ndim != rank:
        raise ValueError(f"`{name}` must have rank {rank} ({meaning}); got shape {jnp.shape(x)}.")


def check_shape(name: str, x: Any, expected: Sequence[int | None], meaning: str) -> None:
    shape = tuple(jnp.shape(x))
    ok = len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape, strict=True)
    )
    if not ok:
        want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"`{name}` must have shape {want} ({meaning}); got {shape}.")


def check_integer(name: str, x: Any) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"`{name}` must hold integers; got dtype {dtype}.")


def check_bool(name: str, x: Any) -> None:
    dtype = jnp.result_type(x)
    if dtype != jnp.bool_:
        raise ValueError(f"`{name}` must be a boolean array; got dtype {dtype}.")


def check_range(name: str, x: Any, low: int, high: int) -> None:
    """Checks ``low <= x < high``: at once when ``x`` is concrete, else through the
    library's runtime-check mechanism (``lookahead_jax.checks``: on under ``checked``)."""
    if jnp.size(x) == 0:
        return
    value = concrete_value(x)
    if value is not None:
        lo, hi = int(value.min()), int(value.max())
        if lo < low or hi >= high:
            raise ValueError(f"`{name}` must lie in [{low}, {high}); got values in [{lo}, {hi}].")
        return
    checks.check_value(
        (jnp.min(x) >= low) & (jnp.max(x) < high),
        f"`{name}` must lie in [{low}, {high}); got values in [{{lo}}, {{hi}}].",
        lo=jnp.min(x),
        hi=jnp.max(x),
    )


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """``value`` must be a Python int in ``[low, high]`` (a static setting)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an int {span}; got {value!r}.")


def check_float(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` must be a real number in the given interval (never NaN).

    A traced value (e.g. ``alpha`` passed through ``jit``) cannot be checked and passes.
    """
    if isinstance(value, jax.Array) and concrete_value(value) is None:
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    ok = not math.isnan(x)
    ok = ok and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {left}{low}, {high}{right}; got {value!r}.")


def check_token(name: str, value: Any, vocab_size: int, optional: bool = True) -> None:
    """``value`` must be a static token id in ``[0, vocab_size)`` (or ``None`` if optional)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
        raise ValueError(
            f"`{name}` must be a token id in [0, {vocab_size})"
            + (" or None" if optional else "")
            + f"; got {value!r}."
        )


def check_sequences(
    name: str, sequences: Any, lengths: Any, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
    """Token sequences ``[S, T]`` with ``lengths [S]`` (e.g. documents seeding a memory).

    Shapes and dtypes are checked at trace time; lengths in ``[0, T]`` and the ids before
    each length in ``[0, vocab_size)`` through ``check_range`` (past a length ids are
    ignored). Returns both as int32 arrays.
    """
    check_integer(name, sequences)
    check_rank(name, sequences, 2, "[num_sequences, length]")
    num, width = jnp.shape(sequences)
    check_integer("lengths", lengths)
    check_shape("lengths", lengths, (num,), "one length per sequence")
    check_range("lengths", lengths, 0, width + 1)
    sequences = jnp.asarray(sequences, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    real = jnp.arange(width)[None, :] < lengths[:, None]
    check_range(name, jnp.where(real, sequences, 0), 0, vocab_size)
    return sequences, lengths
