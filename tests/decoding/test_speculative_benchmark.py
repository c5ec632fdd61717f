"""The speculative-decoding benchmark runs every pair and reports them side by side."""

import json

import numpy as np
import pytest

from experiments.benchmarks import _pairs
from experiments.benchmarks import speculative as bench
from lookahead_jax.models import load_tokenizer
from tests.benchmark_pairs import BYTE_PAIR, llama_pair

# A benchmark smoke run (minutes on 2 cores): the slow tier (`pytest -m slow`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return (BYTE_PAIR, llama_pair(tmp_path_factory.mktemp("pairs")))


def test_both_pairs_side_by_side(pairs, tmp_path):
    config = bench.default_config()
    config.update(
        pairs=pairs,
        methods=("draft_model",),
        draft_lengths=(2,),
        batch_sizes=(1,),
        temperatures=(0.0,),
        prompt_length=16,
        max_new_tokens=6,
        repeats=1,
        tree_sweep=False,
        warmup_prompts=0,
        exact_k=0,
        exit_windows=2,
        peer=False,
        output_dir=str(tmp_path),
    )
    results = bench.run(config)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.png").is_file()
    labels = [_pairs.label(p) for p in pairs]
    assert list(saved["pairs"]) == labels
    for label in labels:
        rows = {r["method"]: r for r in saved["rows"] if r["pair"] == label}
        assert set(rows) == {"autoregressive", "draft_model"}
        assert rows["draft_model"]["same_tokens_as_autoregressive"]
        assert rows["draft_model"]["tokens_per_round"] >= 1.0
        assert rows["autoregressive"]["speedup_vs_autoregressive"] == 1.0
        assert 0 < saved["pairs"][label]["prompt_tokens_mean"] <= 17
    for entry in saved["side_by_side"]:
        assert set(entry["pairs"]) == set(labels)
        assert all(cell["speedup_vs_autoregressive"] > 0 for cell in entry["pairs"].values())
    text = bench.format_table(results)
    assert all(label in text for label in labels)


def test_bpe_prompts_are_the_same_texts(pairs):
    byte_prompts, byte_lengths = _pairs.heldout_prompts(load_tokenizer("bytes"), 3, 32)
    tokenizer = load_tokenizer(pairs[1][0])
    prompts, lengths = _pairs.heldout_prompts(tokenizer, 3, 32)
    assert prompts.shape == (3, 33) and np.all(lengths <= 33)
    texts = tokenizer.decode(prompts, lengths)
    for text, p, n in zip(texts, byte_prompts, byte_lengths, strict=True):
        assert text == bytes(p[:n].tolist()).decode()
    table = _pairs.token_bytes(tokenizer, 4096)
    for p, n, bp, bn in zip(prompts, lengths, byte_prompts, byte_lengths, strict=True):
        assert _pairs.spell(table, p[:n]) == bytes(bp[:bn].tolist())


def test_hf_peer_loads_the_llama_pair(pairs):
    pytest.importorskip("transformers")
    config = bench.default_config()
    config.max_new_tokens = 4
    tokenizer = load_tokenizer(pairs[1][0])
    prompts, lengths = _pairs.heldout_prompts(tokenizer, 1, 16)
    calls = dict(
        bench._peer_calls(
            config,
            _pairs.model_dir(pairs[1][0]),
            _pairs.model_dir(pairs[1][1]),
            prompts[0, : lengths[0]],
            tokenizer.pad_id,
        )
    )
    greedy, target_calls = calls["hf_greedy"]()
    assisted, _ = calls["hf_assisted"]()
    assert len(greedy) == 4 and target_calls == 4
    np.testing.assert_array_equal(assisted, greedy)
