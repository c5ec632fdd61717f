"""Prompt lookup finds the continuation of the longest, first or most recent, earlier n-gram."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax import drafting

# One compiled program per (batch, settings): called eagerly, every operation of the search
# would compile on its own for each batch size hypothesis draws.
find_continuation = jax.jit(
    drafting.find_continuation, static_argnames=("max_ngram", "min_ngram", "match", "max_draft")
)


def reference(sequence, max_ngram, min_ngram, match, k):
    """Plain Python definition: longest n first; among matches, first or last start."""
    length = len(sequence)
    for n in range(max_ngram, min_ngram - 1, -1):
        if length < n + 1:
            continue
        suffix = sequence[length - n :]
        starts = [j for j in range(length - n) if sequence[j : j + n] == suffix]
        if starts:
            j = starts[0] if match == "first" else starts[-1]
            continuation = sequence[j + n : j + n + k]
            return continuation, len(continuation)
    return [], 0


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=14), min_size=1, max_size=3),
    match=st.sampled_from(["first", "last"]),
    max_ngram=st.integers(1, 3),
)
def test_matches_python_definition(rows, match, max_ngram):
    width, k = 16, 4
    tokens = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        tokens[i, len(row) :] = 3  # junk past the length must never be read as context
    lengths = jnp.asarray([len(r) for r in rows], jnp.int32)
    draft, available = jax.device_get(
        find_continuation(
            jnp.asarray(tokens), lengths, max_ngram=max_ngram, min_ngram=1, match=match, max_draft=k
        )
    )
    for i, row in enumerate(rows):
        expected, count = reference(row, max_ngram, 1, match, k)
        assert int(available[i]) == count
        assert np.asarray(draft[i, :count]).tolist() == expected


def test_first_and_last_rules_differ():
    sequence = [1, 2, 7, 9, 1, 2, 5, 0, 1, 2]
    tokens = jnp.asarray([sequence + [0] * 6], jnp.int32)
    args = dict(max_ngram=2, min_ngram=1, max_draft=3)
    first, _ = find_continuation(tokens, jnp.asarray([10]), match="first", **args)
    last, _ = find_continuation(tokens, jnp.asarray([10]), match="last", **args)
    assert first[0].tolist() == [7, 9, 1] and last[0].tolist() == [5, 0, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="match"):
        drafting.prompt_lookup(8, match="middle")
    with pytest.raises(ValueError, match="min_ngram"):
        drafting.prompt_lookup(8, max_ngram=1, min_ngram=2)
