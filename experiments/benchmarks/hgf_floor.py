"""The HGF's hardware floor (issue 18): one series through the 3-level continuous HGF
(standard updates, float32) as a plain scalar C loop (``hgf_floor.c``, the same equations,
checked against ours value for value), next to our compiled scan, in one run.

Why: the issue asks for 3x pyhgf's scan; both libraries' scans are one XLA loop whose steps
depend on each other, so the question is how far XLA's loop sits above what the CPU needs
for the same arithmetic. The C program is compiled with ``config.cc`` at each of
``config.compile_flags`` (default ``-O2``: IEEE arithmetic as XLA's; and ``-O3
-ffast-math -march=native``); each length runs ``config.repeats`` times inside one C
process (median), and our ``filter_series`` under ``jax.jit``, compiled and warmed, the
same number of times (median), interleaved with the C runs. Series: the USD-CHF rates
tiled to each length, as in ``experiments/compare_pyhgf.py`` (the classic HGF's
precisions underflow at the jump of the first repeat, step 614, and both sides go on in
NaN: ``config.lengths`` includes 600 to time finite arithmetic only).

Writes ``results.json`` and ``results.png`` (ns per step vs length) to ``config.output_dir``.
Needs a C compiler (``cc``); without one the run stops with a clear error.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from experiments.benchmarks import _common

SOURCE = pathlib.Path(__file__).resolve().with_name("hgf_floor.c")


def default_config():
    import ml_collections

    config = ml_collections.ConfigDict()
    config.cc = "cc"
    config.compile_flags = ("-O2", "-O3 -ffast-math -march=native")
    config.lengths = (600, 1_000, 10_000, 100_000)
    config.repeats = 9
    config.output_dir = "outputs/hgf_floor"
    return config


def build(cc: str, flags: str, out_dir: pathlib.Path) -> pathlib.Path:
    """Compiles ``hgf_floor.c``; returns the executable. ValueError without a compiler."""
    if shutil.which(cc) is None:
        raise ValueError(f"`cc`: no C compiler {cc!r} on PATH; this benchmark needs one.")
    exe = out_dir / ("hgf_floor" + flags.replace(" ", "").replace("-", "_"))
    subprocess.run([cc, *flags.split(), "-o", str(exe), str(SOURCE), "-lm"], check=True)
    return exe


def run_c(exe: pathlib.Path, length: int, repeats: int, dump: pathlib.Path | None = None):
    """Seconds of each of ``repeats`` runs over ``length`` steps; ``dump``: [length, 16]."""
    from lookahead_jax.predictive_coding.data import DATA_DIR

    command = [str(exe), str(DATA_DIR / "usdchf.txt"), str(length), str(repeats)]
    if dump is not None:
        command.append(str(dump))
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = json.loads(done.stdout)["seconds"]
    if dump is None:
        return seconds, None
    return seconds, np.fromfile(dump, np.float32).reshape(length, 16)


def ours():
    """``(fn(u [T, 1]) -> [T, 16] beliefs, jitted)`` of our 3-level HGF, standard updates,
    fields in the C program's order (per node: mean, precision, expected mean and
    precision)."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import hgf
    from lookahead_jax import predictive_coding as pc

    structure, params, beliefs = hgf.build(pc.Network, hgf.CONTINUOUS3, "standard").compile(
        jnp.float32
    )

    @jax.jit
    def fn(u):
        b = pc.filter_series(structure, params, beliefs, u)[1].beliefs
        fields = (b.mean, b.precision, b.expected_mean, b.expected_precision)
        return jnp.stack(fields, axis=-1).reshape(u.shape[0], -1)  # [T, node * 4 + field]

    return fn


def series(length: int) -> np.ndarray:
    from lookahead_jax import predictive_coding as pc

    return np.resize(pc.load_data("continuous").astype(np.float32), (length, 1))


def check(exe: pathlib.Path, fn, length: int = 1_000) -> dict[str, Any]:
    """The C program's beliefs against ours over ``length`` steps: the largest difference
    where both are finite, relative to that belief's largest magnitude over the series
    (a mean crossing zero has no useful pointwise relative error), and whether both are
    NaN at the same places."""
    with tempfile.TemporaryDirectory() as tmp:
        _, theirs = run_c(exe, length, 1, pathlib.Path(tmp) / "dump.bin")
    mine = np.asarray(fn(series(length)))
    finite = np.isfinite(mine) & np.isfinite(theirs)
    scale = np.max(np.where(finite, np.abs(mine), 0.0), axis=0, keepdims=True)
    error = np.where(finite, np.abs(mine - theirs), 0.0) / np.maximum(scale, 1e-30)
    return {
        "steps": length,
        "max_relative_difference": float(np.max(error)),
        "same_nan": bool(np.array_equal(np.isnan(mine), np.isnan(theirs))),
        "finite_steps": int(np.sum(np.all(np.isfinite(mine), axis=1))),
    }


def run(config, progress=None) -> dict[str, Any]:
    import jax

    progress = progress or (lambda x, **_: x)
    out_dir = pathlib.Path(config.output_dir)
    results: dict[str, Any] = {"config": config.to_dict(), "jax": jax.__version__, "rows": []}
    fn = ours()
    with tempfile.TemporaryDirectory() as tmp:
        exes = {flags: build(config.cc, flags, pathlib.Path(tmp)) for flags in config.compile_flags}
        results["checks"] = {flags: check(exe, fn) for flags, exe in exes.items()}
        for length in progress(config.lengths, desc="lengths"):
            u = jax.numpy.asarray(series(length))
            jax.block_until_ready(fn(u))  # compile and warm
            times: dict[str, list[float]] = {"ours": [], **{f: [] for f in exes}}
            for _ in range(config.repeats):  # interleaved: a slow spell hits every side
                start = time.perf_counter()
                jax.block_until_ready(fn(u))
                times["ours"].append(time.perf_counter() - start)
                for flags, exe in exes.items():
                    # Two runs per process, the second timed: the first also faults in
                    # the output buffer's pages (XLA reuses its buffers between calls).
                    times[flags].append(run_c(exe, length, 2)[0][1])
            row = {"length": length}
            for name, values in times.items():
                row[name] = {
                    "median_ms": statistics.median(values) * 1e3,
                    "ns_per_step": statistics.median(values) / length * 1e9,
                }
            for flags in exes:
                row[f"ours_over_c[{flags}]"] = row["ours"]["median_ms"] / row[flags]["median_ms"]
            results["rows"].append(row)
    _common.write_json(results, out_dir / "results.json")
    plot(results, out_dir / "results.png")
    return results


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ["ours", *results["config"]["compile_flags"]]:
        label = "ours (jit scan)" if name == "ours" else f"C {name}"
        ax.plot(
            [r["length"] for r in rows], [r[name]["ns_per_step"] for r in rows], "o-", label=label
        )
    ax.set_xscale("log")
    ax.set_xlabel("steps")
    ax.set_ylabel("ns per step (median)")
    ax.set_title("3-level HGF, standard updates, float32")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path)
    plt.close(fig)


def format_table(results: dict[str, Any]) -> str:
    flags = results["config"]["compile_flags"]
    lines = [
        "| steps | ours ns/step | " + " | ".join(f"C {f} ns/step (ours / C)" for f in flags) + " |",
        "|--:|--:|" + "--:|" * len(flags),
    ]
    for r in results["rows"]:
        cells = [f"{r[f]['ns_per_step']:.1f} ({r[f'ours_over_c[{f}]']:.2f}x)" for f in flags]
        lines.append(
            f"| {r['length']} | {r['ours']['ns_per_step']:.1f} | " + " | ".join(cells) + " |"
        )
    for f, c in results["checks"].items():
        lines.append(
            f"\nC {f} vs ours over {c['steps']} steps: max relative difference "
            f"{c['max_relative_difference']:.2e} where finite, same NaNs: {c['same_nan']} "
            f"({c['finite_steps']} finite steps)"
        )
    return "\n".join(lines)
