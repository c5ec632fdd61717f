"""What a speculative round costs: a measured (or estimated) cost model for the controllers.

A round that drafts ``k`` tokens (or a tree whose first ``k`` nodes are scored) costs
one target call over ``k + 1`` tokens, the drafter's proposal and its upkeep; a round
that drafts nothing is a plain decoding step (one token, no drafter work).
:class:`CostModel` holds those seconds at one batch size; ``drafting.cost_aware``
turns them, with each row's running acceptance, into the draft length (0 included)
that maximises expected tokens per second.

Two ways to get one:

* :func:`calibrate_costs` times the pieces on the device, once per shapes, outside any
  compiled loop (jitted, warmed, median of ``repeats``);
* :func:`estimate_costs` guesses from model sizes alone (no timing). A plain step is a
  fixed latency ``lambda`` (a share of the step: the device's per-call seconds over the
  step's, the step being the target's parameter bytes over the device's bandwidth plus
  that latency) and reading the parameters, ``1 - lambda``. A target call over ``n``
  tokens costs ``1 + beta (n - 1)`` plain steps, with ``beta = 2 B / (I b)`` for batch
  ``B``, parameter bytes ``b`` and the device's compute per byte of memory bandwidth
  ``I`` (a memory-bound decoder's spare compute). A draft model's proposal pays the
  latency once (a chain) or once per level (a tree) and its share of the target's
  parameter reading, ``1 - lambda``, per token. Drafters without a model (n-gram tables,
  tries, prompt lookup) propose for free. Every drafting round also pays the loop's own
  fixed work (verifying, committing several tokens, the round's conditionals and the
  drafter's bookkeeping: :data:`ROUND_SECONDS`) and a tree round a further
  :data:`NODE_SECONDS` per node it verifies (the tree's masks, paths and per-node memory
  work). It is the default of the generation loop when no cost model is given; it stays
  rough (each drafter's own upkeep differs): calibrate for figures you will report
  (``experiments/cost_estimate.py`` puts the two side by side).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import models as _models
from lookahead_jax.drafting.base import Drafter, TreeDrafter
from lookahead_jax.sampling import Sampling

# Peak compute over memory bandwidth (flop per byte): how many extra tokens a
# memory-bound forward pass scores almost for free. Rough figures: an H100 (~990
# TFLOP/s bf16 over 3.35 TB/s), a TPU v5e (~197 TFLOP/s over 0.82 TB/s), and a CPU
# (fitted to the tiny target on 2 cores: +8% per extra scored token at batch 1).
FLOPS_PER_BYTE = {"gpu": 300.0, "tpu": 240.0, "cpu": 6.0}

# What a model call costs whatever the model's size (dispatching its kernels, the small
# ops around it), in seconds, and the memory bandwidth (bytes per second) that turns the
# parameters a call reads into seconds: together they say what share of a plain step is
# fixed latency, which a small draft model or a tree level pays in full. Rough figures: an
# H100 (3.35 TB/s; ~30 us of launches per call) and a TPU v5e (0.82 TB/s); the CPU's are
# fitted on 2 cores to the byte pair's calibration (``calibrate_costs``): a plain step of
# the 1.9M-parameter target ~375 us, a draft-model chain's propose ~70 us plus ~36 us per
# drafted token, a draft-model tree ~115 us per level.
CALL_SECONDS = {"gpu": 30e-6, "tpu": 30e-6, "cpu": 75e-6}
BYTES_PER_SECOND = {"gpu": 3.35e12, "tpu": 8.2e11, "cpu": 25e9}

# What a drafting round costs beyond its target call and its drafts, in seconds, whatever
# the models' sizes: verifying and committing several tokens, the round's conditionals and
# the drafter's bookkeeping (``ROUND_SECONDS``, every drafting round), and for a token tree
# its masks, paths and per-node memory work (``NODE_SECONDS`` per verified node). The CPU
# figures are a least-squares fit to calibrated whole rounds (``calibrate_costs``) of the
# drafters without a model on the byte and BPE pairs at batch 1 (2026-12-07,
# ``experiments/cost_estimate.py``): with them the estimate lies at 0.78-1.27 of the
# calibrated rounds (median ~1.0), without them at 0.49-1.15 (median ~0.75). GPU and TPU:
# rough guesses (a few dozen extra kernel launches per round; per-node work vectorised),
# not measured here.
ROUND_SECONDS = {"gpu": 60e-6, "tpu": 60e-6, "cpu": 157e-6}
NODE_SECONDS = {"gpu": 0.0, "tpu": 0.0, "cpu": 31.5e-6}


def _check_points(
    names: tuple[str, str], tokens: Sequence[int], seconds: Sequence[float], first: int
):
    """``(tokens, seconds)`` as tuples; ``names``: the two arguments, for the error."""
    tokens, seconds = tuple(tokens), tuple(float(s) for s in seconds)
    ok = len(tokens) == len(seconds) and len(tokens) >= 1
    ok = ok and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)
    ok = ok and list(tokens) == sorted(set(tokens)) and tokens[0] >= first
    ok = ok and all(np.isfinite(s) and s >= 0 for s in seconds)
    if not ok:
        raise ValueError(
            f"`{names[0]}` / `{names[1]}` must be equally long, with increasing int "
            f"counts >= {first} and finite seconds >= 0; got {tokens!r} / {seconds!r}."
        )
    return tokens, seconds


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Seconds (or any common unit) of a round's parts, at one batch size. Hashable.

    Attributes:
      target_tokens: increasing token counts ``n >= 1`` scored per row in one target call.
      target_seconds: the call's time at each of ``target_tokens`` (interpolated linearly
        between them, extrapolated with the last slope).
      draft_tokens: increasing draft lengths ``k >= 1`` (chains) or node counts (trees).
      draft_seconds: the drafter's proposal at each of ``draft_tokens`` (0 at k = 0).
      upkeep_seconds: the drafter's other work per drafting round (its ``update``).
      observe_seconds: one call of the drafter's ``observe`` (learning committed tokens),
        paid by every drafting round and every ``observe_rounds``-th plain round.
      observe_rounds: plain rounds per ``observe`` call (``TreeDrafter.observe_tokens - 1``
        for a drafter that learns tokens in batches; 1: every round).
      overhead_seconds: the loop's own fixed work in every drafting round (verifying,
        committing, the conditionals; :data:`ROUND_SECONDS`), added to the parts; 0 in a
        calibration, whose whole rounds include it.
      node_seconds: a tree round's further work per verified node (masks, paths, the
        memory's per-node work; :data:`NODE_SECONDS`); trees only, 0 in a calibration.
      round_sizes: draft lengths (trees: cuts) whose whole round was timed as the
        generation loop runs it, increasing from 0 (a plain round); ``()``: none.
      round_times: the seconds of one such round at each of ``round_sizes``. Where given,
        :meth:`round_seconds` returns them (interpolated between sizes) instead of the sum
        of the parts above, which leaves out the loop's own work in a drafting round
        (verification, tree masks and paths, committing several tokens).
      batch_size: the batch the figures hold for (``None``: not measured).
      source: ``"calibrated"`` or ``"estimated"`` (for reports).
    """

    target_tokens: tuple[int, ...]
    target_seconds: tuple[float, ...]
    draft_tokens: tuple[int, ...] = (1,)
    draft_seconds: tuple[float, ...] = (0.0,)
    upkeep_seconds: float = 0.0
    observe_seconds: float = 0.0
    observe_rounds: int = 1
    overhead_seconds: float = 0.0
    node_seconds: float = 0.0
    round_sizes: tuple[int, ...] = ()
    round_times: tuple[float, ...] = ()
    batch_size: int | None = None
    source: str = "estimated"

    def __post_init__(self) -> None:
        tokens, seconds = _check_points(
            ("target_tokens", "target_seconds"), self.target_tokens, self.target_seconds, 1
        )
        if seconds[0] <= 0:
            raise ValueError(f"`target_seconds` must be > 0; got {seconds!r}.")
        object.__setattr__(self, "target_tokens", tokens)
        object.__setattr__(self, "target_seconds", seconds)
        tokens, seconds = _check_points(
            ("draft_tokens", "draft_seconds"), self.draft_tokens, self.draft_seconds, 1
        )
        object.__setattr__(self, "draft_tokens", tokens)
        object.__setattr__(self, "draft_seconds", seconds)
        for name in ("upkeep_seconds", "observe_seconds", "overhead_seconds", "node_seconds"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be finite and >= 0; got {value!r}.")
            object.__setattr__(self, name, float(value))
        rounds = self.observe_rounds
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"`observe_rounds` must be an int >= 1; got {rounds!r}.")
        if self.round_sizes or self.round_times:
            sizes, times = _check_points(
                ("round_sizes", "round_times"), self.round_sizes, self.round_times, 0
            )
            if sizes[0] != 0 or min(times) <= 0:
                raise ValueError(
                    f"`round_sizes` must start at 0 (a plain round) and `round_times` be > 0; "
                    f"got {sizes!r} / {times!r}."
                )
            object.__setattr__(self, "round_sizes", sizes)
            object.__setattr__(self, "round_times", times)

    def target(self, num_tokens) -> np.ndarray:
        """Seconds of one target call scoring ``num_tokens`` (array-like) per row."""
        return _interpolate(self.target_tokens, self.target_seconds, num_tokens)

    def draft(self, num_draft) -> np.ndarray:
        """Seconds of proposing ``num_draft`` (array-like) tokens; 0 for 0."""
        num_draft = np.asarray(num_draft, np.float64)
        cost = _interpolate((0, *self.draft_tokens), (0.0, *self.draft_seconds), num_draft)
        return np.where(num_draft > 0, cost, 0.0)

    def round_seconds(self, num_draft) -> np.ndarray:
        """Seconds of a round drafting ``num_draft`` tokens (trees: verifying a cut of that
        many nodes; 0: a plain decoding step): the timed rounds where given, else the sum
        of the parts."""
        num_draft = np.asarray(num_draft, np.float64)
        if self.round_sizes:
            return _interpolate(self.round_sizes, self.round_times, num_draft)
        drafting = self.draft(num_draft) + self._drafting_extra()
        plain = self.observe_seconds / self.observe_rounds  # observe calls come in batches
        return self.target(num_draft + 1) + np.where(num_draft > 0, drafting, plain)

    def tree_round_seconds(self, cuts, num_nodes: int) -> np.ndarray:
        """Seconds of a tree round verifying the first ``cuts`` (array-like) nodes of a
        ``num_nodes``-node tree (0: a plain step): the timed rounds where given, else the
        sum of the parts, where a drafting round proposes the whole tree whatever the cut
        and pays one observe call (the memory learns the pending tokens first)."""
        cuts = np.asarray(cuts, np.float64)
        if self.round_sizes:
            return self.round_seconds(cuts)
        drafting = float(self.draft(num_nodes)) + self._drafting_extra() + self.node_seconds * cuts
        return np.where(cuts > 0, self.target(cuts + 1) + drafting, self.round_seconds(0))

    def _drafting_extra(self) -> float:
        """What every drafting round pays besides its target call and its proposal."""
        return self.upkeep_seconds + self.observe_seconds + self.overhead_seconds

    def draft_cost_ratio(self, num_draft: int) -> float:
        """``c``: the drafter's time per drafted token (upkeep included) over a plain step."""
        if num_draft < 1:
            raise ValueError(f"`num_draft` must be >= 1; got {num_draft!r}.")
        per_token = (float(self.draft(num_draft)) + self.upkeep_seconds) / num_draft
        return per_token / float(self.target(1))


def _interpolate(points, values, at) -> np.ndarray:
    points = np.asarray(points, np.float64)
    values = np.asarray(values, np.float64)
    at = np.asarray(at, np.float64)
    inside = np.interp(at, points, values)
    if len(points) == 1:
        return inside
    slope = (values[-1] - values[-2]) / (points[-1] - points[-2])
    return np.where(at > points[-1], values[-1] + slope * (at - points[-1]), inside)


# ---- estimate from model sizes --------------------------------------------------------------


def _platform() -> str:
    platform = jax.devices()[0].platform
    return platform if platform in FLOPS_PER_BYTE else "gpu"


def estimate_costs(
    target_config: _models.TransformerConfig,
    drafter: Drafter | TreeDrafter | None = None,
    *,
    batch_size: int = 1,
    max_draft: int = 8,
    param_bytes: int = 4,
    flops_per_byte: float | None = None,
    call_seconds: float | None = None,
    bytes_per_second: float | None = None,
    round_seconds: float | None = None,
    node_seconds: float | None = None,
) -> CostModel:
    """A cost model from model sizes alone, in units of one plain decoding step.

    Args:
      target_config: the target's config.
      drafter: the drafter (its ``model_config`` gives a draft model's size; drafters
        without one are estimated as free); ``None``: free.
      batch_size: rows per call (the extra tokens of a wide call cost ``B`` times more).
      max_draft: the largest chain length or tree size the table must cover.
      param_bytes: bytes per parameter (4 for float32, 2 for bfloat16).
      flops_per_byte: the device's peak compute over memory bandwidth; ``None``: a rough
        figure for the default device's platform (:data:`FLOPS_PER_BYTE`).
      call_seconds: the fixed seconds of one model call (dispatch, small ops), paid once
        per chain proposal and once per level of a model-drafted tree; ``None``: the
        platform's figure (:data:`CALL_SECONDS`); 0 drops the latency term.
      bytes_per_second: the device's memory bandwidth, which turns the target's parameter
        bytes into a plain step's seconds; ``None``: :data:`BYTES_PER_SECOND`.
      round_seconds: the fixed seconds every drafting round adds beyond its target call and
        drafts; ``None``: :data:`ROUND_SECONDS`; 0 drops it.
      node_seconds: a tree round's further seconds per verified node; ``None``:
        :data:`NODE_SECONDS`; 0 drops it.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    if not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"`max_draft` must be a positive int; got {max_draft!r}.")
    platform = _platform()
    intensity = FLOPS_PER_BYTE[platform] if flops_per_byte is None else flops_per_byte
    if not intensity > 0:
        raise ValueError(f"`flops_per_byte` must be > 0; got {flops_per_byte!r}.")
    call = CALL_SECONDS[platform] if call_seconds is None else call_seconds
    if not (np.isfinite(call) and call >= 0):
        raise ValueError(f"`call_seconds` must be finite and >= 0; got {call_seconds!r}.")
    bandwidth = BYTES_PER_SECOND[platform] if bytes_per_second is None else bytes_per_second
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"`bytes_per_second` must be finite and > 0; got {bytes_per_second!r}.")
    per_round = ROUND_SECONDS[platform] if round_seconds is None else round_seconds
    per_node = NODE_SECONDS[platform] if node_seconds is None else node_seconds
    for name, value in (("round_seconds", per_round), ("node_seconds", per_node)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"`{name}` must be finite and >= 0; got {value!r}.")
    # A call's compute over its parameter reading: 2 B flop per parameter against b bytes.
    compute = 2.0 * batch_size / (intensity * param_bytes)
    # One more scored token per row costs ``beta`` of a call's reading.
    beta = min(1.0, compute)
    # A plain step: reading the target's parameters (or computing with them, if that takes
    # longer) plus one call's fixed latency; the latency's share of it is what every
    # further call (a proposal, a tree level) adds whatever its model's size.
    reading = target_config.num_params() * param_bytes / bandwidth * max(1.0, compute)
    latency = call / (reading + call)
    tokens = (1, max_draft + 1)
    seconds = (1.0, 1.0 + beta * max_draft)  # as fitted (FLOPS_PER_BYTE), latency included
    # The fixed work of a drafting round, and a tree's per node, in plain steps.
    extras = {
        "overhead_seconds": per_round / (reading + call),
        "node_seconds": per_node / (reading + call) if isinstance(drafter, TreeDrafter) else 0.0,
    }
    model_config = getattr(drafter, "model_config", None)
    if model_config is None:
        return CostModel(tokens, seconds, source="estimated", batch_size=batch_size, **extras)
    # The draft model's reading, per call, in plain steps.
    ratio = (1.0 - latency) * model_config.num_params() / target_config.num_params()
    if isinstance(drafter, TreeDrafter):
        # A model-drafted tree: one catch-up call (max_depth + 2 tokens, the root's scores)
        # and one call per deeper level over that level's nodes (about N / max_depth); each
        # level is a call of its own, with its latency.
        depth = max(drafter.max_depth, 1)
        per_level = max(1.0, drafter.num_nodes / depth)
        calls = (1.0 + beta * (depth + 1)) + (depth - 1) * (1.0 + beta * (per_level - 1))
        return CostModel(
            tokens,
            seconds,
            draft_tokens=(drafter.num_nodes,),
            draft_seconds=(ratio * calls + depth * latency,),
            batch_size=batch_size,
            **extras,
        )
    # A chain of k drafts: one catch-up call (two tokens) and k - 1 single-token calls, in
    # one proposal (its latency once).
    lengths = (1, max_draft) if max_draft > 1 else (1,)
    return CostModel(
        tokens,
        seconds,
        draft_tokens=lengths,
        draft_seconds=tuple(ratio * (k + beta) + latency for k in lengths),
        batch_size=batch_size,
        **extras,
    )


# ---- calibration on the device ---------------------------------------------------------------


def _depend(args, outputs):
    """``args`` with its integer arrays made to depend on ``outputs`` (values kept).

    ``x != x`` of a float output is false at run time (it is not NaN), but the compiler
    cannot know it, so a loop that feeds one call's outputs into the next call's inputs
    this way runs every call (a loop-invariant call would be hoisted out of the loop).
    """
    outs = [x for x in jax.tree.leaves(outputs) if jnp.size(x) > 0]
    floats = [x for x in outs if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    if not outs:  # nothing computed (a stateless update)
        return args
    if floats:
        probe = floats[0].reshape(-1)[0]
        never = (probe != probe).astype(jnp.int32)  # NaN only
    else:  # an integer the outputs never hold in practice (x != x folds to false for ints)
        probe = outs[0].reshape(-1)[0].astype(jnp.int32)
        never = (probe == jnp.iinfo(jnp.int32).min + 12345).astype(jnp.int32)
    leaves, treedef = jax.tree.flatten(args)
    for i, x in enumerate(leaves):
        # Small integer arrays (tokens, lengths, indices): each call reads some of them.
        if jnp.issubdtype(jnp.result_type(x), jnp.integer) and jnp.size(x) <= 1 << 16:
            leaves[i] = x + never.astype(jnp.result_type(x))
    return jax.tree.unflatten(treedef, leaves)


def compiled_loop(fn: Callable, inner: int = 16) -> Callable:
    """A jitted ``(*args) -> outputs`` running ``fn(*args)`` ``inner + 1`` times in one loop.

    What a timing of one call inside a compiled loop needs (as the generation loop runs
    it): the per-call dispatch of a jitted function is amortised, and each call's inputs
    depend on the previous call's outputs (:func:`_depend`), so no call is hoisted out of
    the loop. Divide a loop's time by ``inner + 1``.
    """

    def looped(*args):
        def body(i, outputs):
            del i
            return fn(*_depend(args, outputs))

        return lax.fori_loop(0, inner, body, fn(*args))

    return jax.jit(looped)


def loop_seconds(fn, args, repeats: int, inner: int = 16) -> float:
    """Seconds of one ``fn(*args)`` inside a compiled loop (:func:`compiled_loop`), the
    median of ``repeats`` loops."""
    seconds, _ = _interleaved_seconds({"fn": _looped(fn, args, inner)}, repeats)
    return seconds["fn"]


def _default_points(largest: int) -> tuple[int, ...]:
    points, n = {1, largest}, 2
    while n < largest:
        points.add(n)
        n *= 2
    return tuple(sorted(points))


def _interleaved_seconds(jobs: dict, repeats: int, summaries: dict | None = None):
    """``({name: median seconds}, {name: summary})`` of ``jobs = {name: (jitted, args,
    divisor)}``: each compiled and warmed, then timed round-robin ``repeats`` times (a slow
    spell of a noisy machine then hits every figure alike instead of skewing one), divided
    by ``divisor``. ``summaries = {name: fn}``: ``fn`` of that job's warm-up output (what a
    caller needs from it, without running it again or keeping every output)."""
    summaries = summaries or {}
    summary = {}
    for name, (fn, args, _) in jobs.items():
        output = jax.block_until_ready(fn(*args))  # compile and warm
        if name in summaries:
            summary[name] = summaries[name](output)
        del output
    times: dict = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (fn, args, divisor) in jobs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - start) / divisor)
    return {name: statistics.median(values) for name, values in times.items()}, summary


def _looped(fn, args, inner: int = 16):
    """A job of :func:`_interleaved_seconds`: one ``fn(*args)`` inside a compiled loop."""
    return compiled_loop(fn, inner), args, inner + 1


def calibrate_costs(
    target: _models.Model,
    drafter: Drafter | TreeDrafter | None,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    *,
    max_draft: int = 4,
    sampling: Sampling = Sampling(),
    max_new_tokens: int = 64,
    repeats: int = 5,
    key: jax.Array | None = None,
    whole_rounds: bool = True,
) -> CostModel:
    """Times a round's parts, and whole rounds, on the default device (jitted, warmed,
    round-robin, median of ``repeats``).

    Parts: each figure is one call's time inside a compiled loop (no per-call dispatch,
    as in the generation loop). The loop's own work per round (sampling, commit,
    counters: a plain ``generation_step`` minus its target call) is added to every target
    figure, so ``target(1)`` is a plain round. Measures one target call over ``n`` tokens
    per row on the prefilled prompts for ``n`` in 1, 2, 4, ... up to ``max_draft + 1``
    (trees: ``num_nodes + 1``; made non-decreasing in ``n``), the drafter's ``propose`` at
    each draft length (trees: once), and its ``update`` (and ``observe``) as upkeep.

    Whole rounds (``whole_rounds``, the default; needs a drafter): ``generation_run`` on
    these prompts with every round drafting the same length (chains: ``constant(k)`` for
    ``k`` in :func:`chain_block_sizes`; trees: :func:`fixed_tree_cut` at each of
    :func:`tree_sizes`; 0: every round plain), its time less ``generation_init``'s over
    its rounds: what a round costs as the loop runs it, the work between the parts
    included (verification, masks, paths, commits, the loop's structure); made
    non-decreasing in the size. The controller then decides from these
    (:attr:`CostModel.round_times`).

    Call it once per batch size and prompt width, outside any compiled function; it
    compiles a few small programs (and one generation per size).

    Args:
      target: the target model.
      drafter: the drafter to calibrate (``None``: the target alone).
      prompt: [B, P] int, representative prompts (the batch size is taken from it).
      prompt_lengths: [B] int in [1, P].
      max_draft: K (chains); a tree drafter's ``num_nodes`` is used instead.
      sampling: the sampling the generation will use.
      max_new_tokens: the generation budget (sizes the caches as generation does; the
        whole rounds generate this many tokens).
      repeats: timed runs per figure (the median is kept).
      key: PRNG key for sampled drafts (default ``jax.random.key(0)``).
      whole_rounds: also time whole rounds (above).
    """
    from lookahead_jax import decoding as _generate  # the loop (it imports drafting)
    from lookahead_jax.drafting.controllers import (
        chain_block_sizes,
        constant,
        fixed_tree_cut,
        tree_sizes,
    )
    from lookahead_jax.verification import tree_greedy  # the verifier's output shapes

    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be a positive int; got {repeats!r}.")
    if not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"`max_draft` must be a positive int; got {max_draft!r}.")
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    batch, width = prompt.shape
    key = jax.random.key(0) if key is None else key
    is_tree = isinstance(drafter, TreeDrafter)
    slots = drafter.num_nodes if is_tree else max_draft
    # As in generation: the target cache holds committed tokens only, a round's block is
    # scored without being written (the loop appends the committed path afterwards).
    cache = _models.init_cache(
        target.config, batch, width + max_new_tokens, dtype=getattr(target, "dtype", None)
    )
    _, cache = jax.jit(lambda m, p, c: m(p, c))(target, prompt, cache)
    cache = _models.rewind(cache, prompt_lengths - 1)
    capacity = width + max_new_tokens + slots  # the drafter's buffers keep room for a block
    tokens = jnp.pad(prompt, ((0, 0), (0, max_new_tokens + slots)))

    def score(m, block, c):
        return m(block, c, defer_write=True)

    jobs, summaries = {}, {}
    target_tokens = _default_points(slots + 1)
    for n in target_tokens:
        jobs[("target", n)] = _looped(score, (target, jnp.zeros((batch, n), jnp.int32), cache))
    # The loop's own work per round, paid whatever is scored.
    config = _generate.GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling)
    plain = _generate.generation_init(key, target, prompt, prompt_lengths, config)

    def plain_step(k, s, m):
        return _generate.generation_step(k, s, m, config)

    jobs[("plain",)] = _looped(plain_step, (key, plain, target))

    if drafter is not None:
        state = jax.jit(drafter.init, static_argnums=2)(prompt, prompt_lengths, capacity)
        # As after prefill: each row has committed its first token (a zero) after the prompt.
        lengths = prompt_lengths + 1
        if is_tree:

            def propose(s, k, t, n):
                return drafter.propose(s, k, t, n, sampling=sampling)

            draft_tokens = (drafter.num_nodes,)
            jobs[("draft", drafter.num_nodes)] = _looped(propose, (state, key, tokens, lengths))
            new_state, draft = jax.jit(propose)(state, key, tokens, lengths)
            logits = jnp.zeros((batch, drafter.num_nodes + 1, drafter.vocab_size), jnp.float32)
            verified = tree_greedy(draft.tree, logits)
            jobs[("upkeep",)] = _looped(
                drafter.update, (new_state, prompt_lengths, draft, verified, logits)
            )
            if drafter.observe is not None:
                jobs[("observe",)] = _looped(drafter.observe, (new_state, tokens, lengths + 1))
            sizes = tree_sizes(drafter.num_nodes, drafter.block_sizes)
        else:

            def propose(s, k, t, n, num):
                return drafter.propose(s, k, t, n, num, max_draft=max_draft, sampling=sampling)

            draft_tokens = _default_points(max_draft)
            for k in draft_tokens:
                args = (state, key, tokens, lengths, jnp.full((batch,), k))
                jobs[("draft", k)] = _looped(propose, args)
            new_state, _ = jax.jit(propose)(
                state, key, tokens, lengths, jnp.full((batch,), max_draft)
            )
            jobs[("upkeep",)] = _looped(
                drafter.update, (new_state, lengths, jnp.zeros((batch,), jnp.int32))
            )
            sizes = chain_block_sizes(max_draft)

        if whole_rounds:

            def round_config(size):
                chosen = (
                    fixed_tree_cut(size, drafter.num_nodes, drafter.block_sizes)
                    if is_tree
                    else constant(size)
                )
                return _generate.GenerationConfig(
                    max_new_tokens=max_new_tokens,
                    sampling=sampling,
                    max_draft_tokens=max_draft,
                    controller=chosen,
                )

            def run_at(size):
                return jax.jit(
                    lambda k, m, p, n: _generate.generation_run(
                        k, m, p, n, round_config(size), drafter
                    )
                )

            def init_of(k, m, p, n):
                return _generate.generation_init(k, m, p, n, round_config(0), drafter)

            def num_rounds(generation):
                # Rounds of the loop: the slowest row's target calls less the prefill.
                return max(int(np.max(np.asarray(generation.stats.target_calls))) - 1, 1)

            run_args = (key, target, prompt, prompt_lengths)
            jobs[("init",)] = (jax.jit(init_of), run_args, 1)
            for size in sizes:
                jobs[("round", size)] = (run_at(size), run_args, 1)
                summaries[("round", size)] = num_rounds

    seconds, rounds = _interleaved_seconds(jobs, repeats, summaries)
    # More scored tokens never cost less: noise must not make the curve dip.
    target_seconds = np.maximum.accumulate([seconds[("target", n)] for n in target_tokens])
    overhead = max(0.0, seconds[("plain",)] - target_seconds[0])
    target_seconds = tuple(float(t) + overhead for t in target_seconds)
    if drafter is None:
        return CostModel(target_tokens, target_seconds, batch_size=batch, source="calibrated")
    round_sizes, round_times = (), ()
    if whole_rounds:
        init = seconds[("init",)]
        round_sizes = tuple(sizes)
        # Drafting more (a larger cut) never makes a round cheaper: as for the target curve.
        round_times = tuple(
            float(t)
            for t in np.maximum.accumulate(
                [
                    max(seconds[("round", size)] - init, 1e-9) / rounds[("round", size)]
                    for size in sizes
                ]
            )
        )
    return CostModel(
        target_tokens,
        target_seconds,
        draft_tokens=draft_tokens,
        draft_seconds=tuple(seconds[("draft", k)] for k in draft_tokens),
        upkeep_seconds=seconds[("upkeep",)],
        observe_seconds=seconds.get(("observe",), 0.0),
        observe_rounds=(
            1 if not is_tree or drafter.observe_tokens is None else drafter.observe_tokens - 1
        ),
        round_sizes=round_sizes,
        round_times=round_times,
        batch_size=batch,
        source="calibrated",
    )


def describe(costs: CostModel) -> dict[str, Any]:
    """A JSON-ready summary (seconds and ratios to a plain step)."""
    plain = float(costs.target(1))
    return {
        "source": costs.source,
        "batch_size": costs.batch_size,
        "plain_step_seconds": plain,
        "target_relative": {n: float(costs.target(n)) / plain for n in costs.target_tokens},
        "draft_relative": {k: float(costs.draft(k)) / plain for k in costs.draft_tokens},
        "upkeep_relative": costs.upkeep_seconds / plain,
        "observe_relative": costs.observe_seconds / plain,
        "observe_rounds": costs.observe_rounds,
        "overhead_relative": costs.overhead_seconds / plain,
        "node_relative": costs.node_seconds / plain,
        "round_relative": {
            n: t / plain for n, t in zip(costs.round_sizes, costs.round_times, strict=True)
        },
    }
