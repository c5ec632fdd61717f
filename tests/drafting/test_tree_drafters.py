"""Tree drafters and early exit inside `generate`: lossless greedy and sampling, state, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lookahead_jax import drafting, models, sharding, trees
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.sampling import Sampling
from tests import helpers
from tests.helpers import continuation_codes, exact_continuation_law, perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=3, num_heads=2, d_model=16, max_length=48
)
DRAFT_CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=1, num_heads=2, d_model=16, max_length=48
)
MAX_NEW = 12
SMALL_TEMPLATE = trees.template_from_rank_paths(
    [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
)


@pytest.fixture(scope="module")
def target():
    return models.Model(CONFIG, perturbed(models.init_params(CONFIG, jax.random.key(0)), 0.3, 1))


@pytest.fixture(scope="module")
def draft(target):
    params = models.init_params(DRAFT_CONFIG, jax.random.key(7))
    return models.Model(DRAFT_CONFIG, perturbed(params, 0.3, 8))


def make_drafter(kind, target, draft):
    if kind == "ar":
        return None
    if kind == "recycling":
        return drafting.token_recycling(CONFIG.vocab_size)
    if kind == "recycling_small":
        return drafting.token_recycling(
            CONFIG.vocab_size, num_candidates=3, template=SMALL_TEMPLATE
        )
    if kind == "draft_tree":
        return drafting.draft_model_tree(
            draft, num_nodes=10, beam_width=3, branching=3, max_depth=4
        )
    if kind == "self_tree":
        return drafting.draft_model_tree(
            target, num_nodes=10, beam_width=3, branching=3, max_depth=4
        )
    if kind == "early_exit":
        return drafting.early_exit(target, 1)
    raise ValueError(kind)


@functools.partial(jax.jit, static_argnames=("kind", "sampling", "eos_id", "max_new"))
def run(
    target, draft, prompt, lengths, key, kind, sampling=Sampling(), eos_id=None, max_new=MAX_NEW
):
    return generate(
        target,
        prompt,
        lengths,
        key,
        max_new_tokens=max_new,
        sampling=sampling,
        drafter=make_drafter(kind, target, draft),
        controller=ALWAYS_DRAFT,
        max_draft_tokens=3,
        eos_id=eos_id,
    )


def ragged_prompts(batch, width, seed):
    # Some repetition for the drafters to recycle.
    return helpers.ragged_prompts(CONFIG.vocab_size, batch, width, seed, min_length=2, period=4)


# One case per drafter in the fast tier (each drafter / EOS id is a new compilation); the
# other variants run with `pytest -m slow`.
@pytest.mark.parametrize(
    ("kind", "eos_id"),
    [
        pytest.param("recycling", None, marks=pytest.mark.slow),
        ("recycling", 3),
        pytest.param("recycling_small", None, marks=pytest.mark.slow),
        ("draft_tree", None),
        pytest.param("draft_tree", 3, marks=pytest.mark.slow),
        ("self_tree", None),
        ("early_exit", 3),
    ],
)
def test_greedy_tree_drafters_equal_greedy(target, draft, kind, eos_id):
    prompt, lengths = ragged_prompts(4, 9, seed=1)
    key = jax.random.key(0)
    plain = run(target, draft, prompt, lengths, key, "ar", eos_id=eos_id)
    spec = run(target, draft, prompt, lengths, key, kind, eos_id=eos_id)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    assert np.all(spec.stats.accepted <= spec.stats.drafted)
    assert np.all(spec.stats.accept_histogram.sum(1) == spec.stats.target_calls - 1)
    if kind == "self_tree" and eos_id is None:  # the target drafting for itself: always accepted
        assert np.all(spec.stats.target_calls < plain.stats.target_calls)
        assert np.all(spec.stats.accepted >= MAX_NEW // 2)


# Greedy, so implied by the greedy-equality tests above and plain decoding's row
# independence (tests/decoding); the batch-1 program costs ~10 s of compiling: slow tier.
@pytest.mark.slow
def test_each_row_equals_the_row_alone(target, draft):
    prompt, lengths = ragged_prompts(4, 9, seed=4)  # the greedy tests' shape: no recompile
    key = jax.random.key(0)
    batch = run(target, draft, prompt, lengths, key, "draft_tree")
    for row in range(4):
        alone = run(target, draft, prompt[row : row + 1], lengths[row : row + 1], key, "draft_tree")
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[row])


@jax.jit
@chex.assert_max_traces(n=1)
def recycled(target, prompt, lengths, table):
    """Token Recycling from a given table; one compilation shared by the tests below."""
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=MAX_NEW,
        drafter=drafting.token_recycling(16, table=table),
        controller=ALWAYS_DRAFT,
    )


def test_token_recycling_table_learns_and_carries_across_requests(target, draft):
    prompt, lengths = ragged_prompts(2, 8, seed=2)
    first = recycled(target, prompt, lengths, drafting.initial_table(16, 8))  # a cold start
    table = first.drafter_state.table
    assert table.shape == (16, 8)
    assert not np.array_equal(np.asarray(table), np.asarray(drafting.initial_table(16, 8)))
    # Warm start: the same request again with the learned table.
    warm = recycled(target, prompt, lengths, table)
    np.testing.assert_array_equal(warm.tokens, first.tokens)
    # The learned table drafts better: the same tokens in fewer target calls (accepted
    # counts are not comparable when the last round overshoots the budget).
    assert int(warm.stats.target_calls.sum()) < int(first.stats.target_calls.sum())


def test_sampled_tree_generation_has_target_distribution():
    """Exact law of 3-token continuations vs samples with a dynamic draft tree (chi-square)."""
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=24
    )
    target = models.Model(config, perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4))
    draft = models.Model(config, perturbed(models.init_params(config, jax.random.key(5)), 0.5, 6))
    prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
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
            drafter=drafting.draft_model_tree(
                d, num_nodes=5, beam_width=2, branching=2, max_depth=2
            ),
            controller=ALWAYS_DRAFT,
        )
    )(target, draft, jax.random.key(8))
    assert 0 < int(out.stats.accepted.sum()) < int(out.stats.drafted.sum())
    counts = np.bincount(continuation_codes(out.tokens[:, 3:6], 4), minlength=64)
    statistic = np.sum((counts - exact * num) ** 2 / (exact * num))
    assert stats.chi2.sf(statistic, df=63) > 1e-4


def test_no_retracing(target, draft):
    chex.clear_trace_counter()
    table = drafting.initial_table(16, 8)
    for seed in range(3):
        prompt, lengths = ragged_prompts(2, 8, seed=seed)
        table = recycled(target, prompt, lengths, table).drafter_state.table


def test_bad_arguments_raise(target, draft):
    prompt, lengths = ragged_prompts(2, 8, seed=0)
    with pytest.raises(ValueError, match="controller"):
        generate(
            target,
            prompt,
            lengths,
            jax.random.key(0),
            max_new_tokens=4,
            drafter=drafting.token_recycling(16),
            controller="heuristic",  # a name, not a controller
        )
    with pytest.raises(ValueError, match="num_candidates"):
        drafting.token_recycling(16, num_candidates=4)  # the 2.2.2 template needs rank 7
    with pytest.raises(ValueError, match="table"):
        drafting.token_recycling(16, table=jnp.zeros((16, 3), jnp.int32))
    with pytest.raises(ValueError, match="max_depth"):
        generate(
            target,
            prompt,
            lengths,
            jax.random.key(0),
            max_new_tokens=38,
            drafter=drafting.token_recycling(16),
            controller=ALWAYS_DRAFT,
        )
    with pytest.raises(ValueError, match="num_layers"):
        drafting.early_exit(target, 3)
    with pytest.raises(ValueError, match="beam_width"):
        drafting.draft_model_tree(draft, beam_width=0)


def test_early_exit_model_is_the_hidden_state_readout(target):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 16, (2, 7)), jnp.int32)
    _, _, hidden = target(tokens, return_hidden=True)
    for layers in (1, 2):
        exit_logits, _ = drafting.early_exit_model(target, layers)(tokens)
        np.testing.assert_allclose(
            exit_logits, models.logits_from_hidden(CONFIG, target.params, hidden[layers]), atol=1e-5
        )
    acceptance = drafting.layer_acceptance(target, tokens)
    assert acceptance.shape == (2,)
    assert np.all((acceptance >= 0) & (acceptance <= 1))


def test_early_exit_starts_from_the_target_cache(target):
    # The exit's first layers are the target's: its cache copied from the target's prefill
    # equals the one its own prefill computes, and it drafts the same tokens from it.
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 16, (2, 6)), jnp.int32)
    lengths = jnp.array([6, 4], jnp.int32)
    _, cache = target(prompt, models.init_cache(CONFIG, 2, 20))
    cache = models.rewind(cache, lengths)
    drafter = drafting.early_exit(target, 2)
    shared = drafter.init_from_target(cache, lengths, 24)
    own = drafter.init(prompt, lengths, 24)
    chex.assert_trees_all_equal_shapes_and_dtypes(shared, own)
    np.testing.assert_array_equal(shared.cache.lengths, own.cache.lengths)
    for got, want in ((shared.cache.keys, own.cache.keys), (shared.cache.values, own.cache.values)):
        for row, length in enumerate(np.asarray(lengths)):  # slots past a row's length: stale
            np.testing.assert_allclose(got[:, row, :length], want[:, row, :length], atol=1e-5)
    # As after the prefill: each row's first generated token committed after its prompt.
    tokens = jnp.pad(prompt, ((0, 0), (0, 10))).at[jnp.arange(2), lengths].set(jnp.array([5, 9]))
    proposals = [
        drafter.propose(
            state,
            jax.random.key(0),
            tokens,
            lengths + 1,
            jnp.array([3, 3]),
            max_draft=3,
            sampling=Sampling(),
        )[1].tokens
        for state in (shared, own)
    ]
    np.testing.assert_array_equal(*proposals)
    with pytest.raises(ValueError, match="positions"):
        drafter.init_from_target(cache, lengths, CONFIG.max_length + 1)

    # After plain rounds (here: an exit cache 3 and 1 tokens behind the target's) the exit
    # copies the target's first layers instead of feeding the tokens; within one token
    # (what a proposal feeds itself) it keeps its state.
    behind = shared._replace(cache=models.rewind(shared.cache, lengths - jnp.array([3, 1])))
    synced = drafter.sync_from_target(behind, cache)
    np.testing.assert_array_equal(synced.cache.lengths, lengths)
    for got, want in (
        (synced.cache.keys, shared.cache.keys),
        (synced.cache.values, shared.cache.values),
    ):
        np.testing.assert_array_equal(got, want)
    close = shared._replace(cache=models.rewind(shared.cache, lengths - 1))
    chex.assert_trees_all_equal(drafter.sync_from_target(close, cache), close)


def test_choose_exit_maximises_the_modelled_speedup():
    # L = 4; a perfect exit at layer 1 should draft as far as allowed.
    choice = drafting.choose_exit(np.array([0.999999, 0.2, 0.3]), num_layers=4, max_draft=6)
    assert (choice.num_layers, choice.num_draft) == (1, 6)
    # Useless exits: drafting one token at the cheapest layer is the best of bad options.
    choice = drafting.choose_exit(np.array([0.0, 0.0, 0.0]), num_layers=4, max_draft=6)
    assert (choice.num_layers, choice.num_draft) == (1, 1)
    a, layers, d = 0.8, 2, 3
    want = 4 * (1 - a ** (d + 1)) / (1 - a) / (d * layers + 4)
    np.testing.assert_allclose(
        drafting.choose_exit(np.array([0.1, a, 0.1]), 4, 6).table[1, 2], want
    )
    with pytest.raises(ValueError, match="acceptance"):
        drafting.choose_exit(np.array([0.5]), num_layers=4, max_draft=2)


@pytest.mark.slow  # two compilations of sampled tree generation; the fast tier checks
# sharding on the chain paths (tests/decoding/test_generate.py, test_speculative.py)
def test_sharded_tree_generation_equals_single_device(target, draft):
    """Sampled draft-tree generation over 8 devices (batch sharded) equals 1 device."""
    prompt, lengths = ragged_prompts(8, 9, seed=9)
    key = jax.random.key(3)
    sampling = Sampling(temperature=1.0)
    single = run(target, draft, prompt, lengths, key, "draft_tree", sampling=sampling)
    mesh = sharding.make_mesh()
    sharded = run(
        sharding.replicate(target, mesh),
        sharding.replicate(draft, mesh),
        *sharding.shard((prompt, lengths), mesh),
        key,
        "draft_tree",
        sampling=sampling,
    )
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)


def _rescored_tree(draft, tokens, lengths, drafter):
    """The tree as first written: every depth re-scores the root and every node expanded so
    far in one call under the tree mask (quadratic in depth; the reference)."""
    cache = models.init_cache(DRAFT_CONFIG, tokens.shape[0], 40)
    _, cache = draft(tokens, cache)
    cache = models.rewind(cache, lengths - 1)
    root = tokens[jnp.arange(tokens.shape[0]), lengths - 1]

    def expand(expanded, frontier):
        block = jnp.concatenate([root[:, None], expanded.token], axis=1)
        logits, _ = draft(block, cache, tree_mask=trees.block_mask(expanded), defer_write=True)
        scores = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(scores, (frontier + 1)[:, :, None], axis=1)

    return trees.build_dynamic_tree(
        expand, tokens.shape[0], num_nodes=10, beam_width=3, branching=3, max_depth=4
    ).tree


def test_draft_tree_expands_incrementally_as_a_full_rescoring_would(target, draft):
    """Each depth scores only its new nodes against the expanded ancestors' entries: the
    same tree as re-scoring every expanded node at every depth."""
    # Weights far from the initialisation: a tree that ignored the ancestors' entries
    # would differ (with the module's mildly perturbed draft it might not).
    params = models.init_params(DRAFT_CONFIG, jax.random.key(7))
    draft = models.Model(DRAFT_CONFIG, perturbed(params, 1.0, 8))
    drafter = make_drafter("draft_tree", target, draft)
    prompt, lengths = ragged_prompts(3, 9, seed=5)
    tokens = jnp.pad(prompt, ((0, 0), (0, 20)))
    state = drafter.init(prompt, lengths, 40)
    # As in a round after plain steps: the first committed tokens past the prompt.
    tokens = tokens.at[jnp.arange(3), lengths].set(jnp.asarray([1, 2, 3]))
    _, proposed = jax.jit(functools.partial(drafter.propose, sampling=Sampling()))(
        state, jax.random.key(0), tokens, lengths + 1
    )
    want = jax.jit(functools.partial(_rescored_tree, draft, drafter=drafter))(
        tokens[:, :10], lengths + 1
    )
    np.testing.assert_array_equal(proposed.tree.valid, want.valid)
    np.testing.assert_array_equal(proposed.tree.token, want.token)
    np.testing.assert_array_equal(proposed.tree.parent, want.parent)
    np.testing.assert_array_equal(proposed.tree.depth, want.depth)
