"""Mesh helpers: placement, divisibility errors, the distributed switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models, sharding


def test_shard_splits_batch_axis_per_leaf():
    mesh = sharding.make_mesh()
    config = models.TransformerConfig(
        vocab_size=8, num_layers=1, num_heads=1, d_model=4, max_length=8
    )
    cache = models.init_cache(config, 8, 4)
    placed = sharding.shard(cache, mesh, axes=models.KVCache(keys=1, values=1, lengths=0))
    assert tuple(placed.keys.sharding.spec)[:2] == (None, "batch")
    assert tuple(placed.lengths.sharding.spec) == ("batch",)
    assert placed.keys.addressable_shards[0].data.shape == (1, 1, 4, 1, 4)
    table = sharding.replicate(jnp.arange(3), mesh)
    assert table.sharding.is_fully_replicated


def test_errors_and_switch(monkeypatch):
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(9)
    with pytest.raises(ValueError, match="divisible"):
        sharding.shard(np.zeros((6, 2)), sharding.make_mesh())
    monkeypatch.delenv(sharding.DISTRIBUTED_ENV, raising=False)
    assert sharding.initialize_distributed() is False


def test_typed_keys_are_placed_as_keys():
    mesh = sharding.make_mesh()
    keys = jax.random.split(jax.random.key(3), 8)
    placed = sharding.shard({"keys": keys}, mesh, axes=0)
    assert jax.dtypes.issubdtype(placed["keys"].dtype, jax.dtypes.prng_key)
    assert placed["keys"].sharding.spec == jax.sharding.PartitionSpec(sharding.BATCH_AXIS)
    np.testing.assert_array_equal(jax.random.key_data(placed["keys"]), jax.random.key_data(keys))
    replicated = sharding.replicate(jax.random.key(4), mesh)
    assert replicated.sharding.is_fully_replicated
    np.testing.assert_array_equal(
        jax.random.key_data(replicated), jax.random.key_data(jax.random.key(4))
    )
