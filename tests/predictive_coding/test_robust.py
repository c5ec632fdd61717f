"""Robust mode: no parameter draw produces NaN or inf (float32, the fragile precision)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax import predictive_coding as pc

USDCHF = pc.load_data("continuous")
# Tiled: the jump from the last rate (0.82) back to the first (1.04) is the kind of
# level shift that sends pyhgf's classic HGF to NaN.
TILED = np.tile(USDCHF, 2)[:, None].astype(np.float32)
OUTCOMES = pc.load_data("binary")[0][:, None].astype(np.float32)


def continuous3(updates: str) -> pc.Network:
    return (
        pc.Network(volatility_updates=updates)
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.04, precision=1e4)
        .add_nodes(volatility_children=1)
        .add_nodes(volatility_children=2)
    )


def binary3(updates: str) -> pc.Network:
    return (
        pc.Network(volatility_updates=updates)
        .add_nodes("binary-state")
        .add_nodes(value_children=0)
        .add_nodes(volatility_children=1)
    )


@functools.cache
def all_finite_fn(structure: pc.Structure, robust: bool):
    """jit: does the run from (params, beliefs) stay finite everywhere? (one compile)"""

    def all_finite(params, beliefs, inputs):
        final, trajectories = pc.filter_series(structure, params, beliefs, inputs, robust=robust)
        leaves = jax.tree.leaves((final, trajectories))
        return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves if x.dtype != bool]))

    return jax.jit(all_finite)


def draw_parameters(data, structure, params, beliefs):
    """Wide draws: log-volatilities, couplings, drifts, autoconnections, initial beliefs."""
    n, inputs = structure.num_nodes, set(structure.input_nodes)
    floats = functools.partial(st.floats, allow_nan=False, allow_infinity=False)
    omega = [0.0 if k in inputs else data.draw(floats(-16.0, 4.0)) for k in range(n)]
    drift = [0.0 if k in inputs else data.draw(floats(-0.5, 0.5)) for k in range(n)]
    lam = [0.0 if k in inputs else data.draw(floats(0.0, 1.2)) for k in range(n)]
    alpha = [data.draw(floats(-3.0, 3.0)) for _ in structure.value_edges]
    kappa = [data.draw(floats(0.05, 4.0)) for _ in structure.volatility_edges]
    mean = [data.draw(floats(-5.0, 5.0)) for _ in range(n)]
    log_precision = [data.draw(floats(-3.0, 5.0)) for _ in range(n)]
    params = pc.Params(
        tonic_volatility=jnp.asarray(omega, jnp.float32),
        tonic_drift=jnp.asarray(drift, jnp.float32),
        autoconnection_strength=jnp.asarray(lam, jnp.float32),
        value_coupling=jnp.asarray(alpha, jnp.float32),
        volatility_coupling=jnp.asarray(kappa, jnp.float32),
    )
    beliefs = beliefs._replace(
        mean=jnp.asarray(mean, jnp.float32),
        precision=jnp.asarray(10.0 ** np.asarray(log_precision), jnp.float32),
    )
    return params, beliefs


@pytest.mark.parametrize("updates", ["standard", "eHGF", "unbounded"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_robust_continuous_never_nan(updates, data):
    structure, params, beliefs = continuous3(updates).compile(jnp.float32)
    params, beliefs = draw_parameters(data, structure, params, beliefs)
    assert bool(all_finite_fn(structure, True)(params, beliefs, TILED))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_robust_binary_never_nan(data):
    structure, params, beliefs = binary3("unbounded").compile(jnp.float32)
    params, beliefs = draw_parameters(data, structure, params, beliefs)
    assert bool(all_finite_fn(structure, True)(params, beliefs, OUTCOMES))


def test_parity_mode_does_fail_where_robust_mode_does_not():
    """On fixed random draws the classic HGF in parity mode (pyhgf's arithmetic) hits NaN
    for some, robust mode for none (nor its gradient): the tests above are not vacuous."""
    structure, params, beliefs = continuous3("standard").compile(jnp.float32)
    key_omega, key_kappa = jax.random.split(jax.random.PRNGKey(0))
    n = 32
    omega = jax.random.uniform(key_omega, (n, 3), minval=-12.0, maxval=0.0)
    kappa = jax.random.uniform(key_kappa, (n, 2), minval=0.1, maxval=2.0)
    batch = params._replace(
        tonic_volatility=jnp.concatenate([jnp.zeros((n, 1)), omega], axis=1),
        volatility_coupling=kappa,
        tonic_drift=jnp.broadcast_to(params.tonic_drift, (n, 4)),
        autoconnection_strength=jnp.broadcast_to(params.autoconnection_strength, (n, 4)),
        value_coupling=jnp.broadcast_to(params.value_coupling, (n, 1)),
    )
    finite = {
        robust: np.asarray(
            jax.vmap(all_finite_fn(structure, robust), in_axes=(0, None, None))(
                batch, beliefs, TILED
            )
        )
        for robust in (False, True)
    }
    assert (~finite[False]).sum() >= 3
    assert finite[True].all()
    # Fitting relies on robust mode: its gradient stays finite on the failing draws.

    def loss(tree):
        _, trajectories = pc.filter_series(structure, tree, beliefs, TILED, robust=True)
        return pc.total_surprise(structure, trajectories)

    grad = jax.jit(jax.grad(loss))
    for i in np.flatnonzero(~finite[False])[:3]:
        g = grad(jax.tree.map(lambda x, i=i: x[i], batch))
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(g)), i
