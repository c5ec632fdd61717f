"""The pure core: gradients, vmap over subjects, sharding, Lambert W, missing inputs, builder."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import predictive_coding as pc
from lookahead_jax import sharding
from lookahead_jax.predictive_coding import core

SERIES = pc.load_data("continuous")  # [614] USD-CHF


def three_level(volatility_updates: str, mean_field_updates: bool = False) -> pc.Network:
    return (
        pc.Network(volatility_updates=volatility_updates, mean_field_updates=mean_field_updates)
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-8.0)
        .add_nodes(volatility_children=1, mean=1.0, precision=10.0, tonic_volatility=-4.0)
        .add_nodes(volatility_children=2, mean=0.5, precision=10.0, tonic_volatility=-5.0)
    )


@functools.cache
def _value_and_grad(structure: pc.Structure):
    """One compiled function for the total input surprise and its gradient w.r.t.
    (params, beliefs); finite differences reuse it (one compile per structure)."""

    def loss(params, beliefs, inputs):
        _, trajectories = pc.filter_series(structure, params, beliefs, inputs)
        return pc.total_surprise(structure, trajectories)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize(("updates", "mean_field"), [("standard", True), ("unbounded", False)])
def test_grad_of_total_surprise_matches_finite_differences(updates, mean_field):
    """Gradient coordinates of every kind of parameter, against central differences.

    float64, step h = 1e-6 max(1, |x|): truncation is O(h^2); rounding is
    O(eps |f| / h) ~ 1e-7 absolute for |f| ~ 400, hence atol = 1e-7 beside rtol = 1e-5
    (measured: worst 2e-5 relative, on a gradient of -6e-3, i.e. 1.2e-7 absolute).
    """
    with jax.enable_x64(True):
        structure, params, beliefs = three_level(updates, mean_field).compile()
        inputs = jnp.asarray(SERIES[:100, None])
        value_and_grad = _value_and_grad(structure)
        _, (g_params, g_beliefs) = value_and_grad(params, beliefs, inputs)
        coordinates = [
            ("params", "tonic_volatility", 1),
            ("params", "tonic_volatility", 2),
            ("params", "tonic_volatility", 3),
            ("params", "volatility_coupling", 0),
            ("params", "volatility_coupling", 1),
            ("params", "value_coupling", 0),
            ("params", "tonic_drift", 1),
            ("params", "autoconnection_strength", 2),
            ("beliefs", "mean", 2),
            ("beliefs", "precision", 3),
        ]
        for tree, name, index in coordinates:
            base = params if tree == "params" else beliefs
            value = float(getattr(base, name)[index])
            h = 1e-6 * max(1.0, abs(value))

            def shifted(delta, tree=tree, base=base, name=name, index=index):
                moved = base._replace(**{name: getattr(base, name).at[index].add(delta)})
                args = (moved, beliefs) if tree == "params" else (params, moved)
                return float(value_and_grad(*args, inputs)[0])

            numeric = (shifted(h) - shifted(-h)) / (2 * h)
            analytic = float(getattr(g_params if tree == "params" else g_beliefs, name)[index])
            assert np.isfinite(analytic), (name, index)
            np.testing.assert_allclose(
                analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=f"{tree}.{name}[{index}]"
            )


def _subjects(structure, params, beliefs, n):
    """n subjects: different tonic volatilities and differently scaled series."""
    omegas = params.tonic_volatility[None, :] + jnp.linspace(-1.0, 1.0, n)[:, None] * jnp.asarray(
        [0.0, 1.0, 0.5, 0.25]
    )
    batch_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), params)
    batch_params = batch_params._replace(tonic_volatility=omegas)
    batch_beliefs = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), beliefs)
    scales = 1.0 + 0.01 * jnp.arange(n, dtype=beliefs.mean.dtype)
    inputs = scales[:, None, None] * jnp.asarray(SERIES[:120, None], beliefs.mean.dtype)[None]
    return batch_params, batch_beliefs, inputs


def test_vmap_over_subjects_equals_a_loop():
    with jax.enable_x64(True):
        structure, params, beliefs = three_level("unbounded").compile()
        batch_params, batch_beliefs, inputs = _subjects(structure, params, beliefs, 4)
        run = jax.jit(pc.filter_series, static_argnums=0)
        batched = jax.jit(jax.vmap(pc.filter_series, in_axes=(None, 0, 0, 0)), static_argnums=0)
        final, trajectories = batched(structure, batch_params, batch_beliefs, inputs)
        for i in range(4):
            one = jax.tree.map(lambda x, i=i: x[i], (batch_params, batch_beliefs, inputs))
            final_i, trajectories_i = run(structure, *one)
            for got, want in zip(
                jax.tree.leaves((final, trajectories)),
                jax.tree.leaves((final_i, trajectories_i)),
                strict=True,
            ):
                np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-12)


def test_eight_devices_equal_one():
    """Subjects sharded over the 8 simulated devices give the 1-device results."""
    with jax.enable_x64(True):
        structure, params, beliefs = three_level("standard", True).compile()
        batch_params, batch_beliefs, inputs = _subjects(structure, params, beliefs, 8)
        batched = jax.jit(jax.vmap(pc.filter_series, in_axes=(None, 0, 0, 0)), static_argnums=0)
        single = batched(structure, batch_params, batch_beliefs, inputs)
        mesh = sharding.make_mesh(8)
        placed = sharding.shard((batch_params, batch_beliefs, inputs), mesh, axes=0)
        assert len(placed[2].sharding.device_set) == 8
        spread = batched(structure, *placed)
        assert len(spread[1].beliefs.mean.sharding.device_set) == 8
        for got, want in zip(jax.tree.leaves(spread), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


def test_lambert_w_solves_its_equation():
    with jax.enable_x64(True):
        z = jnp.concatenate([jnp.linspace(-30.0, 30.0, 601), jnp.asarray([100.0, 700.0, 1e4])])
        w = core._lambertw_of_exp(z)
        # W(e^z) solves w + log w = z; compare to |z| + 1 (the equation's scale).
        np.testing.assert_allclose(w + jnp.log(w), z, rtol=0, atol=4e-15 * (1 + 1e4))
        np.testing.assert_allclose(
            np.asarray(w + jnp.log(w) - z) / (1 + np.abs(np.asarray(z))), 0.0, atol=1e-15
        )
        # Derivative (custom JVP) against central differences.
        grad = jax.vmap(jax.grad(core._lambertw_of_exp))(z[:601])
        h = 1e-6
        numeric = (core._lambertw_of_exp(z[:601] + h) - core._lambertw_of_exp(z[:601] - h)) / (
            2 * h
        )
        np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-12)


def test_lambert_w_float32_is_at_float32_rounding():
    """float32 takes one Halley step (float64 two). Against the float64 solution at the
    same (float32) z the error is a few float32 roundings (measured: at most 8 ulps,
    more steps do not lower it), growing like eps |z| where w is small and
    w + log w - z cancels; far below what float32 parity with pyhgf needs."""
    z32 = np.linspace(-80.0, 80.0, 16001).astype(np.float32)
    with jax.enable_x64(True):
        exact = np.asarray(core._lambertw_of_exp(jnp.asarray(z32, jnp.float64)))
    w32 = np.asarray(core._lambertw_of_exp(jnp.asarray(z32)), np.float64)
    relative = np.abs(w32 - exact) / exact
    bound = (10.0 + np.abs(z32)) * np.finfo(np.float32).eps
    assert np.all(relative <= bound), (relative / bound).max()


@pytest.mark.parametrize("updates", ["standard", "unbounded"])
def test_missing_nan_input_is_skipped_in_both_modes(updates):
    """observed = 0 with a NaN value changes nothing, in parity mode too (pyhgf's `0 * x`
    let it poison every later step): the beliefs equal those of the run where the masked
    entries hold finite values, except the input's own recorded value (parity mode keeps
    what it was given, as pyhgf). The unbounded case has an input under a volatility
    parent, whose update pyhgf also fed from masked values."""
    with jax.enable_x64(True):
        net = pc.Network(volatility_updates=updates).add_nodes(precision=1e4)
        net.add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-8.0)
        net.add_nodes(volatility_children=[0, 1], mean=1.0, tonic_volatility=-4.0)
        structure, params, beliefs = net.compile()
        inputs = np.asarray(SERIES[:40, None]).copy()
        observed = np.ones_like(inputs, dtype=bool)
        observed[20:25] = False
        with_nan, moved = inputs.copy(), inputs.copy()
        with_nan[20:25] = np.nan
        moved[20:25] = 5.0
        run = jax.jit(pc.filter_series, static_argnums=0, static_argnames="robust")
        for robust in (False, True):
            finals, beliefs_runs = [], []
            for series in (with_nan, inputs, moved):
                final, trajectories = run(
                    structure, params, beliefs, series, observed, robust=robust
                )
                finals.append(final)
                beliefs_runs.append(trajectories.beliefs)
            for other, other_final in zip(beliefs_runs[1:], finals[1:], strict=True):
                chex.assert_trees_all_equal(finals[0], other_final)
                for name in pc.Beliefs._fields:
                    got = np.asarray(getattr(beliefs_runs[0], name))
                    want = np.asarray(getattr(other, name))
                    if name == "mean" and not robust:
                        got, want = got[:, 1:], want[:, 1:]  # the input records its value
                    np.testing.assert_array_equal(got, want, err_msg=f"{name} robust={robust}")
            assert np.isfinite(np.asarray(beliefs_runs[0].mean[:, 1:])).all()
            # While nothing is observed, x1 keeps its prediction and loses precision.
            mean1 = np.asarray(beliefs_runs[0].mean[:, 1])
            precision1 = np.asarray(beliefs_runs[0].precision[:, 1])
            np.testing.assert_array_equal(mean1[20:25], mean1[19])
            assert (np.diff(precision1[19:25]) < 0).all()
        # Gradients stay finite too (the masked NaN reaches no arithmetic).
        grad = jax.grad(
            lambda p: pc.total_surprise(
                structure, pc.filter_series(structure, p, beliefs, with_nan, observed)[1], observed
            )
        )(params)
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(grad))


def test_builder_edge_forms_are_equivalent():
    """Edges given from the parent or from the child, as int, list or (indices, strengths)."""
    a = (
        pc.Network(volatility_updates="standard")
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.0)
        .add_nodes(volatility_children=([1], [0.5]))
    )
    parents_first = (
        pc.Network(volatility_updates="standard")
        .add_nodes(tonic_volatility=-4.0)  # node 0: volatility parent
        .add_nodes(mean=1.0, volatility_parents=([0], [0.5]))  # node 1
        .add_nodes(precision=1e4, value_parents=1)  # node 2: the input
    )
    a.input_data(SERIES[:50])
    parents_first.input_data(SERIES[:50])
    assert a.input_idxs == (0,) and parents_first.input_idxs == (2,)
    for field in ("mean", "precision", "expected_mean", "expected_precision"):
        for node_a, node_b in ((0, 2), (1, 1), (2, 0)):
            np.testing.assert_array_equal(
                a.node_trajectories[node_a][field], parents_first.node_trajectories[node_b][field]
            )
    assert a.node_trajectories[1]["mean"].shape == (50,)
    assert a.node_trajectories[-1]["time_step"].shape == (50,)


def test_compiles_once_per_structure_and_length():
    net = three_level("standard", True)
    net.input_data(SERIES[:64])
    before = net.trajectories.beliefs.mean
    size = pc.network._filter_jit._cache_size()
    net.input_data(SERIES[64:128])  # same length, new values: no new compile
    assert pc.network._filter_jit._cache_size() == size
    assert not np.array_equal(net.trajectories.beliefs.mean, before)


def test_plot_trajectories_draws_one_panel_per_node_with_bands():
    import matplotlib

    matplotlib.use("Agg")
    net = three_level("standard", True)
    with pytest.raises(ValueError, match="call `input_data` first"):
        net.plot_trajectories()
    net.input_data(SERIES[:40])
    fig = net.plot_trajectories()
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["node 3", "node 2", "node 1", "input 0"]
    # The band of node 2 spans mean +- 1.96 / sqrt(precision).
    band = axes[1].collections[0].get_paths()[0].vertices[:, 1]
    sd = 1.0 / np.sqrt(np.asarray(net.node_trajectories[2]["precision"]))
    mean = np.asarray(net.node_trajectories[2]["mean"])
    np.testing.assert_allclose(band.max(), (mean + 1.96 * sd).max(), rtol=1e-5)
    np.testing.assert_allclose(band.min(), (mean - 1.96 * sd).min(), rtol=1e-5)
    matplotlib.pyplot.close(fig)


def test_length_buckets_reuse_one_compile_and_change_nothing():
    """Series of 130 and 200 steps share the 256-step program; padding changes no value."""
    net = three_level("standard", True)
    net.input_data(SERIES[:130], bucket=True)
    size = pc.network._filter_jit._cache_size()
    padded = {}
    for length in (200, 130):
        net.input_data(SERIES[:length], bucket=True)
        padded[length] = net.trajectories
        assert padded[length].beliefs.mean.shape == (length, 4)
    assert pc.network._filter_jit._cache_size() == size  # no new compile
    for length, trajectories in list(padded.items())[:1]:  # one unpadded compile is enough
        net.input_data(SERIES[:length])
        for got, want in zip(
            jax.tree.leaves(trajectories), jax.tree.leaves(net.trajectories), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert pc.network.length_bucket(130) == pc.network.length_bucket(200) == 256
    assert pc.network.length_bucket(256) == 256
    assert pc.network.length_bucket(5) == 128


def test_ragged_subjects_under_vmap():
    """`length` per subject: a short subject inside a padded batch equals its own run."""
    structure, params, beliefs = three_level("standard", True).compile()
    inputs = jnp.stack([jnp.asarray(SERIES[:90, None]), jnp.asarray(SERIES[100:190, None])])
    lengths = jnp.asarray([90, 60])
    run = jax.vmap(lambda x, n: pc.filter_series(structure, params, beliefs, x, length=n))
    final, trajectories = jax.jit(run)(inputs, lengths)
    alone_final, alone = jax.jit(pc.filter_series, static_argnums=0)(
        structure, params, beliefs, inputs[1, :60]
    )
    np.testing.assert_array_equal(trajectories.beliefs.mean[1, :60], alone.beliefs.mean)
    np.testing.assert_array_equal(final.mean[1], alone_final.mean)
    # Padding rows repeat the last real step.
    np.testing.assert_array_equal(
        trajectories.beliefs.mean[1, 60:], alone.beliefs.mean[59:60].repeat(30, 0)
    )
