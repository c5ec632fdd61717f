"""What every benchmark and experiment script shares: config flags, the multi-process
setup, JSON and figure output, edit distance.

Every script runs through :func:`run` (instead of ``absl.app.run``), so each accepts
the standard multi-process setup: ``--coordinator_address``, ``--num_processes``,
``--process_id`` (and ``--local_device_ids``), or the environment a TPU pod, SLURM or
``JAX_COORDINATOR_ADDRESS`` provides (``lookahead_jax.distributed.initialize``). Shared
files (:func:`write_json`, :func:`save_figure`, :func:`write_text`) are written by the
primary process only; checkpoints are written by every process (orbax coordinates them).
docs/launch.md says how to start each script on a pod, on multi-GPU and under SLURM.

Scoring continuations is the library's ``lookahead_jax.models.continuation_log_probs``.
"""

from __future__ import annotations

import difflib
import json
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import flags

from lookahead_jax import distributed

# The standard multi-process setup; unset flags fall back to the environment.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (multi-process runs; or JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "processes running this script (or JAX_NUM_PROCESSES, SLURM, TPU pod)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "this process's index in [0, num_processes) (or JAX_PROCESS_ID)."
)
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "local devices this process drives (one process per GPU: its rank)."
)


def config_override_errors(argv: Sequence[str], config) -> list[str]:
    """One message per ``--config.FIELD=VALUE`` in ``argv`` whose FIELD ``config`` lacks."""
    errors = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        field = arg[len("--config.") :].partition("=")[0].split(".")[0]
        if field not in config:
            close = difflib.get_close_matches(field, list(config), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            errors.append(f"--config.{field}: no such config field{hint}")
    return errors


def _config_from_file(path: pathlib.Path | str) -> Any:
    """``get_config()`` of the config file at ``path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_experiment_config", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def define_config(path: pathlib.Path | str, default_config: Callable[[], Any] | None = None):
    """``config_flags.DEFINE_config_file("config", path)``, with a message, not a traceback,
    when a ``--config.FIELD=VALUE`` override names a field the config does not have
    (ml_collections applies the overrides while the flag is defined, and raises there).
    ``default_config`` lists the valid fields (default: the file's ``get_config()``)."""
    from ml_collections import config_flags

    if default_config is None:
        default_config = lambda: _config_from_file(path)

    try:
        return config_flags.DEFINE_config_file("config", default=str(path))
    except (KeyError, AttributeError) as error:
        config = default_config()
        errors = config_override_errors(sys.argv[1:], config) or [str(error)]
        raise SystemExit(_override_message(errors, config)) from None


def _override_message(errors: list[str], config) -> str:
    return (
        "error: "
        + "; ".join(errors)
        + "\nvalid fields (--config.FIELD=VALUE): "
        + ", ".join(sorted(config))
    )


def named_config_errors(argv: Sequence[str]) -> str | None:
    """The message for ``--config.FIELD`` overrides that the config named by ``--config=PATH``
    lacks (``None`` when all are fields, or no config file is named).

    ml_collections applies those overrides while absl parses the flags, where a typo is a
    traceback; :func:`run` checks them first (the default config is checked by
    :func:`define_config`).
    """
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if not path or not pathlib.Path(path).is_file():
        return None  # ml_collections reports a missing file itself
    config = _config_from_file(path)
    errors = config_override_errors(argv, config)
    return _override_message(errors, config) if errors else None


def initialize_processes() -> distributed.ProcessSetup:
    """Joins the other processes from the flags (or the environment); one process otherwise."""
    ids = _LOCAL_DEVICE_IDS.value
    return distributed.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        local_device_ids=None if ids is None else [int(i) for i in ids],
    )


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` after :func:`initialize_processes` (before any device is used)."""
    from absl import app

    message = named_config_errors(sys.argv[1:])
    if message:
        raise SystemExit(message)

    def with_processes(argv: list[str]) -> Any:
        setup = initialize_processes()
        if setup.process_count > 1:
            print(setup, flush=True)
        return main(argv)

    app.run(with_processes)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic | np.ndarray):
        return x.tolist()
    if isinstance(x, tuple | set | frozenset):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json(results: Any, path: pathlib.Path | str, indent: int = 2) -> pathlib.Path:
    """Writes ``results`` (NumPy scalars and arrays as lists) to ``path``; makes its folder.

    Only the primary process writes (every process computes the same global results).
    """
    path = pathlib.Path(path)
    if not distributed.is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=indent, default=_jsonable)
    return path


def save_figure(fig: Any, path: pathlib.Path | str, dpi: int = 120) -> pathlib.Path:
    """``fig.savefig(path)`` on the primary process; makes the folder."""
    path = pathlib.Path(path)
    if distributed.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return path


def write_text(path: pathlib.Path | str, text: str) -> pathlib.Path:
    """Writes ``text`` to ``path`` on the primary process; makes the folder."""
    path = pathlib.Path(path)
    if distributed.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def write_study(
    results: dict[str, Any], output_dir: pathlib.Path | str, plot: Callable[..., Any]
) -> dict[str, Any]:
    """A study's usual outputs: ``results.json`` and ``plot(results, path)`` as
    ``results.png`` in ``output_dir``; returns ``results``."""
    out = pathlib.Path(output_dir)
    write_json(results, out / "results.json")
    plot(results, out / "results.png")
    return results


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (a row-vectorised dynamic programme)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0 or b.size == 0:
        return int(max(a.size, b.size))
    cols = np.arange(b.size + 1)
    prev = cols.copy()
    for i, x in enumerate(a, 1):
        tmp = np.empty_like(prev)
        tmp[0] = i
        tmp[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (b != x))
        prev = np.minimum.accumulate(tmp - cols) + cols
    return int(prev[-1])


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial proportion (95% by default); ``(None, None)``
    when ``total`` is 0. The interval always holds ``successes / total`` (rounding can put
    an endpoint a hair past it at 0 or 1)."""
    if total == 0:
        return None, None
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
