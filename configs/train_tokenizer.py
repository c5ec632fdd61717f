"""Config of experiments/train_tokenizer.py: a byte-level BPE tokenizer on the shipped corpus.

The defaults make the shipped ``tiny-llama`` tokenizer
(``lookahead_jax/models/pretrained/tiny-llama-tokenizer``); any field can be
overridden, e.g. ``--config.vocab_size=1024 --config.max_train_documents=500``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "tiny-llama-tokenizer"  # recorded in training.json

    # Vocabulary: the 256 byte symbols, the special tokens (ids 0, 1, 2, in this
    # order) and the learned merges, vocab_size in all.
    config.vocab_size = 4096
    config.bos_token = "<|bos|>"
    config.eos_token = "<|eos|>"
    config.pad_token = "<|pad|>"
    config.min_frequency = 2  # a pair is merged only if it occurs at least this often

    # Data: documents of the shipped corpus (lookahead_jax.data), in file order.
    config.max_train_documents = 0  # 0: every training document
    config.max_heldout_documents = 0  # 0: every held-out document (bytes per token)

    # What tokenizer_config.json says (transformers reads it).
    config.add_bos_token = True  # the post-processor prepends bos_token when True
    config.model_max_length = 256  # the context of the shipped tiny models
    config.workdir = ""  # output directory; the --workdir flag takes precedence
    return config
