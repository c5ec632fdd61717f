"""experiments/verify_cost.py: the tree-vs-chain verification timing runs end to end (slow tier)."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_verify_cost_runs_and_writes_its_figures(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "experiments" / "verify_cost.py"),
            f"--config={_ROOT / 'configs' / 'verify_cost.py'}",
            "--config.quick=True",
            f"--config.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.png").is_file()
    assert [(r["batch"], r["n"]) for r in saved["rows"]] == [(1, 8), (1, 16)]
    for row in saved["rows"]:
        for key in ("chain_s", "tree_chain_shaped_s", "tree_wide_s"):
            assert math.isfinite(row[key]) and row[key] > 0
    assert "tree / chain at equal scored tokens" in done.stdout
