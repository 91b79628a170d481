"""Grades, and what a check found: the outcome of one case.

The four grades of the kit (DESIGN.md rule 3, "no silent loss"; rule 5, "declared
capabilities"):

- ``PASS``: the requirement holds exactly.
- ``NON_STRICT``: accepted, with recorded defects or losses (a law that allows recorded
  losses, a malformed object relayed untouched instead of refused).
- ``UNSUPPORTED``: the case needs a capability the adapter does not declare. It is still
  run, as an audit: the adapter must refuse clearly or record its losses. It is reported,
  not failed.
- ``FAIL``: the requirement does not hold; the outcome names the first differing byte or
  field. A silent loss is a failure even for an undeclared capability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from canonical.errors import Loss


class Grade(StrEnum):
    """The grade of one case, from best to worst for sorting reports."""

    PASS = "PASS"  # noqa: S105 - a grade, not a password
    NON_STRICT = "NON_STRICT"
    UNSUPPORTED = "UNSUPPORTED"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Difference:
    """Where an actual result first departs from the expected one.

    ``where`` names the place (``payload after hop 1``, ``field basic``, ``native``);
    ``offset`` is the first differing byte (None for a field difference);
    ``expected``/``actual`` are the full values compared (bytes, or UTF-8 text for fields).
    """

    where: str
    expected: bytes
    actual: bytes
    offset: int | None = None

    def describe(self) -> str:
        """One line for a terminal: the place, the offset and the bytes around it."""
        if self.offset is None:
            return f"{self.where}: expected {_preview(self.expected)}, got {_preview(self.actual)}"
        start = max(0, self.offset - 8)
        exp = self.expected[start : self.offset + 8]
        act = self.actual[start : self.offset + 8]
        return (
            f"{self.where}: first difference at byte {self.offset} "
            f"(expected {len(self.expected)} bytes, got {len(self.actual)}): "
            f"expected ...{exp!r}..., got ...{act!r}..."
        )


def _preview(data: bytes, limit: int = 80) -> str:
    text = data.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def first_difference(expected: bytes, actual: bytes) -> int | None:
    """The offset of the first differing byte, or None when both are identical.

    When one is a prefix of the other, the offset is the shorter length.
    """
    if expected == actual:
        return None
    for index, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return index
    return min(len(expected), len(actual))


def compare_bytes(where: str, expected: bytes, actual: bytes) -> Difference | None:
    """A :class:`Difference` at the first differing byte, or None when identical."""
    offset = first_difference(expected, actual)
    if offset is None:
        return None
    return Difference(where, expected, actual, offset)


def compare_field(where: str, expected: object, actual: object) -> Difference | None:
    """A field :class:`Difference` (values shown as text), or None when equal."""
    if expected == actual:
        return None
    return Difference(where, _shown(expected), _shown(actual))


def _shown(value: object) -> bytes:
    return (value if isinstance(value, str) else repr(value)).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What running one case gave: its grade, a sentence saying why, and the evidence.

    ``losses`` are those the adapter recorded on the way; ``defects`` are notes on
    accepted faults (e.g. a malformed object relayed untouched); ``steps`` is the path the
    case took (``xmpp.from_canonical``, ``xmpp.encode``, ...), for the report.
    """

    grade: Grade
    detail: str
    losses: tuple[Loss, ...] = ()
    defects: tuple[str, ...] = ()
    difference: Difference | None = None
    steps: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> bool:
        return self.grade is Grade.FAIL
