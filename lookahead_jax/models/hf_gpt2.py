"""GPT-2 checkpoints: thin wrappers of ``load_hf`` / ``save_hf`` kept for existing callers.

Both key layouts on the Hub are read: ``GPT2LMHeadModel``'s
(``transformer.h.0.attn.c_attn.weight``, ...) and ``GPT2Model``'s (no prefix).
GPT-2's ``Conv1D`` weights are stored ``[in, out]``, our kernel layout; the fused
``c_attn`` is split into the q/k/v kernels of ``transformer.py``'s layout.
"""

from __future__ import annotations

import os

from lookahead_jax.models.config import TransformerConfig
from lookahead_jax.models.hf import load_hf, save_hf
from lookahead_jax.models.transformer import Params


def load_hf_gpt2(directory: str | os.PathLike[str]) -> tuple[TransformerConfig, Params]:
    """``load_hf(directory)`` for a folder whose ``model_type`` must be ``gpt2`` (float32).

    Raises:
      ValueError: as ``load_hf``, and when ``config.json``'s ``model_type`` is not ``gpt2``.
    """
    from lookahead_jax.models.hf import CONFIG_FILE, _read_json, _resolve_path

    folder = _resolve_path(directory)
    if (folder / CONFIG_FILE).is_file():
        model_type = _read_json(folder / CONFIG_FILE).get("model_type")
        if model_type != "gpt2":
            raise ValueError(
                f"{folder / CONFIG_FILE}: `model_type` must be 'gpt2' for load_hf_gpt2; got "
                f"{model_type!r} (use models.load_hf for every family)."
            )
    return load_hf(folder)


def save_hf_gpt2(
    directory: str | os.PathLike[str],
    config: TransformerConfig,
    params: Params,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> None:
    """``save_hf`` for a GPT-2 config: a ``GPT2LMHeadModel`` folder (float32, tied head)."""
    if not isinstance(config, TransformerConfig) or config.model_type != "gpt2":
        raise ValueError(
            "`config` must be a GPT-2 TransformerConfig (model_type 'gpt2'); got "
            f"{getattr(config, 'model_type', type(config).__name__)!r}."
        )
    save_hf(directory, config, params, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
