"""The shipped byte-level corpus: splits, batching and held-out prompts."""

import numpy as np
import pytest

from lookahead_jax.data import (
    batch_for_step,
    documents,
    eval_windows,
    heldout_prompts,
    load_corpus,
    sample_batch,
)

_WHITESPACE = b" \n\t"


def test_splits_load_as_bytes():
    train, heldout = load_corpus("train"), load_corpus()
    assert heldout.dtype == np.uint8 and train.dtype == np.uint8
    heldout = load_corpus("heldout")
    assert train.ndim == 1 and train.shape[0] > 1_500_000
    assert 50_000 < heldout.shape[0] < train.shape[0] // 10
    # UTF-8 English prose: decodes, and is mostly ASCII.
    assert bytes(heldout).decode("utf-8")
    assert np.mean(train < 128) > 0.99


def test_splits_are_disjoint_by_document():
    train, heldout = documents("train"), documents("heldout")
    assert len(train) > 1000 and len(heldout) > 50
    assert not set(train) & set(heldout)
    assert all(b"\n\n" not in doc for doc in heldout)


@pytest.mark.parametrize("fn", [load_corpus, documents])
def test_unknown_split_raises(fn):
    with pytest.raises(ValueError, match="split"):
        fn("validation")


def test_heldout_prompts_are_ragged_word_aligned_heldout_text():
    num, length = 16, 48
    prompts, lengths = heldout_prompts(num, length, seed=3)
    assert prompts.shape == (num, length) and prompts.dtype == np.int32
    assert lengths.shape == (num,) and lengths.dtype == np.int32
    assert np.all((lengths >= 1) & (lengths <= length))
    assert len(set(lengths.tolist())) > 1  # ragged
    assert np.all((prompts >= 0) & (prompts < 256))
    raw = bytes(load_corpus("heldout"))
    for row, n in zip(prompts, lengths, strict=True):
        assert np.all(row[n:] == 0)  # zero padding after the prompt
        text = bytes(row[:n].astype(np.uint8))
        assert text[:1] not in (b" ", b"\n") and text[-1:] not in (b" ", b"\n")
        # Cut at word boundaries: the held-out text continues with whitespace.
        assert any(text + bytes([c]) in raw for c in _WHITESPACE)
    again, _ = heldout_prompts(num, length, seed=3)
    np.testing.assert_array_equal(prompts, again)


def test_batches_are_a_pure_function_of_seed_and_step():
    data = load_corpus("train")
    batch = batch_for_step(data, seed=0, step=5, batch_size=3, seq_len=16)
    assert batch.shape == (3, 17) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, batch_for_step(data, 0, 5, 3, 16))
    assert not np.array_equal(batch, batch_for_step(data, 0, 6, 3, 16))
    assert not np.array_equal(batch, batch_for_step(data, 1, 5, 3, 16))
    np.testing.assert_array_equal(
        sample_batch(np.random.default_rng(7), data, 2, 8), sample_batch(7, data, 2, 8)
    )
    with pytest.raises(ValueError, match="seq_len"):
        sample_batch(0, data[:5], 1, 8)


def test_eval_windows_are_consecutive():
    data = load_corpus("heldout")
    windows = eval_windows(data, seq_len=31)
    assert windows.shape == (data.shape[0] // 32, 32)
    np.testing.assert_array_equal(windows[1], data[32:64])
    assert eval_windows(data, seq_len=31, max_windows=4).shape == (4, 32)
