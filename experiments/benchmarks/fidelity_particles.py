"""Particle filtering vs best-of-N with a real (tiny) language model and a checkable task.

Behind ``experiments/fidelity_particles.py`` (issue 19). The landed study
(``experiments/benchmarks/inference_time_scaling.py``) has particle filtering (PF) losing to
best-of-N from N = 8 in a synthetic tree whose process reward is overconfident early on a
decoy path; Puri et al. (2025) report PF beating best-of-N and scaling 4-16x better than
deterministic search. This benchmark tests whether that loss comes from the reward stand-in.

**Task** (generated and verified in code). Addition of two ``digits``-digit numbers, the
operands' digits interleaved pairwise, least significant first. The solution is written one
answer digit per reasoning step, least significant first, with the carry shown: step ``i``
is the three tokens ``s_i c_i ;`` (``.``, the end marker, instead of ``;`` on the last
step). The verifier accepts exactly the reference solution (digits, carries, delimiters).

**Models**. One Llama-family decoder (``models.llama``, 16-token vocabulary, ``num_layers``
x ``d_model``) trained inside the experiment with AdamW on freshly generated problems; its
parameters after each of ``train_checkpoints`` steps are the three "model sizes" (training
lengths), chosen so that single-sample accuracy spans a range: the capability trend. The
parameters are cached in ``output_dir/models/`` under a hash of the training configuration.

**Process rewards** (stand-ins computed in code; ``y`` = the prefix still equals the
reference prefix, which for this deterministic task is exactly "the prefix can still lead to
a correct answer"):

* ``prm_aucX``: a noisy PRM with logit ``s (2y - 1) + eps``, ``eps ~ N(0, 1)`` drawn once per
  distinct prefix (a hash of the prefix seeds it, so the same prefix always gets the same
  score, as with a real PRM). ``s = Phi^-1(AUC) / sqrt(2)``, so X is the PRM's ROC AUC at
  separating live from dead prefixes: the PRM-quality knob.
* ``decoy``: the landed study's overconfident-early reward transplanted here: prefixes that
  follow the *no-carry* solution (the classic error) but not the correct one score
  ``decoy_reward`` (0.95) for the first ``reveal_steps`` steps and 0.05 after; correct
  prefixes 0.5 early and 0.9 after; everything else 0.1.

**Methods** (same problems and keys for all, so the differences are paired), at budgets N:
greedy (N = 1, argmax tokens), best-of-N (N independent samples, the highest final reward;
also majority vote over answers), PF (Puri et al.: weight = logit(reward) replaced each step,
resample every step, the answer is the argmax final weight) and entropic PF (ESS schedule),
both through the library's ``particles.lm_run``, and step-level beam search (N / M beams, each
expanded by M sampled steps, the top N / M by reward kept; written here on top of
``particles.lm_step`` with resampling switched off). Ablations of PF at a few N (config
switches): ESS-adaptive resampling, the SMC increment weighting, and sampling temperature.

Reported: accuracy with Wilson 95% intervals, the scaling rate (least-squares accuracy gain
per doubling of N, with a paired bootstrap 95% interval over problems), and PF - best-of-N
paired differences. Writes ``results.json`` and ``results.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pathlib
import pickle
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.benchmarks import _common
from experiments.benchmarks._common import wilson
from lookahead_jax import models, particles
from lookahead_jax.sampling import Sampling

# ----------------------------------------------------------------------------- vocabulary

PLUS, EQUALS, DELIM, END, PAD, BOS = 10, 11, 12, 13, 14, 15
VOCAB_SIZE = 16


def default_config() -> ml_collections.ConfigDict:
    """Defaults sized for a shared 2-core CPU (the full run: about 15 minutes)."""
    c = ml_collections.ConfigDict()
    c.digits = 4
    # One Llama-family decoder; its parameters after each of `train_checkpoints` AdamW steps
    # are the three "model sizes" (training lengths: the capability trend).
    c.num_layers = 1
    c.d_model = 32
    c.train_checkpoints = (350, 400, 550)
    c.schedule_steps = 1200  # the cosine decay's length (checkpoints stop before its end)
    c.batch_size = 64
    c.learning_rate = 1e-2
    c.train_seed = 0
    # Process rewards: noisy PRMs at these AUCs, plus the landed overconfident-early reward.
    c.prm_aucs = (0.75, 0.9, 0.99)
    c.decoy = True
    c.decoy_reward = 0.95
    c.reveal_steps = 2
    # The study.
    c.budgets = (1, 2, 4, 8, 16, 32, 64)
    c.num_problems = 200
    c.methods = ("best_of_n", "majority", "pf", "epf", "beam")
    c.beam_width = 4  # M: each beam is expanded by M sampled steps
    c.temperature = 0.8  # sampling temperature of every sampled method (reference scripts: 0.8)
    # Ablations of PF at `ablation_budgets`, on the model `ablation_model` (index).
    c.ablations = ("adaptive", "smc", "temperature_1")
    c.ablation_budgets = (16,)
    c.ablation_model = 1
    c.seed = 0
    c.quick = False
    c.output_dir = "outputs/fidelity_particles"
    return c


def _quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smoke-test sizes: one barely trained model, few problems, two budgets, few
    compiles (each method x budget compiles once)."""
    c = ml_collections.ConfigDict(c.to_dict())
    c.digits = 2
    c.train_checkpoints = (30,)
    c.prm_aucs = (0.9,)
    c.budgets = (1, 4)
    c.num_problems = 8
    c.methods = ("best_of_n", "majority", "pf")
    c.ablations = ("smc",)
    c.ablation_budgets = (4,)
    c.ablation_model = 0
    return c


# ----------------------------------------------------------------------------- the task


class Problems(NamedTuple):
    """A batch of addition problems (leading axis: problems)."""

    prompt: jax.Array  # [B, P] int32: BOS a_0 b_0 + ... a_{D-1} b_{D-1} =
    solution: jax.Array  # [B, 3D] int32: s_i c_i ; ... s_{D-1} c_{D-1} .
    decoy: jax.Array  # [B, 3D] int32: the same without carries (the classic error)


def prompt_length(digits: int) -> int:
    return 3 * digits + 1


def solution_tokens(a: np.ndarray | jax.Array, b: jax.Array, carry_in: bool = True) -> jax.Array:
    """The step-by-step solution of ``a + b`` for digit arrays ``[..., D]`` (LSB first).

    With ``carry_in=False`` the carries are ignored (every shown carry is 0): the decoy.
    """
    a = jnp.asarray(a, jnp.int32)
    b = jnp.asarray(b, jnp.int32)
    digits = a.shape[-1]
    carry = jnp.zeros(a.shape[:-1], jnp.int32)
    outs, carries = [], []
    for i in range(digits):  # a few digits: a Python loop (fast eagerly, no scan to compile)
        total = a[..., i] + b[..., i] + (carry if carry_in else 0)
        carry = total // 10
        outs.append(total % 10)
        carries.append(carry if carry_in else jnp.zeros_like(carry))
    out = jnp.stack(outs, axis=-1)
    carries = jnp.stack(carries, axis=-1)
    delim = jnp.where(jnp.arange(digits) == digits - 1, END, DELIM)
    delim = jnp.broadcast_to(delim, out.shape)
    return jnp.stack([out, carries, delim], axis=-1).reshape(*a.shape[:-1], 3 * digits)


def sample_problems(key: jax.Array, count: int, digits: int) -> Problems:
    """``count`` random problems; the prompt interleaves the operands' digits.

    Prompt: ``BOS a_0 b_0 + a_1 b_1 + ... a_{D-1} b_{D-1} =`` (LSB first), so digit pair i
    sits a fixed distance before answer step i (three tokens each): a tiny model with
    rotary positions can learn the lookup in a few hundred steps.
    """
    ka, kb = jax.random.split(key)
    a = jax.random.randint(ka, (count, digits), 0, 10, jnp.int32)
    b = jax.random.randint(kb, (count, digits), 0, 10, jnp.int32)
    sep = jnp.where(jnp.arange(digits) == digits - 1, EQUALS, PLUS)
    triples = jnp.stack([a, b, jnp.broadcast_to(sep, a.shape)], axis=-1).reshape(count, -1)
    prompt = jnp.concatenate([jnp.full((count, 1), BOS, jnp.int32), triples], axis=1)
    return Problems(prompt, solution_tokens(a, b), solution_tokens(a, b, carry_in=False))


def answer_value(generated: jax.Array) -> jax.Array:
    """The integer a well-formed generated solution ``[..., 3D]`` states; -1 if malformed."""
    digits = generated.shape[-1] // 3
    steps = generated.reshape(*generated.shape[:-1], digits, 3)
    delim = jnp.where(jnp.arange(digits) == digits - 1, END, DELIM)
    ok = jnp.all((steps[..., 0] < 10) & (steps[..., 1] < 10) & (steps[..., 2] == delim), -1)
    place = 10 ** jnp.arange(digits + 1)
    value = jnp.sum(steps[..., 0] * place[:digits], -1) + steps[..., -1, 1] * place[digits]
    return jnp.where(ok, value, -1).astype(jnp.int32)


# ----------------------------------------------------------------------------- the models


def model_config(c: ml_collections.ConfigDict) -> models.TransformerConfig:
    return models.llama(
        vocab_size=VOCAB_SIZE,
        num_layers=c.num_layers,
        num_heads=max(1, c.d_model // 16),
        d_model=c.d_model,
        max_length=prompt_length(c.digits) + 3 * c.digits,
    )


def _cache_key(c: ml_collections.ConfigDict) -> str:
    fields = dict(
        digits=c.digits,
        layers=c.num_layers,
        width=c.d_model,
        steps=list(c.train_checkpoints),
        schedule=c.schedule_steps,
        batch=c.batch_size,
        lr=c.learning_rate,
        seed=c.train_seed,
        version=3,
    )
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def train_models(
    c: ml_collections.ConfigDict, out_dir: pathlib.Path
) -> list[tuple[models.Model, dict[str, Any]]]:
    """Trains one model on freshly generated problems; its parameters at each of
    ``train_checkpoints`` steps are the "model sizes" (the capability trend).

    Cached in ``out_dir/models`` under a hash of the training configuration.
    """
    config = model_config(c)
    path = out_dir / "models" / f"adder_{c.num_layers}x{c.d_model}_{_cache_key(c)}.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            saved = pickle.load(f)
        return [
            (models.Model(config, jax.tree.map(jnp.asarray, p)), dict(info, cached=True))
            for p, info in zip(saved["params"], saved["info"], strict=True)
        ]
    start = time.perf_counter()
    total = max(c.train_checkpoints)
    key = jax.random.key(c.train_seed)
    params = models.init_params(config, jax.random.fold_in(key, 1))
    decay = max(total, c.schedule_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, max(1, decay // 10), decay, c.learning_rate * 0.1
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = opt.init(params)
    p_len = prompt_length(c.digits)

    def loss_fn(params, batch_key):
        problems = sample_problems(batch_key, c.batch_size, c.digits)
        seq = jnp.concatenate([problems.prompt, problems.solution], axis=1)
        logits, _ = models.apply(config, params, seq[:, :-1])
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(log_probs, seq[:, 1:, None], -1)[..., 0]
        # Only the solution is learnt (the operands are random).
        return jnp.mean(nll[:, p_len - 1 :])

    @jax.jit
    def update(params, opt_state, batch_key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch_key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = jax.random.split(jax.random.fold_in(key, 2), total)
    losses, saved_params, infos = [], [], []
    for step in range(1, total + 1):
        params, opt_state, loss = update(params, opt_state, keys[step - 1])
        losses.append(float(loss))
        if step in c.train_checkpoints:
            saved_params.append(jax.tree.map(np.asarray, params))
            infos.append(
                dict(
                    name=f"{c.num_layers}x{c.d_model}@{step}",
                    train_steps=step,
                    num_params=int(sum(x.size for x in jax.tree.leaves(params))),
                    final_loss=float(np.mean(losses[-20:])),
                    train_seconds=time.perf_counter() - start,
                    cached=False,
                )
            )
    if _common.distributed.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(dict(params=saved_params, info=infos), f)
    return [
        (models.Model(config, jax.tree.map(jnp.asarray, p)), info)
        for p, info in zip(saved_params, infos, strict=True)
    ]


# ----------------------------------------------------------------------------- process rewards


class RewardParams(NamedTuple):
    """One process-reward stand-in as arrays, so every reward shares one compiled run."""

    decoy: jax.Array  # [] bool: the overconfident-early reward instead of a noisy PRM
    scale: jax.Array  # [] float: s of the noisy PRM (logit = s (2y - 1) + eps)
    decoy_reward: jax.Array  # [] float
    reveal_steps: jax.Array  # [] int32


def prm_scale(auc: float) -> float:
    """``s`` such that ``s (2y - 1) + N(0, 1)`` separates y = 1 from y = 0 with this ROC AUC.

    The difference of a live and a dead prefix's logits is ``N(2 s, 2)``, so
    ``AUC = Phi(sqrt(2) s)``.
    """
    from statistics import NormalDist

    return NormalDist().inv_cdf(auc) / math.sqrt(2.0)


def reward_params(name: str, c: ml_collections.ConfigDict) -> RewardParams:
    """``"decoy"`` or ``"prm_auc<AUC>"``."""
    if name == "decoy":
        return RewardParams(
            jnp.asarray(True), jnp.asarray(0.0), jnp.asarray(c.decoy_reward), c.reveal_steps
        )
    auc = float(name.removeprefix("prm_auc"))
    return RewardParams(
        jnp.asarray(False), jnp.asarray(prm_scale(auc)), jnp.asarray(0.0), c.reveal_steps
    )


def prefix_hash(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """A uint32 hash of each row's first ``lengths`` tokens (seeds the PRM's noise)."""
    column = jnp.arange(tokens.shape[1], dtype=jnp.uint32)
    mult = jnp.uint32(2654435761) ** (column + jnp.uint32(1))  # wraps mod 2^32
    live = column[None] < lengths[:, None].astype(jnp.uint32)
    mixed = jnp.where(live, (tokens.astype(jnp.uint32) + jnp.uint32(1)) * mult[None], 0)
    return jnp.sum(mixed, axis=1, dtype=jnp.uint32) ^ (lengths.astype(jnp.uint32) * 97)


def process_reward(
    reward: RewardParams,
    noise_key: jax.Array,
    reference: jax.Array,
    decoy: jax.Array,
    p_len: int,
    tokens: jax.Array,
    lengths: jax.Array,
) -> jax.Array:
    """Scores of prefixes ``tokens [N, W]`` (``lengths [N]``) of one problem: [N] in (0, 1).

    ``reference`` / ``decoy``: [W] the prompt followed by the correct / no-carry solution.
    """
    column = jnp.arange(tokens.shape[1])[None]
    written = (column >= p_len) & (column < lengths[:, None])
    live = jnp.all(jnp.where(written, tokens == reference[None], True), axis=1)
    on_decoy = jnp.all(jnp.where(written, tokens == decoy[None], True), axis=1)
    # Noisy PRM: one N(0, 1) draw per distinct prefix.
    eps = jax.vmap(lambda h: jax.random.normal(jax.random.fold_in(noise_key, h)))(
        prefix_hash(tokens, lengths)
    )
    noisy = jax.nn.sigmoid(reward.scale * jnp.where(live, 1.0, -1.0) + eps)
    # The landed study's overconfident-early reward (steps of three tokens).
    steps = (lengths - p_len + 2) // 3
    early = steps <= reward.reveal_steps
    correct = jnp.where(early, 0.5, 0.9)
    decoyed = jnp.where(early, reward.decoy_reward, 0.05)
    trap = jnp.where(live, correct, jnp.where(on_decoy, decoyed, 0.1))
    return jnp.where(reward.decoy, trap, noisy)


# ----------------------------------------------------------------------------- methods


class Outcome(NamedTuple):
    """One method on one problem."""

    success: jax.Array  # [] bool, the selected answer passes the verifier
    majority: jax.Array  # [] bool, the majority-vote answer is the right number
    coverage: jax.Array  # [] bool, some final particle passes the verifier


def _filter_config(
    n: int, digits: int, temperature: float, threshold: float, schedule: str, weighting: str
) -> particles.LMParticleFilterConfig:
    return particles.LMParticleFilterConfig(
        num_particles=n,
        max_steps=digits,
        max_step_tokens=3,
        delimiter_id=DELIM,
        end_id=END,
        sampling=Sampling(temperature=temperature),
        weighting=weighting,
        schedule=schedule,
        resample_threshold=threshold,
        pad_id=PAD,
    )


def _gather(state: particles.LMState, index: jax.Array) -> particles.LMState:
    """The pool rows ``index`` (the KV cache has the particle axis second)."""
    cache = state.cache
    rows = {
        name: getattr(state, name)[index]
        for name in (
            "tokens",
            "lengths",
            "next_logits",
            "finished",
            "steps",
            "reward_logits",
            "log_weights",
        )
    }
    cache = cache._replace(
        keys=cache.keys[:, index], values=cache.values[:, index], lengths=cache.lengths[index]
    )
    return state._replace(cache=cache, **rows)


def beam_search(
    key: jax.Array,
    model: models.Model,
    prompt: jax.Array,
    length: jax.Array,
    reward_fn,
    config: particles.LMParticleFilterConfig,
    expand: int,
) -> tuple[particles.LMState, jax.Array]:
    """Step-level beam search with a process reward, on the library's ``lm_step``.

    ``N = config.num_particles`` rows hold ``N // expand`` beams expanded by ``expand``
    sampled steps each; after every step the ``N // expand`` best rows by reward are kept
    and each is copied ``expand`` times (finished rows compete too and keep their score).
    ``config.resample_threshold`` must be 0 (``lm_step`` only extends and scores).
    Returns the final pool and the index of the answer (``particles.best_particle``).
    """
    n = config.num_particles
    keep = max(1, n // expand)
    copies = jnp.arange(n) // (n // keep)  # n // keep copies of each kept row (+ remainder)
    copies = jnp.minimum(copies, keep - 1)
    state = particles.lm_init(key, model, prompt, length, config)

    def body(state, round_key):
        state, _ = particles.lm_step(round_key, state, model, reward_fn, config)
        score = jnp.where(jnp.isnan(state.reward_logits), -jnp.inf, state.reward_logits)
        top = jax.lax.top_k(score, keep)[1]
        return _gather(state, top[copies]), None

    state, _ = jax.lax.scan(body, state, jax.random.split(key, config.max_steps))
    return state, particles.best_particle(state)


@functools.partial(
    jax.jit,
    static_argnames=("method", "n", "digits", "temperature", "threshold", "weighting", "expand"),
)
def solve_batch(
    keys: jax.Array,
    model: models.Model,
    problems: Problems,
    reward: RewardParams,
    *,
    method: str,
    n: int,
    digits: int,
    temperature: float,
    threshold: float = 1.0,
    weighting: str = "published",
    expand: int = 4,
) -> Outcome:
    """One method on every problem (vmapped); ``keys [B]`` pair the methods' randomness."""
    p_len = prompt_length(digits)
    if method == "greedy":
        temperature, n = 0.0, 1
    schedule = "ess" if method == "epf" else "none"
    if method in ("best_of_n", "beam", "greedy"):
        threshold = 0.0  # lm_step never resamples: independent samples
    config = _filter_config(n, digits, temperature, threshold, schedule, weighting)

    def one(key, prompt, solution, decoy, length):
        reference = jnp.concatenate([prompt, solution])
        decoy_full = jnp.concatenate([prompt, decoy])
        noise_key = jax.random.fold_in(key, 7)

        def reward_fn(tokens, lengths):
            return process_reward(reward, noise_key, reference, decoy_full, p_len, tokens, lengths)

        if method == "beam":
            pool, best = beam_search(key, model, prompt, length, reward_fn, config, expand)
        else:
            result = particles.lm_run(key, model, prompt, length, reward_fn, config)
            pool, best = result.particles, result.best
        generated = pool.tokens[:, p_len:]
        correct = jnp.all(generated == solution[None], axis=1) & pool.finished
        answers = answer_value(generated)
        vote = particles.majority_vote(answers, pool.finished & (answers >= 0))
        return Outcome(correct[best], vote == answer_value(solution), jnp.any(correct))

    # The prompt length goes in as data: as a constant, XLA spends minutes constant-folding
    # the prefill's attention mask for every problem and particle.
    lengths = jnp.full(keys.shape[:1], p_len, jnp.int32)
    return jax.vmap(one)(keys, problems.prompt, problems.solution, problems.decoy, lengths)


# ----------------------------------------------------------------------------- statistics


def scaling_rate(budgets, success: np.ndarray, reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Least-squares accuracy gain per doubling of N, with a bootstrap 95% interval.

    ``success [len(budgets), B]`` bool, the same B problems at every budget (paired); the
    bootstrap resamples problems.
    """
    x = np.log2(np.asarray(budgets, float))
    x = x - x.mean()

    def slope(acc):  # acc [..., len(budgets)]
        return (acc * x).sum(-1) / (x * x).sum()

    point = float(slope(success.mean(1)))
    if len(budgets) < 2:
        return dict(rate=float("nan"), low=float("nan"), high=float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, success.shape[1], (reps, success.shape[1]))
    boot = slope(success[:, idx].mean(-1).T)
    low, high = np.percentile(boot, [2.5, 97.5])
    return dict(rate=point, low=float(low), high=float(high))


def paired_difference(a: np.ndarray, b: np.ndarray, reps: int = 1000, seed: int = 0):
    """Mean of ``a - b`` over paired problems, with a bootstrap 95% interval."""
    diff = a.astype(float) - b.astype(float)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, (reps, diff.size))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return dict(diff=float(diff.mean()), low=float(low), high=float(high))


def _cell(success: np.ndarray) -> dict[str, Any]:
    k, n = int(success.sum()), int(success.size)
    low, high = wilson(k, n)
    return dict(acc=k / n, low=low, high=high, n=n)


# ----------------------------------------------------------------------------- the study


def _reward_names(c: ml_collections.ConfigDict) -> list[str]:
    names = [f"prm_auc{auc:g}" for auc in c.prm_aucs]
    return names + (["decoy"] if c.decoy else [])


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Trains the models, runs every method x budget x reward x model, writes the results."""
    c = _quick(config) if config.quick else config
    out_dir = pathlib.Path(c.output_dir)
    start = time.perf_counter()
    trained = train_models(c, out_dir)
    problem_key, filter_key = jax.random.split(jax.random.key(c.seed))
    problems = sample_problems(problem_key, c.num_problems, c.digits)
    keys = jax.random.split(filter_key, c.num_problems)
    rewards = _reward_names(c)
    sampled = [m for m in c.methods if m != "majority"]
    jobs = [("greedy", 1, None)] + [(m, n, r) for r in rewards for m in sampled for n in c.budgets]
    ablation = [
        (a, n, r) for a in c.ablations for n in c.ablation_budgets for r in rewards
    ]  # only on one model
    total = len(trained) * len(jobs) + len(ablation) * 2
    bar = progress(total=total, desc="fidelity_particles") if progress else None
    raw: dict[tuple, np.ndarray] = {}

    def solve(model, method, n, reward, **kw):
        r = reward_params(reward or rewards[0], c)
        out = solve_batch(
            keys,
            model,
            problems,
            r,
            method=method,
            n=n,
            digits=c.digits,
            temperature=kw.pop("temperature", c.temperature),
            expand=c.beam_width,
            **kw,
        )
        if bar:
            bar.update(1)
        return jax.tree.map(np.asarray, out)

    for mi, (model, _) in enumerate(trained):
        for method, n, reward in jobs:
            out = solve(model, method, n, reward)
            raw[(mi, method, n, reward)] = out.success
            if method == "best_of_n":
                raw[(mi, "majority", n, reward)] = out.majority
                raw[(mi, "pass_at_n", n, reward)] = out.coverage
    settings = dict(
        adaptive=dict(threshold=0.5),
        smc=dict(weighting="smc"),
        temperature_1=dict(temperature=1.0),
    )
    am = min(c.ablation_model, len(trained) - 1)
    ablation_rows = []
    for name, n, reward in ablation:
        pf = raw[(am, "pf", n, reward)]
        variant = solve(trained[am][0], "pf", n, reward, **settings[name]).success
        row = dict(ablation=name, n=n, reward=reward, pf=_cell(pf), variant=_cell(variant))
        row["variant_minus_pf"] = paired_difference(variant, pf)
        if name == "temperature_1":  # best-of-N at temperature 1 too, the paired baseline
            bon = solve(trained[am][0], "best_of_n", n, reward, temperature=1.0).success
            row["best_of_n_t1"] = _cell(bon)
        elif bar:
            bar.update(1)
        ablation_rows.append(row)
    if bar:
        bar.close()

    curves, rates, versus = [], [], []
    with_bon = "best_of_n" in sampled
    curve_methods = [*sampled, "majority", "pass_at_n"] if with_bon else sampled
    for mi, (_, info) in enumerate(trained):
        greedy = _cell(raw[(mi, "greedy", 1, None)])
        for reward in rewards:
            for method in curve_methods:
                stack = np.stack([raw[(mi, method, n, reward)] for n in c.budgets])
                curves.append(
                    dict(
                        model=info["name"],
                        reward=reward,
                        method=method,
                        budgets=list(c.budgets),
                        cells=[_cell(s) for s in stack],
                        greedy=greedy,
                    )
                )
                rates.append(
                    dict(
                        model=info["name"],
                        reward=reward,
                        method=method,
                        **scaling_rate(c.budgets, stack),
                    )
                )
            for n in c.budgets if with_bon and "pf" in sampled else ():
                pf, bon = raw[(mi, "pf", n, reward)], raw[(mi, "best_of_n", n, reward)]
                versus.append(
                    dict(model=info["name"], reward=reward, n=n, **paired_difference(pf, bon))
                )
    results = dict(
        config=c.to_dict(),
        models=[info for _, info in trained],
        rewards=rewards,
        curves=curves,
        scaling_rates=rates,
        pf_minus_best_of_n=versus,
        ablations=ablation_rows,
        ablation_model=trained[am][1]["name"],
        wall_seconds=time.perf_counter() - start,
        interval_method="Wilson 95% (accuracy); paired bootstrap 95%, 1000 resamples of problems"
        " (differences, scaling rates)",
    )
    _common.write_json(results, out_dir / "results.json", indent=1)
    _plot(results, out_dir / "results.png")
    return results


def _plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_names = [m["name"] for m in results["models"]]
    rewards = results["rewards"]
    fig, axes = plt.subplots(
        len(model_names),
        len(rewards),
        figsize=(3.2 * len(rewards), 2.6 * len(model_names)),
        squeeze=False,
        sharex=True,
    )
    colours = dict(best_of_n="C0", majority="C2", pf="C3", epf="C1", beam="C4", pass_at_n="0.6")
    for row in results["curves"]:
        ax = axes[model_names.index(row["model"])][rewards.index(row["reward"])]
        acc = [cell["acc"] for cell in row["cells"]]
        err = [
            [max(0.0, a - cell["low"]) for a, cell in zip(acc, row["cells"], strict=True)],
            [max(0.0, cell["high"] - a) for a, cell in zip(acc, row["cells"], strict=True)],
        ]
        style = ":" if row["method"] == "pass_at_n" else "-"
        ax.errorbar(
            row["budgets"],
            acc,
            yerr=err,
            label=row["method"],
            color=colours.get(row["method"]),
            ls=style,
            marker="o",
            ms=3,
            capsize=2,
            lw=1,
        )
        ax.axhline(row["greedy"]["acc"], color="k", lw=0.6, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{row['model']} / {row['reward']}", fontsize=8)
    axes[0][0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("N (particles / samples)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (Wilson 95%)")
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)


def format_table(results: dict[str, Any]) -> str:
    """Accuracy per method and N, scaling rates and PF - best-of-N, as text."""
    lines = []
    budgets = results["config"]["budgets"]
    for info in results["models"]:
        greedy = next(r["greedy"] for r in results["curves"] if r["model"] == info["name"])
        lines.append(
            f"\n== model {info['name']} ({info['num_params']} params, loss "
            f"{info['final_loss']:.3f}); greedy {100 * greedy['acc']:.1f}%"
        )
        for reward in results["rewards"]:
            lines.append(f"  reward {reward}: accuracy % at N = {list(budgets)}; rate/doubling")
            for row in results["curves"]:
                if row["model"] != info["name"] or row["reward"] != reward:
                    continue
                rate = next(
                    r
                    for r in results["scaling_rates"]
                    if (r["model"], r["reward"], r["method"])
                    == (row["model"], reward, row["method"])
                )
                accs = " ".join(f"{100 * cell['acc']:5.1f}" for cell in row["cells"])
                lines.append(
                    f"    {row['method']:10s} {accs}   {100 * rate['rate']:+5.1f} "
                    f"[{100 * rate['low']:+.1f}, {100 * rate['high']:+.1f}]"
                )
            diffs = [
                d
                for d in results["pf_minus_best_of_n"]
                if d["model"] == info["name"] and d["reward"] == reward
            ]
            lines.append(
                "    PF-BoN     "
                + " ".join(f"{100 * d['diff']:+5.1f}" for d in diffs)
                + "   (paired, points)"
            )
    lines.append(f"\n== ablations of PF on {results['ablation_model']}")
    for row in results["ablations"]:
        d = row["variant_minus_pf"]
        extra = ""
        if "best_of_n_t1" in row:
            extra = f"  (best-of-N at T=1: {100 * row['best_of_n_t1']['acc']:.1f}%)"
        lines.append(
            f"  {row['ablation']:14s} N={row['n']:3d} {row['reward']:12s} "
            f"pf {100 * row['pf']['acc']:5.1f}%  variant {100 * row['variant']['acc']:5.1f}%  "
            f"diff {100 * d['diff']:+5.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{extra}"
        )
    lines.append(f"\nwall time {results['wall_seconds']:.0f} s")
    return "\n".join(lines)
