"""experiments/fidelity_strategies.py: the pure helpers (fast) and the script end to end (slow)."""

import math

import numpy as np
import pytest

from experiments.benchmarks import fidelity_strategies as fs
from tests.helpers import run_experiment


def test_answer_from_pieces_finishes_at_the_whitespace_after_the_kth_word():
    assert fs.answer_from_pieces([b" the", b" cat", b" sat"], 1) == (2, b"the")
    assert fs.answer_from_pieces([b" t", b"he", b" "], 1) == (3, b"the")
    assert fs.answer_from_pieces([b"\n", b"a", b"b", b".\n"], 1) == (4, b"ab.")
    assert fs.answer_from_pieces([b" the", b" cat", b" sat"], 2) == (3, b"the cat")
    # No whitespace after the word yet: unfinished, with what is there.
    assert fs.answer_from_pieces([b" the", b"re"], 1) == (None, b"there")
    assert fs.answer_from_pieces([], 1) == (None, b"")


def test_ffs_pick_is_the_first_to_finish_lowest_index_on_ties_and_trace_0_if_none():
    assert fs.ffs_pick([5, 3, None, 3]) == (1, [1, 3, 0, 2])
    assert fs.ffs_pick([None, None])[0] == 0
    assert fs.ffs_pick([None, 7])[0] == 1


def test_paired_bootstrap_interval_contains_the_mean_and_is_degenerate_for_constants():
    rng = np.random.default_rng(0)
    s = fs.paired_bootstrap(rng.normal(1.0, 1.0, 200), 500)
    assert s["lo"] < s["mean"] < s["hi"] and 0.7 < s["mean"] < 1.3 and s["n"] == 200
    c = fs.paired_bootstrap(np.full(10, 0.5), 50)
    assert c["lo"] == c["mean"] == c["hi"] == 0.5
    assert math.isnan(fs.paired_bootstrap(np.array([np.nan]), 10)["mean"])


def test_interpolate_at_sorts_the_curve_and_clips_outside():
    assert fs.interpolate_at([-1.0, -2.0], [0.5, 1.0], -1.5) == (0.75, True)
    assert fs.interpolate_at([-1.0, -2.0], [0.5, 1.0], -0.5) == (0.5, False)


def test_log_trend_recovers_a_planted_line_and_its_crossing():
    params = [1e6, 1e7, 1e8]
    t = fs.log_trend(params, [-0.2, -0.1, 0.0])
    assert t["slope_per_decade"] == pytest.approx(0.1)
    assert t["crossing_params"] == pytest.approx(1e8)
    assert math.isnan(fs.log_trend([1e6], [0.1])["slope_per_decade"])


@pytest.mark.slow
def test_fidelity_strategies_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment("fidelity_strategies", tmp_path)
    assert (tmp_path / "results.png").is_file()
    row = saved["targets"]["tiny-target"]
    assert row["info"]["ffs_library_check"]["agree_fraction"] == 1.0
    assert set(row["latr"]) == set(saved["config"]["latr_variants"])
    assert math.isfinite(row["adadec"]["adadec"]["ll_per_byte_gain"]["mean"])
    assert "First-Finish" in stdout and "trend against log10(params)" in stdout
