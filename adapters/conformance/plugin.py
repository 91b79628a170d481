"""pytest plugin of the conformance kit (entry point ``pytest11: cpimgw-conformance``).

Loaded in every pytest session of an environment where cpimgw is installed, so it imports
nothing heavy until a test class derived from
:class:`~adapters.conformance.testcase.AdapterConformance` is collected. It

- turns every case of such a class's suite into one parametrised test (ids = case ids);
- records each outcome, prints a grade table per adapter at the end of the session;
- writes the report(s) with ``--conformance-report=FILE.json|FILE.html`` (with several
  adapters in one session, the adapter's name is added before the suffix).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from adapters.conformance.case import Case
    from adapters.conformance.grade import Outcome
    from adapters.conformance.report import Report
    from adapters.conformance.runner import Suite

REPORTS = pytest.StashKey[dict[str, "Report"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cpimgw-conformance", "cpimgw adapter conformance suite")
    group.addoption(
        "--conformance-report",
        metavar="FILE",
        default=None,
        help="write the conformance report to FILE (.json or .html)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_case" not in metafunc.fixturenames or metafunc.cls is None:
        return
    from adapters.conformance.testcase import AdapterConformance  # noqa: PLC0415

    if not issubclass(metafunc.cls, AdapterConformance):
        return
    suite = metafunc.cls.conformance_suite()
    metafunc.parametrize("conformance_case", suite.cases, ids=[c.id for c in suite.cases])


@pytest.fixture
def conformance_record(request: pytest.FixtureRequest) -> Callable[[Suite, Case, Outcome], None]:
    """Record one case's outcome in the session's report for its adapter."""
    from adapters.conformance.report import Result  # noqa: PLC0415

    reports = request.config.stash.setdefault(REPORTS, {})

    def record(suite: Suite, case: Case, outcome: Outcome) -> None:
        report = reports.get(suite.target.name)
        if report is None:
            report = reports[suite.target.name] = suite.new_report()
        report.results.append(Result(case, outcome))

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = config.stash.get(REPORTS, {})
    if not reports:
        return
    from adapters.conformance.grade import Grade  # noqa: PLC0415

    terminalreporter.section("cpimgw conformance")
    header = "".join(f"{g.value:>13}" for g in Grade)
    terminalreporter.write_line(f"{'adapter':<16}{header}")
    for name, report in sorted(reports.items()):
        counts = report.counts()
        row = "".join(f"{counts[g]:>13}" for g in Grade)
        terminalreporter.write_line(f"{name:<16}{row}")
        for note in report.notes:
            terminalreporter.write_line(f"  note: {note}")
    target = config.getoption("--conformance-report")
    if target:
        path = Path(target)
        for name, report in sorted(reports.items()):
            out = path if len(reports) == 1 else path.with_name(f"{path.stem}-{name}{path.suffix}")
            report.write(out)
            terminalreporter.write_line(f"conformance report for {name}: {out}")
