"""Small models for the decoding-strategy tests, all following the ``models.apply`` contract."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models
from tests import helpers


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TableModel:
    """Synthetic logits: ``token_table[token] + position_table[position]`` (a cached "model").

    The next-token logits after a token depend on that token (a bigram model)
    and on its position; the KV cache only tracks each row's length, so caches
    are gathered, rewound and extended exactly like a transformer's.
    """

    config: models.TransformerConfig = dataclasses.field(metadata={"static": True})
    token_table: jax.Array  # [V, V]
    position_table: jax.Array  # [T, V]

    @classmethod
    def create(cls, token_table, position_table) -> TableModel:
        token_table = jnp.asarray(token_table, jnp.float32)
        position_table = jnp.asarray(position_table, jnp.float32)
        vocab, length = token_table.shape[0], position_table.shape[0]
        config = models.TransformerConfig(
            vocab_size=vocab, num_layers=1, num_heads=1, d_model=2, max_length=length
        )
        return cls(config, token_table, position_table)

    def __call__(self, tokens, cache=None, **kwargs):
        batch, num_new = tokens.shape
        start = jnp.zeros((batch,), jnp.int32) if cache is None else cache.lengths
        positions = jnp.clip(start[:, None] + jnp.arange(num_new), 0, self.config.max_length - 1)
        logits = self.token_table[tokens] + self.position_table[positions]
        if kwargs.get("logits_at") is not None:  # the model protocol: logits only there
            logits = jnp.take_along_axis(logits, kwargs["logits_at"][..., None], axis=1)
        if kwargs.get("defer_write"):  # the model protocol: the new entries, cache unwritten
            layers, _, _, heads, dim = cache.keys.shape
            zeros = jnp.zeros((layers, batch, num_new, heads, dim), cache.keys.dtype)
            return logits, models.CacheEntries(keys=zeros, values=zeros)
        if cache is not None:
            cache = cache._replace(lengths=cache.lengths + num_new)
        return logits, cache


TINY = models.TransformerConfig(vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=48)


def tiny_transformer(seed: int = 0, sharpness: float = 1.0) -> models.Model:
    """A random tiny transformer; ``sharpness`` scales the tied embedding (peakier logits)."""
    params = models.init_params(TINY, jax.random.key(seed))
    params = dict(params, wte=params["wte"] * sharpness)
    return models.Model(TINY, params)


def ragged_prompts(vocab: int, batch: int, width: int, seed: int):
    return helpers.ragged_prompts(vocab, batch, width, seed)


@functools.partial(jax.jit, static_argnames=("width",))
def _full_logits(model, padded, width):
    del width
    return model(padded)[0]


def next_logits(model, sequence) -> np.ndarray:
    """The model's logits for the token after ``sequence``: a cache-free forward pass.

    Right padding cannot change earlier logits (causal), so one compiled shape serves all.
    """
    width = model.config.max_length
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(sequence)] = sequence
    return np.asarray(_full_logits(model, jnp.asarray(padded), width)[0, len(sequence) - 1])


def sequence_logits(model, sequence) -> np.ndarray:
    """``[len(sequence), V]`` logits of every next token (position i predicts token i + 1)."""
    width = model.config.max_length
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(sequence)] = sequence
    return np.asarray(_full_logits(model, jnp.asarray(padded), width)[0, : len(sequence)])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def entropy(logits: np.ndarray) -> np.ndarray:
    lp = log_softmax(logits)
    return -(np.exp(lp) * lp).sum(axis=-1)


GREEDY_BATCH, GREEDY_WIDTH, GREEDY_NEW, GREEDY_EOS = 4, 6, 10, 5


@jax.jit
def greedy_reference(model, prompt, lengths):
    """``generate``'s greedy decoding, the reference the strategies reduce to.

    One shape for every test module (``[4, 6]`` prompts, 10 new tokens, EOS 5) and
    any model of the same structure, so it compiles once per test session.
    """
    from lookahead_jax.decoding import generate

    return generate(
        model, prompt, lengths, jax.random.key(0), max_new_tokens=GREEDY_NEW, eos_id=GREEDY_EOS
    )


@jax.jit
def sampling_reference(model, prompt, lengths, key):
    """Four plain-sampling rollouts per prompt (temperature 1), same shapes as
    ``greedy_reference``; rollout 0 is *the* plain sample other strategies reproduce."""
    from lookahead_jax.decoding import sample_rollouts

    return sample_rollouts(
        model,
        prompt,
        lengths,
        key,
        max_new_tokens=GREEDY_NEW,
        num_rollouts=4,
        eos_id=GREEDY_EOS,
    )


# ----------------------------------------------------------------------------- contract checks


@functools.cache
def contract_model(seed: int = 0, scale: float = 2.0) -> TableModel:
    """A random bigram ``TableModel`` shaped like ``TINY``: cheap to compile, for the
    contract tests (step loop == run, no retrace, value checks)."""
    rng = np.random.default_rng(seed)
    return TableModel.create(
        scale * rng.standard_normal((TINY.vocab_size, TINY.vocab_size)),
        0.1 * rng.standard_normal((TINY.max_length, TINY.vocab_size)),
    )


def assert_step_loop_equals_run(
    init, step, result, run, running, key, model, prompt, lengths, config
):
    """A Python loop of ``step`` (jitted, traced once) from ``init`` equals ``run`` (traced once).

    ``running(state)`` says whether the loop goes on. Returns ``(the steps' infos, run's output)``.
    """
    chex.clear_trace_counter()
    step_jit = jax.jit(chex.assert_max_traces(step, n=1), static_argnames=("config",))
    run_jit = jax.jit(chex.assert_max_traces(run, n=1), static_argnames=("config",))
    state = jax.jit(init, static_argnames=("config",))(model, prompt, lengths, config=config)
    infos = []
    while bool(running(state)):
        state, info = step_jit(key, state, model, config=config)
        infos.append(info)
    steps = len(infos)
    expected = run_jit(key, model, prompt, lengths, config=config)
    # Same shapes, another key: no retrace of either entry point.
    run_jit(jax.random.key(99), model, prompt, lengths, config=config)
    if steps:
        step_jit(jax.random.key(99), state, model, config=config)
    chex.assert_trees_all_close(result(state, config), expected, rtol=1e-5, atol=1e-6)
    return infos, expected


def assert_prompt_value_checks(init, model, prompt, lengths, config):
    """Token ids outside the vocabulary and prompt lengths outside [1, width] raise a
    ``ValueError`` eagerly and under ``lookahead_jax.checked`` (where ``jit`` hides them)."""
    import lookahead_jax

    vocab, width = model.config.vocab_size, prompt.shape[1]
    checked_init = lookahead_jax.checked(init, static_argnames=("config",))
    checked_init(model, prompt, lengths, config=config)  # good inputs pass
    cases = [
        (prompt.at[0, 0].set(vocab), lengths, rf"`prompt` must lie in \[0, {vocab}\)"),
        (prompt.at[0, 0].set(-1), lengths, r"`prompt` must lie in"),
        (prompt, lengths.at[0].set(0), rf"`prompt_lengths` must lie in \[1, {width + 1}\)"),
        (prompt, lengths.at[0].set(width + 1), r"`prompt_lengths` must lie in"),
    ]
    for bad_prompt, bad_lengths, match in cases:
        with pytest.raises(ValueError, match=match):
            init(model, bad_prompt, bad_lengths, config)
        with pytest.raises(ValueError, match=match):
            checked_init(model, bad_prompt, bad_lengths, config=config)
