"""Tensor-parallel shardings on ("data", "model") meshes of the 8 simulated devices equal 1 device.

Logits within 1e-5 in float32 (the all-reduces reassociate sums) and identical
greedy tokens for generation with a draft model and with a tree drafter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from tests.helpers import perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

# 8 query heads over 2 KV heads: on a 4-wide model axis the KV heads are replicated,
# on a 2-wide one they are split; MLP width 48 splits over 2, 4 and 8.
TARGET = models.llama(
    vocab_size=32, num_layers=2, num_heads=8, num_kv_heads=2, d_model=32, mlp_dim=48,
    max_length=64, tie_embeddings=False,
)  # fmt: skip
DRAFT = models.qwen2(
    vocab_size=32, num_layers=1, num_heads=4, num_kv_heads=4, d_model=16, mlp_dim=32,
    max_length=64, tie_embeddings=True,
)  # fmt: skip
MESHES = {"2x4": (2, 4), "1x8": (1, 8), "4x2": (4, 2)}
MAX_NEW = 10


@pytest.fixture(scope="module")
def pair():
    target = perturbed(models.init_params(TARGET, jax.random.key(0)), 0.3, 1)
    draft = perturbed(models.init_params(DRAFT, jax.random.key(2)), 0.3, 3)
    return models.Model(TARGET, target), models.Model(DRAFT, draft)


def _prompts():
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, 32, (4, 6)), jnp.int32)
    return prompt, jnp.asarray([6, 3, 5, 2], jnp.int32)


def _place(model, mesh):
    return models.Model(model.config, models.shard_params(model.config, model.params, mesh))


def test_specs_split_heads_columns_and_rows():
    specs = models.param_specs(TARGET, 4)
    attn, mlp = specs["layers"]["attn"], specs["layers"]["mlp"]
    assert attn["q_kernel"] == PartitionSpec(None, None, "model")
    assert attn["out_kernel"] == PartitionSpec(None, "model", None)
    # 2 KV heads cannot be split 4 ways: replicated.
    assert attn["k_kernel"] == PartitionSpec(None, None, None)
    assert models.param_specs(TARGET, 2)["layers"]["attn"]["k_kernel"] == PartitionSpec(
        None, None, "model"
    )
    assert mlp["gate_kernel"] == PartitionSpec(None, None, "model")
    assert mlp["down_kernel"] == PartitionSpec(None, "model", None)
    assert specs["lm_head"] == PartitionSpec(None, "model")
    assert specs["wte"] == PartitionSpec(None, None)


@jax.jit
def _forward(model, tokens, cache):
    return model(tokens, cache)


# "4x2" splits the KV heads, "2x4" replicates them; "1x8" (pure model parallel) is slow-tier.
@pytest.mark.parametrize("mesh_name", ["2x4", "4x2", pytest.param("1x8", marks=pytest.mark.slow)])
def test_sharded_logits_equal_single_device(pair, mesh_name):
    target, _ = pair
    mesh = models.make_model_mesh(*MESHES[mesh_name])
    prompt, _ = _prompts()
    cache = models.init_cache(TARGET, 4, 16)
    single, _ = _forward(target, prompt, cache)
    sharded_cache = jax.device_put(cache, models.cache_shardings(TARGET, mesh))
    sharded_prompt = jax.device_put(prompt, models.batch_sharding(mesh, 2))
    logits, new_cache = _forward(_place(target, mesh), sharded_prompt, sharded_cache)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), np.asarray(single), atol=1e-5, rtol=0)
    assert new_cache.keys.shape == cache.keys.shape


@jax.jit
def _generate_chain(target, draft, prompt, lengths):
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW,
        drafter=drafting.draft_model(draft), max_draft_tokens=3,
        controller=ALWAYS_DRAFT,
    )  # fmt: skip


@jax.jit
def _generate_tree(target, draft, prompt, lengths):
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW,
        drafter=drafting.draft_model_tree(draft),
        controller=ALWAYS_DRAFT,
    )  # fmt: skip


@jax.jit
def _generate_plain(target, prompt, lengths):
    return generate(target, prompt, lengths, jax.random.key(0), max_new_tokens=MAX_NEW)


# The tree drafter (tree masks, path selection, cache compaction on a sharded cache) and
# the chain drafter on 2x4 and 1x8 meshes: slow tier (~14 s of compiling each). The fast
# tier shards chain generation in tests/decoding/test_generate.py and the model here.
@pytest.mark.parametrize(
    ("mesh_name", "drafter"),
    [
        pytest.param("2x4", "tree", marks=pytest.mark.slow),
        pytest.param("2x4", "chain", marks=pytest.mark.slow),
        pytest.param("1x8", "tree", marks=pytest.mark.slow),
        pytest.param("1x8", "chain", marks=pytest.mark.slow),
    ],
)
def test_sharded_generation_equals_single_device(pair, mesh_name, drafter):
    target, draft = pair
    mesh = models.make_model_mesh(*MESHES[mesh_name])
    prompt, lengths = _prompts()
    run = {"chain": _generate_chain, "tree": _generate_tree}[drafter]
    single = run(target, draft, prompt, lengths)
    if drafter == "chain":  # greedy = greedy (the drafting tests' law; one more compile)
        plain = _generate_plain(target, prompt, lengths)
        np.testing.assert_array_equal(single.tokens, plain.tokens)
    placed = (
        _place(target, mesh),
        _place(draft, mesh),
        jax.device_put(prompt, models.batch_sharding(mesh, 2)),
        jax.device_put(lengths, models.batch_sharding(mesh, 1)),
    )
    sharded = run(*placed)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)


def test_load_hf_places_each_tensor_on_the_mesh(pair, tmp_path):
    target, _ = pair
    models.save_hf(tmp_path, TARGET, target.params)
    mesh = models.make_model_mesh(2, 4)
    _, params = models.load_hf(tmp_path, sharding=mesh)
    q = params["layers"]["attn"]["q_kernel"]
    assert q.sharding.spec == PartitionSpec(None, None, "model")
    assert len(q.sharding.device_set) == 8
    np.testing.assert_array_equal(q, target.params["layers"]["attn"]["q_kernel"])


def test_mesh_errors():
    assert models.make_mesh is models.make_model_mesh  # deprecated alias
    with pytest.raises(ValueError, match="data"):
        models.make_model_mesh(3, 4)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="'model' axis"):
        models.param_shardings(TARGET, mesh)
