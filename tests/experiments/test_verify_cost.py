"""experiments/verify_cost.py: the tree-vs-chain verification timing runs end to end (slow tier)."""

import math

import pytest

from tests.helpers import run_experiment


@pytest.mark.slow
def test_verify_cost_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("verify_cost", tmp_path)
    assert (tmp_path / "results.png").is_file()
    assert [(r["batch"], r["n"]) for r in saved["rows"]] == [(1, 8), (1, 16)]
    for row in saved["rows"]:
        for key in ("chain_s", "tree_chain_shaped_s", "tree_wide_s"):
            assert math.isfinite(row[key]) and row[key] > 0
    assert "tree / chain at equal scored tokens" in stdout
