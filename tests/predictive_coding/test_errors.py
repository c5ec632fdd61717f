"""Clear ValueErrors, raised while building or tracing, naming what is wrong."""

import jax.numpy as jnp
import numpy as np
import pytest

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
        pc.filter(structure, params, beliefs, jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"`inputs` must have rank 2 .*got shape \(10,\)"):
        pc.filter(structure, params, beliefs, jnp.zeros(10))
    with pytest.raises(ValueError, match=r"`observed` must have shape \[10, 2\] .*got \(10, 1\)"):
        pc.filter(structure, params, beliefs, jnp.zeros((10, 2)), jnp.ones((10, 1)))
    with pytest.raises(ValueError, match=r"`time_steps` must have shape \[10\] .*got \(9,\)"):
        pc.filter(structure, params, beliefs, jnp.zeros((10, 2)), None, jnp.ones(9))
    with pytest.raises(ValueError, match=r"`inputs` must have rank 2"):
        net.input_data(np.zeros(10))  # two input nodes need two columns
    bad_params = params._replace(tonic_volatility=params.tonic_volatility[:2])
    with pytest.raises(ValueError, match=r"`params.tonic_volatility` must have shape \[3\]"):
        pc.filter(structure, bad_params, beliefs, jnp.zeros((10, 2)))
