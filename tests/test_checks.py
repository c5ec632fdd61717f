"""The one runtime-check mechanism: eager errors, free under plain jit, errors under checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lookahead_jax
from lookahead_jax import _checks, checks


def _ids_in_vocab(ids, vocab_size=10):
    _checks.check_range("ids", ids, 0, vocab_size)
    return ids + 1


def _positive_steps(steps):
    checks.check_value(
        jnp.all(steps > 0), "`steps` must be > 0; got minimum {low}", low=steps.min()
    )
    return steps * 2


def test_eager_raises_at_once_naming_the_argument():
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, 10\); got values in \[0, 12\]"):
        _ids_in_vocab(jnp.array([0, 12]))
    with pytest.raises(ValueError, match=r"`steps` must be > 0; got minimum -1"):
        _positive_steps(jnp.array([1.0, -1.0]))


def test_plain_jit_checks_nothing_and_changes_nothing():
    np.testing.assert_array_equal(jax.jit(_ids_in_vocab)(jnp.array([0, 12])), [1, 13])


def test_checked_raises_the_same_error_after_the_call():
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, 10\); got values in \[0, 12\]"):
        lookahead_jax.checked(_ids_in_vocab)(jnp.array([0, 12]))
    with pytest.raises(ValueError, match=r"`steps` must be > 0; got minimum -1"):
        lookahead_jax.checked(_positive_steps)(jnp.array([1.0, -1.0]))


def test_checked_passes_good_input_through_unchanged():
    out = lookahead_jax.checked(_ids_in_vocab)(jnp.array([0, 9]))
    np.testing.assert_array_equal(out, [1, 10])


def test_checked_reaches_inside_scan_vmap_and_while_loop():
    def scanned(ids):
        return jax.lax.scan(lambda c, x: (c, _ids_in_vocab(x)), 0, ids)[1]

    def looped(ids):
        def body(carry):
            i, acc = carry
            return i + 1, acc + _ids_in_vocab(ids[i])

        init = (0, jnp.zeros(ids.shape[1:], ids.dtype))
        return jax.lax.while_loop(lambda c: c[0] < ids.shape[0], body, init)[1]

    bad = jnp.array([[0, 1], [2, 11]])
    for fn in (scanned, jax.vmap(_ids_in_vocab), looped):
        with pytest.raises(ValueError, match=r"`ids` must lie in \[0, 10\)"):
            lookahead_jax.checked(fn)(bad)
        lookahead_jax.checked(fn)(bad % 10)  # good input: no error


def test_checked_accepts_static_arguments():
    def scaled(x, vocab_size):
        _checks.check_range("ids", x, 0, vocab_size)
        return x * vocab_size

    fn = lookahead_jax.checked(scaled, static_argnames=("vocab_size",))
    np.testing.assert_array_equal(fn(jnp.array([1, 2]), vocab_size=3), [3, 6])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fn(jnp.array([1, 3]), vocab_size=3)


def test_empty_arrays_are_not_checked():
    _ids_in_vocab(jnp.zeros((0,), jnp.int32))
    lookahead_jax.checked(_ids_in_vocab)(jnp.zeros((0,), jnp.int32))


def test_a_plain_jit_pays_nothing_for_the_checks():
    """Outside `checked` a traced check is not emitted: the program has no effect, so JAX
    keeps it on its fast dispatch path (an effect cost ~40 us per call, issue 18). Traced
    again under `checked`, the same function gets its check back."""

    def f(x):
        checks.check_value(x > 0, "`x` must be > 0; got {low}", low=jnp.min(x))
        return x + 1

    assert not jax.make_jaxpr(f)(jnp.ones(3)).effects
    jitted = jax.jit(f)
    jitted(jnp.ones(3))  # traced and cached without the check
    with pytest.raises(ValueError, match="must be > 0; got -1"):
        lookahead_jax.checked(lambda x: jitted(x))(-jnp.ones(3))
