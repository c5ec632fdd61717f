"""experiments/real_models.py's benchmark: a smoke run with tiny shapes (``small=True``)."""

import json

import pytest

from experiments.benchmarks import real_models
from tests.benchmark_pairs import llama_pair


def test_break_even():
    assert real_models.break_even(1.0, 4) == 0.0
    assert real_models.break_even(5.0, 4) is None
    a = real_models.break_even(2.0, 4)
    assert abs(real_models.tokens_per_round(a, 4) - 2.0) < 1e-9


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_small_run_reports_both_sections(tmp_path):
    config = real_models.default_config()
    config.update(
        small=True,
        pair=llama_pair(tmp_path / "pairs"),
        batch_sizes=(1,),
        exact=False,
        precision_calls=False,
        output_dir=str(tmp_path / "out"),
    )
    results = real_models.run(config)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / "results.png").is_file()
    precision = saved["precision"]
    assert {(r["dtype"], r["method"]) for r in precision["rows"]} == {
        (d, m) for d in ("float32", "bfloat16") for m in ("autoregressive", "draft_model")
    }
    for row in precision["rows"]:
        assert row["tokens_per_s"] > 0 and row["tokens_per_round"] >= 1.0
        if row["method"] == "draft_model":
            assert isinstance(row["same_tokens_as_autoregressive"], bool)
    assert {s["dtype"] for s in precision["summary"]} == {"float32", "bfloat16"}
    qwen = saved["qwen_shape"]
    assert qwen["info"]["target_config"]["model_type"] == "qwen2"
    assert qwen["info"]["target_config"]["d_model"] == 64  # the small shape
    spec = next(r for r in qwen["rows"] if r["method"] == "draft_model")
    assert spec["acceptance_meaningless_random_weights"]
    assert "break_even_acceptance_measured" in spec
    wide = [c for c in qwen["calls"] if c["role"] == "target" and c["scored_tokens"] == 5]
    assert wide and "verify_cost_vs_one_token" in wide[0]
    assert "break_even_acceptance_with_drafts" in wide[0]
    assert "qwen_shape" in real_models.format_table(results)
