"""Clear ValueErrors, raised while building or tracing, naming what is wrong."""

import jax.numpy as jnp
import numpy as np
import pytest

import lookahead_jax
from lookahead_jax import predictive_coding as pc


def chain() -> pc.Network:
    return pc.Network().add_nodes(precision=1e4).add_nodes(value_children=0)


def test_unknown_node_kind():
    with pytest.raises(ValueError, match=r"`kind` must be one of .*'categorical-state'"):
        pc.Network().add_nodes("categorical-state")
    with pytest.raises(ValueError, match=r"node 0: `kind` must be one of"):
        pc.Structure(("gaussian",), (), ())


def test_unknown_options_and_parameters():
    with pytest.raises(ValueError, match=r"`volatility_updates` must be one of .*'classic'"):
        pc.Network(volatility_updates="classic")
    with pytest.raises(ValueError, match=r"unknown node parameter\(s\) \['tonic_vol'\]"):
        pc.Network().add_nodes(tonic_vol=-3.0)
    with pytest.raises(ValueError, match=r"`n_nodes` must be a positive int; got 0"):
        pc.Network().add_nodes(n_nodes=0)
    with pytest.raises(ValueError, match=r"`coupling_fn` .* is not supported"):
        chain().add_nodes(value_children=1, coupling_fn=(None,))
    with pytest.raises(ValueError, match=r"one strength per index; got 2 indices and 1"):
        chain().add_nodes(volatility_children=([0, 1], [1.0]))


def test_edges_to_missing_nodes():
    with pytest.raises(ValueError, match=r"`value_children` names node 3, .* nodes 0..1"):
        chain().add_nodes(value_children=3)
    with pytest.raises(ValueError, match=r"`volatility_parents` names node -1"):
        chain().add_nodes(volatility_parents=-1)
    with pytest.raises(ValueError, match=r"names child 5, but the network has nodes 0..1"):
        pc.Structure((pc.CONTINUOUS, pc.CONTINUOUS), ((0, 5),), ())
    # A failed call leaves the network as it was.
    net = chain()
    with pytest.raises(ValueError):
        net.add_nodes(value_children=7)
    assert net.n_nodes == 2


def test_cycles():
    # 0 <- 1 (value), 1 <- 2 (value), and 2 <- 0 (0 declared as 2's value parent).
    net = chain().add_nodes(value_children=1)
    with pytest.raises(ValueError, match=r"must not form a cycle"):
        net.add_nodes(value_children=2, value_parents=0)
    with pytest.raises(ValueError, match=r"must not form a cycle; nodes \[0, 1\]"):
        pc.Structure((pc.CONTINUOUS, pc.CONTINUOUS), ((0, 1),), ((1, 0),))
    with pytest.raises(ValueError, match=r"must join two nodes"):
        pc.Structure((pc.CONTINUOUS,), ((0, 0),), ())


def test_binary_nodes_need_one_continuous_parent():
    with pytest.raises(ValueError, match=r"binary-state node 0 needs a value parent"):
        pc.Network().add_nodes("binary-state").input_data(np.ones(3))
    with pytest.raises(ValueError, match=r"node 0 is a binary-state node; it can only be a child"):
        pc.Network().add_nodes("binary-state").add_nodes(value_parents=0)
    with pytest.raises(ValueError, match=r"only have value parents"):
        pc.Network().add_nodes("binary-state").add_nodes(volatility_children=0)


def test_inputs_must_match_the_input_nodes():
    net = (
        pc.Network()
        .add_nodes(precision=1e4)
        .add_nodes(precision=1e4)
        .add_nodes(value_children=[0, 1])
    )
    structure, params, beliefs = net.compile()
    with pytest.raises(ValueError, match=r"`inputs` must have shape \[\?, 2\] .*got \(10, 3\)"):
        pc.filter_series(structure, params, beliefs, jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"`inputs` must have rank 2 .*got shape \(10,\)"):
        pc.filter_series(structure, params, beliefs, jnp.zeros(10))
    with pytest.raises(ValueError, match=r"`observed` must have shape \[10, 2\] .*got \(10, 1\)"):
        pc.filter_series(structure, params, beliefs, jnp.zeros((10, 2)), jnp.ones((10, 1)))
    with pytest.raises(ValueError, match=r"`time_steps` must have shape \[10\] .*got \(9,\)"):
        pc.filter_series(structure, params, beliefs, jnp.zeros((10, 2)), None, jnp.ones(9))
    with pytest.raises(ValueError, match=r"`inputs` must have rank 2"):
        net.input_data(np.zeros(10))  # two input nodes need two columns
    bad_params = params._replace(tonic_volatility=params.tonic_volatility[:2])
    with pytest.raises(ValueError, match=r"`params.tonic_volatility` must have shape \[3\]"):
        pc.filter_series(structure, bad_params, beliefs, jnp.zeros((10, 2)))


# Runtime value checks (issue 15): eager -> ValueError at once; traced -> under `checked`.
_checked_filter = lookahead_jax.checked(
    pc.filter_series, static_argnums=0, static_argnames="robust"
)
_checked_step = lookahead_jax.checked(pc.step, static_argnames=("structure", "robust"))


def _continuous():
    return chain().compile(jnp.float32)


def _binary():
    return pc.Network().add_nodes("binary-state").add_nodes(value_children=0).compile(jnp.float32)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_time_steps_must_be_positive(bad):
    structure, params, beliefs = _continuous()
    inputs = jnp.ones((6, 1), jnp.float32)
    time_steps = np.ones(6, np.float32)
    time_steps[3] = bad
    match = r"`time_steps` must be finite and > 0 .*; got (-1.0|0.0|nan) at step 3"
    with pytest.raises(ValueError, match=match):
        pc.filter_series(structure, params, beliefs, inputs, None, time_steps)
    with pytest.raises(ValueError, match=match):
        _checked_filter(structure, params, beliefs, inputs, None, time_steps)
    with pytest.raises(ValueError, match=match):
        chain().input_data(np.ones(6), time_steps=time_steps)
    with pytest.raises(ValueError, match=r"`time_steps` must be finite and > 0"):
        pc.step(None, beliefs, params, inputs[0], time_step=bad, structure=structure)
    with pytest.raises(ValueError, match=r"`time_steps` must be finite and > 0"):
        _checked_step(None, beliefs, params, inputs[0], time_step=bad, structure=structure)
    # Padding rows (at or after `length`) are not checked; a good series passes.
    pc.filter_series(structure, params, beliefs, inputs, None, time_steps, length=3)
    _checked_filter(structure, params, beliefs, inputs, None, np.ones(6, np.float32))


def test_binary_inputs_must_be_zero_or_one():
    structure, params, beliefs = _binary()
    inputs = jnp.asarray([[0.0], [1.0], [3.0], [1.0]], jnp.float32)
    match = (
        r"`inputs` column 0 feeds binary-state node 0: observed values must be 0 or 1; "
        r"got 3.0 at step 2"
    )
    with pytest.raises(ValueError, match=match):
        pc.filter_series(structure, params, beliefs, inputs)
    with pytest.raises(ValueError, match=match):
        _checked_filter(structure, params, beliefs, inputs)
    with pytest.raises(ValueError, match=match):
        _checked_filter(structure, params, beliefs, inputs, robust=True)
    with pytest.raises(ValueError, match=match):
        pc.Network().add_nodes("binary-state").add_nodes(value_children=0).input_data(inputs[:, 0])
    with pytest.raises(ValueError, match=r"observed values must be 0 or 1; got 3.0 at step 0"):
        pc.step(None, beliefs, params, inputs[2], structure=structure)
    # A masked entry is never read, whatever it holds.
    observed = jnp.asarray([[1], [1], [0], [1]])
    _checked_filter(structure, params, beliefs, inputs, observed)
    pc.filter_series(structure, params, beliefs, inputs, observed)


def test_observed_inputs_must_be_finite_outside_robust_mode():
    structure, params, beliefs = _continuous()
    inputs = jnp.asarray([[1.0], [np.inf], [1.0]], jnp.float32)
    match = r"`inputs` must be finite where `observed` is 1 .*; got inf at step 1, column 0"
    with pytest.raises(ValueError, match=match):
        pc.filter_series(structure, params, beliefs, inputs)
    with pytest.raises(ValueError, match=match):
        _checked_filter(structure, params, beliefs, inputs)
    # Robust mode treats a non-finite input as missing; a mask skips it in both modes.
    _checked_filter(structure, params, beliefs, inputs, robust=True)
    _checked_filter(structure, params, beliefs, inputs, jnp.asarray([[1], [0], [1]]))
