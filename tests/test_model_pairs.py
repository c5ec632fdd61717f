"""Everything runs on both shipped pairs: the byte-level GPT-2 pair and the BPE Llama pair.

Every drafter under greedy verification equals plain greedy decoding token for token
on ragged, tokenized prompts; speculative sampling, every decoding strategy and the
language-model particle filter run on each pair's real tokenizer and return
well-formed, finite results. Small budgets: these prove wiring across model
families (rotary positions, grouped-query caches, untied or tied heads), not quality.

Each law runs in the fast tier on one representative (pair, drafter or strategy) per
pair; the full cross product is the slow tier (``pytest -m slow``). Every drafter's and
every strategy's own laws are tested on small models in ``tests/drafting`` and
``tests/decoding``; what this file adds is the real checkpoints and tokenizers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import decoding, drafting, models
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.particles import lm_particle_filter
from lookahead_jax.sampling import Sampling

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

PAIRS = {
    "byte-gpt2": ("tiny-target", "tiny-draft"),
    "bpe-llama": ("tiny-llama-target", "tiny-llama-draft"),
}
TEXTS = ["The return value is", "import os\n", "Raise an error if the"]
MAX_NEW = 10


@functools.cache
def _pair(name):
    """``(name, target, draft, tokenizer, prompt, lengths)``, loaded once per session."""
    target_name, draft_name = PAIRS[name]
    target = models.Model(*models.load_pretrained(target_name))
    draft = models.Model(*models.load_pretrained(draft_name))
    tokenizer = models.load_tokenizer(target_name)
    assert tokenizer.vocab_size <= target.config.vocab_size == draft.config.vocab_size
    prompt, lengths = tokenizer.encode(TEXTS)
    return name, target, draft, tokenizer, prompt, lengths


def _cases(names, fast):
    """``(pair, name)`` for every pair and name; only the ``fast`` ones in the fast tier."""
    return [
        pytest.param(pair, name, marks=() if (pair, name) in fast else pytest.mark.slow)
        for pair in sorted(PAIRS)
        for name in names
    ]


def _drafter(name, target, draft):
    vocab = target.config.vocab_size
    return {
        "draft_model": lambda: drafting.draft_model(draft),
        "prompt_lookup": lambda: drafting.prompt_lookup(vocab),
        "early_exit": lambda: drafting.early_exit(target, 1),
        "token_recycling": lambda: drafting.token_recycling(vocab),
        "stochastic_ngram": lambda: drafting.stochastic_ngram(vocab),
        "draft_model_tree": lambda: drafting.draft_model_tree(draft),
        "lookahead": lambda: drafting.lookahead(vocab),
        "trie_retrieval": lambda: drafting.trie_retrieval(vocab),
        "suffix_decoding": lambda: drafting.suffix_decoding(vocab),
    }[name]()


DRAFTERS = (
    "draft_model",
    "prompt_lookup",
    "early_exit",
    "token_recycling",
    "stochastic_ngram",
    "draft_model_tree",
    "lookahead",
    "trie_retrieval",
    "suffix_decoding",
)


@functools.partial(jax.jit, static_argnames=("name", "sampling"))
def _generate(target, draft, prompt, lengths, key, name=None, sampling=Sampling()):
    drafter = None if name is None else _drafter(name, target, draft)
    return decoding.generate(
        target, prompt, lengths, key, max_new_tokens=MAX_NEW, sampling=sampling,
        drafter=drafter, max_draft_tokens=3,
        controller=ALWAYS_DRAFT,
    )  # fmt: skip


@functools.cache
def _plain_greedy(pair_name):
    _, target, draft, _, prompt, lengths = _pair(pair_name)
    return _generate(target, draft, prompt, lengths, jax.random.key(0))


# The draft-model drafter on both pairs (the drafter that crosses model families); the
# other drafters on real pairs, tree drafters included, are slow-tier (their compiles
# dominate; tree attention across families is covered by tests/models/test_families_cache).
FAST_DRAFTERS = {("byte-gpt2", "draft_model"), ("bpe-llama", "draft_model")}


@pytest.mark.parametrize(("pair_name", "name"), _cases(DRAFTERS, FAST_DRAFTERS))
def test_every_drafter_equals_plain_greedy(pair_name, name):
    _, target, draft, tokenizer, prompt, lengths = _pair(pair_name)
    plain = _plain_greedy(pair_name)
    out = _generate(target, draft, prompt, lengths, jax.random.key(0), name=name)
    np.testing.assert_array_equal(out.tokens, plain.tokens, err_msg=name)
    assert np.all(out.stats.accepted <= out.stats.drafted), name
    texts = tokenizer.decode(plain.tokens, plain.lengths)
    assert all(t.startswith(p) for t, p in zip(texts, TEXTS, strict=True))


@pytest.mark.parametrize(
    "pair_name", ["byte-gpt2", pytest.param("bpe-llama", marks=pytest.mark.slow)]
)
def test_speculative_sampling_runs(pair_name):
    _, target, draft, _, prompt, lengths = _pair(pair_name)
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


def _run_strategy(name, target, prompt, lengths, key, stops):
    """Strategy ``name`` under ``jit`` on the pair's target, with small budgets."""
    cntp = decoding.CNTPParams(max_trials=2, max_segment_tokens=4, stop_tokens=stops)
    runs = {
        "cntp": lambda m, p, n, k: decoding.cntp(m, p, n, k, max_new_tokens=MAX_NEW, params=cntp),
        "adadec": lambda m, p, n, k: decoding.adadec(
            m, p, n, max_new_tokens=MAX_NEW,
            params=decoding.AdaDecParams(threshold=1.0, lookahead_steps=2),
        ),
        "latr": lambda m, p, n, k: decoding.latr(
            m, p, n, k, max_new_tokens=MAX_NEW, params=decoding.LATRParams(num_rollouts=2)
        ),
        "first_finish": lambda m, p, n, k: decoding.first_finish(
            m, p, n, k, max_new_tokens=MAX_NEW, num_samples=2, eos_id=stops[0]
        ),
        "momentum": lambda m, p, n, k: decoding.momentum_decoding(
            m, p, n, max_new_tokens=MAX_NEW
        ),
    }  # fmt: skip
    return jax.jit(runs[name])(target, prompt, lengths, key)


STRATEGIES = ("cntp", "adadec", "latr", "first_finish", "momentum")
# CNTP uses the tokenizer's stop ids and resamples segments: the most wiring of the five.
FAST_STRATEGIES = {("bpe-llama", "cntp"), ("byte-gpt2", "latr")}


@pytest.mark.parametrize(("pair_name", "name"), _cases(STRATEGIES, FAST_STRATEGIES))
def test_every_decoding_strategy_runs(pair_name, name):
    _, target, _, tokenizer, prompt, lengths = _pair(pair_name)
    out = _run_strategy(name, target, prompt, lengths, jax.random.key(2), _stop_ids(tokenizer))
    tokens = np.asarray(out.tokens)
    assert tokens.min() >= 0 and tokens.max() < target.config.vocab_size, name
    for leaf in jax.tree.leaves(out):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert not np.any(np.isnan(np.asarray(leaf))), name


@pytest.mark.parametrize(
    "pair_name", ["bpe-llama", pytest.param("byte-gpt2", marks=pytest.mark.slow)]
)
def test_language_model_particle_filter_runs(pair_name):
    _, target, _, tokenizer, prompt, lengths = _pair(pair_name)
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
