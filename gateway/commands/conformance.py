"""``cpimgw conformance --adapter NAME``: run the translation conformance suite.

The suite (``adapters.conformance``, docs/conformance.md) runs against any installed
adapter: the shipped vectors, the folders given with ``--vectors`` (same layout as
``canonical/vectors``), the kit's own cases, the laws on generated examples, and the
cross-protocol journeys through every other installed adapter (``--peer`` to choose).

Progress goes to stderr; the summary table (grades per kind of check) and every FAIL go
to stdout; ``--report FILE.json|FILE.html`` writes the full report.

Exit status: 0 no case failed (UNSUPPORTED and NON_STRICT are reported, not failed);
1 at least one FAIL; 2 usage error (unknown or broken adapter, bad folder or config).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any, TextIO

from adapters.conformance.case import Case
from adapters.conformance.grade import Grade, Outcome
from adapters.conformance.report import Report
from adapters.conformance.runner import Suite, peers_installed
from adapters.conformance.target import Target
from canonical.errors import ConfigError

BAR_WIDTH = 30


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``conformance``."""
    parser = subparsers.add_parser(
        "conformance",
        help="run the translation conformance suite against an installed adapter",
        description="Check an adapter against the laws L1-L3, the vectors and the kit's "
        "cases; see docs/conformance.md. Exit 1 on any FAIL.",
    )
    parser.add_argument("--adapter", required=True, metavar="NAME", help="entry-point name")
    parser.add_argument(
        "--vectors",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="an extra vector folder (same layout as canonical/vectors); repeatable",
    )
    parser.add_argument(
        "--report", type=Path, metavar="FILE", help="write the report (.json or .html)"
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=None,
        metavar="NAME",
        help="cross-protocol partner; repeatable (default: every installed adapter)",
    )
    parser.add_argument("--no-peers", action="store_true", help="no cross-protocol cases")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="adapter config: the [adapters.NAME] table (or the whole file) instead of "
        "the adapter's sample()",
    )
    parser.add_argument(
        "--examples", type=int, metavar="N", help="generated examples per property case"
    )
    parser.add_argument(
        "--no-properties", action="store_true", help="skip the laws on generated examples"
    )
    parser.add_argument("--only", metavar="TEXT", help="run only cases whose id contains TEXT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def read_config(path: Path, name: str) -> dict[str, Any]:
    """The adapter's table from a TOML file: ``[adapters.NAME]`` if present, else the file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", file=str(path)) from exc
    section = document.get("adapters", {}).get(name) if "adapters" in document else document
    if not isinstance(section, dict):
        raise ConfigError(
            f"no [adapters.{name}] table in {path}",
            file=str(path),
            hint=f"add [adapters.{name}] with the adapter's keys",
        )
    return {k: v for k, v in section.items() if k != "kind"}


class ProgressBar:
    """A one-line progress bar on a terminal; a line per tenth of the run otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.failed = 0
        self.shown = -1

    def __call__(self, done: int, total: int, case: Case, outcome: Outcome) -> None:
        if outcome.grade is Grade.FAIL:
            self.failed += 1
        filled = BAR_WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"[{bar}] {done}/{total} FAIL {self.failed}  {case.id}"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            if done == total:
                self.stream.write("\n")
        elif done * 10 // max(total, 1) != self.shown:
            self.shown = done * 10 // max(total, 1)
            self.stream.write(line + "\n")
        self.stream.flush()


def summary(report: Report) -> str:
    """The grade table per kind of check, then every FAIL with its section and detail."""
    version = f"{report.distribution or '?'} {report.version or ''}".strip()
    lines = [
        f"cpimgw conformance: adapter {report.adapter} (kind {report.kind}, {version}), "
        f"{len(report.results)} cases in {report.seconds:.1f} s",
        f"capabilities: {', '.join(report.capabilities) or 'none'}",
        f"peers: {', '.join(report.peers) or 'none'}",
        "",
        f"{'check':<22}" + "".join(f"{g.value:>13}" for g in Grade),
    ]
    for check, row in sorted(report.by_check().items()):
        lines.append(f"{check:<22}" + "".join(f"{row[g]:>13}" for g in Grade))
    counts = report.counts()
    lines.append(f"{'total':<22}" + "".join(f"{counts[g]:>13}" for g in Grade))
    lines.extend(f"note: {note}" for note in report.notes)
    failures = report.failures()
    if failures:
        lines.append("")
        lines.extend(f"FAIL {r.case.id} ({r.case.section}): {r.outcome.detail}" for r in failures)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    config = read_config(args.config, args.adapter) if args.config else None
    target = Target.installed(args.adapter, config=config)
    notes: list[str] = []
    peers: list[Target] = []
    if not args.no_peers:
        peers, notes = peers_installed(target.name, args.peer)
    for folder in args.vectors:
        if not folder.is_dir():
            raise ConfigError(f"--vectors {folder}: not a folder", hint="give a vector folder")
    suite = Suite.collect(
        target,
        folders=args.vectors,
        peers=peers,
        properties=not args.no_properties,
        examples=args.examples,
    )
    suite.notes.extend(notes)
    if args.only:
        suite.cases = [c for c in suite.cases if args.only in c.id]
    bar = None if args.quiet else ProgressBar(sys.stderr)
    report = suite.run(progress=bar)
    sys.stdout.write(summary(report))
    if args.report:
        try:
            report.write(args.report)
        except (OSError, ValueError) as exc:
            print(f"cpimgw: cannot write the report: {exc}", file=sys.stderr)
            return 2
        print(f"report written: {args.report}")
    return 1 if report.failed else 0
