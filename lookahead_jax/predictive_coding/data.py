"""The two standard HGF data sets, shipped with the package (see data/SOURCES.md)."""

from __future__ import annotations

import pathlib

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


def load_data(dataset: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Loads a shipped data set (float64 NumPy arrays).

    Args:
      dataset: ``"continuous"``: the USD-CHF exchange rate, ``[614]``;
        ``"binary"``: ``(u, y)``, the outcomes ``[320]`` (0/1) of a binary associative
        learning task and one participant's decisions ``[320]`` (Iglesias et al.).
    Raises:
      ValueError: for any other name.
    """
    if dataset == "continuous":
        return np.loadtxt(DATA_DIR / "usdchf.txt")
    if dataset == "binary":
        return np.loadtxt(DATA_DIR / "binary_input.txt"), np.loadtxt(
            DATA_DIR / "binary_response.txt"
        )
    raise ValueError(f"`dataset` must be 'continuous' or 'binary'; got {dataset!r}.")
