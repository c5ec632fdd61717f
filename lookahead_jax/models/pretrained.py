"""Tiny byte-level GPT-2 checkpoints shipped inside the package.

Both were trained by ``experiments/train_lm.py`` on the shipped corpus
(``lookahead_jax/data``, PSF-licensed Python documentation); each folder under
``models/pretrained/`` holds the HuggingFace GPT-2 files (``config.json`` +
``model.safetensors``) and a ``training.json`` recording how it was made.

- ``tiny-target``: 4 layers, d_model 192, 4 heads, 256 positions (~1.9M params).
- ``tiny-draft``: 2 layers, d_model 64, 2 heads, 256 positions (~0.13M params),
  a fast drafter for ``tiny-target`` (same byte vocabulary).
"""

from __future__ import annotations

import importlib.resources
import pathlib

from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.hf import load_hf
from lookahead_jax.models.transformer import Params


def _root():
    return importlib.resources.files("lookahead_jax.models") / "pretrained"


def available_pretrained() -> list[str]:
    """Names of the shipped checkpoints, sorted (e.g. ``["tiny-draft", "tiny-target"]``)."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and (entry / "config.json").is_file()
    )


def load_pretrained(name: str) -> tuple[TransformerConfig, Params]:
    """Loads a shipped checkpoint as ``(config, params)``: float32, ``transformer.py`` layout.

    Raises:
      ValueError: ``name`` is not one of ``available_pretrained()``.
    """
    names = available_pretrained()
    if name not in names:
        raise ValueError(f"unknown pretrained model {name!r}; available: {names}.")
    resource = _root() / name
    if isinstance(resource, pathlib.Path):  # a normal install: files on disk
        return load_hf(resource)
    # A zipped install: extract to a temporary folder first (Python >= 3.12).
    with importlib.resources.as_file(resource) as path:
        return load_hf(path)
