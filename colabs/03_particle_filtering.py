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
# # Particle filtering: from the Kalman filter to inference-time scaling
#
# `lookahead_jax.particles` is one set of pure, compiled functions for classic
# sequential Monte Carlo and for particle filtering over the reasoning steps of
# a language model:
#
# 1. a bootstrap filter (one `lax.scan`) against the exact Kalman filter;
# 2. the four resampling methods and how much noise each adds;
# 3. the entropic-annealing temperature schedules of ePF;
# 4. a small ePF run on a synthetic reasoning problem whose process reward is
#    overconfident early, the failure ePF was designed for.

# %% [markdown]
# **Fresh runtime (e.g. Colab):** the next cell does nothing when lookahead_jax
# is importable; otherwise it pip-installs a `lookahead_jax-*.whl` found next
# to the notebook, else `LOOKAHEAD_JAX_SOURCE` (a wheel path or a
# `git+https://...` URL of the repository).

# %%
import glob
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("lookahead_jax") is None:
    found = sorted(glob.glob("lookahead_jax-*.whl"))
    source = found[-1] if found else os.environ.get("LOOKAHEAD_JAX_SOURCE", "lookahead-jax")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source])

# %% tags=["parameters"]
NUM_STEPS = 20  # observations of the linear-Gaussian model
NUM_PARTICLES = 2048  # bootstrap filter particles
REPLICATES = 32  # filters per resampling method (log Z^ error)
RESAMPLE_REPLICATES = 2000  # draws per method (offspring variance)
EPF_SEEDS = 400  # synthetic reasoning problems
EPF_PARTICLES = 4

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from lookahead_jax import particles

# %% [markdown]
# ## 1. Bootstrap filter vs the exact Kalman filter
# A linear-Gaussian state-space model (x_dim 3, y_dim 2): `kalman_filter` gives
# the exact log-likelihood and filtering means; the bootstrap filter estimates them
# with particles, resampling when the ESS drops below half of N.
#
# Every filter in the library has the same contract: a frozen, hashable config
# (`BootstrapConfig`), `bootstrap_init(key, ...) -> State`,
# `bootstrap_step(key, state, observation, ...) -> (State, Info)` and
# `bootstrap_run(key, ...)`, which scans the step over the observations and can
# continue from a previous run's `final_state`.

# %%
lgssm = particles.example_lgssm()
states, observations = lgssm.sample(jax.random.key(0), NUM_STEPS)
exact = particles.kalman_filter(lgssm, observations)
model = lgssm.to_state_space_model()
filter_config = particles.BootstrapConfig(num_particles=NUM_PARTICLES, resample_threshold=0.5)
run_filter = jax.jit(particles.bootstrap_run, static_argnames=("model", "config"))
result = run_filter(jax.random.key(1), model, observations, filter_config)
print(f"Kalman log Z = {float(exact.log_likelihood):.4f}")
print(f"particle log Z^ = {float(result.log_likelihood):.4f}")
print(f"resampled at {int(result.resampled.sum())} of {NUM_STEPS} steps")

# %% [markdown]
# The state carries everything the next step needs, so a filter fed the first half
# of the observations and then continued on the second half (same key) is the same
# run as one filter over all of them. One step by hand is `bootstrap_step`.

# %%
half = NUM_STEPS // 2
first_half = run_filter(jax.random.key(1), model, observations[:half], filter_config)
continued = run_filter(
    jax.random.key(1), model, observations[half:], filter_config, first_half.final_state
)
print("continued run == one run:", bool(continued.log_likelihood == result.log_likelihood))

init_key, step_key = jax.random.split(jax.random.key(1))
state = particles.bootstrap_init(init_key, model, filter_config)
state, info = particles.bootstrap_step(
    jax.random.fold_in(step_key, 0), state, observations[0], model, filter_config
)
print(f"after one step: time {int(state.time)}, ESS {float(info.ess):.1f} of {NUM_PARTICLES}")

fig, axes = plt.subplots(1, 3, figsize=(13, 3))
for d, ax in enumerate(axes):
    ax.plot(states[:, d], "k.", label="true state")
    ax.plot(exact.means[:, d], label="Kalman mean")
    ax.plot(result.means[:, d], "--", label=f"particle mean (N={NUM_PARTICLES})")
    ax.set_title(f"state dimension {d}")
axes[0].legend(fontsize=7)
plt.show()

# %% [markdown]
# The likelihood estimate Z^ is unbiased, log Z^ is biased low: over replicate
# filters, `log_mean_exp(log Z^ - log Z)` should be near 0 while the plain mean
# of the errors is slightly negative.

# %%
keys = jax.random.split(jax.random.key(2), REPLICATES)
for method in particles.METHODS:
    small = particles.BootstrapConfig(num_particles=256, method=method)
    many = jax.jit(jax.vmap(lambda k, c=small: particles.bootstrap_run(k, model, observations, c)))(
        keys
    )
    errors = many.log_likelihood - exact.log_likelihood
    print(
        f"{method:12s} N=256: mean error {float(errors.mean()):+.4f}, "
        f"log-mean-exp error {float(particles.log_mean_exp(errors)):+.4f}, "
        f"sd {float(errors.std()):.4f}"
    )

# %% [markdown]
# ## 2. Resampling methods
# Every method gives particle i on average M w_i offspring; they differ in the
# noise they add. Systematic counts are always floor or ceil of M w_i.

# %%
log_weights = jnp.log(jnp.asarray([0.05, 0.3, 0.0, 0.15, 0.5]))  # one zero weight
M = 10
draw_keys = jax.random.split(jax.random.key(3), RESAMPLE_REPLICATES)
print("expected offspring M w:", np.round(M * np.exp(np.asarray(log_weights)), 2))
for method in particles.METHODS:
    counts, _ = jax.vmap(lambda k, m=method: particles.offspring_counts(k, log_weights, M, m))(
        draw_keys
    )
    counts = np.asarray(counts)
    print(
        f"{method:12s} mean {np.round(counts.mean(0), 2)}  "
        f"variance {np.round(counts.var(0), 3)}  zero-weight picked: {bool(counts[:, 2].any())}"
    )

# %% [markdown]
# ## 3. Entropic annealing schedules
# When the ESS ratio r = ESS / N falls below 0.5 early in the run (progress < 0.5),
# ePF resamples from softmax(w / T) with T > 1, flattening the weights so that
# an overconfident early reward does not wipe out the alternatives.

# %%
progress = np.linspace(0.0, 1.0, 101)
collapsed = jnp.asarray([4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # one dominant particle
ratio = float(particles.ess(collapsed)) / collapsed.shape[0]
print(f"ESS / N of the collapsed weights: {ratio:.3f}")
fig, ax = plt.subplots(figsize=(6, 3.5))
for schedule in particles.SCHEDULES:
    temperatures = [
        float(particles.entropic_temperature(collapsed, p, schedule=schedule)) for p in progress
    ]
    ax.plot(progress, temperatures, label=schedule)
ax.set_xlabel("progress t / max_steps")
ax.set_ylabel("resampling temperature T")
ax.set_title("gate open while progress < 0.5 and ESS / N < 0.5")
ax.legend()
plt.show()
# Check values of the spec: ESS schedule with r = 0.2 at progress 0.2 gives T = 4.
print(float(particles.schedule_temperature("ess", 0.2, 0.0, 0.2)))

# %% [markdown]
# ## 4. A small ePF run on a synthetic reasoning trap
# `experiments/benchmarks/inference_time_scaling.py` builds a tree of partial solutions with
# an exact verifier. On most problems the proposal prefers a plausible-but-wrong
# first step, and the process reward scores that branch 0.95 for three steps
# (the correct branch: 0.5) before the error becomes evident. The proposal is
# plugged into the same filter that drives language models: `LMParticleFilterConfig`
# plus `lm_init` / `lm_step` / `lm_run` (`lm_particle_filter` is `lm_run` with keywords),
# and the entropic filter (ePF) is the same filter with an annealing `schedule`.

# %%
# The synthetic task is experiment code, not part of the wheel: it imports from a source
# checkout (in Colab: `git clone` the repository and run from its root).
from experiments.benchmarks import inference_time_scaling as its

env = its.Environment()
instance = its.sample_instance(jax.random.key(4), env)
print("answer key:", instance.correct, "decoy:", instance.decoy, "trap:", bool(instance.trap))


def filter_once(key, instance, schedule):
    config = particles.LMParticleFilterConfig(
        num_particles=8,
        max_steps=env.depth,
        max_step_tokens=1,
        delimiter_id=env.end_id,
        end_id=env.end_id,
        schedule=schedule,
    )
    return particles.lm_run(
        key,
        its.SyntheticPolicy.create(env, instance),
        jnp.asarray([env.start_id], jnp.int32),
        1,
        lambda tokens, lengths: its.process_reward(env, instance, tokens, lengths),
        config,
    )


for schedule in ("none", "ess"):
    out = jax.jit(filter_once, static_argnums=2)(jax.random.key(5), instance, schedule)
    print(
        f"schedule {schedule:5s}: temperature per round {np.round(out.history.temperature, 2)}, "
        f"distinct ancestors kept {out.history.num_unique}"
    )

# %% [markdown]
# Over many problems (same problems and keys for every method): success rate of
# the selected answer under the exact verifier, and the paired difference to
# plain particle filtering. Run `python experiments/inference_time_scaling.py` for all budgets
# N in {4, ..., 64}, every schedule, look-ahead and the language-model demo.

# %%
config = its.default_config()
config.update(
    num_seeds=EPF_SEEDS,
    budgets=(EPF_PARTICLES,),
    methods=("greedy", "best_of_n", "pf", "epf_ess"),
    lm_demo=False,
    output_dir="outputs/notebook_inference_time_scaling",
)
print(its.format_table(its.run(config)))
