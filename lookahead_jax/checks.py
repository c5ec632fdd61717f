"""The library's one runtime-check mechanism: value errors that survive ``jax.jit``.

Shapes, dtypes and static values are checked while a function is traced (see
``lookahead_jax._checks``). Values that ``jit`` hides (token ids in range, prompt lengths,
rewards in [0, 1], finite probabilities, positive time steps) are checked with
:func:`check_value`, which behaves in one of three ways:

* the value is concrete (an eager call, or a check run before the library's own ``jit``):
  a ``ValueError`` naming the argument, what was expected and what came, raised at once;
* traced inside :func:`checked` (``jax.experimental.checkify`` underneath): the same
  ``ValueError``, raised when the compiled call returns;
* traced under a plain ``jax.jit``: nothing is checked and nothing is paid: the check
  is not emitted at all. (A ``checkify.debug_check`` is a no-op outside checkify, but it
  gives the traced program an effect, and JAX dispatches effectful programs on its slow
  path: ~40 us more per call for one check, ~150 us for the HGF's, measured on 2 cores.)
  :func:`checked` traces under a JAX trace-context option that turns emission on, so a
  function traced both ways keeps two compiled versions. Wrap with :func:`checked` to
  turn the checks on::

      step = lookahead_jax.checked(my_step, static_argnames=("config",))
      state = step(key, state, config=config)   # ValueError on out-of-range ids

Why checkify and not per-row error codes in every ``Info``: one mechanism reaches every
pillar (inside ``scan``, ``while_loop``, ``vmap`` and sharded ``jit``) without adding a
field to each algorithm's state, the checks cost nothing when off, and users switch them on
where they want them (a notebook, a first run) without editing library code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["check_value", "checked"]

_CHECKIFY_SUFFIX = " (`check` failed)"


def _define_checks_state():
    """A JAX configuration option, part of the trace context (so part of every tracing
    cache key), that :func:`checked` sets while it traces; None if this JAX has no such
    mechanism (then the checks are always emitted, as before)."""
    try:
        from jax._src import config as jax_config

        return jax_config.bool_state(
            name="lookahead_jax_runtime_checks",
            default=False,
            help="Emit lookahead_jax's runtime value checks (set by lookahead_jax.checked).",
            include_in_trace_context=True,
        )
    except Exception:  # private API moved, or the option exists (module reloaded)
        return None


_CHECKS_ON = _define_checks_state()


def _emit_checks() -> bool:
    return True if _CHECKS_ON is None else bool(_CHECKS_ON.value)


def _concrete(x: Any) -> np.ndarray | None:
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_value(predicate: Any, message: str, **values: Any) -> None:
    """Checks ``predicate`` (a boolean scalar or array: all must hold).

    Args:
      predicate: what must hold, e.g. ``jnp.all((ids >= 0) & (ids < vocab_size))``.
      message: a ``str.format`` template naming the argument, the expectation and what
        came, filled from ``values``, e.g. "`prompt` ids must lie in [0, {vocab}); got
        values in [{low}, {high}]".
      **values: arrays or scalars for the template (computed lazily under tracing).
    """
    concrete = _concrete(predicate)
    if concrete is not None:
        if not bool(np.all(concrete)):
            shown = {}
            for name, value in values.items():
                value = _concrete(value)
                shown[name] = value.item() if value is not None and value.size == 1 else value
            raise ValueError(message.format(**shown))
        return
    if _emit_checks():
        checkify.debug_check(jnp.all(predicate), message, **values)


def checked(
    fn: Callable[..., Any],
    *,
    jit: bool = True,
    static_argnums: int | Sequence[int] | None = None,
    static_argnames: str | Sequence[str] | None = None,
) -> Callable[..., Any]:
    """Returns ``fn`` with the library's runtime checks on.

    The wrapped function runs ``fn`` under ``checkify`` (and ``jax.jit`` unless
    ``jit=False``; static arguments as for ``jax.jit``) and raises the first failed check
    as a ``ValueError`` when the call returns. Outputs are unchanged. Inside a larger
    program, put ``checked`` outermost: ``checked(lambda *a: jax.jit(f)(*a))`` works, a
    ``jax.jit`` around ``checked`` does not (the error must leave the compiled program).
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)
    if jit:
        checkified = jax.jit(
            checkified, static_argnums=static_argnums, static_argnames=static_argnames
        )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _CHECKS_ON is None:
            error, out = checkified(*args, **kwargs)
        else:
            with _CHECKS_ON(True):
                error, out = checkified(*args, **kwargs)
        message = error.get()
        if message is not None:
            if message.endswith(_CHECKIFY_SUFFIX):
                message = message[: -len(_CHECKIFY_SUFFIX)]
            raise ValueError(message)
        return out

    return wrapper
