"""The Leap+Verify training wrapper: no-side-effect rejection, jumps, calibration,
kill-and-resume through orbax, 8 devices = 1 device, one trace.

Everything runs on a tiny MLP (fast to compile); the reference transformer's fingerprint
is checked to plug in by shapes only. Runs that must agree bit for bit use one compiled
program and differ only in data: the regime thresholds held in the state (``NEVER``: nothing is
stable, so no leap is ever attempted; ``ALWAYS``: everything after the first check is)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import checkpoint, sharding
from lookahead_jax.extrapolation import (
    ACCEPTED,
    NOT_ATTEMPTED,
    REJECTED,
    UNKNOWN,
    LeapConfig,
    Thresholds,
    adam_moments,
    advance_counts,
    init_train_state,
    leap_init,
    leap_run,
    leap_step,
    leap_verify,
    make_train_step,
    model_fingerprint,
    predict,
)
from lookahead_jax.models import TransformerConfig, init_params

STEPS = 7
NEVER = Thresholds(jnp.float32(2.0), jnp.float32(2.0))  # cosine <= 2: always chaotic
ALWAYS = Thresholds(jnp.float32(-2.0), jnp.float32(-2.0))  # cosine >= -2: always stable


def _mlp_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "hidden": {"w": jax.random.normal(k1, (4, 8)) * 0.5, "b": jnp.zeros(8)},
        "out": ({"w": jax.random.normal(k2, (8, 3)) * 0.5}, {"b": jnp.zeros(3)}),
    }


def _hidden(params, x):
    return jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])


def _mlp_loss(params, batch):
    x, y = batch
    pred = _hidden(params, x) @ params["out"][0]["w"] + params["out"][1]["b"]
    return jnp.mean(jnp.square(pred - y))


def _mlp_batches(steps, batch=8):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    xs = rng.normal(size=(steps, batch, 4)).astype(np.float32)
    return jnp.asarray(xs), jnp.asarray(np.sin(xs @ w).astype(np.float32))


HELDOUT = tuple(b[0] for b in _mlp_batches(1, 16))
PROBES = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)), jnp.float32)


def _inner():
    return optax.adam(optax.linear_schedule(3e-2, 3e-3, 40))


def _mlp_leap(**overrides):
    base = dict(
        delta=2, k=3, method="linear", leap_in="stable", tau_low=0.0, tau_high=0.0, max_checks=8
    )
    return leap_verify(
        _inner(),
        LeapConfig(**{**base, **overrides}),
        heldout_loss=lambda p: _mlp_loss(p, HELDOUT),
        fingerprint=lambda p: _hidden(p, PROBES),
    )


def _run(step, state, batches, start, stop):
    infos = []
    for t in range(start, stop):
        state, info = step(state, jax.tree.map(lambda b, t=t: b[t], batches))
        infos.append(info)
    return state, infos


def _start(optimizer, params, thresholds=None):
    state = init_train_state(params, optimizer)
    if thresholds is not None:
        state = state._replace(opt_state=state.opt_state._replace(thresholds=thresholds))
    return state


def _assert_trees_equal(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reject_runs():
    optimizer = _mlp_leap(criterion="proximity", eps=0.0)  # every attempt is rejected
    step = jax.jit(make_train_step(_mlp_loss, optimizer))
    batches = _mlp_batches(STEPS)
    never, _ = _run(step, _start(optimizer, _mlp_params(), NEVER), batches, 0, STEPS)
    tried, infos = _run(step, _start(optimizer, _mlp_params(), ALWAYS), batches, 0, STEPS)
    return never, tried, infos


def test_rejected_leaps_leave_the_training_state_bit_identical(reject_runs):
    never, tried, infos = reject_runs
    a, b = never.opt_state, tried.opt_state
    assert int(a.attempts) == 0
    assert int(b.attempts) == 2 and int(b.accepts) == 0  # checks at steps 2, 4, 6
    np.testing.assert_array_equal(b.decisions[:3], [NOT_ATTEMPTED, REJECTED, REJECTED])
    assert bool(infos[3].leap.attempted) and np.isfinite(float(infos[3].leap.predicted_loss))
    _assert_trees_equal(tried.params, never.params)
    for field in ("inner_state", "count", "position", "snapshots", "num_snapshots", "fingerprint",
                  "similarities", "val_losses"):  # fmt: skip
        _assert_trees_equal(getattr(b, field), getattr(a, field))
    assert int(b.position) == int(b.count) == STEPS


def test_wrapper_without_leaps_is_plain_optax(reject_runs):
    never, _, _ = reject_runs
    optimizer = _inner()
    step = jax.jit(make_train_step(_mlp_loss, optimizer))
    plain, _ = _run(step, _start(optimizer, _mlp_params()), _mlp_batches(STEPS), 0, STEPS)
    # A different compiled program: equal up to float rounding of XLA's fusion choices.
    chex.assert_trees_all_close(never.params, plain.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(never.opt_state.inner_state, plain.opt_state, rtol=1e-6, atol=1e-7)


def test_accepted_leap_lands_on_the_prediction_and_advances_the_schedule():
    optimizer = _mlp_leap(criterion="proximity", eps=1e9)  # every attempt is accepted
    step = jax.jit(make_train_step(_mlp_loss, optimizer))
    batches = _mlp_batches(STEPS)
    never, _ = _run(step, _start(optimizer, _mlp_params(), NEVER), batches, 0, 4)
    leap, infos = _run(step, _start(optimizer, _mlp_params(), ALWAYS), batches, 0, 4)
    s = leap.opt_state
    assert [bool(i.leap.accepted) for i in infos] == [False, False, False, True]
    # The first possible leap: at the check of step 4, from the snapshots of steps 2 and 4.
    snaps = never.opt_state.snapshots
    history = [jax.tree.map(lambda x: x[0], snaps), jax.tree.map(lambda x: x[1], snaps)]
    _assert_trees_equal(history[1], never.params)
    want = predict("linear", history, 3, 2)
    chex.assert_trees_all_close(leap.params, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(leap.params["hidden"]["w"], never.params["hidden"]["w"], atol=1e-4)
    _assert_trees_equal(s.inner_state, advance_counts(never.opt_state.inner_state, 3))
    assert int(s.inner_state[0].count) == 7  # Adam's count (and the schedule) jumped by K
    assert (int(s.count), int(s.position), int(leap.step)) == (4, 7, 4)
    assert int(s.num_snapshots) == 1  # the buffer restarts from the jump
    np.testing.assert_array_equal(s.decisions[:2], [NOT_ATTEMPTED, ACCEPTED])
    np.testing.assert_array_equal(s.check_positions[:3], [2, 4, -1])
    # Continuing: the jump is the first post-jump snapshot, so the check of step 6 leaps again.
    leap, infos = _run(step, leap, batches, 4, STEPS)
    assert [bool(i.leap.accepted) for i in infos] == [False, True, False]
    assert int(leap.opt_state.accepts) == 2 and int(leap.opt_state.position) == STEPS + 6


def test_thresholds_are_calibrated_from_the_first_checks():
    optimizer = _mlp_leap(delta=1, tau_low=None, tau_high=None, calibration_checks=4)
    step = jax.jit(make_train_step(_mlp_loss, optimizer))
    leap, infos = _run(step, _start(optimizer, _mlp_params()), _mlp_batches(6), 0, 6)
    s = leap.opt_state
    sims = np.asarray(s.similarities)
    assert np.isnan(sims[0]) and np.all(np.isfinite(sims[1:6]))
    np.testing.assert_allclose(s.thresholds, np.percentile(sims[1:4], [30, 70]), atol=1e-7)
    assert [int(i.leap.regime) for i in infos[:3]] == [UNKNOWN] * 3
    assert all(int(i.leap.regime) != UNKNOWN for i in infos[3:])


def test_eight_devices_equal_one_device_and_one_trace():
    optimizer = _mlp_leap(method="quadratic", criterion="strict")
    fn = chex.assert_max_traces(make_train_step(_mlp_loss, optimizer), n=1)
    one_step = jax.jit(fn)
    batches = _mlp_batches(STEPS + 4)
    one, _ = _run(one_step, _start(optimizer, _mlp_params(), ALWAYS), batches, 0, STEPS + 4)
    mesh = sharding.make_mesh(8)
    sharded_batches = sharding.shard(batches, mesh, axes=1)  # batch rows over the devices
    state = sharding.replicate(_start(optimizer, _mlp_params(), ALWAYS), mesh)
    many, _ = _run(
        jax.jit(make_train_step(_mlp_loss, optimizer)), state, sharded_batches, 0, STEPS + 4
    )
    assert int(one.opt_state.attempts) >= 2  # quadratic leaps were verified on the way
    _assert_trees_equal(many.opt_state.decisions, one.opt_state.decisions)
    chex.assert_trees_all_close(many.params, one.params, rtol=1e-5, atol=1e-6)


def test_kill_and_resume_through_orbax_equals_uninterrupted(tmp_path):
    # Calibrated thresholds, quadratic adaptive leaps, the whole state through orbax; a run
    # of 2 x 5 steps (one compiled `leap_run`) is cut after 5 steps and resumed from disk.
    config = LeapConfig(delta=2, k=2, method="quadratic", criterion="adaptive",
                        leap_in="not_chaotic", calibration_checks=2, max_checks=8)  # fmt: skip
    optimizer = leap_verify(
        _inner(),
        config,
        heldout_loss=lambda p: _mlp_loss(p, HELDOUT),
        fingerprint=lambda p: _hidden(p, PROBES),
    )
    run = jax.jit(leap_run, static_argnames=("loss_fn", "optimizer"))
    batches = _mlp_batches(10)
    halves = [jax.tree.map(lambda b, i=i: b[5 * i : 5 * (i + 1)], batches) for i in range(2)]
    keys = jax.random.split(jax.random.key(1))
    kw = dict(loss_fn=_mlp_loss, optimizer=optimizer)
    first, _ = run(keys[0], leap_init(_mlp_params(), optimizer), halves[0], **kw)
    straight, infos = run(keys[1], first, halves[1], **kw)
    checkpoint.save(tmp_path, 5, first)
    del first  # "killed": only the checkpoint survives
    restored = checkpoint.restore(tmp_path, leap_init(_mlp_params(), optimizer))
    resumed, _ = run(keys[1], restored, halves[1], **kw)
    assert int(straight.opt_state.num_checks) == 5
    assert not np.isnan(float(straight.opt_state.thresholds.tau_low))  # calibrated on the way
    assert int(straight.opt_state.attempts) >= 1 and infos.leap.regime.shape == (5,)
    _assert_trees_equal(resumed, straight)


def test_fingerprint_of_the_reference_transformer_plugs_in():
    """The wrapper with the reference transformer's fingerprint (shapes only: cheap)."""
    model = TransformerConfig(vocab_size=256, num_layers=1, num_heads=2, d_model=16, max_length=8)
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    probes = jnp.zeros((3, 8), jnp.int32)
    optimizer = leap_verify(
        _inner(),
        LeapConfig(delta=2, k=2, max_checks=4, calibration_checks=2),
        heldout_loss=lambda p: jnp.float32(0.0),
        fingerprint=lambda p: model_fingerprint(model, p, probes),
    )
    state = jax.eval_shape(optimizer.init, params)
    assert state.fingerprint.shape == (3, 16) and state.snapshots is not None


def test_config_and_update_errors():
    with pytest.raises(ValueError, match="`k` must be a positive int; got 0"):
        LeapConfig(k=0)
    with pytest.raises(ValueError, match="`delta` must be a positive int; got -1"):
        LeapConfig(delta=-1)
    with pytest.raises(ValueError, match="`method` must be one of"):
        LeapConfig(method="cubic")
    with pytest.raises(ValueError, match="both be given or both be None"):
        LeapConfig(tau_low=0.5)
    with pytest.raises(ValueError, match="`tau_low` must be <= `tau_high`"):
        LeapConfig(tau_low=0.9, tau_high=0.1)
    with pytest.raises(ValueError, match="needs `learning_rate`"):
        LeapConfig(method="momentum")
    with pytest.raises(ValueError, match="calibration_checks"):
        LeapConfig(calibration_checks=1)
    optimizer = _mlp_leap()
    params = _mlp_params()
    with pytest.raises(ValueError, match="needs `params`"):
        optimizer.update(params, optimizer.init(params))
    with pytest.raises(ValueError, match="must be a LeapConfig"):
        leap_verify(_inner(), {"k": 5}, heldout_loss=None, fingerprint=None)


def test_momentum_leap_uses_the_inner_adam_moments_and_schedule():
    schedule = optax.linear_schedule(3e-2, 3e-3, 40)
    optimizer = _mlp_leap(
        method="momentum", criterion="proximity", eps=1e9, learning_rate=schedule, b1=0.9,
        b2=0.999,
    )  # fmt: skip
    step = jax.jit(make_train_step(_mlp_loss, optimizer))
    batches = _mlp_batches(STEPS)
    never, _ = _run(step, _start(optimizer, _mlp_params(), NEVER), batches, 0, 2)
    leap, infos = _run(step, _start(optimizer, _mlp_params(), ALWAYS), batches, 0, 2)
    # Momentum needs one snapshot, but at the first check (step 2) there is no previous
    # fingerprint: the regime is unknown and `leap_in="stable"` gates the leap off.
    assert not bool(infos[1].leap.attempted)
    leap, infos = _run(step, leap, batches, 2, 4)
    never, _ = _run(step, never, batches, 2, 4)
    assert bool(infos[1].leap.accepted)
    inner = never.opt_state.inner_state
    want = predict(
        "momentum", [never.params], 3, 2, moments=adam_moments(inner), learning_rate=schedule(4)
    )
    chex.assert_trees_all_close(leap.params, want, rtol=1e-6, atol=1e-7)


ACCEPT_ALL = _mlp_leap(criterion="proximity", eps=1e9)  # every attempted leap is accepted
# The public entry points, compiled once per shape for the whole file (guarded: a retrace
# at the same shapes fails the test that causes it).
STEP = jax.jit(chex.assert_max_traces(leap_step, n=1), static_argnames=("loss_fn", "optimizer"))
RUN = jax.jit(chex.assert_max_traces(leap_run, n=1), static_argnames=("loss_fn", "optimizer"))


def test_run_scans_step_and_the_old_names_agree():
    """leap_init / leap_step / leap_run (key first) = the old init_train_state / make_train_step."""
    batches = _mlp_batches(4)
    kw = dict(loss_fn=_mlp_loss, optimizer=ACCEPT_ALL)
    start = _start(ACCEPT_ALL, _mlp_params(), ALWAYS)
    assert jax.tree.structure(leap_init(_mlp_params(), ACCEPT_ALL)) == jax.tree.structure(start)
    ran, infos = RUN(jax.random.key(0), start, batches, **kw)
    # Infos are stacked: [N] per field, with the leap's regime, decision and losses.
    assert infos.loss.shape == (4,) and infos.finite.shape == (4,)
    np.testing.assert_array_equal(infos.leap.checked, [False, True, False, True])
    np.testing.assert_array_equal(infos.leap.accepted, [False, False, False, True])
    assert np.isfinite(infos.leap.predicted_loss[3]) and np.isfinite(infos.leap.current_loss[3])
    assert np.isnan(infos.leap.predicted_loss[1])  # checked, not attempted (no history yet)
    assert bool(np.all(infos.finite)) and bool(np.all(infos.leap.finite))
    stepped, key = start, jax.random.key(0)
    for t in range(4):
        stepped, _ = STEP(key, stepped, jax.tree.map(lambda b, t=t: b[t], batches), **kw)
    chex.assert_trees_all_close(ran, stepped, rtol=1e-6, atol=1e-7)
    legacy, legacy_infos = _run(
        jax.jit(make_train_step(_mlp_loss, ACCEPT_ALL)), start, batches, 0, 4
    )
    chex.assert_trees_all_close(ran, legacy, rtol=1e-6, atol=1e-7)
    assert bool(legacy_infos[3].leap.accepted) and int(ran.opt_state.accepts) == 1


def test_public_steps_compile_once():
    kw = dict(loss_fn=_mlp_loss, optimizer=ACCEPT_ALL)
    batches = _mlp_batches(4)
    state = _start(ACCEPT_ALL, _mlp_params(), ALWAYS)
    STEP(jax.random.key(0), state, jax.tree.map(lambda b: b[0], batches), **kw)
    RUN(jax.random.key(0), state, batches, **kw)
    chex.clear_trace_counter()  # traced at most once above (or by an earlier test)
    for seed in range(1, 3):  # new keys, states and data: no retrace
        first = jax.tree.map(lambda b, seed=seed: b[seed], batches)
        state, _ = STEP(jax.random.key(seed), state, first, **kw)
        moved = jax.tree.map(lambda b, seed=seed: b + seed, batches)
        state, _ = RUN(jax.random.key(seed), state, moved, **kw)
    assert int(state.step) == 10


def test_nonfinite_losses_are_reported_in_info_and_never_accepted():
    batches = _mlp_batches(4)
    x, y = batches
    poisoned = (x, y.at[1].set(jnp.nan))  # the 2nd training batch has NaN targets
    _, infos = RUN(jax.random.key(0), _start(ACCEPT_ALL, _mlp_params(), ALWAYS), poisoned,
                   loss_fn=_mlp_loss, optimizer=ACCEPT_ALL)  # fmt: skip
    np.testing.assert_array_equal(infos.finite, [True, False, False, False])
    assert np.isnan(infos.loss[2])
    # The checks after it see non-finite parameters: reported, regime unknown, no leap.
    np.testing.assert_array_equal(infos.leap.finite, [True, False, True, False])
    assert int(infos.leap.regime[3]) == UNKNOWN and not bool(np.any(infos.leap.accepted))


def test_contract_input_errors():
    kw = dict(loss_fn=_mlp_loss, optimizer=ACCEPT_ALL)
    start = _start(ACCEPT_ALL, _mlp_params(), ALWAYS)
    with pytest.raises(ValueError, match=r"`batches` must .* leading axis N >= 1.*\[0\]"):
        leap_run(None, start, jax.tree.map(lambda b: b[:0], _mlp_batches(2)), **kw)
    with pytest.raises(ValueError, match=r"leading sizes \[2, 3\]"):
        leap_run(None, start, (jnp.zeros((2, 8, 4)), jnp.zeros((3, 8, 3))), **kw)
    bad = leap_verify(
        _inner(),
        LeapConfig(delta=2, k=3, tau_low=0.0, tau_high=0.0, max_checks=8),
        heldout_loss=lambda p: jnp.zeros(3),
        fingerprint=lambda p: _hidden(p, PROBES),
    )
    with pytest.raises(ValueError, match=r"`heldout_loss\(params\)` must return a scalar"):
        bad.init(_mlp_params())
