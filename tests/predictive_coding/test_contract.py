"""The library's contract for the HGF: init / step(key, ...) / run(key, ...), no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import predictive_coding as pc
from lookahead_jax.predictive_coding import core
from tests.predictive_coding import reference

T = 20


def features_problem(variant):
    """Two inputs with missing observations and irregular time steps, 6 nodes, float64."""
    run = reference.load("features_returns", "float64")
    structure, params, beliefs = reference.network(run, variant).compile()
    return structure, params, beliefs, run["inputs"][:T], run["observed"][:T], run["time_steps"][:T]


@pytest.mark.parametrize(
    ("variant", "robust"), [("unbounded-relaxed", False), ("standard-meanfield", True)]
)
def test_step_applied_t_times_equals_run(variant, robust):
    with jax.enable_x64(True):
        structure, params, beliefs, inputs, observed, time_steps = features_problem(variant)
        assert (~observed).any() and (time_steps != 1).all()
        state = pc.init(structure, beliefs)
        step = jax.jit(pc.step, static_argnames=("structure", "robust"))
        infos = []
        for t in range(T):
            state, info = step(
                None, state, params, inputs[t], observed[t], time_steps[t],
                structure=structure, robust=robust,
            )  # fmt: skip
            infos.append(info)
        run = jax.jit(pc.run, static_argnames=("structure", "robust"))
        final, trajectories = run(
            jax.random.key(0), pc.init(structure, beliefs), params, inputs, observed, time_steps,
            structure=structure, robust=robust,
        )  # fmt: skip
        stepped = jax.tree.map(lambda *xs: jnp.stack(xs), *infos)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(final), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
        for got, want in zip(
            jax.tree.leaves(stepped), jax.tree.leaves(trajectories.info), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # The key is unused: any key (or None) gives the same run.
        _, again = run(
            None, pc.init(structure, beliefs), params, inputs, observed, time_steps,
            structure=structure, robust=robust,
        )  # fmt: skip
        chex.assert_trees_all_equal(again, trajectories)


def test_filter_series_is_run_and_filter_is_its_alias():
    assert pc.filter is pc.filter_series
    assert pc.StepInfo is pc.HGFInfo
    structure, params, beliefs = (
        pc.Network().add_nodes(precision=1e4).add_nodes(value_children=0).compile()
    )
    inputs = jnp.asarray(pc.load_data("continuous")[:8, None], jnp.float32)
    chex.assert_trees_all_equal(
        pc.filter_series(structure, params, beliefs, inputs),
        pc.run(None, pc.init(structure, beliefs), params, inputs, structure=structure),
    )
    state = pc.init(structure, dtype=jnp.float32)
    chex.assert_trees_all_equal(state, pc.default_beliefs(structure, jnp.float32))
    with pytest.raises(ValueError, match=r"`beliefs.mean` must have shape \[2\]"):
        pc.init(structure, beliefs._replace(mean=jnp.zeros(3)))


def test_compiled_entry_points_do_not_retrace():
    """jit(step), jit(run) and jit(filter_series) trace once for new values, same shapes."""
    chex.clear_trace_counter()
    structure, params, beliefs = (
        pc.Network(volatility_updates="standard")
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.0)
        .add_nodes(volatility_children=1)
        .compile(jnp.float32)
    )
    series = jnp.asarray(pc.load_data("continuous")[:16, None], jnp.float32)
    step = jax.jit(chex.assert_max_traces(pc.step, n=1), static_argnames=("structure",))
    run = jax.jit(chex.assert_max_traces(pc.run, n=1), static_argnames=("structure",))
    filter_series = jax.jit(chex.assert_max_traces(pc.filter_series, n=1), static_argnums=0)
    for shift in (0.0, 0.5):
        moved = params._replace(tonic_volatility=params.tonic_volatility + shift)
        step(None, beliefs, moved, series[0] + shift, structure=structure)
        run(None, beliefs, moved, series + shift, structure=structure)
        filter_series(structure, moved, beliefs, series + shift)


def test_eager_run_traces_its_step_once(monkeypatch):
    """Without jit, repeated runs reuse the traced scan body (one function object per
    structure, not a fresh closure over arrays): no re-trace, so no recompilation."""
    structure, params, beliefs = (
        pc.Network().add_nodes(precision=1e4).add_nodes(value_children=0).compile(jnp.float32)
    )
    assert core._scan_body(structure, False) is core._scan_body(structure, False)  # cached
    traces = []
    update = core._update_beliefs
    monkeypatch.setattr(core, "_update_beliefs", lambda *a: traces.append(1) or update(*a))
    series = jnp.asarray(pc.load_data("continuous")[:6, None], jnp.float32)
    for shift in (0.0, 1.0, 2.0):
        pc.run(None, beliefs, params, series + shift, structure=structure)
    assert len(traces) <= 1


def _continuous3(updates):
    net = pc.Network(volatility_updates=updates).add_nodes(precision=1e4)
    net = net.add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-8.0)
    net = net.add_nodes(volatility_children=1, mean=1.0, precision=1e1, tonic_volatility=-4.0)
    net = net.add_nodes(volatility_children=2, mean=0.5, precision=1e1, tonic_volatility=-5.0)
    return net.compile(jnp.float32)


@pytest.mark.parametrize("updates", ["standard", "eHGF", "unbounded"])
def test_defaults_for_mask_and_time_steps_equal_explicit_ones(updates):
    """Without a mask or time steps the step folds them in as constants; the result is
    that of passing all-observed and unit time steps (float64: up to rounding)."""
    with jax.enable_x64(True):
        structure, params, beliefs = _continuous3(updates)
        params, beliefs = jax.tree.map(lambda x: x.astype(jnp.float64), (params, beliefs))
        inputs = jnp.asarray(np.resize(pc.load_data("continuous")[:200], 300))[:, None]
        run = jax.jit(pc.filter_series, static_argnums=0)
        _, implicit = run(structure, params, beliefs, inputs)
        _, explicit = run(
            structure, params, beliefs, inputs, jnp.ones(inputs.shape, bool), jnp.ones(300)
        )
        chex.assert_trees_all_close(implicit, explicit, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU compilation property")
@pytest.mark.parametrize("updates", ["standard", "eHGF", "unbounded"])
def test_scan_compiles_to_one_kernel_on_cpu(updates):
    """With the small-loop option lookahead_jax sets at import, XLA:CPU compiles the
    whole scan into one kernel instead of dispatching every fused operation of every
    step (the ~5x of issue 18 for the unbounded update)."""
    structure, params, beliefs = _continuous3(updates)
    inputs = jnp.zeros((1000, 1), jnp.float32)
    compiled = (
        jax.jit(lambda p, b, x: pc.filter_series(structure, p, b, x)[1].beliefs.mean)
        .lower(params, beliefs, inputs)
        .compile()
    )
    assert "xla_cpu_small_call" in compiled.as_text()


def test_rematerialised_exactly_where_the_scan_is_not_one_kernel(monkeypatch):
    """One series on CPU with the small-loop option: residuals kept (the scan is one
    kernel); under vmap (a batched loop, not one kernel): rematerialised."""
    structure, params, beliefs = _continuous3("unbounded")
    decisions = []
    cached = core._cached_scan_body

    def spy(structure, robust, rematerialise):
        decisions.append(rematerialise)
        return cached(structure, robust, rematerialise)

    monkeypatch.setattr(core, "_cached_scan_body", spy)

    def loss(omega, x):
        p = params._replace(tonic_volatility=params.tonic_volatility.at[2].set(omega))
        return pc.filter_series(structure, p, beliefs, x)[1].beliefs.mean.sum()

    x = jnp.ones((5, 3, 1), jnp.float32)
    jax.make_jaxpr(jax.grad(loss))(-4.0, x[0])
    jax.make_jaxpr(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(-4.0, x)
    one_kernel = jax.default_backend() == "cpu"
    assert decisions == [not one_kernel, True]
