"""The Leap+Verify study's aggregation: acceptance by regime, loss inflation, steps to target."""

import math

from lookahead_jax.benchmarks import leap_verify as lv


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
    assert lv._steps_to(curve, 2.0) == 50
    assert lv._steps_to(curve, 1.0) is None
    assert lv._time_at([0.5] * 100, 50) == 25.0  # seconds of the first 50 steps
    assert lv._time_at([0.5] * 100, None) is None
