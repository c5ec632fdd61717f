"""Inference-time scaling with particle filters: a synthetic reasoning trap, then a language model.

1. **Synthetic reasoning environment** with an exact verifier. A problem is a
   tree of partial solutions: ``depth`` steps, ``branching`` actions per step, one
   correct path (the answer key) and one *decoy* path that leaves the correct
   one at the first step. It reproduces the failure entropic particle filtering
   (ePF) targets:

   * the **proposal** (the "language model") prefers the plausible-but-wrong
     branch: with probability ``trap_rate`` an instance is a *trap*, where the
     decoy's first step is the proposal's most likely action (``mode_prob``) and
     the correct one the runner-up (``runner_up_prob``); otherwise the two are
     swapped. Along either branch the proposal continues it with ``step_prob``
     and otherwise steps off to a wrong action (a dead end);
   * the **process reward** is overconfident early: decoy prefixes score
     ``decoy_reward`` (e.g. 0.95) up to ``reveal_depth`` steps and
     ``revealed_reward`` (0.05) after, when the error has become evident;
     correct prefixes score a hesitant ``correct_early_reward`` (0.5), then
     ``correct_late_reward`` (0.9); dead ends score ``off_reward`` (0.1).

   So the greedy path is wrong exactly on trap instances, and a particle filter
   weighting by ``logit(reward)`` (decoy/correct odds 19 : 1 early) tends to
   resample the correct branch away before the reveal. Every method runs
   through the library's own :func:`particles.lm_particle_filter`: the proposal
   is a :class:`SyntheticPolicy`, a callable following the ``models.apply``
   contract whose "KV cache" stores the token history, one token per step
   (``max_step_tokens=1``).

   Methods (same instances and keys for all, so differences are paired):
   greedy (N = 1, argmax), best-of-N (no resampling; the highest final reward),
   particle filtering (PF; Puri et al. 2025, published weighting, resampling
   every round), ePF with each annealing schedule (``ess | entropy | base``), and
   look-ahead modulation alone and on top of ePF-ESS (our formulation, see
   ``particles/lm.py``; it proposes ``lookahead`` successors per particle, so it
   costs that many times more proposal calls: ``proposal_calls`` in the rows).
   Reported per method and budget N: success rate (the exact verifier on the
   selected answer) with its binomial standard error, coverage (some particle of
   the final pool is correct), the paired difference to PF, and particle
   diversity over rounds: ``diversity`` (distinct ancestors kept by each
   round's resampling / N) and ``lineages`` (the number of distinct step-t
   prefixes among the final particles: how much of the early search survived
   to the end; path degeneracy shows as about one lineage at small t).

2. **Language-model demo** on the shipped models: ``tiny-draft`` proposes
   word-sized steps (space-delimited, at most ``lm_step_tokens`` bytes), and the
   reward of a prefix is the target's geometric-mean per-byte probability of the
   generated part, ``exp(mean log p_target)`` in (0, 1]. Reported: the target's
   mean log-likelihood per byte of the selected continuation, per method.

Writes ``results.json`` and ``results.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarks import _common
from lookahead_jax import data, models, particles
from lookahead_jax.sampling import Sampling


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # The synthetic environment (see the module docstring).
    config.branching = 4
    config.depth = 8
    config.trap_rate = 0.7
    config.mode_prob = 0.4
    config.runner_up_prob = 0.3
    config.step_prob = 0.75
    config.reveal_depth = 3
    config.decoy_reward = 0.95
    config.revealed_reward = 0.05
    config.correct_early_reward = 0.5
    config.correct_late_reward = 0.9
    config.off_reward = 0.1
    # The study.
    config.budgets = (4, 8, 16, 32, 64)
    config.num_seeds = 1000  # instances (each with its own filter key) per budget
    config.methods = (
        "greedy",
        "best_of_n",
        "pf",
        "epf_ess",
        "epf_entropy",
        "epf_base",
        "pf_lookahead",
        "epf_ess_lookahead",
    )
    config.lookahead = 2  # successors per particle (M)
    config.lookahead_weight = 0.5  # lambda
    config.resample_method = "systematic"
    config.seed = 0
    # The language-model demo.
    config.lm_demo = True
    config.lm_draft = "tiny-draft"
    config.lm_target = "tiny-target"
    config.lm_prompts = 6
    config.lm_prompt_length = 32
    config.lm_num_particles = 8
    config.lm_max_steps = 6
    config.lm_step_tokens = 8
    config.lm_seeds = 2
    config.lm_methods = ("best_of_n", "pf", "epf_ess", "epf_ess_lookahead")
    config.output_dir = "outputs/inference_time_scaling"
    return config


# ----------------------------------------------------------------------------- environment


@dataclasses.dataclass(frozen=True)
class Environment:
    """Static parameters of the synthetic reasoning environment (hashable)."""

    branching: int = 4
    depth: int = 8
    trap_rate: float = 0.7
    mode_prob: float = 0.4
    runner_up_prob: float = 0.3
    step_prob: float = 0.75
    reveal_depth: int = 3
    decoy_reward: float = 0.95
    revealed_reward: float = 0.05
    correct_early_reward: float = 0.5
    correct_late_reward: float = 0.9
    off_reward: float = 0.1

    def __post_init__(self) -> None:
        if self.branching < 3:
            raise ValueError(f"`branching` must be >= 3 (decoy, correct, a dead end); got {self}.")
        if not 1 <= self.reveal_depth < self.depth:
            raise ValueError(f"`reveal_depth` must lie in [1, depth); got {self}.")
        if not self.mode_prob + self.runner_up_prob < 1.0:
            raise ValueError(f"`mode_prob + runner_up_prob` must be < 1; got {self}.")
        # The "mode" must really be the mode, also against each dead-end action.
        rest = (1.0 - self.mode_prob - self.runner_up_prob) / (self.branching - 2)
        if not self.mode_prob > max(self.runner_up_prob, rest):
            raise ValueError(f"`mode_prob` must exceed every other first-step prob; got {self}.")
        if not self.step_prob > (1.0 - self.step_prob) / (self.branching - 1):
            raise ValueError(f"`step_prob` must make the branch's action the mode; got {self}.")

    @property
    def start_id(self) -> int:
        """The prompt: one start token."""
        return self.branching

    @property
    def end_id(self) -> int:
        """Never proposed: particles finish after ``depth`` steps."""
        return self.branching + 1

    @property
    def vocab_size(self) -> int:
        return self.branching + 2

    @property
    def width(self) -> int:
        """Token buffer: the start token and ``depth`` actions."""
        return 1 + self.depth

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Environment:
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


class Instance(NamedTuple):
    """One problem (leaves may carry a leading batch axis under ``vmap``)."""

    correct: jax.Array  # [D] int32, the answer key
    decoy: jax.Array  # [D] int32, the plausible-but-wrong path; decoy[0] != correct[0]
    trap: jax.Array  # [] bool, the proposal's favourite first step is decoy[0]


def sample_instance(key: jax.Array, env: Environment) -> Instance:
    """A random problem: answer key, decoy path and trap flag."""
    k_correct, k_decoy, k_shift, k_trap = jax.random.split(key, 4)
    correct = jax.random.randint(k_correct, (env.depth,), 0, env.branching, jnp.int32)
    decoy = jax.random.randint(k_decoy, (env.depth,), 0, env.branching, jnp.int32)
    # The decoy leaves the correct path at the first step.
    shift = jax.random.randint(k_shift, (), 1, env.branching, jnp.int32)
    decoy = decoy.at[0].set((correct[0] + shift) % env.branching)
    trap = jax.random.bernoulli(k_trap, env.trap_rate)
    return Instance(correct, decoy, trap)


def prefix_status(
    env: Environment, instance: Instance, tokens: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each prefix stands in the tree.

    Args:
      tokens: [B, W] int, the start token then actions (entries past ``lengths`` ignored).
      lengths: [B] int, tokens per row (>= 1).
    Returns:
      ``(on_correct [B] bool, on_decoy [B] bool, depth [B] int32)``: whether every
      action so far follows the answer key / the decoy, and the number of actions.
    """
    width = tokens.shape[1]
    column = jnp.arange(width)[None]
    actions = (column >= 1) & (column < lengths[:, None])

    def follows(path):
        # Column j >= 1 holds action j - 1.
        expected = jnp.concatenate([jnp.zeros((1,), jnp.int32), path.astype(jnp.int32)])
        expected = jnp.pad(expected, (0, max(0, width - expected.shape[0])))[:width]
        return jnp.all(jnp.where(actions, tokens == expected[None], True), axis=1)

    return follows(instance.correct), follows(instance.decoy), (lengths - 1).astype(jnp.int32)


def proposal_log_probs(
    env: Environment, instance: Instance, tokens: jax.Array, lengths: jax.Array
) -> jax.Array:
    """The proposal's next-action log-probabilities after each prefix: [B, V] (-inf off actions)."""
    on_correct, on_decoy, depth = prefix_status(env, instance, tokens, lengths)
    k = env.branching
    step = jnp.clip(depth, 0, env.depth - 1)
    action = jnp.arange(k)[None]
    is_correct = action == instance.correct[step][:, None]  # [B, K]
    is_decoy = action == instance.decoy[step][:, None]
    # First step: the favourite is the decoy on trap instances, the correct action otherwise.
    favourite = jnp.where(instance.trap, is_decoy, is_correct)
    runner_up = jnp.where(instance.trap, is_correct, is_decoy)
    rest = (1.0 - env.mode_prob - env.runner_up_prob) / (k - 2)
    root = jnp.where(favourite, env.mode_prob, jnp.where(runner_up, env.runner_up_prob, rest))
    # Later steps: continue the branch with step_prob; dead ends are uniform.
    other = (1.0 - env.step_prob) / (k - 1)
    along = jnp.where(on_correct[:, None], is_correct, is_decoy)
    branch = jnp.where(along, env.step_prob, other)
    probs = jnp.where(
        (depth == 0)[:, None],
        root,
        jnp.where((on_correct | on_decoy)[:, None], branch, 1.0 / k),
    )
    never = jnp.full((tokens.shape[0], 2), -jnp.inf)  # start and end tokens
    return jnp.concatenate([jnp.log(probs), never], axis=1)


def process_reward(
    env: Environment, instance: Instance, tokens: jax.Array, lengths: jax.Array
) -> jax.Array:
    """The (overconfident-early) process reward of every prefix: [B] in (0, 1)."""
    on_correct, on_decoy, depth = prefix_status(env, instance, tokens, lengths)
    early = depth <= env.reveal_depth
    correct = jnp.where(early, env.correct_early_reward, env.correct_late_reward)
    decoy = jnp.where(early, env.decoy_reward, env.revealed_reward)
    return jnp.where(on_correct, correct, jnp.where(on_decoy, decoy, env.off_reward))


def verify(
    env: Environment, instance: Instance, tokens: jax.Array, lengths: jax.Array
) -> jax.Array:
    """The exact verifier: a complete solution equal to the answer key.

    Args:
      tokens: [B, W] int, the start token then actions; lengths: [B] int.
    Returns:
      [B] bool: the start token, exactly ``depth`` actions, all equal to the key.
    """
    on_correct, _, depth = prefix_status(env, instance, tokens, lengths)
    return on_correct & (depth == env.depth) & (tokens[:, 0] == env.start_id)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SyntheticPolicy:
    """The environment's proposal behind the ``models.apply`` contract.

    ``__call__(tokens [B, S], cache)`` appends ``tokens`` at each row's cache length
    and returns ``(logits [B, S, V], cache)``. Its "KV cache" stores the token
    history (``keys[0, b, t, 0, 0]``), so the particle filter gathers, rewinds and
    extends it exactly as it does a transformer's.
    """

    config: models.TransformerConfig = dataclasses.field(metadata={"static": True})
    env: Environment = dataclasses.field(metadata={"static": True})
    instance: Instance

    @classmethod
    def create(cls, env: Environment, instance: Instance) -> SyntheticPolicy:
        config = models.TransformerConfig(
            vocab_size=env.vocab_size,
            num_layers=1,
            num_heads=1,
            d_model=1,
            max_length=env.width,
        )
        return cls(config, env, instance)

    @property
    def dtype(self) -> jnp.dtype:
        """The "cache" holds token ids exactly in float32."""
        return jnp.dtype(jnp.float32)

    def __call__(self, tokens: jax.Array, cache: models.KVCache | None = None, **kwargs):
        if cache is None:
            cache = models.init_cache(self.config, tokens.shape[0], self.env.width)
        rows = jnp.arange(tokens.shape[0])[:, None]
        columns = cache.lengths[:, None] + jnp.arange(tokens.shape[1])[None]  # [B, S]
        keys = cache.keys.at[0, rows, columns, 0, 0].set(
            tokens.astype(cache.keys.dtype), mode="drop"
        )
        history = keys[0, :, :, 0, 0].astype(jnp.int32)  # [B, W]
        # Small integers are exact in float32, so the history round-trips.
        logits = jax.vmap(
            lambda c: proposal_log_probs(self.env, self.instance, history, c + 1),
            in_axes=1,
            out_axes=1,
        )(columns)
        if kwargs.get("logits_at") is not None:  # the model protocol: logits only there
            logits = jnp.take_along_axis(logits, kwargs["logits_at"][..., None], axis=1)
        return logits, cache._replace(keys=keys, lengths=cache.lengths + tokens.shape[1])


# ----------------------------------------------------------------------------- methods


class MethodSpec(NamedTuple):
    sampling: Sampling
    resample_threshold: float
    schedule: str
    lookahead: int


def method_spec(name: str, lookahead: int) -> MethodSpec:
    """The filter settings behind a method name."""
    sample = Sampling(temperature=1.0)
    specs = {
        "greedy": MethodSpec(Sampling(temperature=0.0), 0.0, "none", 0),
        "best_of_n": MethodSpec(sample, 0.0, "none", 0),  # never resamples
        "pf": MethodSpec(sample, 1.0, "none", 0),
        "epf_ess": MethodSpec(sample, 1.0, "ess", 0),
        "epf_entropy": MethodSpec(sample, 1.0, "entropy", 0),
        "epf_base": MethodSpec(sample, 1.0, "base", 0),
        "pf_lookahead": MethodSpec(sample, 1.0, "none", lookahead),
        "epf_ess_lookahead": MethodSpec(sample, 1.0, "ess", lookahead),
    }
    if name not in specs:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(specs)}.")
    return specs[name]


class Outcome(NamedTuple):
    """One filter run on one instance."""

    success: jax.Array  # [] bool, the selected answer passes the verifier
    coverage: jax.Array  # [] bool, some particle of the final pool passes it
    num_unique: jax.Array  # [D] int32, distinct ancestors kept per round
    lineages: jax.Array  # [D] int32, distinct step-t prefixes among the final particles
    distinct_final: jax.Array  # [] int32, distinct complete solutions in the final pool


def solve(
    key: jax.Array,
    instance: Instance,
    *,
    env: Environment,
    method: str,
    num_particles: int,
    lookahead: int = 2,
    lookahead_weight: float = 0.5,
    resample_method: str = "systematic",
) -> Outcome:
    """Runs one method on one instance through ``particles.lm_particle_filter``."""
    spec = method_spec(method, lookahead)
    n = 1 if method == "greedy" else num_particles
    result = particles.lm_particle_filter(
        key,
        SyntheticPolicy.create(env, instance),
        jnp.asarray([env.start_id], jnp.int32),
        1,
        lambda tokens, lengths: process_reward(env, instance, tokens, lengths),
        num_particles=n,
        max_steps=env.depth,
        max_step_tokens=1,
        delimiter_id=env.end_id,
        end_id=env.end_id,
        sampling=spec.sampling,
        schedule=spec.schedule,
        resample_threshold=spec.resample_threshold,
        method=resample_method,
        lookahead=spec.lookahead,
        lookahead_weight=lookahead_weight,
    )
    pool = result.particles
    correct = verify(env, instance, pool.tokens, pool.lengths)
    # same[i, j, t]: final particles i and j share their first t + 1 actions.
    equal = pool.tokens[:, None, 1:] == pool.tokens[None, :, 1:]  # [N, N, D]
    same = jnp.cumprod(equal, axis=2).astype(bool)
    # A row counts once per prefix length: when no earlier row has the same prefix.
    first = ~jnp.any(jnp.tril(jnp.ones(same.shape[:2], bool), k=-1)[..., None] & same, axis=1)
    lineages = jnp.sum(first, axis=0).astype(jnp.int32)  # [D]
    return Outcome(
        success=correct[result.best],
        coverage=jnp.any(correct),
        num_unique=result.history.num_unique,
        lineages=lineages,
        distinct_final=lineages[-1],
    )


def _synthetic_rows(config, env: Environment, progress) -> list[dict[str, Any]]:
    """Every (method, budget) over the same ``num_seeds`` instances and filter keys."""
    instance_key, filter_key = jax.random.split(jax.random.key(config.seed))
    instances = jax.vmap(lambda k: sample_instance(k, env))(
        jax.random.split(instance_key, config.num_seeds)
    )
    keys = jax.random.split(filter_key, config.num_seeds)
    jobs = [
        (method, n)
        for n in config.budgets
        for method in config.methods
        if method != "greedy" or n == config.budgets[0]
    ]
    iterator = progress(jobs, desc="synthetic") if progress else jobs
    rows, pf_success = [], {}
    for method, n in iterator:
        fn = jax.jit(
            jax.vmap(
                lambda k, i, method=method, n=n: solve(
                    k,
                    i,
                    env=env,
                    method=method,
                    num_particles=n,
                    lookahead=config.lookahead,
                    lookahead_weight=config.lookahead_weight,
                    resample_method=config.resample_method,
                )
            )
        )
        start = time.perf_counter()
        out = jax.device_get(jax.block_until_ready(fn(keys, instances)))
        seconds = time.perf_counter() - start
        success = np.asarray(out.success, bool)
        spec = method_spec(method, config.lookahead)
        particles_used = 1 if method == "greedy" else n
        rate = float(success.mean())
        row = {
            "method": method,
            "num_particles": particles_used,
            "budget": n,
            "success_rate": rate,
            "success_se": float(np.sqrt(rate * (1 - rate) / success.size)),
            "coverage_rate": float(np.mean(out.coverage)),
            "diversity": (np.mean(out.num_unique, axis=0) / particles_used).tolist(),
            "lineages": np.mean(out.lineages, axis=0).tolist(),
            "distinct_final": float(np.mean(out.distinct_final)),
            "proposal_calls": particles_used * max(spec.lookahead, 1) * env.depth,
            "seconds": seconds,
        }
        if method == "pf":
            pf_success[n] = success
        elif n in pf_success:
            diff = success.astype(float) - pf_success[n]
            row["minus_pf"] = float(diff.mean())
            row["minus_pf_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
        rows.append(row)
        if progress:
            progress.write(json.dumps({k: row[k] for k in ("method", "budget", "success_rate")}))
    return rows


# ----------------------------------------------------------------------------- LM demo


def lm_reward(
    target: models.Model, prompt_length: jax.Array | int
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Reward ``(tokens [N, W], lengths [N]) -> [N]``: the target's geometric-mean byte probability.

    ``exp(mean log p_target(x_t | x_<t))`` over the generated positions
    ``[prompt_length, length)``; in (0, 1], and 1 only for a continuation the
    target predicts with certainty.
    """

    def reward(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        log_probs = -models.next_token_nll(target, tokens)  # [N, W - 1], position t predicts t+1
        predicted = jnp.arange(1, tokens.shape[1])[None]
        generated = (predicted >= prompt_length) & (predicted < lengths[:, None])
        count = jnp.maximum(jnp.sum(generated, axis=1), 1)
        mean = jnp.sum(jnp.where(generated, log_probs, 0.0), axis=1) / count
        return jnp.exp(mean)

    return reward


def _lm_rows(config, progress) -> list[dict[str, Any]]:
    draft = models.Model(*models.load_pretrained(config.lm_draft))
    target = models.Model(*models.load_pretrained(config.lm_target))
    prompts, lengths = data.heldout_prompts(
        config.lm_prompts, config.lm_prompt_length, seed=config.seed
    )
    rows = []
    methods = progress(config.lm_methods, desc="lm demo") if progress else config.lm_methods
    example = None
    for method in methods:
        spec = method_spec(method, config.lookahead)

        @jax.jit
        def run(key, draft, target, prompt, prompt_length, spec=spec):
            result = particles.lm_particle_filter(
                key,
                draft,
                prompt,
                prompt_length,
                lm_reward(target, prompt_length),
                num_particles=config.lm_num_particles,
                max_steps=config.lm_max_steps,
                max_step_tokens=config.lm_step_tokens,
                delimiter_id=ord(" "),
                # The byte models' end-of-text id, which the corpus never contains: every
                # particle writes lm_max_steps words, so rewards compare equal-length work.
                end_id=255,
                sampling=spec.sampling,
                schedule=spec.schedule,
                resample_threshold=spec.resample_threshold,
                method=config.resample_method,
                lookahead=spec.lookahead,
                lookahead_weight=config.lookahead_weight,
            )
            pool = result.particles
            scores = lm_reward(target, prompt_length)(pool.tokens, pool.lengths)
            return pool.tokens[result.best], pool.lengths[result.best], scores, result.best

        log_likelihoods, seconds = [], 0.0
        for seed in range(config.lm_seeds):
            for p in range(config.lm_prompts):
                key = jax.random.fold_in(jax.random.key(config.seed + seed), p)
                args = (key, draft, target, jnp.asarray(prompts[p]), int(lengths[p]))
                start = time.perf_counter()
                tokens, length, scores, best = jax.device_get(run(*args))
                seconds += time.perf_counter() - start
                log_likelihoods.append(float(np.log(scores[best])))
                if seed == 0 and p == 0 and method in ("best_of_n", "pf", "epf_ess"):
                    example = example or {"prompt": _text(prompts[p, : lengths[p]])}
                    example[method] = _text(tokens[lengths[p] : length])
        values = np.asarray(log_likelihoods)
        rows.append(
            {
                "method": method,
                "num_particles": config.lm_num_particles,
                "target_log_likelihood_per_byte": float(values.mean()),
                "se": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
                "runs": int(values.size),
                "seconds_incl_compile": seconds,
            }
        )
    if example:
        rows.append({"method": "example", **example})
    return rows


def _text(tokens) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- run / output


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs the synthetic study (and the LM demo); returns the figures (also JSON + PNG)."""
    env = Environment.from_config(config)
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "config": config.to_dict(),
        "rows": _synthetic_rows(config, env, progress),
    }
    if config.lm_demo:
        results["lm_rows"] = _lm_rows(config, progress)
    _write(results, pathlib.Path(config.output_dir))
    return results


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    _common.write_json(results, out_dir / "results.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    lm_rows = [r for r in results.get("lm_rows", []) if r["method"] != "example"]
    panels = 4 if lm_rows else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if method == "greedy":
            axes[0].axhline(mine[0]["success_rate"], color="gray", ls=":", label="greedy")
            continue
        axes[0].errorbar(
            [r["budget"] for r in mine],
            [r["success_rate"] for r in mine],
            yerr=[r["success_se"] for r in mine],
            marker="o",
            ms=3,
            capsize=2,
            label=method,
        )
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("particles N")
    axes[0].set_ylabel("success rate (exact verifier)")
    axes[0].set_title("synthetic reasoning trap")
    axes[0].legend(fontsize=7)
    small = budgets[len(budgets) // 2]  # a middle budget
    for method in methods:
        row = next((r for r in rows if r["method"] == method and r["budget"] == small), None)
        if row is None or method == "greedy":
            continue
        axes[1].plot(
            range(1, len(row["diversity"]) + 1), row["diversity"], marker=".", label=method
        )
        axes[2].plot(
            range(1, len(row["lineages"]) + 1),
            row["lineages"],
            marker=".",
            label=method,
        )
    axes[1].set_xlabel("round (reasoning step)")
    axes[1].set_ylabel("distinct ancestors kept / N")
    axes[1].set_title(f"resampling diversity, N = {small}")
    axes[1].legend(fontsize=7)
    axes[2].set_xlabel("step t")
    axes[2].set_ylabel("distinct step-t prefixes in the final pool")
    axes[2].set_title(f"surviving lineages, N = {small}")
    if lm_rows:
        axes[3].barh(
            range(len(lm_rows)),
            [r["target_log_likelihood_per_byte"] for r in lm_rows],
            xerr=[r["se"] for r in lm_rows],
        )
        axes[3].set_yticks(range(len(lm_rows)), [r["method"] for r in lm_rows])
        axes[3].set_xlabel("target log-likelihood per byte of the answer")
        axes[3].set_title(f"LM demo, N = {lm_rows[0]['num_particles']}")
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "results.png")
    plt.close(fig)


def format_table(results: dict[str, Any]) -> str:
    """The benchmark as plain-text tables."""
    rows = results["rows"]
    budgets = sorted({r["budget"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["success rate (+- standard error) vs particles N; greedy uses N = 1"]
    lines.append(f"{'method':18s}" + "".join(f"{'N=' + str(n):>14s}" for n in budgets))
    for method in methods:
        cells = []
        for n in budgets:
            r = next((r for r in rows if r["method"] == method and r["budget"] == n), None)
            if r is None and method == "greedy":
                r = next(r for r in rows if r["method"] == "greedy")
            cells.append(f"{r['success_rate']:7.3f}+-{r['success_se']:.3f}" if r else f"{'':14s}")
        lines.append(f"{method:18s}" + "".join(f"{c:>14s}" for c in cells))
    lines.append("")
    lines.append("paired difference to PF (same instances and keys), +- standard error")
    lines.append(f"{'method':18s}" + "".join(f"{'N=' + str(n):>16s}" for n in budgets))
    for method in methods:
        cells = []
        for n in budgets:
            r = next((r for r in rows if r["method"] == method and r["budget"] == n), None)
            has = r is not None and "minus_pf" in r
            cells.append(f"{r['minus_pf']:+7.3f}+-{r['minus_pf_se']:.3f}" if has else "")
        if any(cells):
            lines.append(f"{method:18s}" + "".join(f"{c:>16s}" for c in cells))
    lines.append("")
    lines.append("coverage (a correct particle in the final pool) / proposal calls per instance")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = " ".join(f"{r['coverage_rate']:.3f}/{r['proposal_calls']}" for r in mine)
        lines.append(f"{method:18s} {cells}")
    lines.append("")
    lines.append("distinct step-1 / step-D prefixes in the final pool (mean count)")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = " ".join(f"{r['lineages'][0]:.2f}/{r['lineages'][-1]:.1f}" for r in mine)
        lines.append(f"{method:18s} {cells}")
    lm_rows = results.get("lm_rows", [])
    if lm_rows:
        lines.append("")
        lines.append("LM demo: target log-likelihood per byte of the selected answer (+- se)")
        for r in lm_rows:
            if r["method"] == "example":
                lines.extend(f"  {k}: {v!r}" for k, v in r.items() if k != "method")
            else:
                lines.append(
                    f"{r['method']:18s} {r['target_log_likelihood_per_byte']:8.4f} "
                    f"+- {r['se']:.4f}  (N={r['num_particles']}, {r['runs']} runs)"
                )
    return "\n".join(lines)
