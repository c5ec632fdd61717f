"""Draft-length controllers."""

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
