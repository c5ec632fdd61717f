"""The model pairs the benchmark smoke tests run on.

The byte-level GPT-2 pair is shipped. The BPE Llama pair is the shipped
``tiny-llama-target`` / ``tiny-llama-draft`` when present; otherwise (while it is
being trained) a random stand-in of the same family and tokenizer, written with
``models.save_hf`` to a temporary folder: the smoke tests check wiring and the
JSON, not figures.
"""

import importlib.resources
import shutil

import jax

from lookahead_jax import models

BYTE_PAIR = ("tiny-target", "tiny-draft")
LLAMA_PAIR = ("tiny-llama-target", "tiny-llama-draft")


def llama_pair(folder) -> tuple[str, str]:
    """The shipped BPE Llama pair, or a random stand-in saved under ``folder``."""
    if all(name in models.available_pretrained() for name in LLAMA_PAIR):
        return LLAMA_PAIR
    tokenizer = importlib.resources.files("lookahead_jax.models") / "pretrained"
    tokenizer = tokenizer / "tiny-llama-tokenizer"
    names = []
    for seed, (name, layers) in enumerate(zip(LLAMA_PAIR, (2, 1), strict=True)):
        config = models.llama(
            vocab_size=4096,
            num_layers=layers,
            num_heads=2,
            num_kv_heads=1,
            d_model=32,
            mlp_dim=64,
            max_length=256,
            tie_embeddings=True,
        )
        out = folder / name
        models.save_hf(out, config, models.init_params(config, jax.random.key(seed)))
        for file in ("tokenizer.json", "tokenizer_config.json"):
            with importlib.resources.as_file(tokenizer / file) as path:
                shutil.copy(path, out / file)
        names.append(str(out))
    return tuple(names)
