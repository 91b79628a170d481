"""Reports: JSON with every case, its section, grade and evidence; HTML with a
side-by-side byte diff for each failure."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from adapters.conformance.report import Report
from adapters.conformance.runner import Suite
from adapters.conformance.target import Target
from tests.conformance import loopback as lb


@pytest.fixture(scope="module")
def failing() -> Report:
    target = Target(name="crlf", kind="loopback", mapper=lb.SilentCrlfLoss(), capabilities=lb.ALL)
    return Suite.collect(target, properties=False).run()


def test_json_report_lists_every_case_with_grade_and_difference(
    failing: Report, tmp_path: Path
) -> None:
    path = tmp_path / "report.json"
    failing.write(path)
    data = json.loads(path.read_text())
    assert data["adapter"] == "crlf"
    assert len(data["results"]) == len(failing.results)
    assert sum(data["summary"].values()) == len(failing.results)
    entry = next(r for r in data["results"] if r["id"] == "vector/cpim/001-minimal")
    assert entry["grade"] == "FAIL"
    assert entry["section"].startswith("RFC 3862 §2")
    diff = entry["difference"]
    expected, actual = base64.b64decode(diff["expected"]), base64.b64decode(diff["actual"])
    assert expected[: diff["offset"]] == actual[: diff["offset"]]
    assert expected[diff["offset"]] != actual[diff["offset"]]


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.classes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.classes += [v or "" for k, v in attrs if k == "class"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_shows_section_grade_and_side_by_side_diff(
    failing: Report, tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    failing.write(path)
    page = path.read_text(encoding="utf-8")
    cells = _Cells()
    cells.feed(page)
    text = "".join(cells.text)
    assert "vector/cpim/001-minimal" in text
    assert "RFC 3862 §2" in text
    with_difference = [r for r in failing.failures() if r.outcome.difference is not None]
    assert with_difference
    assert cells.classes.count("diff") == len(with_difference)
    assert "bad" in cells.classes  # the differing bytes are marked
    assert "expected (" in text
    assert "actual (" in text


def test_unknown_report_suffix_is_refused(failing: Report, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.json or \.html"):
        failing.write(tmp_path / "report.txt")


def test_summary_by_check_adds_up(failing: Report) -> None:
    table = failing.by_check()
    assert sum(sum(row.values()) for row in table.values()) == len(failing.results)
