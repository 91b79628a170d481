"""``cpimgw cpim check`` and ``cpimgw cpim show``: message/cpim objects (RFC 3862) from files.

``check`` prints one line per fault on stdout::

    FILE: CODE: message (line L, byte B)            a rejection
    FILE: warning: CODE: message (line L, byte B)   a defect accepted (lenient mode)

and exits 0 when every file is accepted, 1 when any is rejected, 2 for usage or I/O errors
(the message on stderr). ``show`` prints the parse as JSON with the field names of the
vectors' ``manifest.json`` (``canonical.cpim.describe``). The codes and their fixes are in
``docs/cpim.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from canonical import cpim
from canonical.errors import Defect, ParseError

#: Name used for standard input.
STDIN = "-"


def register(subparsers: Any) -> None:
    """Add ``cpim check`` and ``cpim show`` to the ``cpimgw`` command line."""
    group = subparsers.add_parser(
        "cpim",
        help="check or show message/cpim objects (RFC 3862)",
        description="Check or show message/cpim objects (RFC 3862) read from files.",
    )
    actions = group.add_subparsers(dest="cpim_action", metavar="ACTION", required=True)

    check = actions.add_parser(
        "check",
        help="report every fault of message/cpim files",
        description=(
            "Report every fault, one line each: 'FILE: CODE: message (line L, byte B)' for a "
            "rejection, 'FILE: warning: CODE: ...' for a defect lenient mode accepts. Exit 0 "
            "when every file is accepted, 1 when any is rejected, 2 for usage or I/O errors."
        ),
    )
    _add_reading_options(check)
    check.add_argument(
        "-v", "--verbose", action="store_true", help="print how to fix each fault under it"
    )
    check.add_argument("files", nargs="+", metavar="FILE", help=f"a file, or {STDIN} for stdin")
    check.set_defaults(handler=run_check)

    show = actions.add_parser(
        "show",
        help="print the parse of a message/cpim file as JSON",
        description="Print the parse as JSON with the field names of the vectors' manifest.",
    )
    _add_reading_options(show)
    show.add_argument("file", metavar="FILE", help=f"a file, or {STDIN} for stdin")
    show.set_defaults(handler=run_show)


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="reject every grammar violation (RFC 3862 §3.6) instead of recording defects",
    )
    parser.add_argument(
        "--profile",
        choices=["msrp"],
        default=None,
        help="add an application profile's rules (msrp: RFC 4975 §13)",
    )
    parser.add_argument(
        "--body",
        action="store_true",
        help="the files are transport bodies (SIP/MSRP): no 'Content-type: Message/CPIM' block",
    )


def _read(name: str) -> bytes:
    if name == STDIN:
        return sys.stdin.buffer.read()
    with open(name, "rb") as handle:
        return handle.read()


def _where(line: int | None, offset: int | None) -> str:
    parts = []
    if line is not None:
        parts.append(f"line {line}")
    if offset is not None:
        parts.append(f"byte {offset}")
    return f" ({', '.join(parts)})" if parts else ""


def _parse(args: argparse.Namespace, data: bytes) -> cpim.CpimMessage:
    reader = cpim.parse_body if args.body else cpim.parse
    return reader(data, strict=args.strict, profile=args.profile)


def describe_error(name: str, error: ParseError) -> str:
    """The line ``check`` prints for a rejection."""
    return f"{name}: {error.code}: {error.message}{_where(error.line, error.offset)}"


def describe_defect(name: str, defect: Defect) -> str:
    """The line ``check`` prints for a defect that was accepted."""
    return f"{name}: warning: {defect.code}: {defect.detail}{_where(defect.line, defect.offset)}"


def run_check(args: argparse.Namespace) -> int:
    """``cpimgw cpim check``: 0 all accepted, 1 any rejected, 2 any unreadable."""
    rejected = False
    unreadable = False
    for name in args.files:
        try:
            data = _read(name)
        except OSError as exc:
            print(f"cpimgw: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
            unreadable = True
            continue
        try:
            msg = _parse(args, data)
        except ParseError as exc:
            rejected = True
            print(describe_error(name, exc))
            if args.verbose and exc.hint:
                print(f"    fix: {exc.hint}")
            continue
        for defect in msg.defects:
            print(describe_defect(name, defect))
            hint = cpim.HINTS.get(defect.code)
            if args.verbose and hint:
                print(f"    fix: {hint}")
    if unreadable:
        return 2
    return 1 if rejected else 0


def run_show(args: argparse.Namespace) -> int:
    """``cpimgw cpim show``: the parse as JSON on stdout (0), a rejection on stderr (1)."""
    try:
        data = _read(args.file)
    except OSError as exc:
        print(f"cpimgw: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        msg = _parse(args, data)
    except ParseError as exc:
        print(describe_error(args.file, exc), file=sys.stderr)
        if exc.hint:
            print(f"    fix: {exc.hint}", file=sys.stderr)
        return 1
    print(json.dumps(cpim.describe(msg), ensure_ascii=False, indent=2))
    return 0
