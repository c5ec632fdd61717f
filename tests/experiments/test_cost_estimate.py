"""experiments/cost_estimate.py: estimate vs calibrated rounds runs end to end (slow tier)."""

import math

import pytest

from tests.helpers import run_experiment


@pytest.mark.slow
def test_cost_estimate_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("cost_estimate", tmp_path)
    assert (tmp_path / "results.png").is_file()
    assert [r["drafter"] for r in saved["rows"]] == ["prompt_lookup", "token_recycling"]
    for row in saved["rows"]:
        assert row["sizes"][0] == 0 and row["calibrated"][0] == 1.0
        assert row["estimated"][0] == pytest.approx(1.0)
        assert len(row["estimated"]) == len(row["sizes"]) == len(row["calibrated"])
        assert all(math.isfinite(x) and x > 0 for x in row["estimated_over_calibrated"])
    assert "estimated / calibrated over drafting rounds" in stdout
