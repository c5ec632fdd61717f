"""MAP fitting by optax: reaches the optimum, and many subjects (vmap, 8 devices) equal a loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import predictive_coding as pc
from lookahead_jax import sharding
from lookahead_jax.predictive_coding import fitting

SERIES = pc.load_data("continuous")[:150, None]
NUM_STEPS = 100


def two_level() -> pc.Network:
    return (
        pc.Network(volatility_updates="standard", mean_field_updates=True)
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-6.0)
        .add_nodes(volatility_children=1, mean=1.0, precision=10.0, tonic_volatility=-3.0)
    )


@pytest.fixture(scope="module")
def problem():
    """float64 problem: one free parameter (x1's tonic volatility) under a N(-6, 2) prior."""
    with jax.enable_x64(True):
        structure, params, beliefs = two_level().compile()
        theta0, unpack = fitting.free_parameters(params, beliefs, {"tonic_volatility": [1]})
        loss = fitting.map_loss(structure, unpack, theta0, prior_precision=0.5)
        fit = jax.jit(
            functools.partial(fitting.fit, loss, optimizer=optax.adam(0.1), num_steps=NUM_STEPS)
        )
        yield theta0, loss, fit


def test_single_subject_reaches_the_grid_minimum(problem):
    theta0, loss, fit = problem
    with jax.enable_x64(True):
        result = fit(theta0, SERIES)
        omega = float(result.theta["tonic_volatility"][0])
        losses = np.asarray(result.losses)
        assert losses[-1] < losses[0]
        # A 1-D grid of the same loss brackets the optimum found by adam.
        grid = jnp.linspace(omega - 1.0, omega + 1.0, 201)
        values = jax.jit(jax.vmap(lambda w: loss({"tonic_volatility": w[None]}, SERIES)))(grid)
        best = int(jnp.argmin(values))
        assert 0 < best < 200, "the grid minimum must be interior"
        assert abs(float(grid[best]) - omega) <= float(grid[1] - grid[0])
        assert float(loss(result.theta, SERIES)) <= float(values[best]) + 1e-9
        assert abs(omega - float(theta0["tonic_volatility"][0])) > 10 * float(grid[1] - grid[0])


def test_many_subjects_sharded_equal_a_loop(problem):
    """vmap over 8 subjects, sharded over the 8 devices, equals fitting each alone."""
    theta0, loss, fit = problem
    with jax.enable_x64(True):
        n = 8
        scales = 1.0 + 0.02 * jnp.arange(n)
        inputs = scales[:, None, None] * jnp.asarray(SERIES)[None]
        starts = {
            "tonic_volatility": theta0["tonic_volatility"][None] + jnp.linspace(-1, 1, n)[:, None]
        }
        mesh = sharding.make_mesh(8)
        starts_s, inputs_s = sharding.shard((starts, inputs), mesh, axes=0)
        batched = jax.jit(
            functools.partial(
                fitting.fit_subjects, loss, optimizer=optax.adam(0.1), num_steps=NUM_STEPS
            )
        )
        together = batched(starts_s, inputs_s)
        assert len(together.theta["tonic_volatility"].sharding.device_set) == 8
        for i in range(n):
            alone = fit({"tonic_volatility": starts["tonic_volatility"][i]}, inputs[i])
            np.testing.assert_allclose(
                np.asarray(together.theta["tonic_volatility"][i]),
                np.asarray(alone.theta["tonic_volatility"]),
                rtol=1e-9,
            )
            np.testing.assert_allclose(
                np.asarray(together.losses[i]), np.asarray(alone.losses), rtol=1e-9
            )


def test_free_parameters_round_trip_and_errors():
    _, params, beliefs = two_level().compile()
    theta, unpack = fitting.free_parameters(
        params, beliefs, {"precision": [1, 2], "volatility_coupling": [0]}
    )
    np.testing.assert_allclose(np.exp(theta["precision"]), [1e4, 10.0], rtol=1e-6)
    p, b = unpack(theta)
    for got, want in zip(jax.tree.leaves((p, b)), jax.tree.leaves((params, beliefs)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown field 'omega'"):
        fitting.free_parameters(params, beliefs, {"omega": [1]})
    with pytest.raises(ValueError, match=r"indices in \[0, 3\); got \[3\]"):
        fitting.free_parameters(params, beliefs, {"tonic_volatility": [3]})
