"""The decoding-strategies benchmark's metrics and its verdict on each published direction."""

import numpy as np
import pytest

from experiments.benchmarks import decoding_strategies as bench


def test_repetition_distinct_and_prefix_match():
    assert bench.repetition_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert bench.repetition_rate([1, 2, 3], 4) == 0.0
    assert bench.distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert bench.distinct_n([[1, 2, 3], [3, 2, 1]], 2) == 1.0
    assert bench.pairwise_edit_distance([[1, 2, 3]]) == 0.0
    assert bench.pairwise_edit_distance([[1, 2, 3], [1, 2, 4], [1, 2, 3]]) == pytest.approx(
        (1 / 3 + 0 + 1 / 3) / 3
    )
    assert bench.prefix_match([1, 2, 3, 4], [1, 2, 5]) == 2


def test_verdicts():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    per_prompt = {
        "a": {"m": list(base + 1.0)},
        "b": {"m": list(base)},
        "c": {"m": list(base + rng.normal(scale=1.0, size=40) * 0.01)},
    }
    claims = [
        ("a", "m", "b", +1, "up"),
        ("a", "m", "b", -1, "down"),
        ("c", "m", "b", +1, "noise"),
        ("b", "m", "b", +1, "same"),
    ]
    verdicts = [row["verdict"] for row in bench._compare(per_prompt, claims)]
    assert verdicts == ["reproduced", "reversed", "not significant", "no difference"]


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_both_targets_side_by_side(tmp_path_factory):
    """A smoke run on the byte-level and the BPE Llama target: rows, comparisons and the
    unit of the text metrics for both."""
    import json

    from experiments.benchmarks import _pairs
    from tests.benchmark_pairs import BYTE_PAIR, llama_pair

    targets = (BYTE_PAIR[0], llama_pair(tmp_path_factory.mktemp("pairs"))[0])
    out = tmp_path_factory.mktemp("out")
    config = bench.default_config()
    config.update(
        targets=targets,
        num_prompts=2,
        max_new_tokens=6,
        group_size=2,
        rows_per_call=4,
        strategies=("greedy", "cntp", "first_finish"),
        repeats=0,
        output_dir=str(out),
    )
    results = bench.run(config)
    saved = json.loads((out / "results.json").read_text())
    assert "bytes" in saved["metrics_unit"]
    assert list(saved["targets"]) == list(targets)
    for target in targets:
        rows = {r["strategy"]: r for r in saved["rows"] if r["target"] == target}
        assert set(rows) == {"greedy", "cntp", "first_finish"}
        assert rows["greedy"]["tokens"] == 6
        assert rows["greedy"]["bytes"] >= 6  # a BPE token spells at least one byte
        assert np.isfinite(rows["greedy"]["ll_per_byte"])
        assert any(c["target"] == target for c in saved["comparisons"])
        info = saved["targets"][target]
        assert info["cntp_stop_tokens"] >= 10 and "prompt" in info["examples"]
    # The BPE target's stop ids are the tokens spelling a trailing punctuation byte.
    tokenizer = bench.models.load_tokenizer(targets[1])
    table = _pairs.token_bytes(tokenizer, 4096)
    stops = _pairs.stop_ids(table, bench.PUNCTUATION_BYTES)
    assert tokenizer.encode_ids(".", add_bos=False)[0] in stops
    assert all(table[i][-1:] in [bytes([b]) for b in bench.PUNCTUATION_BYTES] for i in stops)
    assert "published direction" in bench.format_table(results)
