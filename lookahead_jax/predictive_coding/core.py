"""The pure core of an HGF network: ``init`` / ``step`` / ``run`` over parameter and belief pytrees.

The library's contract for a stateful algorithm, with the network's static
:class:`~.structure.Structure` as its configuration:

* ``init(structure, beliefs=None) -> Beliefs``: the state before the first observation;
* ``step(key, state, params, observation, observed, time_step, *, structure) ->
  (Beliefs, HGFInfo)``: one observation;
* ``run(key, state, params, inputs, observed, time_steps, *, structure) ->
  (Beliefs, Trajectories)``: a whole series in one ``lax.scan``.

The HGF is deterministic: ``key`` is taken first for uniformity with the rest of the
library and ignored (``None`` is fine). :func:`filter_series` is ``run`` with the
former ``filter`` signature, ``(structure, params, beliefs, inputs, ...)``. The
``Structure`` is static (hashable: pass it with ``static_argnames``/``static_argnums``);
``params`` and ``beliefs`` are NamedTuples of arrays, so ``jax.grad``, ``jax.vmap``
(over subjects) and sharding work on them directly. The library never jits: callers
choose.

One time step, in order (Mathys et al. 2011, 2014; Weber et al. for the eHGF
and unbounded volatility updates), one function per stage:

1. prediction, parents first (:func:`_predict`): every node's ``expected_mean`` and
   ``expected_precision`` (and the effective precision its volatility parents use);
2. the observations are written into the input nodes' ``mean`` (:func:`_observe`);
3. bottom-up, children first: a node's posterior from its children's prediction
   errors (:func:`_posterior`: value messages, volatility messages, the eHGF and
   unbounded variants), then its own prediction errors (:func:`_prediction_errors`).

``mean_field_updates=False`` ("relaxed", pyhgf's default) differs from the
mean-field updates in two places: a node's predicted log-volatility adds
``kappa^2 / (2 pi^_parent)`` per volatility parent and its predicted variance adds
``(dt alpha)^2 / pi^_parent`` per value parent; and a value parent of a continuous
state node (not an input) is updated by the exact Gaussian message of that child
(see :func:`_value_messages`). Both were identified against pyhgf's outputs, which the
tests match to ~1e-10 relative in float64.

The diagnostics (:class:`HGFInfo`, pyhgf's ``temp`` fields) are recomputed from
the belief trajectories after the scan (:func:`step_info`), which keeps the loop
body small; :func:`step` computes them the same way for its one observation.

Parity mode (the default) reproduces pyhgf 0.3.2, with one exception: a missing
observation (``observed = 0``) is skipped exactly as the mask says, whatever value
stands in its place (pyhgf lets a NaN there poison every later step, and its unbounded
update learns from a masked input). A posterior precision at or below 1e-128 becomes
NaN, as in pyhgf. ``robust=True`` floors precisions, bounds log-volatilities and treats
non-finite inputs as missing, so that no parameter draw produces NaN or inf.

Bad values raise through the library's runtime-check mechanism
(:mod:`lookahead_jax.checks`): a ``ValueError`` at once on concrete arrays, and under
``lookahead_jax.checked(...)`` when traced: time steps must be finite and > 0, binary
inputs 0 or 1 where observed, and (parity mode) observed inputs finite.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks, _xla_cpu, checks
from lookahead_jax.predictive_coding.structure import BINARY, Structure, check_complete

# pyhgf turns a posterior precision at or below this into NaN (parity mode only).
_PRECISION_UNDERFLOW = 1e-128
# Robust mode: bounds that keep every quantity finite for any parameter draw.
_ROBUST_MIN_PRECISION = 1e-8
_ROBUST_LOG_VOLATILITY = 40.0  # |log Omega| <= 40: exp stays far from overflow in float32
_ROBUST_MAX_MEAN = 1e8
_ROBUST_MIN_TIME_STEP = 1e-6


class Params(NamedTuple):
    """Parameters of a network; ``N`` nodes, ``E_v``/``E_k`` value/volatility edges.

    Entries of input nodes' ``tonic_volatility``, ``tonic_drift`` and
    ``autoconnection_strength`` are ignored (forced to 0, as in pyhgf).
    """

    tonic_volatility: jax.Array  # [N] omega, log-volatility of each node's random walk
    tonic_drift: jax.Array  # [N] rho, drift per unit time
    autoconnection_strength: jax.Array  # [N] lambda, weight of the previous mean
    value_coupling: jax.Array  # [E_v] alpha, strength of each value edge
    volatility_coupling: jax.Array  # [E_k] kappa, strength of each volatility edge


class Beliefs(NamedTuple):
    """Beliefs of every node at one time step: the HGF's state (what ``step`` carries)."""

    mean: jax.Array  # [N] posterior mean mu (an input node holds the value it was given)
    precision: jax.Array  # [N] posterior precision pi
    expected_mean: jax.Array  # [N] predicted mean mu^
    expected_precision: jax.Array  # [N] predicted precision pi^


class HGFInfo(NamedTuple):
    """Diagnostics per node (never fed back); pyhgf's ``temp`` fields. ``step`` returns
    one ([N] each); ``run`` returns them stacked over time ([T, N] each)."""

    effective_precision: jax.Array  # [N] gamma = Omega pi^ (0 without volatility)
    value_prediction_error: jax.Array  # [N] delta = mu - mu^ (binary: delta / (mu^ (1 - mu^)))
    volatility_prediction_error: jax.Array  # [N] Delta = pi^/pi + pi^ delta^2 - 1 (per vol. parent)
    conditional_expected_precision: jax.Array  # [N] pi^ without the value parents' variance
    current_variance: jax.Array  # [N] posterior variance at the previous step, 1 / pi_{t-1}
    observed: jax.Array  # [N] bool, whether the node received an observation (non-inputs: True)


# deprecated alias of HGFInfo, kept for existing code (the name collided with other pillars)
StepInfo = HGFInfo


class Trajectories(NamedTuple):
    """Everything ``run`` records, stacked over the ``T`` time steps."""

    beliefs: Beliefs  # each field [T, N]
    info: HGFInfo  # each field [T, N]


def default_params(structure: Structure, dtype: Any = None) -> Params:
    """pyhgf's defaults: omega = -4, rho = 0, lambda = 1 (0 for input nodes), couplings 1."""
    dtype = dtype or jnp.result_type(float)
    n = structure.num_nodes
    inputs = np.zeros(n, bool)
    inputs[list(structure.input_nodes)] = True
    return Params(
        tonic_volatility=jnp.asarray(np.where(inputs, 0.0, -4.0), dtype),
        tonic_drift=jnp.zeros(n, dtype),
        autoconnection_strength=jnp.asarray(np.where(inputs, 0.0, 1.0), dtype),
        value_coupling=jnp.ones(len(structure.value_edges), dtype),
        volatility_coupling=jnp.ones(len(structure.volatility_edges), dtype),
    )


def default_beliefs(structure: Structure, dtype: Any = None) -> Beliefs:
    """pyhgf's initial beliefs: mean 0, precision 1 (binary nodes: expected mean 0.5)."""
    dtype = dtype or jnp.result_type(float)
    n = structure.num_nodes
    binary = np.asarray([k == BINARY for k in structure.kinds])
    return Beliefs(
        mean=jnp.zeros(n, dtype),
        precision=jnp.ones(n, dtype),
        expected_mean=jnp.asarray(np.where(binary, 0.5, 0.0), dtype),
        expected_precision=jnp.ones(n, dtype),
    )


def init(structure: Structure, beliefs: Beliefs | None = None, *, dtype: Any = None) -> Beliefs:
    """The state before the first observation.

    Args:
      structure: the static network.
      beliefs: initial beliefs (e.g. from :meth:`~.network.Network.compile`); default
        pyhgf's (:func:`default_beliefs`).
      dtype: float dtype of the state; default: that of ``beliefs``, else JAX's
        default float.
    Raises:
      ValueError: when a field of ``beliefs`` does not hold one value per node.
    """
    check_complete(structure)
    if beliefs is None:
        return default_beliefs(structure, dtype)
    for name in Beliefs._fields:
        _checks.check_shape(
            f"beliefs.{name}", getattr(beliefs, name), (structure.num_nodes,), "one per node"
        )
    if dtype is None:
        dtype = jnp.result_type(*jax.tree.leaves(beliefs))
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), beliefs)


# --------------------------------------------------------------------------- Lambert W


@jax.custom_jvp
def _lambertw_of_exp(z: jax.Array) -> jax.Array:
    """W0(exp(z)) for real z, without forming exp(z) (which overflows for z > 709).

    Starts from Winitzki's approximation W(x) ~ L (1 - log(1 + L) / (2 + L)) with
    L = log(1 + x) = softplus(z) (within 0.5% for every x > 0), then solves
    w + log(w) = z by Halley steps (cubic convergence): one in float32 and below
    (already at float32 rounding over |z| < 80), two in float64 (relative error below
    1e-15 over |z| <= 700); the tests check both against a many-step solution.
    """
    # softplus(z); above 30 it equals z to float64 rounding, and the `where` keeps the
    # exp's overflow out of the result (no gradient flows through here: custom JVP).
    big = jnp.where(z > 30.0, z, jnp.log1p(jnp.exp(jnp.minimum(z, 30.0))))
    w = big * (1.0 - jnp.log1p(big) / (2.0 + big))
    for _ in range(2 if jnp.finfo(z.dtype).bits > 32 else 1):
        # Halley on f(w) = w + log w - z (f' = (w + 1) / w, f'' = -1 / w^2):
        # w - f / (f' - f f'' / (2 f')) = w - 2 f w (w + 1) / (2 (w + 1)^2 + f).
        f = w + jnp.log(w) - z
        w = w - 2.0 * f * w * (w + 1.0) / (2.0 * (w + 1.0) ** 2 + f)
    return w


@_lambertw_of_exp.defjvp
def _lambertw_of_exp_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    w = _lambertw_of_exp(z)
    # d/dz W(e^z) = W / (1 + W).
    return w, dz * w / (1.0 + w)


# --------------------------------------------------------------------------- one step


def _volatility_precision_gain(kappa, gamma, vope):
    """Precision a volatility parent gains from one child (Mathys et al. 2014, eq. 40).

    ``kappa^2 / 2 * gamma * (gamma + (2 gamma - 1) Delta)`` with the child's effective
    precision ``gamma`` and volatility prediction error ``Delta``.
    """
    return kappa**2 * gamma * (gamma + (2.0 * gamma - 1.0) * vope) / 2.0


def _unbounded_posterior(
    expected_mean_b, expected_precision_b, kappa, omega_c, dt, v_prev, mean_c, precision_c,
    expected_mean_c, expected_precision_c, robust=False,
):  # fmt: skip
    """Posterior (mean, precision) of a volatility parent by the unbounded update.

    Blends two quadratic expansions of the log joint: one at the prediction and one
    at an approximate mode (Lambert W), weighted by a sigmoid of their log joints.
    ``v_prev`` is the child's posterior variance at the previous step.

    Written with as few transcendental functions as the algebra allows (this update
    dominates the step's cost): ``sigmoid(g - log v) = s / (s + v)`` with
    ``s = dt e^(kappa mu^_b + omega_c)``; the mode's volatility ``dt e^(kappa x +
    omega_c)`` equals ``B / (2 pi_y W)`` (from ``W e^W = e^arg``); the two log joints
    enter only through their difference, one log of a ratio.
    """
    if robust:
        # Keep |kappa| away from 0 (it divides) and every exponent below overflow.
        kappa = jnp.where(jnp.abs(kappa) < 1e-6, jnp.where(kappa < 0, -1e-6, 1e-6), kappa)
    bound = (
        (lambda v: jnp.clip(v, -_ROBUST_LOG_VOLATILITY, _ROBUST_LOG_VOLATILITY))
        if robust
        else (lambda v: v)
    )
    b_stat = 1.0 / precision_c + (mean_c - expected_mean_c) ** 2
    level = kappa * expected_mean_b + omega_c  # the child's log-volatility at the prediction
    volatility = dt * jnp.exp(bound(level))
    # Expansion 1, at the prediction: w = sigmoid(log(volatility) - log(v_prev)), written
    # so that an overflowing or underflowing volatility gives w = 1 or 0, not NaN.
    w = 1.0 / (1.0 + v_prev / volatility)
    d = expected_precision_c * b_stat - 1.0
    pi1 = expected_precision_b + kappa**2 * w * (1.0 - w) / 2.0
    mu1 = expected_mean_b + kappa * w * d / (2.0 * pi1)
    # Expansion 2, at the approximate mode of the log joint (v_prev neglected).
    half_inverse_pi_y = kappa**2 / (2.0 * expected_precision_b)  # 1 / (2 pi_y)
    arg = jnp.log(b_stat * half_inverse_pi_y) + half_inverse_pi_y - level - jnp.log(dt)
    lambert = _lambertw_of_exp(arg)
    x = expected_mean_b + (lambert - half_inverse_pi_y) / kappa
    if robust:
        s2 = dt * jnp.exp(bound(kappa * x + omega_c))
    else:
        s2 = b_stat * half_inverse_pi_y / lambert  # = dt e^(kappa x + omega_c)
    inverse_var2 = 1.0 / (v_prev + s2)
    w2 = s2 * inverse_var2
    d2 = b_stat * inverse_var2 - 1.0
    pi2 = expected_precision_b + kappa**2 * w2 * (w2 + (2.0 * w2 - 1.0) * d2) / 2.0
    pi2 = jnp.where(pi2 <= 0.0, expected_precision_b + kappa**2 * w2 * (1.0 - w2) / 2.0, pi2)
    mu2 = x + (kappa * w2 * d2 / 2.0 - expected_precision_b * (x - expected_mean_b)) / pi2
    finite = jnp.isfinite(mu2) & jnp.isfinite(pi2)
    mu2 = jnp.where(finite, mu2, mu1)
    pi2 = jnp.where(finite, pi2, pi1)
    # log joint(m) = -log(var(m))/2 - B/(2 var(m)) - pi^_b (m - mu^_b)^2 / 2 with
    # var(m) = v_prev + dt e^(kappa m + omega_c); the blend needs joint(mu2) - joint(mu1).
    var1 = v_prev + dt * jnp.exp(bound(kappa * mu1 + omega_c))
    var2 = v_prev + dt * jnp.exp(bound(kappa * mu2 + omega_c))
    joint_gain = (
        -jnp.log(var2 / var1) / 2.0
        - b_stat * (var1 - var2) / (2.0 * var1 * var2)
        - expected_precision_b * ((mu2 - expected_mean_b) ** 2 - (mu1 - expected_mean_b) ** 2) / 2.0
    )
    blend = jax.nn.sigmoid(joint_gain)
    mean = (1.0 - blend) * mu1 + blend * mu2
    var = (1.0 - blend) / pi1 + blend / pi2 + blend * (1.0 - blend) * (mu1 - mu2) ** 2
    return mean, 1.0 / var


# --------------------------------------------------------------------------- stages of a step


class _Topology(NamedTuple):
    """Static per-node lists of a structure, built once per structure (trace time only)."""

    input_column: dict[int, int]  # input node -> its column of the inputs
    binary: tuple[bool, ...]  # [N] whether each node is a binary-state node
    value_parents: tuple[tuple[tuple[int, int], ...], ...]  # [N] (edge, parent) pairs
    volatility_parents: tuple[tuple[tuple[int, int], ...], ...]  # [N] (edge, parent) pairs
    value_children: tuple[tuple[tuple[int, int], ...], ...]  # [N] (edge, child) pairs
    volatility_children: tuple[tuple[tuple[int, int], ...], ...]  # [N] (edge, child) pairs


@functools.lru_cache(maxsize=128)
def _topology(structure: Structure) -> _Topology:
    n = structure.num_nodes
    return _Topology(
        input_column={node: i for i, node in enumerate(structure.input_nodes)},
        binary=tuple(kind == BINARY for kind in structure.kinds),
        value_parents=tuple(structure.value_parents(k) for k in range(n)),
        volatility_parents=tuple(structure.volatility_parents(k) for k in range(n)),
        value_children=tuple(structure.value_children(k) for k in range(n)),
        volatility_children=tuple(structure.volatility_children(k) for k in range(n)),
    )


class _Nodes:
    """The per-node scalars of one time step while it is traced, as Python lists.

    The update stages below read and write these lists node by node (the node loops
    unroll at trace time). Names follow the papers: ``emean`` mu^, ``eprec`` pi^,
    ``cond`` pi^ given the parents' values (no relaxed terms), ``gamma`` the
    effective precision, ``vape``/``vope`` the value/volatility prediction errors.
    """

    def __init__(self, structure: Structure, robust: bool, params: Params, prev: Beliefs, dt):
        n = structure.num_nodes
        self.structure = structure
        self.topology = _topology(structure)
        self.robust = robust
        self.relaxed = not structure.mean_field_updates
        self.params = params
        self.dt = dt
        self.zero = jnp.zeros_like(prev.mean[0])
        self.mean = [prev.mean[k] for k in range(n)]
        self.prev_variance = [1.0 / prev.precision[k] for k in range(n)]
        self.precision = [prev.precision[k] for k in range(n)]
        self.emean = [prev.expected_mean[k] for k in range(n)]
        self.eprec = [prev.expected_precision[k] for k in range(n)]
        self.gamma = [self.zero] * n
        self.vape = [self.zero] * n
        self.vope = [self.zero] * n
        self.observed = [jnp.asarray(True)] * n
        self.cond = list(self.eprec)

    def beliefs(self) -> Beliefs:
        return Beliefs(
            mean=jnp.stack(self.mean),
            precision=jnp.stack(self.precision),
            expected_mean=jnp.stack(self.emean),
            expected_precision=jnp.stack(self.eprec),
        )


def _clip_precision(nodes: _Nodes, pi):
    """A posterior precision: capped; NaN at underflow (parity) or floored (robust)."""
    pi = jnp.minimum(pi, nodes.structure.max_posterior_precision)
    if nodes.robust:
        return jnp.maximum(jnp.nan_to_num(pi, nan=_ROBUST_MIN_PRECISION), _ROBUST_MIN_PRECISION)
    return jnp.where(pi <= _PRECISION_UNDERFLOW, jnp.nan, pi)


def _bound_log_volatility(robust: bool, v):
    return jnp.clip(v, -_ROBUST_LOG_VOLATILITY, _ROBUST_LOG_VOLATILITY) if robust else v


def _bound_mean(robust: bool, mu):
    return jnp.clip(mu, -_ROBUST_MAX_MEAN, _ROBUST_MAX_MEAN) if robust else mu


def _log_volatility(nodes: _Nodes, k: int, use_expected_parents=True, relaxed_term=True):
    """log Omega_k / dt: tonic volatility plus the volatility parents' (expected) means."""
    params = nodes.params
    v = params.tonic_volatility[k]
    for e, p in nodes.topology.volatility_parents[k]:
        kappa = params.volatility_coupling[e]
        v = v + kappa * (nodes.emean[p] if use_expected_parents else nodes.mean[p])
        if nodes.relaxed and relaxed_term:
            v = v + kappa**2 / (2.0 * nodes.eprec[p])
    return _bound_log_volatility(nodes.robust, v)


def _predict_node(nodes: _Nodes, k: int) -> None:
    """Stage 1 for node ``k`` (its parents already predicted): mu^, pi^, gamma, cond."""
    topology, params, dt, zero = nodes.topology, nodes.params, nodes.dt, nodes.zero
    if topology.binary[k]:
        ((e, p),) = topology.value_parents[k]
        mu_hat = jax.nn.sigmoid(params.value_coupling[e] * nodes.emean[p])
        eps = nodes.structure.precision_clipping_value
        mu_hat = jnp.clip(mu_hat, eps, 1.0 - eps)
        nodes.emean[k] = mu_hat
        nodes.eprec[k] = nodes.cond[k] = mu_hat * (1.0 - mu_hat)
        return
    is_input = k in topology.input_column
    drive = zero if is_input else params.tonic_drift[k]
    for e, p in topology.value_parents[k]:
        drive = drive + params.value_coupling[e] * nodes.emean[p]
    if is_input:
        # An input's autoconnection is 0: its previous value (possibly a masked NaN)
        # never enters the prediction.
        nodes.emean[k] = _bound_mean(nodes.robust, dt * drive)
    else:
        lam = params.autoconnection_strength[k]
        nodes.emean[k] = _bound_mean(nodes.robust, lam * nodes.mean[k] + dt * drive)
    if is_input and not topology.volatility_parents[k]:
        # An input without volatility parent: its precision is the observation precision.
        nodes.eprec[k] = nodes.cond[k] = nodes.precision[k]
        return
    omega = dt * jnp.exp(_log_volatility(nodes, k))
    variance = 1.0 / nodes.precision[k] + omega
    nodes.cond[k] = 1.0 / variance
    if nodes.relaxed and not is_input:
        # Relaxed (not mean-field): the value parents' predictive variance
        # propagates, Var(dt alpha x_b) = (dt alpha)^2 / pi^_b.
        for e, p in topology.value_parents[k]:
            variance = variance + (dt * params.value_coupling[e]) ** 2 / nodes.eprec[p]
    eprec = 1.0 / variance
    nodes.eprec[k] = jnp.maximum(eprec, _ROBUST_MIN_PRECISION) if nodes.robust else eprec
    nodes.gamma[k] = omega * nodes.eprec[k]


def _predict(nodes: _Nodes) -> None:
    """Stage 1, top-down: every node's prediction, parents first."""
    for k in nodes.structure.prediction_order:
        _predict_node(nodes, k)


def _observe(nodes: _Nodes, u: jax.Array, obs: jax.Array) -> None:
    """Stage 2: the observations ``u`` [n_inputs] and mask ``obs`` into the input nodes."""
    topology = nodes.topology
    for node, i in topology.input_column.items():
        nodes.observed[node] = obs[i]
        if nodes.robust:
            # A missing input keeps its prediction (`where`, not `0 * x`: NaN-safe).
            nodes.mean[node] = jnp.where(
                obs[i], jnp.where(jnp.isfinite(u[i]), u[i], 0.0), nodes.emean[node]
            )
        else:
            nodes.mean[node] = u[i]  # recorded as given (pyhgf); masked where it is used
        if topology.binary[node]:
            nodes.precision[node] = nodes.eprec[node]


def _any_child_observed(nodes: _Nodes, k: int) -> jax.Array:
    observed = jnp.asarray(False)
    for _, c in nodes.topology.value_children[k] + nodes.topology.volatility_children[k]:
        observed = observed | nodes.observed[c]
    return observed


def _lonely_precision(nodes: _Nodes, k: int) -> jax.Array:
    """Posterior precision of node ``k`` when no child is observed: the random walk's
    variance grows by one step (the mean keeps its prediction)."""
    log_volatility = _log_volatility(nodes, k, use_expected_parents=False, relaxed_term=False)
    return _clip_precision(
        nodes, 1.0 / (1.0 / nodes.precision[k] + nodes.dt * jnp.exp(log_volatility))
    )


def _unbounded_update(nodes: _Nodes, k: int) -> tuple[jax.Array, jax.Array]:
    """Posterior of volatility parent ``k`` by the unbounded update of its first
    volatility child (pyhgf reads that child only, whatever its observed flag; an
    input child's mask is honoured here: a missing observation carries no news)."""
    e, c = nodes.topology.volatility_children[k][0]
    mean_c = nodes.mean[c]
    if c in nodes.topology.input_column:
        mean_c = jnp.where(nodes.observed[c], mean_c, nodes.emean[c])
    mu, pi = _unbounded_posterior(
        nodes.emean[k], nodes.eprec[k], nodes.params.volatility_coupling[e],
        nodes.params.tonic_volatility[c], nodes.dt, nodes.prev_variance[c], mean_c,
        nodes.precision[c], nodes.emean[c], nodes.eprec[c], nodes.robust,
    )  # fmt: skip
    mu, pi = _bound_mean(nodes.robust, mu), _clip_precision(nodes, pi)
    if c in nodes.topology.input_column:
        observed = nodes.observed[c]
        return jnp.where(observed, mu, nodes.emean[k]), jnp.where(
            observed, pi, _lonely_precision(nodes, k)
        )
    return mu, pi


def _value_messages(nodes: _Nodes, k: int) -> tuple[jax.Array, jax.Array]:
    """Precision and (precision-weighted) mean shift node ``k`` receives from its
    observed value children."""
    topology, alphas = nodes.topology, nodes.params.value_coupling
    value_pi = value_mu = nodes.zero
    for e, c in topology.value_children[k]:
        alpha, o = alphas[e], nodes.observed[c]
        if nodes.relaxed and not topology.binary[c] and c not in topology.input_column:
            # Relaxed: the child's posterior is its prediction times a Gaussian
            # message from below (precision L = pi_c - pi^_c, mean mu^_c + pi_c
            # delta_c / L); passing that message up through the conditional
            # prediction x_c | x_b, of precision `cond`, is an exact Gaussian step.
            # Written without 1 / L so that L = 0 (no message) stays finite.
            message = nodes.precision[c] - nodes.eprec[c]
            if nodes.robust:
                message = jnp.maximum(message, 0.0)  # a message has no negative precision
            cond = nodes.cond[c]
            value_pi = value_pi + jnp.where(o, alpha**2 * message * cond / (message + cond), 0.0)
            value_mu = value_mu + jnp.where(
                o, alpha * nodes.precision[c] * nodes.vape[c] * cond / (message + cond), 0.0
            )
        else:
            value_pi = value_pi + jnp.where(o, alpha**2 * nodes.eprec[c], 0.0)
            value_mu = value_mu + jnp.where(o, alpha * nodes.eprec[c] * nodes.vape[c], 0.0)
    return value_pi, value_mu


def _volatility_messages(nodes: _Nodes, k: int) -> tuple[jax.Array, jax.Array]:
    """Standard-update precision gain and mean shift from the observed volatility children."""
    vol_pi = vol_mu = nodes.zero
    for e, c in nodes.topology.volatility_children[k]:
        kappa, o = nodes.params.volatility_coupling[e], nodes.observed[c]
        vol_pi = vol_pi + jnp.where(
            o, _volatility_precision_gain(kappa, nodes.gamma[c], nodes.vope[c]), 0.0
        )
        vol_mu = vol_mu + jnp.where(o, kappa * nodes.gamma[c] * nodes.vope[c] / 2.0, 0.0)
    return vol_pi, vol_mu


def _ehgf_volatility_gain(nodes: _Nodes, k: int, mu: jax.Array) -> jax.Array:
    """eHGF: the volatility children's precision gain evaluated again at node ``k``'s
    new mean ``mu`` (conditional on it: no relaxed term), each floored at 0."""
    topology, params = nodes.topology, nodes.params
    vol_pi = nodes.zero
    for e, c in topology.volatility_children[k]:
        kappa = params.volatility_coupling[e]
        log_vol = params.tonic_volatility[c] + kappa * mu
        for e2, p2 in topology.volatility_parents[c]:
            if p2 != k:
                log_vol = log_vol + params.volatility_coupling[e2] * nodes.emean[p2]
        omega_c = nodes.dt * jnp.exp(_bound_log_volatility(nodes.robust, log_vol))
        eprec_c = 1.0 / (nodes.prev_variance[c] + omega_c)
        gamma_c = omega_c * eprec_c
        vope_c = (eprec_c / nodes.precision[c] + eprec_c * nodes.vape[c] ** 2 - 1.0) / len(
            topology.volatility_parents[c]
        )
        gain = _volatility_precision_gain(kappa, gamma_c, vope_c)
        vol_pi = vol_pi + jnp.where(nodes.observed[c], jnp.maximum(gain, 0.0), 0.0)
    return vol_pi


def _posterior(nodes: _Nodes, k: int) -> tuple[jax.Array, jax.Array]:
    """Stage 3a: posterior (mean, precision) of node ``k`` from its children's errors."""
    updates = nodes.structure.volatility_updates
    has_volatility_children = bool(nodes.topology.volatility_children[k])
    if updates == "unbounded" and has_volatility_children:
        return _unbounded_update(nodes, k)
    value_pi, value_mu = _value_messages(nodes, k)
    vol_pi, vol_mu = _volatility_messages(nodes, k)
    emean, eprec = nodes.emean[k], nodes.eprec[k]
    if updates == "standard" or not has_volatility_children:
        pi = _clip_precision(nodes, eprec + value_pi + vol_pi)
        mu = emean + (value_mu + vol_mu) / pi
    else:
        # eHGF: the mean moves first, under the precision before the volatility
        # gain; the gain is then evaluated again at the new mean, floored at 0.
        mu = emean + (value_mu + vol_mu) / (eprec + value_pi)
        pi = _clip_precision(nodes, eprec + value_pi + _ehgf_volatility_gain(nodes, k, mu))
    mu = _bound_mean(nodes.robust, mu)
    # No child observed: the mean keeps its prediction and the precision decays.
    any_observed = _any_child_observed(nodes, k)
    return jnp.where(any_observed, mu, emean), jnp.where(
        any_observed, pi, _lonely_precision(nodes, k)
    )


def _prediction_errors(nodes: _Nodes, k: int) -> None:
    """Stage 3b: node ``k``'s value and volatility prediction errors (for its parents).

    A root sends none (pyhgf leaves them at 0). An input's error is 0 where its
    observation is missing (`where`: a masked NaN reaches neither values nor gradients).
    """
    topology = nodes.topology
    if not (topology.value_parents[k] or topology.volatility_parents[k]):
        return
    delta = nodes.mean[k] - nodes.emean[k]
    if k in topology.input_column:
        delta = jnp.where(nodes.observed[k], delta, 0.0)
    if topology.binary[k]:
        nodes.vape[k] = delta / nodes.eprec[k]
        return
    nodes.vape[k] = delta
    if topology.volatility_parents[k]:
        eprec = nodes.eprec[k]
        nodes.vope[k] = (eprec / nodes.precision[k] + eprec * delta**2 - 1.0) / len(
            topology.volatility_parents[k]
        )


def _update_beliefs(
    structure: Structure, robust: bool, params: Params, prev: Beliefs, u, obs, dt
) -> Beliefs:
    """One time step: beliefs after observing ``u`` [n_inputs] (mask ``obs``) after ``dt``."""
    if robust:
        dt = jnp.maximum(dt, _ROBUST_MIN_TIME_STEP)
        # A NaN or inf input counts as missing; it never reaches the arithmetic.
        obs = obs & jnp.isfinite(u)
    nodes = _Nodes(structure, robust, params, prev, dt)
    _predict(nodes)
    _observe(nodes, u, obs)
    topology = nodes.topology
    for k in structure.update_order:  # children first
        if topology.value_children[k] or topology.volatility_children[k]:
            nodes.mean[k], nodes.precision[k] = _posterior(nodes, k)
        _prediction_errors(nodes, k)
    return nodes.beliefs()


class _Inputs(NamedTuple):
    """What the scan reads per step; a field is ``None`` when the caller gave no such
    array, and the step then uses a constant (every input observed, ``dt = 1``) that XLA
    folds into the step's arithmetic (``where(True, a, b)``, ``log 1``, ``1 * x``)."""

    index: jax.Array | None  # [T] int32 step index (only with ``length``)
    inputs: jax.Array  # [T, n_inputs]
    observed: jax.Array | None  # [T, n_inputs] bool, or None: all observed
    time_steps: jax.Array | None  # [T], or None: all 1


def _step_body(structure: Structure, robust: bool, carry, xs: _Inputs):
    """Scan body of :func:`run`: carries ``(params, length, beliefs)`` and emits the
    beliefs; with ``length`` (``xs.index`` given) steps ``index >= length`` keep them."""
    params, length, beliefs = carry
    dtype = beliefs.mean.dtype
    n_in = len(structure.input_nodes)
    obs = jnp.ones((n_in,), bool) if xs.observed is None else xs.observed
    dt = jnp.ones((), dtype) if xs.time_steps is None else xs.time_steps
    new = _update_beliefs(structure, robust, params, beliefs, xs.inputs, obs, dt)
    if xs.index is not None:
        # Padding rows keep the carried beliefs (`where`, not arithmetic: NaN-safe).
        new = jax.tree.map(lambda a, b: jnp.where(xs.index < length, a, b), new, beliefs)
    return (params, length, new), new


@functools.lru_cache(maxsize=128)
def _cached_scan_body(structure: Structure, robust: bool, rematerialise: bool):
    body = functools.partial(_step_body, structure, robust)
    return jax.checkpoint(body, prevent_cse=False) if rematerialise else body


def _under_vmap(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is batched by ``jax.vmap`` (looking through the
    tangent wrappers of ``grad``); True when JAX's tracer classes cannot be found."""
    try:
        from jax._src.interpreters import ad, batching
    except ImportError:  # pragma: no cover - moved in some JAX version
        return True
    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, ad.JVPTracer):
            leaf = leaf.primal
        if isinstance(leaf, batching.BatchTracer):
            return True
    return False


def _scan_body(structure: Structure, robust: bool, batched: bool = False):
    """The scan body for ``(structure, robust)``: one function object per configuration,
    so that repeated (eager) calls hit JAX's tracing caches instead of re-tracing.

    Where XLA:CPU compiles the scan into one kernel (the small-loop option that
    ``import lookahead_jax`` sets, and no ``vmap`` over subjects making the step too
    large for it), reverse mode reads each step's saved intermediates as plain loads:
    measured 1.8x faster than recomputing the step (value and gradient of a 1,000-step
    unbounded HGF, 2 cores). Elsewhere the body is rematerialised: the backward scan
    then reads back only the carried beliefs per step instead of every intermediate
    (hundreds of slices per step, each its own operation), which made gradients ~20x
    slower than the forward pass; under ``vmap`` over 1,000 subjects, 1.3x. Same
    gradients either way.
    """
    in_one_kernel = (
        not batched and jax.default_backend() == "cpu" and _xla_cpu.small_loop_kernels() is not None
    )
    return _cached_scan_body(structure, robust, not in_one_kernel)


# --------------------------------------------------------------------------- checks


def _check_model(structure: Structure, params, beliefs) -> None:
    """Trace-time checks: the structure is complete, parameters and beliefs fit it."""
    check_complete(structure)
    n = structure.num_nodes
    sizes = {
        "tonic_volatility": (n, "one per node"),
        "tonic_drift": (n, "one per node"),
        "autoconnection_strength": (n, "one per node"),
        "value_coupling": (len(structure.value_edges), "one per value edge"),
        "volatility_coupling": (len(structure.volatility_edges), "one per volatility edge"),
    }
    for name, (size, meaning) in sizes.items():
        _checks.check_shape(f"params.{name}", getattr(params, name), (size,), meaning)
    for name in Beliefs._fields:
        _checks.check_shape(f"beliefs.{name}", getattr(beliefs, name), (n,), "one per node")


def _check_inputs(structure: Structure, params, beliefs, inputs, observed, time_steps):
    """Trace-time checks: shapes of the parameters, beliefs, inputs, mask and time steps."""
    _check_model(structure, params, beliefs)
    n_in = len(structure.input_nodes)
    _checks.check_rank("inputs", inputs, 2, "[time, number of input nodes]")
    t = jnp.shape(inputs)[0]
    _checks.check_shape(
        "inputs", inputs, (None, n_in), f"one column per input node {structure.input_nodes}"
    )
    if observed is not None:
        _checks.check_shape("observed", observed, (t, n_in), "[time, number of input nodes]")
    if time_steps is not None:
        _checks.check_shape("time_steps", time_steps, (t,), "one time step per row of `inputs`")


def _first_failure(xp, ok, values, message: str, columns: int | None = None) -> None:
    """``checks.check_value(all(ok), ...)`` naming the first failing entry of ``values``."""
    flat_ok, flat_values = ok.reshape(-1), values.reshape(-1)
    index = xp.argmin(flat_ok)  # the first False (0 when all hold: then nothing is shown)
    shown = {"value": flat_values[index]}
    if columns is None:
        shown["step"] = index
    else:
        shown["step"], shown["column"] = index // columns, index % columns
    checks.check_value(xp.all(flat_ok), message, **shown)


def check_values(
    structure: Structure,
    inputs: Any,
    observed: Any = None,
    time_steps: Any = None,
    *,
    robust: bool = False,
    length: Any = None,
) -> None:
    """The value checks of :func:`run` (see :mod:`lookahead_jax.checks`).

    On concrete arrays (NumPy or eager JAX) a ``ValueError`` is raised at once; on
    traced ones the checks run under ``lookahead_jax.checked(...)`` and cost nothing
    under a plain ``jit``. Rows at or after ``length`` (padding) are not checked.

    Raises:
      ValueError: a time step that is not finite and > 0; an observed value of a binary
        input that is not 0 or 1; in parity mode (``robust=False``) an observed value
        that is not finite (mark it missing with ``observed = 0``, or use ``robust``,
        which treats non-finite inputs as missing).
    """
    arrays = {"inputs": inputs, "observed": observed, "time_steps": time_steps, "length": length}
    concrete = {k: _checks.concrete_value(v) for k, v in arrays.items() if v is not None}
    if all(v is not None for v in concrete.values()):
        xp = np  # everything is known: check on the host, no device dispatch
        arrays.update(concrete)
    else:
        xp = jnp
    inputs, observed, time_steps, length = (arrays[k] for k in arrays)
    t, n_in = inputs.shape
    real = None if length is None else xp.arange(t) < length  # [T] steps that are not padding
    if time_steps is not None:
        ok = (time_steps > 0) & xp.isfinite(time_steps)
        if real is not None:
            ok = ok | ~real
        _first_failure(
            xp,
            ok,
            time_steps,
            "`time_steps` must be finite and > 0 (the time elapsed since the previous "
            "observation); got {value} at step {step}.",
        )
    seen = xp.ones((t, n_in), bool) if observed is None else observed.astype(bool)
    if real is not None:
        seen = seen & real[:, None]
    finite = xp.isfinite(inputs)
    if robust:
        seen = seen & finite  # robust mode treats a non-finite input as missing
    else:
        _first_failure(
            xp,
            ~seen | finite,
            inputs,
            "`inputs` must be finite where `observed` is 1 (mark a missing observation "
            "with `observed=0`, or pass `robust=True`); got {value} at step {step}, "
            "column {column}.",
            columns=n_in,
        )
    for column, node in enumerate(structure.input_nodes):
        if structure.kinds[node] != BINARY:
            continue
        u = inputs[:, column]
        _first_failure(
            xp,
            ~seen[:, column] | (u == 0) | (u == 1),
            u,
            f"`inputs` column {column} feeds {BINARY} node {node}: observed values must "
            "be 0 or 1; got {value} at step {step}.",
        )


# --------------------------------------------------------------------------- the contract


def step(
    key: jax.Array | None,
    state: Beliefs,
    params: Params,
    observation: jax.Array,
    observed: jax.Array | None = None,
    time_step: jax.Array | float | None = None,
    *,
    structure: Structure,
    robust: bool = False,
) -> tuple[Beliefs, HGFInfo]:
    """One observation: the beliefs after it and the step's diagnostics.

    Args:
      key: unused (the HGF is deterministic; taken first for the library's uniform
        contract); ``None`` is fine.
      state: the beliefs before the observation (from :func:`init` or the last step).
      params: the parameters.
      observation: ``[n_inputs]`` one value per input node, in increasing node order.
      observed: ``[n_inputs]`` mask (bool or 0/1); 0 marks a missing value. Default all.
      time_step: time elapsed since the previous observation (> 0). Default 1.
      structure: the static network (keyword; pass it with ``static_argnames``).
      robust: see :func:`run`.
    Returns:
      ``(beliefs, info)``; ``info`` fields are ``[N]``. ``T`` calls equal one :func:`run`
      over the ``T`` rows.
    Raises:
      ValueError: wrong shapes (at trace time), or bad values (see :func:`check_values`).
    """
    del key  # deterministic
    n_in = len(structure.input_nodes)
    _checks.check_shape("observation", observation, (n_in,), "one value per input node")
    if observed is not None:
        _checks.check_shape("observed", observed, (n_in,), "one flag per input node")
    if time_step is not None:
        _checks.check_shape("time_step", time_step, (), "a scalar")
    _check_model(structure, params, state)
    dtype = jnp.result_type(*jax.tree.leaves(state))
    u = jnp.asarray(observation, dtype)
    obs = jnp.ones((n_in,), bool) if observed is None else jnp.asarray(observed).astype(bool)
    dt = jnp.ones((), dtype) if time_step is None else jnp.asarray(time_step, dtype)
    check_values(structure, u[None], obs[None], dt[None], robust=robust)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    new = _update_beliefs(structure, robust, params, state, u, obs, dt)
    info = step_info(
        structure, params, state, jax.tree.map(lambda x: x[None], new),
        u[None], obs[None], dt[None], robust,
    )  # fmt: skip
    return new, jax.tree.map(lambda x: x[0], info)


def run(
    key: jax.Array | None,
    state: Beliefs,
    params: Params,
    inputs: jax.Array,
    observed: jax.Array | None = None,
    time_steps: jax.Array | None = None,
    *,
    structure: Structure,
    length: jax.Array | int | None = None,
    robust: bool = False,
) -> tuple[Beliefs, Trajectories]:
    """Runs the network over a series in one ``lax.scan`` of the step.

    Args:
      key: unused (the HGF is deterministic; taken first for the library's uniform
        contract); ``None`` is fine.
      state: the initial beliefs (before the first observation), from :func:`init`.
      params: the parameters.
      inputs: ``[T, n_inputs]`` observations, one column per input node in increasing
        node order (binary input nodes take 0/1).
      observed: ``[T, n_inputs]`` mask (bool or 0/1); 0 marks a missing observation,
        which is skipped whatever value stands in ``inputs`` (NaN included).
        Default: all observed.
      time_steps: ``[T]`` time elapsed since the previous observation (> 0). Default: ones.
      structure: the static network (keyword; pass it with ``static_argnames``).
      length: number of real steps (a traced int is fine); steps ``t >= length`` are
        padding: they leave the beliefs unchanged and their trajectory rows repeat the
        last real step. Lets series of different lengths share one compiled program
        (pad them to a common bucket) and ``vmap`` over ragged subjects. Default: ``T``.
      robust: floor precisions, bound log-volatilities and treat non-finite inputs as
        missing, so that no parameter draw produces NaN or inf (not pyhgf's numbers).
    Returns:
      ``(final beliefs, trajectories)``, trajectories stacked over ``T``. The scan
      carries the beliefs only; the diagnostics are computed after it, vectorised
      over time, with the same formulas as :func:`step` (emitting them from inside
      the loop made a step up to 10x slower on CPU).
    Raises:
      ValueError: when ``inputs``, ``observed`` or ``time_steps`` have the wrong shape
        (at trace time), or bad values (see :func:`check_values`).
    """
    del key  # deterministic
    _check_inputs(structure, params, state, inputs, observed, time_steps)
    dtype = jnp.result_type(*jax.tree.leaves(state))
    inputs = jnp.asarray(inputs, dtype)
    t = inputs.shape[0]
    observed_given, time_steps_given = observed, time_steps
    observed = (
        jnp.ones(inputs.shape, bool) if observed is None else jnp.asarray(observed).astype(bool)
    )
    time_steps = jnp.ones((t,), dtype) if time_steps is None else jnp.asarray(time_steps, dtype)
    check_values(structure, inputs, observed, time_steps, robust=robust, length=length)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    # A mask or time steps the caller did not give are constants inside the step (XLA
    # folds them away), not arrays the loop reads: fewer operations per step.
    xs = _Inputs(
        index=None if length is None else jnp.arange(t),
        inputs=inputs,
        observed=None if observed_given is None else observed,
        time_steps=None if time_steps_given is None else time_steps,
    )
    carry = (params, None if length is None else jnp.asarray(length), state)
    body = _scan_body(structure, robust, batched=_under_vmap((carry, xs)))
    (_, _, final), trajectory = lax.scan(body, carry, xs)
    info = step_info(structure, params, state, trajectory, inputs, observed, time_steps, robust)
    return final, Trajectories(beliefs=trajectory, info=info)


def filter_series(
    structure: Structure,
    params: Params,
    beliefs: Beliefs,
    inputs: jax.Array,
    observed: jax.Array | None = None,
    time_steps: jax.Array | None = None,
    *,
    length: jax.Array | int | None = None,
    robust: bool = False,
) -> tuple[Beliefs, Trajectories]:
    """:func:`run` without the key, structure first: ``filter_series(structure, params,
    beliefs, inputs, observed, time_steps)`` (positional arguments suit ``jax.vmap``'s
    ``in_axes`` and ``static_argnums=0``). Same arguments, results and errors as ``run``.
    """
    return run(
        None, beliefs, params, inputs, observed, time_steps,
        structure=structure, length=length, robust=robust,
    )  # fmt: skip


# deprecated alias of filter_series, kept for existing code (the name shadowed the builtin)
filter = filter_series


def step_info(
    structure: Structure,
    params: Params,
    initial: Beliefs,
    trajectory: Beliefs,
    inputs: jax.Array,
    observed: jax.Array,
    time_steps: jax.Array,
    robust: bool = False,
) -> HGFInfo:
    """The per-step diagnostics, recomputed from the belief trajectories (``[T, N]``).

    Same formulas as inside the step, vectorised over time: each quantity is a
    function of the step's beliefs, the previous posterior precision and the inputs.
    """
    n = structure.num_nodes
    dtype = trajectory.mean.dtype
    inputs_set = set(structure.input_nodes)
    relaxed = not structure.mean_field_updates
    prev_precision = jnp.concatenate([initial.precision[None], trajectory.precision[:-1]], 0)
    dt = jnp.maximum(time_steps, _ROBUST_MIN_TIME_STEP) if robust else time_steps
    mean, emean, eprec = trajectory.mean, trajectory.expected_mean, trajectory.expected_precision
    zero = jnp.zeros_like(time_steps, dtype)
    gamma, vape, vope, cond, seen = [], [], [], [], []
    for k in range(n):
        value_parents = structure.value_parents(k)
        volatility_parents = structure.volatility_parents(k)
        binary = structure.kinds[k] == BINARY
        if binary or (k in inputs_set and not volatility_parents):
            cond.append(eprec[:, k])
            gamma.append(zero)
        else:
            log_vol = params.tonic_volatility[k] + zero
            for e, p in volatility_parents:
                kappa = params.volatility_coupling[e]
                log_vol = log_vol + kappa * emean[:, p]
                if relaxed:
                    log_vol = log_vol + kappa**2 / (2.0 * eprec[:, p])
            if robust:
                log_vol = jnp.clip(log_vol, -_ROBUST_LOG_VOLATILITY, _ROBUST_LOG_VOLATILITY)
            omega = dt * jnp.exp(log_vol)
            cond.append(1.0 / (1.0 / prev_precision[:, k] + omega))
            gamma.append(omega * eprec[:, k])
        if not (value_parents or volatility_parents):
            vape.append(zero)
            vope.append(zero)
        elif binary:
            vape.append((mean[:, k] - emean[:, k]) / eprec[:, k])
            vope.append(zero)
        else:
            delta = mean[:, k] - emean[:, k]
            vape.append(delta)
            if volatility_parents:
                vope.append(
                    (eprec[:, k] / trajectory.precision[:, k] + eprec[:, k] * delta**2 - 1.0)
                    / len(volatility_parents)
                )
            else:
                vope.append(zero)
        if k in inputs_set:
            column = structure.input_nodes.index(k)
            ok = observed[:, column]
            seen.append(ok & jnp.isfinite(inputs[:, column]) if robust else ok)
        else:
            seen.append(jnp.ones_like(time_steps, bool))
    return HGFInfo(
        effective_precision=jnp.stack(gamma, -1),
        value_prediction_error=jnp.stack(vape, -1),
        volatility_prediction_error=jnp.stack(vope, -1),
        conditional_expected_precision=jnp.stack(cond, -1),
        current_variance=1.0 / prev_precision,
        observed=jnp.stack(seen, -1),
    )
