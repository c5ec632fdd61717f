"""experiments/memory_upkeep.py: the memory drafters' upkeep timing runs end to end (slow tier)."""

import math

import pytest

from tests.helpers import run_experiment


@pytest.mark.slow
def test_memory_upkeep_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("memory_upkeep", tmp_path)
    assert (tmp_path / "results.png").is_file()
    assert [(r["batch"], r["drafter"]) for r in saved["rows"]] == [
        (1, "trie_retrieval"),
        (1, "suffix_decoding"),
        (1, "lookahead"),
    ]
    for row in saved["rows"]:
        for key in ("plain_step_s", "init_s", "observe_s", "propose_s"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["observed_tokens"] >= 1
    assert "suffix_decoding" in stdout and "(x plain step)" in stdout
