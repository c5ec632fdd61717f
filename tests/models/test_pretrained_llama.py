"""The shipped Llama-family pair (tiny-llama-target / tiny-llama-draft) on the BPE tokenizer."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax.data import eval_windows, token_stream
from lookahead_jax.models import (
    Model,
    greedy_agreement,
    load_hf,
    load_pretrained,
    load_tokenizer,
    param_shapes,
)
from tests.helpers import load_module

_ROOT = pathlib.Path(__file__).resolve().parents[2]
PRETRAINED = _ROOT / "lookahead_jax" / "models" / "pretrained"
NAMES = ("tiny-llama-target", "tiny-llama-draft")


train_lm = load_module("experiments_train_lm_pretrained", _ROOT / "experiments" / "train_lm.py")


@pytest.fixture(scope="module")
def pair():
    return {name: Model(*load_pretrained(name)) for name in NAMES}


@pytest.fixture(scope="module")
def records():
    return {name: json.loads((PRETRAINED / name / "training.json").read_text()) for name in NAMES}


@pytest.fixture(scope="module")
def check_data(records):
    """The held-out check windows recorded in training.json, and the bytes of each id."""
    check = records["tiny-llama-target"]["heldout_check"]
    tokenizer = load_tokenizer("tiny-llama")
    windows = eval_windows(token_stream(tokenizer, "heldout"), check["seq_len"])
    return windows[: check["num_windows"]], tokenizer.token_bytes()


def test_configs_are_the_documented_llama(pair, records):
    tokenizer = load_tokenizer("tiny-llama")
    for name, model in pair.items():
        config = model.config
        assert config.model_type == "llama" and config.positions == "rope"
        assert config.norm == "rms_norm" and config.gated_mlp and config.activation == "silu"
        assert config.tie_embeddings and "lm_head" not in model.params
        assert config.num_kv_heads < config.num_heads  # grouped-query attention
        assert config.vocab_size == tokenizer.vocab_size == 4096
        record = records[name]
        assert record["num_params"] == config.num_params()
        for field, value in record["model_config"].items():
            if field != "family":
                assert getattr(config, field) == value, field
        expected = param_shapes(config)
        assert jax.tree.structure(model.params) == jax.tree.structure(expected)
        for got in jax.tree.leaves(model.params):
            assert got.dtype == jnp.float32
    target, draft = pair["tiny-llama-target"].config, pair["tiny-llama-draft"].config
    assert 5e6 <= target.num_params() <= 10e6 and 0.5e6 <= draft.num_params() <= 1e6
    assert target.num_kv_heads == 2 and draft.num_kv_heads == 1


def test_folders_are_complete_hf_folders_with_the_shared_tokenizer():
    shipped = load_tokenizer("tiny-llama")
    text = "Return the number of items in a container.\n>>> len([1, 2])"
    for name in NAMES:
        folder = PRETRAINED / name
        for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / file).is_file(), file
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "llama" and config["tie_word_embeddings"]
        assert (config["bos_token_id"], config["eos_token_id"]) == (shipped.bos_id, shipped.eos_id)
        for tokenizer in (load_tokenizer(name), load_tokenizer(folder)):
            assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_ids) == (
                shipped.vocab_size,
                shipped.bos_id,
                shipped.eos_ids,
            )
            assert tokenizer.encode_ids(text) == shipped.encode_ids(text)
        config_hf, _ = load_hf(folder)
        assert config_hf == load_pretrained(name)[0]


def test_heldout_bits_per_byte_match_the_record(pair, records, check_data):
    windows, token_bytes = check_data
    scores = {}
    for name, model in pair.items():
        check = records[name]["heldout_check"]
        bpb, nats = train_lm.heldout_scores(model, windows, token_bytes, len(windows))
        assert math.isfinite(bpb) and abs(bpb - check["bpb"]) < 1e-3
        assert abs(nats - check["nats_per_token"]) < 1e-3
        scores[name] = bpb
    assert scores["tiny-llama-target"] < scores["tiny-llama-draft"]
    # Full held-out figures: better than the byte-level pair's draft, target beats draft.
    target, draft = (records[n]["heldout_bpb"] for n in NAMES)
    assert target < draft < 3.0
    assert 3 < records["tiny-llama-target"]["heldout_bytes_per_token"] < 4.5


def test_greedy_agreement_matches_the_record(pair, records, check_data):
    windows, _ = check_data
    agreement = greedy_agreement(pair["tiny-llama-draft"], pair["tiny-llama-target"], windows)
    recorded = records["tiny-llama-draft"]["heldout_check"]["greedy_agreement"]
    assert abs(agreement - recorded) < 0.01
    assert 0.3 < records["tiny-llama-draft"]["greedy_agreement"] < 1
    assert np.isfinite(agreement)
