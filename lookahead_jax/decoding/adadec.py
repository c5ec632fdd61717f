"""AdaDec: greedy decoding with entropy-gated pause-then-rerank, and its threshold fit.

He et al. 2025 ("Towards Better Code Generation: Adaptive Decoding with
Uncertainty Guidance"): decode greedily, but when the entropy ``H`` of the
next-token distribution reaches a per-model threshold ``tau``, *pause*: take the
top ``B`` candidates ``c``, run a width-``W`` beam lookahead of at most ``L``
tokens after each, and pick the candidate with the best length-normalised score

    (log p(c) + best lookahead cumulative log p) / (lookahead length + 1).

Only the chosen candidate is committed; greedy decoding resumes after it.
``tau = inf`` never pauses, i.e. it is greedy decoding.

``tau`` is fitted per model (``fit_adadec_threshold``): every position of
held-out text gets its entropy and the label "the greedy token is the true
next token"; a class-balanced logistic regression ``p(correct) = sigmoid(w H +
b)`` is fitted, the probability cut ``p*`` maximising accuracy is chosen, and
``tau = (logit p* - b) / w``.

Contract: ``AdaDecConfig``, ``adadec_init(model, prompt, prompt_lengths, config) ->
AdaDecState``, ``adadec_step(key, state, model, config) -> (AdaDecState, AdaDecInfo)``
(deterministic: the key is ignored), ``adadec_run(key, model, prompt, prompt_lengths,
config) -> AdaDecResult``; ``adadec`` is the keyword form of ``adadec_run``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, metrics
from lookahead_jax import models as _models
from lookahead_jax.decoding import _strategy_common as common


@dataclasses.dataclass(frozen=True)
class AdaDecConfig:
    """Static settings of AdaDec (hashable: a static argument to ``jit``).

    Attributes:
      threshold: tau (nats); pause when H >= tau (``inf``: never, i.e. greedy).
      num_candidates: B, candidates reranked on a pause.
      beam_width: W, beams of each candidate's lookahead.
      lookahead_steps: L, lookahead tokens at most.
      max_new_tokens: budget per row. The cache holds ``P + max_new_tokens + L``
        positions (the lookahead runs past the budget).
      eos_id: ends a row (and a lookahead beam); ``None``: never.
      pad_id: fills ``tokens`` past each length.
    """

    threshold: float = math.inf
    num_candidates: int = 3
    beam_width: int = 3
    lookahead_steps: int = 5
    max_new_tokens: int = 32
    eos_id: int | None = None
    pad_id: int = 0


# deprecated alias of AdaDecConfig, kept for existing code
AdaDecParams = AdaDecConfig
DEFAULT_PARAMS = AdaDecConfig()


class AdaDecResult(NamedTuple):
    tokens: jax.Array  # [B, P + N] int32, prompt then continuation, pad_id after
    lengths: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32 (EOS included)
    entropies: jax.Array  # [B, N] float32, H before each generated token (0 past it)
    paused: jax.Array  # [B, N] bool, the token was chosen by a pause
    pauses: jax.Array  # [B] int32, steps that paused
    changed: jax.Array  # [B] int32, pauses that picked a non-greedy candidate
    compute: common.Compute


class AdaDecState(NamedTuple):
    prompt: jax.Array  # [B, P] int32
    prompt_lengths: jax.Array  # [B] int32
    generated: jax.Array  # [B, N] int32
    entropies: jax.Array  # [B, N] float32
    paused: jax.Array  # [B, N] bool
    num_generated: jax.Array  # [B] int32
    next_logits: jax.Array  # [B, V] float32
    cache: _models.KVCache  # [B] rows, prompt + committed tokens
    finished: jax.Array  # [B] bool
    changed: jax.Array  # [B] int32
    compute: common.Compute  # [B] counters


class AdaDecInfo(NamedTuple):
    """What one step did (diagnostics, never fed back)."""

    token: jax.Array  # [B] int32, the committed token (garbage where not active)
    greedy: jax.Array  # [B] int32, the most likely token
    entropy: jax.Array  # [B] float32, H of the next-token distribution (nats)
    paused: jax.Array  # [B] bool, the token was chosen by a pause (H >= tau)
    active: jax.Array  # [B] bool, the row committed a token this step


def _check_config(model, config: AdaDecConfig) -> None:
    vocab = model.config.vocab_size
    try:
        tau = float(config.threshold)
    except (TypeError, ValueError):
        tau = math.nan
    if math.isnan(tau):
        raise ValueError(
            f"`threshold` must be a number (inf: never pause); got {config.threshold!r}."
        )
    common.check_budget(model, config.max_new_tokens, config.eos_id)
    common.check_int("num_candidates", config.num_candidates, 1, vocab)
    common.check_int("beam_width", config.beam_width, 1, vocab)
    common.check_int("lookahead_steps", config.lookahead_steps, 1)


def lookahead_scores(
    model: Any,
    cache: _models.KVCache,
    next_logits: jax.Array,
    params: AdaDecConfig,
    eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Scores the top-B candidates of every row by a width-W, L-step beam lookahead.

    Args:
      cache: [R] rows holding each row's committed tokens.
      next_logits: [R, V] logits of the next token.
    Returns:
      ``(candidates [R, B] int32, scores [R, B] float32)``, candidates most likely
      first; the cache is not modified (the lookahead runs on copies).
    """
    rows = next_logits.shape[0]
    c, w, steps = params.num_candidates, params.beam_width, params.lookahead_steps
    lp0 = metrics.log_softmax(next_logits)
    cand_lp, cand = lax.top_k(lp0, c)  # [R, C]
    logits, cand_cache = model(cand.reshape(-1, 1).astype(jnp.int32), common.repeat_rows(cache, c))
    lp = metrics.log_softmax(logits[:, 0]).reshape(rows, c, -1)
    cand_done = jnp.zeros((rows, c), bool) if eos_id is None else cand == eos_id
    # First lookahead token: the top W of each candidate's next distribution.
    scores, beam_tok = lax.top_k(lp, w)  # [R, C, W]
    lengths = jnp.ones((rows, c, w), jnp.int32)
    done = jnp.zeros((rows, c, w), bool) if eos_id is None else beam_tok == eos_id
    if steps > 1:
        beam_cache = common.repeat_rows(cand_cache, w)

        def body(carry, _):
            scores, beam_tok, lengths, done, beam_cache = carry
            logits, beam_cache = model(beam_tok.reshape(-1, 1), beam_cache)
            lp = metrics.log_softmax(logits[:, 0]).reshape(rows, c, w, -1)
            vocab = lp.shape[-1]
            # A finished beam has one successor: itself, unchanged (token slot 0 stands for it).
            stay = jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf)
            lp = jnp.where(done[..., None], stay, lp)
            total = (scores[..., None] + lp).reshape(rows, c, w * vocab)
            scores, flat = lax.top_k(total, w)  # [R, C, W]
            parent, tok = flat // vocab, (flat % vocab).astype(jnp.int32)
            parent_done = jnp.take_along_axis(done, parent, axis=-1)
            parent_tok = jnp.take_along_axis(beam_tok, parent, axis=-1)
            tok = jnp.where(parent_done, parent_tok, tok)
            lengths = jnp.take_along_axis(lengths, parent, axis=-1) + ~parent_done
            done = parent_done if eos_id is None else parent_done | (tok == eos_id)
            base = (jnp.arange(rows)[:, None, None] * c + jnp.arange(c)[None, :, None]) * w
            beam_cache = common.take_rows(beam_cache, (base + parent).reshape(-1))
            return (scores, tok, lengths, done, beam_cache), None

        (scores, beam_tok, lengths, done, _), _ = lax.scan(
            body, (scores, beam_tok, lengths, done, beam_cache), None, length=steps - 1
        )
    best = jnp.argmax(scores, axis=-1)  # [R, C] by cumulative log p
    best_score = jnp.take_along_axis(scores, best[..., None], -1)[..., 0]
    best_len = jnp.take_along_axis(lengths, best[..., None], -1)[..., 0]
    # A candidate that is EOS has no lookahead.
    best_score = jnp.where(cand_done, 0.0, best_score)
    best_len = jnp.where(cand_done, 0, best_len)
    return cand.astype(jnp.int32), (cand_lp + best_score) / (best_len + 1)


def adadec_init(
    model: Any, prompt: jax.Array, prompt_lengths: jax.Array, config: AdaDecConfig
) -> AdaDecState:
    """Checks the inputs and prefills the prompts (cache room for the lookahead too)."""
    _check_config(model, config)
    prompt, prompt_lengths = common.prepare_prompts(
        model, prompt, prompt_lengths, config.max_new_tokens, config.lookahead_steps
    )
    batch, width = prompt.shape
    max_new = config.max_new_tokens
    capacity = width + max_new + config.lookahead_steps
    logits, cache = common.prefill(model, prompt, prompt_lengths, capacity)
    return AdaDecState(
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        generated=jnp.zeros((batch, max_new), jnp.int32),
        entropies=jnp.zeros((batch, max_new), jnp.float32),
        paused=jnp.zeros((batch, max_new), bool),
        num_generated=jnp.zeros((batch,), jnp.int32),
        next_logits=logits.astype(jnp.float32),
        cache=cache,
        finished=jnp.zeros((batch,), bool),
        changed=jnp.zeros((batch,), jnp.int32),
        compute=common.Compute(jnp.ones((batch,), jnp.int32), prompt_lengths),
    )


def adadec_step(
    key: jax.Array, state: AdaDecState, model: Any, config: AdaDecConfig
) -> tuple[AdaDecState, AdaDecInfo]:
    """Commits one token per unfinished row: greedy, or the reranked candidate on a pause.

    Deterministic: ``key`` is taken for the library's uniform signature and ignored.
    """
    del key
    eos_id = config.eos_id
    batch, max_new = state.generated.shape
    rows = jnp.arange(batch)
    active = ~state.finished
    entropy = common.entropy_of_logits(state.next_logits)
    pause = active & (entropy >= config.threshold)
    greedy = jnp.argmax(state.next_logits, axis=-1).astype(jnp.int32)

    def rerank(_):
        cand, score = lookahead_scores(model, state.cache, state.next_logits, config, eos_id)
        return cand[rows, jnp.argmax(score, axis=-1)]

    chosen = lax.cond(jnp.any(pause), rerank, lambda _: greedy, None)
    token = jnp.where(pause, chosen, greedy)
    index = jnp.where(active, state.num_generated, max_new)
    generated = state.generated.at[rows, index].set(token, mode="drop")
    entropies = state.entropies.at[rows, index].set(entropy, mode="drop")
    paused = state.paused.at[rows, index].set(pause, mode="drop")
    num_generated = state.num_generated + active
    finished = state.finished | (num_generated >= max_new)
    if eos_id is not None:
        finished = finished | (active & (token == eos_id))
    cont = active & ~finished
    next_logits, cache = common.feed(model, state.cache, token, cont)
    c, w, steps = config.num_candidates, config.beam_width, config.lookahead_steps
    look_calls, look_tokens = steps, c + (steps - 1) * c * w
    new_state = state._replace(
        generated=generated,
        entropies=entropies,
        paused=paused,
        num_generated=num_generated,
        next_logits=jnp.where(cont[:, None], next_logits, state.next_logits),
        cache=cache,
        finished=finished,
        changed=state.changed + (pause & (token != greedy)),
        compute=common.Compute(
            state.compute.model_calls + cont + pause * look_calls,
            state.compute.tokens_evaluated + cont + pause * look_tokens,
        ),
    )
    info = AdaDecInfo(token=token, greedy=greedy, entropy=entropy, paused=pause, active=active)
    return new_state, info


def adadec_result(state: AdaDecState, config: AdaDecConfig) -> AdaDecResult:
    """The ``AdaDecResult`` of a (finished) state."""
    return AdaDecResult(
        tokens=common.assemble(
            state.prompt, state.prompt_lengths, state.generated, state.num_generated, config.pad_id
        ),
        lengths=state.prompt_lengths + state.num_generated,
        num_generated=state.num_generated,
        entropies=state.entropies,
        paused=state.paused,
        pauses=jnp.sum(state.paused, axis=1, dtype=jnp.int32),
        changed=state.changed,
        compute=state.compute,
    )


def adadec_run(
    key: jax.Array,
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    config: AdaDecConfig,
) -> AdaDecResult:
    """AdaDec decoding (deterministic) in one compiled loop.

    Args:
      key: ignored (deterministic; taken for the uniform signature).
      model: any callable following ``models.apply`` with a static ``config``.
      prompt: [B, P] int; ``prompt_lengths`` [B] in [1, P].
      config: ``AdaDecConfig`` (static); fit ``threshold`` with ``fit_adadec_threshold``.
    """
    state = adadec_init(model, prompt, prompt_lengths, config)
    state = lax.while_loop(
        lambda s: ~jnp.all(s.finished), lambda s: adadec_step(key, s, model, config)[0], state
    )
    return adadec_result(state, config)


def adadec(
    model: Any,
    prompt: jax.Array,
    prompt_lengths: jax.Array,
    *,
    max_new_tokens: int,
    params: AdaDecConfig = DEFAULT_PARAMS,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> AdaDecResult:
    """The keyword form of ``adadec_run``: ``params``' algorithm settings with
    ``max_new_tokens``, ``eos_id`` and ``pad_id`` from the keywords."""
    config = dataclasses.replace(
        params, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id
    )
    return adadec_run(jax.random.key(0), model, prompt, prompt_lengths, config)


# ----------------------------------------------------------------------------- threshold fit


class ThresholdFit(NamedTuple):
    """A fitted entropy threshold and the logistic regression behind it."""

    threshold: jax.Array  # [] float32, tau (nats): pause when H >= tau
    weight: jax.Array  # [] float32, w of p(greedy correct | H) = sigmoid(w H + b)
    bias: jax.Array  # [] float32, b
    cut: jax.Array  # [] float32, p*, the probability cut maximising accuracy
    accuracy: jax.Array  # [] float32, accuracy of "correct iff p(H) >= p*" on the data
    pause_rate: jax.Array  # [] float32, fraction of the data with H >= tau
    greedy_accuracy: jax.Array  # [] float32, fraction of labels that are 1


def fit_entropy_threshold(
    entropies: jax.Array, labels: jax.Array, *, iterations: int = 50, l2: float = 1e-4
) -> ThresholdFit:
    """Fits AdaDec's threshold from per-position entropies and greedy-correct labels.

    A class-balanced logistic regression ``p = sigmoid(w H + b)`` (Newton's
    method on standardised entropies, a small ridge ``l2``), then the cut ``p*``
    among the fitted probabilities that maximises accuracy of "greedy is correct
    iff ``p >= p*``" (half-way, in logit space, between two neighbouring data
    points), and ``tau = (logit p* - b) / w``.

    Args:
      entropies: [N] float, entropy (nats) of the next-token distribution.
      labels: [N] bool/int, 1 where the greedy token was the true next token.
    """
    _checks.check_rank("entropies", entropies, 1, "[num_positions]")
    n = jnp.shape(entropies)[0]
    _checks.check_shape("labels", labels, (n,), "one label per entropy")
    if n < 2:
        raise ValueError(f"`entropies` needs at least 2 positions; got {n}.")
    h = jnp.asarray(entropies, jnp.float32)
    y = jnp.asarray(labels).astype(jnp.float32)
    mean, std = jnp.mean(h), jnp.maximum(jnp.std(h), 1e-6)
    x = (h - mean) / std
    pos = jnp.maximum(jnp.sum(y), 1.0)
    neg = jnp.maximum(n - jnp.sum(y), 1.0)
    sample_w = jnp.where(y > 0, n / (2 * pos), n / (2 * neg))
    features = jnp.stack([x, jnp.ones_like(x)], axis=1)  # [N, 2]

    def newton(theta, _):
        p = jax.nn.sigmoid(features @ theta)
        grad = features.T @ (sample_w * (p - y)) / n + l2 * theta
        hess = (features.T * (sample_w * p * (1 - p))) @ features / n + l2 * jnp.eye(2)
        return theta - jnp.linalg.solve(hess, grad), None

    theta, _ = lax.scan(newton, jnp.zeros(2), None, length=iterations)
    weight = theta[0] / std
    bias = theta[1] - theta[0] * mean / std
    z = weight * h + bias  # logit p(correct)
    order = jnp.argsort(-z)
    z_sorted, y_sorted = z[order], y[order]
    # Predict "correct" for the k highest-probability points, k = 0..N.
    true_pos = jnp.concatenate([jnp.zeros(1), jnp.cumsum(y_sorted)])
    false_neg_free = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1 - y_sorted)])
    correct = true_pos + (jnp.sum(1 - y) - false_neg_free)
    # A cut can only fall between two different values (and at the two ends).
    padded = jnp.concatenate([jnp.array([jnp.inf]), z_sorted, jnp.array([-jnp.inf])])
    allowed = padded[:-1] > padded[1:]
    k = jnp.argmax(jnp.where(allowed, correct, -1.0))
    upper, lower = padded[k], padded[k + 1]
    logit_cut = jnp.where(
        jnp.isinf(upper), lower + 1.0, jnp.where(jnp.isinf(lower), upper - 1.0, (upper + lower) / 2)
    )
    threshold = (logit_cut - bias) / weight
    return ThresholdFit(
        threshold=threshold,
        weight=weight,
        bias=bias,
        cut=jax.nn.sigmoid(logit_cut),
        accuracy=correct[k] / n,
        pause_rate=jnp.mean(h >= threshold),
        greedy_accuracy=jnp.mean(y),
    )


_fit_jit = jax.jit(fit_entropy_threshold, static_argnames=("iterations", "l2"))


@jax.jit
def _window_stats(model, windows):
    logits, _ = model(windows[:, :-1])
    entropy = common.entropy_of_logits(logits)
    correct = jnp.argmax(logits, axis=-1) == windows[:, 1:]
    return entropy, correct


def fit_adadec_threshold(model: Any, windows: Any, *, batch_size: int = 16) -> ThresholdFit:
    """Fits AdaDec's entropy threshold for ``model`` on held-out text.

    Args:
      model: any callable following ``models.apply`` (called without a cache).
      windows: [W, S + 1] int token windows (e.g. ``data.eval_windows``); every
        position predicts the next token of its window.
      batch_size: windows per model call (the last batch is padded, compiled once).
    """
    windows = np.asarray(windows)
    _checks.check_rank("windows", windows, 2, "[num_windows, window_length]")
    _checks.check_integer("windows", windows)
    _checks.check_range("windows", windows, 0, model.config.vocab_size)
    if windows.shape[1] < 2:
        raise ValueError(f"`windows` must hold at least 2 tokens each; got shape {windows.shape}.")
    common.check_int("batch_size", batch_size, 1)
    entropies, labels = [], []
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start : start + batch_size]
        real = chunk.shape[0]
        chunk = np.pad(chunk, ((0, batch_size - real), (0, 0)))
        h, c = _window_stats(model, jnp.asarray(chunk, jnp.int32))
        entropies.append(np.asarray(h[:real]).reshape(-1))
        labels.append(np.asarray(c[:real]).reshape(-1))
    return _fit_jit(jnp.asarray(np.concatenate(entropies)), jnp.asarray(np.concatenate(labels)))
