"""``cpimgw config check FILE`` and ``cpimgw config show FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from canonical.errors import ConfigError
from gateway.config import ConfigFileError, load_file, masked


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check or show a config file")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a config file (every key, every adapter section)",
        description="Exit 0 when the file is valid; otherwise list every problem with its "
        "line and exit 1. Environment overrides (CPIMGW_...) are applied as at run time.",
    )
    check.add_argument("file")
    check.set_defaults(handler=handle_check)
    show = sub.add_parser("show", help="print the effective config as JSON, secrets masked")
    show.add_argument("file")
    show.set_defaults(handler=handle_show)


def handle_check(args: argparse.Namespace) -> int:
    try:
        config = load_file(args.file)
    except ConfigFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    settings = config.settings
    print(
        f"{args.file}: ok (gateway {settings.gateway.id}, {len(config.adapters)} adapter(s),"
        f" {len(config.routing().routes)} route(s), store {settings.store.backend})"
    )
    return 0


def handle_show(args: argparse.Namespace) -> int:
    try:
        config = load_file(args.file)
    except ConfigFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    data = config.settings.model_dump(mode="json")
    data["adapters"] = {
        name: {"kind": setup.kind, **setup.config.model_dump(mode="json")}
        for name, setup in config.adapters.items()
    }
    print(json.dumps(masked(data), indent=2, sort_keys=True))
    return 0
