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
# # Leap+Verify: verified weight extrapolation inside a compiled training step
#
# Every `Delta` steps, Leap+Verify fingerprints the model on fixed probe
# sequences, classifies the training regime (chaotic / transition / stable) from
# the similarity with the previous fingerprint, and, when the regime allows it,
# predicts the weights `K` steps ahead (linear, quadratic or Adam-moment
# extrapolation). The prediction is kept only if it passes a test on one fixed
# held-out batch; a rejected prediction changes nothing.
#
# `lookahead_jax.extrapolation` provides the pieces as pure functions (`predict`,
# `classify_regime`, `calibrate_thresholds`, `accept`) and an optax wrapper,
# `leap_verify`, that does all of it inside `jit` with `lax.cond`: a jump advances
# the step count and learning-rate schedule by `K`. Training follows the library's
# contract: `leap_init(params, optimizer) -> TrainState`,
# `leap_step(key, state, batch, *, loss_fn, optimizer) -> (TrainState, LeapTrainInfo)`
# and `leap_run(key, state, batches, ...)`, a `lax.scan` of `leap_step` over a fixed
# number of steps; the regime tracker likewise (`regime_init` / `regime_step` /
# `regime_run`). This notebook: the predictors'
# exactness, regimes on a real training run, offline acceptance by regime and `K`,
# then Leap+Verify online against plain AdamW, and checkpointing the whole state.
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
NUM_LAYERS = 2  # the reference transformer: layers and width
D_MODEL = 64
SEQ_LEN = 64  # bytes per training window
BATCH = 16
NUM_STEPS = 600  # optimiser steps of the baseline
DELTA = 25  # steps between checkpoints (fingerprint, snapshot, possible leap)
KS = (5, 10, 25, 50)  # prediction horizons
CALIBRATION_CHECKS = 8  # warm-up checkpoints that calibrate the regime thresholds

# %%
import itertools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from lookahead_jax import data, models
from lookahead_jax import extrapolation as ex

# %% [markdown]
# ## Predictors are exact on the trajectories they model
#
# `history` is a list of parameter pytrees `Delta` steps apart, oldest first.
# On a parabola through three snapshots, `quadratic` lands exactly on the point
# `K` steps later; `linear` misses by the curvature term. Any pytree works.

# %%
c0, c1, c2 = 1.0, -0.5, 0.25


def trajectory(step):  # a quadratic in the step, on a nested pytree
    x = jnp.arange(3.0)
    return {"w": c0 + c1 * step * x + c2 * step**2 * x, "b": (jnp.full((2,), c1 * step),)}


history = [trajectory(s) for s in (0, 10, 20)]
for method in ("linear", "quadratic"):
    predicted = ex.predict(method, history, k=15, delta=10)
    error = jax.tree.map(lambda p, t: float(jnp.max(jnp.abs(p - t))), predicted, trajectory(35))
    print(f"{method:9s} max error at step 35: {error}")

# %% [markdown]
# ## Regimes on a real training run
#
# A small reference transformer on bytes of the shipped corpus (PSF docs), AdamW
# with warmup and cosine decay, trained with `leap_run`: one compiled `lax.scan` of
# `leap_step` over the `DELTA` batches between two checkpoints (any optax optimiser
# works; plain AdamW never leaps). At every checkpoint we record the fingerprint
# (final-norm activations on 32 held-out probes, mean-pooled over real tokens),
# the held-out loss on a fixed acceptance batch, and each predictor's prediction
# `K` steps ahead.

# %%
model = models.TransformerConfig(
    vocab_size=256, num_layers=NUM_LAYERS, num_heads=4, d_model=D_MODEL, max_length=SEQ_LEN
)
train, held = data.load_corpus("train"), data.load_corpus("heldout")
windows = data.eval_windows(held, SEQ_LEN)
acceptance_batch = jnp.asarray(windows[-16:])  # one fixed held-out batch for acceptance
eval_set = jnp.asarray(windows[:128])  # disjoint windows for the held-out curves
probes, lengths = (jnp.asarray(a) for a in data.heldout_prompts(32, SEQ_LEN, seed=1234))


def loss_fn(params, batch):
    logits, _ = models.apply(model, params, batch[:, :-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, batch[:, 1:, None], axis=-1))


schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, NUM_STEPS // 20, NUM_STEPS, 3e-4)
adamw = optax.adamw(schedule, b2=0.99, weight_decay=0.1)


def batch(step):
    return jnp.asarray(data.batch_for_step(train, 0, step, BATCH, SEQ_LEN))


@jax.jit
def at_checkpoint(older, prev, cur, opt_state, lr):
    """Held-out loss (acceptance batch, evaluation windows), fingerprint [32, D], and each
    predictor's held-out loss at each K: [3, len(KS)]. One compiled function (K is traced)."""
    moments = ex.adam_moments(opt_state, b2=0.99)

    def at(method, k):
        p = ex.predict(method, [older, prev, cur], k, DELTA, moments=moments, learning_rate=lr)
        return loss_fn(p, acceptance_batch)

    ks = jnp.asarray(KS, jnp.float32)
    methods = ("linear", "quadratic", "momentum")
    predicted = jnp.stack([jax.lax.map(lambda k, m=m: at(m, k), ks) for m in methods])
    fingerprint = ex.model_fingerprint(model, cur, probes, lengths)
    return loss_fn(cur, acceptance_batch), loss_fn(cur, eval_set), fingerprint, predicted


run = jax.jit(ex.leap_run, static_argnames=("loss_fn", "optimizer"))  # compiled once
params0 = models.init_params(model, jax.random.key(0))
state = ex.leap_init(params0, adamw)  # TrainState(params, opt_state, step)
_, eval0, print0, _ = at_checkpoint(*[state.params] * 3, state.opt_state, jnp.float32(0))
snapshots, prints, curve = [state.params], [print0], [(0, float(eval0))]
current, predicted = [], []
start = time.perf_counter()
key = jax.random.key(0)
for t0 in range(0, NUM_STEPS - NUM_STEPS % DELTA, DELTA):
    batches = jnp.stack([batch(t) for t in range(t0, t0 + DELTA)])  # [DELTA, B, SEQ_LEN]
    key, sub = jax.random.split(key)
    state, infos = run(sub, state, batches, loss_fn=loss_fn, optimizer=adamw)  # infos: [DELTA]
    older, prev = ([snapshots[0], *snapshots])[-2:]  # the first checkpoint has no `older`
    loss, evaluated, fp, pred = at_checkpoint(
        older, prev, state.params, state.opt_state, jnp.float32(schedule(t0 + DELTA))
    )
    current.append(float(loss))
    predicted.append(np.array(pred))  # a writable copy
    snapshots.append(state.params)
    prints.append(fp)
    curve.append((t0 + DELTA, float(evaluated)))
predicted[0][1] = np.nan  # quadratic needs three snapshots: none at the first checkpoint
print(
    f"baseline: {NUM_STEPS} steps in {time.perf_counter() - start:.1f} s, "
    f"held-out {curve[-1][1]:.3f} nats/byte"
)

# %% [markdown]
# Similarities between consecutive fingerprints, thresholds calibrated from the
# first checkpoints (30th / 70th percentiles, as the paper did on GPT-2 warm-up),
# and the regime of every checkpoint.

# %%
sims = np.array([float(ex.cosine_similarity(a, b)) for a, b in itertools.pairwise(prints)])
tau = ex.calibrate_thresholds(sims[:CALIBRATION_CHECKS])
regimes = np.asarray(ex.classify_regime(sims, tau.tau_low, tau.tau_high))
print(f"tau_low {float(tau.tau_low):.6f}  tau_high {float(tau.tau_high):.6f}")
print({k: f"{v:.0%}" for k, v in ex.regime_fractions(regimes).items()})

# Online, the regime tracker does the same one check at a time (the Leap+Verify wrapper
# runs its `regime_step` at each check): `regime_run` scans it over the fingerprints.
# Its first reading has no previous fingerprint, hence one more calibration check.
tracker_config = ex.RegimeConfig(calibration_checks=CALIBRATION_CHECKS + 1, max_checks=len(prints))
tracker = ex.regime_init(prints[0], tracker_config)
tracker, readings = ex.regime_run(jax.random.key(0), tracker, jnp.stack(prints), tracker_config)
online = np.asarray(readings.regime[1:])
after = slice(CALIBRATION_CHECKS, None)  # before calibration the tracker says "unknown"
print(f"online tracker agrees with the offline regimes after calibration: "
      f"{np.array_equal(online[after], regimes[after])}")  # fmt: skip

steps = DELTA * np.arange(1, len(sims) + 1)
colors = np.array(["0.6", "tab:red", "tab:orange", "tab:green"])
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(steps, 1 - sims, color="0.7", lw=0.8)
ax.scatter(steps, 1 - sims, c=colors[regimes], s=18)
for t, ls in ((tau.tau_low, "--"), (tau.tau_high, ":")):
    ax.axhline(1 - float(t), color="k", ls=ls, lw=0.8)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("1 - cosine similarity")
ax.set_title("regime timeline: red chaotic, orange transition, green stable")
plt.show()

# %% [markdown]
# ## Offline acceptance by regime and K
#
# The strict test accepts a prediction whose held-out loss is below the current
# one. The Adam-moment predictor with the paper's sign convention (`+K m / (sqrt(v) + eps)`,
# no learning rate) is not shown: it jumps by ~K per coordinate and explodes.

# %%
cur = np.array(current)[:, None, None]
pred = np.stack(predicted)  # [checkpoints, 3, len(KS)], NaN where a predictor lacks history
strict = np.where(np.isnan(pred), np.nan, pred < cur)
KS_SHAPE = strict.shape[1:]
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, (r, name) in zip(
    axes,
    [(ex.CHAOTIC, "chaotic"), (ex.TRANSITION, "transition"), (ex.STABLE, "stable")],
    strict=True,
):
    sel = regimes == r
    rate = np.nanmean(strict[sel], axis=0) * 100 if sel.any() else np.full(KS_SHAPE, np.nan)
    ax.imshow(rate, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(rate):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", color="w")
    ax.set_title(f"strict acceptance %, {name} (n={int(sel.sum())})")
    ax.set_xticks(range(len(KS)), [f"K={k}" for k in KS])
    ax.set_yticks(range(3), ["linear", "quadratic", "momentum"])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Online: the optax wrapper
#
# `leap_verify` wraps any optax optimiser. Every `Delta` steps it does all of the
# above inside the compiled step, and an accepted leap advances the schedule by
# `K`. The run ends when the schedule position reaches `NUM_STEPS`, so leaps save
# optimiser steps; the question is whether the loss keeps up.

# %%
config = ex.LeapConfig(
    delta=DELTA,
    k=DELTA,
    method="linear",
    criterion="strict",
    leap_in="stable_confirmed",
    calibration_checks=CALIBRATION_CHECKS,
    max_checks=NUM_STEPS // DELTA + 2,
)
leap = ex.leap_verify(
    adamw,
    config,
    heldout_loss=lambda p: loss_fn(p, acceptance_batch),
    fingerprint=lambda p: ex.model_fingerprint(model, p, probes, lengths),
)
leap_step = jax.jit(ex.leap_step, static_argnames=("loss_fn", "optimizer"))
leap_state = ex.leap_init(params0, leap)


def eval_loss(params):  # reuses the compiled checkpoint function (its other outputs unused)
    return float(at_checkpoint(*[params] * 3, leap_state.opt_state.inner_state, jnp.float32(0))[1])


# One `leap_step` at a time (the data follows the schedule position, which leaps advance):
# its Info says, at each check, the regime, whether a leap was accepted, and the held-out
# loss at the current and the predicted parameters.
leap_curve, leaps = [(0, eval_loss(leap_state.params))], []
while int(leap_state.opt_state.position) < NUM_STEPS:
    position = int(leap_state.opt_state.position)
    key, sub = jax.random.split(key)
    leap_state, info = leap_step(sub, leap_state, batch(position), loss_fn=loss_fn, optimizer=leap)
    if bool(info.leap.attempted):
        leaps.append((int(leap_state.step), bool(info.leap.accepted), float(info.leap.current_loss),
                      float(info.leap.predicted_loss)))  # fmt: skip
    if int(leap_state.step) % DELTA == 0 or int(leap_state.opt_state.position) >= NUM_STEPS:
        leap_curve.append((int(leap_state.step), eval_loss(leap_state.params)))
for step_, accepted, cur_loss, pred_loss in leaps[:5]:
    print(f"step {step_}: leap {'accepted' if accepted else 'rejected'}, held-out "
          f"{cur_loss:.4f} now vs {pred_loss:.4f} predicted")  # fmt: skip
s = leap_state.opt_state
print(
    f"Leap+Verify: {int(s.count)} optimiser steps for {NUM_STEPS} schedule steps, "
    f"{int(s.accepts)}/{int(s.attempts)} leaps accepted; "
    f"held-out {leap_curve[-1][1]:.3f} vs baseline {curve[-1][1]:.3f} nats/byte"
)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(*zip(*curve, strict=True), label="AdamW")
ax.plot(*zip(*leap_curve, strict=True), label="Leap+Verify")
ax.set_xlabel("optimiser steps")
ax.set_ylabel("held-out loss (nats/byte)")
ax.set_ylim(min(x for _, x in curve) * 0.97, curve[len(curve) // 4][1])
ax.legend()
plt.show()

# %% [markdown]
# ## The whole state is one pytree
#
# Parameters, AdamW state, snapshot buffer, fingerprint, regime history and
# counters are one pytree of arrays: `lookahead_jax.checkpoint` saves and restores
# it with orbax, and a killed-then-resumed run equals the uninterrupted one bit for
# bit (`tests/extrapolation/test_wrapper.py`):
#
# ```python
# checkpoint.save(workdir, int(leap_state.step), leap_state)
# leap_state = checkpoint.restore(workdir, ex.leap_init(params0, leap))
# ```

# %%
leaves = jax.tree.leaves(leap_state)
print(f"{len(leaves)} arrays, {sum(x.nbytes for x in leaves) / 1e6:.2f} MB in the training state")
print(f"snapshot buffer: {jax.tree.leaves(s.snapshots)[0].shape[0]} snapshots of the parameters")
print(
    "regimes seen online:",
    "".join(ex.REGIME_NAMES[int(r)][0].upper() for r in s.regimes[: int(s.num_checks)]),
)
