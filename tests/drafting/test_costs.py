"""The cost model and the cost-aware controller (the generation loop's default with a drafter)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import CostModel
from lookahead_jax.drafting.controllers import (
    Controller,
    chain_block_sizes,
    cost_aware_controller,
    tree_cost_aware_controller,
    tree_sizes,
)
from lookahead_jax.sampling import Sampling
from tests import helpers

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=64
)
MAX_NEW = 24

# A round's cost is its target call (1 + 0.1 per extra token) plus 0.2 per drafted token.
CHEAP_TARGET = CostModel((1, 9), (1.0, 1.8), draft_tokens=(1, 8), draft_seconds=(0.2, 1.6))


@pytest.fixture(scope="module")
def target():
    # Perturbed weights: a random model's greedy token barely depends on the context, and
    # the catch-up tests need one that does.
    params = helpers.perturbed(models.init_params(CONFIG, jax.random.key(0)), 0.5, 1)
    return models.Model(CONFIG, params)


def test_block_sizes_and_round_seconds():
    assert chain_block_sizes(4) == (0, 1, 2, 4)
    assert chain_block_sizes(6) == (0, 1, 2, 4, 6)
    assert chain_block_sizes(1) == (0, 1)
    np.testing.assert_allclose(CHEAP_TARGET.round_seconds([0, 1, 4]), [1.0, 1.3, 2.2])
    assert CHEAP_TARGET.draft_cost_ratio(4) == pytest.approx(0.2)
    both = CostModel((1,), (2.0,), upkeep_seconds=0.5, observe_seconds=0.25)
    np.testing.assert_allclose(both.round_seconds([0, 3]), [2.25, 2.75])
    # A memory learning tokens in batches: plain rounds pay a share of one observe call.
    batched = CostModel((1,), (2.0,), upkeep_seconds=0.5, observe_seconds=0.25, observe_rounds=5)
    np.testing.assert_allclose(batched.round_seconds([0, 3]), [2.05, 2.75])
    with pytest.raises(ValueError, match="observe_rounds"):
        CostModel((1,), (1.0,), observe_rounds=0)


def test_timed_rounds_replace_the_sum_of_parts():
    # Rounds timed at 0, 2 and 4 drafts: what round_seconds returns (interpolated between
    # them), whatever the parts add up to.
    timed = CostModel(
        (1, 9),
        (1.0, 1.8),
        draft_tokens=(1, 8),
        draft_seconds=(0.2, 1.6),
        round_sizes=(0, 2, 4),
        round_times=(1.0, 2.4, 3.2),
    )
    np.testing.assert_allclose(timed.round_seconds([0, 1, 2, 4, 6]), [1.0, 1.7, 2.4, 3.2, 4.0])
    controller = cost_aware_controller(drafting.cost_aware(decay=0.0), timed, 4)
    # a = 1/2: a plain round's 1 / 1.0 beats 1.5 / 1.7, 1.75 / 2.4 and 1.9375 / 3.2; by
    # the parts (1.5 / 1.3 for one draft) drafting would win.
    half = _state(controller, 1, [([4], [1])])
    assert controller.num_draft(half).tolist() == [0]
    # A tree's cut: the timed rounds too; by the parts, the whole tree's proposal (1.6 at
    # 8 nodes) and an observe call at every cut, and a share of one in plain rounds.
    np.testing.assert_allclose(timed.tree_round_seconds([0, 2, 4], 8), [1.0, 2.4, 3.2])
    parts = CostModel(
        (1, 9), (1.0, 1.8), draft_tokens=(8,), draft_seconds=(1.6,), observe_seconds=0.5,
        observe_rounds=5,
    )  # fmt: skip
    np.testing.assert_allclose(parts.tree_round_seconds([0, 2, 8], 8), [1.1, 3.3, 3.9])
    with pytest.raises(ValueError, match="round_sizes"):
        CostModel((1,), (1.0,), round_sizes=(1, 2), round_times=(1.0, 2.0))
    with pytest.raises(ValueError, match="round_sizes"):
        CostModel((1,), (1.0,), round_sizes=(0, 2), round_times=(1.0,))


def test_bad_cost_models_raise():
    with pytest.raises(ValueError, match="target_tokens"):
        CostModel((2, 1), (1.0, 2.0))
    with pytest.raises(ValueError, match="target_seconds"):
        CostModel((1,), (0.0,))
    with pytest.raises(ValueError, match="draft_tokens"):
        CostModel((1,), (1.0,), draft_tokens=(0,), draft_seconds=(1.0,))
    with pytest.raises(ValueError, match="upkeep_seconds"):
        CostModel((1,), (1.0,), upkeep_seconds=float("nan"))
    with pytest.raises(ValueError, match="decay"):
        drafting.cost_aware(decay=1.0)
    with pytest.raises(ValueError, match="probe_overhead"):
        drafting.cost_aware(probe_overhead=0.0)


def test_estimate_from_model_sizes():
    big = models.TransformerConfig(vocab_size=256, num_layers=8, num_heads=4, d_model=128)
    small = big.truncated(1)
    ratio = small.num_params() / big.num_params()
    drafter = drafting.draft_model(models.Model(small, None))
    costs = drafting.estimate_costs(
        big, drafter, max_draft=4, flops_per_byte=100.0, call_seconds=0.0
    )
    assert costs.source == "estimated"
    # beta = 2 B / (I b) = 0.005 per extra scored token at batch 1.
    assert float(costs.target(5)) == pytest.approx(1.02)
    assert float(costs.draft(4)) == pytest.approx(ratio * (4 + 0.005))
    wide = drafting.estimate_costs(
        big, None, batch_size=16, max_draft=4, flops_per_byte=100.0, call_seconds=0.0
    )
    assert float(wide.target(5)) == pytest.approx(1 + 4 * 0.08)
    free = drafting.estimate_costs(big, drafting.prompt_lookup(256), max_draft=4)
    assert float(free.draft(4)) == 0.0
    # Without a draft model the latency changes nothing: same table whatever the latency.
    for call in (0.0, 1e-3):
        lookup = drafting.estimate_costs(
            big, drafting.prompt_lookup(256), max_draft=4, call_seconds=call
        )
        assert lookup.target_seconds == free.target_seconds


def test_estimate_charges_each_call_its_latency():
    """A call's fixed seconds are a share ``lam`` of a plain step (the target's parameter
    bytes over the bandwidth, plus the latency); a chain's proposal pays it once, a
    model-drafted tree once per level, and the draft's parameter reading is ``1 - lam`` of
    its share of the target's."""
    big = models.TransformerConfig(vocab_size=256, num_layers=8, num_heads=4, d_model=128)
    small = big.truncated(1)
    ratio = small.num_params() / big.num_params()
    reading = big.num_params() * 4 / 1e9  # seconds at 1 GB/s
    lam = 0.25
    call = lam / (1 - lam) * reading  # the latency that is a quarter of a plain step
    settings = dict(flops_per_byte=100.0, call_seconds=call, bytes_per_second=1e9)
    chain = drafting.estimate_costs(
        big, drafting.draft_model(models.Model(small, None)), max_draft=4, **settings
    )
    assert float(chain.target(5)) == pytest.approx(1 + 4 * 0.005)  # the fitted slope
    assert float(chain.draft(4)) == pytest.approx(lam + (1 - lam) * ratio * (4 + 0.005))
    tree = drafting.estimate_costs(
        big,
        drafting.draft_model_tree(models.Model(small, None), num_nodes=8, max_depth=4),
        max_draft=8,
        **settings,
    )
    calls = (1 + 0.005 * 5) + 3 * (1 + 0.005 * 1)  # catch-up (6 tokens), 3 levels of 2 nodes
    assert float(tree.draft(8)) == pytest.approx(4 * lam + (1 - lam) * ratio * calls)
    # Once per level: a deeper tree of the same size costs more, by the latency.
    deeper = drafting.estimate_costs(
        big,
        drafting.draft_model_tree(models.Model(small, None), num_nodes=8, max_depth=8),
        max_draft=8,
        **settings,
    )
    assert float(deeper.draft(8)) > float(tree.draft(8)) + 4 * lam
    with pytest.raises(ValueError, match="call_seconds"):
        drafting.estimate_costs(big, None, call_seconds=-1.0)
    with pytest.raises(ValueError, match="bytes_per_second"):
        drafting.estimate_costs(big, None, bytes_per_second=0.0)


def test_estimate_charges_each_drafting_round_its_fixed_work():
    """Every drafting round pays ``round_seconds`` and a tree round ``node_seconds`` per
    verified node, as shares of the estimate's plain step; a plain round pays neither."""
    big = models.TransformerConfig(vocab_size=256, num_layers=8, num_heads=4, d_model=128)
    reading = big.num_params() * 4 / 1e9  # a plain step's seconds at 1 GB/s, no latency
    settings = dict(flops_per_byte=100.0, call_seconds=0.0, bytes_per_second=1e9)
    extra = dict(round_seconds=0.5 * reading, node_seconds=0.1 * reading)
    chain = drafting.estimate_costs(
        big, drafting.prompt_lookup(256), max_draft=4, **settings, **extra
    )
    np.testing.assert_allclose(chain.round_seconds([0, 2]), [1.0, 1 + 2 * 0.005 + 0.5])
    tree_drafter = drafting.token_recycling(256)
    nodes = tree_drafter.num_nodes
    tree = drafting.estimate_costs(big, tree_drafter, max_draft=nodes, **settings, **extra)
    np.testing.assert_allclose(
        tree.tree_round_seconds([0, 4], nodes), [1.0, 1 + 4 * 0.005 + 0.5 + 0.1 * 4]
    )
    # Zeros give the table without them: a round is its target call (drafts are free).
    bare = drafting.estimate_costs(
        big, tree_drafter, max_draft=nodes, round_seconds=0.0, node_seconds=0.0, **settings
    )
    np.testing.assert_allclose(bare.tree_round_seconds([4, 8], nodes), bare.target([5, 9]))
    for name in ("round_seconds", "node_seconds"):
        with pytest.raises(ValueError, match=name):
            drafting.estimate_costs(big, None, **{name: -1.0})


def _state(controller, batch, rate_rounds):
    """A controller state after each row saw ``rate_rounds[b]`` = (drafted, accepted) rounds."""
    state = controller.init(batch, 8)
    for drafted, accepted in rate_rounds:
        state = controller.update(state, jnp.asarray(drafted), jnp.asarray(accepted))
    return state


def test_chain_controller_drafts_what_pays_and_nothing_when_nothing_does():
    controller = cost_aware_controller(drafting.cost_aware(decay=0.0), CHEAP_TARGET, 8)
    always = [([8, 8], [8, 8])]  # every draft accepted: the longest draft pays most
    never = [([8, 8], [0, 0])]  # nothing accepted: a plain step is cheapest
    assert controller.num_draft(_state(controller, 2, always)).tolist() == [8, 8]
    assert controller.num_draft(_state(controller, 2, never)).tolist() == [0, 0]
    # One row accepting everything makes the batch draft; a finished row does not count.
    mixed = _state(controller, 2, [([8, 8], [8, 0])])
    assert controller.num_draft(mixed, jnp.asarray([True, True])).tolist() == [8, 8]
    assert controller.num_draft(mixed, jnp.asarray([False, True])).tolist() == [0, 0]
    # The choice maximises (1 - a^(k+1)) / (1 - a) over round_seconds(k) among the sizes.
    half = _state(controller, 1, [([8], [1])])  # a = 1/2
    sizes = np.asarray(chain_block_sizes(8))
    speed = (1 - 0.5 ** (sizes + 1)) / 0.5 / CHEAP_TARGET.round_seconds(sizes)
    assert controller.num_draft(half).tolist() == [sizes[np.argmax(speed)]]


def test_the_first_round_is_weighed_against_the_prior():
    # decay 0.8, prior a = 0.6 as 0.8 of one examined draft: a first round accepting its
    # one draft reads (0.48 + 1) / (0.8 + 1) = 0.82, not certainty; 8 of 8 reads 0.96.
    controller = cost_aware_controller(drafting.cost_aware(decay=0.8), CHEAP_TARGET, 8)
    for drafted, accepted, rate in [(1, 1, 1.48 / 1.8), (8, 8, 8.48 / 8.8), (8, 0, 0.48 / 1.8)]:
        state = _state(controller, 1, [([drafted], [accepted])])
        got = float(state.accepted[0] / state.examined[0])
        assert got == pytest.approx(rate, rel=1e-6)
        # A second round is averaged in with weight 0.2.
        state = controller.update(state, jnp.asarray([4]), jnp.asarray([2]))
        want = (0.8 * rate * (0.8 + min(accepted + 1, drafted)) + 0.2 * 2) / (
            0.8 * (0.8 + min(accepted + 1, drafted)) + 0.2 * 3
        )
        assert float(state.accepted[0] / state.examined[0]) == pytest.approx(want, rel=1e-5)
    # Trees: per size, the prior (1.2 nodes, weight 0.8) and a first round (weight 1).
    costs = CostModel((1, 9), (1.0, 1.8), draft_tokens=(8,), draft_seconds=(0.2,))
    tree = tree_cost_aware_controller(drafting.cost_aware(decay=0.8), costs, 8, (4, 8))
    state = tree.update(tree.init(1, 8), jnp.asarray([8]), jnp.asarray([[0, 3, 5]]))
    np.testing.assert_allclose(state.accepted, [[0.0, 3.96 / 1.8, 5.96 / 1.8]], rtol=1e-6)


def test_chain_controller_probes_after_a_stretch_of_plain_steps():
    # A probe (one draft) costs 0.3 plain steps extra: one every 3 rounds spends 10%.
    controller = cost_aware_controller(
        drafting.cost_aware(decay=0.0, probe_overhead=0.1), CHEAP_TARGET, 8
    )
    state = _state(controller, 1, [([8], [0])])
    chosen = []
    for _ in range(8):
        k = controller.num_draft(state)
        chosen.append(int(k[0]))
        state = controller.update(state, k, jnp.zeros_like(k))
    assert chosen == [0, 0, 0, 1, 0, 0, 0, 1]


def test_tree_controller_cuts_trees_to_what_pays():
    assert tree_sizes(80) == (0, 4, 8, 16, 32, 64, 80)
    assert tree_sizes(24, (0, 8, 16, 24)) == (0, 8, 16, 24)
    costs = CostModel((1, 9), (1.0, 1.8), draft_tokens=(8,), draft_seconds=(0.2,))
    controller = tree_cost_aware_controller(drafting.cost_aware(decay=0.0), costs, 8, (4, 8))
    assert controller.tree_sizes == (0, 4, 8)
    # Seconds per size: plain 1.0; 4 nodes 1.4 + 0.2 = 1.6; 8 nodes 1.8 + 0.2 = 2.0.
    state = controller.init(1, 8)
    # The prior (1.2 accepted at every size) decides the first round: 2.2 / 1.6 > 2.2 / 2.0.
    assert controller.num_draft(state).tolist() == [4]

    def after(within):
        return controller.update(state, jnp.asarray([8]), jnp.asarray([within]))

    assert controller.num_draft(after([0, 2, 2])).tolist() == [4]  # 3 / 1.6 > 3 / 2.0
    assert controller.num_draft(after([0, 1, 3])).tolist() == [8]  # 4 / 2.0 > 2 / 1.6
    assert controller.num_draft(after([0, 0, 0])).tolist() == [0]  # a plain step
    # A size above the cut is not observed (-1): its estimate stays.
    kept = controller.update(after([0, 2, 2]), jnp.asarray([4]), jnp.asarray([[0, 0, -1]]))
    np.testing.assert_allclose(kept.accepted, [[0.0, 0.0, 2.0]])
    # Timed rounds replace the parts: 8 nodes now cost 6.0 per round, 4 nodes 3.0.
    timed = CostModel(
        (1, 9),
        (1.0, 1.8),
        draft_tokens=(8,),
        draft_seconds=(0.2,),
        round_sizes=(0, 4, 8),
        round_times=(1.0, 3.0, 6.0),
    )
    controller = tree_cost_aware_controller(drafting.cost_aware(decay=0.0), timed, 8, (4, 8))
    assert controller.num_draft(after([0, 1, 3])).tolist() == [0]  # 1 / 1 > 2 / 3, 4 / 6
    assert controller.num_draft(after([0, 4, 6])).tolist() == [4]  # 5 / 3 > 7 / 6, 1 / 1


def test_fixed_tree_cut_verifies_the_same_cut_every_round():
    controller = drafting.fixed_tree_cut(8, 32)
    assert controller.tree_sizes == drafting.tree_sizes(32) == (0, 4, 8, 16, 32)
    state = controller.init(3, 32)
    state = controller.update(state, jnp.asarray([8, 8, 8]), jnp.zeros((3, 5), jnp.int32))
    assert controller.num_draft(state).tolist() == [8, 8, 8]
    with pytest.raises(ValueError, match="size"):
        drafting.fixed_tree_cut(5, 32)


# ---- in the generation loop ------------------------------------------------------------------


class EveryThird:
    """A controller that drafts K on every third round (round 0 first) and nothing otherwise."""

    @staticmethod
    def make(k):
        return Controller(
            init=lambda batch, max_draft: jnp.zeros((batch,), jnp.int32),
            num_draft=lambda state, active=None: jnp.where(state % 3 == 0, k, 0),
            update=lambda state, drafted, accepted: state + 1,
        )


@functools.partial(jax.jit, static_argnames=("kind", "which", "sampling", "eos_id"))
def run(target, prompt, lengths, key, kind, which, sampling=Sampling(), eos_id=None):
    drafter = {
        "none": lambda: None,
        "self": lambda: drafting.draft_model(target),
        "self_tree": lambda: drafting.draft_model_tree(
            target, num_nodes=6, beam_width=2, branching=2, max_depth=3
        ),
        "lookup": lambda: drafting.prompt_lookup(CONFIG.vocab_size),
        "recycling": lambda: drafting.token_recycling(CONFIG.vocab_size),
        # The early exit (its cache copied from the target's after skipped rounds), and the
        # same exit model as a plain draft model (its cache computed by feeding the tokens).
        "exit": lambda: drafting.early_exit(target, 1),
        "exit_computed": lambda: drafting.draft_model(drafting.early_exit_model(target, 1)),
    }[kind]()
    controller = {
        "default": None,
        "cheap": drafting.cost_aware(CHEAP_TARGET),
        "every_third": EveryThird.make(4),
    }[which]
    return generate(
        target,
        prompt,
        lengths,
        key,
        max_new_tokens=MAX_NEW,
        sampling=sampling,
        drafter=drafter,
        max_draft_tokens=4,
        controller=controller,
        eos_id=eos_id,
    )


@pytest.mark.parametrize(
    ("kind", "which"),
    [
        ("self", "every_third"),
        ("exit", "every_third"),
        pytest.param("self_tree", "every_third", marks=pytest.mark.slow),
        ("lookup", "default"),
        pytest.param("recycling", "default", marks=pytest.mark.slow),
        pytest.param("self", "cheap", marks=pytest.mark.slow),
    ],
)
def test_greedy_equals_plain_greedy_with_rounds_skipped(target, kind, which):
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 4, 9, seed=3, min_length=2)
    key = jax.random.key(0)
    plain = run(target, prompt, lengths, key, "none", "default", eos_id=5)
    spec = run(target, prompt, lengths, key, kind, which, eos_id=5)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    if which == "every_third":
        # The draft is the target itself: after the skipped rounds its cache caught up, so
        # every draft is accepted (a stale draft cache would propose wrong tokens).
        if kind == "self":
            assert np.all(spec.stats.accepted == spec.stats.drafted)
        elif kind == "exit":  # a one-layer exit of a two-layer target: some drafts accepted
            assert np.all(spec.stats.accepted > 0)
        else:  # the tree's first level holds the target's token: >= 1 accepted per 6 nodes
            assert np.all(spec.stats.accepted * 6 >= spec.stats.drafted)
        assert np.all(spec.stats.drafted > 0)
        assert np.all(spec.stats.target_calls < plain.stats.target_calls)


@pytest.mark.slow  # one more compile; the fast tier checks the copy (test_tree_drafters)
def test_early_exit_copying_the_target_cache_drafts_as_computing_it(target):
    # After skipped rounds the early exit copies the target's first layer where a draft
    # model of the same exit feeds the missing tokens: the same drafts and acceptances.
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 4, 9, seed=3, min_length=2)
    key = jax.random.key(0)
    copied = run(target, prompt, lengths, key, "exit", "every_third", eos_id=5)
    computed = run(target, prompt, lengths, key, "exit_computed", "every_third", eos_id=5)
    np.testing.assert_array_equal(copied.tokens, computed.tokens)
    chex.assert_trees_all_equal(copied.stats, computed.stats)


def test_row_alone_equals_row_in_batch_under_the_default(target):
    prompt, lengths = helpers.ragged_prompts(
        CONFIG.vocab_size, 4, 9, seed=4, min_length=2, period=3
    )
    key = jax.random.key(0)
    batch = run(target, prompt, lengths, key, "lookup", "default")
    alone = run(target, prompt[2:3], lengths[2:3], key, "lookup", "default")
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[2])


@pytest.mark.slow
def test_sampled_output_keeps_the_target_law_when_rounds_are_skipped():
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=16
    )
    target = models.Model(
        config, helpers.perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4)
    )
    draft = models.Model(
        config, helpers.perturbed(models.init_params(config, jax.random.key(5)), 0.5, 6)
    )
    prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
    exact = helpers.exact_continuation_law(target, prompt, 3)
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
            max_draft_tokens=2,
            # Rows draft only while the batch accepts well enough: the choice depends on
            # earlier random outcomes, which must not bias the output.
            controller=drafting.cost_aware(CHEAP_TARGET, decay=0.0, probe_overhead=1.0),
        )
    )(target, draft, jax.random.key(8))
    assert 0 < int(out.stats.accepted.sum()) < int(out.stats.drafted.sum())
    counts = np.bincount(helpers.continuation_codes(out.tokens[:, 3:6], 4), minlength=64)
    statistic = np.sum((counts - exact * num) ** 2 / (exact * num))
    from scipy import stats

    assert stats.chi2.sf(statistic, df=63) > 1e-4


@pytest.mark.slow  # times compiled programs: a measurement run (~8 s of compiling)
def test_calibration_measures_every_part(target):
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 2, 6, seed=0, min_length=2)
    costs = drafting.calibrate_costs(
        target,
        drafting.draft_model(target),
        prompt,
        lengths,
        max_draft=3,
        max_new_tokens=8,
        repeats=1,
        whole_rounds=False,
    )
    assert costs.source == "calibrated" and costs.batch_size == 2
    assert costs.target_tokens == (1, 2, 4) and costs.draft_tokens == (1, 2, 3)
    assert all(s > 0 for s in costs.target_seconds + costs.draft_seconds)
    assert list(costs.target_seconds) == sorted(costs.target_seconds)  # made non-decreasing
    assert costs.round_sizes == ()  # not timed: round_seconds adds up the parts


def test_calibration_rejects_bad_repeats(target):
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 2, 6, seed=0, min_length=2)
    with pytest.raises(ValueError, match="repeats"):
        drafting.calibrate_costs(target, None, prompt, lengths, repeats=0)


@pytest.mark.slow  # a tree drafter's programs: ~9 s of compiling
def test_calibration_measures_a_tree_drafters_parts(target):
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 2, 6, seed=0, min_length=2)
    trie = drafting.trie_retrieval(16, num_nodes=4, branch_length=2, capacity=64)
    tree = drafting.calibrate_costs(
        target, trie, prompt, lengths, max_new_tokens=8, repeats=1, whole_rounds=False
    )
    assert tree.target_tokens == (1, 2, 4, 5) and tree.draft_tokens == (4,)
    assert tree.upkeep_seconds > 0 and tree.observe_seconds > 0


@pytest.mark.slow  # one generation compiled per size
def test_calibration_times_whole_rounds_at_every_size(target):
    prompt, lengths = helpers.ragged_prompts(CONFIG.vocab_size, 2, 6, seed=0, min_length=2)
    trie = drafting.trie_retrieval(16, num_nodes=4, branch_length=2, capacity=64)
    tree = drafting.calibrate_costs(target, trie, prompt, lengths, max_new_tokens=8, repeats=1)
    # Every cut the controller may choose, as the loop runs it.
    assert tree.round_sizes == drafting.tree_sizes(4, trie.block_sizes) == (0, 2, 4)
    assert all(t > 0 for t in tree.round_times)
    np.testing.assert_allclose(tree.round_seconds([0, 2, 4]), tree.round_times)
    chain = drafting.calibrate_costs(
        target,
        drafting.draft_model(target),
        prompt,
        lengths,
        max_draft=1,
        max_new_tokens=8,
        repeats=1,
    )
    assert chain.round_sizes == chain_block_sizes(1) == (0, 1)
    assert all(t > 0 for t in chain.round_times)
