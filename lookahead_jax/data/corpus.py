"""Loading and batching the shipped byte-level corpus.

The corpus is the Python documentation (help topics + standard-library docstrings,
PSF License v2; see ``SOURCES.md``) as UTF-8 bytes, documents separated by
``b"\\n\\n"``. Token ids are the bytes themselves (vocabulary 256).

Everything here is NumPy and deterministic: a batch is a pure function of
``(seed, step)``, so a resumed training run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "heldout")
DOC_SEPARATOR = b"\n\n"
_WHITESPACE = np.array([ord(c) for c in " \n\t"], np.uint8)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")


@functools.lru_cache(maxsize=len(SPLITS))
def _raw(split: str) -> bytes:
    # Immutable bytes, cached: reading never changes a result.
    resource = importlib.resources.files("lookahead_jax.data") / f"corpus_{split}.txt.gz"
    return gzip.decompress(resource.read_bytes())


def load_corpus(split: str = "train") -> np.ndarray:
    """The whole split as one read-only byte array ``[N] uint8`` (documents joined by ``\\n\\n``).

    Raises:
      ValueError: ``split`` is not ``"train"`` or ``"heldout"``.
    """
    _check_split(split)
    data = np.frombuffer(_raw(split), dtype=np.uint8)
    return data  # np.frombuffer over bytes is read-only already


def documents(split: str = "train") -> list[bytes]:
    """The split's documents, in file order, as UTF-8 byte strings."""
    _check_split(split)
    return [doc for doc in _raw(split).split(DOC_SEPARATOR) if doc.strip()]


def _check_batch_args(data: np.ndarray, batch_size: int, seq_len: int) -> None:
    if data.ndim != 1:
        raise ValueError(f"`data` must be a 1-D byte array; got shape {data.shape}.")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(
            f"`batch_size` and `seq_len` must be positive; got {batch_size}, {seq_len}."
        )
    if data.shape[0] < seq_len + 1:
        raise ValueError(
            f"`data` has {data.shape[0]} bytes, fewer than seq_len + 1 = {seq_len + 1}."
        )


def sample_batch(
    rng: np.random.Generator | int | Sequence[int],
    data: np.ndarray,
    batch_size: int,
    seq_len: int,
) -> np.ndarray:
    """``batch_size`` random windows of ``seq_len + 1`` bytes: ``[B, seq_len + 1] int32``.

    Inputs are ``batch[:, :-1]`` and next-byte targets ``batch[:, 1:]``. ``rng`` is a
    NumPy ``Generator`` or a seed (int or sequence of ints) for one.
    """
    _check_batch_args(data, batch_size, seq_len)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    starts = rng.integers(0, data.shape[0] - seq_len, size=batch_size)
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return data[index].astype(np.int32)


def batch_for_step(
    data: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int
) -> np.ndarray:
    """The batch of ``step``: ``[B, seq_len + 1] int32``, a pure function of (seed, step)."""
    return sample_batch(np.random.default_rng([seed, step]), data, batch_size, seq_len)


def eval_windows(data: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows of ``seq_len + 1`` bytes: ``[W, seq_len + 1] int32``.

    Deterministic (no sampling), for a held-out loss that is the same at every
    evaluation. Windows are spread evenly over the data when ``max_windows`` cuts.
    """
    _check_batch_args(data, 1, seq_len)
    num = data.shape[0] // (seq_len + 1)
    windows = data[: num * (seq_len + 1)].reshape(num, seq_len + 1)
    if max_windows is not None and max_windows < num:
        windows = windows[np.linspace(0, num - 1, max_windows).round().astype(int)]
    return windows.astype(np.int32)


def heldout_prompts(num: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ragged prompts cut at word boundaries from held-out documents.

    Each prompt starts at the beginning of a word of a held-out document and ends
    at the end of a word; its length lies in ``[length // 2, length]`` (shorter
    only when a single word is longer).

    Args:
      num: number of prompts.
      length: maximum prompt length in bytes (the padded width).
      seed: NumPy seed choosing documents, starts and lengths.

    Returns:
      ``(prompts [num, length] int32, lengths [num] int32)``: byte ids, zero-padded
      after ``lengths[i]``; every length is at least 1.
    """
    if num <= 0 or length <= 1:
        raise ValueError(f"`num` must be > 0 and `length` > 1; got num={num}, length={length}.")
    docs = [np.frombuffer(d, np.uint8) for d in documents("heldout")]
    docs = [d for d in docs if d.shape[0] > length]
    if not docs:
        raise ValueError(f"no held-out document is longer than `length`={length}.")
    rng = np.random.default_rng(seed)
    prompts = np.zeros((num, length), np.int32)
    lengths = np.zeros((num,), np.int32)
    for i in range(num):
        doc = docs[rng.integers(len(docs))]
        is_space = np.isin(doc, _WHITESPACE)
        # Word starts: a non-space byte at position 0 or after a space, leaving room.
        word_start = ~is_space & np.concatenate([[True], is_space[:-1]])
        candidates = np.flatnonzero(word_start[: doc.shape[0] - length])
        start = int(candidates[rng.integers(len(candidates))]) if len(candidates) else 0
        window = doc[start : start + length]
        want = int(rng.integers(max(1, length // 2), length + 1))
        # Word ends: a non-space byte followed by a space (the byte after the window
        # counts, so a word running to the window's end is complete only if it ends there).
        nxt = doc[start + 1 : start + length + 1]
        word_end = ~np.isin(window, _WHITESPACE) & np.isin(nxt, _WHITESPACE)
        ends = np.flatnonzero(word_end[:want]) + 1
        if len(ends) == 0:  # one long word: fall back to the first word end, or cut
            ends = np.flatnonzero(word_end) + 1
            ends = ends[:1] if len(ends) else np.array([length])
        n = int(ends[-1])
        prompts[i, :n] = window[:n]
        lengths[i] = n
    return prompts, lengths
