"""The pure core of an HGF network: parameter and belief pytrees and ``filter`` as one ``lax.scan``.

``filter(structure, params, beliefs, inputs, observed, time_steps)`` runs the
whole series in one scan. The :class:`~.structure.Structure` is static (hashable,
pass it with ``static_argnums`` or close over it); ``params`` and ``beliefs`` are
plain pytrees of arrays, so ``jax.grad``, ``jax.vmap`` (over subjects) and
sharding work on them directly. The library never jits: callers choose.

One time step, in order (Mathys et al. 2011, 2014; Weber et al. for the eHGF
and unbounded volatility updates):

1. prediction, parents first: every node's ``expected_mean`` and
   ``expected_precision`` (and the effective precision its volatility parents use);
2. the observations are written into the input nodes' ``mean``;
3. bottom-up, children first: a node's posterior from its children's prediction
   errors, then its own value and volatility prediction errors.

``mean_field_updates=False`` ("relaxed", pyhgf's default) differs from the
mean-field updates in two places: a node's predicted log-volatility adds
``kappa^2 / (2 pi^_parent)`` per volatility parent and its predicted variance adds
``(dt alpha)^2 / pi^_parent`` per value parent; and a value parent of a continuous
state node (not an input) is updated by the exact Gaussian message of that child
(see ``posterior``). Both were identified against pyhgf's outputs, which the tests
match to ~1e-10 relative in float64.

The diagnostics (:class:`StepInfo`, pyhgf's ``temp`` fields) are recomputed from
the belief trajectories after the scan (:func:`step_info`), which keeps the loop
body small.

Parity mode (the default) reproduces pyhgf 0.3.2, warts included: a precision at
or below 1e-128 becomes NaN and NaN inputs propagate. ``robust=True`` floors
precisions, bounds log-volatilities and masks missing inputs with ``where``
(not ``0 * x``), so that no parameter draw produces NaN or inf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lookahead_jax import _checks
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
    """Beliefs of every node at one time step (the carried state of the scan)."""

    mean: jax.Array  # [N] posterior mean mu (an input node holds the observation)
    precision: jax.Array  # [N] posterior precision pi
    expected_mean: jax.Array  # [N] predicted mean mu^
    expected_precision: jax.Array  # [N] predicted precision pi^


class StepInfo(NamedTuple):
    """Diagnostics per node (never fed back); pyhgf's ``temp`` fields. Returned by
    ``filter`` stacked over time ([T, N] each), recomputed after the scan."""

    effective_precision: jax.Array  # [N] gamma = Omega pi^ (0 without volatility)
    value_prediction_error: jax.Array  # [N] delta = mu - mu^ (binary: delta / (mu^ (1 - mu^)))
    volatility_prediction_error: jax.Array  # [N] Delta = pi^/pi + pi^ delta^2 - 1 (per vol. parent)
    conditional_expected_precision: jax.Array  # [N] pi^ without the value parents' variance
    current_variance: jax.Array  # [N] posterior variance at the previous step, 1 / pi_{t-1}
    observed: jax.Array  # [N] bool, whether the node received an observation (non-inputs: True)


class Trajectories(NamedTuple):
    """Everything ``filter`` records, stacked over the ``T`` time steps."""

    beliefs: Beliefs  # each field [T, N]
    info: StepInfo  # each field [T, N]


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


# --------------------------------------------------------------------------- Lambert W


@jax.custom_jvp
def _lambertw_of_exp(z: jax.Array) -> jax.Array:
    """W0(exp(z)) for real z, without forming exp(z) (which overflows for z > 709).

    Starts from Winitzki's approximation W(x) ~ L (1 - log(1 + L) / (2 + L)) with
    L = log(1 + x) = softplus(z) (within 0.5% for every x > 0), then solves
    w + log(w) = z by 3 Halley steps (cubic convergence: rounding level in float64,
    checked in the tests).
    """
    big = jax.nn.softplus(z)
    w = big * (1.0 - jnp.log1p(big) / (2.0 + big))
    for _ in range(3):
        # f(w) = w + log w - z, f' = 1 + 1/w, f'' = -1/w^2 (Halley).
        f = w + jnp.log(w) - z
        fp = 1.0 + 1.0 / w
        fpp = -1.0 / (w * w)
        w = w - f / (fp - f * fpp / (2.0 * fp))
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
    g = jnp.log(dt) + kappa * expected_mean_b + omega_c
    # Expansion 1, at the prediction.
    w = jax.nn.sigmoid(g - jnp.log(v_prev))
    d = expected_precision_c * b_stat - 1.0
    pi1 = expected_precision_b + kappa**2 * w * (1.0 - w) / 2.0
    mu1 = expected_mean_b + kappa * w * d / (2.0 * pi1)
    # Expansion 2, at the approximate mode of the log joint (v_prev neglected).
    pi_y = expected_precision_b / kappa**2
    arg = jnp.log(b_stat) - jnp.log(2.0 * pi_y) + 1.0 / (2.0 * pi_y) - g
    x = (g + _lambertw_of_exp(arg) - 1.0 / (2.0 * pi_y) - jnp.log(dt) - omega_c) / kappa
    s2 = dt * jnp.exp(bound(kappa * x + omega_c))
    w2 = s2 / (v_prev + s2)
    d2 = b_stat / (v_prev + s2) - 1.0
    pi2 = expected_precision_b + kappa**2 * w2 * (w2 + (2.0 * w2 - 1.0) * d2) / 2.0
    pi2 = jnp.where(pi2 <= 0.0, expected_precision_b + kappa**2 * w2 * (1.0 - w2) / 2.0, pi2)
    mu2 = x + (kappa * w2 * d2 / 2.0 - expected_precision_b * (x - expected_mean_b)) / pi2
    finite = jnp.isfinite(mu2) & jnp.isfinite(pi2)
    mu2 = jnp.where(finite, mu2, mu1)
    pi2 = jnp.where(finite, pi2, pi1)

    def log_joint(m):
        var = v_prev + dt * jnp.exp(bound(kappa * m + omega_c))
        return (
            -jnp.log(var) / 2.0
            - b_stat / (2.0 * var)
            - expected_precision_b * (m - expected_mean_b) ** 2 / 2.0
        )

    blend = jax.nn.sigmoid(log_joint(mu2) - log_joint(mu1))
    mean = (1.0 - blend) * mu1 + blend * mu2
    var = (1.0 - blend) / pi1 + blend / pi2 + blend * (1.0 - blend) * (mu1 - mu2) ** 2
    return mean, 1.0 / var


def _make_step(structure: Structure, params: Params, robust: bool):
    """The scan body for ``structure`` (node loops unrolled at trace time).

    It carries and emits the beliefs only: the diagnostics (:class:`StepInfo`) are
    recomputed from the belief trajectories after the scan by :func:`step_info`,
    vectorised over time. Emitting them from inside the loop made a step up to 10x
    slower on CPU (XLA fuses the loop body far less when it has many outputs).
    """
    n = structure.num_nodes
    inputs = structure.input_nodes
    input_column = {node: i for i, node in enumerate(inputs)}
    binary = [kind == BINARY for kind in structure.kinds]
    value_parents = [structure.value_parents(k) for k in range(n)]
    volatility_parents = [structure.volatility_parents(k) for k in range(n)]
    value_children = [structure.value_children(k) for k in range(n)]
    volatility_children = [structure.volatility_children(k) for k in range(n)]
    relaxed = not structure.mean_field_updates
    updates = structure.volatility_updates
    max_precision = structure.max_posterior_precision
    eps = structure.precision_clipping_value

    def clip_precision(pi):
        pi = jnp.minimum(pi, max_precision)
        if robust:
            return jnp.maximum(jnp.nan_to_num(pi, nan=_ROBUST_MIN_PRECISION), _ROBUST_MIN_PRECISION)
        return jnp.where(pi <= _PRECISION_UNDERFLOW, jnp.nan, pi)

    def bound_log_volatility(v):
        return jnp.clip(v, -_ROBUST_LOG_VOLATILITY, _ROBUST_LOG_VOLATILITY) if robust else v

    def bound_mean(mu):
        return jnp.clip(mu, -_ROBUST_MAX_MEAN, _ROBUST_MAX_MEAN) if robust else mu

    def floor_precision(pi):
        return jnp.maximum(pi, _ROBUST_MIN_PRECISION) if robust else pi

    def step(carry, xs):
        prev = carry
        u, obs, dt = xs
        if robust:
            dt = jnp.maximum(dt, _ROBUST_MIN_TIME_STEP)
            # A NaN or inf input counts as missing; it never reaches the arithmetic.
            obs = obs & jnp.isfinite(u)
        mean = [prev.mean[k] for k in range(n)]
        prev_variance = [1.0 / prev.precision[k] for k in range(n)]
        precision = [prev.precision[k] for k in range(n)]
        emean = [prev.expected_mean[k] for k in range(n)]
        eprec = [prev.expected_precision[k] for k in range(n)]
        zero = jnp.zeros_like(prev.mean[0])
        gamma = [zero] * n
        vape = [zero] * n
        vope = [zero] * n
        observed = [jnp.asarray(True)] * n
        cond = list(eprec)  # precision predicted given the parents' values (no relaxed terms)

        def log_volatility(k, use_expected_parents=True, relaxed_term=True):
            v = params.tonic_volatility[k]
            for e, p in volatility_parents[k]:
                kappa = params.volatility_coupling[e]
                v = v + kappa * (emean[p] if use_expected_parents else mean[p])
                if relaxed and relaxed_term:
                    v = v + kappa**2 / (2.0 * eprec[p])
            return bound_log_volatility(v)

        # 1. Prediction, parents first.
        for k in structure.prediction_order:
            if binary[k]:
                ((e, p),) = value_parents[k]
                mu_hat = jax.nn.sigmoid(params.value_coupling[e] * emean[p])
                mu_hat = jnp.clip(mu_hat, eps, 1.0 - eps)
                emean[k] = mu_hat
                eprec[k] = cond[k] = mu_hat * (1.0 - mu_hat)
                continue
            is_input = k in input_column
            drive = zero if is_input else params.tonic_drift[k]
            for e, p in value_parents[k]:
                drive = drive + params.value_coupling[e] * emean[p]
            lam = zero if is_input else params.autoconnection_strength[k]
            emean[k] = bound_mean(lam * mean[k] + dt * drive)
            if is_input and not volatility_parents[k]:
                # An input without volatility parent: its precision is the observation precision.
                eprec[k] = cond[k] = precision[k]
                continue
            omega = dt * jnp.exp(log_volatility(k))
            variance = 1.0 / precision[k] + omega
            cond[k] = 1.0 / variance
            if relaxed and not is_input:
                # Relaxed (not mean-field): the value parents' predictive variance
                # propagates, Var(dt alpha x_b) = (dt alpha)^2 / pi^_b.
                for e, p in value_parents[k]:
                    variance = variance + (dt * params.value_coupling[e]) ** 2 / eprec[p]
            eprec[k] = floor_precision(1.0 / variance)
            gamma[k] = omega * eprec[k]

        # 2. Observations into the input nodes.
        for node, i in input_column.items():
            observed[node] = obs[i]
            if robust:
                # A missing input keeps its prediction (`where`, not `0 * x`: NaN-safe).
                mean[node] = jnp.where(
                    obs[i], jnp.where(jnp.isfinite(u[i]), u[i], 0.0), emean[node]
                )
            else:
                mean[node] = u[i]
            if binary[node]:
                precision[node] = eprec[node]

        def posterior(k):
            obs_value = [(e, c, observed[c]) for e, c in value_children[k]]
            obs_vol = [(e, c, observed[c]) for e, c in volatility_children[k]]
            any_observed = jnp.asarray(False)
            for _, _, o in obs_value + obs_vol:
                any_observed = any_observed | o
            # No child observed: the mean keeps its prediction and the precision decays
            # as the random walk's variance grows.
            lonely_pi = clip_precision(
                1.0 / (1.0 / precision[k] + dt * jnp.exp(log_volatility(k, False, False)))
            )
            if updates == "unbounded" and obs_vol:
                # pyhgf reads the first volatility child only and ignores the observed
                # flags; robust mode honours them (an unobserved child carries no news).
                e, c, _ = obs_vol[0]
                mu, pi = _unbounded_posterior(
                    emean[k], eprec[k], params.volatility_coupling[e], params.tonic_volatility[c],
                    dt, prev_variance[c], mean[c], precision[c], emean[c], eprec[c], robust,
                )  # fmt: skip
                mu, pi = bound_mean(mu), clip_precision(pi)
                if robust:
                    return jnp.where(obs_vol[0][2], mu, emean[k]), jnp.where(
                        obs_vol[0][2], pi, lonely_pi
                    )
                return mu, pi
            value_pi = zero
            value_mu = zero
            for e, c, o in obs_value:
                alpha = params.value_coupling[e]
                if relaxed and not binary[c] and c not in input_column:
                    # Relaxed: the child's posterior is its prediction times a Gaussian
                    # message from below (precision L = pi_c - pi^_c, mean mu^_c + pi_c
                    # delta_c / L); passing that message up through the conditional
                    # prediction x_c | x_b, of precision `cond`, is an exact Gaussian step.
                    # Written without 1 / L so that L = 0 (no message) stays finite.
                    message = precision[c] - eprec[c]
                    if robust:
                        message = jnp.maximum(message, 0.0)  # a message has no negative precision
                    value_pi = value_pi + jnp.where(
                        o, alpha**2 * message * cond[c] / (message + cond[c]), 0.0
                    )
                    value_mu = value_mu + jnp.where(
                        o, alpha * precision[c] * vape[c] * cond[c] / (message + cond[c]), 0.0
                    )
                else:
                    value_pi = value_pi + jnp.where(o, alpha**2 * eprec[c], 0.0)
                    value_mu = value_mu + jnp.where(o, alpha * eprec[c] * vape[c], 0.0)
            vol_pi = zero
            vol_mu = zero
            for e, c, o in obs_vol:
                kappa = params.volatility_coupling[e]
                vol_pi = vol_pi + jnp.where(
                    o, _volatility_precision_gain(kappa, gamma[c], vope[c]), 0.0
                )
                vol_mu = vol_mu + jnp.where(o, kappa * gamma[c] * vope[c] / 2.0, 0.0)
            if updates == "standard" or not obs_vol:
                pi = clip_precision(eprec[k] + value_pi + vol_pi)
                mu = emean[k] + (value_mu + vol_mu) / pi
            else:
                # eHGF: the mean moves first, under the precision before the volatility
                # gain; the gain is then evaluated again at the new mean, floored at 0.
                mu = emean[k] + (value_mu + vol_mu) / (eprec[k] + value_pi)
                vol_pi = zero
                for e, c, o in obs_vol:
                    kappa = params.volatility_coupling[e]
                    log_vol = params.tonic_volatility[c] + kappa * mu
                    # Conditional on the parent sitting at its new mean: no relaxed term.
                    for e2, p2 in volatility_parents[c]:
                        if p2 != k:
                            log_vol = log_vol + params.volatility_coupling[e2] * emean[p2]
                    omega_c = dt * jnp.exp(bound_log_volatility(log_vol))
                    eprec_c = 1.0 / (prev_variance[c] + omega_c)
                    gamma_c = omega_c * eprec_c
                    vope_c = (eprec_c / precision[c] + eprec_c * vape[c] ** 2 - 1.0) / len(
                        volatility_parents[c]
                    )
                    gain = _volatility_precision_gain(kappa, gamma_c, vope_c)
                    vol_pi = vol_pi + jnp.where(o, jnp.maximum(gain, 0.0), 0.0)
                pi = clip_precision(eprec[k] + value_pi + vol_pi)
            mu = bound_mean(mu)
            return jnp.where(any_observed, mu, emean[k]), jnp.where(any_observed, pi, lonely_pi)

        # 3. Posteriors and prediction errors, children first.
        for k in structure.update_order:
            if value_children[k] or volatility_children[k]:
                mean[k], precision[k] = posterior(k)
            if not (value_parents[k] or volatility_parents[k]):
                continue  # a root has no prediction error to send (pyhgf leaves it at 0)
            if binary[k]:
                vape[k] = (mean[k] - emean[k]) / eprec[k]
            else:
                vape[k] = mean[k] - emean[k]
                if volatility_parents[k]:
                    vope[k] = (eprec[k] / precision[k] + eprec[k] * vape[k] ** 2 - 1.0) / len(
                        volatility_parents[k]
                    )

        new = Beliefs(
            mean=jnp.stack(mean),
            precision=jnp.stack(precision),
            expected_mean=jnp.stack(emean),
            expected_precision=jnp.stack(eprec),
        )
        return new, new

    return step


def _check_inputs(structure: Structure, params, beliefs, inputs, observed, time_steps):
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


def filter(
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
    """Runs the network over a series in one ``lax.scan``.

    Args:
      structure: the static network (from :class:`~.network.Network` or built directly).
      params: the parameters.
      beliefs: the initial beliefs (before the first observation).
      inputs: ``[T, n_inputs]`` observations, one column per input node in increasing
        node order (binary input nodes take 0/1).
      observed: ``[T, n_inputs]`` mask (bool or 0/1); 0 marks a missing observation.
        Default: all observed.
      time_steps: ``[T]`` time elapsed since the previous observation. Default: ones.
      length: number of real steps (a traced int is fine); steps ``t >= length`` are
        padding: they leave the beliefs unchanged and their trajectory rows repeat the
        last real step. Lets series of different lengths share one compiled program
        (pad them to a common bucket) and ``vmap`` over ragged subjects. Default: ``T``.
      robust: floor precisions, bound log-volatilities and mask missing inputs with
        ``where`` so that no parameter draw produces NaN or inf (not pyhgf's numbers).
    Returns:
      ``(final beliefs, trajectories)``, trajectories stacked over ``T``.
    Raises:
      ValueError: when ``inputs``, ``observed`` or ``time_steps`` have the wrong shape.
    """
    _check_inputs(structure, params, beliefs, inputs, observed, time_steps)
    dtype = jnp.result_type(*jax.tree.leaves(beliefs))
    inputs = jnp.asarray(inputs, dtype)
    t = inputs.shape[0]
    observed = (
        jnp.ones(inputs.shape, bool) if observed is None else jnp.asarray(observed).astype(bool)
    )
    time_steps = jnp.ones((t,), dtype) if time_steps is None else jnp.asarray(time_steps, dtype)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    # Rematerialise the step in reverse mode: the backward scan then reads back only
    # the carried beliefs per step instead of every scalar intermediate (hundreds of
    # slices per step), which made gradients ~20x slower than the forward pass.
    step = jax.checkpoint(_make_step(structure, params, robust), prevent_cse=False)
    xs = (inputs, observed, time_steps)
    if length is None:
        final, trajectory = lax.scan(step, beliefs, xs)
    else:

        def padded_step(carry, indexed):
            index, row = indexed
            new, _ = step(carry, row)
            # Padding rows keep the carried beliefs (`where`, not arithmetic: NaN-safe).
            new = jax.tree.map(lambda a, b: jnp.where(index < length, a, b), new, carry)
            return new, new

        final, trajectory = lax.scan(padded_step, beliefs, (jnp.arange(t), xs))
    info = step_info(structure, params, beliefs, trajectory, inputs, observed, time_steps, robust)
    return final, Trajectories(beliefs=trajectory, info=info)


def step_info(
    structure: Structure,
    params: Params,
    initial: Beliefs,
    trajectory: Beliefs,
    inputs: jax.Array,
    observed: jax.Array,
    time_steps: jax.Array,
    robust: bool = False,
) -> StepInfo:
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
    return StepInfo(
        effective_precision=jnp.stack(gamma, -1),
        value_prediction_error=jnp.stack(vape, -1),
        volatility_prediction_error=jnp.stack(vope, -1),
        conditional_expected_precision=jnp.stack(cond, -1),
        current_variance=1.0 / prev_precision,
        observed=jnp.stack(seen, -1),
    )
