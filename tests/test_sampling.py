"""Sampling utilities: greedy, temperature, top-k and top-p distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax.sampling import Sampling, log_probs, sample

LOGITS = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))


def test_greedy_is_one_hot_on_argmax():
    probs = np.exp(log_probs(LOGITS, Sampling()))
    np.testing.assert_array_equal(probs, [[0, 1, 0, 0]])
    assert int(sample(jax.random.key(0), LOGITS, Sampling())[0]) == 1


def test_temperature_top_k_top_p():
    np.testing.assert_allclose(
        np.exp(log_probs(LOGITS, Sampling(1.0))), [[0.1, 0.4, 0.2, 0.3]], atol=1e-6
    )
    np.testing.assert_allclose(
        np.exp(log_probs(LOGITS, Sampling(1.0, top_k=2))), [[0, 4 / 7, 0, 3 / 7]], atol=1e-6
    )
    # Mass before each sorted token: 0.4 -> 0, 0.3 -> 0.4, 0.2 -> 0.7: top_p=0.7 keeps two.
    np.testing.assert_allclose(
        np.exp(log_probs(LOGITS, Sampling(1.0, top_p=0.7))), [[0, 4 / 7, 0, 3 / 7]], atol=1e-6
    )
    squared = np.array([0.01, 0.16, 0.04, 0.09]) / 0.3
    np.testing.assert_allclose(np.exp(log_probs(LOGITS, Sampling(0.5))), [squared], atol=1e-6)


def test_sample_frequencies_match_distribution():
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = jax.vmap(lambda k: sample(k, LOGITS[0], Sampling(1.0, top_k=3)))(keys)
    freq = np.bincount(np.asarray(draws), minlength=4) / draws.size
    np.testing.assert_allclose(freq, [0, 4 / 9, 2 / 9, 3 / 9], atol=0.015)


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 1.5}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)
