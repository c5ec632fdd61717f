"""experiments/fidelity_token_recycling.py: the gap split's helpers (fast) and the script end to
end (slow tier)."""

import math

import numpy as np
import pytest

from experiments.benchmarks import fidelity_token_recycling as tr
from tests.helpers import run_experiment


def test_tokens_per_call_leaves_out_the_prefill():
    # 64 generated in 1 prefill + 21 rounds: the 63 after the first over 21 calls.
    np.testing.assert_allclose(tr.tokens_per_call([64, 64], [22, 64]), [3.0, 1.0])


def test_gap_shares_split_the_log_gap():
    # Paper: tau 3 at 2x (round cost 1.5 plain steps); ours: tau 1.5 at 0.5x (cost 3).
    shares = tr.gap_shares(2.0, 3.0, 0.5, 1.5)
    assert shares["acceptance_factor"] == pytest.approx(2.0)
    assert shares["overhead_factor"] == pytest.approx(2.0)
    assert shares["acceptance_factor"] * shares["overhead_factor"] == pytest.approx(4.0)
    assert shares["acceptance_share"] == pytest.approx(0.5)
    assert shares["acceptance_share"] + shares["overhead_share"] == pytest.approx(1.0)
    # Equal acceptance: the whole gap is overhead.
    assert tr.gap_shares(2.0, 3.0, 1.0, 3.0)["overhead_share"] == pytest.approx(1.0)


def test_bootstrap_ci_brackets_the_mean():
    values = np.random.default_rng(0).normal(2.0, 0.5, 40)
    low, high = tr.bootstrap_ci(values, num=500)
    assert low < np.mean(values) < high
    assert tr.bootstrap_ci([1.5]) == (1.5, 1.5)
    assert all(math.isnan(x) for x in tr.bootstrap_ci([]))


def test_shaped_like_replaces_the_shape_and_derives_head_dim():
    shape = {"num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "d_model": 64, "mlp_dim": 96}
    model = tr._shaped_like("tiny-llama-draft", shape)
    assert model.config.num_layers == 1 and model.config.d_model == 64
    assert model.config.head_dim == 32 and model.config.vocab_size == 4096
    assert tr._short("outputs/llama-large/hf") == "llama-large"


@pytest.mark.slow
def test_fidelity_token_recycling_runs_and_writes_its_figures(tmp_path):
    saved, stdout = run_experiment(
        "fidelity_token_recycling",
        tmp_path,
        f"--config.large_target={tmp_path / 'absent'}",
        "--config.large_shape_stand_in=False",
    )
    assert (tmp_path / "results.png").is_file()
    assert [r["target"] for r in saved["v_only"]] == ["tiny-draft"]
    assert len(saved["notices"]) == 1 and "absent" in saved["notices"][0]
    assert {(r["workload"], r["table"]) for r in saved["acceptance"]} == {
        (w, t) for w in tr.WORKLOADS for t in tr.TABLES
    }
    for row in saved["acceptance"]:
        assert 1.0 <= row["tau"] <= row["nodes"] + 1
    (row,) = saved["timing"]
    for key in ("v", "d", "round_over_plain"):
        assert math.isfinite(row[key]["median"]) and row[key]["median"] > 0
    for setting in row["settings"]:
        assert setting["measured_s"]["median"] > 0
    assert len(saved["finding"]["rows"]) == len(tr.WORKLOADS)
    assert "gap to the paper" in stdout
