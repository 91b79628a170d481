"""The ``cpimgw`` command: one entry point, one module per command group.

Each module in :mod:`gateway.commands` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``handler`` (a function taking the parsed arguments and returning
the exit status). Exit statuses: 0 success, 1 a check failed, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from canonical.errors import GatewayError

#: Command groups in the order ``cpimgw --help`` lists them.
COMMAND_MODULES = (
    "run",
    "config",
    "queue",
    "subscriptions",
    "adapters",
    "conformance",
    "cluster",
    "cpim",
    "smime",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group that is installed."""
    parser = argparse.ArgumentParser(
        prog="cpimgw",
        description="Lossless gateway between XMPP, SIP SIMPLE and native CPIM networks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"gateway.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gateway.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = handler(args)
    except GatewayError as exc:
        print(f"cpimgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # ``cpimgw cpim show FILE | head``: the reader left; say nothing more. stdout is
        # pointed at /dev/null so the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by the signal
    return status


if __name__ == "__main__":
    raise SystemExit(main())
