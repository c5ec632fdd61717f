"""models.plan: bytes per device by hand and on the 8 simulated devices, mesh errors, presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models
from lookahead_jax.models import plan

# 8 query heads over 2 KV heads, MLP width 48, untied 32-id head (as in test_partitioning):
# on model=4 the KV heads are replicated, on model=2 they are split.
TARGET = models.llama(
    vocab_size=32, num_layers=2, num_heads=8, num_kv_heads=2, d_model=32, mlp_dim=48,
    max_length=64, tie_embeddings=False,
)  # fmt: skip
DRAFT = models.qwen2(
    vocab_size=32, num_layers=1, num_heads=4, num_kv_heads=4, d_model=16, mlp_dim=32,
    max_length=64, tie_embeddings=True,
)  # fmt: skip


def test_param_bytes_by_hand_split_and_replicated():
    # Elements: L=2, D=32, Q=8*4=32, K=2*4=8, F=48, V=32.
    wte, lm_head, ln_f, norms = 32 * 32, 32 * 32, 32, 2 * (2 * 32)
    q = out = 2 * 32 * 32
    k = v = 2 * 32 * 8
    mlp = 3 * (2 * 32 * 48)
    whole = wte + lm_head + ln_f + norms + q + out + k + v + mlp
    assert whole == TARGET.num_params()
    # model=4: q, out, MLP and the head split 4 ways; 2 KV heads do not: k, v replicated.
    four = wte + lm_head // 4 + ln_f + norms + (q + out) // 4 + k + v + mlp // 4
    # model=2: the KV heads split too.
    two = wte + lm_head // 2 + ln_f + norms + (q + out + k + v + mlp) // 2
    assert plan.param_bytes_per_device(TARGET, 4, jnp.float32) == (4 * whole, 4 * four)
    assert plan.param_bytes_per_device(TARGET, 2, jnp.float32) == (4 * whole, 4 * two)
    assert plan.param_bytes_per_device(TARGET, 4, "bfloat16") == (2 * whole, 2 * four)
    assert plan.param_bytes_per_device(TARGET, 1) == (4 * whole, 4 * whole)


def test_kv_bytes_by_hand():
    # [L=2, B=4, T=16, KV=2, Dh=4], keys and values, + lengths [B] int32.
    shape, whole, device = plan.kv_bytes_per_device(TARGET, 4, 16, 2, 4, jnp.float32)
    assert shape == (2, 4, 16, 2, 4)
    assert whole == 2 * (2 * 4 * 16 * 2 * 4) * 4 + 4 * 4
    # data=2 halves the rows; model=4 does not divide 2 KV heads: every device holds both.
    assert device == 2 * (2 * 2 * 16 * 2 * 4) * 4 + 4 * 2
    _, _, split = plan.kv_bytes_per_device(TARGET, 4, 16, 4, 2, jnp.bfloat16)
    assert split == 2 * (2 * 1 * 16 * 1 * 4) * 2 + 4 * 1  # 1 row, 1 KV head per device


def _largest_device_bytes(tree) -> int:
    per_device: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


@pytest.mark.parametrize(("data", "model"), [(2, 4), (4, 2), (1, 8)])
def test_plan_equals_the_placed_arrays(data, model):
    """The planned bytes per device are what shard_params / cache_shardings place."""
    mesh = models.make_model_mesh(data, model)
    p = plan.plan_generation(
        TARGET, DRAFT, data=data, model=model, batch_size=8, max_len=24, dtype="float32"
    )
    for config, planned in ((TARGET, p.target), (DRAFT, p.draft)):
        params = models.shard_params(config, models.init_params(config, jax.random.key(0)), mesh)
        assert _largest_device_bytes(params) == planned.param_bytes_per_device
        cache = jax.device_put(
            models.init_cache(config, 8, 24), models.cache_shardings(config, mesh)
        )
        assert _largest_device_bytes(cache) == planned.kv_bytes_per_device
        assert cache.keys.shape == planned.cache_shape


def test_plan_fields_and_notes():
    p = plan.plan_generation(
        TARGET, DRAFT, data=2, model=4, num_processes=2, batch_size=8, max_len=24
    )
    assert (p.devices, p.devices_per_process) == (8, 4)
    assert (p.batch_per_data_shard, p.batch_per_process) == (4, 4)
    assert (p.dtype, p.cache_dtype) == ("bfloat16", "bfloat16")
    assert p.bytes_per_device == (
        p.target.param_bytes_per_device + p.draft.param_bytes_per_device
        + p.target.kv_bytes_per_device + p.draft.kv_bytes_per_device
    )  # fmt: skip
    assert "KV heads (k, v, cache)" in p.target.replicated
    assert "KV heads (k, v, cache)" not in p.draft.replicated  # 4 KV heads split 4 ways
    assert any("2 KV heads do not divide model=4" in note for note in p.notes)
    text = str(p)
    for piece in ("data=2 x model=4", "4 per process", "MiB/device", "target (llama)", "notes:"):
        assert piece in text
    assert p.to_dict()["bytes_per_device"] == p.bytes_per_device
    f32 = plan.plan_generation(
        TARGET, data=2, model=4, batch_size=8, max_len=24, cache_dtype="float32"
    )
    assert f32.draft is None and f32.cache_dtype == "float32"
    assert "draft" not in str(f32) and "KV cache float32" in str(f32)
    assert f32.target.kv_bytes_per_device == 2 * p.target.kv_bytes_per_device - 4 * 4


@pytest.mark.parametrize(
    ("data", "model", "processes", "per_process"),
    [
        (8, 4, 8, 8),  # one model group per process: one data shard each
        (8, 4, 4, 16),  # two model groups per process
        (4, 8, 8, 16),  # a model group spans two processes: both load its 16 rows
        (2, 4, 1, 64),  # one process loads everything
    ],
)
def test_batch_per_process(data, model, processes, per_process):
    p = plan.plan_generation(
        plan.preset("llama-3.1-8b"), data=data, model=model, num_processes=processes,
        batch_size=64, max_len=2048,
    )  # fmt: skip
    assert p.batch_per_process == per_process
    spans = data * model // processes < model
    assert any("spans several processes" in n for n in p.notes) == spans


def test_check_mesh_errors():
    with pytest.raises(ValueError, match=r"`model` \(3\) must divide the target's 8 query heads"):
        plan.check_mesh(TARGET, 1, 3, 4, what="target")
    with pytest.raises(ValueError, match=r"\[1, 2, 4, 8\]"):
        plan.check_mesh(TARGET, 1, 3, 4)
    with pytest.raises(ValueError, match=r"`batch_size` \(6\) must be divisible .*data=4"):
        plan.check_mesh(TARGET, 4, 2, 6)
    with pytest.raises(ValueError, match="`data` must be a positive int"):
        plan.check_mesh(TARGET, 0, 2, 6)
    plan.check_mesh(TARGET, 2, 4, 8)  # 2 KV heads on 4 devices: allowed (replicated)
    plan.check_mesh(DRAFT, 2, 8, 8, allow_replicated_heads=True)
    with pytest.raises(ValueError, match=r"`model` \(8\) must divide the draft's 4 query heads"):
        plan.check_mesh(DRAFT, 2, 8, 8, what="draft")


def test_plan_generation_errors():
    with pytest.raises(ValueError, match=r"`model` \(8\) must divide the target's 28 query heads"):
        plan.plan_generation(
            plan.preset("qwen2.5-7b"), data=4, model=8, batch_size=64, max_len=2048
        )
    with pytest.raises(ValueError, match=r"`num_processes` \(3\) must divide the mesh's 8"):
        plan.plan_generation(TARGET, data=2, model=4, num_processes=3, batch_size=8, max_len=8)
    wide = models.llama(vocab_size=64, num_layers=1, num_heads=4, d_model=16, max_length=64)
    with pytest.raises(ValueError, match="`draft` must share the target's vocabulary"):
        plan.plan_generation(TARGET, wide, data=1, model=4, batch_size=8, max_len=8)
    with pytest.raises(ValueError, match=r"`max_len` \(100\) must be at most the draft's 64"):
        plan.plan_generation(TARGET, DRAFT, data=1, model=4, batch_size=8, max_len=100)
    with pytest.raises(ValueError, match="`dtype` must be a floating dtype"):
        plan.plan_generation(TARGET, data=1, model=4, batch_size=8, max_len=8, dtype="int32")
    # The draft's 4 query heads on 8 devices are replicated, not an error.
    p = plan.plan_generation(TARGET, DRAFT, data=1, model=8, batch_size=8, max_len=8)
    assert "query heads (q, out)" in p.draft.replicated
    with pytest.raises(ValueError, match="`name` must be one of the presets"):
        plan.preset("qwen2.5-72b")


@pytest.mark.parametrize(
    ("name", "num_params", "model_type", "tied"),
    [
        # The parameter counts HuggingFace reports for these checkpoints.
        ("qwen2.5-7b", 7_615_616_512, "qwen2", False),
        ("qwen2.5-0.5b", 494_032_768, "qwen2", True),
        ("llama-3.1-8b", 8_030_261_248, "llama", False),
        ("llama-3.2-1b", 1_235_814_400, "llama", True),
    ],
)
def test_presets_have_the_checkpoints_sizes(name, num_params, model_type, tied):
    config = plan.preset(name)
    assert config.num_params() == num_params
    assert (config.model_type, config.tie_embeddings) == (model_type, tied)
    whole, _ = plan.param_bytes_per_device(config, 1, "bfloat16")
    assert whole == 2 * num_params  # param_shapes agrees with num_params


def test_realistic_plan_numbers():
    """Qwen2.5-7B + 0.5B (vocabulary padded) on data=8 x model=4, 8 hosts, bfloat16."""
    target = plan.preset("qwen2.5-7b")
    draft = plan.preset("qwen2.5-0.5b")
    draft = dataclasses.replace(draft, vocab_size=target.vocab_size)
    p = plan.plan_generation(
        target, draft, data=8, model=4, num_processes=8, batch_size=64, max_len=2308
    )
    v, d = 152064, 3584
    # Replicated: embedding and norms (2 per layer + final); the rest splits 4 ways.
    replicated = v * d + (2 * 28 + 1) * d
    assert p.target.param_bytes_per_device == 2 * (replicated + (7_615_616_512 - replicated) // 4)
    # Target cache [28, 64, 2308, 4, 128]: 8 rows and 1 KV head per device.
    assert p.target.kv_bytes_per_device == 2 * 28 * 8 * 2308 * 1 * 128 * 2 + 4 * 8
    assert np.isclose(p.bytes_per_device / plan.GIB, 5.25, atol=0.01)
