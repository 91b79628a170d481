"""Every shipped message/cpim vector behaves as canonical/vectors/README.md and the
manifest say, in both modes and both forms. The manifest is the oracle: expectations are
read from it, never copied here."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import pytest

from canonical import cpim, vectorset
from canonical.errors import ParseError

VALID = vectorset.valid_vectors()
INVALID = vectorset.invalid_vectors()
MODES = [pytest.param(True, id="strict"), pytest.param(False, id="lenient")]


def _body_form(data: bytes) -> tuple[bytes, int, int]:
    """The transport body of a vector (README "File convention"): everything after the
    first CRLF CRLF; with the byte and line shift from the file."""
    cut = data.index(b"\r\n\r\n") + 4
    return data[cut:], cut, data.count(b"\n", 0, cut)


def _read(vector: vectorset.Vector, form: str, strict: bool) -> tuple[cpim.CpimMessage, int, int]:
    data = vector.read_bytes()
    if form == "entity":
        return cpim.parse(data, strict=strict), 0, 0
    body, cut, lines = _body_form(data)
    return cpim.parse_body(body, strict=strict), cut, lines


@pytest.mark.parametrize("form", ["entity", "body"])
@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_parses_as_the_manifest_says(
    vector: vectorset.Vector, strict: bool, form: str
) -> None:
    msg, cut, line_shift = _read(vector, form, strict)
    entry = vector.entry
    data = vector.read_bytes()
    assert bytes(msg) == data[cut:]
    assert msg.form == form
    got = [
        {
            "line": h.line + line_shift,
            "name": h.name,
            "namespace": h.namespace,
            "local": h.local,
            "params": [list(p) for p in h.params],
            "value_raw": h.value_raw,
            "value": h.value,
        }
        for h in msg.headers
    ]
    want = [{k: v for k, v in h.items() if k != "extra"} for h in entry["headers"]]
    assert got == want
    assert [list(p) for p in msg.entity_headers] == entry["entity_headers"]
    assert msg.body_offset + cut == entry["body_offset"]
    assert len(msg.body) == entry["body_length"]
    assert hashlib.sha256(msg.body).hexdigest() == entry["body_sha256"]
    assert [d.code for d in msg.defects] == entry["warnings"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_header_raw_lines_rebuild_the_header_block(vector: vectorset.Vector) -> None:
    msg = cpim.parse(vector.read_bytes(), strict=True)
    block = b"".join(h.raw for h in msg.headers)
    start = msg.headers_offset
    assert msg.raw[start : start + len(block)] == block
    for h in msg.headers:
        assert msg.raw[h.offset : h.offset + len(h.raw)] == h.raw
        assert h.raw.endswith(b"\r\n")
        assert h.line == msg.raw.count(b"\n", 0, h.offset) + 1


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_views_match_the_manifest_extras(vector: vectorset.Vector) -> None:
    msg = cpim.parse(vector.read_bytes(), strict=True)
    core = [h for h in vector.entry["headers"] if h["namespace"] == cpim.CPIM_NS]

    def parties(local: str) -> list[cpim.Party]:
        return [
            cpim.Party(h["extra"]["formal_name"], h["extra"]["uri"])
            for h in core
            if h["local"] == local
        ]

    froms = parties("From")
    assert msg.sender == (froms[0] if froms else None)
    assert list(msg.to) == parties("To")
    assert list(msg.cc) == parties("cc")
    bindings: dict[str | None, str] = {None: cpim.CPIM_NS}
    for h in core:
        if h["local"] == "NS":
            bindings[h["extra"]["ns_prefix"]] = h["extra"]["ns_uri"]
    assert msg.namespaces == bindings
    required = [r for h in core if h["local"] == "Require" for r in h["extra"]["required"]]
    assert [
        {"name": r.name, "namespace": r.namespace, "local": r.local} for r in msg.requirements
    ] == required
    assert list(msg.require) == [r["name"] for r in required]
    subjects = [
        cpim.Subject(dict(h["params"]).get("lang"), h["value"])
        for h in core
        if h["local"] == "Subject"
    ]
    assert list(msg.subjects) == subjects
    dispositions = [
        d
        for h in vector.entry["headers"]
        if h["namespace"] == cpim.IMDN_NS and h["local"] == "Disposition-Notification"
        for d in h["extra"]["dispositions"]
    ]
    assert list(msg.dispositions) == dispositions
    content_types = [v for n, v in vector.entry["entity_headers"] if n.lower() == "content-type"]
    assert msg.content_type == content_types[0].strip()


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_datetime_agrees_with_the_stdlib_reader(vector: vectorset.Vector) -> None:
    msg = cpim.parse(vector.read_bytes(), strict=True)
    stamps = [
        h["value"]
        for h in vector.entry["headers"]
        if h["namespace"] == cpim.CPIM_NS and h["local"] == "DateTime"
    ]
    if not stamps:
        assert msg.datetime is None
        return
    value = msg.datetime
    assert value is not None
    assert value.text == stamps[0]
    reference = datetime.fromisoformat(stamps[0])  # RFC 3339 in, independent reader
    assert (value.year, value.month, value.day) == (reference.year, reference.month, reference.day)
    assert (value.hour, value.minute, value.second) == (
        reference.hour,
        reference.minute,
        reference.second,
    )
    assert value.timestamp() == pytest.approx(reference.timestamp(), abs=1e-6)
    if stamps[0].endswith("-00:00"):
        assert value.offset_minutes is None
    else:
        offset = reference.utcoffset()
        assert offset is not None
        assert value.offset_minutes == offset.total_seconds() // 60


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_describe_gives_the_manifest_entry(vector: vectorset.Vector) -> None:
    described = cpim.describe(cpim.parse(vector.read_bytes()))
    entry = vector.entry
    assert described["headers"] == entry["headers"]
    for key in ("entity_headers", "body_offset", "body_length"):
        assert described[key] == entry[key]
    assert described["defects"] == entry["warnings"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_under_the_msrp_profile_as_the_manifest_says(
    vector: vectorset.Vector,
) -> None:
    data = vector.read_bytes()
    if vector.entry["msrp_profile_valid"]:
        assert bytes(cpim.parse(data, strict=True, profile="msrp")) == data
        return
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, strict=True, profile="msrp")
    assert caught.value.code in {"PROFILE_REPEAT", "PROFILE_MISSING"}
    lenient = cpim.parse(data, profile="msrp")
    assert {d.code for d in lenient.defects} <= {"PROFILE_REPEAT", "PROFILE_MISSING"}
    assert lenient.defects


def _check_error(error: ParseError, data: bytes, vector: vectorset.Vector) -> None:
    assert error.code in vector.accepted_codes
    assert error.offset is not None
    assert 0 <= error.offset <= len(data)
    assert error.line == data.count(b"\n", 0, error.offset) + 1
    assert error.hint
    assert error.code in str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_invalid_vector_fails_in_strict_mode_with_its_code(vector: vectorset.Vector) -> None:
    data = vector.read_bytes()
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, strict=True, profile=vector.profile)  # type: ignore[arg-type]
    _check_error(caught.value, data, vector)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_invalid_vector_in_lenient_mode_fails_or_is_accepted_with_its_code(
    vector: vectorset.Vector,
) -> None:
    data = vector.read_bytes()
    fatal = vector.accepted_codes & cpim.FATAL_CODES
    if fatal:
        with pytest.raises(ParseError) as caught:
            cpim.parse(data, profile=vector.profile)  # type: ignore[arg-type]
        _check_error(caught.value, data, vector)
        return
    msg = cpim.parse(data, profile=vector.profile)  # type: ignore[arg-type]
    assert bytes(msg) == data
    codes = [d.code for d in msg.defects]
    assert vector.expected_code in codes
    for defect in msg.defects:
        assert defect.offset is not None
        assert defect.line == data.count(b"\n", 0, defect.offset) + 1


@pytest.mark.parametrize("vector", [v for v in INVALID if v.profile], ids=lambda v: v.name)
def test_profile_vector_is_valid_without_its_profile(vector: vectorset.Vector) -> None:
    data = vector.read_bytes()
    msg = cpim.parse(data, strict=True)
    assert bytes(msg) == data
    assert msg.defects == ()


def test_policy_vector_fails_in_every_mode() -> None:
    vector = next(v for v in INVALID if v.kind == "policy")
    for strict in (True, False):
        with pytest.raises(ParseError) as caught:
            cpim.parse(vector.read_bytes(), strict=strict)
        assert caught.value.code == vector.expected_code


def test_every_readme_error_code_is_documented_with_a_hint() -> None:
    readme = vectorset.root().joinpath("README.md").read_text("utf-8")
    section = readme.split("## Error codes", 1)[1].split("##", 1)[0]
    listed = {
        token.strip("`,. \n")
        for token in section.split("`")
        if token.strip("`,. \n").isupper() and "_" in token
    }
    assert listed
    assert listed <= set(cpim.ERROR_CODES)
    assert set(cpim.ERROR_CODES) == set(cpim.HINTS)


def _manifest_fields(entry: dict[str, Any]) -> set[str]:
    return {key for header in entry["headers"] for key in header}


def test_manifest_header_fields_are_the_ones_cpimgw_cpim_show_prints() -> None:
    fields = set().union(*(_manifest_fields(dict(v.entry)) for v in VALID))
    described = cpim.describe(cpim.parse(VALID[1].read_bytes()))
    printed = set().union(*(set(h) for h in described["headers"]))
    assert fields <= printed


def test_docs_explain_every_code() -> None:
    """docs/cpim.md lists every code with its meaning and fix (the docs cannot drift)."""
    from pathlib import Path  # noqa: PLC0415 - only this test reads the docs

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cpim.md").read_text("utf-8")
    for code, meaning in cpim.ERROR_CODES.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{code}` |")), "")
        assert row, code
        assert meaning.removeprefix("warning: ").split(" (RFC")[0] in row
