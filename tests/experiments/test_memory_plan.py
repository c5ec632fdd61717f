"""experiments/memory_plan.py: the memory plan runs end to end at tiny shapes (slow tier)."""

import pytest

from tests.helpers import run_experiment


@pytest.mark.slow
def test_memory_plan_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("memory_plan", tmp_path)
    assert (tmp_path / "results.png").is_file()
    programs = {(r["program"], r["mode"]) for r in saved["rows"]}
    assert programs == {
        (p, m) for p in ("every_logit", "prefill", "step") for m in ("default", "exact")
    }
    for row in saved["rows"]:
        assert row["total"] >= row["temp"] >= 0 and row["arguments"] > 0
    assert "exact / default, step" in stdout
