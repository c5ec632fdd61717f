"""The ``lookahead-jax`` command."""

from __future__ import annotations

import argparse
import sys

from lookahead_jax import __version__


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
    args = parser.parse_args(argv)
    if args.command == "tour":
        tour.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
