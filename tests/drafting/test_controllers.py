"""Draft-length controllers."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import drafting


def test_heuristic_plus_two_minus_one():
    controller = drafting.heuristic(initial=3, minimum=1)
    state = controller.init(3, 8)
    np.testing.assert_array_equal(controller.num_draft(state), [3, 3, 3])
    state = controller.update(state, jnp.asarray([3, 3, 3]), jnp.asarray([3, 1, 0]))
    np.testing.assert_array_equal(controller.num_draft(state), [5, 2, 2])
    state = controller.update(state, jnp.asarray([5, 2, 2]), jnp.asarray([0, 0, 0]))
    state = controller.update(state, jnp.asarray([4, 1, 1]), jnp.asarray([0, 0, 0]))
    np.testing.assert_array_equal(controller.num_draft(state), [3, 1, 1])


def test_constant_clips_to_static_maximum():
    controller = drafting.constant(6)
    np.testing.assert_array_equal(controller.num_draft(controller.init(2, 4)), [4, 4])


def test_ema_controller_follows_recent_acceptance():
    controller = drafting.ema(initial=4, minimum=1, decay=0.5, margin=1)
    state = controller.init(2, 8)
    assert controller.num_draft(state).tolist() == [4, 4]
    for _ in range(6):  # row 0 keeps accepting 6, row 1 accepts nothing
        state = controller.update(state, jnp.array([7, 7]), jnp.array([6, 0]))
    assert controller.num_draft(state).tolist() == [7, 1]
    np.testing.assert_allclose(state.accepted[0], 6 - 3 * 0.5**6, rtol=1e-6)


def test_expected_speedup_controller_picks_the_best_length():
    cheap = drafting.expected_speedup(draft_cost=0.0, initial_rate=0.9)
    state = cheap.init(1, 6)
    assert cheap.num_draft(state).tolist() == [6]  # free drafts: draft as far as allowed
    costly = drafting.expected_speedup(draft_cost=1.0, initial_rate=0.5)
    state = costly.init(1, 6)
    assert costly.num_draft(state).tolist() == [1]  # a draft as costly as the target: 1 token
    # The rate is learned: after many fully rejected rounds a cheap draft still stays short.
    learner = drafting.expected_speedup(draft_cost=0.25, initial_rate=0.9)
    state = learner.init(1, 6)
    long = int(learner.num_draft(state)[0])
    for _ in range(40):
        state = learner.update(state, jnp.array([6]), jnp.array([0]))
    assert int(learner.num_draft(state)[0]) < long
    # Brute force of the formula at the learned rate.
    rate = float(state.accepted[0] / state.tested[0])
    speed = [(1 - rate ** (d + 1)) / (1 - rate) / (d * 0.25 + 1) for d in range(1, 7)]
    assert int(learner.num_draft(state)[0]) == int(np.argmax(speed)) + 1


def test_equal_settings_give_equal_controllers_and_one_compile():
    """Controllers are static arguments of jit: rebuilding one must not compile again."""
    makers = [
        lambda: drafting.constant(3),
        lambda: drafting.heuristic(initial=2),
        lambda: drafting.ema(decay=0.5),
        lambda: drafting.expected_speedup(draft_cost=0.25),
    ]
    for make in makers:
        assert make() == make() and hash(make()) == hash(make())
    assert drafting.heuristic(initial=2) != drafting.heuristic(initial=3)

    @functools.partial(jax.jit, static_argnames="controller")
    @chex.assert_max_traces(n=1)
    def next_lengths(accepted, controller):
        state = controller.init(2, 8)
        return controller.num_draft(controller.update(state, jnp.full((2,), 2), accepted))

    for _ in range(2):
        out = next_lengths(jnp.asarray([2, 0]), controller=drafting.heuristic(initial=2))
        np.testing.assert_array_equal(out, [4, 1])
