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


def _small(dtype=jnp.float32):
    return {
        "params": {"w": jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3)},
        "step": jnp.asarray(5, jnp.int32),
        "rng": jax.random.key(3),
    }


def test_restore_refuses_a_silent_dtype_cast(tmp_path):
    checkpoint.save(tmp_path, 1, _small(jnp.float32))
    # float32 on disk, bfloat16 target: an error naming the leaf and both dtypes.
    with pytest.raises(ValueError, match=r"\['params'\]\['w'\].*float32.*bfloat16.*dtype="):
        checkpoint.restore(tmp_path, _small(jnp.bfloat16))
    abstract = jax.eval_shape(lambda: _small(jnp.bfloat16))
    with pytest.raises(ValueError, match=r"\['params'\]\['w'\]"):
        checkpoint.restore(tmp_path, abstract)
    # An int leaf restored into a float target is refused too.
    bad = {**_small(), "step": jnp.asarray(5.0, jnp.float32)}
    with pytest.raises(ValueError, match=r"\['step'\]` was saved as int32 .* float32"):
        checkpoint.restore(tmp_path, bad)


def test_restore_casts_when_asked(tmp_path):
    state = _small(jnp.float32)
    checkpoint.save(tmp_path, 1, state)
    want = np.asarray(state["params"]["w"])
    like = checkpoint.restore(tmp_path, _small(jnp.bfloat16), dtype="like")
    assert like["params"]["w"].dtype == jnp.bfloat16 and like["step"].dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(like["params"]["w"], np.float32), want, atol=1e-2)
    # A dtype: every floating-point leaf in it, whatever the target says; ints untouched.
    fixed = checkpoint.restore(tmp_path, _small(jnp.float32), dtype=jnp.bfloat16)
    assert fixed["params"]["w"].dtype == jnp.bfloat16 and fixed["step"].dtype == jnp.int32
    with pytest.raises(ValueError, match=r"\['step'\]"):
        checkpoint.restore(tmp_path, {**state, "step": jnp.float32(0)}, dtype=jnp.bfloat16)
    # A per-leaf policy, called with the leaf path, the saved and the target dtype.
    seen = []

    def policy(path, saved, target):
        seen.append((path, str(saved), str(target)))
        return target if path == "['params']['w']" else None

    mixed = checkpoint.restore(tmp_path, _small(jnp.bfloat16), dtype=policy)
    assert mixed["params"]["w"].dtype == jnp.bfloat16
    assert ("['params']['w']", "float32", "bfloat16") in seen
    np.testing.assert_array_equal(
        jax.random.key_data(mixed["rng"]), jax.random.key_data(state["rng"])
    )
