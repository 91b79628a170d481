"""A conformance run's report: every case with its section, grade and evidence, as JSON
(for machines and CI artefacts) or as one self-contained HTML page (for people), where
each failure shows a side-by-side byte diff around its first differing byte."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.conformance.case import Case
from adapters.conformance.grade import Difference, Grade, Outcome

#: Bytes per hexdump row in the HTML diff, and rows shown before/after the difference.
ROW = 16
CONTEXT_ROWS = 4


@dataclass(frozen=True, slots=True)
class Result:
    """One case and its outcome, with the time it took."""

    case: Case
    outcome: Outcome
    seconds: float = 0.0


@dataclass(slots=True)
class Report:
    """The results of one run against one adapter."""

    adapter: str
    kind: str
    distribution: str | None
    version: str | None
    capabilities: tuple[str, ...]
    peers: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    started: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    def counts(self) -> dict[Grade, int]:
        counted = Counter(r.outcome.grade for r in self.results)
        return {grade: counted.get(grade, 0) for grade in Grade}

    @property
    def failed(self) -> bool:
        return any(r.outcome.grade is Grade.FAIL for r in self.results)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.outcome.grade is Grade.FAIL]

    def by_check(self) -> dict[str, dict[Grade, int]]:
        """Counts per kind of check (canonical, native, cross, ...), for the summary table."""
        table: dict[str, dict[Grade, int]] = {}
        for result in self.results:
            row = table.setdefault(result.case.check.value, dict.fromkeys(Grade, 0))
            row[result.outcome.grade] += 1
        return table

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "capabilities": list(self.capabilities),
            "peers": list(self.peers),
            "folders": list(self.folders),
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "summary": {g.value: n for g, n in self.counts().items()},
            "results": [_result_json(r) for r in self.results],
        }

    def write(self, path: Path) -> None:
        """Write JSON for ``*.json`` and HTML for ``*.html``/``*.htm``."""
        suffix = path.suffix.lower()
        if suffix == ".json":
            path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        elif suffix in {".html", ".htm"}:
            path.write_text(to_html(self), encoding="utf-8")
        else:
            raise ValueError(f"report file {path} must end in .json or .html")


def _difference_json(diff: Difference | None) -> dict[str, Any] | None:
    if diff is None:
        return None
    return {
        "where": diff.where,
        "offset": diff.offset,
        "expected": base64.b64encode(diff.expected).decode("ascii"),
        "actual": base64.b64encode(diff.actual).decode("ascii"),
        "description": diff.describe(),
    }


def _result_json(result: Result) -> dict[str, Any]:
    outcome = result.outcome
    case = result.case.to_json()
    return {
        **case,
        "grade": outcome.grade.value,
        "detail": outcome.detail,
        "losses": [{"field": loss.field, "detail": loss.detail} for loss in outcome.losses],
        "defects": list(outcome.defects),
        "steps": list(outcome.steps),
        "difference": _difference_json(outcome.difference),
        "seconds": round(result.seconds, 4),
    }


# --- HTML ---------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
.PASS{background:#d9f2d9}.NON_STRICT{background:#fff1c2}
.UNSUPPORTED{background:#e4e4f2}.FAIL{background:#f8c9c9}
.grade{font-weight:bold;white-space:nowrap}.id{font-family:monospace;white-space:nowrap}
.diff{display:flex;gap:1em}.diff>div{flex:1;overflow-x:auto}
pre{font:12px/1.3 monospace;margin:.2em 0}.bad{background:#f39a9a;font-weight:bold}
.summary td{text-align:right}.summary td:first-child{text-align:left}
"""


def _hexdump(data: bytes, offset: int, other: bytes) -> str:
    """Rows of hex and text around ``offset``; bytes that differ from ``other`` marked."""
    first = max(0, offset // ROW - CONTEXT_ROWS)
    last = min((max(len(data), 1) - 1) // ROW, offset // ROW + CONTEXT_ROWS)
    rows = []
    for row in range(first, last + 1):
        start = row * ROW
        hexes, text = [], []
        for index in range(start, start + ROW):
            if index >= len(data):
                hexes.append("  ")
                text.append(" ")
                continue
            byte = data[index]
            differs = index >= len(other) or other[index] != byte
            shown = chr(byte) if 0x20 <= byte < 0x7F else "."
            hx, tx = f"{byte:02x}", html.escape(shown)
            if differs and index >= offset:
                hx, tx = f'<span class="bad">{hx}</span>', f'<span class="bad">{tx}</span>'
            hexes.append(hx)
            text.append(tx)
        rows.append(f"{start:08x}  {' '.join(hexes)}  {''.join(text)}")
    if len(data) <= offset:
        rows.append(f"{len(data):08x}  (ends here: {len(data)} bytes)")
    return "\n".join(rows)


def _diff_html(diff: Difference) -> str:
    if diff.offset is None:
        left = html.escape(diff.expected.decode("utf-8", "replace"))
        right = html.escape(diff.actual.decode("utf-8", "replace"))
    else:
        left = _hexdump(diff.expected, diff.offset, diff.actual)
        right = _hexdump(diff.actual, diff.offset, diff.expected)
    where = html.escape(diff.where)
    at = "" if diff.offset is None else f" — first difference at byte {diff.offset}"
    return (
        f"<p>{where}{at}</p><div class='diff'>"
        f"<div><b>expected ({len(diff.expected)} bytes)</b><pre>{left}</pre></div>"
        f"<div><b>actual ({len(diff.actual)} bytes)</b><pre>{right}</pre></div></div>"
    )


def _row(result: Result) -> str:
    case, outcome = result.case, result.outcome
    grade = outcome.grade.value
    extra = []
    if outcome.losses:
        items = "".join(
            f"<li>{html.escape(loss.field)}: {html.escape(loss.detail)}</li>"
            for loss in outcome.losses
        )
        extra.append(f"<div>losses recorded:<ul>{items}</ul></div>")
    if outcome.defects:
        extra.append(f"<div>defects: {html.escape('; '.join(outcome.defects))}</div>")
    if outcome.difference is not None and outcome.grade is Grade.FAIL:
        extra.append(_diff_html(outcome.difference))
    if outcome.steps:
        extra.append(f"<div><small>steps: {html.escape(' → '.join(outcome.steps))}</small></div>")
    caps = ", ".join(sorted(c.value for c in case.capabilities))
    return (
        f"<tr class='{grade}'><td class='id'>{html.escape(case.id)}</td>"
        f"<td>{html.escape(case.section)}</td>"
        f"<td>{html.escape(case.requirement)}<br><small>needs: {html.escape(caps)}</small></td>"
        f"<td class='grade'>{grade}</td>"
        f"<td>{html.escape(outcome.detail)}{''.join(extra)}</td></tr>"
    )


def to_html(report: Report) -> str:
    """One self-contained page: the summary, then every case in run order."""
    counts = report.counts()
    summary_rows = "".join(
        f"<tr><td>{html.escape(check)}</td>"
        + "".join(f"<td class='{g.value}'>{row[g]}</td>" for g in Grade)
        + "</tr>"
        for check, row in sorted(report.by_check().items())
    )
    head = "".join(f"<th>{g.value}</th>" for g in Grade)
    totals = "".join(f"<td class='{g.value}'><b>{counts[g]}</b></td>" for g in Grade)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    version = f"{report.distribution or '?'} {report.version or ''}".strip()
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cpimgw conformance: {html.escape(report.adapter)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Conformance of adapter <code>{html.escape(report.adapter)}</code></h1>"
        f"<p>kind <code>{html.escape(report.kind)}</code>, from {html.escape(version)}; "
        f"capabilities: {html.escape(', '.join(report.capabilities) or 'none')}; "
        f"peers: {html.escape(', '.join(report.peers) or 'none')}; "
        f"started {html.escape(report.started)}, {report.seconds:.1f} s.</p>"
        f"<p>vector folders: {html.escape(', '.join(report.folders))}</p>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<table class='summary'><tr><th>check</th>{head}</tr>{summary_rows}"
        f"<tr><td><b>total</b></td>{totals}</tr></table><h2>Cases</h2>"
        "<table><tr><th>case</th><th>spec section</th><th>requirement</th><th>grade</th>"
        "<th>outcome</th></tr>" + "".join(_row(r) for r in report.results) + "</table>"
        "</body></html>\n"
    )
