"""experiments/benchmarks/_common.py: the one home of what the benchmarks share (fast tests)."""

import json
import pathlib
import subprocess
import sys

import hypothesis.strategies as st
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings

from experiments.benchmarks import _common

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=9), st.lists(st.integers(0, 3), max_size=9))
def test_edit_distance_matches_dynamic_programming(a, b):
    assert _common.edit_distance(a, b) == levenshtein(a, b)


def test_overrides_of_a_config_named_on_the_command_line_are_checked():
    named = f"--config={_ROOT / 'configs' / 'pod_qwen2_5_7b.py'}"
    message = _common.named_config_errors([named, "--config.dry_runn=True"])
    assert '--config.dry_runn: no such config field (did you mean "dry_run"?)' in message
    assert "valid fields" in message
    assert _common.named_config_errors([named, "--config.dry_run=True"]) is None
    assert _common.named_config_errors(["--config.dry_runn=True"]) is None  # default: elsewhere


def test_write_json_makes_the_folder_and_writes_numpy_values(tmp_path):
    path = _common.write_json(
        {"a": np.float32(1.5), "b": np.arange(3), "c": (1, 2)}, tmp_path / "new" / "r.json"
    )
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2]}


def test_config_override_errors_name_the_field_and_suggest_the_close_one():
    config = ml_collections.ConfigDict({"num_prompts": 4, "seed": 0})
    argv = ["--config.num_promts=3", "--config.seed=1", "--other", "--config.zzz.x=1"]
    errors = _common.config_override_errors(argv, config)
    assert errors == [
        '--config.num_promts: no such config field (did you mean "num_prompts"?)',
        "--config.zzz: no such config field",
    ]


@pytest.mark.parametrize(
    ("script", "typo", "field"),
    [("decoding_strategies", "seeed", "seed")],  # one script: each run imports jax (~5 s)
)
def test_a_config_override_typo_gives_a_message_not_a_traceback(script, typo, field):
    # Before, ml_collections raised a KeyError/AttributeError traceback from
    # DEFINE_config_file; now the script exits with the field and the valid ones.
    done = subprocess.run(
        [sys.executable, str(_ROOT / "experiments" / f"{script}.py"), f"--config.{typo}=1"],
        capture_output=True,
        text=True,
        cwd="/",  # the script finds its config and the `experiments` package from anywhere
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"--config.{typo}: no such config field" in done.stderr
    assert f'did you mean "{field}"' in done.stderr and "valid fields" in done.stderr


# Config files that are not an experiment's default config (pod_qwen2_5_7b.py is a
# setting of pod_speculative.py).
_NOT_SCRIPTS = ("__init__", "pod_qwen2_5_7b")


@pytest.mark.slow  # starts every experiment script (each imports jax)
@pytest.mark.parametrize(
    "script", sorted(p.stem for p in (_ROOT / "configs").glob("*.py") if p.stem not in _NOT_SCRIPTS)
)
def test_every_experiment_script_reports_override_typos(script):
    done = subprocess.run(
        [sys.executable, str(_ROOT / "experiments" / f"{script}.py"), "--config.no_such_fieldx=1"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--config.no_such_fieldx: no such config field" in done.stderr


def test_wilson_matches_the_closed_form_and_edge_cases():
    lo, hi = _common.wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.16113, abs=1e-4)  # z^2 / (n + z^2)
    lo, hi = _common.wilson(5, 20)
    assert lo == pytest.approx(0.11186, abs=1e-4) and hi == pytest.approx(0.46870, abs=1e-4)
    lo, hi = _common.wilson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.16113, abs=1e-4)
    assert _common.wilson(0, 0) == (None, None)
    assert _common.wilson(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-4)
    # The interval holds the rate, also at 0 and 1 (rounding must not push it past).
    for k in range(0, 21):
        lo, hi = _common.wilson(k, 20)
        assert lo <= k / 20 <= hi
