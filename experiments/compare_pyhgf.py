"""lookahead_jax's HGF side by side with pyhgf 0.3.2: parity, speed, batching, gradients, NaNs.

Usage::

    python experiments/compare_pyhgf.py --config=configs/compare_pyhgf.py \\
        [--config.pyhgf=False] [--config.lengths="(1000,)"] [--config.nan_draws=100]

pyhgf needs Python >= 3.12 and jax < 0.7, so it runs in its own virtual environment
(``config.pyhgf_venv``; created with ``config.python312`` and pip if missing, and
skipped with a message if that is impossible). This file is also the worker that
runs there: ``python compare_pyhgf.py --pyhgf-worker REQUEST.json RESULT.json``
(standard library + pyhgf only on that path). Both libraries get the same inputs
and the same parameter draws, and are timed the same way:

* parity: every case of ``experiments/pyhgf_reference.py`` (2- and 3-level
  continuous HGF on USD-CHF, 3-level binary HGF on the Iglesias et al. outcomes, a
  network with every feature), all update variants, float32 and float64: per-field
  max relative error against pyhgf's float64 run (ours and pyhgf's own float32);
* speed of one series (1k / 10k / 100k steps): the first call (compile + run) and
  the median steady-state call, each made as a user makes it (pyhgf:
  ``Network.input_data``; ours: ``Network.input_data``), overhead included;
* 1,000 subjects x 1,000 steps under ``jit(vmap)`` (pyhgf has no batch API: its
  ``scan_fn`` is vmapped); gradient of the input surprise w.r.t. the tonic
  volatilities, for one series and ``vmap``-ed over the subjects;
* NaN rate over random tonic volatilities (both libraries; ours in parity and in
  robust mode).

Writes ``results.json`` and ``speed.png`` / ``trajectories.png`` to ``config.output_dir``.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import pyhgf_reference  # noqa: E402  (stdlib-only at import: safe in both environments)

NODES = 4  # input + 3 levels


def continuous3_spec() -> list[dict]:
    """The 3-level continuous HGF used for speed, batching, gradients and NaN rates."""
    spec = pyhgf_reference.cases(__import__("numpy"))["continuous3_usdchf"][0]
    return json.loads(json.dumps(spec))


def tiled(series, length: int):
    import numpy as np

    return np.resize(np.asarray(series), length)


def time_calls(fn, repeats: int) -> dict:
    """First call (compile + run) and the median of ``repeats`` further calls, seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "steady_s": statistics.median(times)}


# --------------------------------------------------------------------------- pyhgf side


def pyhgf_worker(request_path: str, result_path: str) -> None:
    """Runs in pyhgf's environment: the measurements listed in the request."""
    request = json.loads(pathlib.Path(request_path).read_text())
    if request["task"] == "reference":
        pyhgf_reference.record(request["dtype"], pathlib.Path(request["out"]))
        pathlib.Path(result_path).write_text("{}")
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pyhgf
    from pyhgf.model import Network

    usdchf = np.loadtxt(pyhgf_reference.DATA / "usdchf.txt").astype(np.float32)
    spec = continuous3_spec()
    out: dict = {"version": pyhgf.__version__, "jax": jax.__version__}

    def network(updates):
        return pyhgf_reference.build(Network, spec, updates, False)

    def scan_run(net, series):
        """pyhgf's own scan function, called the way ``input_data`` calls it."""
        t = series.shape[0]
        xs = ((series,), (jnp.ones(t, int),), jnp.ones(t, series.dtype), None)
        _, trajectories = jax.lax.scan(net.scan_fn, net.attributes, xs)
        return trajectories

    def input_surprise(trajectories, series):
        mu, pi = trajectories[0]["expected_mean"], trajectories[0]["expected_precision"]
        return jnp.sum(0.5 * (jnp.log(2 * jnp.pi) - jnp.log(pi) + pi * (series - mu) ** 2))

    def with_omegas(net, omegas):
        attributes = {k: dict(v) for k, v in net.attributes.items()}
        for level in range(3):
            attributes[level + 1] = {**attributes[level + 1], "tonic_volatility": omegas[level]}
        return attributes

    out["speed"] = {}
    for updates in request["variants"]:
        for length in request["lengths"]:
            net = network(updates)
            series = tiled(usdchf, length)
            out["speed"][f"{updates}/{length}"] = time_calls(
                lambda net=net, series=series: jax.block_until_ready(
                    net.input_data(input_data=series).node_trajectories[1]["mean"]
                ),
                request["repeats"],
            )
    net = network("unbounded")
    net.input_data(input_data=usdchf)  # builds scan_fn and attributes
    subjects = jnp.asarray(
        np.stack(
            [
                tiled(usdchf * (1 + 0.001 * i), request["subject_steps"])
                for i in range(request["num_subjects"])
            ]
        )
    )
    batched = jax.jit(jax.vmap(lambda x: scan_run(net, x)[1]["mean"]))
    out["batch"] = time_calls(lambda: jax.block_until_ready(batched(subjects)), request["repeats"])

    def loss(omegas, series):
        attributes = with_omegas(net, omegas)
        t = series.shape[0]
        xs = ((series,), (jnp.ones(t, int),), jnp.ones(t, series.dtype), None)
        _, trajectories = jax.lax.scan(net.scan_fn, attributes, xs)
        return input_surprise(trajectories, series)

    omegas0 = jnp.asarray([-8.0, -4.0, -3.0], jnp.float32)
    grad_one = jax.jit(jax.grad(loss))
    grad_many = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))
    out["grad_one"] = time_calls(
        lambda: jax.block_until_ready(grad_one(omegas0, subjects[0])), request["repeats"]
    )
    out["grad_batch"] = time_calls(
        lambda: jax.block_until_ready(grad_many(omegas0, subjects)), request["repeats"]
    )

    draws = jnp.asarray(request["nan_draws"], jnp.float32)  # [D, 3]
    series = jnp.asarray(tiled(usdchf, 2 * usdchf.shape[0]))
    out["nan_rate"] = {}
    for updates in request["variants"]:
        net = network(updates)
        net.input_data(input_data=usdchf)

        def finite(omegas, net=net):
            _, trajectories = jax.lax.scan(
                net.scan_fn,
                with_omegas(net, omegas),
                ((series,), (jnp.ones(series.shape[0], int),), jnp.ones(series.shape[0]), None),
            )
            means = jnp.stack([trajectories[k]["mean"] for k in range(NODES)])
            return jnp.all(jnp.isfinite(means))

        ok = np.asarray(jax.jit(jax.vmap(finite))(draws))
        out["nan_rate"][updates] = float(1.0 - ok.mean())
    pathlib.Path(result_path).write_text(json.dumps(out))


def ensure_pyhgf(config) -> str | None:
    """The pyhgf venv's python, creating the venv if needed; ``None`` (with a message) if not."""
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
            print(f"SKIPPING pyhgf: could not create its environment ({error}).")
            return None
    probe = subprocess.run([str(python), "-c", "import pyhgf"], capture_output=True, text=True)
    if probe.returncode:
        print(f"SKIPPING pyhgf: `import pyhgf` fails in {python}:\n{probe.stderr[-500:]}")
        return None
    return str(python)


def call_worker(python: str, request: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        request_path, result_path = pathlib.Path(tmp, "request.json"), pathlib.Path(tmp, "r.json")
        request_path.write_text(json.dumps(request))
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        if request.get("dtype") == "float64":
            env["JAX_ENABLE_X64"] = "1"
        subprocess.run(
            [python, __file__, "--pyhgf-worker", str(request_path), str(result_path)],
            check=True,
            env=env,
        )
        return json.loads(result_path.read_text())


# --------------------------------------------------------------------------- our side


def ours(config, draws) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lookahead_jax import predictive_coding as pc

    usdchf = pc.load_data("continuous").astype(np.float32)
    spec = continuous3_spec()

    def network(updates, **options):
        net = pc.Network(volatility_updates=updates, **options)
        for call in spec:
            kwargs = {k: v for k, v in call.items() if k != "kind"}
            net.add_nodes(call["kind"], **kwargs)
        return net

    out: dict = {"jax": jax.__version__}
    out["speed"] = {}
    for updates in config.variants:
        for length in config.lengths:
            net = network(updates)
            series = tiled(usdchf, length)
            out["speed"][f"{updates}/{length}"] = time_calls(
                lambda net=net, series=series: jax.block_until_ready(
                    net.input_data(series).node_trajectories[1]["mean"]
                ),
                config.repeats,
            )
    structure, params, beliefs = network("unbounded").compile(jnp.float32)
    subjects = jnp.asarray(
        np.stack(
            [
                tiled(usdchf * (1 + 0.001 * i), config.subject_steps)
                for i in range(config.num_subjects)
            ]
        )[..., None]
    )
    batched = jax.jit(jax.vmap(lambda x: pc.filter(structure, params, beliefs, x)[1].beliefs.mean))
    out["batch"] = time_calls(lambda: jax.block_until_ready(batched(subjects)), config.repeats)

    def loss(omegas, series):
        p = params._replace(tonic_volatility=params.tonic_volatility.at[1:].set(omegas))
        _, trajectories = pc.filter(structure, p, beliefs, series)
        return pc.total_surprise(structure, trajectories)

    omegas0 = jnp.asarray([-8.0, -4.0, -3.0], jnp.float32)
    grad_one = jax.jit(jax.grad(loss))
    grad_many = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))
    out["grad_one"] = time_calls(
        lambda: jax.block_until_ready(grad_one(omegas0, subjects[0])), config.repeats
    )
    out["grad_batch"] = time_calls(
        lambda: jax.block_until_ready(grad_many(omegas0, subjects)), config.repeats
    )
    series = jnp.asarray(tiled(usdchf, 2 * usdchf.shape[0]))[:, None]
    out["nan_rate"], out["nan_rate_robust"] = {}, {}
    for updates in config.variants:
        structure, params, beliefs = network(updates).compile(jnp.float32)
        for robust, key in ((False, "nan_rate"), (True, "nan_rate_robust")):

            def finite(omegas, structure=structure, params=params, beliefs=beliefs, robust=robust):
                p = params._replace(tonic_volatility=params.tonic_volatility.at[1:].set(omegas))
                _, trajectories = pc.filter(structure, p, beliefs, series, robust=robust)
                return jnp.all(jnp.isfinite(trajectories.beliefs.mean))

            ok = np.asarray(jax.jit(jax.vmap(finite))(jnp.asarray(draws, jnp.float32)))
            out[key][updates] = float(1.0 - ok.mean())
    return out


def parity(reference_dir: pathlib.Path) -> dict:
    """Per case/variant/dtype: the worst relative error of ours (and of pyhgf's float32)
    against pyhgf's float64 run, over nodes, for each belief field."""
    import jax
    import numpy as np

    from lookahead_jax import predictive_coding as pc

    fields = ("mean", "precision", "expected_mean", "expected_precision")
    out: dict = {}
    for case in pyhgf_reference.cases(np):
        with np.load(reference_dir / f"{case}_float64.npz") as npz:
            run64 = dict(npz)
        with np.load(reference_dir / f"{case}_float32.npz") as npz:
            run32 = dict(npz)
        spec = json.loads(str(run64["spec"]))
        t = run64["inputs"].shape[0]
        for updates, mean_field in pyhgf_reference.VARIANTS:
            variant = pyhgf_reference.variant_name(updates, mean_field)
            for dtype in ("float64", "float32"):
                with jax.enable_x64(dtype == "float64"):
                    net = pc.Network(volatility_updates=updates, mean_field_updates=mean_field)
                    for call in spec:
                        kwargs = {
                            k: tuple(v) if isinstance(v, list) and k != "node_parameters" else v
                            for k, v in call.items()
                            if k != "kind"
                        }
                        net.add_nodes(call["kind"], **kwargs)
                    net.input_data(
                        run64["inputs"].astype(dtype),
                        run64["observed"],
                        run64["time_steps"].astype(dtype),
                    )
                    errors = {}
                    for name in fields:
                        worst, worst_pyhgf32 = 0.0, 0.0
                        for k in range(len(spec)):
                            ref = np.broadcast_to(run64[f"{variant}/{k}/{name}"], (t,))
                            mine = np.asarray(net.node_trajectories[k][name], np.float64)
                            fin = np.isfinite(ref) & (ref != 0)
                            with np.errstate(all="ignore"):
                                rel = np.abs(mine[fin] - ref[fin]) / np.abs(ref[fin])
                            worst = max(worst, float(np.max(rel, initial=0.0)))
                            if dtype == "float32":
                                theirs = np.broadcast_to(run32[f"{variant}/{k}/{name}"], (t,))
                                rel32 = np.abs(theirs[fin] - ref[fin]) / np.abs(ref[fin])
                                worst_pyhgf32 = max(
                                    worst_pyhgf32, float(np.max(rel32, initial=0.0))
                                )
                        errors[name] = {"ours": worst}
                        if dtype == "float32":
                            errors[name]["pyhgf_float32"] = worst_pyhgf32
                out[f"{case}/{variant}/{dtype}"] = errors
    return out


def plot(results: dict, out_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lookahead_jax import predictive_coding as pc

    fig, ax = plt.subplots(figsize=(7, 4))
    libraries = [name for name in ("lookahead_jax", "pyhgf") if name in results]
    keys = list(results["lookahead_jax"]["speed"])
    width = 0.8 / len(libraries)
    for i, name in enumerate(libraries):
        steady = [1e3 * results[name]["speed"][k]["steady_s"] for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, steady, width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(libraries) - 1) / 2, keys, rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("steady-state call (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "speed.png", dpi=120)
    plt.close(fig)
    net = pc.Network(volatility_updates="unbounded")
    for call in continuous3_spec():
        net.add_nodes(call["kind"], **{k: v for k, v in call.items() if k != "kind"})
    net.input_data(pc.load_data("continuous"))
    fig = net.plot_trajectories()
    fig.savefig(out_dir / "trajectories.png", dpi=120)
    plt.close(fig)


def main(argv) -> None:
    del argv
    import numpy as np
    from absl import flags  # noqa: F401  (absl parses the config flag before main)

    config = _CONFIG.value
    out_dir = pathlib.Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    draws = rng.uniform(config.nan_omega_low, config.nan_omega_high, size=(config.nan_draws, 3))
    results: dict = {"config": config.to_dict(), "draws_seed": config.seed}
    python = ensure_pyhgf(config) if config.pyhgf else None
    if python:
        with tempfile.TemporaryDirectory() as tmp:
            for dtype in ("float64", "float32"):
                call_worker(python, {"task": "reference", "dtype": dtype, "out": tmp})
            results["parity"] = parity(pathlib.Path(tmp))
        request = {
            "task": "measure",
            "variants": list(config.variants),
            "lengths": list(config.lengths),
            "repeats": config.repeats,
            "num_subjects": config.num_subjects,
            "subject_steps": config.subject_steps,
            "nan_draws": draws.tolist(),
        }
        results["pyhgf"] = call_worker(python, request)
    results["lookahead_jax"] = ours(config, draws)
    if python:
        speedup = {
            key: results["pyhgf"]["speed"][key]["steady_s"]
            / results["lookahead_jax"]["speed"][key]["steady_s"]
            for key in results["lookahead_jax"]["speed"]
        }
        speedup["batch"] = (
            results["pyhgf"]["batch"]["steady_s"] / results["lookahead_jax"]["batch"]["steady_s"]
        )
        results["steady_speedup_vs_pyhgf"] = speedup
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out_dir)
    print(json.dumps({k: v for k, v in results.items() if k not in ("config", "parity")}, indent=2))
    if "parity" in results:
        worst64 = max(
            e["ours"] for key, fields in results["parity"].items() if key.endswith("float64")
            for e in fields.values()
        )  # fmt: skip
        print(f"parity: worst float64 relative error of a belief field {worst64:.3g}")
    print(f"wrote {out_dir / 'results.json'}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--pyhgf-worker":
        pyhgf_worker(sys.argv[2], sys.argv[3])
    else:
        from absl import app
        from ml_collections import config_flags

        _CONFIG = config_flags.DEFINE_config_file("config", default="configs/compare_pyhgf.py")
        app.run(main)
