"""experiments/compile_cost.py: the compile-cost table runs end to end (slow tier)."""

import math

import pytest

from experiments.benchmarks import compile_cost
from tests.helpers import run_experiment


@pytest.mark.slow
def test_compile_cost_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("compile_cost", tmp_path)
    assert (tmp_path / "results.png").is_file()
    assert [r["drafter"] for r in saved["rows"]] == ["plain", "draft_model", "trie_retrieval"]
    for row in saved["rows"]:
        assert math.isfinite(row["compile_s"]) and row["compile_s"] > 0
        assert row["fusions"] > 0 and row["instructions"] > row["fusions"]
        assert row["same_tokens_as_plain"]
    # A drafting generation holds the plain one's loop and more.
    plain, *drafting = saved["rows"]
    assert all(r["while_loops"] > plain["while_loops"] for r in drafting)
    assert "same tokens as plain decoding everywhere: True" in stdout


def test_program_size_counts_hlo_text():
    text = """HloModule m
ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4] parameter(0)
  %fusion.1 = f32[4] fusion(%p), kind=kLoop, calls=%fused
  %while.2 = (s32[], /*index=1*/f32[4]) while(%tuple), condition=%c, body=%b
  ROOT %fusion.3 = f32[4] fusion(%fusion.1), kind=kLoop, calls=%fused2
}"""
    assert compile_cost.program_size(text) == {"fusions": 2, "while_loops": 1, "instructions": 4}


def test_unknown_drafter_is_a_clear_error():
    config = compile_cost.default_config()
    config.drafters = ("no_such_drafter",)
    with pytest.raises(ValueError, match="`drafters`: unknown drafter 'no_such_drafter'"):
        compile_cost.measure(config)
