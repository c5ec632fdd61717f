"""experiments/fidelity_leap_verify.py: its pure helpers (fast) and the script end to end (slow)."""

import math

import numpy as np
import pytest

from experiments.benchmarks import fidelity_leap_verify as flv
from tests.helpers import run_experiment


def test_displacement_cosines_on_straight_bent_and_reversed_paths():
    e0, e1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    straight = [np.zeros(2), e0, 2 * e0, 3 * e0]
    assert flv.displacement_cosines(straight) == [None, pytest.approx(1.0), pytest.approx(1.0)]
    bent = [np.zeros(2), e0, e0 + e1]
    assert flv.displacement_cosines(bent) == [None, pytest.approx(0.0)]
    back = [np.zeros(2), e0, np.zeros(2)]
    assert flv.displacement_cosines(back) == [None, pytest.approx(-1.0)]
    assert flv.displacement_cosines([np.zeros(2), np.zeros(2), e0]) == [None, None]


def test_cell_counts_acceptances_with_its_interval():
    records = [{"accepted": {"strict": a}} for a in (True, False, False, True)]
    got = flv.cell(records, "strict")
    assert (got["accepted"], got["n"], got["rate"]) == (2, 4, 0.5)
    assert (got["lo"], got["hi"]) == pytest.approx(flv.wilson(2, 4))
    assert flv.cell([], "strict")["rate"] is None


@pytest.mark.slow
def test_fidelity_leap_verify_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("fidelity_leap_verify", tmp_path, timeout=400)
    assert (tmp_path / "fidelity.png").is_file()
    assert [(r["size"], r["lr"]) for r in saved["runs"]] == [
        ("nano:1:2:32", 5e-5),
        ("nano:1:2:32", 3e-3),
    ]
    for run in saved["runs"]:
        cells = run["summary"]["acceptance"]["strict"]["all"]["linear"]
        assert sorted(cells, key=int) == ["1", "2", "5"]
        for c in cells.values():
            assert c["n"] > 0 and c["lo"] <= c["rate"] <= c["hi"]
        assert -1.0 <= run["summary"]["median_cosine"] <= 1.0
        assert math.isfinite(run["summary"]["final_loss"])
    assert sum(b["n"] for b in saved["acceptance_by_cosine"]) > 0
    assert "strict acceptance (linear, K=5) by displacement cosine" in stdout
