"""Orbax helpers: round trips of state pytrees with optax states and PRNG keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import checkpoint


def _state(seed: int):
    key = jax.random.key(seed)
    params = {"w": jax.random.normal(key, (3, 4)), "b": jnp.arange(4.0)}
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    opt_state = optimizer.init(params)
    # One update, so the Adam moments and count are non-trivial.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(7, jnp.int32),
        "rng": jax.random.split(key)[0],
        "raw_key": jax.random.PRNGKey(seed),
    }


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)

    def check(x, y):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    jax.tree.map(check, a, b)


def test_round_trip_with_optax_state(tmp_path):
    assert checkpoint.latest_step(tmp_path / "ckpt") is None
    state = _state(0)
    checkpoint.save(tmp_path / "ckpt", 3, state)
    assert checkpoint.latest_step(tmp_path / "ckpt") == 3
    restored = checkpoint.restore(tmp_path / "ckpt", _state(1))  # structure from another state
    _assert_equal(restored, state)
    # An abstract target works too.
    abstract = jax.eval_shape(lambda: _state(2))
    _assert_equal(checkpoint.restore(tmp_path / "ckpt", abstract, step=3), state)


def test_latest_step_and_max_to_keep(tmp_path):
    states = {step: _state(step) for step in (1, 2, 3, 4)}
    for step, state in states.items():
        checkpoint.save(tmp_path, step, state, max_to_keep=2)
    assert checkpoint.latest_step(tmp_path) == 4
    assert checkpoint.all_steps(tmp_path) == [3, 4]
    _assert_equal(checkpoint.restore(tmp_path, states[1]), states[4])
    _assert_equal(checkpoint.restore(tmp_path, states[1], step=3), states[3])
    with pytest.raises(FileNotFoundError, match="step 1"):
        checkpoint.restore(tmp_path, states[1], step=1)


def test_restore_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(tmp_path, _state(0))
