"""Trace-time input checks shared by every pillar.

Errors are raised while a function is traced, so a user sees a ``ValueError``
naming the argument, what was expected and what came, instead of an XLA error
or a silent NaN. Value checks (e.g. token ids inside the vocabulary) only run
when the value is concrete, i.e. outside ``jit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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
    """Checks ``low <= x < high`` when ``x`` is concrete."""
    value = concrete_value(x)
    if value is None or value.size == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    if lo < low or hi >= high:
        raise ValueError(f"`{name}` must lie in [{low}, {high}); got values in [{lo}, {hi}].")
