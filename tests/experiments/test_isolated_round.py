"""experiments/isolated_round.py: one scheduled drafting round vs none runs (slow tier)."""

import pytest

from tests.helpers import run_experiment


@pytest.mark.slow
def test_isolated_round_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("isolated_round", tmp_path)
    assert (tmp_path / "results.png").is_file()
    (row,) = saved["rows"]
    schedules = row["schedules"]
    # The schedules did what they name (the draft model proposes every token asked for):
    # no drafts, one round of 4, every round drafting 4.
    assert schedules["never"]["drafted"] == 0 and schedules["plain"]["drafted"] == 0
    assert schedules["first"]["drafted"] == schedules["middle"]["drafted"] == 4
    assert schedules["always"]["drafted"] == 4 * schedules["always"]["rounds"]
    assert len(schedules["never"]["times_s"]) == 3
    assert "one drafting round among plain ones" in stdout
