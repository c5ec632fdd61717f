"""The ``lookahead-jax`` command: ``tour`` and ``bench NAME``."""

from __future__ import annotations

import argparse
import ast
import importlib
import sys

from lookahead_jax import __version__

# bench name -> module under lookahead_jax.benchmarks with default_config(), run(), format_table()
BENCHMARKS = {
    "spec": "speculative",
    "hgf": "hgf",
    "particles": "inference_time_scaling",
    "leap": "leap_verify",
    "strategies": "decoding_strategies",
    "real": "real_models",
}


def _apply_overrides(config, overrides: list[str]):
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep or field not in config:
            raise SystemExit(
                f"--set expects FIELD=VALUE with FIELD in {sorted(config)}; got {item!r}"
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        setattr(config, field, value)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lookahead-jax", description="Pure, compiled JAX functions for lookahead methods."
    )
    parser.add_argument("--version", action="version", version=f"lookahead-jax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    tour_parser = commands.add_parser(
        "tour", help="show what the library does on the shipped models and data (CPU, minutes)"
    )
    from lookahead_jax import tour  # imported here to keep `--help` fast

    tour.add_arguments(tour_parser)
    bench_parser = commands.add_parser("bench", help="run a benchmark, print and save its figures")
    bench_parser.add_argument("name", choices=sorted(BENCHMARKS))
    bench_parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set repeats=5 --set 'batch_sizes=(1,)'",
    )
    args = parser.parse_args(argv)
    if args.command == "tour":
        tour.run(args)
    elif args.command == "bench":
        from tqdm import tqdm

        module = importlib.import_module(f"lookahead_jax.benchmarks.{BENCHMARKS[args.name]}")
        config = _apply_overrides(module.default_config(), args.set)
        results = module.run(config, progress=tqdm)
        print(module.format_table(results))
        print(f"wrote {config.output_dir}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
