"""Smoke test of experiments/compare_pyhgf.py (experiments/benchmarks/hgf.py) at tiny sizes.

pyhgf is skipped (it lives in its own environment); parity is measured against the
stored pyhgf runs. Tests never assert on wall time, only on structure and accuracy.
"""

import json
import math
import pathlib

import pytest

from experiments.benchmarks import hgf


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    config = hgf.default_config()
    config.pyhgf = False
    config.parity_cases = ("continuous3_usdchf", "binary3_iglesias")
    config.parity_variants = ("unbounded-relaxed", "standard-meanfield")
    config.lengths = (200,)
    config.repeats = 1
    config.variants = ("unbounded",)
    config.num_subjects = 4
    config.subject_steps = 50
    config.scan_networks = ("continuous3", "features")
    config.scan_variants = ("unbounded",)
    config.device_counts = (1, 2)
    config.fit_subjects = 4
    config.fit_series_steps = 50
    config.fit_steps = 5
    config.nan_draws = 6
    config.output_dir = str(tmp_path_factory.mktemp("hgf_bench"))
    return config, hgf.run(config)


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_json_structure(results):
    config, figures = results
    stored = json.loads((pathlib.Path(config.output_dir) / "results.json").read_text())
    assert stored["pyhgf_skipped"] == "config.pyhgf is False"
    assert "pyhgf" not in stored and "steady_speedup_vs_pyhgf" not in stored
    ours = stored["lookahead_jax"]
    assert set(ours["speed"]) == {"unbounded/200"}
    assert set(ours["scan_speed"]) == {"continuous3/unbounded/200", "features/unbounded/200"}
    timed = [*ours["speed"].values(), *ours["scan_speed"].values(), ours["fit"]]
    for entry in [*timed, ours["batch"], ours["grad_one"], ours["grad_batch"]]:
        assert entry["first_s"] > 0 and entry["steady_s"] > 0
    # value and gradient w.r.t. three tonic volatilities and three initial means
    assert len(ours["grad_value"]) == 1 + 6 and all(map(math.isfinite, ours["grad_value"]))
    assert [row["devices"] for row in ours["devices"]["rows"]] == [1, 2]
    assert -1.0 <= ours["fit"]["correlation"] <= 1.0
    assert set(ours["nan_rate"]) == set(ours["nan_rate_robust"]) == {"unbounded"}
    assert ours["nan_rate_robust"]["unbounded"] == 0.0
    assert ours["bucket"]["recompiled"] is False
    assert len(stored["parity"]) == 2 * 2 * 2  # cases x variants x dtypes
    for name in ("speed.png", "trajectories.png"):
        assert (pathlib.Path(config.output_dir) / name).stat().st_size > 0
    assert "parity float64" in hgf.format_table(figures)


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_parity_in_float64(results):
    _, figures = results
    for key, fields in figures["parity"].items():
        assert set(fields) == set(hgf.BELIEF_FIELDS)
        for name, errors in fields.items():
            if key.endswith("float64"):
                assert errors["ours"] < 1e-6, (key, name, errors)
            else:  # float32: normwise, within test_parity.py's factor of pyhgf's own error
                assert math.isfinite(errors["ours"]), (key, name)
                assert errors["ratio"] <= 4.0, (key, name, errors)


def test_pyhgf_environment_that_cannot_be_made_is_skipped_with_a_reason(tmp_path):
    config = hgf.default_config()
    config.pyhgf_venv = str(tmp_path / "pyhgf-venv")
    config.python312 = str(tmp_path / "no-python3.12")
    python, why = hgf.ensure_pyhgf(config)
    assert python is None
    assert "could not create pyhgf's environment" in why
