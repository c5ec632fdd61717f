"""experiments/smc_kalman.py runs end to end on a tiny config and writes sane figures."""

import pathlib

import numpy as np
import pytest

from tests.helpers import load_module

_ROOT = pathlib.Path(__file__).resolve().parents[2]


smc_kalman = load_module("experiments_smc_kalman", _ROOT / "experiments" / "smc_kalman.py")
config_module = load_module("configs_smc_kalman", _ROOT / "configs" / "smc_kalman.py")


# A benchmark smoke run (minutes on 2 cores): the slow tier (`pytest -m slow`).
pytestmark = pytest.mark.slow


def test_tiny_run(tmp_path):
    config = config_module.get_config()
    config.update(
        num_steps=5,
        particle_counts=(32,),
        replicates=2,
        x64=False,
        resample_sizes=(64,),
        repeats=1,
        small_repeats=1,
        peer=False,
        methods=("systematic",),
    )
    accuracy = smc_kalman.accuracy(config)
    throughput = smc_kalman.throughput(config)
    assert [(r["method"], r["num_particles"]) for r in accuracy] == [("systematic", 32)]
    assert np.isfinite(accuracy[0]["log_z_error_rmse"])
    assert 0.0 <= accuracy[0]["resampling_fraction"] <= 1.0
    assert throughput[0]["n"] == 64 and throughput[0]["ours_ms"] > 0
    smc_kalman.plot({"accuracy": accuracy, "throughput": throughput}, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
