"""Autoregressive generation: equals a naive greedy loop, per-row EOS and budget, sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models, sharding
from lookahead_jax.decoding import generate
from lookahead_jax.sampling import Sampling

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=32
)
MAX_NEW = 9


@pytest.fixture(scope="module")
def target():
    return models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(0)))


@functools.partial(jax.jit, static_argnames=("sampling", "eos_id"))
def run(target, prompt, prompt_lengths, key, sampling=Sampling(), eos_id=None):
    return generate(
        target,
        prompt,
        prompt_lengths,
        key,
        max_new_tokens=MAX_NEW,
        sampling=sampling,
        eos_id=eos_id,
    )


@jax.jit
def full_logits(target, padded):
    return target(padded)[0]


def naive_greedy(target, prompt_row, max_new, eos_id):
    """A full forward pass per step and argmax: the definition of greedy decoding."""
    sequence = list(prompt_row)
    for _ in range(max_new):
        # Right padding cannot change earlier logits (causal), so one compiled shape serves all.
        padded = jnp.asarray([sequence + [0] * (CONFIG.max_length - len(sequence))], jnp.int32)
        token = int(jnp.argmax(full_logits(target, padded)[0, len(sequence) - 1]))
        sequence.append(token)
        if token == eos_id:
            break
    return sequence


def ragged_prompts(batch, width, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, batch)
    lengths[0] = width
    prompt = rng.integers(0, CONFIG.vocab_size, (batch, width))
    return jnp.asarray(prompt, jnp.int32), jnp.asarray(lengths, jnp.int32)


@pytest.mark.parametrize("eos_id", [None, 3])
def test_greedy_equals_naive_loop_on_ragged_batch(target, eos_id):
    prompt, lengths = ragged_prompts(4, 6, seed=1)
    out = run(target, prompt, lengths, jax.random.key(0), eos_id=eos_id)
    for row in range(4):
        expected = naive_greedy(target, np.asarray(prompt[row, : lengths[row]]), MAX_NEW, eos_id)
        length = int(out.lengths[row])
        assert out.tokens[row, :length].tolist() == expected
        assert np.all(np.asarray(out.tokens[row, length:]) == 0)
        assert int(out.num_generated[row]) == len(expected) - int(lengths[row])
        assert int(out.stats.target_calls[row]) == int(out.num_generated[row])
    np.testing.assert_array_equal(out.stats.drafted, 0)


def test_eos_stops_rows_independently(target):
    prompt, lengths = ragged_prompts(4, 6, seed=2)
    free = run(target, prompt, lengths, jax.random.key(0))
    # Make the third generated token of row 1 the EOS id: that row must stop there.
    eos = int(free.tokens[1, int(lengths[1]) + 2])
    stopped = run(target, prompt, lengths, jax.random.key(0), eos_id=eos)
    assert int(stopped.num_generated[1]) <= 3
    assert int(stopped.tokens[1, stopped.lengths[1] - 1]) == eos


def test_sampling_is_reproducible_and_uses_key(target):
    prompt, lengths = ragged_prompts(4, 5, seed=3)
    sampling = Sampling(temperature=1.0, top_k=8)
    a = run(target, prompt, lengths, jax.random.key(1), sampling=sampling)
    b = run(target, prompt, lengths, jax.random.key(1), sampling=sampling)
    c = run(target, prompt, lengths, jax.random.key(2), sampling=sampling)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    np.testing.assert_array_equal(a.num_generated, MAX_NEW)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.8, top_p=0.9)])
def test_sharded_batch_equals_single_device(target, sampling):
    prompt, lengths = ragged_prompts(8, 6, seed=4)
    key = jax.random.key(5)
    single = run(target, prompt, lengths, key, sampling=sampling)
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    sharded_prompt, sharded_lengths = sharding.shard((prompt, lengths), mesh)
    sharded = run(
        sharding.replicate(target, mesh), sharded_prompt, sharded_lengths, key, sampling=sampling
    )
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)


def test_bad_prompt_raises(target):
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(
            target,
            jnp.zeros((2, 4), jnp.int32),
            jnp.array([0, 4]),
            jax.random.key(0),
            max_new_tokens=2,
        )
    with pytest.raises(ValueError, match="max_length"):
        generate(
            target,
            jnp.zeros((1, 30), jnp.int32),
            jnp.array([3]),
            jax.random.key(0),
            max_new_tokens=5,
        )
