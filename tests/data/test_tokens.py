"""The corpus in tokenizer ids: byte-exact streams, windows and prompts for both tokenizers."""

import numpy as np

from lookahead_jax import data, models


def test_bpe_stream_spells_every_byte_once_and_byte_stream_is_the_corpus():
    bpe = models.load_tokenizer("tiny-llama")
    stream = data.token_stream(bpe, "heldout")
    docs = data.documents("heldout")
    assert int(bpe.token_bytes()[stream].sum()) == sum(len(d) for d in docs)
    assert stream[0] == bpe.bos_id and int(np.sum(stream == bpe.bos_id)) == len(docs)
    first = int(np.flatnonzero(stream == bpe.eos_id)[0])  # [BOS] doc [EOS]
    assert bpe.decode(stream[None, 1:first], [first - 1])[0] == docs[0].decode()
    byte = models.load_tokenizer("bytes")
    np.testing.assert_array_equal(data.token_stream(byte, "heldout"), data.load_corpus("heldout"))


def test_windows_and_prompts():
    bpe = models.load_tokenizer("tiny-llama")
    windows = data.token_windows(bpe, 32, 4)
    assert windows.shape == (4, 33) and windows.dtype == np.int32
    prompts, lengths = data.token_prompts(bpe, 3, 48, width=20)
    assert prompts.shape == (3, 20) and np.all(np.asarray(lengths) <= 20)
    texts = bpe.decode(prompts, lengths)
    byte_prompts, byte_lengths = data.heldout_prompts(3, 48)
    for text, row, n in zip(texts, np.asarray(byte_prompts), np.asarray(byte_lengths), strict=True):
        assert text == bytes(row[:n].tolist()).decode("utf-8", errors="ignore")
    byte = models.load_tokenizer("bytes")
    same = data.token_prompts(byte, 3, 48)
    np.testing.assert_array_equal(same[0], byte_prompts)
    np.testing.assert_array_equal(same[1], byte_lengths)


def test_bits_per_byte_divides_by_spelled_bytes():
    bpe = models.load_tokenizer("tiny-llama")
    config = models.llama(vocab_size=4096, num_layers=1, num_heads=2, d_model=16, max_length=64)
    import jax

    model = models.Model(config, models.init_params(config, jax.random.key(0)))
    windows = data.token_windows(bpe, 16, 2)
    per_token = models.bits_per_byte(model, windows)
    per_byte = models.bits_per_byte(model, windows, token_bytes=bpe.token_bytes())
    spelled = bpe.token_bytes()[windows[:, 1:]].sum()
    np.testing.assert_allclose(per_byte, per_token * windows[:, 1:].size / spelled, rtol=1e-6)
