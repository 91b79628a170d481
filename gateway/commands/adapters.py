"""``cpimgw adapters``: what is installed in the ``cpimgw.adapters`` entry-point group.

DESIGN.md rule 6 ("one discovery route"): built-in and third-party adapters are listed the
same way, each with the distribution that provides it, its version and its declared
capabilities. A plugin that cannot be imported is listed with its import error on one
line (no traceback), so one broken plugin never hides the others.

Exit status: 0 (the list was printed, broken plugins included); ``--check`` makes it 1
when any plugin is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from adapters.contract import AdapterInfo, available


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``adapters``."""
    parser = subparsers.add_parser(
        "adapters",
        help="list installed adapters with distribution, version and capabilities",
        description="List every adapter registered in the cpimgw.adapters entry-point "
        "group; a plugin that cannot be imported is shown with its error.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when any installed plugin is broken"
    )
    parser.set_defaults(handler=run)


def describe(info: AdapterInfo) -> dict[str, Any]:
    """One adapter as JSON data."""
    return {
        "name": info.name,
        "target": info.target,
        "distribution": info.distribution,
        "version": info.version,
        "kind": info.adapter.kind if info.adapter is not None else None,
        "capabilities": sorted(c.value for c in info.capabilities),
        "error": info.error,
    }


def render(infos: list[AdapterInfo]) -> str:
    """The human-readable table: one block per adapter."""
    if not infos:
        return (
            "no adapters installed in the cpimgw.adapters entry-point group\n"
            "(install cpimgw itself, or a plugin package, into this environment)\n"
        )
    lines = []
    width = max(len(i.name) for i in infos)
    for info in infos:
        origin = f"{info.distribution or '?'} {info.version or ''}".strip()
        if info.error is not None:
            lines.append(f"{info.name:<{width}}  {origin}  BROKEN ({info.target})")
            lines.append(f"{'':<{width}}  error: {info.error}")
            continue
        lines.append(f"{info.name:<{width}}  {origin}  ok ({info.target})")
        caps = ", ".join(sorted(c.value for c in info.capabilities)) or "none declared"
        lines.append(f"{'':<{width}}  capabilities: {caps}")
    broken = sum(1 for i in infos if i.error is not None)
    lines.append(f"{len(infos)} adapter(s), {broken} broken")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    infos = available()
    if args.json:
        sys.stdout.write(json.dumps([describe(i) for i in infos], indent=1) + "\n")
    else:
        sys.stdout.write(render(infos))
    if args.check and any(i.error is not None for i in infos):
        return 1
    return 0
