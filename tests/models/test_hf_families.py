"""Parity of ``load_hf`` / ``save_hf`` with transformers for every supported family.

Each case builds a small random model with transformers (torch CPU), saves it
with ``save_pretrained``, loads it with ``load_hf`` and compares logits on
ragged random batches, incrementally decoded through the KV cache; then
``save_hf`` -> ``from_pretrained`` must give the same logits again. The cases
cover the usual mistakes: Llama 3 rope scaling with a sequence crossing the
original context (and frequencies in all three bands), tied and untied heads,
``head_dim`` != hidden / heads, GQA 4:1 and 8:1, q/k/v-only biases (Qwen2),
q/k norms (Qwen3), Gemma 2's (1 + w) norms, embedding scale, soft-caps and
sliding windows shorter than the prompt, Mistral's window on every layer.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
VOCAB = 64
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 100.0,
    "factor": 4.0,
    "low_freq_factor": 0.25,
    "high_freq_factor": 1.2,
    "original_max_position_embeddings": 8,
}
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, max_position_embeddings=64)
CASES = {
    # GQA 4:1, head_dim 16 != 32 / 4, untied, biases everywhere, llama3 rope bands.
    "llama": (
        "LlamaConfig",
        dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            rope_parameters=LLAMA3_ROPE,
        ),
    ),
    # GQA 8:1, tied head (Llama-3.2-1B style), linear rope scaling.
    "llama_tied": (
        "LlamaConfig",
        dict(
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    "mistral": (
        "MistralConfig",
        dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=5,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
    ),
    "qwen3": (
        "Qwen3Config",
        dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=False,
        ),
    ),
    "gemma2": (
        "Gemma2Config",
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=12,
            sliding_window=4,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            pad_token_id=0,
        ),
    ),
}
BATCH, PROMPT, CONTINUATION = 3, 9, 4
PROMPT_LENGTHS = np.array([9, 4, 6])


def _hf_model(case: str):
    config_class, fields = CASES[case]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**COMMON, **fields)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        # Norm weights start at 1 (or 0), biases at 0: perturb every tensor so any
        # swapped, transposed or misplaced one changes the logits.
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


apply_jit = jax.jit(models.apply, static_argnums=0)


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request, tmp_path_factory):
    """``(case, hf_model, directory, config, params)`` for one family."""
    model = _hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory, safe_serialization=True)
    config, params = models.load_hf(directory)
    return request.param, model, directory, config, params


def _tokens(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


def test_full_forward_matches_transformers(family):
    case, model, _, config, params = family
    tokens = _tokens(1, (2, 12))
    logits, _ = apply_jit(config, params, jnp.asarray(tokens))
    err = float(np.max(np.abs(np.asarray(logits) - _hf_logits(model, tokens))))
    print(f"{case}: full forward max |logits - HF| = {err:.2e}")
    assert err < ATOL


def test_ragged_incremental_decoding_matches_transformers(family):
    """Padded prefill, rewind to each row's length, then one token at a time."""
    case, model, _, config, params = family
    prompts = _tokens(2, (BATCH, PROMPT))
    continuation = _tokens(3, (BATCH, CONTINUATION))
    cache = models.init_cache(config, BATCH, PROMPT + CONTINUATION)
    _, cache = apply_jit(config, params, jnp.asarray(prompts), cache)
    cache = models.rewind(cache, jnp.asarray(PROMPT_LENGTHS, jnp.int32))
    steps = []
    for t in range(CONTINUATION):
        logits, cache = apply_jit(config, params, jnp.asarray(continuation[:, t : t + 1]), cache)
        steps.append(np.asarray(logits[:, 0]))
    worst = 0.0
    for row in range(BATCH):
        sequence = np.concatenate([prompts[row, : PROMPT_LENGTHS[row]], continuation[row]])
        want = _hf_logits(model, sequence[None])[0, PROMPT_LENGTHS[row] :]
        got = np.stack([step[row] for step in steps])
        worst = max(worst, float(np.max(np.abs(got - want))))
    print(f"{case}: ragged incremental max |logits - HF| = {worst:.2e}")
    assert worst < ATOL


def test_save_hf_loads_in_transformers(family, tmp_path):
    case, model, _, config, params = family
    models.save_hf(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    tokens = _tokens(4, (2, 10))
    err = float(np.max(np.abs(_hf_logits(reloaded, tokens) - _hf_logits(model, tokens))))
    assert err < ATOL, f"{case}: {err}"
    again = models.load_hf(tmp_path)
    assert again[0] == config
    for a, b in zip(jax.tree.leaves(again[1]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_fields(family):
    case, _, _, config, _ = family
    expected = {
        "llama": dict(num_kv_heads=1, head_dim=16, tie_embeddings=False, rope_type="llama3"),
        "llama_tied": dict(num_kv_heads=1, head_dim=4, tie_embeddings=True, rope_type="linear"),
        "mistral": dict(sliding_window=5, sliding_layers=None, tie_embeddings=False),
        "qwen2": dict(qkv_bias=True, out_bias=False, rope_theta=1e6, tie_embeddings=True),
        "qwen3": dict(qk_norm=True, qkv_bias=False, head_dim=16),
        "gemma2": dict(
            sliding_window=4,
            sliding_layers=(True, False, True),
            attn_logit_softcap=5.0,
            final_logit_softcap=3.0,
            query_pre_attn_scalar=12.0,
            norm="rms_norm_plus_one",
        ),
    }[case]
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_llama3_frequencies_cover_every_band():
    config = models.llama(
        vocab_size=8,
        num_layers=1,
        num_heads=2,
        d_model=32,
        head_dim=16,
        rope_theta=100.0,
        rope_type="llama3",
        rope_factor=4.0,
        rope_low_freq_factor=0.25,
        rope_high_freq_factor=1.2,
        rope_original_max_length=8,
    )
    unscaled = models.llama(
        vocab_size=8, num_layers=1, num_heads=2, d_model=32, head_dim=16, rope_theta=100.0
    )
    base = models.rope_frequencies(unscaled)
    scaled = models.rope_frequencies(config)
    kept = scaled == base
    divided = np.isclose(scaled, base / 4.0, rtol=1e-6)
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any()


def test_legacy_rope_keys_read_like_rope_parameters(family):
    _, _, directory, config, _ = family
    hf = json.loads((directory / "config.json").read_text())
    parameters = hf.pop("rope_parameters", None) or {}
    legacy = dict(hf)
    legacy["rope_theta"] = parameters.get("rope_theta", 10000.0)
    scaling = {k: v for k, v in parameters.items() if k != "rope_theta"}
    legacy["rope_scaling"] = None if scaling.get("rope_type") in (None, "default") else scaling
    if legacy["rope_scaling"]:
        legacy["rope_scaling"]["type"] = legacy["rope_scaling"].pop("rope_type")
    assert models.config_from_hf(legacy) == config


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    model = _hf_model("qwen3")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config, params = models.load_hf(tmp_path)
    tokens = _tokens(5, (1, 8))
    logits, _ = apply_jit(config, params, jnp.asarray(tokens))
    assert float(np.max(np.abs(np.asarray(logits) - _hf_logits(model, tokens)))) < ATOL
    _, half = models.load_hf(tmp_path, dtype="bfloat16")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
    half_logits, _ = apply_jit(config, half, jnp.asarray(tokens))
    assert half_logits.dtype == jnp.float32
    # bfloat16 weights and activations: close to float32, not equal.
    assert float(np.max(np.abs(np.asarray(half_logits) - np.asarray(logits)))) < 0.5


# --- bad input ------------------------------------------------------------------------------


def _write_config(directory, **changes):
    path = directory / "config.json"
    hf = json.loads(path.read_text())
    hf.update(changes)
    path.write_text(json.dumps(hf))


@pytest.fixture
def qwen_dir(tmp_path):
    config = models.qwen2(vocab_size=16, num_layers=1, num_heads=2, num_kv_heads=1, d_model=8)
    params = models.init_params(config, jax.random.key(0))
    models.save_hf(tmp_path, config, params)
    return tmp_path, config, params


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(model_type="mixtral"), "model_type.*mixtral"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_type.*yarn"),
        (dict(num_local_experts=8), "mixture-of-experts.*num_local_experts"),
        (dict(hidden_act="relu"), "hidden_act.*relu"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(num_key_value_heads=3), "num_kv_heads"),
        (dict(hidden_size=12), "shape"),
    ],
)
def test_unsupported_or_inconsistent_config_is_rejected(qwen_dir, changes, match):
    directory, _, _ = qwen_dir
    _write_config(directory, **changes)
    with pytest.raises(ValueError, match=match):
        models.load_hf(directory)


def test_missing_and_corrupt_files(qwen_dir, tmp_path_factory):
    directory, _, _ = qwen_dir
    with pytest.raises(ValueError, match="existing directory or a Hub repo id"):
        models.load_hf(directory / "nope" / "deeper")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        models.load_hf(directory)
    empty = tmp_path_factory.mktemp("empty")
    config = models.hf_config_dict(models.llama(vocab_size=8, num_layers=1, num_heads=1, d_model=4))
    (empty / "config.json").write_text(json.dumps(config))
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="missing field"):
        models.load_hf(empty)
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing model\.safetensors"):
        models.load_hf(empty)
    (empty / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        models.load_hf(empty)


def test_bad_tensors_are_rejected_before_loading(qwen_dir):
    from safetensors.numpy import load_file, save_file

    directory, _, _ = qwen_dir
    tensors = load_file(directory / "model.safetensors")
    bad = dict(tensors)
    bad["model.layers.0.self_attn.q_proj.weight"] = np.full((8, 8), np.nan, np.float32)
    save_file(bad, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"q_proj\.weight.*must hold finite values"):
        models.load_hf(directory)
    missing = {k: v for k, v in tensors.items() if "k_proj.bias" not in k}
    save_file(missing, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors.*k_proj\.bias"):
        models.load_hf(directory)
    extra = {**tensors, "model.layers.1.mlp.up_proj.weight": np.zeros((32, 8), np.float32)}
    save_file(extra, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors.*layers\.1"):
        models.load_hf(directory)
    integer = {**tensors, "model.norm.weight": np.ones((8,), np.int32)}
    save_file(integer, directory / "model.safetensors")
    with pytest.raises(ValueError, match="floating point"):
        models.load_hf(directory)


def test_bad_dtype_and_sharding_arguments(qwen_dir):
    directory, _, _ = qwen_dir
    with pytest.raises(ValueError, match="dtype"):
        models.load_hf(directory, dtype="int8")
    with pytest.raises(ValueError, match="sharding"):
        models.load_hf(directory, sharding="everywhere")
