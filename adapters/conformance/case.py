"""A conformance case is data: what it checks, where the rule comes from, its input, and
the outcome it expects.

Cases are read from JSON files (the kit's own ``cases/*.json``, a user folder's
``cases/*.json``) and from vector folders (:mod:`adapters.conformance.folder`); the runner
never needs code per case. The JSON form of one case::

    {
      "id": "presence/open-with-note",
      "section": "RFC 3863 §4.1.4; RFC 3922 §5.1",
      "requirement": "An available presentity with a note keeps both across the mapping.",
      "capabilities": ["presence"],
      "check": "presence",
      "expect": "fields",
      "input": {"form": "payload", "content_type": "application/pidf+xml",
                "file": "pidf/open-note.xml"}
    }

``input`` holds exactly one of ``file`` (relative to the JSON file), ``text`` (UTF-8) or
``base64``, or none for inputs made only of ``fields`` (an envelope's operation, a failure
reason, a generator's name).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from adapters.contract import Capability
from canonical.errors import ParseError

InputForm = Literal["payload", "native", "envelope", "failure", "generated"]
FORMS: tuple[InputForm, ...] = ("payload", "native", "envelope", "failure", "generated")


class Check(StrEnum):
    """Which journey a case takes through the adapter's mapper."""

    CANONICAL = "canonical"  # L1: CPIM payload -> native -> wire -> native -> payload
    SIGNED = "signed"  # L1 + L3: a signed payload keeps its bytes and its verdict
    NATIVE = "native"  # L2: wire -> native -> envelope -> native, equal under the protocol
    PRESENCE = "presence"  # a NOTIFY with PIDF keeps its fields (RFC 3863, RFC 3922 §5)
    SUBSCRIPTION = "subscription"  # subscribe / unsubscribe / authorize keep their meaning
    ERROR = "error"  # a failure reported natively reads back as the same failure
    MALFORMED_CANONICAL = "malformed-canonical"  # a broken CPIM object: refused or untouched
    MALFORMED_NATIVE = "malformed-native"  # broken wire input: a clear error, never a crash
    CROSS = "cross"  # A -> canonical -> B -> canonical -> A
    PROPERTY = "property"  # a law checked on generated examples (hypothesis)


class Expect(StrEnum):
    """The outcome a case expects (what PASS means for it)."""

    IDENTICAL = "identical"  # the payload comes back byte for byte
    SAME_VERDICT = "same-verdict"  # identical, and the signature verdict is unchanged
    VERIFIES = "verifies"  # the signature verifies after every hop
    EQUAL = "equal"  # the native message is equal under the protocol's own equality
    FIELDS = "fields"  # every modelled field is equal, or its loss is recorded
    SAME_FAILURE = "same-failure"  # the failure reads back with the same reason and text
    REFUSED_OR_UNTOUCHED = "refused-or-untouched"  # a clear error, or the bytes relayed as they are
    NO_CRASH = "no-crash"  # a clear error or an acceptance, never another exception
    HOLDS = "holds"  # the law holds on every generated example


class CaseFormatError(ParseError):
    """A case file that does not follow the case format; names the file and the case."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(
            "CASE_FORMAT",
            f"{source}: {message}",
            hint="see docs/conformance.md, 'Case format'",
        )
        self.source = source


@dataclass(frozen=True, slots=True)
class Input:
    """What a case feeds in: ``form`` says how ``data`` and ``fields`` are read.

    - ``payload``: ``content_type`` + ``data`` form an envelope payload (CPIM, PIDF, signed).
    - ``native``: ``data`` is the adapter's wire format (applies to adapters of ``kind``).
    - ``envelope``: ``fields`` give ``operation``, ``duration``, ``granted`` and
      ``attribute.NAME`` entries of an envelope without payload.
    - ``failure``: ``fields`` give ``reason`` (a :class:`~canonical.errors.Reason` value)
      and ``text``.
    - ``generated``: ``fields`` give ``law``, ``strategy`` and ``examples``.
    """

    form: InputForm
    content_type: str | None = None
    data: bytes = b""
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Case:
    """One conformance case.

    ``capabilities`` are all needed for a strict grade; ``kind`` limits a native case to
    adapters of that kind; ``peer`` is set on cross-protocol cases (the other adapter);
    ``trust`` lists PEM certificates a signed case verifies against; ``source`` says where
    the case was read from.
    """

    id: str
    section: str
    requirement: str
    capabilities: frozenset[Capability]
    check: Check
    expect: Expect
    input: Input
    kind: str | None = None
    peer: str | None = None
    trust: tuple[Path, ...] = ()
    source: str = ""

    def across(self, peer: str) -> Case:
        """This case as a cross-protocol journey through ``peer`` and back."""
        return replace(
            self,
            id=f"cross/{peer}/{self.id}",
            requirement=f"Through {peer} and back: {self.requirement}",
            check=Check.CROSS,
            peer=peer,
        )

    def to_json(self) -> dict[str, Any]:
        """The case as JSON data (inputs inline as base64), for reports."""
        return {
            "id": self.id,
            "section": self.section,
            "requirement": self.requirement,
            "capabilities": sorted(c.value for c in self.capabilities),
            "check": self.check.value,
            "expect": self.expect.value,
            "kind": self.kind,
            "peer": self.peer,
            "source": self.source,
            "input": {
                "form": self.input.form,
                "content_type": self.input.content_type,
                "base64": base64.b64encode(self.input.data).decode("ascii"),
                "fields": dict(self.input.fields),
            },
        }


_RFC_RULE = re.compile(r"\b(\d{4}) (?:s\.|(App\.))")


def section_of(rules: Iterable[str]) -> str:
    """``["3862 s.2.2 (CRLF ...)"]`` (the vector manifests' notation) as
    ``RFC 3862 §2.2 (CRLF ...)``; several rules are joined with ``; ``."""
    return "; ".join(_RFC_RULE.sub(_rfc_reference, rule) for rule in rules)


def _rfc_reference(match: re.Match[str]) -> str:
    appendix = match.group(2)
    return f"RFC {match.group(1)} {appendix}" if appendix else f"RFC {match.group(1)} §"


def _capabilities(raw: object, source: str) -> frozenset[Capability]:
    if not isinstance(raw, list):
        raise CaseFormatError("'capabilities' must be a list of names", source=source)
    known = {c.value: c for c in Capability}
    result = set()
    for name in raw:
        if name not in known:
            raise CaseFormatError(
                f"unknown capability {name!r} (known: {', '.join(sorted(known))})", source=source
            )
        result.add(known[name])
    return frozenset(result)


def _input(raw: object, base: Path, source: str) -> Input:
    if not isinstance(raw, dict):
        raise CaseFormatError("'input' must be an object", source=source)
    form = raw.get("form")
    if form not in FORMS:
        known = ", ".join(FORMS)
        raise CaseFormatError(f"input form {form!r} is not one of {known}", source=source)
    given = [key for key in ("file", "text", "base64") if key in raw]
    if len(given) > 1:
        raise CaseFormatError(f"input has {' and '.join(given)}: give only one", source=source)
    data = b""
    if "file" in raw:
        path = base / str(raw["file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CaseFormatError(f"cannot read input file {path}: {exc}", source=source) from exc
    elif "text" in raw:
        data = str(raw["text"]).encode("utf-8")
    elif "base64" in raw:
        data = base64.b64decode(str(raw["base64"]), validate=True)
    fields = raw.get("fields", {})
    if not isinstance(fields, dict):
        raise CaseFormatError("input 'fields' must be an object", source=source)
    content_type = raw.get("content_type")
    return Input(
        form=form,
        content_type=None if content_type is None else str(content_type),
        data=data,
        fields={str(k): str(v) for k, v in fields.items()},
    )


def case_from_json(raw: Mapping[str, Any], *, base: Path, source: str) -> Case:
    """One case from its JSON object; ``base`` is the folder input files are relative to."""
    where = f"{source} [{raw.get('id', '?')}]"
    for key in ("id", "section", "requirement", "capabilities", "check", "expect", "input"):
        if key not in raw:
            raise CaseFormatError(f"missing key {key!r}", source=where)
    try:
        check = Check(raw["check"])
        expect = Expect(raw["expect"])
    except ValueError as exc:
        raise CaseFormatError(str(exc), source=where) from exc
    return Case(
        id=str(raw["id"]),
        section=str(raw["section"]),
        requirement=str(raw["requirement"]),
        capabilities=_capabilities(raw["capabilities"], where),
        check=check,
        expect=expect,
        input=_input(raw["input"], base, where),
        kind=None if raw.get("kind") is None else str(raw["kind"]),
        trust=tuple(base / str(p) for p in raw.get("trust", ())),
        source=source,
    )


def load_case_file(path: Path) -> list[Case]:
    """Every case in one JSON file (``{"cases": [...]}``); CaseFormatError names the fault."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaseFormatError(f"cannot read cases: {exc}", source=str(path)) from exc
    cases = document.get("cases") if isinstance(document, dict) else None
    if not isinstance(cases, list):
        raise CaseFormatError('expected an object {"cases": [...]}', source=str(path))
    result = [case_from_json(item, base=path.parent, source=str(path)) for item in cases]
    seen: set[str] = set()
    for case in result:
        if case.id in seen:
            raise CaseFormatError(f"case id {case.id!r} appears twice", source=str(path))
        seen.add(case.id)
    return result


def load_case_folder(folder: Path) -> list[Case]:
    """Every case of every ``*.json`` file in ``folder``, files in name order."""
    return [case for path in sorted(folder.glob("*.json")) for case in load_case_file(path)]
