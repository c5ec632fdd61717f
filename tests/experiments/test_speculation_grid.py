"""experiments/speculation_grid.py: the ideal speedup, the acceptance count, the goals, and a
smoke run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.benchmarks import speculation_grid as grid
from lookahead_jax.decoding import GenerationStats

_ROOT = Path(__file__).resolve().parents[2]


def test_ideal_speedup_formula_and_best_k():
    assert grid.ideal(0.5, 0.0, 0) == 1.0
    assert grid.ideal(0.5, 0.0, 2) == pytest.approx(1.75)  # 1 + a + a^2
    assert grid.ideal(1.0, 0.0, 3) == 4.0
    assert grid.ideal(0.5, 0.25, 2) == pytest.approx(1.75 / 1.5)
    value, k = grid.best_ideal(0.9, 0.05, 8)
    assert value == max(grid.ideal(0.9, 0.05, j) for j in range(9)) and 1 <= k <= 8
    assert grid.best_ideal(0.0, 0.5, 4) == (1.0, 0)  # nothing accepted: plain decoding


def test_acceptance_counts_the_first_rejected_draft():
    # one row, K = 2: rounds accepted 2 (all), 1 (then a rejection), 0 (a rejection)
    stats = GenerationStats(
        target_calls=np.array([4]),  # prefill + 3 rounds
        drafted=np.array([6]),
        accepted=np.array([3]),
        accept_histogram=np.array([[1, 1, 1]]),
    )
    counts = grid.acceptance(stats, rows=1)
    assert counts["rounds"] == 3 and counts["examined"] == 5
    assert counts["a"] == pytest.approx(3 / 5)


def _cell(
    drafter,
    ratio,
    batch=1,
    temperature=0.0,
    fixed=None,
    tokens=100.0,
    eff=0.9,
    floor=None,
    drafted=2.0,
    calls_per_token=0.5,
    ideal_k=2,
):
    return {
        "pair": "p",
        "batch": batch,
        "temperature": temperature,
        "prompt": "short",
        "drafter": drafter,
        "kind": "chain" if drafter in grid.CHAINS else "tree",
        "tokens_per_s": tokens,
        "default_ratio": ratio,
        "best_fixed_ratio": fixed,
        "best_fixed_k": None if fixed is None else 2,
        "best_fixed_tokens_per_s": None if fixed is None else tokens * fixed / ratio,
        "default_over_best_fixed": None if fixed is None else ratio / fixed,
        "accepted_per_call": 1.0,
        "drafted_per_call": drafted,
        "target_calls_per_token": calls_per_token,
        "floor_ratio": floor,
        "a": 0.5,
        "c": 0.1,
        "ideal": 1.5 if ideal_k else 1.0,
        "ideal_k": ideal_k,
        "efficiency": eff,
    }


def test_goals_pass_and_fail_on_the_numbers():
    cells = [
        _cell("draft_model", 1.5, fixed=1.52, tokens=150.0, eff=0.85),
        _cell("prompt_lookup", 1.2, fixed=1.4, tokens=120.0),
        _cell("token_recycling", 0.95, tokens=95.0),
        _cell("draft_model", 0.99, batch=4, temperature=1.0),
    ]
    goals = grid.goals(cells)
    assert not goals["min_ratio"]["passed"]
    assert goals["min_ratio"]["argmin"].endswith("token_recycling")
    assert goals["draft_model_efficiency_batch1_greedy"]["passed"]
    fixed = goals["default_vs_best_fixed"]
    assert fixed["cells"] == 2 and [m["cell"][-13:] for m in fixed["misses"]] == ["prompt_lookup"]
    trees = goals["trees_vs_best_chain_batch1"]
    assert not trees["passed"] and trees["misses"][0]["best_chain"] == "draft_model"


def test_why_a_cell_misses_follows_its_numbers():
    # 2 tokens per call at 0.8x plain: a call costs 2 / 0.8 = 2.5 plain steps; with every
    # round plain at 1.0x drafting added 1.5 steps per call for 1 extra token.
    why = grid.why(_cell("draft_model", 0.8, floor=1.0))
    assert why["bound"] == "verification"
    assert why["tokens_per_call"] == pytest.approx(2.0)
    assert why["round_plain_steps"] == pytest.approx(2.5)
    assert why["added_plain_steps"] == pytest.approx(1.5)
    assert why["draft_plain_steps"] == pytest.approx(0.2)  # 2 drafts x c = 0.1
    assert "2.00 tokens per call for 2.50 plain steps" in why["text"]
    assert grid.why(_cell("draft_model", 0.85, floor=0.9))["bound"] == "floor"  # 0.1 > 0.05
    assert grid.why(_cell("draft_model", 0.6, floor=0.9))["bound"] == "verification"
    assert grid.why(_cell("draft_model", 0.8, floor=1.0, ideal_k=0))["bound"] == "nothing_pays"
    quiet = _cell("draft_model", 0.9, drafted=0.0, calls_per_token=1.0)
    assert grid.why(quiet)["bound"] == "floor"  # no floor row: the cell ran as its floor
    assert grid.why({**quiet, "floor_ratio": 1.0})["bound"] == "noise"
    tree = grid.why(_cell("token_recycling", 0.8, floor=1.0))
    assert tree["draft_plain_steps"] is None  # c is per tree depth, not per node
    goals = grid.goals([_cell("token_recycling", 0.85, floor=0.9), _cell("early_exit", 0.9)])
    assert goals["min_ratio"]["misses_by_bound"] == {"floor": 1, "verification": 1}


def test_resummarise_recomputes_cells_from_saved_rows(tmp_path):
    rows = [
        {
            "pair": "p",
            "batch": 1,
            "temperature": 0.0,
            "prompt": "short",
            "drafter": "plain",
            "controller": "plain",
            "tokens_per_s": 100.0,
            "ratio_vs_plain": 1.0,
        },
    ]
    draft = {
        **rows[0],
        "drafter": "draft_model",
        "tokens_per_s": 80.0,
        "ratio_vs_plain": 0.8,
        "accepted_per_call": 1.0,
        "drafted_per_call": 2.0,
        "target_calls_per_token": 0.5,
        "a": 0.5,
        "c": 0.1,
        "ideal": 1.5,
        "ideal_k": 2,
        "efficiency": 0.8 / 1.5,
        "same_tokens_as_plain": True,
    }
    rows += [
        {**draft, "controller": "default"},
        {**draft, "controller": "floor", "ratio_vs_plain": 0.85},
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"pairs": {"p": {}}, "rows": rows, "wall_s": 1.0}))
    config = grid.default_config()
    config.resummarise = str(path)
    config.output_dir = str(tmp_path / "new")
    results = grid.run(config)
    (cell,) = results["cells"]
    assert cell["floor_ratio"] == 0.85 and cell["default_ratio"] == 0.8
    assert results["goals"]["min_ratio"]["misses"][0]["why"]["bound"] == "floor"
    table = (tmp_path / "new" / "results.md").read_text()
    assert "[floor]" in table and "| 0.80 F (0.85) |" in table
    with pytest.raises(ValueError, match="resummarise"):
        config.resummarise = str(tmp_path / "missing.json")
        grid.run(config)


def test_unknown_drafter_or_bad_k_is_a_value_error():
    config = grid.default_config()
    config.drafters = ("draft_modle",)
    with pytest.raises(ValueError, match="drafters"):
        grid.effective(config)
    config = grid.default_config()
    config.fixed_k = (16,)
    with pytest.raises(ValueError, match="fixed_k"):
        grid.effective(config)


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "experiments" / "speculation_grid.py"),
            "--config.quick=True",
            "--config.floor=True",
            f"--config.output_dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Goals (issue 17)" in done.stdout
    saved = json.loads((out / "results.json").read_text())
    assert (out / "results.png").is_file() and (out / "results.md").is_file()
    assert saved["config"]["quick"] and saved["errors"] == []
    for key in ("rows", "cells", "goals", "pairs", "wall_s", "all_greedy_same_tokens_as_plain"):
        assert key in saved, key
    for key in ("min_ratio", "draft_model_efficiency_batch1_greedy", "default_vs_best_fixed"):
        assert key in saved["goals"], key
    rows = saved["rows"]
    assert {r["controller"] for r in rows} >= {"plain", "default", "fixed", "floor"}
    for r in rows:
        assert np.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert np.isfinite(r["ratio_vs_plain"]) and r["ratio_vs_plain"] > 0
        if r["controller"] == "plain":
            continue
        for key in ("accepted_per_call", "target_calls_per_token", "a", "c", "ideal"):
            assert np.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["c"] > 0 and r["ideal"] >= 1.0 and r["efficiency"] > 0
        if r["temperature"] == 0.0:
            assert r["same_tokens_as_plain"] is True, r  # greedy drafting is exact
    for cell in saved["cells"]:
        for key in ("default_ratio", "best_fixed_ratio", "default_over_best_fixed", "efficiency"):
            assert key in cell, key
        assert cell["floor_ratio"] > 0  # every drafter also ran with every round plain
