# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Predictive coding: the Hierarchical Gaussian Filter as pure, compiled functions
#
# `lookahead_jax.predictive_coding` speaks pyhgf's vocabulary (`Network`,
# `add_nodes`, `input_data`, `node_trajectories`) and reproduces pyhgf 0.3.2's
# trajectories (relative error <= 1e-6 in float64, tested against stored pyhgf
# runs). Underneath, a network is a static structure plus parameter and belief
# pytrees, with the library's contract: `init` gives the beliefs (the state),
# `step` takes one observation and `run` is one `lax.scan` over a series: you
# `jit`, `vmap`, `grad` and shard them.
#
# This notebook walks through: building a network, filtering a real exchange-rate
# series, plotting beliefs with uncertainty bands, the pure core under
# `jit` / `vmap` / `grad`, fitting one subject and many subjects at once, and the
# robust mode in which no parameter draw produces NaN.
#
# Install from a checkout with `pip install '.[notebooks]'`.

# %% [markdown]
# **Colab / fresh runtime:** the next cell installs lookahead_jax if it is not
# importable yet, and does nothing otherwise. It installs a wheel uploaded
# next to the notebook (`python -m build` makes one) or, failing that,
# `LOOKAHEAD_JAX_SOURCE`: set it to the repository's `git+https://...` URL or
# a wheel path.

# %%
import glob
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("lookahead_jax") is None:
    wheels = sorted(glob.glob("lookahead_jax-*.whl"))
    source = wheels[-1] if wheels else os.environ.get("LOOKAHEAD_JAX_SOURCE", "lookahead-jax")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source])

# %% tags=["parameters"]
NUM_SUBJECTS = 100  # synthetic subjects fitted at once
SUBJECT_STEPS = 300  # observations per synthetic subject
FIT_STEPS = 200  # optimiser steps per fit
NUM_DRAWS = 1000  # random parameter draws for the NaN count

# %%
import functools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from lookahead_jax import predictive_coding as pc
from lookahead_jax import sharding

print(jax.devices())

# %% [markdown]
# ## A 3-level continuous HGF on the USD-CHF exchange rate
# The shipped series (the one pyhgf's tutorials use) has 614 daily rates. Node 0
# is the input (its precision is the observation precision); node 1 tracks the
# rate (a value parent); node 2 its log-volatility and node 3 the volatility of
# that (volatility parents). Every call is pyhgf's; `add_nodes` returns the network
# so calls chain.

# %%
series = pc.load_data("continuous")  # [614]


def three_level(volatility_updates: str) -> pc.Network:
    return (
        pc.Network(volatility_updates=volatility_updates)
        .add_nodes(precision=1e4)
        .add_nodes(value_children=0, mean=1.04, precision=1e4, tonic_volatility=-8.0)
        .add_nodes(volatility_children=1, mean=1.0, precision=1e1, tonic_volatility=-4.0)
        .add_nodes(volatility_children=2, mean=0.5, precision=1e1, tonic_volatility=-5.0)
    )


hgf = three_level("unbounded")  # pyhgf's default update
hgf.input_data(input_data=series)
trajectories = hgf.node_trajectories  # {node: {field: [T] array}}, pyhgf's layout
for k in (1, 2, 3):
    node = trajectories[k]
    print(
        f"node {k}: final mean {node['mean'][-1]:+.4f}, precision {node['precision'][-1]:.4g}, "
        f"expected mean {node['expected_mean'][-1]:+.4f}"
    )
print("total surprise:", float(pc.total_surprise(hgf.structure, hgf.trajectories)))

# %% [markdown]
# Posterior means with 95% bands (`+- 1.96 / sqrt(precision)`), roots on top.

# %%
fig = hgf.plot_trajectories()
plt.show()

# %% [markdown]
# ## A 3-level binary HGF
# The shipped binary data set: 320 outcomes of an associative learning task
# (Iglesias et al.). A binary input node sits under a continuous node (the
# outcome's log-odds), whose volatility is tracked one level up.

# %%
outcomes, decisions = pc.load_data("binary")
binary = (
    pc.Network(volatility_updates="standard")
    .add_nodes(kind="binary-state")
    .add_nodes(value_children=0, tonic_volatility=-2.0)
    .add_nodes(volatility_children=1, mean=1.0, tonic_volatility=-6.0)
)
binary.input_data(outcomes)
print("binary surprise:", float(pc.total_surprise(binary.structure, binary.trajectories)))
fig = binary.plot_trajectories()
plt.show()

# %% [markdown]
# ## The pure core: `init`, `step` and `run` under `jit`, `vmap` and `grad`
# `compile()` hands out what the builder built: a static, hashable `Structure`
# (the configuration) and two NamedTuples of arrays, the parameters and the
# initial beliefs. The core follows the library's contract: `init(structure,
# beliefs)` gives the state, `step(key, state, params, observation, ...)` takes
# one observation and returns `(beliefs, info)`, and `run(key, state, params,
# inputs, ...)` scans the step over a series (inputs `[T, n_inputs]`). The HGF is
# deterministic: the key comes first for uniformity and is ignored (`None` is fine).

# %%
structure, params, beliefs = hgf.compile()
print(structure.kinds, structure.value_edges, structure.volatility_edges)
print(params)
step = jax.jit(pc.step, static_argnames=("structure", "robust"))
state = pc.init(structure, beliefs)
for t in range(3):  # one observation at a time, e.g. as they arrive
    state, info = step(None, state, params, series[t : t + 1], structure=structure)
    error = float(info.value_prediction_error[1])
    print(f"t={t}: x1 mean {float(state.mean[1]):.4f}, x1 prediction error {error:+.2e}")

run = jax.jit(pc.run, static_argnames=("structure", "robust"))
final, traj = run(None, pc.init(structure, beliefs), params, series[:, None], structure=structure)
print("run == 3 steps:", np.allclose(traj.beliefs.mean[2], state.mean))
print("same as input_data:", np.array_equal(traj.beliefs.mean[:, 1], trajectories[1]["mean"]))

# %% [markdown]
# **vmap**: many series in one compiled call (here the rate seen through
# `NUM_SUBJECTS` slightly different lenses).

# %%
many = jnp.asarray(series[None, :, None] * (1 + 0.01 * np.arange(NUM_SUBJECTS))[:, None, None])
batched = jax.jit(
    jax.vmap(lambda x: pc.run(None, beliefs, params, x, structure=structure)[1].beliefs.mean)
)
print("batched means:", batched(many).shape, "# [subjects, T, nodes]")

# %% [markdown]
# **grad**: the total surprise of the observations as a function of the three
# tonic volatilities, differentiated through the whole scan. In float64 it
# matches central finite differences.

# %%
with jax.enable_x64(True):
    s64, p64, b64 = hgf.compile(jnp.float64)

    def surprise_of(omegas):
        p = p64._replace(tonic_volatility=p64.tonic_volatility.at[1:].set(omegas))
        _, t = pc.run(None, b64, p, series[:, None], structure=s64)
        return pc.total_surprise(s64, t)

    omegas = p64.tonic_volatility[1:]
    gradient = jax.jit(jax.grad(surprise_of))(omegas)
    h = 1e-6
    finite_difference = [
        (surprise_of(omegas.at[i].add(h)) - surprise_of(omegas.at[i].add(-h))) / (2 * h)
        for i in range(3)
    ]
    print("grad:              ", np.asarray(gradient))
    print("finite differences:", np.asarray(finite_difference))

# %% [markdown]
# ## Fitting one subject
# `free_parameters` picks the entries to fit (here the tonic volatilities of
# nodes 1 and 2) and returns `(theta0, unpack)`; `map_loss` is the total input
# surprise plus a Gaussian prior on `theta`; `fit` runs optax for `FIT_STEPS`
# steps inside one `lax.scan`. On this series the data pull omega_2 far above its
# starting value (a volatile x2 lowers the input surprise), against a prior of
# standard deviation 2.

# %%
theta0, unpack = pc.free_parameters(params, beliefs, {"tonic_volatility": [1, 2]})
loss = pc.map_loss(structure, unpack, prior_mean=theta0, prior_precision=0.25)
fit = jax.jit(functools.partial(pc.fit, loss, optimizer=optax.adam(0.05), num_steps=FIT_STEPS))
start = time.perf_counter()
result = fit(theta0, series[:, None])
print(f"fitted in {time.perf_counter() - start:.2f} s (with compilation)")
print("omega_1, omega_2: start", np.asarray(theta0["tonic_volatility"]))
print("                  MAP  ", np.asarray(result.theta["tonic_volatility"]))
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.asarray(result.losses))
ax.set_xlabel("optimiser step")
ax.set_ylabel("negative log posterior")
plt.show()

# %% [markdown]
# ## Fitting many subjects at once
# Synthetic subjects whose hidden state is a Gaussian random walk with step
# variance `exp(omega)`, observed with noise of standard deviation 0.1; each has
# its own true `omega`. `fit_subjects` is `vmap(fit)`: every subject in one
# compiled program. Placing the batch with `sharding.shard` spreads the subjects
# over the available devices (TPU cores, GPUs; here whatever `jax.devices()` lists).

# %%
rng = np.random.default_rng(0)
true_omega = np.linspace(-7.0, -3.0, NUM_SUBJECTS)
walk = np.exp(true_omega[:, None] / 2) * rng.standard_normal((NUM_SUBJECTS, SUBJECT_STEPS))
observations = 1.0 + np.cumsum(walk, axis=1) + 0.1 * rng.standard_normal(walk.shape)

model = (
    pc.Network(volatility_updates="standard")
    .add_nodes(precision=1e2)  # the observation noise, sd 0.1
    .add_nodes(value_children=0, mean=1.0, precision=1e2, tonic_volatility=-5.0)
    # A nearly fixed volatility level: omega_1 alone sets the random walk's step.
    .add_nodes(volatility_children=1, mean=0.0, precision=1e4, tonic_volatility=-12.0)
)
s_model, p_model, b_model = model.compile()
theta0, unpack = pc.free_parameters(p_model, b_model, {"tonic_volatility": [1]})
loss = pc.map_loss(s_model, unpack, prior_mean=theta0, prior_precision=0.1)
starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (NUM_SUBJECTS, *x.shape)), theta0)
inputs = jnp.asarray(observations[..., None], jnp.float32)  # [S, T, 1]
devices = jax.device_count()
if NUM_SUBJECTS % devices == 0:
    starts, inputs = sharding.shard((starts, inputs), sharding.make_mesh(), axes=0)
fit_many = jax.jit(
    functools.partial(pc.fit_subjects, loss, optimizer=optax.adam(0.1), num_steps=FIT_STEPS)
)
start = time.perf_counter()
fitted = fit_many(starts, inputs)
estimated = np.asarray(fitted.theta["tonic_volatility"][:, 0])
print(f"{NUM_SUBJECTS} subjects on {devices} device(s) in {time.perf_counter() - start:.2f} s")
print("correlation of true and fitted omega:", np.corrcoef(true_omega, estimated)[0, 1].round(3))
fig, ax = plt.subplots(figsize=(4, 4))
ax.scatter(true_omega, estimated)
ax.plot([-7.5, -2.5], [-7.5, -2.5], color="k", lw=0.8)
ax.set_xlabel("true omega")
ax.set_ylabel("fitted omega (MAP)")
plt.show()

# %% [markdown]
# ## Robust mode: no NaN, whatever the parameters or the data
# Parity mode reproduces pyhgf's numbers. Missing observations are skipped as the
# mask says in both modes (`where`, not pyhgf's `0 * x`): five missing observations
# recorded as NaN with `observed = 0`, fed to the classic ("standard") HGF, leave
# every belief finite (in pyhgf they poison every later step). `robust=True` also
# treats a NaN marked as observed as missing; parity mode raises a `ValueError`
# for it instead.

# %%
s_std, p_std, b_std = three_level("standard").compile()
holey = series.copy()
holey[100:105] = np.nan
observed = np.isfinite(holey)[:, None]
for robust in (False, True):
    _, t = run(None, b_std, p_std, holey[:, None], observed, structure=s_std, robust=robust)
    # The input node (column 0) records the values it was given; its parents' beliefs:
    nan_steps = int(np.sum(~np.all(np.isfinite(np.asarray(t.beliefs.mean[:, 1:])), axis=1)))
    print(f"robust={robust!s:5s}: {nan_steps} of {series.shape[0]} steps with a NaN belief")

# %% [markdown]
# Then `NUM_DRAWS` random tonic volatilities of the same classic HGF on the series
# tiled twice: the jump from 0.82 back to 1.04 drives most draws into an
# underflowing or negative precision, which pyhgf (and parity mode) turn into
# NaN; robust mode keeps every draw finite.

# %%
tiled = jnp.asarray(np.resize(series, 2 * series.shape[0]), jnp.float32)[:, None]
draws = jnp.asarray(
    rng.uniform((-12.0, -8.0, -8.0), (-2.0, -1.0, -1.0), size=(NUM_DRAWS, 3)), jnp.float32
)


def has_nan(omega, robust):
    p = p_std._replace(tonic_volatility=p_std.tonic_volatility.at[1:].set(omega))
    _, t = pc.run(None, b_std, p, tiled, structure=s_std, robust=robust)
    return ~jnp.all(jnp.isfinite(t.beliefs.mean))


count = jax.jit(jax.vmap(has_nan, in_axes=(0, None)), static_argnums=1)
for robust in (False, True):
    print(f"robust={robust!s:5s}: {int(count(draws, robust).sum())} of {NUM_DRAWS} draws with NaN")

# %% [markdown]
# ## Where next
# * `python experiments/compare_pyhgf.py` (from a source checkout) measures parity,
#   speed, batching, gradients and NaN rates side by side with pyhgf.
# * `Network(volatility_updates="eHGF" | "standard" | "unbounded", mean_field_updates=...)`
#   switches the update rules; `input_data(..., time_steps=..., observed=...)` takes
#   irregular time steps and missing observations; `input_data(..., bucket=True)`
#   pads to a length bucket so new series lengths reuse the compiled program.
