"""Leap+Verify as an optax ``GradientTransformation`` wrapper, and a training-step combinator.

``leap_verify(inner, config, heldout_loss=..., fingerprint=...)`` wraps any optax
optimiser, in the spirit of ``optax.lookahead``. Its ``update`` applies ``inner``
and, every ``config.delta`` steps (a *check*, one ``lax.cond`` inside ``jit``):

1. fingerprints the new parameters, compares them with the previous check's
   fingerprint and classifies the regime (thresholds given, or calibrated from the
   first ``calibration_checks`` similarities of the run);
2. pushes the parameters into a fixed-size snapshot buffer (oldest first);
3. when the regime allows it (``config.leap_in``) and the buffer holds enough
   snapshots, predicts the parameters ``K`` steps ahead, evaluates the held-out
   loss there and at the current parameters, and applies ``config.criterion``;
4. on acceptance returns updates that land on the predicted parameters, advances
   every integer ``count`` of the inner optimiser state (Adam's bias correction,
   the learning-rate schedule) and the schedule position by ``K``, and restarts the
   snapshot buffer from the jump; on rejection the returned updates and the inner
   state are exactly those of ``inner`` alone (a rejected leap has no side effects
   on training).

The whole optimiser state is one ``LeapState`` pytree (inner state, snapshots,
regime history, counters) that orbax saves and restores like any other.
``update`` cannot return diagnostics in optax's signature, so the diagnostics of
the latest step ride in ``LeapState.last`` (``LeapInfo``), never read back by the
algorithm; ``make_train_step`` returns them as the step's ``Info``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lookahead_jax.extrapolation import acceptance, predictors, regimes
from lookahead_jax.extrapolation.fingerprints import SIMILARITY_MODES, cosine_similarity

PyTree = Any
LEAP_IN = ("stable_confirmed", "stable", "not_chaotic", "always")
NOT_ATTEMPTED, REJECTED, ACCEPTED = -1, 0, 1


@dataclasses.dataclass(frozen=True)
class LeapConfig:
    """Settings of Leap+Verify (static).

    Attributes:
      delta: steps between checks (fingerprint, snapshot, possible leap).
      k: steps a leap jumps ahead.
      method: predictor, one of ``predictors.METHODS``.
      criterion: acceptance test, one of ``acceptance.CRITERIA``.
      eps, one_sided: the ``proximity`` tolerance (paper: 0.05 two-sided; code: 0.005 one-sided).
      sigma_window: recent held-out losses whose std is ``adaptive``'s sigma.
      leap_in: when a leap is attempted: ``"stable_confirmed"`` (2 consecutive stable
        readings), ``"stable"``, ``"not_chaotic"`` or ``"always"`` (any regime,
        including unknown).
      tau_low, tau_high: regime thresholds; ``None`` calibrates both from the
        ``low_percentile`` / ``high_percentile`` of the first ``calibration_checks``
        checks' similarities (no regime, hence no gated leap, before that).
      similarity_mode: ``"concat"`` (paper) or ``"per_probe"`` (code).
      max_checks: length of the regime-history ring buffers.
      learning_rate, momentum_scale, momentum_sign, b1, b2: the ``momentum`` predictor's
        step size (a float or an optax schedule of the schedule position), ``c``, sign
        convention and the inner Adam's betas (for bias correction).
    """

    delta: int = 50
    k: int = 10
    method: str = "linear"
    criterion: str = "strict"
    eps: float = acceptance.PAPER_EPS
    one_sided: bool = False
    sigma_window: int = 5
    leap_in: str = "stable_confirmed"
    tau_low: float | None = None
    tau_high: float | None = None
    calibration_checks: int = 10
    low_percentile: float = 30.0
    high_percentile: float = 70.0
    similarity_mode: str = "concat"
    max_checks: int = 256
    learning_rate: float | Callable[[jax.Array], jax.Array] | None = None
    momentum_scale: float = 1.0
    momentum_sign: str = "descent"
    b1: float = 0.9
    b2: float = 0.999

    def __post_init__(self) -> None:
        for name in ("delta", "k", "sigma_window", "max_checks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        choices = {
            "method": predictors.METHODS,
            "criterion": acceptance.CRITERIA,
            "leap_in": LEAP_IN,
            "similarity_mode": SIMILARITY_MODES,
            "momentum_sign": tuple(predictors.SIGNS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; got {getattr(self, name)!r}.")
        if (self.tau_low is None) != (self.tau_high is None):
            raise ValueError(
                "`tau_low` and `tau_high` must both be given or both be None (calibrate); "
                f"got tau_low={self.tau_low!r}, tau_high={self.tau_high!r}."
            )
        if self.tau_low is not None and not self.tau_low <= self.tau_high:
            raise ValueError(
                f"`tau_low` must be <= `tau_high`; got {self.tau_low!r} > {self.tau_high!r}."
            )
        if self.tau_low is None and not 2 <= self.calibration_checks <= self.max_checks:
            raise ValueError(
                f"`calibration_checks` must lie in [2, max_checks={self.max_checks}] to "
                f"calibrate the thresholds; got {self.calibration_checks!r}."
            )
        if not self.eps >= 0:
            raise ValueError(f"`eps` must be >= 0; got {self.eps!r}.")
        if self.method == "momentum" and self.learning_rate is None:
            raise ValueError("method 'momentum' needs `learning_rate` (a float or a schedule).")

    @property
    def history_size(self) -> int:
        """Snapshots the predictor needs (the snapshot buffer's length)."""
        return predictors.MIN_HISTORY[self.method]


class LeapInfo(NamedTuple):
    """Diagnostics of one step (all scalars). Never read back by the algorithm."""

    checked: jax.Array  # [] bool: this step was a check
    similarity: jax.Array  # [] float32: fingerprint cosine with the previous check (NaN: none)
    regime: jax.Array  # [] int32: regimes.UNKNOWN / CHAOTIC / TRANSITION / STABLE
    confirmed: jax.Array  # [] bool: stable confirmed (2 consecutive stable readings)
    attempted: jax.Array  # [] bool: a leap was predicted and verified
    accepted: jax.Array  # [] bool: the leap was taken
    current_loss: jax.Array  # [] float32: held-out loss at the current parameters (NaN: no check)
    predicted_loss: jax.Array  # [] float32: held-out loss at the prediction (NaN: no attempt)


class LeapState(NamedTuple):
    """The whole Leap+Verify optimiser state; ``H = config.history_size``, ``C = max_checks``,
    ``W = sigma_window``, ``[P, D]`` the fingerprint's shape."""

    inner_state: optax.OptState  # the wrapped optimiser's state (counts advanced on jumps)
    count: jax.Array  # [] int32: optimiser (gradient) steps taken
    position: jax.Array  # [] int32: schedule position = count + K * accepted leaps
    steps_since_check: jax.Array  # [] int32
    snapshots: PyTree  # params-like, every leaf [H, ...]: oldest first, valid: last `num_snapshots`
    num_snapshots: jax.Array  # [] int32 in [0, H]
    fingerprint: jax.Array  # [P, D] float32: the previous check's fingerprint
    has_fingerprint: jax.Array  # [] bool
    stable_streak: jax.Array  # [] int32: consecutive stable readings
    thresholds: regimes.Thresholds  # [] float32 each; NaN until calibrated
    num_checks: jax.Array  # [] int32
    similarities: jax.Array  # [C] float32 ring (index check % C), NaN where unset
    regimes: jax.Array  # [C] int32 ring
    decisions: jax.Array  # [C] int32 ring: NOT_ATTEMPTED / REJECTED / ACCEPTED
    check_positions: jax.Array  # [C] int32 ring: schedule position of each check, -1 unset
    val_losses: jax.Array  # [W] float32 ring of held-out losses at checks, NaN where unset
    attempts: jax.Array  # [] int32
    accepts: jax.Array  # [] int32
    last: LeapInfo  # diagnostics of the latest step


def _no_info() -> LeapInfo:
    nan = jnp.full((), jnp.nan, jnp.float32)
    false = jnp.zeros((), bool)
    return LeapInfo(false, nan, jnp.zeros((), jnp.int32), false, false, false, nan, nan)


def advance_counts(opt_state: PyTree, k: Any) -> PyTree:
    """Adds ``k`` to every integer ``count`` field of an optax state (Adam's step count,
    schedules): the optimiser then continues as if ``k`` more steps had been taken."""

    def bump(path, leaf):
        name = getattr(path[-1], "name", None) if path else None
        if name == "count" and jnp.issubdtype(jnp.result_type(leaf), jnp.integer):
            return leaf + jnp.asarray(k, jnp.result_type(leaf))
        return leaf

    return jax.tree_util.tree_map_with_path(bump, opt_state)


def _ring_push(buffer: jax.Array, index: jax.Array, value: jax.Array) -> jax.Array:
    return buffer.at[index % buffer.shape[0]].set(value.astype(buffer.dtype))


def leap_verify(
    inner: optax.GradientTransformation,
    config: LeapConfig,
    *,
    heldout_loss: Callable[[PyTree], jax.Array],
    fingerprint: Callable[[PyTree], jax.Array],
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with Leap+Verify.

    Args:
      inner: any optax optimiser (``momentum`` needs an Adam inside, see ``adam_moments``).
      config: a ``LeapConfig``.
      heldout_loss: ``params -> []`` the loss on one fixed held-out batch (closes over it).
      fingerprint: ``params -> [P, D]`` activations on fixed probes
        (e.g. ``partial(model_fingerprint, model_config, probes=..., lengths=...)``).

    Returns:
      A ``GradientTransformationExtraArgs``; ``update(grads, state, params)`` needs
      ``params``. Apply its updates unchanged (``optax.apply_updates``): a jump's
      updates are ``predicted - params``.
    """
    if not isinstance(config, LeapConfig):
        raise ValueError(f"`config` must be a LeapConfig; got {type(config).__name__}.")
    inner = optax.with_extra_args_support(inner)
    size, need = config.history_size, config.history_size

    def init_fn(params: PyTree) -> LeapState:
        shape = jax.eval_shape(fingerprint, params)
        if len(shape.shape) < 1:
            raise ValueError(
                f"`fingerprint(params)` must return an array of rank >= 1 ([P, D]); "
                f"got shape {shape.shape}."
            )
        c, w = config.max_checks, config.sigma_window
        if config.tau_low is None:
            thresholds = regimes.Thresholds(jnp.float32(jnp.nan), jnp.float32(jnp.nan))
        else:
            thresholds = regimes.Thresholds(
                jnp.float32(config.tau_low), jnp.float32(config.tau_high)
            )
        zero = jnp.zeros((), jnp.int32)
        return LeapState(
            inner_state=inner.init(params),
            count=zero,
            position=zero,
            steps_since_check=zero,
            snapshots=jax.tree.map(lambda x: jnp.zeros((size, *jnp.shape(x)), x.dtype), params),
            num_snapshots=zero,
            fingerprint=jnp.zeros(shape.shape, jnp.float32),
            has_fingerprint=jnp.zeros((), bool),
            stable_streak=zero,
            thresholds=thresholds,
            num_checks=zero,
            similarities=jnp.full((c,), jnp.nan, jnp.float32),
            regimes=jnp.zeros((c,), jnp.int32),
            decisions=jnp.full((c,), NOT_ATTEMPTED, jnp.int32),
            check_positions=jnp.full((c,), -1, jnp.int32),
            val_losses=jnp.full((w,), jnp.nan, jnp.float32),
            attempts=zero,
            accepts=zero,
            last=_no_info(),
        )

    def allowed(regime: jax.Array, confirmed: jax.Array) -> jax.Array:
        if config.leap_in == "always":
            return jnp.ones((), bool)
        if config.leap_in == "not_chaotic":
            return (regime == regimes.STABLE) | (regime == regimes.TRANSITION)
        if config.leap_in == "stable":
            return regime == regimes.STABLE
        return confirmed

    def predict_from(state: LeapState, snapshots: PyTree, inner_state: Any) -> PyTree:
        history = [jax.tree.map(lambda x, i=i: x[size - need + i], snapshots) for i in range(need)]
        if config.method != "momentum":
            return predictors.predict(config.method, history, config.k, config.delta)
        lr = config.learning_rate
        lr = lr(state.position) if callable(lr) else lr
        return predictors.predict(
            "momentum",
            history,
            config.k,
            config.delta,
            moments=predictors.adam_moments(inner_state, config.b1, config.b2),
            learning_rate=lr,
            scale=config.momentum_scale,
            sign=config.momentum_sign,
        )

    def update_fn(updates, state: LeapState, params=None, **extra_args):
        if params is None:
            raise ValueError("leap_verify's `update` needs `params` (the current parameters).")
        if not isinstance(state, LeapState):
            raise ValueError(f"`state` must be a LeapState; got {type(state).__name__}.")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        since = state.steps_since_check + 1
        base = state._replace(
            inner_state=inner_state,
            count=state.count + 1,
            position=state.position + 1,
            steps_since_check=since,
            last=_no_info(),
        )

        def no_check(_):
            return updates, base

        def check(_):
            new_params = optax.apply_updates(params, updates)
            fp = jnp.asarray(fingerprint(new_params), jnp.float32)
            sim = jnp.where(
                base.has_fingerprint,
                cosine_similarity(fp, base.fingerprint, config.similarity_mode),
                jnp.nan,
            )
            index = base.num_checks
            similarities = _ring_push(base.similarities, index, sim)
            thresholds = base.thresholds
            if config.tau_low is None:
                calibrate_now = index + 1 == config.calibration_checks
                fresh = regimes.calibrate_thresholds(
                    similarities,
                    config.low_percentile,
                    config.high_percentile,
                    mask=jnp.arange(config.max_checks) < config.calibration_checks,
                )
                thresholds = jax.tree.map(
                    lambda new, old: jnp.where(calibrate_now, new, old), fresh, thresholds
                )
            regime = jnp.where(
                jnp.isnan(thresholds.tau_low),
                regimes.UNKNOWN,
                regimes.classify_regime(sim, thresholds.tau_low, thresholds.tau_high),
            ).astype(jnp.int32)
            streak = jnp.where(regime == regimes.STABLE, base.stable_streak + 1, 0)
            confirmed = streak >= regimes.CONFIRM_AFTER
            snapshots = jax.tree.map(
                lambda buf, x: jnp.roll(buf, -1, axis=0).at[-1].set(x), base.snapshots, new_params
            )
            num_snapshots = jnp.minimum(base.num_snapshots + 1, size)
            current_loss = jnp.asarray(heldout_loss(new_params), jnp.float32)
            val_losses = _ring_push(base.val_losses, index, current_loss)
            gate = allowed(regime, confirmed) & (num_snapshots >= need)

            def attempt(_):
                predicted = predict_from(base, snapshots, inner_state)
                loss = jnp.asarray(heldout_loss(predicted), jnp.float32)
                ok = acceptance.accept(
                    config.criterion,
                    loss,
                    current_loss,
                    recent_losses=val_losses,
                    recent_mask=~jnp.isnan(val_losses),
                    eps=config.eps,
                    one_sided=config.one_sided,
                )
                return predicted, loss, ok

            def skip(_):
                return new_params, jnp.full((), jnp.nan, jnp.float32), jnp.zeros((), bool)

            predicted, predicted_loss, ok = lax.cond(gate, attempt, skip, None)
            decision = jnp.where(gate, jnp.where(ok, ACCEPTED, REJECTED), NOT_ATTEMPTED)
            checked = base._replace(
                steps_since_check=jnp.zeros((), jnp.int32),
                snapshots=snapshots,
                num_snapshots=num_snapshots,
                fingerprint=fp,
                has_fingerprint=jnp.ones((), bool),
                stable_streak=streak,
                thresholds=thresholds,
                num_checks=index + 1,
                similarities=similarities,
                regimes=_ring_push(base.regimes, index, regime),
                decisions=_ring_push(base.decisions, index, decision),
                check_positions=_ring_push(base.check_positions, index, base.position),
                val_losses=val_losses,
                attempts=base.attempts + gate.astype(jnp.int32),
                accepts=base.accepts + ok.astype(jnp.int32),
                last=LeapInfo(
                    checked=jnp.ones((), bool),
                    similarity=sim,
                    regime=regime,
                    confirmed=confirmed,
                    attempted=gate,
                    accepted=ok,
                    current_loss=current_loss,
                    predicted_loss=predicted_loss,
                ),
            )

            def jump(_):
                jumped = checked._replace(
                    inner_state=advance_counts(inner_state, config.k),
                    position=checked.position + config.k,
                    snapshots=jax.tree.map(lambda buf, x: buf.at[-1].set(x), snapshots, predicted),
                    num_snapshots=jnp.ones((), jnp.int32),
                    fingerprint=jnp.asarray(fingerprint(predicted), jnp.float32),
                )
                return jax.tree.map(lambda p, q: p - q, predicted, params), jumped

            def stay(_):
                return updates, checked

            return lax.cond(ok, jump, stay, None)

        return lax.cond(since >= config.delta, check, no_check, None)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_leap_state(opt_state: Any) -> LeapState | None:
    """The first ``LeapState`` inside an optax state (itself, or inside a chain), else ``None``."""
    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LeapState)):
        if isinstance(node, LeapState):
            return node
    return None


class TrainState(NamedTuple):
    """Parameters and optimiser state of a training run: one pytree for orbax."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array  # [] int32: training-step calls (gradient evaluations)


class StepInfo(NamedTuple):
    """Diagnostics of one training step."""

    loss: jax.Array  # [] float32: the training loss before the update
    leap: LeapInfo | None  # the Leap+Verify diagnostics (None without a LeapState)


def init_train_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """``TrainState`` at step 0."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
    loss_fn: Callable[[PyTree, Any], jax.Array], optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Any], tuple[TrainState, StepInfo]]:
    """A pure ``(state, batch) -> (state, StepInfo)`` step (not jitted: the caller decides).

    ``loss_fn(params, batch) -> []`` is differentiated with respect to ``params``.
    """

    def step(state: TrainState, batch: Any) -> tuple[TrainState, StepInfo]:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        leap = find_leap_state(opt_state)
        info = StepInfo(loss=loss, leap=None if leap is None else leap.last)
        return TrainState(params, opt_state, state.step + 1), info

    return step
