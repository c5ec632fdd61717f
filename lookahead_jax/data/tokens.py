"""The shipped corpus in any tokenizer's ids: token streams, held-out windows, prompts.

The byte-level models read the corpus bytes directly (``corpus.py``); a BPE
model reads the same documents through its tokenizer. Bits per byte stay
comparable across both: ``models.bits_per_byte(..., token_bytes=...)`` divides
the summed loss by the UTF-8 bytes the predicted tokens spell.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from lookahead_jax.data.corpus import documents, eval_windows, heldout_prompts


@functools.lru_cache(maxsize=8)
def token_stream(tokenizer: Any, split: str = "train") -> np.ndarray:
    """``[N] int32``: every document of ``split`` as ``[BOS] doc [EOS]``, concatenated.

    The byte tokenizer gives the corpus bytes as they are (no separators), so the
    byte-level models see exactly what they were trained on. The result is cached
    per tokenizer object and read-only.
    """
    from lookahead_jax.models.tokenizer import ByteTokenizer

    docs = documents(split)
    if isinstance(tokenizer, ByteTokenizer):
        from lookahead_jax.data.corpus import load_corpus

        stream = load_corpus(split).astype(np.int32)
    else:
        tail = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        rows = tokenizer.encode_lists(
            [d.decode("utf-8") for d in docs], add_bos=tokenizer.bos_id is not None
        )
        stream = np.asarray([i for row in rows for i in (*row, *tail)], np.int32)
        spelled = int(tokenizer.token_bytes()[stream].sum())
        expected = sum(len(d) for d in docs)
        if spelled != expected:  # lossless byte-level BPE spells every byte exactly once
            raise ValueError(
                f"the {split} tokens of {tokenizer!r} spell {spelled} bytes but the text has "
                f"{expected}: bits per byte need a lossless byte-level tokenizer."
            )
    stream.setflags(write=False)
    return stream


def token_windows(tokenizer: Any, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """``[W, seq_len + 1] int32`` non-overlapping held-out windows of ``token_stream``."""
    return eval_windows(token_stream(tokenizer, "heldout"), seq_len, max_windows)


def token_prompts(
    tokenizer: Any, num: int, byte_length: int, width: int | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """The held-out prompts of ``data.heldout_prompts`` (same texts) in the tokenizer's ids.

    Args:
      tokenizer: from ``models.load_tokenizer``.
      num: number of prompts.
      byte_length: the byte prompts' width (their texts are cut at UTF-8 boundaries).
      width: pad the token prompts to this many columns (one compiled shape);
        ``None`` = the longest prompt.
      seed: as in ``heldout_prompts``.
    Returns:
      ``(prompt [num, P] int32, lengths [num] int32)`` in ``generate``'s layout (for
      the byte tokenizer: ``heldout_prompts``' own arrays).
    """
    from lookahead_jax.models.tokenizer import ByteTokenizer

    prompts, lengths = heldout_prompts(num, byte_length, seed=seed)
    if isinstance(tokenizer, ByteTokenizer) and width in (None, byte_length):
        return prompts, lengths  # the byte models' prompts exactly
    texts = [
        bytes(row[:n].tolist()).decode("utf-8", errors="ignore")
        for row, n in zip(np.asarray(prompts), np.asarray(lengths), strict=True)
    ]
    return tokenizer.encode(texts, pad_to=width)
