"""CNTP, Cautious Next Token Prediction: entropy-gated multi-trial segments.

Wang et al. 2025 ("Cautious Next Token Prediction"): when the model is unsure
(high entropy ``H`` of the processed next-token distribution), sample several
independent trials from the same state, each up to the next punctuation token
(or EOS), and keep the one the model finds most likely (lowest perplexity
``exp(mean(-log p))``), with its KV cache. The number of trials grows with ``H``:

    N = 1 + floor((N_max - 1) * clip((H - H_lo) / (H_hi - H_lo), 0, 1))

and ``N = 1`` samples one token, exactly as plain sampling does (same keys as
``sample_rollouts``'s rollout 0), so CNTP with ``H <= H_lo`` at every step *is*
plain sampling.

Contract: ``CNTPConfig``, ``cntp_init(model, prompt, prompt_lengths, config) ->
CNTPState``, ``cntp_step(key, state, model, config) -> (CNTPState, CNTPInfo)`` (a step
commits one segment per row; the info holds its trials), ``cntp_run(key, model,
prompt, prompt_lengths, config) -> CNTPResult`` (one ``lax.while_loop``); ``cntp`` is
the keyword form of ``cntp_run``. Trials run as ``N_max`` lanes per row (rows ``b * N_max + j``
of the model batch); the lanes are built only on steps where some row needs
more than one trial.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lookahead_jax import metrics
from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common
from lookahead_jax.sampling import Sampling

PUNCTUATION_BYTES = common.PUNCTUATION_BYTES


@dataclasses.dataclass(frozen=True)
class CNTPConfig:
    """Static settings of CNTP (hashable: a static argument to ``jit``).

    Attributes:
      entropy_low: H_lo (nats); at or below it one token is sampled plainly.
      entropy_high: H_hi (nats); at or above it ``max_trials`` trials run.
      max_trials: N_max.
      max_segment_tokens: a trial stops here even without a stop token.
      stop_tokens: the tokens that end a trial (with ``eos_id``).
      max_new_tokens: budget per row.
      sampling: the distribution trials sample from (not greedy).
      eos_id: ends a trial and the row (``None``: never).
      pad_id: fills ``tokens`` past each length.
    """

    entropy_low: float = 0.01
    entropy_high: float = 1.5
    max_trials: int = 10
    max_segment_tokens: int = 32
    stop_tokens: tuple[int, ...] = PUNCTUATION_BYTES
    max_new_tokens: int = 32
    sampling: Sampling = Sampling(temperature=1.0)
    eos_id: int | None = None
    pad_id: int = 0


# deprecated alias of CNTPConfig, kept for existing code
CNTPParams = CNTPConfig
DEFAULT_PARAMS = CNTPConfig()


class CNTPState(NamedTuple):
    prompt: jax.Array  # [B, P] int32
    prompt_lengths: jax.Array  # [B] int32
    generated: jax.Array  # [B, N] int32 committed generated tokens
    token_log_probs: jax.Array  # [B, N] float32, log p of each under the sampling distribution
    num_generated: jax.Array  # [B] int32
    next_logits: jax.Array  # [B, V] float32
    cache: _models.KVCache  # [B] rows, prompt + committed tokens
    finished: jax.Array  # [B] bool
    steps: jax.Array  # [B] int32, committed segments (steps)
    multi_trial_steps: jax.Array  # [B] int32, steps with N > 1
    trials: jax.Array  # [B] int32, sum of N over steps
    compute: common.Compute  # [B] counters


class CNTPInfo(NamedTuple):
    """The trials of one step (diagnostics, never fed back)."""

    entropy: jax.Array  # [B] float32, H at the step's state
    num_trials: jax.Array  # [B] int32, N (0 for finished rows)
    trial_tokens: jax.Array  # [B, M, S] int32, M = N_max lanes, S = max_segment_tokens
    trial_log_probs: jax.Array  # [B, M, S] float32
    trial_lengths: jax.Array  # [B, M] int32 (0 for unused lanes)
    trial_perplexity: jax.Array  # [B, M] float32 (inf for unused lanes)
    chosen: jax.Array  # [B] int32, the committed lane


# deprecated alias of CNTPInfo, kept for existing code
CNTPStepInfo = CNTPInfo


class CNTPResult(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32, prompt then continuation, pad_id after
    lengths: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32 (EOS included)
    token_log_probs: jax.Array  # [B, N] float32, 0 past num_generated
    steps: jax.Array  # [B] int32, committed segments
    multi_trial_steps: jax.Array  # [B] int32, steps that ran N > 1 trials
    trials: jax.Array  # [B] int32, total trials
    compute: common.Compute


def num_trials(entropy: jax.Array, params: CNTPConfig) -> jax.Array:
    """``N = 1 + floor((N_max - 1) * clip((H - H_lo) / (H_hi - H_lo), 0, 1))``."""
    span = params.entropy_high - params.entropy_low
    frac = jnp.clip((entropy - params.entropy_low) / span, 0.0, 1.0)
    return 1 + jnp.floor((params.max_trials - 1) * frac).astype(jnp.int32)


def _check_config(model, config: CNTPConfig) -> None:
    common.check_budget(model, config.max_new_tokens, config.eos_id)
    common.check_float("entropy_low", config.entropy_low, 0.0)
    common.check_float("entropy_high", config.entropy_high, config.entropy_low, low_open=True)
    common.check_int("max_trials", config.max_trials, 1)
    common.check_int("max_segment_tokens", config.max_segment_tokens, 1)
    vocab = model.config.vocab_size
    if not config.stop_tokens or not all(
        isinstance(t, int) and 0 <= t < vocab for t in config.stop_tokens
    ):
        raise ValueError(
            f"`stop_tokens` must be a non-empty tuple of token ids in [0, {vocab}); "
            f"got {config.stop_tokens!r}."
        )
    if config.sampling.greedy:
        raise ValueError("`sampling` must sample (temperature > 0): greedy trials are identical.")


def cntp_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: CNTPConfig
) -> CNTPState:
    """Checks the inputs and prefills the prompts."""
    _check_config(model, config)
    prompt, prompt_lengths = common.prepare_prompts(
        model, prompt, prompt_lengths, config.max_new_tokens
    )
    batch, width = prompt.shape
    max_new = config.max_new_tokens
    logits, cache = common.prefill(model, prompt, prompt_lengths, width + max_new)
    zeros = jnp.zeros((batch,), jnp.int32)
    return CNTPState(
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        generated=jnp.zeros((batch, max_new), jnp.int32),
        token_log_probs=jnp.zeros((batch, max_new), jnp.float32),
        num_generated=zeros,
        next_logits=logits.astype(jnp.float32),
        cache=cache,
        finished=jnp.zeros((batch,), bool),
        steps=zeros,
        multi_trial_steps=zeros,
        trials=zeros,
        compute=common.Compute(jnp.ones((batch,), jnp.int32), prompt_lengths),
    )


class _TrialCarry(NamedTuple):
    """The trials of one step, M = lanes per row, S = max segment tokens."""

    k: jax.Array  # [] int32, tokens drawn so far
    active: jax.Array  # [B, M] bool, lane still sampling
    tokens: jax.Array  # [B, M, S] int32
    lps: jax.Array  # [B, M, S] float32
    lengths: jax.Array  # [B, M] int32
    logits: jax.Array  # [B, M, V] float32, each lane's next-token logits
    cache: _models.KVCache  # [B * M] rows
    fed: jax.Array  # [B, M] int32, tokens fed per lane
    calls: jax.Array  # [B] int32, model calls per row


def _run_trials(
    model,
    cache,
    logits,
    counts,
    caps,
    keys,
    start,
    *,
    lanes,
    max_tokens,
    sampling,
    stop_tokens,
    eos_id,
    max_new,
):
    """Runs ``counts[b]`` trials (of ``lanes``) per row, each until a stop token or ``caps[b]``.

    ``cache`` has ``B * lanes`` rows, all holding the row's committed state.
    """
    batch = logits.shape[0]
    stop_ids = jnp.asarray(stop_tokens + (() if eos_id is None else (eos_id,)), jnp.int32)
    active = (jnp.arange(lanes)[None, :] < counts[:, None]) & (caps[:, None] > 0)

    def body(c: _TrialCarry) -> _TrialCarry:
        tok, lp = common.draw(common.token_keys(keys, (start[:, None] + c.k)), c.logits, sampling)
        write = jnp.where(c.active, c.k, max_tokens)
        rows, cols = jnp.arange(batch)[:, None], jnp.arange(lanes)[None, :]
        tokens = c.tokens.at[rows, cols, write].set(tok, mode="drop")
        lps = c.lps.at[rows, cols, write].set(lp, mode="drop")
        lengths = c.lengths + c.active
        stop = jnp.isin(tok, stop_ids) | (lengths >= caps[:, None])
        # Feed the token unless the row would end with it (EOS or the budget).
        ends_row = start[:, None] + lengths >= max_new
        if eos_id is not None:
            ends_row = ends_row | (tok == eos_id)
        feed = c.active & ~ends_row
        new_logits, cache = common.feed(model, c.cache, tok.reshape(-1), feed.reshape(-1))
        new_logits = new_logits.reshape(batch, lanes, -1)
        return _TrialCarry(
            k=c.k + 1,
            active=c.active & ~stop,
            tokens=tokens,
            lps=lps,
            lengths=lengths,
            logits=jnp.where(feed[..., None], new_logits, c.logits),
            cache=cache,
            fed=c.fed + feed,
            calls=c.calls + jnp.any(feed, axis=1),
        )

    init = _TrialCarry(
        k=jnp.zeros((), jnp.int32),
        active=active,
        tokens=jnp.zeros((batch, lanes, max_tokens), jnp.int32),
        lps=jnp.zeros((batch, lanes, max_tokens), jnp.float32),
        lengths=jnp.zeros((batch, lanes), jnp.int32),
        logits=jnp.broadcast_to(logits[:, None], (batch, lanes, logits.shape[-1])),
        cache=cache,
        fed=jnp.zeros((batch, lanes), jnp.int32),
        calls=jnp.zeros((batch,), jnp.int32),
    )
    return lax.while_loop(lambda c: (c.k < max_tokens) & jnp.any(c.active), body, init)


def cntp_step(
    key: jax.Array, state: CNTPState, model: Any, config: CNTPConfig
) -> tuple[CNTPState, CNTPInfo]:
    """Commits one segment per unfinished row: a single token (N = 1) or the best of N trials.

    ``key`` is the run's key (the same at every step): trial ``j`` of row ``b`` uses
    the keys of rollout ``j`` of ``sample_rollouts`` at the row's token indices.
    """
    params, sampling, eos_id = config, config.sampling, config.eos_id
    batch, max_new = state.generated.shape
    keys = common.lane_keys(key, batch, params.max_trials)
    active = ~state.finished
    entropy = common.entropy_of_logits(state.next_logits, sampling)
    counts = jnp.where(active, num_trials(entropy, params), 0)
    remaining = max_new - state.num_generated
    caps = jnp.where(counts > 1, jnp.minimum(params.max_segment_tokens, remaining), 1)
    caps = jnp.where(active, caps, 0)
    lanes = params.max_trials
    common_args = dict(
        sampling=sampling, stop_tokens=params.stop_tokens, eos_id=eos_id, max_new=max_new
    )

    def perplexity(out):
        used = jnp.arange(out.tokens.shape[1])[None, :] < counts[:, None]
        return jnp.where(used, metrics.perplexity(out.lps, out.lengths), jnp.inf)

    def single(_):
        # No row needs trials: one token per row on the committed cache itself.
        out = _run_trials(
            model,
            state.cache,
            state.next_logits,
            counts,
            caps,
            keys[:, :1],
            state.num_generated,
            lanes=1,
            max_tokens=params.max_segment_tokens,
            **common_args,
        )
        ppl = perplexity(out)
        chosen = jnp.zeros((batch,), jnp.int32)
        pad = ((0, 0), (0, lanes - 1))
        return (
            jnp.pad(out.tokens, (*pad, (0, 0))),
            jnp.pad(out.lps, (*pad, (0, 0))),
            jnp.pad(out.lengths, pad),
            jnp.pad(ppl, pad, constant_values=jnp.inf),
            chosen,
            out.logits[:, 0],
            out.cache,
            jnp.pad(out.fed, pad),
            out.calls,
        )

    def multi(_):
        cache = common.repeat_rows(state.cache, lanes)
        out = _run_trials(
            model,
            cache,
            state.next_logits,
            counts,
            caps,
            keys,
            state.num_generated,
            lanes=lanes,
            max_tokens=params.max_segment_tokens,
            **common_args,
        )
        ppl = perplexity(out)
        chosen = jnp.argmin(ppl, axis=1).astype(jnp.int32)  # lowest index among ties
        rows = jnp.arange(batch)
        kept = common.take_rows(out.cache, rows * lanes + chosen)
        return (
            out.tokens,
            out.lps,
            out.lengths,
            ppl,
            chosen,
            out.logits[rows, chosen],
            kept,
            out.fed,
            out.calls,
        )

    tokens, lps, lengths, ppl, chosen, next_logits, cache, fed, calls = lax.cond(
        jnp.any(counts > 1), multi, single, None
    )
    rows = jnp.arange(batch)
    seg = tokens[rows, chosen]  # [B, S]
    seg_lp = lps[rows, chosen]
    seg_len = jnp.where(active, lengths[rows, chosen], 0)
    s = jnp.arange(params.max_segment_tokens)[None, :]
    write = jnp.where(s < seg_len[:, None], state.num_generated[:, None] + s, max_new)
    generated = state.generated.at[rows[:, None], write].set(seg, mode="drop")
    token_lp = state.token_log_probs.at[rows[:, None], write].set(seg_lp, mode="drop")
    num_generated = state.num_generated + seg_len
    last = seg[rows, jnp.maximum(seg_len - 1, 0)]
    finished = state.finished | (num_generated >= max_new)
    if eos_id is not None:
        finished = finished | (active & (last == eos_id))
    new_state = state._replace(
        generated=generated,
        token_log_probs=token_lp,
        num_generated=num_generated,
        next_logits=jnp.where(active[:, None], next_logits, state.next_logits),
        cache=cache,
        finished=finished,
        steps=state.steps + active,
        multi_trial_steps=state.multi_trial_steps + (counts > 1),
        trials=state.trials + counts,
        compute=common.Compute(
            state.compute.model_calls + calls,
            state.compute.tokens_evaluated + jnp.sum(fed, axis=1, dtype=jnp.int32),
        ),
    )
    info = CNTPStepInfo(
        entropy=entropy,
        num_trials=counts,
        trial_tokens=tokens,
        trial_log_probs=lps,
        trial_lengths=lengths,
        trial_perplexity=ppl,
        chosen=chosen,
    )
    return new_state, info


def cntp_result(state: CNTPState, config: CNTPConfig) -> CNTPResult:
    """The ``CNTPResult`` of a (finished) state."""
    return CNTPResult(
        tokens=common.assemble(
            state.prompt, state.prompt_lengths, state.generated, state.num_generated, config.pad_id
        ),
        lengths=state.prompt_lengths + state.num_generated,
        num_generated=state.num_generated,
        token_log_probs=state.token_log_probs,
        steps=state.steps,
        multi_trial_steps=state.multi_trial_steps,
        trials=state.trials,
        compute=state.compute,
    )


def cntp_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: CNTPConfig,
) -> CNTPResult:
    """Cautious next-token prediction in one compiled loop.

    Args:
      key: PRNG key; trial ``j`` of row ``b`` uses the keys of rollout ``j`` of
        ``sample_rollouts`` (trial 0 is the plain sample).
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      config: ``CNTPConfig`` (static).
    """
    state = cntp_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: ~jnp.all(s.finished), lambda s: cntp_step(key, s, model, config)[0], state
    )
    return cntp_result(state, config)


def cntp(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    params: CNTPConfig = DEFAULT_PARAMS,
    sampling: Sampling = Sampling(temperature=1.0),
    eos_id: int | None = None,
    pad_id: int = 0,
) -> CNTPResult:
    """The keyword form of ``cntp_run``: ``params``' algorithm settings with
    ``max_new_tokens``, ``sampling``, ``eos_id`` and ``pad_id`` from the keywords."""
    config = dataclasses.replace(
        params, max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id, pad_id=pad_id
    )
    return cntp_run(key, model, prompt, prompt_lengths, config)
