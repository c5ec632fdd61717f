"""The tiny byte-level checkpoints shipped in the package."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax.data import eval_windows, load_corpus
from lookahead_jax.models import (
    TransformerConfig,
    apply,
    available_pretrained,
    load_pretrained,
    param_shapes,
)
from lookahead_jax.models import pretrained as pretrained_module

DOCUMENTED = {
    "tiny-target": TransformerConfig(
        vocab_size=256, num_layers=4, num_heads=4, d_model=192, max_length=256
    ),
    "tiny-draft": TransformerConfig(
        vocab_size=256, num_layers=2, num_heads=2, d_model=64, max_length=256
    ),
}


@pytest.fixture(scope="module")
def models():
    return {name: load_pretrained(name) for name in DOCUMENTED}


@pytest.fixture(scope="module")
def heldout_bits(models):
    """Mean next-byte cross-entropy (bits) of each model on a few short held-out windows."""
    windows = jnp.asarray(eval_windows(load_corpus("heldout"), seq_len=64, max_windows=16))
    bits = {}
    for name, (config, params) in models.items():
        logits, _ = apply(config, params, windows[:, :-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, windows[:, 1:, None], axis=-1)
        bits[name] = float(jnp.mean(nll)) / math.log(2)
    return bits


def test_available_names():
    assert available_pretrained() == [
        "tiny-draft",
        "tiny-llama-draft",
        "tiny-llama-target",
        "tiny-target",
    ]


def test_configs_and_shapes_are_as_documented(models):
    for name, (config, params) in models.items():
        assert config == DOCUMENTED[name]
        expected = param_shapes(config)
        assert jax.tree.structure(params) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
            assert got.shape == want.shape and got.dtype == jnp.float32
            assert np.all(np.isfinite(np.asarray(got)))


def test_target_is_larger_than_draft(models):
    counts = {n: sum(x.size for x in jax.tree.leaves(p)) for n, (_, p) in models.items()}
    assert counts["tiny-target"] > 5 * counts["tiny-draft"]
    assert counts["tiny-target"] == DOCUMENTED["tiny-target"].num_params()


def test_heldout_loss_beats_uniform_by_a_clear_margin(heldout_bits):
    uniform = 8.0  # bits per byte of the uniform model over 256 bytes
    assert heldout_bits["tiny-target"] < 0.5 * uniform
    assert heldout_bits["tiny-draft"] < 0.6 * uniform
    assert heldout_bits["tiny-target"] < heldout_bits["tiny-draft"]


def test_training_records_are_shipped():
    for name in DOCUMENTED:
        record = pretrained_module._root() / name / "training.json"
        info = json.loads(record.read_text())
        assert info["num_steps"] > 0 and 0 < info["heldout_bpb"] < 8


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="tiny-target"):
        load_pretrained("gpt2-xl")


def test_continuation_log_probs_are_the_next_token_scores_of_each_row():
    from lookahead_jax import models

    model = models.Model(*load_pretrained("tiny-target"))
    prompts, outputs = [list(b"The assert"), list(b"x")], [list(b" statement"), []]
    scores = models.continuation_log_probs(model, prompts, outputs, batch_size=1)
    row = jnp.asarray([prompts[0] + outputs[0]], jnp.int32)
    expected = -np.asarray(models.next_token_nll(model, row))[0, len(prompts[0]) - 1 :]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5, atol=1e-5)
    assert scores[1].shape == (0,)
