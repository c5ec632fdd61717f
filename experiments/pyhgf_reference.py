"""Writes pyhgf 0.3.2 reference trajectories for the parity tests of the predictive_coding pillar.

This script runs under its own Python 3.12 virtual environment (pyhgf needs
Python >= 3.12 and jax < 0.7, which cannot share the project's environment):

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/pyhgf-venv
    /work/pyhgf-venv/bin/pip install pyhgf==0.3.2
    /work/pyhgf-venv/bin/python experiments/pyhgf_reference.py

It only *runs* pyhgf (a GPL-licensed library) and records its outputs; nothing
of pyhgf's code is copied. For every case below and every update variant that
pyhgf 0.3.2 offers (``volatility_updates`` in standard / eHGF / unbounded, each
with ``mean_field_updates`` False and True) it stores every trajectory field of
every node (beliefs, the ``temp`` quantities and the parameter echoes), in
float64 and in float32, as one compressed ``.npz`` per case and dtype under
``tests/predictive_coding/data/``. Fields that are constant over time are stored
as a scalar (lossless, and keeps the files small).

Each file also holds:
  ``spec``: JSON of the network, as the list of ``add_nodes`` calls (pyhgf's
    vocabulary) that built it, so the tests rebuild the same network;
  ``inputs`` [T, n_inputs], ``observed`` [T, n_inputs] int, ``time_steps`` [T];
  ``meta``: JSON with the pyhgf / jax versions and the dtype.

float64 needs ``jax_enable_x64`` before JAX runs anything, so each dtype runs in
its own subprocess of this script (``--dtype float32|float64``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "lookahead_jax" / "predictive_coding" / "data"
OUT = REPO / "tests" / "predictive_coding" / "data"
VARIANTS = [
    (updates, mean_field)
    for updates in ("standard", "eHGF", "unbounded")
    for mean_field in (False, True)
]


def variant_name(updates: str, mean_field: bool) -> str:
    return f"{updates}-{'meanfield' if mean_field else 'relaxed'}"


def cases(np) -> dict:
    """The networks and inputs to record: name -> (spec, inputs, observed, time_steps)."""
    usdchf = np.loadtxt(DATA / "usdchf.txt")  # [614] USD-CHF exchange rate
    binary = np.loadtxt(DATA / "binary_input.txt")  # [320] 0/1 outcomes
    t_cont = usdchf.shape[0]
    ones = np.ones(t_cont)
    out = {}

    # Classic 2-level continuous HGF with the parameters of pyhgf's tutorial:
    # input (observation precision 1e4) <- x1 (value) <- x2 (volatility).
    out["continuous2_usdchf"] = (
        [
            {"kind": "continuous-state", "node_parameters": {"precision": 1e4}},
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 1.04, "precision": 1e4, "tonic_volatility": -13.0},
                "value_children": 0,
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 1.0, "precision": 1e1, "tonic_volatility": -2.0},
                "volatility_children": 1,
            },
        ],
        usdchf[:, None],
        np.ones((t_cont, 1), dtype=np.int64),
        ones,
    )
    # 3-level continuous HGF: one more volatility level above x2.
    out["continuous3_usdchf"] = (
        [
            {"kind": "continuous-state", "node_parameters": {"precision": 1e4}},
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 1.04, "precision": 1e4, "tonic_volatility": -8.0},
                "value_children": 0,
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 1.0, "precision": 1e1, "tonic_volatility": -4.0},
                "volatility_children": 1,
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 0.5, "precision": 1e1, "tonic_volatility": -5.0},
                "volatility_children": 2,
            },
        ],
        usdchf[:, None],
        np.ones((t_cont, 1), dtype=np.int64),
        ones,
    )
    # 3-level binary HGF on the Iglesias et al. outcomes: binary x1 <- x2 <- x3.
    out["binary3_iglesias"] = (
        [
            {"kind": "binary-state"},
            {
                "kind": "continuous-state",
                "node_parameters": {"tonic_volatility": -2.0},
                "value_children": 0,
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": 1.0, "tonic_volatility": -6.0},
                "volatility_children": 1,
            },
        ],
        binary[:, None],
        np.ones((binary.shape[0], 1), dtype=np.int64),
        np.ones(binary.shape[0]),
    )
    # pyhgf's defaults for the same binary network (every parameter at its default).
    out["binary3_default"] = (
        [
            {"kind": "binary-state"},
            {"kind": "continuous-state", "value_children": 0},
            {"kind": "continuous-state", "volatility_children": 1},
        ],
        binary[:, None],
        np.ones((binary.shape[0], 1), dtype=np.int64),
        np.ones(binary.shape[0]),
    )
    # Every other feature at once, on the first 200 daily log-returns of the exchange
    # rate (in percent): two input nodes sharing a value parent with coupling
    # strengths, tonic drift, autoconnection, a value parent inside the volatility
    # branch, a volatility coupling strength, a node with two volatility children,
    # irregular time steps and missing inputs (finite values with observed = 0: pyhgf
    # lets a NaN input poison later steps). Returns rather than levels because pyhgf
    # predicts an input as dt * alpha * (parent's prediction): with irregular time
    # steps a level far from 0 would make every prediction error huge.
    rng = np.random.default_rng(6)
    t_feat = 200
    returns = 100.0 * np.diff(np.log(usdchf))[:t_feat]
    second = 0.5 * returns + 0.2 * rng.standard_normal(t_feat)
    observed = (rng.uniform(size=(t_feat, 2)) > 0.15).astype(np.int64)
    observed[40:55, :] = 0  # a stretch where nothing is observed
    time_steps = rng.uniform(0.5, 2.0, size=t_feat)
    out["features_returns"] = (
        [
            {"kind": "continuous-state", "node_parameters": {"precision": 2.0}},
            {"kind": "continuous-state", "node_parameters": {"precision": 4.0}},
            {
                "kind": "continuous-state",
                "node_parameters": {
                    "precision": 2.0,
                    "tonic_volatility": -2.0,
                    "tonic_drift": 0.01,
                    "autoconnection_strength": 0.9,
                },
                "value_children": ([0, 1], [1.0, 0.5]),
            },
            {
                "kind": "continuous-state",
                "node_parameters": {
                    "mean": 0.2,
                    "precision": 2.0,
                    "tonic_volatility": -6.0,
                    "autoconnection_strength": 0.95,
                },
                "volatility_children": ([2], [0.5]),
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"mean": -0.2, "precision": 3.0, "tonic_volatility": -4.0},
                "value_children": ([3], [0.8]),
            },
            {
                "kind": "continuous-state",
                "node_parameters": {"precision": 2.0, "tonic_volatility": -5.0},
                "volatility_children": ([3, 4], [0.5, 0.6]),
            },
        ],
        np.stack([returns, second], axis=1),
        observed,
        time_steps,
    )
    return out


def build(network_cls, spec: list, updates: str, mean_field: bool):
    net = network_cls(volatility_updates=updates, mean_field_updates=mean_field)
    for call in spec:
        kwargs = {
            key: (tuple(value) if isinstance(value, list) and key != "node_parameters" else value)
            for key, value in call.items()
            if key != "kind"
        }
        net = net.add_nodes(kind=call["kind"], **kwargs)
    return net


def flatten(prefix: str, tree: dict, np, out: dict) -> None:
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flatten(name, value, np, out)
        elif value is not None:
            array = np.asarray(value)
            # Constant over time: keep one value (lossless, and keeps the files small).
            if array.ndim >= 1 and array.shape[0] > 0 and np.all(array == array[:1]):
                array = array[0]
            out[name] = array


def record(dtype: str, out: pathlib.Path = OUT) -> None:
    if dtype == "float64":
        os.environ["JAX_ENABLE_X64"] = "1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np
    import pyhgf
    from pyhgf import load_data, response
    from pyhgf.model import Network

    jax.config.update("jax_enable_x64", dtype == "float64")
    # The shipped copies must be pyhgf's data sets, value for value.
    assert np.array_equal(np.loadtxt(DATA / "usdchf.txt"), load_data("continuous"))
    assert np.array_equal(np.loadtxt(DATA / "binary_input.txt"), load_data("binary")[0])
    out.mkdir(parents=True, exist_ok=True)
    meta = {"pyhgf": pyhgf.__version__, "jax": jax.__version__, "dtype": dtype}
    for name, (spec, inputs, observed, time_steps) in cases(np).items():
        arrays = {
            "spec": np.asarray(json.dumps(spec)),
            "meta": np.asarray(json.dumps(meta)),
            "inputs": inputs,
            "observed": observed,
            "time_steps": time_steps,
        }
        for updates, mean_field in VARIANTS:
            net = build(Network, spec, updates, mean_field)
            net.input_data(
                input_data=inputs.astype(dtype),
                time_steps=time_steps.astype(dtype),
                observed=observed,
            )
            flatten(variant_name(updates, mean_field), net.node_trajectories, np, arrays)
            binary_input = spec[0]["kind"] == "binary-state"
            surprises = (
                ("first_level_binary_surprise",)
                if binary_input
                else ("first_level_gaussian_surprise", "total_gaussian_surprise")
            )
            for surprise_fn in surprises:
                value = np.asarray(getattr(response, surprise_fn)(net))
                arrays[f"{variant_name(updates, mean_field)}/surprise/{surprise_fn}"] = value
            means = [np.asarray(net.node_trajectories[k]["mean"]) for k in range(len(spec))]
            nan_steps = sum(int(np.isnan(m).sum()) for m in means)
            print(f"{dtype} {name} {variant_name(updates, mean_field)}: NaN entries {nan_steps}")
        path = out / f"{name}_{dtype}.npz"
        np.savez_compressed(path, **arrays)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="output folder")
    args = parser.parse_args()
    if args.dtype == "both":
        for dtype in ("float64", "float32"):
            command = [sys.executable, __file__, "--dtype", dtype, "--out", str(args.out)]
            subprocess.run(command, check=True)
    else:
        record(args.dtype, args.out)


if __name__ == "__main__":
    main()
