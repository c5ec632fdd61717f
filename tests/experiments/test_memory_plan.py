"""experiments/memory_plan.py: the memory plan runs end to end at tiny shapes (slow tier)."""

import json
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_memory_plan_runs_and_writes_its_figures(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "experiments" / "memory_plan.py"),
            f"--config={_ROOT / 'configs' / 'memory_plan.py'}",
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
    programs = {(r["program"], r["mode"]) for r in saved["rows"]}
    assert programs == {
        (p, m) for p in ("every_logit", "prefill", "step") for m in ("default", "exact")
    }
    for row in saved["rows"]:
        assert row["total"] >= row["temp"] >= 0 and row["arguments"] > 0
    assert "exact / default, step" in done.stdout
