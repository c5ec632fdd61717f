"""bfloat16 parameters and caches: dtypes flow through, logits stay float32, and greedy
speculative decoding equals greedy decoding token for token in exact mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from tests.helpers import perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

TARGET = models.llama(
    vocab_size=32, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, mlp_dim=48,
    max_length=64, tie_embeddings=True,
)  # fmt: skip
DRAFT = models.llama(
    vocab_size=32, num_layers=1, num_heads=2, num_kv_heads=1, d_model=16, mlp_dim=32,
    max_length=64, tie_embeddings=True,
)  # fmt: skip


def _bf16(config, seed):
    params = perturbed(models.init_params(config, jax.random.key(seed)), 0.3, seed + 1)
    return models.Model(config, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


@pytest.fixture(scope="module")
def pair():
    return _bf16(TARGET, 0), _bf16(DRAFT, 2)


def test_dtypes_flow_through(pair):
    target, _ = pair
    assert target.dtype == jnp.bfloat16
    cache = models.init_cache(TARGET, 2, 16, dtype=target.dtype)
    tokens = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    logits, cache = jax.jit(lambda m, t, c: m(t, c))(target, tokens, cache)
    assert logits.dtype == jnp.float32  # logits in float32 whatever the parameters' dtype
    assert cache.keys.dtype == jnp.bfloat16 and cache.values.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(logits)))


@jax.jit
def _plain(target, prompt, lengths):
    return generate(target, prompt, lengths, jax.random.key(0), max_new_tokens=12, exact=True)


@jax.jit
def _speculative(target, draft, prompt, lengths):
    return generate(
        target, prompt, lengths, jax.random.key(0), max_new_tokens=12, exact=True,
        drafter=drafting.draft_model(draft), max_draft_tokens=3,
        controller=ALWAYS_DRAFT,
    )  # fmt: skip


def test_bfloat16_greedy_speculative_equals_greedy_in_exact_mode(pair):
    target, draft = pair
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, 32, (3, 5)), jnp.int32)
    lengths = jnp.asarray([5, 2, 4], jnp.int32)
    plain = _plain(target, prompt, lengths)
    speculative = _speculative(target, draft, prompt, lengths)
    np.testing.assert_array_equal(speculative.tokens, plain.tokens)
    np.testing.assert_array_equal(speculative.lengths, plain.lengths)
    assert int(speculative.stats.accepted.sum()) > 0  # the draft really drafted


# Gemma 2 exercises every switch exact mode must keep shape-independent: rotary tables,
# (1 + w) norms, soft-caps, sandwich norms and a sliding window shorter than the text.
GEMMA = models.gemma2(
    vocab_size=32, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, head_dim=8,
    mlp_dim=48, max_length=32, sliding_window=4, attn_logit_softcap=5.0,
    final_logit_softcap=3.0,
)  # fmt: skip


@jax.jit
def _exact(model, tokens, cache):
    return model(tokens, cache, exact=True)


@jax.jit
def _fast(model, tokens, cache):
    return model(tokens, cache)


def test_exact_mode_is_width_independent_for_every_switch():
    model = models.Model(GEMMA, perturbed(models.init_params(GEMMA, jax.random.key(5)), 0.3, 6))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 12)), jnp.int32)
    cache = models.init_cache(GEMMA, 2, 16)
    _, cache = _exact(model, tokens[:, :7], cache)
    together, _ = _exact(model, tokens[:, 7:12], cache)
    step_cache, one_by_one = cache, []
    for i in range(7, 12):
        logits, step_cache = _exact(model, tokens[:, i : i + 1], step_cache)
        one_by_one.append(logits)
    np.testing.assert_array_equal(together, jnp.concatenate(one_by_one, axis=1))
    fast, _ = _fast(model, tokens[:, 7:12], cache)
    np.testing.assert_allclose(together, fast, atol=2e-5)
