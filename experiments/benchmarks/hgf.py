"""lookahead_jax's HGF side by side with pyhgf 0.3.2: parity, speed, batching, gradients, NaNs.

Behind ``experiments/compare_pyhgf.py``. pyhgf needs Python >= 3.12 and jax < 0.7,
so it runs in its own virtual environment
(``config.pyhgf_venv``; created with ``config.python312`` and pip if missing, and
skipped with a message if that is impossible). This file is also the worker that
runs there: ``python -P hgf.py --pyhgf-worker REQUEST.json RESULT.json``, which is why
only the standard library is imported at module level (pyhgf's environment has
neither this package nor ml_collections). Both libraries get the same inputs and
the same parameter draws, and are timed the same way:

* parity: per case (2- and 3-level continuous HGF on USD-CHF, 3-level binary HGF on
  the Iglesias et al. outcomes, a network with every feature), update variant and
  dtype, the worst relative error of each belief field over nodes and time against
  pyhgf's float64 run (and, in float32, pyhgf's own float32 error). The reference is
  a fresh pyhgf run when pyhgf is available, else the stored runs of
  ``tests/predictive_coding/data`` (written by ``experiments/pyhgf_reference.py``);
* speed of one series (1k / 10k / 100k steps): the first call (compile + run) and
  the median steady-state call, each made as a user makes it (``Network.input_data``
  then reading ``node_trajectories``), overhead included;
* 1,000 subjects x 1,000 steps under ``jit(vmap)`` (pyhgf has no batch API: its
  ``scan_fn`` is vmapped); gradient of the input surprise w.r.t. the three tonic
  volatilities, for one series and ``vmap``-ed over the subjects;
* NaN rate over random tonic volatilities (both libraries; ours in parity and in
  robust mode);
* ours only: whether a new series length inside a length bucket recompiles
  (``input_data(..., bucket=True)``).

Writes ``results.json``, ``speed.png`` and ``trajectories.png`` to ``config.output_dir``.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

_HERE = pathlib.Path(__file__).resolve()
REPO = _HERE.parents[2]
DATA = REPO / "lookahead_jax" / "predictive_coding" / "data"
# In a source checkout: the script that records pyhgf's runs and the stored runs.
REFERENCE_SCRIPT = REPO / "experiments" / "pyhgf_reference.py"
STORED_REFERENCE = REPO / "tests" / "predictive_coding" / "data"
BELIEF_FIELDS = ("mean", "precision", "expected_mean", "expected_precision")
DTYPES = ("float64", "float32")

# The 3-level continuous HGF used for speed, batching, gradients and NaN rates (the
# `continuous3_usdchf` case of experiments/pyhgf_reference.py), as `add_nodes` calls in
# the vocabulary both libraries share.
CONTINUOUS3 = (
    {"kind": "continuous-state", "node_parameters": {"precision": 1e4}},
    {
        "kind": "continuous-state",
        "node_parameters": {"mean": 1.04, "precision": 1e4, "tonic_volatility": -8.0},
        "value_children": 0,
    },
    {
        "kind": "continuous-state",
        "node_parameters": {"mean": 1.0, "precision": 1e1, "tonic_volatility": -4.0},
        "volatility_children": 1,
    },
    {
        "kind": "continuous-state",
        "node_parameters": {"mean": 0.5, "precision": 1e1, "tonic_volatility": -5.0},
        "volatility_children": 2,
    },
)
NODES = len(CONTINUOUS3)
OMEGAS0 = (-8.0, -4.0, -3.0)  # tonic volatilities at which the gradients are taken
MEANS0 = (1.04, 1.0, 0.5)  # initial means (nodes 1-3) at which the gradients are taken
# The compiled-scan grid's networks: name -> the case of experiments/pyhgf_reference.py
# whose network and inputs (tiled to each length) it runs. `features` has value and
# volatility parents over several children, two inputs, a mask and irregular time steps.
SCAN_NETWORKS = {
    "continuous3": "continuous3_usdchf",
    "binary3": "binary3_iglesias",
    "features": "features_returns",
}


def default_config():
    """Full-size settings (minutes on a 2-core CPU with pyhgf); returns a ConfigDict."""
    import ml_collections  # imported here: pyhgf's environment runs this file without it

    config = ml_collections.ConfigDict()
    # pyhgf runs in its own Python 3.12 virtual environment (it needs jax < 0.7);
    # created with `python312 -m venv` + `pip install pyhgf==0.3.2` if missing.
    config.pyhgf = True
    config.pyhgf_venv = "/work/pyhgf-venv"
    config.python312 = "/root/.pyenv/versions/3.12.1/bin/python"
    config.pyhgf_version = "0.3.2"
    # Parity: cases / variants ("standard-relaxed", ...) / dtypes to compare; empty = all.
    # Without pyhgf the stored runs in `reference_dir` are the reference ("" = the
    # checkout's tests/predictive_coding/data; parity is skipped if it is absent).
    config.parity = True
    config.parity_cases = ()
    config.parity_variants = ()
    config.parity_dtypes = DTYPES
    config.reference_dir = ""
    # Speed of one series (3-level continuous HGF on the tiled USD-CHF series, float32):
    # first call (compile + run) and the median of `repeats` steady-state calls,
    # each call made the way a user makes it (per-call overhead included).
    config.lengths = (1_000, 10_000, 100_000)
    config.repeats = 5
    config.variants = ("unbounded", "standard")  # pyhgf's default and the classic HGF
    # Compiled scans, side by side (issue 18's goals): each library's own scan over the
    # series under `jax.jit`, compiled and warmed, returning every node's beliefs; the
    # median of `repeats` calls. Networks: keys of SCAN_NETWORKS.
    config.scan_networks = tuple(SCAN_NETWORKS)
    config.scan_variants = ("standard", "eHGF", "unbounded")
    # Batch: jit(vmap) over subjects; gradient of the input surprise w.r.t. the three
    # tonic volatilities, for one series and vmapped over the subjects.
    config.num_subjects = 1_000
    config.subject_steps = 1_000
    # Ours only: subjects per second of the same batch sharded over 1, 2, ... devices
    # (simulated CPU devices in a subprocess; they share this machine's cores).
    config.device_counts = (1, 2, 4, 8)
    # Ours only: an optax MAP fit of one tonic volatility for many synthetic subjects at
    # once (vmap), recovering the simulated values.
    config.fit_subjects = 100
    config.fit_series_steps = 300
    config.fit_steps = 200
    # NaN rate: random tonic volatilities of the 3-level HGF on the twice-tiled series
    # (the jump from 0.82 back to 1.04 is what breaks the classic HGF).
    config.nan_draws = 1_000
    config.nan_omega_low = (-12.0, -8.0, -8.0)
    config.nan_omega_high = (-2.0, -1.0, -1.0)
    config.seed = 0
    config.output_dir = "outputs/compare_pyhgf"
    return config


# --------------------------------------------------------------------------- shared helpers


def build(network_cls: Any, spec: Any, updates: str, mean_field: bool = False) -> Any:
    """Replays ``add_nodes`` calls (JSON lists become pyhgf's ``(indices, strengths)``
    tuples) on ``network_cls``: pyhgf's ``Network`` or ours, same vocabulary."""
    net = network_cls(volatility_updates=updates, mean_field_updates=mean_field)
    for call in spec:
        kwargs = {
            key: tuple(value) if isinstance(value, list) and key != "node_parameters" else value
            for key, value in call.items()
            if key != "kind"
        }
        net = net.add_nodes(kind=call["kind"], **kwargs)
    return net


def _tiled(series: Any, length: int) -> Any:
    import numpy as np

    return np.resize(np.asarray(series), length)


def _case_series(case: Any, length: int) -> tuple[Any, Any, Any]:
    """A reference case's ``(inputs [L, n], observed [L, n] int, time_steps [L])``
    tiled to ``length`` steps."""
    import numpy as np

    _, inputs, observed, time_steps = case
    n = inputs.shape[1]
    return (
        np.resize(np.asarray(inputs, np.float32), (length, n)),
        np.resize(np.asarray(observed), (length, n)),
        np.resize(np.asarray(time_steps, np.float32), (length,)),
    )


def _input_surprise(mu: Any, pi: Any, series: Any) -> Any:
    """Summed Gaussian surprise of the input node, the same formula on both sides."""
    import jax.numpy as jnp

    return jnp.sum(0.5 * (jnp.log(2 * jnp.pi) - jnp.log(pi) + pi * (series - mu) ** 2))


def _subjects(usdchf: Any, num_subjects: int, steps: int) -> Any:
    """``[S, steps]``: subject ``i`` sees the tiled series scaled by ``1 + 0.001 i``."""
    import numpy as np

    return np.stack([_tiled(usdchf * (1 + 0.001 * i), steps) for i in range(num_subjects)])


def _time_calls(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """First call (compile + run) and the median of ``repeats`` further calls, seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "steady_s": statistics.median(times)}


def _load_reference_module():
    """experiments/pyhgf_reference.py (stdlib-only at import), or None outside a checkout."""
    if not REFERENCE_SCRIPT.exists():
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyhgf_reference", REFERENCE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- pyhgf side


def pyhgf_worker(request_path: str, result_path: str) -> None:
    """Runs in pyhgf's environment: records reference runs or measures, per the request."""
    request = json.loads(pathlib.Path(request_path).read_text())
    if request["task"] == "reference":
        _load_reference_module().record(request["dtype"], pathlib.Path(request["out"]))
        pathlib.Path(result_path).write_text("{}")
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # pyhgf first: at import it sets XLA flags for its fast CPU path, which must
    # precede jax's import to take effect (it warns otherwise); fair to pyhgf.
    import pyhgf  # isort: skip
    import jax
    import jax.numpy as jnp
    import numpy as np
    from pyhgf.model import Network

    usdchf = np.loadtxt(DATA / "usdchf.txt").astype(np.float32)
    out: dict[str, Any] = {"version": pyhgf.__version__, "jax": jax.__version__}

    def xs(series):
        t = series.shape[0]
        return ((series,), (jnp.ones(t, int),), jnp.ones(t, series.dtype), None)

    def with_theta(net, theta):
        omegas, means = theta
        attributes = {k: dict(v) for k, v in net.attributes.items()}
        for level in range(3):
            attributes[level + 1] = {
                **attributes[level + 1],
                "tonic_volatility": omegas[level],
                "mean": means[level],
            }
        return attributes

    def beliefs_of(trajectories):
        # Every node's four belief fields (the rest of pyhgf's trajectories is dropped
        # by XLA, as ours drops the diagnostics it computes after its scan).
        return {
            k: {f: v[f] for f in BELIEF_FIELDS if f in v}
            for k, v in trajectories.items()
            if isinstance(k, int) and k >= 0
        }

    # Compiled scans: pyhgf's own scan function under jax.jit, as its `input_data` runs
    # it, minus that method's per-call Python overhead (timed separately below).
    cases = _load_reference_module().cases(np)
    out["scan_speed"] = {}
    for network in request["scan_networks"]:
        case = cases[SCAN_NETWORKS[network]]
        for updates in request["scan_variants"]:
            net = build(Network, case[0], updates)
            u0, o0, dt0 = _case_series(case, 16)
            net.input_data(input_data=u0, observed=o0, time_steps=dt0)  # builds scan_fn
            scan = jax.jit(
                lambda attributes, xs, net=net: beliefs_of(
                    jax.lax.scan(net.scan_fn, attributes, xs)[1]
                )
            )
            for length in request["lengths"]:
                u, o, dt = _case_series(case, length)
                n = u.shape[1]
                inputs = (
                    tuple(jnp.asarray(u[:, i : i + 1]) for i in range(n)),
                    tuple(jnp.asarray(o[:, i]) for i in range(n)),
                    jnp.asarray(dt),
                    None,
                )
                out["scan_speed"][f"{network}/{updates}/{length}"] = _time_calls(
                    lambda scan=scan, net=net, inputs=inputs: jax.block_until_ready(
                        scan(net.attributes, inputs)
                    ),
                    request["repeats"],
                )

    out["speed"] = {}
    for updates in request["variants"]:
        for length in request["lengths"]:
            net = build(Network, CONTINUOUS3, updates)
            series = _tiled(usdchf, length)
            out["speed"][f"{updates}/{length}"] = _time_calls(
                lambda net=net, series=series: jax.block_until_ready(
                    net.input_data(input_data=series).node_trajectories[1]["mean"]
                ),
                request["repeats"],
            )
    net = build(Network, CONTINUOUS3, "unbounded")
    net.input_data(input_data=usdchf)  # builds scan_fn and attributes
    subjects = jnp.asarray(
        _subjects(usdchf, request["num_subjects"], request["subject_steps"]), jnp.float32
    )
    # pyhgf has no batch API; its own scan function, vmapped, is what a user would write.
    batched = jax.jit(
        jax.vmap(lambda x: beliefs_of(jax.lax.scan(net.scan_fn, net.attributes, xs(x))[1]))
    )
    out["batch"] = _time_calls(lambda: jax.block_until_ready(batched(subjects)), request["repeats"])

    def loss(theta, series):
        _, trajectories = jax.lax.scan(net.scan_fn, with_theta(net, theta), xs(series))
        mu, pi = trajectories[0]["expected_mean"], trajectories[0]["expected_precision"]
        return _input_surprise(mu, pi, series)

    theta0 = (jnp.asarray(OMEGAS0, jnp.float32), jnp.asarray(MEANS0, jnp.float32))
    grad_one = jax.jit(jax.value_and_grad(loss))
    grad_many = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))
    out["grad_one"] = _time_calls(
        lambda: jax.block_until_ready(grad_one(theta0, subjects[0])), request["repeats"]
    )
    out["grad_batch"] = _time_calls(
        lambda: jax.block_until_ready(grad_many(theta0, subjects)), request["repeats"]
    )
    value, grads = grad_one(theta0, subjects[0])
    out["grad_value"] = [float(value), *map(float, np.concatenate([np.ravel(g) for g in grads]))]

    draws = jnp.asarray(request["nan_draws"], jnp.float32)  # [D, 3]
    series = jnp.asarray(_tiled(usdchf, 2 * usdchf.shape[0]))
    out["nan_rate"] = {}
    for updates in request["variants"]:
        net = build(Network, CONTINUOUS3, updates)
        net.input_data(input_data=usdchf)

        def finite(omegas, net=net):
            theta = (omegas, jnp.asarray(MEANS0, jnp.float32))
            _, trajectories = jax.lax.scan(net.scan_fn, with_theta(net, theta), xs(series))
            means = jnp.stack([trajectories[k]["mean"] for k in range(NODES)])
            return jnp.all(jnp.isfinite(means))

        ok = np.asarray(jax.jit(jax.vmap(finite))(draws))
        out["nan_rate"][updates] = float(1.0 - ok.mean())
    pathlib.Path(result_path).write_text(json.dumps(out))


def ensure_pyhgf(config) -> tuple[str | None, str]:
    """``(python, "")`` for pyhgf's venv (created if missing), or ``(None, why not)``."""
    python = pathlib.Path(config.pyhgf_venv) / "bin" / "python"
    if not python.exists():
        print(f"creating {config.pyhgf_venv} with pyhgf=={config.pyhgf_version} ...")
        try:
            subprocess.run([config.python312, "-m", "venv", config.pyhgf_venv], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", f"pyhgf=={config.pyhgf_version}"],
                check=True,
            )
        except (OSError, subprocess.CalledProcessError) as error:
            return None, f"could not create pyhgf's environment {config.pyhgf_venv} ({error})"
    probe = subprocess.run([str(python), "-c", "import pyhgf"], capture_output=True, text=True)
    if probe.returncode:
        return None, f"`import pyhgf` fails in {python}: {probe.stderr[-300:].strip()}"
    return str(python), ""


def _call_worker(python: str, request: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        request_path, result_path = pathlib.Path(tmp, "request.json"), pathlib.Path(tmp, "r.json")
        request_path.write_text(json.dumps(request))
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)  # one device, as a pyhgf user has
        if request.get("dtype") == "float64":
            env["JAX_ENABLE_X64"] = "1"
        # -P: do not put this package's folder first on sys.path in pyhgf's interpreter.
        subprocess.run(
            [python, "-P", str(_HERE), "--pyhgf-worker", str(request_path), str(result_path)],
            check=True,
            env=env,
        )
        return json.loads(result_path.read_text())


# --------------------------------------------------------------------------- our side


def _relative_error(ours: Any, ref: Any) -> float:
    """Max pointwise relative error where ``ref`` is finite and non-zero; inf if the NaNs
    differ (float64: the issue's bar, relative error <= 1e-6)."""
    import numpy as np

    if not np.array_equal(np.isnan(ours), np.isnan(ref)):
        return float("inf")
    keep = np.isfinite(ref) & (ref != 0)
    with np.errstate(all="ignore"):
        rel = np.abs(ours[keep] - ref[keep]) / np.abs(ref[keep])
    return float(np.max(rel, initial=0.0))


def _normwise_error(ours: Any, ref: Any) -> float:
    """``max |ours - ref| / max |ref|`` over the steps where ``ref`` is finite (float32:
    pointwise relative error would be dominated by values crossing 0); inf if ``ours``
    is not finite there."""
    import numpy as np

    finite = np.isfinite(ref)
    if not np.isfinite(ours[finite]).all():
        return float("inf")
    scale = np.max(np.abs(ref[finite]), initial=0.0)
    if scale == 0.0:
        return float(np.max(np.abs(ours[finite]), initial=0.0))
    return float(np.max(np.abs(ours[finite] - ref[finite]), initial=0.0) / scale)


def parity(
    reference_dir: pathlib.Path,
    cases: Any = (),
    variants: Any = (),
    dtypes: Any = DTYPES,
) -> dict[str, dict[str, dict[str, float]]]:
    """Errors against pyhgf's float64 runs stored in ``reference_dir``.

    Returns ``{"case/variant/dtype": {field: errors}}`` for the four belief fields.
    float64: ``errors = {"ours": e}``, ``e`` the worst pointwise relative error over
    nodes and steps. float32: ``{"ours": e, "pyhgf_float32": e32, "ratio": r}`` with
    normwise errors per node (see :func:`_normwise_error`), ``e`` / ``e32`` the worst
    over nodes of ours and of pyhgf's own float32 run, and ``r`` the worst per-node
    ``ours / max(pyhgf's, float32 eps)`` (the issue asks for a small factor). Empty
    ``cases`` / ``variants`` mean every one stored.
    """
    import jax
    import numpy as np

    from lookahead_jax import predictive_coding as pc

    eps32 = float(np.finfo(np.float32).eps)
    cases = cases or sorted(
        p.name[: -len("_float64.npz")] for p in reference_dir.glob("*_float64.npz")
    )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case in cases:
        with np.load(reference_dir / f"{case}_float64.npz") as npz:
            run64 = dict(npz)
        run32 = None
        if "float32" in dtypes:
            with np.load(reference_dir / f"{case}_float32.npz") as npz:
                run32 = dict(npz)
        spec = json.loads(str(run64["spec"]))
        t = run64["inputs"].shape[0]
        stored = sorted({key.split("/")[0] for key in run64 if "/" in key})
        for variant in variants or stored:
            updates, mode = variant.split("-")
            for dtype in dtypes:
                with jax.enable_x64(dtype == "float64"):
                    net = build(pc.Network, spec, updates, mode == "meanfield")
                    net.input_data(
                        run64["inputs"].astype(dtype),
                        run64["observed"],
                        run64["time_steps"].astype(dtype),
                    )
                    errors = {}
                    for name in BELIEF_FIELDS:
                        worst, theirs_worst, ratio = 0.0, 0.0, 0.0
                        for k in range(len(spec)):
                            ref = np.broadcast_to(run64[f"{variant}/{k}/{name}"], (t,))
                            mine = np.asarray(net.node_trajectories[k][name], np.float64)
                            if dtype == "float64":
                                worst = max(worst, _relative_error(mine, ref))
                                continue
                            theirs = np.broadcast_to(run32[f"{variant}/{k}/{name}"], (t,))
                            e = _normwise_error(mine, ref)
                            e32 = _normwise_error(theirs.astype(np.float64), ref)
                            worst, theirs_worst = max(worst, e), max(theirs_worst, e32)
                            ratio = max(ratio, e / max(e32, eps32))
                        errors[name] = {"ours": worst}
                        if dtype == "float32":
                            errors[name].update(pyhgf_float32=theirs_worst, ratio=ratio)
                out[f"{case}/{variant}/{dtype}"] = errors
    return out


def _ours(config, draws: Any, progress=None) -> dict[str, Any]:
    """Our side of every measurement, float32, on one device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lookahead_jax import predictive_coding as pc
    from lookahead_jax.predictive_coding import network as network_module

    usdchf = pc.load_data("continuous").astype(np.float32)
    out: dict[str, Any] = {"jax": jax.__version__, "backend": jax.default_backend()}

    def speed():
        timings = {}
        for updates in config.variants:
            for length in config.lengths:
                net = build(pc.Network, CONTINUOUS3, updates)
                series = _tiled(usdchf, length)
                timings[f"{updates}/{length}"] = _time_calls(
                    lambda net=net, series=series: jax.block_until_ready(
                        net.input_data(series).node_trajectories[1]["mean"]
                    ),
                    config.repeats,
                )
        return timings

    def scan_speed():
        # Our `filter_series` under jax.jit, every node's beliefs returned (the
        # diagnostics, computed after the scan, are dropped by XLA as pyhgf's are).
        # Series without a mask or irregular time steps are passed without them, as a
        # user would; the `features` network gets its mask and time steps.
        cases = _load_reference_module().cases(np)
        timings = {}
        for network in config.scan_networks:
            case = cases[SCAN_NETWORKS[network]]
            plain = bool(np.all(case[2]) and np.all(case[3] == 1))
            for updates in config.scan_variants:
                s, p, b = build(pc.Network, case[0], updates).compile(jnp.float32)
                scan = jax.jit(
                    lambda p, b, u, o, dt, s=s: pc.filter_series(s, p, b, u, o, dt)[1].beliefs
                )
                for length in config.lengths:
                    u, o, dt = _case_series(case, length)
                    args = (jnp.asarray(u), None, None)
                    if not plain:
                        args = (jnp.asarray(u), jnp.asarray(o, bool), jnp.asarray(dt))
                    timings[f"{network}/{updates}/{length}"] = _time_calls(
                        lambda scan=scan, p=p, b=b, args=args: jax.block_until_ready(
                            scan(p, b, *args)
                        ),
                        config.repeats,
                    )
        return timings

    structure, params, beliefs = build(pc.Network, CONTINUOUS3, "unbounded").compile(jnp.float32)
    subjects = jnp.asarray(
        _subjects(usdchf, config.num_subjects, config.subject_steps)[..., None], jnp.float32
    )  # [S, T, 1]

    def batch():
        batched = jax.jit(
            jax.vmap(lambda x: pc.filter_series(structure, params, beliefs, x)[1].beliefs)
        )
        return _time_calls(lambda: jax.block_until_ready(batched(subjects)), config.repeats)

    def loss(theta, series):
        omegas, means = theta
        p = params._replace(tonic_volatility=params.tonic_volatility.at[1:].set(omegas))
        b = beliefs._replace(mean=beliefs.mean.at[1:].set(means))
        _, trajectories = pc.filter_series(structure, p, b, series)
        mu = trajectories.beliefs.expected_mean[:, 0]
        pi = trajectories.beliefs.expected_precision[:, 0]
        return _input_surprise(mu, pi, series[:, 0])

    def gradients():
        theta0 = (jnp.asarray(OMEGAS0, jnp.float32), jnp.asarray(MEANS0, jnp.float32))
        grad_one = jax.jit(jax.value_and_grad(loss))
        grad_many = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))
        value, grads = grad_one(theta0, subjects[0])
        return {
            "grad_one": _time_calls(
                lambda: jax.block_until_ready(grad_one(theta0, subjects[0])), config.repeats
            ),
            "grad_batch": _time_calls(
                lambda: jax.block_until_ready(grad_many(theta0, subjects)), config.repeats
            ),
            "grad_value": [float(value), *map(float, np.concatenate([np.ravel(g) for g in grads]))],
        }

    def fit():
        return fit_recovery(config.fit_subjects, config.fit_series_steps, config.fit_steps)

    def nan_rates():
        series = jnp.asarray(_tiled(usdchf, 2 * usdchf.shape[0]))[:, None]
        rates: dict[str, dict[str, float]] = {"nan_rate": {}, "nan_rate_robust": {}}
        for updates in config.variants:
            s, p0, b0 = build(pc.Network, CONTINUOUS3, updates).compile(jnp.float32)
            for robust, key in ((False, "nan_rate"), (True, "nan_rate_robust")):

                def finite(omegas, s=s, p0=p0, b0=b0, robust=robust):
                    p = p0._replace(tonic_volatility=p0.tonic_volatility.at[1:].set(omegas))
                    _, trajectories = pc.filter(s, p, b0, series, robust=robust)
                    return jnp.all(jnp.isfinite(trajectories.beliefs.mean))

                ok = np.asarray(jax.jit(jax.vmap(finite))(jnp.asarray(draws, jnp.float32)))
                rates[key][updates] = float(1.0 - ok.mean())
        return rates

    def buckets():
        # A second series length inside the same bucket must reuse the compiled program.
        net = build(pc.Network, CONTINUOUS3, "unbounded")
        length = max(1, min(config.lengths))
        bucket = network_module.length_bucket(length)
        other = length + 1 if network_module.length_bucket(length + 1) == bucket else length - 1
        net.input_data(_tiled(usdchf, length), bucket=True)
        before = network_module._filter_jit._cache_size()
        seconds = []
        for _ in range(2):  # the new length's first call, then a repeat of it
            start = time.perf_counter()
            jax.block_until_ready(net.input_data(_tiled(usdchf, other), bucket=True).final_beliefs)
            seconds.append(time.perf_counter() - start)
        return {
            "lengths": [length, other],
            "bucket": bucket,
            "recompiled": network_module._filter_jit._cache_size() != before,
            # Beyond the filter, eager ops on new shapes (padding, slicing) compile once.
            "second_length_s": seconds[0],
            "second_length_repeat_s": seconds[1],
        }

    stages = [
        ("scan_speed", scan_speed),
        ("speed", speed),
        ("batch", batch),
        ("gradients", gradients),
        ("fit", fit),
        ("nan", nan_rates),
        ("bucket", buckets),
    ]
    for name, stage in progress(stages) if progress else stages:
        value = stage()
        if name in ("gradients", "nan"):
            out.update(value)
        else:
            out[name] = value
    return out


def omega_fit_model() -> tuple[Any, Any, Callable, Callable]:
    """The MAP fit of ``omega_1`` of a 3-level continuous HGF (standard updates, float32).

    Returns ``(structure, theta0, unpack, loss)``: ``theta0`` holds the free parameter
    (``tonic_volatility`` of node 1, the prior mean), ``unpack(theta) -> (params,
    beliefs)`` and ``loss(theta, inputs [T, 1])`` the MAP loss (prior precision 0.1).
    Used by :func:`fit_recovery` and by ``experiments/pod_workloads.py``.
    """
    import jax.numpy as jnp

    from lookahead_jax import predictive_coding as pc

    model = (
        pc.Network(volatility_updates="standard")
        .add_nodes(precision=1e2)
        .add_nodes(value_children=0, mean=1.0, precision=1e2, tonic_volatility=-5.0)
        .add_nodes(volatility_children=1, mean=0.0, precision=1e4, tonic_volatility=-12.0)
    )
    structure, params, beliefs = model.compile(jnp.float32)
    theta0, unpack = pc.free_parameters(params, beliefs, {"tonic_volatility": [1]})
    loss = pc.map_loss(structure, unpack, prior_mean=theta0, prior_precision=0.1)
    return structure, theta0, unpack, loss


def fit_recovery(num_subjects: int, steps: int, fit_steps: int, seed: int = 0) -> dict[str, Any]:
    """An optax MAP fit of ``num_subjects`` synthetic subjects at once (``vmap``).

    Each subject's hidden state is a Gaussian random walk with step variance
    ``exp(omega)``, ``omega`` evenly spread over [-7, -3], observed with noise of sd 0.1;
    the 3-level model (standard updates) fits its ``omega_1`` by Adam on the MAP loss.
    Returns the correlation and mean absolute error of fitted vs true ``omega`` and the
    first (compile + run) and steady-state wall times of the whole fit.
    """
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from lookahead_jax import predictive_coding as pc

    rng = np.random.default_rng(seed)
    true_omega = np.linspace(-7.0, -3.0, num_subjects)
    walk = np.exp(true_omega[:, None] / 2) * rng.standard_normal((num_subjects, steps))
    observations = 1.0 + np.cumsum(walk, axis=1) + 0.1 * rng.standard_normal(walk.shape)
    _, theta0, _, loss = omega_fit_model()
    starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_subjects, *x.shape)), theta0)
    inputs = jnp.asarray(observations[..., None], jnp.float32)
    fit_many = jax.jit(
        functools.partial(pc.fit_subjects, loss, optimizer=optax.adam(0.1), num_steps=fit_steps)
    )
    timing = _time_calls(lambda: jax.block_until_ready(fit_many(starts, inputs)), 3)
    estimated = np.asarray(fit_many(starts, inputs).theta["tonic_volatility"][:, 0])
    return {
        "subjects": num_subjects,
        "series_steps": steps,
        "optimizer_steps": fit_steps,
        "correlation": float(np.corrcoef(true_omega, estimated)[0, 1]),
        "mean_abs_error": float(np.mean(np.abs(estimated - true_omega))),
        **timing,
    }


def devices_worker(request_path: str, result_path: str) -> None:
    """Runs with 8 simulated CPU devices: subjects per second of ``jit(vmap(filter))``
    with the subjects sharded over 1, 2, 4, ... of them (they share the machine's cores)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lookahead_jax import predictive_coding as pc
    from lookahead_jax import sharding

    request = json.loads(pathlib.Path(request_path).read_text())
    usdchf = pc.load_data("continuous").astype(np.float32)
    structure, params, beliefs = build(pc.Network, CONTINUOUS3, "unbounded").compile(jnp.float32)
    subjects = _subjects(usdchf, request["num_subjects"], request["subject_steps"])[..., None]
    batched = jax.jit(
        jax.vmap(lambda x: pc.filter_series(structure, params, beliefs, x)[1].beliefs)
    )
    rows = []
    for count in request["device_counts"]:
        if count > jax.device_count() or request["num_subjects"] % count:
            continue
        placed = sharding.shard(jnp.asarray(subjects), sharding.make_mesh(count), axes=0)
        timing = _time_calls(lambda placed=placed: jax.block_until_ready(batched(placed)), 5)
        rows.append(
            {
                "devices": count,
                **timing,
                "subjects_per_s": request["num_subjects"] / timing["steady_s"],
            }
        )
    pathlib.Path(result_path).write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}))


def _devices(config) -> dict[str, Any]:
    """:func:`devices_worker` in a subprocess with 8 simulated devices."""
    with tempfile.TemporaryDirectory() as tmp:
        request_path, result_path = pathlib.Path(tmp, "request.json"), pathlib.Path(tmp, "r.json")
        request = {
            "num_subjects": config.num_subjects,
            "subject_steps": config.subject_steps,
            "device_counts": list(config.device_counts),
        }
        request_path.write_text(json.dumps(request))
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
        subprocess.run(
            [sys.executable, str(_HERE), "--devices-worker", str(request_path), str(result_path)],
            check=True,
            env=env,
            cwd=REPO,
        )
        return json.loads(result_path.read_text())


# --------------------------------------------------------------------------- driver


def run(config, progress=None) -> dict[str, Any]:
    """Runs every measurement; returns the figures (also written as JSON + PNG).

    Args:
      config: from :func:`default_config` (ml_collections ConfigDict).
      progress: optional ``tqdm``-like wrapper for the stages.
    Returns:
      a dict with ``config``, ``parity`` (or ``parity_skipped``), ``lookahead_jax``,
      ``pyhgf`` and ``steady_speedup_vs_pyhgf`` (or ``pyhgf_skipped``).
    """
    import numpy as np

    out_dir = pathlib.Path(config.output_dir)
    rng = np.random.default_rng(config.seed)
    draws = rng.uniform(config.nan_omega_low, config.nan_omega_high, size=(config.nan_draws, 3))
    results: dict[str, Any] = {"config": config.to_dict(), "draws_seed": config.seed}
    # Timings on a shared machine mean little without its load: record it.
    results["load_average_1min"] = {"start": os.getloadavg()[0]}
    python = None
    if config.pyhgf:
        python, why = ensure_pyhgf(config)
        if python is None:
            results["pyhgf_skipped"] = why
            print(f"SKIPPING pyhgf: {why}")
    else:
        results["pyhgf_skipped"] = "config.pyhgf is False"

    if config.parity:
        cases, variants = tuple(config.parity_cases), tuple(config.parity_variants)
        dtypes = tuple(config.parity_dtypes)
        if python and REFERENCE_SCRIPT.exists():
            with tempfile.TemporaryDirectory() as tmp:
                for dtype in DTYPES:
                    _call_worker(python, {"task": "reference", "dtype": dtype, "out": tmp})
                results["parity"] = parity(pathlib.Path(tmp), cases, variants, dtypes)
            results["parity_source"] = f"fresh pyhgf run ({config.pyhgf_venv})"
        else:
            reference_dir = pathlib.Path(config.reference_dir or STORED_REFERENCE)
            if any(reference_dir.glob("*_float64.npz")):
                results["parity"] = parity(reference_dir, cases, variants, dtypes)
                results["parity_source"] = f"stored pyhgf runs ({reference_dir})"
            else:
                results["parity_skipped"] = f"no pyhgf and no stored runs in {reference_dir}"
                print(f"SKIPPING parity: {results['parity_skipped']}")

    if python:
        request = {
            "task": "measure",
            "scan_networks": list(config.scan_networks),
            "scan_variants": list(config.scan_variants),
            "variants": list(config.variants),
            "lengths": list(config.lengths),
            "repeats": config.repeats,
            "num_subjects": config.num_subjects,
            "subject_steps": config.subject_steps,
            "nan_draws": draws.tolist(),
        }
        results["load_average_1min"]["before_pyhgf"] = os.getloadavg()[0]
        results["pyhgf"] = _call_worker(python, request)
    results["load_average_1min"]["before_ours"] = os.getloadavg()[0]
    results["lookahead_jax"] = _ours(config, draws, progress)
    if config.device_counts:
        results["lookahead_jax"]["devices"] = _devices(config)
    results["load_average_1min"]["end"] = os.getloadavg()[0]
    if python:
        ours, theirs = results["lookahead_jax"], results["pyhgf"]
        speedup = {
            f"{group}/{key}": theirs[group][key]["steady_s"] / ours[group][key]["steady_s"]
            for group in ("scan_speed", "speed")
            for key in ours[group]
        }
        for key in ("batch", "grad_one", "grad_batch"):
            speedup[key] = theirs[key]["steady_s"] / ours[key]["steady_s"]
        results["steady_speedup_vs_pyhgf"] = speedup
    _write(results, out_dir)
    return results


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from experiments.benchmarks import _common
    from lookahead_jax import predictive_coding as pc

    _common.write_json(results, out_dir / "results.json")
    ours, theirs = results["lookahead_jax"], results.get("pyhgf")
    networks = sorted({key.split("/")[0] for key in ours["scan_speed"]})
    fig, axes = plt.subplots(1, max(1, len(networks)), figsize=(4.5 * max(1, len(networks)), 4))
    axes = np.atleast_1d(axes)
    for ax, network in zip(axes, networks, strict=False):
        keys = [k for k in ours["scan_speed"] if k.startswith(network + "/")]
        for i, updates in enumerate(sorted({k.split("/")[1] for k in keys})):
            rows = sorted((int(k.split("/")[2]), k) for k in keys if k.split("/")[1] == updates)
            lengths = [length for length, _ in rows]
            ax.plot(
                lengths, [1e3 * ours["scan_speed"][k]["steady_s"] for _, k in rows],
                "o-", c=f"C{i}", label=f"ours {updates}",
            )  # fmt: skip
            if theirs and "scan_speed" in theirs:
                ax.plot(
                    lengths, [1e3 * theirs["scan_speed"][k]["steady_s"] for _, k in rows],
                    "x--", c=f"C{i}", label=f"pyhgf {updates}",
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steps")
        ax.set_ylabel("ms per compiled scan (median)")
        ax.set_title(network)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "speed.png")
    plt.close(fig)
    net = build(pc.Network, CONTINUOUS3, "unbounded")
    net.input_data(pc.load_data("continuous"))
    fig = net.plot_trajectories()
    _common.save_figure(fig, out_dir / "trajectories.png")
    plt.close(fig)


def _ms(entry: dict[str, float] | None) -> str:
    if entry is None:
        return f"{'-':>9s} {'-':>9s}"
    return f"{1e3 * entry['first_s']:9.1f} {1e3 * entry['steady_s']:9.2f}"


def format_table(results: dict[str, Any]) -> str:
    """The benchmark as plain text: timings (ms), NaN rates, worst parity errors."""
    ours, theirs = results["lookahead_jax"], results.get("pyhgf")
    speedup = results.get("steady_speedup_vs_pyhgf", {})
    lines = [
        f"{'measurement':22s} {'ours 1st':>9s} {'ours ms':>9s} {'pyhgf 1st':>9s} "
        f"{'pyhgf ms':>9s} {'speedup':>7s}"
    ]
    rows = [(f"series {key}", key) for key in ours["speed"]]
    rows += [
        ("batch (S x T)", "batch"),
        ("grad, one series", "grad_one"),
        ("grad, vmap subjects", "grad_batch"),
    ]
    for label, key in rows:
        mine = ours["speed"][key] if key in ours["speed"] else ours[key]
        other = None
        if theirs:
            other = theirs["speed"][key] if key in theirs["speed"] else theirs[key]
        ratio_key = f"speed/{key}" if key in ours["speed"] else key
        ratio = f"{speedup[ratio_key]:7.2f}" if ratio_key in speedup else f"{'-':>7s}"
        lines.append(f"{label:22s} {_ms(mine)} {_ms(other)} {ratio}")
    lines.append("compiled scans (jit, warmed; median ms; every node's beliefs returned):")
    lines.append(
        f"  {'network/updates/steps':32s} {'ours ms':>9s} {'pyhgf ms':>9s} {'speedup':>7s}"
    )
    for key, mine in ours.get("scan_speed", {}).items():
        other = theirs["scan_speed"].get(key) if theirs and "scan_speed" in theirs else None
        theirs_ms = f"{1e3 * other['steady_s']:9.3f}" if other else f"{'-':>9s}"
        ratio = speedup.get(f"scan_speed/{key}")
        ratio_text = f"{ratio:7.2f}" if ratio else f"{'-':>7s}"
        lines.append(f"  {key:32s} {1e3 * mine['steady_s']:9.3f} {theirs_ms} {ratio_text}")
    if "fit" in ours:
        fit = ours["fit"]
        lines.append(
            f"fit: {fit['subjects']} subjects x {fit['series_steps']} steps, "
            f"{fit['optimizer_steps']} Adam steps in {fit['steady_s']:.2f} s "
            f"(first call {fit['first_s']:.2f} s); fitted vs true omega: correlation "
            f"{fit['correlation']:.3f}, mean abs error {fit['mean_abs_error']:.3f}"
        )
    for row in ours.get("devices", {}).get("rows", []):
        lines.append(
            f"batch on {row['devices']} simulated device(s): {row['subjects_per_s']:.0f} "
            f"subjects/s ({1e3 * row['steady_s']:.1f} ms)"
        )
    lines.append("NaN rate over random tonic volatilities:")
    for updates, rate in ours["nan_rate"].items():
        pyhgf_rate = f"{theirs['nan_rate'][updates]:.1%}" if theirs else "-"
        lines.append(
            f"  {updates:10s} ours {rate:6.1%}  ours robust {ours['nan_rate_robust'][updates]:6.1%}"
            f"  pyhgf {pyhgf_rate}"
        )
    bucket = ours["bucket"]
    lines.append(
        f"bucketed lengths {bucket['lengths']} (bucket {bucket['bucket']}): "
        f"{'recompiled' if bucket['recompiled'] else 'no recompilation'}, "
        f"new length's first call {1e3 * bucket['second_length_s']:.1f} ms, "
        f"repeated {1e3 * bucket.get('second_length_repeat_s', float('nan')):.1f} ms"
    )
    if "parity" in results:
        for dtype in DTYPES:
            keys = [k for k in results["parity"] if k.endswith(dtype)]
            if not keys:
                continue
            worst = max(e["ours"] for k in keys for e in results["parity"][k].values())
            line = f"parity {dtype}: worst relative error of a belief field {worst:.3g}"
            if dtype == "float32":
                ratio = max(e["ratio"] for k in keys for e in results["parity"][k].values())
                line = (
                    f"parity float32: worst normwise error of a belief field {worst:.3g}, "
                    f"worst ratio to pyhgf's own float32 error {ratio:.2f}"
                )
            lines.append(f"{line}; {len(keys)} case/variant runs, {results['parity_source']}")
    load = ", ".join(f"{k} {v:.1f}" for k, v in results.get("load_average_1min", {}).items())
    lines.append(f"1-minute load average ({os.cpu_count()} CPUs): {load}")
    for what in ("parity_skipped", "pyhgf_skipped"):
        if what in results:
            lines.append(f"{what.replace('_', ' ')}: {results[what]}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--pyhgf-worker":
        pyhgf_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--devices-worker":
        sys.path.insert(0, str(REPO))
        devices_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(
            "usage: hgf.py --pyhgf-worker REQUEST.json RESULT.json "
            "(else: python experiments/compare_pyhgf.py)"
        )
