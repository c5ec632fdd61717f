"""Orbax helpers: round trips of state pytrees with optax states and PRNG keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lookahead_jax import checkpoint, models, sharding


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


# ---- resharding on restore (issue 20) ---------------------------------------------------------


def _layout_state(shardings):
    """A state whose array leaves are placed with ``shardings`` (``w``, ``rows``) or replicated."""
    w = jnp.arange(16 * 8, dtype=jnp.float32).reshape(16, 8) / 7.0
    rows = jnp.arange(16, dtype=jnp.int32) * 3
    return {
        "params": {"w": jax.device_put(w, shardings[0])},
        "rows": jax.device_put(rows, shardings[1]),
        "rng": jax.random.key(5),
        "step": jnp.asarray(9, jnp.int32),
    }


def _spec_sharding(mesh, *spec):
    return NamedSharding(mesh, PartitionSpec(*spec))


def test_restore_reshards_a_checkpoint_written_under_another_mesh(tmp_path):
    eight = sharding.make_mesh()
    saved = _layout_state([_spec_sharding(eight, "batch"), _spec_sharding(eight, "batch")])
    assert len(saved["params"]["w"].sharding.device_set) == 8
    checkpoint.save(tmp_path, 1, saved)
    grid = models.make_model_mesh(2, 4)
    four = sharding.make_mesh(4)
    layouts = {
        "data x model": [_spec_sharding(grid, "data", "model"), _spec_sharding(grid, "data")],
        "4 devices": [_spec_sharding(four, None, "batch"), _spec_sharding(four, "batch")],
        "replicated": [_spec_sharding(eight), _spec_sharding(eight)],
    }
    for name, shardings in layouts.items():
        state = _layout_state(shardings)
        # Zeros with each leaf's sharding, and the abstract form: restore fills in the values.
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        like = jax.tree.map(
            lambda x: jax.device_put(jnp.zeros(x.shape, x.dtype), x.sharding),
            {k: v for k, v in state.items() if k != "rng"},
        )
        like["rng"] = jax.random.key(0)
        for target in (like, abstract):
            restored = checkpoint.restore(tmp_path, target)
            _assert_equal(restored, saved)
            for leaf, want in zip(
                (restored["params"]["w"], restored["rows"]), shardings, strict=True
            ):
                assert leaf.sharding == want, name
                assert len(leaf.addressable_shards) == len(want.device_set), name


def test_restore_without_a_sharding_uses_a_device_every_process_has(tmp_path, monkeypatch):
    eight = sharding.make_mesh()
    saved = _layout_state([_spec_sharding(eight, "batch"), _spec_sharding(eight, "batch")])
    checkpoint.save(tmp_path, 1, saved)
    # NumPy leaves carry no sharding (a typed key cannot be a NumPy array).
    host = jax.tree.map(
        lambda x: np.zeros(x.shape, x.dtype), {k: v for k, v in saved.items() if k != "rng"}
    )
    host["rng"] = jax.random.key(0)
    # One process: the first device, as before.
    restored = checkpoint.restore(tmp_path, host)
    _assert_equal(restored, saved)
    assert restored["params"]["w"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    # Several processes: jax.devices()[0] belongs to process 0 alone, so the default is
    # replication over every device (tests/test_multiprocess.py restores this way for real).
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    target = checkpoint._abstract(np.zeros((16, 8), np.float32))
    assert target.sharding.is_fully_replicated
    assert target.sharding.device_set == set(jax.devices())


def test_restore_names_the_leaf_it_cannot_place(tmp_path):
    eight = sharding.make_mesh()
    saved = _layout_state([_spec_sharding(eight, "batch"), _spec_sharding(eight, "batch")])
    checkpoint.save(tmp_path, 1, saved)
    shorter = {**saved, "rows": jnp.zeros((8,), jnp.int32)}
    with pytest.raises(
        ValueError, match=r"`\['rows'\]` was saved with shape \(16,\) but .* \(8,\)"
    ):
        checkpoint.restore(tmp_path, shorter)
    # 16 rows cannot be split over 3 devices: named before orbax starts reading.
    three = jax.ShapeDtypeStruct(
        (16,), jnp.int32, sharding=_spec_sharding(sharding.make_mesh(3), "batch")
    )
    with pytest.raises(ValueError, match=r"`\['rows'\]` of shape \(16,\) cannot be restored .*3"):
        checkpoint.restore(tmp_path, {**saved, "rows": three})
    renamed = {("count" if k == "step" else k): v for k, v in saved.items()}
    with pytest.raises(
        ValueError, match=r"only in the checkpoint: \[step\]; .* only in `like`: \[count\]"
    ):
        checkpoint.restore(tmp_path, renamed)
