"""The ``lookahead-jax`` command: ``tour``, which runs from the installed wheel alone.

Benchmarks and peer comparisons are not part of the package: they live in a source
checkout's ``experiments/`` and run as ``python experiments/NAME.py``. ``lookahead-jax
bench NAME`` (the command before they moved) stays only to say so.
"""

from __future__ import annotations

import argparse
import sys

from lookahead_jax import __version__

# The old `bench NAME` -> the experiment script that now runs it (from a source checkout).
MOVED_BENCHMARKS = {
    "spec": "speculative_decoding",
    "hgf": "compare_pyhgf",
    "particles": "inference_time_scaling",
    "leap": "leap_verify",
    "strategies": "decoding_strategies",
    "real": "real_models",
}


def _moved_message(name: str) -> str:
    if name in MOVED_BENCHMARKS:
        script = MOVED_BENCHMARKS[name]
        how = (
            f"from a source checkout run: python experiments/{script}.py "
            f"[--config.FIELD=VALUE ...] (config: configs/{script}.py)"
        )
    else:
        how = (
            f"unknown benchmark {name!r}; the old names were {', '.join(MOVED_BENCHMARKS)}, "
            "now experiments/NAME.py in a source checkout"
        )
    return (
        "lookahead-jax bench: benchmarks are not part of the installed package (they "
        f"install peers and plot); {how}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lookahead-jax", description="Pure, compiled JAX functions for lookahead methods."
    )
    parser.add_argument("--version", action="version", version=f"lookahead-jax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{tour}")
    tour_parser = commands.add_parser(
        "tour", help="show what the library does on the shipped models and data (CPU, minutes)"
    )
    from lookahead_jax import tour  # imported here to keep `--help` fast

    tour.add_arguments(tour_parser)
    bench_parser = commands.add_parser("bench")  # not listed: moved to experiments/
    bench_parser.add_argument("name", nargs="?", default="")
    bench_parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "bench":
        bench_parser.exit(2, _moved_message(args.name) + "\n")
    errors = tour.argument_errors(args)
    if errors:
        tour_parser.error("; ".join(errors))
    tour.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
