"""Model pairs for the benchmarks: loading, held-out prompts and windows in the pair's tokens.

A *pair* is ``(target, draft)``: two names of shipped checkpoints
(``models.available_pretrained()``, e.g. ``("tiny-target", "tiny-draft")`` or
``("tiny-llama-target", "tiny-llama-draft")``) or two folders holding a HuggingFace
checkpoint (``config.json`` + ``model.safetensors``, and ``tokenizer.json`` for a
non-byte vocabulary). The pair's tokenizer is ``models.load_tokenizer(target)``.

Prompts are the same held-out texts for every pair: ``data.heldout_prompts`` cuts
them (in bytes, at word boundaries); a byte-level pair takes those bytes as they
are, any other pair encodes the texts with its tokenizer (BOS first when the
tokenizer adds one) to a fixed token width.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib
from typing import Any

import numpy as np

from lookahead_jax import data, models


def label(pair) -> str:
    """``"target/draft"`` by folder name: the ``pair`` field of the benchmarks' rows."""
    return "/".join(pathlib.PurePath(str(name)).name for name in pair)


def check_pairs(pairs) -> list[tuple[str, str]]:
    """``pairs`` as a list of ``(target, draft)`` tuples; raises ValueError on bad input."""
    try:
        pairs = [tuple(p) for p in pairs]
    except TypeError as err:
        raise ValueError(f"`pairs` must be a sequence of (target, draft); got {pairs!r}.") from err
    if not pairs or any(len(p) != 2 or not all(isinstance(n, str) for n in p) for p in pairs):
        raise ValueError(f"`pairs` must be a non-empty sequence of (target, draft); got {pairs!r}.")
    labels = [label(p) for p in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`pairs` must have distinct labels; got {labels}.")
    return pairs


def load_model(name: str) -> models.Model:
    """A shipped checkpoint by name, else a HuggingFace checkpoint folder (float32)."""
    if name in models.available_pretrained():
        return models.Model(*models.load_pretrained(name))
    if pathlib.Path(name).is_dir():
        return models.Model(*models.load_hf(name))
    raise ValueError(
        f"model {name!r} is neither a shipped checkpoint {models.available_pretrained()} nor a "
        "folder holding a HuggingFace checkpoint."
    )


def model_dir(name: str):
    """The checkpoint folder of ``name`` (for transformers' ``from_pretrained``)."""
    if name in models.available_pretrained():
        return importlib.resources.files("lookahead_jax.models") / "pretrained" / name
    return pathlib.Path(name)


def is_bytes(tokenizer) -> bool:
    return isinstance(tokenizer, models.ByteTokenizer)


def heldout_prompts(tokenizer, num: int, length: int, seed: int = 0):
    """``(prompts [num, W] int32, lengths [num] int32)`` as NumPy arrays, in the pair's tokens.

    ``length`` is the prompts' maximum length in bytes (``data.heldout_prompts``);
    a byte-level tokenizer keeps those bytes (``W = length``), any other encodes the
    same texts padded to ``W = length + 1`` tokens (a byte-level BPE never spells
    fewer than one byte per token; the 1 is for BOS).
    """
    prompts, lengths = data.heldout_prompts(num, length, seed=seed)
    if is_bytes(tokenizer):
        return prompts, lengths
    texts = [
        bytes(p[: int(n)].tolist()).decode("utf-8", errors="replace")
        for p, n in zip(prompts, lengths, strict=True)
    ]
    tokens, token_lengths = tokenizer.encode(texts, pad_to=length + 1)
    return np.asarray(tokens, np.int32), np.asarray(token_lengths, np.int32)


def heldout_stream(tokenizer) -> np.ndarray:
    """The held-out split as one ``[N] int32`` token stream (``[BOS] doc [EOS]`` per document
    for a BPE tokenizer; the raw bytes for a byte-level one)."""
    if is_bytes(tokenizer):
        return data.load_corpus("heldout")
    return _bpe_stream(tokenizer)


def _bpe_stream(tokenizer) -> np.ndarray:
    docs = [d.decode("utf-8", errors="replace") for d in data.documents("heldout")]
    tail = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    rows = tokenizer._encode_lists(docs, tokenizer.bos_id is not None)
    return np.asarray([i for row in rows for i in (*row, *tail)], np.int32)


def eval_windows(tokenizer, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Held-out windows of ``seq_len + 1`` tokens of the pair's tokenizer: ``[W, seq_len + 1]``."""
    return data.eval_windows(heldout_stream(tokenizer), seq_len, max_windows)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """The UTF-8 bytes each id ``< vocab_size`` spells (special and unknown ids spell none).

    Byte-level tokenizers: id ``i`` is byte ``i`` (the special id 255 spells none).
    Byte-level BPE (GPT-2 alphabet): the token's characters mapped back to bytes.
    Any other tokenizer: the UTF-8 of decoding the id alone.
    """
    if is_bytes(tokenizer):
        return [b"" if i == tokenizer.SPECIAL_ID else bytes([i]) for i in range(vocab_size)]
    backend: Any = tokenizer._backend
    special = {int(i) for i in backend.get_added_tokens_decoder()}
    decoder = _byte_decoder()
    out = []
    for i in range(vocab_size):
        token = None if i >= tokenizer.vocab_size or i in special else backend.id_to_token(i)
        if token is None:
            out.append(b"")
        elif all(c in decoder for c in token):
            out.append(bytes(decoder[c] for c in token))
        else:
            out.append(backend.decode([i]).encode("utf-8"))
    return out


def spell(table: list[bytes], ids) -> bytes:
    """The bytes a sequence of ids spells under ``token_bytes``' ``table``."""
    return b"".join(table[int(i)] for i in ids)


def stop_ids(table: list[bytes], stop_bytes) -> tuple[int, ...]:
    """Every id whose spelling ends with one of ``stop_bytes`` (byte values), sorted."""
    stops = set(int(b) for b in stop_bytes)
    return tuple(i for i, t in enumerate(table) if t and t[-1] in stops)
