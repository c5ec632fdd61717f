"""Loads the pyhgf 0.3.2 reference runs (written by experiments/pyhgf_reference.py)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lookahead_jax import predictive_coding as pc

DATA = pathlib.Path(__file__).resolve().parent / "data"
CASES = (
    "continuous2_usdchf",
    "continuous3_usdchf",
    "binary3_iglesias",
    "binary3_default",
    "features_returns",
)
VARIANTS = tuple(
    f"{updates}-{mode}"
    for updates in ("standard", "eHGF", "unbounded")
    for mode in ("relaxed", "meanfield")
)
BELIEF_FIELDS = ("mean", "precision", "expected_mean", "expected_precision")


def load(case: str, dtype: str = "float64") -> dict:
    with np.load(DATA / f"{case}_{dtype}.npz") as npz:
        return dict(npz)


def spec(run: dict) -> list[dict]:
    return json.loads(str(run["spec"]))


def network(run: dict, variant: str) -> pc.Network:
    """Replays the recorded ``add_nodes`` calls through our builder."""
    updates, mode = variant.split("-")
    net = pc.Network(volatility_updates=updates, mean_field_updates=mode == "meanfield")
    for call in spec(run):
        kwargs = {
            key: tuple(value) if isinstance(value, list) and key != "node_parameters" else value
            for key, value in call.items()
            if key != "kind"
        }
        net.add_nodes(call["kind"], **kwargs)
    return net


def field(run: dict, variant: str, node: int, name: str) -> np.ndarray | None:
    """A recorded trajectory ``[T]``, or ``None`` if pyhgf has no such field at ``node``.

    Constant fields were stored as one value; they are broadcast back over time.
    """
    for key in (f"{variant}/{node}/{name}", f"{variant}/{node}/temp/{name}"):
        if key in run:
            return np.broadcast_to(run[key], (run["inputs"].shape[0],))
    return None


def compared_fields(structure: pc.Structure, node: int) -> tuple[str, ...]:
    """The fields whose meaning we share with pyhgf at ``node``.

    The four beliefs, the conditional expected precision and the previous variance
    everywhere; the value prediction error wherever the node has a parent; the
    effective precision and the volatility prediction error only where the node has a
    volatility parent (pyhgf also writes them for nodes without one, where no update
    reads them; we leave them at 0 there).
    """
    names = [*BELIEF_FIELDS, "current_variance", "conditional_expected_precision"]
    if structure.value_parents(node) or structure.volatility_parents(node):
        names.append("value_prediction_error")
    if structure.volatility_parents(node):
        names += ["effective_precision", "volatility_prediction_error"]
    return tuple(names)
