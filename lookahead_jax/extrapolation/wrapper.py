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
algorithm; the training step returns them in its ``Info``.

The training loop follows the library's contract (``config`` is the ``LeapConfig``
inside ``optimizer = leap_verify(inner, config, ...)``)::

    state = leap_init(params, optimizer)                                  # TrainState
    state, info = leap_step(key, state, batch, loss_fn=loss_fn, optimizer=optimizer)
    state, infos = leap_run(key, state, batches, loss_fn=loss_fn, optimizer=optimizer)

``leap_run`` scans ``leap_step`` over the leading axis of ``batches`` (a fixed number of
steps). Neither is jitted: ``jax.jit(leap_run, static_argnames=("loss_fn", "optimizer"))``
compiles the whole run once. ``init_train_state`` / ``make_train_step`` / ``StepInfo``
are the earlier names, kept.
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

PyTree = Any
LEAP_IN = ("stable_confirmed", "stable", "not_chaotic", "always")
NOT_ATTEMPTED, REJECTED, ACCEPTED = -1, 0, 1


@dataclasses.dataclass(frozen=True)
class LeapConfig:
    """Settings of Leap+Verify (static).

    Attributes:
      delta: steps between checks (fingerprint, snapshot, possible leap).
      k: steps a leap jumps ahead.
      method: predictor, one of ``predictors.PREDICTOR_METHODS``.
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
            "method": predictors.PREDICTOR_METHODS,
            "criterion": acceptance.CRITERIA,
            "leap_in": LEAP_IN,
            "momentum_sign": tuple(predictors.SIGNS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; got {getattr(self, name)!r}.")
        self.regime  # noqa: B018  (validates the regime settings)
        if not self.eps >= 0:
            raise ValueError(f"`eps` must be >= 0; got {self.eps!r}.")
        if self.method == "momentum" and self.learning_rate is None:
            raise ValueError("method 'momentum' needs `learning_rate` (a float or a schedule).")

    @property
    def regime(self) -> regimes.RegimeConfig:
        """The regime tracker's settings (``regimes.RegimeConfig``)."""
        return regimes.RegimeConfig(
            tau_low=self.tau_low,
            tau_high=self.tau_high,
            calibration_checks=self.calibration_checks,
            low_percentile=self.low_percentile,
            high_percentile=self.high_percentile,
            similarity_mode=self.similarity_mode,
            max_checks=self.max_checks,
        )

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
    finite: jax.Array  # [] bool: this check's fingerprint and current held-out loss were
    #   finite (True off checks); a non-finite predicted loss is never accepted


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
    true = jnp.ones((), bool)
    return LeapInfo(false, nan, jnp.zeros((), jnp.int32), false, false, false, nan, nan, true)


def advance_counts(opt_state: PyTree, k: Any) -> PyTree:
    """Adds ``k`` to every integer ``count`` field of an optax state (Adam's step count,
    schedules): the optimiser then continues as if ``k`` more steps had been taken."""

    def bump(path, leaf):
        name = getattr(path[-1], "name", None) if path else None
        if name == "count" and jnp.issubdtype(jnp.result_type(leaf), jnp.integer):
            return leaf + jnp.asarray(k, jnp.result_type(leaf))
        return leaf

    return jax.tree_util.tree_map_with_path(bump, opt_state)


_ring_push = regimes.ring_push


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
        loss_shape = jax.eval_shape(heldout_loss, params).shape
        if loss_shape != ():
            raise ValueError(
                f"`heldout_loss(params)` must return a scalar (shape ()); got shape {loss_shape}."
            )
        c, w = config.max_checks, config.sigma_window
        tracker = regimes.regime_init(shape, config.regime)
        zero = jnp.zeros((), jnp.int32)
        return LeapState(
            inner_state=inner.init(params),
            count=zero,
            position=zero,
            steps_since_check=zero,
            snapshots=jax.tree.map(lambda x: jnp.zeros((size, *jnp.shape(x)), x.dtype), params),
            num_snapshots=zero,
            fingerprint=tracker.fingerprint,
            has_fingerprint=tracker.has_fingerprint,
            stable_streak=tracker.stable_streak,
            thresholds=tracker.thresholds,
            num_checks=tracker.num_checks,
            similarities=tracker.similarities,
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
            tracker = regimes.RegimeState(
                fingerprint=base.fingerprint,
                has_fingerprint=base.has_fingerprint,
                stable_streak=base.stable_streak,
                thresholds=base.thresholds,
                num_checks=base.num_checks,
                similarities=base.similarities,
            )
            index = base.num_checks
            tracker, reading = regimes.regime_step(
                None, tracker, fingerprint(new_params), config.regime
            )
            sim, regime, confirmed = reading.similarity, reading.regime, reading.confirmed
            snapshots = jax.tree.map(
                lambda buf, x: jnp.roll(buf, -1, axis=0).at[-1].set(x), base.snapshots, new_params
            )
            num_snapshots = jnp.minimum(base.num_snapshots + 1, size)
            current_loss = jnp.asarray(heldout_loss(new_params), jnp.float32)
            finite = reading.finite & jnp.isfinite(current_loss)
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
                fingerprint=tracker.fingerprint,
                has_fingerprint=tracker.has_fingerprint,
                stable_streak=tracker.stable_streak,
                thresholds=tracker.thresholds,
                num_checks=tracker.num_checks,
                similarities=tracker.similarities,
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
                    finite=finite,
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
    """Leap+Verify training state: parameters and optimiser state, one pytree for orbax."""

    params: PyTree  # the model's parameters (any pytree, the caller's dtypes)
    opt_state: optax.OptState  # the optimiser's state (a LeapState, or a chain holding one)
    step: jax.Array  # [] int32: training-step calls (gradient evaluations)


class LeapTrainInfo(NamedTuple):
    """Diagnostics of one training step (never fed back)."""

    loss: jax.Array  # [] float32 (the loss's dtype): the training loss before the update
    leap: LeapInfo | None  # [] each: Leap+Verify's check (regime, accepted, predicted and
    #   current held-out loss); "no check" values when the optimiser holds no LeapState
    #   (None only from the legacy make_train_step)
    finite: jax.Array | None = None  # [] bool: the training loss and its gradients were finite


# deprecated alias of LeapTrainInfo, kept for existing code
StepInfo = LeapTrainInfo


def leap_init(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """``TrainState`` at step 0 (``optimizer``: e.g. ``leap_verify(inner, config, ...)``)."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def leap_step(
    key: jax.Array | None,
    state: TrainState,
    batch: Any,
    *,
    loss_fn: Callable[[PyTree, Any], jax.Array],
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, LeapTrainInfo]:
    """One training step: gradient of ``loss_fn(params, batch) -> []``, ``optimizer``'s update
    (with Leap+Verify's check every ``delta`` steps when it wraps the optimiser).

    ``key`` is unused (the step is deterministic; a leap's acceptance test is too); it comes
    first for the library's uniform ``step(key, state, ...)`` contract. Not jitted: jit it
    with ``static_argnames=("loss_fn", "optimizer")`` (both hashable). A non-finite training
    loss or gradient is reported in ``info.finite``; the update is applied as optax would.
    """
    del key
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    finite = jnp.isfinite(loss)
    for leaf in jax.tree.leaves(grads):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    leap = find_leap_state(opt_state)
    info = LeapTrainInfo(loss=loss, leap=_no_info() if leap is None else leap.last, finite=finite)
    return TrainState(params, opt_state, state.step + 1), info


def leap_run(
    key: jax.Array | None,
    state: TrainState,
    batches: Any,
    *,
    loss_fn: Callable[[PyTree, Any], jax.Array],
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, LeapTrainInfo]:
    """``N`` training steps in one ``lax.scan``: step ``t`` trains on ``batches[t]`` (every
    leaf of ``batches`` has leading axis ``N >= 1``). Returns the final state and the
    stacked infos (every leaf ``[N]``). ``key`` (``None`` allowed) is split into one key per
    step. Jit with ``static_argnames=("loss_fn", "optimizer")``: one compiled program.
    """
    leaves = jax.tree.leaves(batches)
    lengths = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if not leaves or len(lengths) != 1 or None in lengths or 0 in lengths:
        raise ValueError(
            "`batches` must be a pytree of arrays sharing a leading axis N >= 1 (one batch "
            f"per step); got leading sizes {sorted(lengths, key=str)}."
        )
    (n,) = lengths
    keys = jax.random.split(jax.random.key(0) if key is None else key, n)

    def body(carry: TrainState, xs: Any) -> tuple[TrainState, LeapTrainInfo]:
        k, batch = xs
        return leap_step(k, carry, batch, loss_fn=loss_fn, optimizer=optimizer)

    return lax.scan(body, state, (keys, batches))


# deprecated alias of leap_init, kept for existing code
init_train_state = leap_init


def make_train_step(
    loss_fn: Callable[[PyTree, Any], jax.Array], optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Any], tuple[TrainState, LeapTrainInfo]]:
    """A pure ``(state, batch) -> (state, info)`` step (not jitted: the caller decides): the
    earlier, key-less form of ``leap_step``, kept for existing code. ``info.leap`` is ``None``
    when the optimiser holds no ``LeapState``.
    """

    def step(state: TrainState, batch: Any) -> tuple[TrainState, LeapTrainInfo]:
        state, info = leap_step(None, state, batch, loss_fn=loss_fn, optimizer=optimizer)
        if find_leap_state(state.opt_state) is None:
            info = info._replace(leap=None)
        return state, info

    return step
