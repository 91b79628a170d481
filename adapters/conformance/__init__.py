"""The shipped conformance kit: translation cases (data), the runner, grades and reports.

DESIGN.md rule 7 ("ship the test kit"): the suite that checks cpimgw's own adapters is the
one plugin authors run on theirs, from the command line (``cpimgw conformance``) or from
pytest (subclass :class:`AdapterConformance`).

- :mod:`~adapters.conformance.case`: a case as data (id, spec section, requirement,
  capabilities, input, expected outcome) and the JSON case files.
- :mod:`~adapters.conformance.folder`: a vector folder (``canonical/vectors`` layout).
- :mod:`~adapters.conformance.checks` and :mod:`~adapters.conformance.law`: the journeys
  and the laws on generated examples; :mod:`~adapters.conformance.grade`: the grades.
- :mod:`~adapters.conformance.runner`: :class:`Suite` collects and runs;
  :mod:`~adapters.conformance.report`: JSON and HTML reports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.conformance.case import Case, Check, Expect, Input
    from adapters.conformance.grade import Difference, Grade, Outcome
    from adapters.conformance.report import Report, Result
    from adapters.conformance.runner import Suite, run_suite
    from adapters.conformance.target import Target
    from adapters.conformance.testcase import AdapterConformance

#: Public names and the modules that define them. Imported on first use (PEP 562): the
#: pytest plugin module lives in this package and is loaded by every pytest session.
_EXPORTS = {
    "AdapterConformance": "testcase",
    "Case": "case",
    "Check": "case",
    "Difference": "grade",
    "Expect": "case",
    "Grade": "grade",
    "Input": "case",
    "Outcome": "grade",
    "Report": "report",
    "Result": "report",
    "Suite": "runner",
    "Target": "target",
    "run_suite": "runner",
}

__all__ = [
    "AdapterConformance",
    "Case",
    "Check",
    "Difference",
    "Expect",
    "Grade",
    "Input",
    "Outcome",
    "Report",
    "Result",
    "Suite",
    "Target",
    "run_suite",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adapters.conformance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"adapters.conformance.{_EXPORTS[name]}"), name)
