"""Everything runs on both shipped pairs: the byte-level GPT-2 pair and the BPE Llama pair.

Every drafter under greedy verification equals plain greedy decoding token for token
on ragged, tokenized prompts; speculative sampling, every decoding strategy and the
language-model particle filter run on each pair's real tokenizer and return
well-formed, finite results. Small budgets: these prove wiring across model
families (rotary positions, grouped-query caches, untied or tied heads), not quality.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import decoding, drafting, models
from lookahead_jax.particles import lm_particle_filter
from lookahead_jax.sampling import Sampling

PAIRS = {
    "byte-gpt2": ("tiny-target", "tiny-draft"),
    "bpe-llama": ("tiny-llama-target", "tiny-llama-draft"),
}
TEXTS = ["The return value is", "import os\n", "Raise an error if the"]
MAX_NEW = 10


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request):
    target_name, draft_name = PAIRS[request.param]
    target = models.Model(*models.load_pretrained(target_name))
    draft = models.Model(*models.load_pretrained(draft_name))
    tokenizer = models.load_tokenizer(target_name)
    assert tokenizer.vocab_size <= target.config.vocab_size == draft.config.vocab_size
    prompt, lengths = tokenizer.encode(TEXTS)
    return request.param, target, draft, tokenizer, prompt, lengths


def _drafter(name, target, draft):
    vocab = target.config.vocab_size
    return {
        "draft_model": lambda: drafting.draft_model(draft),
        "prompt_lookup": lambda: drafting.prompt_lookup(vocab),
        "early_exit": lambda: drafting.early_exit(target, 1),
        "token_recycling": lambda: drafting.token_recycling(vocab),
        "stochastic_ngram": lambda: drafting.stochastic_ngram(vocab),
        "draft_model_tree": lambda: drafting.draft_model_tree(draft),
    }[name]()


DRAFTERS = (
    "draft_model",
    "prompt_lookup",
    "early_exit",
    "token_recycling",
    "stochastic_ngram",
    "draft_model_tree",
)


@functools.partial(jax.jit, static_argnames=("name", "sampling"))
def _generate(target, draft, prompt, lengths, key, name=None, sampling=Sampling()):
    drafter = None if name is None else _drafter(name, target, draft)
    return decoding.generate(
        target, prompt, lengths, key, max_new_tokens=MAX_NEW, sampling=sampling,
        drafter=drafter, max_draft_tokens=3,
    )  # fmt: skip


def test_every_drafter_equals_plain_greedy(pair):
    _, target, draft, tokenizer, prompt, lengths = pair
    key = jax.random.key(0)
    plain = _generate(target, draft, prompt, lengths, key)
    for name in DRAFTERS:
        out = _generate(target, draft, prompt, lengths, key, name=name)
        np.testing.assert_array_equal(out.tokens, plain.tokens, err_msg=name)
        assert np.all(out.stats.accepted <= out.stats.drafted), name
    texts = tokenizer.decode(plain.tokens, plain.lengths)
    assert all(t.startswith(p) for t, p in zip(texts, TEXTS, strict=True))


def test_speculative_sampling_runs(pair):
    _, target, draft, _, prompt, lengths = pair
    out = _generate(
        target, draft, prompt, lengths, jax.random.key(1), name="draft_model",
        sampling=Sampling(temperature=1.0),
    )  # fmt: skip
    np.testing.assert_array_equal(out.lengths, lengths + MAX_NEW)
    assert int(out.stats.target_calls.max()) <= MAX_NEW


def _stop_ids(tokenizer):
    """Ids of the tokens that end a sentence or a line, for the strategies' stop sets."""
    ids = set()
    for text in (".", "\n", ":", ","):
        ids.update(tokenizer.encode([text], add_bos=False)[0][0, :1].tolist())
    return tuple(sorted(ids))


def test_every_decoding_strategy_runs(pair):
    _, target, _, tokenizer, prompt, lengths = pair
    key = jax.random.key(2)
    stops = _stop_ids(tokenizer)
    eos = stops[0]
    outs = {
        "cntp": jax.jit(
            lambda m, p, n, k: decoding.cntp(
                m,
                p,
                n,
                k,
                max_new_tokens=MAX_NEW,
                params=decoding.CNTPParams(max_trials=2, max_segment_tokens=4, stop_tokens=stops),
            )
        )(target, prompt, lengths, key),
        "adadec": jax.jit(
            lambda m, p, n: decoding.adadec(
                m,
                p,
                n,
                max_new_tokens=MAX_NEW,
                params=decoding.AdaDecParams(threshold=1.0, lookahead_steps=2),
            )
        )(target, prompt, lengths),
        "latr": jax.jit(
            lambda m, p, n, k: decoding.latr(
                m, p, n, k, max_new_tokens=MAX_NEW, params=decoding.LATRParams(num_rollouts=2)
            )
        )(target, prompt, lengths, key),
        "first_finish": jax.jit(
            lambda m, p, n, k: decoding.first_finish(
                m, p, n, k, max_new_tokens=MAX_NEW, num_samples=2, eos_id=eos
            )
        )(target, prompt, lengths, key),
        "momentum": jax.jit(
            lambda m, p, n: decoding.momentum_decoding(m, p, n, max_new_tokens=MAX_NEW)
        )(target, prompt, lengths),
    }
    for name, out in outs.items():
        tokens = np.asarray(out.tokens)
        assert tokens.min() >= 0 and tokens.max() < target.config.vocab_size, name
        for leaf in jax.tree.leaves(out):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert np.all(np.isfinite(np.asarray(leaf)) | np.isinf(np.asarray(leaf))), name


def test_language_model_particle_filter_runs(pair):
    _, target, _, tokenizer, prompt, lengths = pair
    delimiter, end = _stop_ids(tokenizer)[:2]

    def reward(tokens, token_lengths):  # prefers shorter steps: any jit-able reward will do
        return 1.0 / (1.0 + token_lengths.astype(jnp.float32) / 10.0)

    run = jax.jit(
        lambda key, model, p, n: lm_particle_filter(
            key,
            model,
            p,
            n,
            reward,
            num_particles=4,
            max_steps=2,
            max_step_tokens=4,
            delimiter_id=delimiter,
            end_id=end,
        )
    )
    result = run(jax.random.key(3), target, prompt[0], lengths[0])
    assert 0 <= int(result.best) < 4
    assert np.all(np.isfinite(np.asarray(result.history.ess)))
