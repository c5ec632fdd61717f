"""Parity with pyhgf 0.3.2: every shared trajectory field of every node, every update variant.

The reference runs were written by ``experiments/pyhgf_reference.py`` (pyhgf in its
own Python 3.12 environment) and are stored under ``tests/predictive_coding/data``.
"""

import jax
import numpy as np
import pytest

from lookahead_jax import predictive_coding as pc
from tests.predictive_coding import reference

FLOAT64_RTOL = 1e-6  # the bar: relative error <= 1e-6 in float64
# float32: our error against pyhgf's float64 run may exceed pyhgf's own float32 error
# by this factor (rounding accumulates differently in two implementations); measured
# worst case 3.3 over all cases, variants, nodes and fields.
FLOAT32_FACTOR = 4.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def relative_error(ours: np.ndarray, ref: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Max of |ours - ref| / max(|ref|, scale) over time; NaN in exactly the same places
    counts as 0. Without ``scale`` (the belief fields): plain relative error, and where
    ``ref`` is 0, ``ours`` must be exactly 0 too (else the error is inf).
    """
    nan_ref, nan_ours = np.isnan(ref), np.isnan(ours)
    if not np.array_equal(nan_ref, nan_ours):
        return float("inf")
    denominator = np.abs(ref) if scale is None else np.maximum(np.abs(ref), scale)
    ours, ref, denominator = ours[~nan_ref], ref[~nan_ref], denominator[~nan_ref]
    if ours.size == 0:
        return 0.0
    diff = np.abs(ours - ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / denominator)
    return float(np.max(rel))


def cancellation_scale(run: dict, variant: str, node: int, name: str) -> np.ndarray | None:
    """The size of the terms whose difference a prediction error is.

    ``delta = mu - mu^`` and ``Delta = pi^/pi + pi^ delta^2 - 1`` cancel to ~1e-11 when
    a prediction is near perfect; there one rounding of the O(1) terms (which any two
    implementations order differently) is a large *relative* error of the difference.
    These two diagnostics are therefore compared relative to their terms' size; every
    other field, the four beliefs included, with the plain relative error.
    """
    if name == "value_prediction_error":
        mean = reference.field(run, variant, node, "mean")
        return np.abs(mean) + np.abs(reference.field(run, variant, node, "expected_mean"))
    if name == "volatility_prediction_error":
        expected = reference.field(run, variant, node, "expected_precision")
        precision = reference.field(run, variant, node, "precision")
        delta = reference.field(run, variant, node, "mean") - reference.field(
            run, variant, node, "expected_mean"
        )
        with np.errstate(all="ignore"):
            return np.abs(expected / precision) + np.abs(expected * delta**2) + 1.0
    return None


@pytest.mark.parametrize("variant", reference.VARIANTS)
@pytest.mark.parametrize("case", reference.CASES)
def test_float64_matches_pyhgf(case, variant):
    run = reference.load(case, "float64")
    with jax.enable_x64(True):
        net = reference.network(run, variant)
        net.input_data(run["inputs"], run["observed"], run["time_steps"])
        structure = net.structure
        trajectories = {k: {f: np.asarray(v) for f, v in d.items() if f != "temp"}
                        for k, d in net.node_trajectories.items()}  # fmt: skip
    assert trajectories[0]["mean"].dtype == np.float64
    checked = 0
    for node in range(structure.num_nodes):
        for name in reference.compared_fields(structure, node):
            ref = reference.field(run, variant, node, name)
            if ref is None:
                assert name not in reference.BELIEF_FIELDS, (node, name)
                continue
            scale = cancellation_scale(run, variant, node, name)
            error = relative_error(trajectories[node][name], ref, scale)
            assert error <= FLOAT64_RTOL, f"node {node} {name}: relative error {error:.3g}"
            checked += 1
    assert checked >= 4 * structure.num_nodes


@pytest.mark.parametrize("variant", ["unbounded-relaxed", "standard-meanfield"])
@pytest.mark.parametrize("case", reference.CASES)
def test_float32_error_is_no_larger_than_pyhgfs_own(case, variant):
    """Normwise per (node, field): ours32 vs pyhgf64 <= 4 x (pyhgf32 vs pyhgf64) + eps32."""
    run64, run32 = reference.load(case, "float64"), reference.load(case, "float32")
    net = reference.network(run64, variant)
    net.input_data(
        run64["inputs"].astype(np.float32),
        run64["observed"],
        run64["time_steps"].astype(np.float32),
    )
    assert net.node_trajectories[0]["mean"].dtype == np.float32
    for node in range(net.n_nodes):
        for name in reference.BELIEF_FIELDS:
            ref = reference.field(run64, variant, node, name)
            theirs = reference.field(run32, variant, node, name).astype(np.float64)
            ours = np.asarray(net.node_trajectories[node][name], np.float64)
            finite = np.isfinite(ref)
            assert np.isfinite(ours[finite]).all(), (node, name)
            scale = np.max(np.abs(ref[finite]))
            ours_error = np.max(np.abs(ours[finite] - ref[finite])) / scale
            their_error = np.max(np.abs(theirs[finite] - ref[finite])) / scale
            assert ours_error <= FLOAT32_FACTOR * their_error + FLOAT32_EPS, (
                f"node {node} {name}: ours {ours_error:.3g} vs pyhgf float32 {their_error:.3g}"
            )


@pytest.mark.parametrize("case", ["continuous3_usdchf", "binary3_iglesias", "features_returns"])
def test_surprise_matches_pyhgf(case):
    """Our total Gaussian surprise / binary input surprise equal pyhgf's, per time step."""
    run = reference.load(case, "float64")
    variant = "unbounded-relaxed"
    with jax.enable_x64(True):
        # Same structure, dtype and shapes as the float64 parity run: no new compile.
        net = reference.network(run, variant)
        net.input_data(run["inputs"], run["observed"], run["time_steps"])
        structure, trajectories = net.structure, net.trajectories
        if structure.kinds[0] == pc.BINARY:
            ours = np.asarray(pc.input_surprise(structure, trajectories))[:, 0]
            ref = run[f"{variant}/surprise/first_level_binary_surprise"]
        else:
            per_step = [
                pc.gaussian_surprise(
                    trajectories.beliefs.mean[:, k],
                    trajectories.beliefs.expected_mean[:, k],
                    trajectories.beliefs.expected_precision[:, k],
                )
                for k in range(structure.num_nodes)
            ]
            ours = np.asarray(sum(per_step))
            ref = run[f"{variant}/surprise/total_gaussian_surprise"]
            total = float(pc.total_gaussian_surprise(structure, trajectories))
            np.testing.assert_allclose(total, ref.sum(), rtol=FLOAT64_RTOL)
    np.testing.assert_allclose(ours, ref, rtol=FLOAT64_RTOL)
