"""Tokenizers: text <-> the right-padded ragged token layout that ``generate`` takes.

``load_tokenizer(name_or_path)`` returns a ``Tokenizer`` built on HuggingFace
``tokenizers`` (a ``tokenizer.json`` plus, when present, ``tokenizer_config.json``,
``generation_config.json`` and ``config.json`` for the special ids), or the
``ByteTokenizer`` of the shipped byte-level models. Both share one interface::

    tok = load_tokenizer("tiny-llama")
    prompt, lengths = tok.encode(["def f(x):", "import"])  # [B, P] int32, [B] int32
    texts = tok.decode(generation.tokens, generation.lengths)  # list[str]

Row ``b`` of ``prompt`` holds its tokens in ``[0, lengths[b])`` and ``pad_id``
after them. Everything here runs in Python on the host (tokenization is not a
compiled function); only the returned arrays are JAX arrays.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Files a tokenizer folder may hold; the Hub download fetches only these.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "config.json",
)
# Shipped names: the byte tokenizer of the byte-level GPT-2 pair, and aliases of
# shipped tokenizer folders under models/pretrained/.
BYTE_NAMES = ("bytes", "tiny-target", "tiny-draft")
ALIASES = {
    "tiny-llama": "tiny-llama-tokenizer",
    "tiny-llama-target": "tiny-llama-tokenizer",
    "tiny-llama-draft": "tiny-llama-tokenizer",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Tokenizer:
    """A tokenizer with the library's batch layout, backed by HuggingFace ``tokenizers``.

    Build it with ``load_tokenizer``; the constructor takes an already-loaded
    ``tokenizers.Tokenizer`` and the resolved special ids.

    Attributes:
      vocab_size: number of ids the tokenizer knows (added tokens included). A
        model's embedding table may be larger (padded); ids beyond this cannot be
        decoded.
      bos_id: beginning-of-sequence id, or ``None`` (Qwen has none).
      eos_id: the tokenizer's end-of-sequence id (``tokenizer_config.json``'s
        ``eos_token``, else the first of ``eos_ids``), or ``None``.
      eos_ids: every id that ends generation (``generation_config.json`` may list
        several, e.g. Llama 3 instruct); ``eos_id`` first when set.
      pad_id: the id ``encode`` pads with (``pad_token``, else ``eos_id``, else 0).
      add_bos: whether ``encode`` prepends ``bos_id`` by default.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int
    add_bos: bool

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None = None,
        eos_ids: Sequence[int] = (),
        pad_id: int | None = None,
        add_bos: bool = False,
        name: str = "",
    ) -> None:
        import tokenizers

        if not isinstance(backend, tokenizers.Tokenizer):
            raise ValueError(
                f"`backend` must be a tokenizers.Tokenizer; got {type(backend).__name__}."
            )
        self._backend = backend
        self._set_ids(
            backend.get_vocab_size(with_added_tokens=True), bos_id, eos_ids, pad_id, add_bos, name
        )

    def _set_ids(
        self,
        vocab_size: int,
        bos_id: int | None,
        eos_ids: Sequence[int],
        pad_id: int | None,
        add_bos: bool,
        name: str,
    ) -> None:
        eos_ids = tuple(int(i) for i in eos_ids)
        for arg, value in [
            ("bos_id", bos_id),
            ("pad_id", pad_id),
            *(("eos_ids", i) for i in eos_ids),
        ]:
            if value is not None and not 0 <= value < vocab_size:
                raise ValueError(f"`{arg}` must lie in [0, vocab_size={vocab_size}); got {value}.")
        if add_bos and bos_id is None:
            raise ValueError("`add_bos` is True but the tokenizer has no `bos_id`.")
        self.name = name
        self.vocab_size = int(vocab_size)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_ids = eos_ids
        self.eos_id = eos_ids[0] if eos_ids else None
        if pad_id is None:
            pad_id = 0 if self.eos_id is None else self.eos_id
        self.pad_id = int(pad_id)
        self.add_bos = bool(add_bos)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_ids={self.eos_ids}, pad_id={self.pad_id}, "
            f"add_bos={self.add_bos})"
        )

    # Backend hooks: one batch of texts <-> id lists, without special tokens.
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def _decode_batch(self, rows: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return list(self._backend.decode_batch(rows, skip_special_tokens=skip_special_tokens))

    def encode_ids(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """The ids of one text as a Python list (BOS first when ``add_bos``)."""
        return self._encode_lists([text], add_bos)[0]

    def encode_lists(self, texts: Sequence[str], *, add_bos: bool | None = None) -> list[list[int]]:
        """The ids of many texts as Python lists (one batched call; no padding)."""
        return self._encode_lists(list(texts), add_bos)

    def token_bytes(self) -> np.ndarray:
        """``[vocab_size] int32``: the UTF-8 bytes each id spells (special tokens: 0).

        What turns a per-token loss into bits per byte. Needs a byte-level BPE
        vocabulary (GPT-2's byte-to-character alphabet), as every shipped tokenizer is.

        Raises:
          ValueError: a token is not made of byte characters (not byte-level BPE).
        """
        special = {int(i) for i in self._backend.get_added_tokens_decoder()}
        alphabet = _byte_alphabet()
        lengths = np.zeros((self.vocab_size,), np.int32)
        for i in range(self.vocab_size):
            if i in special:
                continue
            token = self._backend.id_to_token(i)
            if token is None or any(c not in alphabet for c in token):
                raise ValueError(
                    f"token {i} ({token!r}) is not a byte-level BPE token: bytes per token "
                    "are defined for byte-level tokenizers only."
                )
            lengths[i] = len(token)
        return lengths

    def _encode_lists(self, texts: list[str], add_bos: bool | None) -> list[list[int]]:
        if add_bos is None:
            add_bos = self.add_bos
        if not isinstance(add_bos, bool):
            raise ValueError(f"`add_bos` must be a bool or None; got {add_bos!r}.")
        if add_bos and self.bos_id is None:
            raise ValueError("`add_bos`=True but this tokenizer has no BOS token (bos_id None).")
        rows = self._encode_batch(texts)
        return [[self.bos_id, *row] for row in rows] if add_bos else rows

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        add_bos: bool | None = None,
        pad_to: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes a batch of texts into the right-padded ragged layout ``generate`` takes.

        Args:
          texts: one string (a batch of one) or a sequence of ``B >= 1`` strings.
          add_bos: prepend ``bos_id`` to every row; ``None``: ``self.add_bos``.
          pad_to: pad every row to this width (fixed shapes compile once);
            ``None``: the longest row (at least 1).

        Returns:
          ``(prompt [B, P] int32, lengths [B] int32)``: row ``b`` holds its tokens in
          ``prompt[b, :lengths[b]]`` and ``pad_id`` after them.

        Raises:
          ValueError: ``texts`` is not a string or a non-empty sequence of strings,
            ``add_bos`` is not a bool (or is True without a BOS), ``pad_to`` is not a
            positive int, or a text is longer than ``pad_to`` tokens.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, Sequence) and not isinstance(texts, bytes | bytearray):
            texts = list(texts)
            bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
            if bad:
                raise ValueError(
                    f"`texts` must hold strings; got {type(texts[bad[0]]).__name__} at "
                    f"index {bad[0]}."
                )
            if not texts:
                raise ValueError("`texts` must hold at least one string; got an empty sequence.")
        else:
            raise ValueError(f"`texts` must be a str or a list of str; got {type(texts).__name__}.")
        if pad_to is not None and (
            not isinstance(pad_to, int | np.integer) or isinstance(pad_to, bool) or pad_to < 1
        ):
            raise ValueError(f"`pad_to` must be a positive int or None; got {pad_to!r}.")
        rows = self._encode_lists(texts, add_bos)
        lengths = np.array([len(r) for r in rows], np.int32)
        width = max(int(lengths.max()), 1)
        if pad_to is not None:
            if width > pad_to:
                row = int(np.argmax(lengths))
                raise ValueError(
                    f"`pad_to`={pad_to} is shorter than text {row}, which encodes to "
                    f"{int(lengths[row])} tokens."
                )
            width = int(pad_to)
        prompt = np.full((len(rows), width), self.pad_id, np.int32)
        for b, row in enumerate(rows):
            prompt[b, : len(row)] = row
        return jnp.asarray(prompt), jnp.asarray(lengths)

    def decode(
        self,
        tokens: Any,
        lengths: Any = None,
        *,
        skip_special_tokens: bool = True,
    ) -> list[str]:
        """Decodes the first ``lengths[b]`` tokens of each row.

        Args:
          tokens: ``[B, T]`` integer array-like (e.g. ``Generation.tokens``).
          lengths: ``[B]`` integers in ``[0, T]`` (e.g. ``Generation.lengths``);
            ``None``: every row is ``T`` tokens long.
          skip_special_tokens: drop BOS/EOS/pad and other special tokens.

        Returns:
          ``B`` strings.

        Raises:
          ValueError: ``tokens`` is not a 2-D integer array, ``lengths`` is not ``[B]``
            integers in ``[0, T]``, or a decoded id lies outside ``[0, vocab_size)``.
        """
        tokens = _as_int_array("tokens", tokens, 2, "[B, T]: a batch of token rows")
        batch, width = tokens.shape
        if lengths is None:
            lengths = np.full((batch,), width, np.int64)
        lengths = _as_int_array("lengths", lengths, 1, "[B]: tokens to decode per row")
        if lengths.shape != (batch,):
            raise ValueError(
                f"`lengths` must have shape [B]=[{batch}] to match `tokens` {tokens.shape}; "
                f"got {lengths.shape}."
            )
        if lengths.size and (lengths.min() < 0 or lengths.max() > width):
            row = int(np.flatnonzero((lengths < 0) | (lengths > width))[0])
            raise ValueError(
                f"`lengths` must lie in [0, T={width}]; got lengths[{row}]={int(lengths[row])}."
            )
        rows = [tokens[b, : lengths[b]] for b in range(batch)]
        for b, row in enumerate(rows):
            bad = (row < 0) | (row >= self.vocab_size)
            if bad.any():
                t = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"`tokens` must hold ids in [0, vocab_size={self.vocab_size}); got "
                    f"tokens[{b}, {t}]={int(row[t])}."
                )
        return self._decode_batch([row.tolist() for row in rows], bool(skip_special_tokens))


class ByteTokenizer(Tokenizer):
    """The byte-level tokenizer of the shipped ``tiny-target`` / ``tiny-draft`` models.

    Ids are the UTF-8 bytes of the text (vocabulary 256), exactly as the shipped
    corpus and ``data.heldout_prompts`` encode it: no BOS by default (the models were
    trained on raw byte windows), padding with 0. BOS and EOS are 255 (the models'
    ``config.json``), a byte that never occurs in UTF-8 text; ``decode`` drops it
    when ``skip_special_tokens`` and replaces invalid UTF-8 with U+FFFD, as the
    benchmarks' ``bytes(...).decode("utf-8", errors="replace")`` does.
    """

    SPECIAL_ID = 255

    def __init__(self, *, add_bos: bool = False, pad_id: int = 0, name: str = "bytes") -> None:
        self._backend = None
        self._set_ids(256, self.SPECIAL_ID, (self.SPECIAL_ID,), pad_id, add_bos, name)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def _decode_batch(self, rows: list[list[int]], skip_special_tokens: bool) -> list[str]:
        if skip_special_tokens:
            rows = [[i for i in row if i != self.SPECIAL_ID] for row in rows]
        return [bytes(row).decode("utf-8", errors="replace") for row in rows]

    def token_bytes(self) -> np.ndarray:
        """``[256] int32`` of ones: every id is one byte (255 never occurs in UTF-8 text)."""
        return np.ones((256,), np.int32)


def _byte_alphabet() -> set[str]:
    """The 256 characters byte-level BPE uses for bytes (GPT-2's ``bytes_to_unicode``):
    printable Latin-1 characters stand for themselves, the other bytes for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [256 + n for n in range(256 - len(printable))]
    return {chr(c) for c in (*printable, *shifted)}


def _as_int_array(name: str, x: Any, rank: int, meaning: str) -> np.ndarray:
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"`{name}` must be an integer array {meaning}; got {x!r:.80}.") from err
    if array.ndim != rank:
        raise ValueError(f"`{name}` must have rank {rank} ({meaning}); got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers; got dtype {array.dtype}.")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------- loading


def _pretrained_root():
    return importlib.resources.files("lookahead_jax.models") / "pretrained"


def _shipped_folders() -> list[str]:
    root = _pretrained_root()
    if not root.is_dir():
        return []
    return sorted(e.name for e in root.iterdir() if e.is_dir() and (e / "tokenizer.json").is_file())


def available_tokenizers() -> list[str]:
    """Shipped tokenizer names ``load_tokenizer`` accepts, sorted."""
    folders = _shipped_folders()
    aliases = [a for a, folder in ALIASES.items() if folder in folders]
    return sorted({*BYTE_NAMES, *folders, *aliases})


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"`name_or_path`: {path} must be a UTF-8 encoded JSON file; byte {err.start} is not "
            f"UTF-8 ({err.reason})."
        ) from err
    except json.JSONDecodeError as err:
        raise ValueError(f"`name_or_path`: {path} is not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise ValueError(
            f"`name_or_path`: {path} must hold a JSON object; got {type(content).__name__}."
        )
    return content


def _token_id(backend: Any, value: Any, where: str) -> int | None:
    """The id of a special token given as a string or ``{"content": ...}`` (or None)."""
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        value = value["content"]
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a token string or a dict with 'content'; got {value!r}.")
    token_id = backend.token_to_id(value)
    if token_id is None:
        raise ValueError(f"{where}={value!r} is not in the tokenizer's vocabulary.")
    return int(token_id)


def _id_list(value: Any, where: str) -> list[int]:
    """``bos_token_id`` / ``eos_token_id`` of a config: None, an int or a list of ints."""
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{where} must be a non-negative int or a list of them; got {value!r}.")
    return list(values)


def _post_processor_bos(backend: Any) -> int | None:
    """The id the post-processor prepends to a single text, or None if it adds none."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    if len(full) > len(plain) and full[1 : 1 + len(plain)] == plain:
        return int(full[0])
    return None


def tokenizer_from_folder(folder: str | os.PathLike[str], *, name: str = "") -> Tokenizer:
    """Loads ``folder/tokenizer.json`` with the special ids of the folder's config files.

    BOS: ``generation_config.json``'s ``bos_token_id``, else ``tokenizer_config.json``'s
    ``bos_token``, else ``config.json``'s ``bos_token_id``, else the token the
    post-processor prepends. EOS: ``tokenizer_config.json``'s ``eos_token`` first, then
    every ``eos_token_id`` of ``generation_config.json`` (or ``config.json``).
    ``add_bos``: ``tokenizer_config.json``'s ``add_bos_token``, else whether the
    post-processor prepends BOS.
    """
    import tokenizers

    folder = pathlib.Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        extra = ""
        if (folder / "tokenizer.model").is_file():
            extra = (
                " It holds a SentencePiece tokenizer.model: convert it once with "
                "transformers (AutoTokenizer.from_pretrained(folder).save_pretrained(folder))."
            )
        raise ValueError(
            f"`name_or_path`: the folder {folder} must hold a tokenizer.json; it holds "
            f"{sorted(p.name for p in folder.iterdir())}.{extra}"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad files
        raise ValueError(
            f"`name_or_path`: {path} is not a valid HuggingFace tokenizers file ({err})."
        ) from err

    tok_config = _read_json(folder / "tokenizer_config.json")
    gen_config = _read_json(folder / "generation_config.json")
    model_config = _read_json(folder / "config.json")

    def where(file: str, key: str) -> str:
        return f"`name_or_path`: {folder / file}'s {key!r}"

    prefix = _post_processor_bos(backend)
    gen_bos = _id_list(
        gen_config.get("bos_token_id"), where("generation_config.json", "bos_token_id")
    )
    tok_bos = _token_id(
        backend, tok_config.get("bos_token"), where("tokenizer_config.json", "bos_token")
    )
    model_bos = _id_list(model_config.get("bos_token_id"), where("config.json", "bos_token_id"))
    candidates = [*gen_bos, tok_bos, *model_bos, prefix]
    bos_id = next((i for i in candidates if i is not None), None)

    eos_ids: list[int] = []
    tok_eos = _token_id(
        backend, tok_config.get("eos_token"), where("tokenizer_config.json", "eos_token")
    )
    if tok_eos is not None:
        eos_ids.append(tok_eos)
    listed = _id_list(
        gen_config.get("eos_token_id"), where("generation_config.json", "eos_token_id")
    )
    if not listed:
        listed = _id_list(model_config.get("eos_token_id"), where("config.json", "eos_token_id"))
    eos_ids += [i for i in listed if i not in eos_ids]

    pad_id = _token_id(
        backend, tok_config.get("pad_token"), where("tokenizer_config.json", "pad_token")
    )

    add_bos = tok_config.get("add_bos_token")
    if add_bos is None:
        add_bos = prefix is not None and prefix == bos_id
    elif not isinstance(add_bos, bool):
        raise ValueError(
            f"{where('tokenizer_config.json', 'add_bos_token')} must be a bool; got {add_bos!r}."
        )
    if add_bos and bos_id is None:
        raise ValueError(
            f"{where('tokenizer_config.json', 'add_bos_token')} is true but no BOS token is "
            "given (bos_token / bos_token_id) nor added by the post-processor."
        )
    return Tokenizer(
        backend,
        bos_id=bos_id,
        eos_ids=eos_ids,
        pad_id=pad_id,
        add_bos=add_bos,
        name=name or str(folder),
    )


def _from_shipped(folder_name: str, name: str) -> Tokenizer:
    resource = _pretrained_root() / folder_name
    with importlib.resources.as_file(resource) as path:  # a real folder, even when zipped
        return tokenizer_from_folder(path, name=name)


def _from_hub(repo_id: str) -> Tokenizer:
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError(
            f"`name_or_path`={repo_id!r} is not a shipped name or a local path, and "
            "huggingface_hub is not installed to fetch it from the Hub: install "
            "huggingface_hub, or download the tokenizer files into a folder and pass the "
            f"folder. Shipped names: {available_tokenizers()}."
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES))
    except Exception as err:  # offline, unknown repo, gated model, ...
        raise ValueError(
            f"`name_or_path`={repo_id!r} is not a shipped name or a local path, and fetching "
            f"it from the Hub failed ({type(err).__name__}: {err})."
        ) from err
    return tokenizer_from_folder(folder, name=repo_id)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Tokenizer:
    """Loads a tokenizer: a shipped name, a folder, a ``tokenizer.json`` file or a Hub id.

    Args:
      name_or_path: one of
        - a shipped name (``available_tokenizers()``): ``"tiny-llama"`` (the byte-level
          BPE tokenizer of the Llama pair, vocabulary 4096, adds BOS) or ``"bytes"``
          (alias ``"tiny-target"`` / ``"tiny-draft"``: a ``ByteTokenizer``); shipped
          names win over a local folder of the same name (pass ``"./name"`` for that);
        - a folder holding ``tokenizer.json`` and optionally ``tokenizer_config.json``,
          ``generation_config.json`` and ``config.json`` (see ``tokenizer_from_folder``);
        - a path to a ``tokenizer.json`` file (its folder's config files are read too);
        - a Hub id ``"owner/name"`` when ``huggingface_hub`` is installed (only the
          tokenizer files are fetched).

    Returns:
      A ``Tokenizer`` (a ``ByteTokenizer`` for the byte-level names).

    Raises:
      ValueError: ``name_or_path`` is not a string or path, names nothing known, or
        points at missing or corrupt files.
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise ValueError(
            f"`name_or_path` must be a str or a path; got {type(name_or_path).__name__}."
        )
    name = os.fspath(name_or_path)
    if isinstance(name_or_path, str):
        if name in BYTE_NAMES:
            return ByteTokenizer(name=name)
        folders = _shipped_folders()
        if name in folders:
            return _from_shipped(name, name)
        if name in ALIASES and ALIASES[name] in folders:
            return _from_shipped(ALIASES[name], name)
    path = pathlib.Path(name)
    if path.is_dir():
        return tokenizer_from_folder(path)
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(
                f"`name_or_path` must be a folder or a tokenizer.json file; got the file {path}."
            )
        if path.name == "tokenizer.json":
            return tokenizer_from_folder(path.parent)
        # A differently named tokenizers file: no config files belong to it.
        import tokenizers

        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:
            raise ValueError(
                f"`name_or_path`: {path} is not a valid HuggingFace tokenizers file ({err})."
            ) from err
        prefix = _post_processor_bos(backend)
        return Tokenizer(backend, bos_id=prefix, add_bos=prefix is not None, name=str(path))
    if isinstance(name_or_path, str) and _HUB_ID.match(name):
        return _from_hub(name)
    raise ValueError(
        f"`name_or_path` must be a shipped tokenizer name {available_tokenizers()}, a folder "
        f"holding tokenizer.json, a tokenizer.json file or a Hub id 'owner/name'; got "
        f"{name!r}, which is none of these (no such file or folder)."
    )
