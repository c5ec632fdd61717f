"""Trains a byte-level BPE tokenizer on the shipped corpus with HuggingFace ``tokenizers``.

Usage::

    python experiments/train_tokenizer.py --workdir=/work/runs/tiny-llama-tokenizer \\
        --config=configs/train_tokenizer.py

The tokenizer is GPT-2 style: a ``ByteLevel`` pre-tokenizer (GPT-2 split regex, no
prefix space) and decoder over the 256 byte symbols, so every string encodes without
an unknown token and decodes back to itself. The special tokens (``bos``, ``eos``,
``pad``; ids 0, 1, 2) come first, and a ``TemplateProcessing`` post-processor
prepends ``bos`` when ``add_bos_token`` is set, so ``transformers.AutoTokenizer``
and ``lookahead_jax.models.load_tokenizer`` give the same ids.

Outputs in ``workdir`` (no ``config.json``: that would make the folder a model):

- ``tokenizer.json``: the ``tokenizers`` file;
- ``tokenizer_config.json``: ``tokenizer_class``, bos/eos/pad tokens,
  ``add_bos_token``, ``model_max_length``;
- ``training.json``: how it was made (vocabulary size, corpus bytes, training time,
  held-out bytes per token).

The shipped ``tiny-llama`` tokenizer (``lookahead_jax/models/pretrained/
tiny-llama-tokenizer``) is this script's output with the default config. The
script is importable without running: tests use ``train_tokenizer``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import ml_collections
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from lookahead_jax import distributed
from lookahead_jax.data import documents


def _texts(split: str, max_documents: int) -> list[str]:
    docs = documents(split)
    if max_documents:
        docs = docs[:max_documents]
    return [doc.decode("utf-8") for doc in docs]


def special_tokens(config: ml_collections.ConfigDict) -> list[str]:
    """The special tokens in id order: ``[bos, eos, pad]`` (ids 0, 1, 2)."""
    tokens = [config.bos_token, config.eos_token, config.pad_token]
    if len(set(tokens)) != len(tokens) or not all(tokens):
        raise ValueError(f"bos/eos/pad tokens must be distinct non-empty strings; got {tokens}.")
    return tokens


def build_tokenizer(
    config: ml_collections.ConfigDict, texts: list[str]
) -> tuple[tokenizers.Tokenizer, float]:
    """Trains the BPE tokenizer on ``texts``; returns it and the training seconds."""
    specials = special_tokens(config)
    minimum = len(specials) + 256  # every byte symbol must fit
    if config.vocab_size < minimum:
        raise ValueError(
            f"`config.vocab_size` must be at least {minimum} (256 bytes + special tokens); "
            f"got {config.vocab_size}."
        )
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    seconds = time.perf_counter() - start
    bos = config.bos_token
    if config.add_bos_token:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos}:1 $B:1",
            special_tokens=[(bos, tokenizer.token_to_id(bos))],
        )
    return tokenizer, seconds


def bytes_per_token(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> tuple[int, int]:
    """``(UTF-8 bytes, tokens)`` of ``texts`` encoded without special tokens."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(len(t.encode("utf-8")) for t in texts), sum(len(e.ids) for e in encodings)


def tokenizer_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``tokenizer_config.json`` transformers reads."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": config.bos_token,
        "eos_token": config.eos_token,
        "pad_token": config.pad_token,
        "add_bos_token": bool(config.add_bos_token),
        "add_eos_token": False,
        "model_max_length": config.model_max_length,
        "clean_up_tokenization_spaces": False,
    }


def train_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, *, command: str | None = None
) -> dict[str, Any]:
    """Trains, evaluates and writes the tokenizer files into ``workdir``.

    Args:
      config: see ``configs/train_tokenizer.py``.
      workdir: output folder (created if missing).
      command: the command line, recorded in ``training.json``.

    Returns:
      The record written to ``training.json``.
    """
    train = _texts("train", config.max_train_documents)
    heldout = _texts("heldout", config.max_heldout_documents)
    tokenizer, seconds = build_tokenizer(config, train)
    train_bytes, train_tokens = bytes_per_token(tokenizer, train)
    heldout_bytes, heldout_tokens = bytes_per_token(tokenizer, heldout)

    # Several processes train the same tokenizer (no JAX here); one writes it.
    primary = distributed.is_primary()
    if primary:
        os.makedirs(workdir, exist_ok=True)
        tokenizer.save(os.path.join(workdir, "tokenizer.json"))
        with open(os.path.join(workdir, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config(config), f, indent=1)
            f.write("\n")
    record = {
        "name": config.name,
        "command": command,
        "kind": "byte-level BPE (GPT-2 pre-tokenizer regex, no prefix space)",
        "vocab_size": tokenizer.get_vocab_size(),
        "special_tokens": {t: tokenizer.token_to_id(t) for t in special_tokens(config)},
        "num_merges": tokenizer.get_vocab_size() - 256 - len(special_tokens(config)),
        "corpus": "lookahead_jax.data (Python documentation, PSF License v2), train split",
        "train_documents": len(train),
        "train_bytes": train_bytes,
        "train_tokens": train_tokens,
        "train_bytes_per_token": train_bytes / train_tokens,
        "heldout_documents": len(heldout),
        "heldout_bytes": heldout_bytes,
        "heldout_tokens": heldout_tokens,
        "heldout_bytes_per_token": heldout_bytes / heldout_tokens,
        "training_time_s": seconds,
        "tokenizers_version": tokenizers.__version__,
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "config": config.to_dict(),
    }
    if primary:
        with open(os.path.join(workdir, "training.json"), "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return record


def main(argv: list[str]) -> None:
    del argv
    from absl import flags

    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or config.workdir
    if not workdir:
        raise ValueError("pass --workdir (or --config.workdir).")
    record = train_tokenizer(config, workdir, command=" ".join(sys.argv))
    print(
        f"Done: vocabulary {record['vocab_size']}, held-out "
        f"{record['heldout_bytes_per_token']:.3f} bytes/token, trained in "
        f"{record['training_time_s']:.1f} s; wrote {workdir}.",
        flush=True,
    )


if __name__ == "__main__":
    from absl import flags

    # The default resolves from the repository root whatever the working directory; the
    # root goes on sys.path so that `experiments` resolves.
    _root = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
    sys.path.insert(0, _root)
    from experiments.benchmarks import _common

    _common.define_config(os.path.join(_root, "configs", "train_tokenizer.py"))
    flags.DEFINE_string("workdir", None, "Output folder (tokenizer.json and friends).")
    _common.run(main)
