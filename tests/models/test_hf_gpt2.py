"""Parity of ``load_hf_gpt2`` / ``save_hf_gpt2`` with transformers' ``GPT2LMHeadModel``."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lookahead_jax.models import (
    TransformerConfig,
    apply,
    final_norm,
    init_cache,
    load_hf_gpt2,
    param_shapes,
    save_hf_gpt2,
)

# Never reach the Hub: every model here is built from a random-init config.
os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
BATCH, SEQ = 3, 12
# n_inner and the epsilon differ from their defaults so that their mapping is exercised.
HF_KWARGS = dict(
    vocab_size=64,
    n_layer=2,
    n_head=2,
    n_embd=16,
    n_positions=32,
    n_inner=40,
    layer_norm_epsilon=1e-6,
    bos_token_id=63,
    eos_token_id=63,
)

apply_jit = jax.jit(apply, static_argnums=0, static_argnames="return_hidden")


def _hf_model(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**HF_KWARGS, **overrides})
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        # LayerNorms start at (1, 0), biases at 0 and weights small; perturb them all
        # so that logits are O(1) and any swapped or misplaced tensor fails the test.
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def _hf_forward(model, tokens):
    """Logits [B, S, V] and the L + 1 hidden states [B, S, D] of a full forward pass."""
    with torch.no_grad():
        out = model(torch.tensor(np.array(tokens)), output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def _random_params(config, seed):
    """Parameters with every entry random (LayerNorms included), drawn with NumPy.

    NumPy instead of ``init_params`` because eager ``jax.random`` compiles per shape,
    which would dominate this file's runtime.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32),
        param_shapes(config),
    )


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(0, HF_KWARGS["vocab_size"], (BATCH, SEQ)), jnp.int32)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A checkpoint written by transformers' ``save_pretrained``, and its model."""
    model = _hf_model()
    directory = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def loaded(hf_dir):
    return load_hf_gpt2(hf_dir[0])


def test_load_config_fields(loaded):
    config, _ = loaded
    assert config == TransformerConfig(
        vocab_size=64,
        num_layers=2,
        num_heads=2,
        d_model=16,
        max_length=32,
        mlp_dim=40,
        layer_norm_eps=1e-6,
    )


def test_load_matches_hf_logits_and_hidden(hf_dir, loaded, tokens):
    _, model = hf_dir
    config, params = loaded
    logits, _, hidden = apply_jit(config, params, tokens, return_hidden=True)
    hf_logits, hf_hidden = _hf_forward(model, tokens)
    err = float(np.max(np.abs(np.asarray(logits) - hf_logits)))
    print(f"load: max |logits - HF logits| = {err:.2e}")
    assert err < ATOL
    # HF's hidden states: embeddings, then after each block, except that the last
    # one has ln_f applied; ours all stop before ln_f.
    assert hidden.shape == (config.num_layers + 1, BATCH, SEQ, config.d_model)
    for layer in range(config.num_layers):
        np.testing.assert_allclose(hidden[layer], hf_hidden[layer], atol=ATOL)
    np.testing.assert_allclose(final_norm(config, params, hidden[-1]), hf_hidden[-1], atol=ATOL)


def test_incremental_decoding_matches_hf(hf_dir, loaded, tokens):
    _, model = hf_dir
    config, params = loaded
    hf_logits, _ = _hf_forward(model, tokens)
    cache = init_cache(config, BATCH, max_length=16)
    # A 4-token prefill, a 4-token chunk on top of it, then one token at a time.
    steps = [(0, 4), (4, 8)] + [(i, i + 1) for i in range(8, SEQ)]
    for start, stop in steps:
        logits, cache = apply_jit(config, params, tokens[:, start:stop], cache)
        np.testing.assert_allclose(logits, hf_logits[:, start:stop], atol=ATOL)
    np.testing.assert_array_equal(cache.lengths, SEQ)


def test_save_loads_in_transformers(tmp_path, tokens):
    config = TransformerConfig(vocab_size=64, num_layers=2, num_heads=4, d_model=16, max_length=32)
    params = _random_params(config, seed=1)
    save_hf_gpt2(tmp_path, config, params)

    model, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    model.eval()
    for kind, entries in info.items():
        assert not entries, f"{kind}: {entries}"
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.config.bos_token_id == model.config.eos_token_id == 63
    hf_logits, _ = _hf_forward(model, tokens)
    logits, _ = apply_jit(config, params, tokens)
    err = float(np.max(np.abs(np.asarray(logits) - hf_logits)))
    print(f"save: max |logits - HF logits| = {err:.2e}")
    assert err < ATOL


def test_round_trip_is_exact(hf_dir, loaded, tmp_path):
    config, params = loaded
    save_hf_gpt2(tmp_path, config, params)
    # Same tensors, bit for bit and key for key, as transformers' own file.
    ours = load_file(tmp_path / "model.safetensors")
    theirs = load_file(hf_dir[0] / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    config2, params2 = load_hf_gpt2(tmp_path)
    assert config2 == config
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)


def test_gpt2model_layout_and_buffers(hf_dir, loaded, tmp_path):
    """Hub ``gpt2`` layout: no prefix, old mask buffers, and a tied ``lm_head.weight``."""
    directory, _ = hf_dir
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    tensors = {
        k.removeprefix("transformer."): v
        for k, v in load_file(directory / "model.safetensors").items()
    }
    for layer in range(2):
        tensors[f"h.{layer}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
        tensors[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()
    save_file(tensors, tmp_path / "model.safetensors")
    config, params = load_hf_gpt2(tmp_path)
    assert config == loaded[0]
    for a, b in zip(jax.tree.leaves(loaded[1]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_half_precision_checkpoint(hf_dir, tmp_path):
    """bf16 checkpoints (common on the Hub) load as float32 with the values they store."""
    directory, _ = hf_dir
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    tensors = load_file(directory / "model.safetensors")
    half = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    save_file(half, tmp_path / "model.safetensors")
    _, params = load_hf_gpt2(tmp_path)
    assert params["wte"].dtype == jnp.float32
    np.testing.assert_array_equal(
        params["layers"]["attn"]["q_kernel"][1],
        half["transformer.h.1.attn.c_attn.weight"][:, :16].astype(np.float32),
    )


# --- errors -------------------------------------------------------------------


@pytest.fixture
def broken(hf_dir, tmp_path):
    """A writable copy of the checkpoint, and helpers to corrupt it."""
    directory = tmp_path / "ckpt"
    shutil.copytree(hf_dir[0], directory)

    def edit_tensors(change):
        tensors = load_file(directory / "model.safetensors")
        change(tensors)
        save_file(tensors, directory / "model.safetensors")

    def edit_config(**fields):
        path = directory / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))

    return directory, edit_tensors, edit_config


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="existing directory"):
        load_hf_gpt2(tmp_path / "nope")


def test_missing_files(broken):
    directory, _, _ = broken
    (directory / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"missing model\.safetensors"):
        load_hf_gpt2(directory)
    (directory / "config.json").unlink()
    with pytest.raises(ValueError, match=r"missing config\.json"):
        load_hf_gpt2(directory)


def test_missing_tensor(broken):
    directory, edit_tensors, _ = broken
    edit_tensors(lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(
        ValueError, match=r"missing tensors \['transformer\.h\.1\.mlp\.c_fc\.bias'\]"
    ):
        load_hf_gpt2(directory)


def test_wrong_shape(broken):
    directory, edit_tensors, _ = broken

    def change(t):
        t["transformer.h.0.attn.c_attn.weight"] = np.zeros((48, 16), np.float32)

    edit_tensors(change)
    with pytest.raises(ValueError, match=r"c_attn\.weight.*shape \[16, 48\].*got \[48, 16\]"):
        load_hf_gpt2(directory)


def test_unexpected_tensor(broken):
    directory, edit_tensors, _ = broken
    edit_tensors(lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(16, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensors.*h\.2\.ln_1\.weight"):
        load_hf_gpt2(directory)


def test_untied_head(broken):
    directory, edit_tensors, _ = broken
    edit_tensors(lambda t: t.update({"lm_head.weight": np.ones((64, 16), np.float32)}))
    with pytest.raises(ValueError, match="untied"):
        load_hf_gpt2(directory)


@pytest.mark.parametrize(
    "key, value",
    [
        ("transformer.h.1.attn.c_proj.weight", np.nan),
        ("transformer.wte.weight", np.inf),
        ("transformer.ln_f.bias", -np.inf),
    ],
)
def test_non_finite_tensor(broken, key, value):
    directory, edit_tensors, _ = broken

    def poison(t):
        t[key] = t[key].copy()
        t[key].flat[3] = value

    edit_tensors(poison)
    with pytest.raises(ValueError, match=rf"{key.replace('.', r'[.]')}.*must hold finite values"):
        load_hf_gpt2(directory)


def test_float64_beyond_float32_range(broken):
    directory, edit_tensors, _ = broken

    def widen(t):
        t["transformer.h.0.mlp.c_fc.bias"] = np.full(
            t["transformer.h.0.mlp.c_fc.bias"].shape, 1e300
        )

    edit_tensors(widen)
    with pytest.raises(ValueError, match=r"c_fc[.]bias.*within float32's range"):
        load_hf_gpt2(directory)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_bad_utf8_json(broken, name):
    directory, _, _ = broken
    if name == "model.safetensors.index.json":
        (directory / "model.safetensors").unlink()
    (directory / name).write_bytes(b'{"model_type": "gpt2\xff"}')
    with pytest.raises(ValueError, match=rf"{name.replace('.', r'[.]')}: expected a UTF-8"):
        load_hf_gpt2(directory)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"activation_function": "relu"}, "activation_function"),
        ({"scale_attn_weights": False}, "scale_attn_weights"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
        ({"model_type": "gpt_neo"}, "model_type"),
    ],
)
def test_unsupported_config(broken, fields, match):
    directory, _, edit_config = broken
    edit_config(**fields)
    with pytest.raises(ValueError, match=match):
        load_hf_gpt2(directory)


def test_save_rejects_mismatched_params(tmp_path):
    config = TransformerConfig(vocab_size=64, num_layers=2, num_heads=2, d_model=16, max_length=32)
    params = _random_params(config, seed=0)
    wrong = {**params, "wpe": jnp.zeros((16, 16))}
    with pytest.raises(ValueError, match=r"wpe.*\(32, 16\).*\(16, 16\)"):
        save_hf_gpt2(tmp_path, config, wrong)
    with pytest.raises(ValueError, match=r"missing.*ln_f"):
        save_hf_gpt2(tmp_path, config, {k: v for k, v in params.items() if k != "ln_f"})
    assert not any(tmp_path.iterdir()), "nothing is written when validation fails"
