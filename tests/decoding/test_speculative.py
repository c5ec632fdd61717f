"""Speculative generation: lossless greedy and sampling, ragged batches, drafters, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import drafting, models, sharding
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.sampling import Sampling
from tests import helpers
from tests.helpers import continuation_codes, exact_continuation_law, perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=48
)
DRAFT_CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=1, num_heads=2, d_model=16, max_length=48
)
MAX_NEW = 12


@pytest.fixture(scope="module")
def target():
    # Larger-than-default weights give peaked next-token distributions, as trained models have.
    return models.Model(CONFIG, perturbed(models.init_params(CONFIG, jax.random.key(0)), 0.3, 1))


@pytest.fixture(scope="module")
def drafts(target):
    """Drafters with every acceptance regime: none, partial, full."""
    return {
        "random": models.Model(DRAFT_CONFIG, models.init_params(DRAFT_CONFIG, jax.random.key(7))),
        "noisy": models.Model(CONFIG, perturbed(target.params, 0.05, 2)),
        "self": target,
    }


@functools.partial(
    jax.jit, static_argnames=("kind", "k", "sampling", "eos_id", "controller", "max_new")
)
def run(
    target,
    draft,
    prompt,
    lengths,
    key,
    kind,
    k=3,
    sampling=Sampling(),
    eos_id=None,
    controller=None,
    max_new=MAX_NEW,
):
    if kind == "ar":
        drafter = None
    elif kind == "model":
        drafter = drafting.draft_model(draft)
    else:
        drafter = drafting.prompt_lookup(CONFIG.vocab_size, max_ngram=3, match=kind)
    return generate(
        target,
        prompt,
        lengths,
        key,
        max_new_tokens=max_new,
        sampling=sampling,
        drafter=drafter,
        max_draft_tokens=k,
        eos_id=eos_id,
        controller=ALWAYS_DRAFT if controller is None else controller,
    )


def ragged_prompts(batch, width, seed, repetitive=False):
    period = 3 if repetitive else None  # periodic prompts give prompt lookup something to find
    return helpers.ragged_prompts(
        CONFIG.vocab_size, batch, width, seed, min_length=2, period=period
    )


def assert_same_generation(a, b):
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.tokens, b.tokens)


# One case per acceptance regime in the fast tier (each new draft structure, K or EOS id is a
# new compilation); the full sweep runs with `pytest -m slow`.
_FAST_GREEDY_CASES = {("random", 4, None), ("noisy", 1, 5), ("self", 4, None)}


@pytest.mark.parametrize(
    ("draft_name", "k", "eos_id"),
    [
        pytest.param(
            name,
            k,
            eos,
            marks=() if (name, k, eos) in _FAST_GREEDY_CASES else pytest.mark.slow,
        )
        for name in ("random", "noisy", "self")
        for k in (1, 4)
        for eos in (None, 5)
    ],
)
def test_greedy_draft_model_equals_greedy(target, drafts, draft_name, k, eos_id):
    prompt, lengths = ragged_prompts(4, 7, seed=k)
    key = jax.random.key(0)
    plain = run(target, None, prompt, lengths, key, "ar", eos_id=eos_id)
    spec = run(target, drafts[draft_name], prompt, lengths, key, "model", k=k, eos_id=eos_id)
    assert_same_generation(spec, plain)
    stats_ = spec.stats
    assert np.all(stats_.accepted <= stats_.drafted)
    assert np.all(stats_.accept_histogram.sum(1) == stats_.target_calls - 1)
    if draft_name == "self":  # a perfect drafter: every row needs far fewer target calls
        assert np.all(stats_.accepted == stats_.drafted)
        if eos_id is None:
            assert np.all(stats_.target_calls < plain.stats.target_calls)


@pytest.mark.parametrize("match", [pytest.param("first", marks=pytest.mark.slow), "last"])
def test_greedy_prompt_lookup_equals_greedy(target, match):
    prompt, lengths = ragged_prompts(4, 9, seed=3, repetitive=True)
    key = jax.random.key(0)
    plain = run(target, None, prompt, lengths, key, "ar")
    spec = run(target, None, prompt, lengths, key, match, k=4)
    assert_same_generation(spec, plain)
    assert int(spec.stats.drafted.sum()) > 0


def test_each_row_equals_the_row_alone_and_permutation(target, drafts):
    prompt, lengths = ragged_prompts(4, 7, seed=11)
    key = jax.random.key(0)
    batch = run(target, drafts["noisy"], prompt, lengths, key, "model", k=4)
    for row in range(4):
        alone = run(
            target,
            drafts["noisy"],
            prompt[row : row + 1],
            lengths[row : row + 1],
            key,
            "model",
            k=4,
        )
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[row])
    order = jnp.asarray([2, 0, 3, 1])
    permuted = run(target, drafts["noisy"], prompt[order], lengths[order], key, "model", k=4)
    np.testing.assert_array_equal(permuted.tokens, batch.tokens[order])


def test_heuristic_controller_is_lossless_and_adapts(target, drafts):
    prompt, lengths = ragged_prompts(4, 7, seed=5)
    key = jax.random.key(0)
    plain = run(target, None, prompt, lengths, key, "ar")
    controller = drafting.heuristic(initial=2)
    spec = run(target, drafts["self"], prompt, lengths, key, "model", k=6, controller=controller)
    assert_same_generation(spec, plain)
    # A perfect drafter grows its blocks 2 -> 4 -> 6 (the last one cut by the budget of 12).
    expected = np.zeros((4, 7), np.int32)
    expected[:, [2, 4, 6]] = 1
    np.testing.assert_array_equal(spec.stats.accept_histogram, expected)


def test_speculative_sampling_generation_has_target_distribution(drafts):
    """Exact target law of 3-token continuations vs speculative samples (chi-square)."""
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=16
    )
    target = models.Model(config, perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4))
    draft = models.Model(config, perturbed(models.init_params(config, jax.random.key(5)), 0.5, 6))
    prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
    # Exact: p(t1 t2 t3 | prompt) from full forward passes over all 64 continuations.
    exact = exact_continuation_law(target, prompt, 3)
    num = 20000
    out = jax.jit(
        lambda t, d, key: generate(
            t,
            jnp.broadcast_to(prompt, (num, 3)),
            jnp.full((num,), 3, jnp.int32),
            key,
            max_new_tokens=3,
            sampling=Sampling(temperature=1.0),
            drafter=drafting.draft_model(d),
            controller=ALWAYS_DRAFT,
            max_draft_tokens=2,
        )
    )(target, draft, jax.random.key(8))
    assert 0 < int(out.stats.accepted.sum()) < int(out.stats.drafted.sum())
    counts = np.bincount(continuation_codes(out.tokens[:, 3:6], 4), minlength=64)
    expected = exact * num
    statistic = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(statistic, df=63) > 1e-4


def test_sampling_with_top_k_uses_same_law_for_prompt_lookup(target):
    """One-hot drafts under top-k sampling: identical law to plain top-k sampling (first token)."""
    prompt, lengths = ragged_prompts(1, 9, seed=3, repetitive=True)
    num = 20000
    sampling = Sampling(temperature=1.0, top_k=4)
    many = jnp.broadcast_to(prompt, (num, 9)), jnp.broadcast_to(lengths, (num,))
    spec = run(target, None, *many, jax.random.key(1), "last", k=3, sampling=sampling, max_new=2)
    plain = run(target, None, *many, jax.random.key(2), "ar", sampling=sampling, max_new=2)
    position = int(lengths[0]) + 1  # the second generated token: drafted by prompt lookup
    a = np.bincount(np.asarray(spec.tokens[:, position]), minlength=16)
    b = np.bincount(np.asarray(plain.tokens[:, position]), minlength=16)
    keep = (a + b) > 0
    assert np.count_nonzero(keep) <= 4 + 4  # top-k support per prefix
    assert stats.chi2_contingency(np.stack([a[keep], b[keep]]))[1] > 1e-4


def test_no_retracing_across_calls(target, drafts):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(target, draft, prompt, lengths, key):
        return generate(
            target,
            prompt,
            lengths,
            key,
            max_new_tokens=4,
            drafter=drafting.draft_model(draft),
            controller=ALWAYS_DRAFT,
            max_draft_tokens=2,
        )

    for seed in range(3):
        prompt, lengths = ragged_prompts(2, 5, seed=seed)
        step(target, drafts["noisy"], prompt, lengths, jax.random.key(seed))


@pytest.mark.slow  # two sampled compilations on 8 devices; the fast tier checks sharded
# generation in test_generate.py and tensor-parallel speculative decoding in
# tests/models/test_partitioning.py
def test_sharded_speculative_equals_single_device(target, drafts):
    prompt, lengths = ragged_prompts(8, 7, seed=9)
    key = jax.random.key(3)
    sampling = Sampling(temperature=1.0)
    single = run(target, drafts["noisy"], prompt, lengths, key, "model", sampling=sampling)
    mesh = sharding.make_mesh()
    sharded = run(
        sharding.replicate(target, mesh),
        sharding.replicate(drafts["noisy"], mesh),
        *sharding.shard((prompt, lengths), mesh),
        key,
        "model",
        sampling=sampling,
    )
    assert len(sharded.tokens.sharding.device_set) == 8
    assert_same_generation(sharded, single)


def test_bad_input_raises(target, drafts):
    prompt, lengths = ragged_prompts(2, 5, seed=0)
    other_vocab = models.TransformerConfig(
        vocab_size=17, num_layers=1, num_heads=1, d_model=8, max_length=48
    )
    other = models.Model(other_vocab, models.init_params(other_vocab, jax.random.key(0)))
    call = functools.partial(generate, target, prompt, lengths, jax.random.key(0))
    with pytest.raises(ValueError, match="vocabulary"):
        call(max_new_tokens=4, drafter=drafting.draft_model(other))
    with pytest.raises(ValueError, match="max_draft_tokens"):
        call(max_new_tokens=4, drafter=drafting.draft_model(drafts["random"]), max_draft_tokens=-1)
    with pytest.raises(ValueError, match="do not fit"):
        call(max_new_tokens=40, drafter=drafting.draft_model(drafts["random"]), max_draft_tokens=4)
    with pytest.raises(ValueError, match="verifier"):
        call(max_new_tokens=4, verifier="nonsense")


def test_zero_draft_length_is_autoregressive(target, drafts):
    prompt, lengths = ragged_prompts(4, 7, seed=12)  # the shape of the other tests: no recompile
    key = jax.random.key(0)
    plain = run(target, None, prompt, lengths, key, "ar")
    spec = run(target, drafts["noisy"], prompt, lengths, key, "model", k=0)
    assert_same_generation(spec, plain)
    np.testing.assert_array_equal(spec.stats.target_calls, plain.stats.target_calls)


def test_eos_inside_an_accepted_block_stops_there(target, drafts):
    prompt, lengths = ragged_prompts(4, 7, seed=13)  # the greedy tests' shape: shares `free`
    key = jax.random.key(0)
    free = run(target, drafts["self"], prompt, lengths, key, "model", k=4)
    # The self-drafter accepts whole blocks of 4 (+1): pick a token emitted mid-block in row 0.
    start = int(lengths[0])
    eos = int(free.tokens[0, start + 3])
    first_eos = start + int(np.argmax(np.asarray(free.tokens[0, start:]) == eos))
    stopped = run(target, drafts["self"], prompt, lengths, key, "model", k=4, eos_id=eos)
    plain = run(target, None, prompt, lengths, key, "ar", eos_id=eos)
    assert_same_generation(stopped, plain)
    assert int(stopped.lengths[0]) == first_eos + 1
    assert np.all(np.asarray(stopped.tokens[0, first_eos + 1 :]) == 0)


def test_exact_mode_greedy_equals_exact_greedy(target, drafts):
    prompt, lengths = ragged_prompts(3, 7, seed=14)

    @jax.jit
    def exact(target, draft, prompt, lengths):
        drafter = None if draft is None else drafting.draft_model(draft)
        return generate(
            target,
            prompt,
            lengths,
            jax.random.key(0),
            max_new_tokens=MAX_NEW,
            drafter=drafter,
            controller=ALWAYS_DRAFT,
            max_draft_tokens=4,
            exact=True,
        )

    plain = exact(target, None, prompt, lengths)
    spec = exact(target, drafts["noisy"], prompt, lengths)
    assert_same_generation(spec, plain)
    assert int(spec.stats.accepted.sum()) > 0
