"""The Leap+Verify study's aggregation: acceptance by regime, loss inflation, steps to target."""

import math

import pytest

from experiments.benchmarks import leap_verify as lv


def _record(regime, predictor, k, pred, cur, actual, confirmed=False):
    return dict(
        regime=regime,
        confirmed=confirmed,
        predictor=predictor,
        k=k,
        predicted_loss=pred,
        current_loss=cur,
        actual_loss=actual,
        accepted={c: pred < cur for c in lv.CRITERIA},
    )


def test_acceptance_table_counts_by_regime_predictor_and_k():
    records = [
        _record("stable", "linear", 5, 0.9, 1.0, 1.0, confirmed=True),
        _record("stable", "linear", 5, 1.1, 1.0, 1.0),
        _record("stable", "linear", 10, 1.1, 1.0, 1.0),
        _record("chaotic", "linear", 5, 0.5, 1.0, 1.0),
    ]
    table = lv._acceptance_table(records, (5, 10))["strict"]
    assert table["stable"]["linear"]["5"] == {"rate": 0.5, "n": 2}
    assert table["stable"]["linear"]["10"] == {"rate": 0.0, "n": 1}
    assert table["stable_confirmed"]["linear"]["5"] == {"rate": 1.0, "n": 1}
    assert table["chaotic"]["linear"]["5"] == {"rate": 1.0, "n": 1}
    assert table["all"]["linear"]["5"] == {"rate": 2 / 3, "n": 3}
    assert table["transition"]["quadratic"]["5"] == {"rate": None, "n": 0}


def test_inflation_is_predicted_over_actual_and_skips_missing_futures():
    records = [
        _record("stable", "momentum", 5, 4.0, 1.0, 2.0),
        _record("stable", "momentum", 5, 9.0, 1.0, 3.0),
        _record("stable", "momentum", 5, 9.0, 1.0, None),  # K steps later is past the end
    ]
    row = lv._inflation_table(records, (5, 10))["momentum"]
    assert row["5"] == {"median": 2.5, "max": 3.0, "n": 2}
    assert math.isnan(row["10"]["median"])


def test_steps_to_target_is_the_first_evaluation_at_or_below_it():
    curve = [(0, 5.0), (25, 3.0), (50, 2.0), (75, 2.5), (100, 1.9)]
    assert lv.steps_to(curve, 2.0) == 50
    assert lv.steps_to(curve, 1.0) is None
    assert lv._time_at([0.5] * 100, 50) == 25.0  # seconds of the first 50 steps
    assert lv._time_at([0.5] * 100, None) is None


def _tiny(tokenizer, model, output_dir):
    c = lv.default_config()
    c.tokenizer = tokenizer
    c.model = model
    c.seq_len = 32
    c.batch_size = 4
    c.num_steps = 30
    c.warmup_steps = 3
    c.delta = 5
    c.ks = (5,)
    c.seeds = (0,)
    c.calibration_checks = 2
    c.eval_windows = 4
    c.acceptance_windows = 2
    c.num_probes = 2
    c.probe_length = 32
    c.eval_every = 10
    c.online = ("linear:adaptive:5:stable_confirmed",)
    c.output_dir = str(output_dir)
    return c


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_language_model_study_runs_on_both_architectures_and_tokenizers(tmp_path):
    """The study trains GPT-2 on bytes and a Llama on the shipped BPE tokenizer alike."""
    byte_model = dict(vocab_size=256, num_layers=1, num_heads=2, d_model=16, max_length=32)
    llama_model = dict(
        vocab_size=4096, num_layers=1, num_heads=2, num_kv_heads=1, d_model=16, mlp_dim=32,
        max_length=32, family="llama", tie_embeddings=True,
    )  # fmt: skip
    for name, tokenizer, model in [
        ("bytes", "bytes", byte_model),
        ("bpe", "tiny-llama", llama_model),
    ]:
        results = lv.run(_tiny(tokenizer, model, tmp_path / name))
        assert results["num_checkpoints"] > 0, name
        assert all(math.isfinite(loss) for loss in results["target_loss"]), name
