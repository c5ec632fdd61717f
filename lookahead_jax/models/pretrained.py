"""Tiny checkpoints shipped inside the package: a byte-level GPT-2 pair and a BPE Llama pair.

All were trained by ``experiments/train_lm.py`` on the shipped corpus
(``lookahead_jax/data``, PSF-licensed Python documentation); each folder under
``models/pretrained/`` holds the HuggingFace files (``config.json`` +
``model.safetensors``) and a ``training.json`` recording how it was made.

- ``tiny-target``: 4 layers, d_model 192, 4 heads, 256 positions (~1.9M params).
- ``tiny-draft``: 2 layers, d_model 64, 2 heads, 256 positions (~0.13M params),
  a fast drafter for ``tiny-target`` (same byte vocabulary).
- ``tiny-llama-target``: Llama architecture (RMSNorm, RoPE, GQA 8:2, SwiGLU, tied
  head), 6 layers, d_model 256, 4,096-token byte-level BPE (``load_tokenizer
  ("tiny-llama")``), 256 positions (~5.2M params).
- ``tiny-llama-draft``: the same family, 2 layers, d_model 128, 4 heads over 1 KV
  head (~0.87M params), a drafter for ``tiny-llama-target`` (same tokenizer).

The Llama folders are complete HuggingFace model folders (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``).
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
