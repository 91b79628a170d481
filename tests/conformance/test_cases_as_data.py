"""Cases are data: the shipped files, the vector folders, a user's own folder, and clear
errors for a case file that does not follow the format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters.conformance.case import (
    CaseFormatError,
    Check,
    Expect,
    load_case_file,
    section_of,
)
from adapters.conformance.folder import VectorFolder, cpim_features, default_folder
from adapters.conformance.grade import Grade
from adapters.conformance.runner import Suite, builtin_cases
from adapters.conformance.target import Target
from adapters.contract import Capability
from canonical.errors import Reason
from tests.conformance import loopback as lb


def test_every_shipped_case_names_a_spec_section_and_a_requirement() -> None:
    cases = builtin_cases()
    assert len(cases) >= 40
    for case in cases:
        assert "RFC" in case.section or "DESIGN.md" in case.section, case.id
        assert case.requirement.endswith("."), case.id
        assert case.capabilities, case.id


def test_every_failure_reason_has_an_error_case() -> None:
    reasons = {c.input.fields["reason"] for c in builtin_cases() if c.check is Check.ERROR}
    assert reasons == {r.value for r in Reason}


def test_every_vector_file_becomes_a_case(vectors_dir: Path) -> None:
    folder = VectorFolder(vectors_dir)
    cases = folder.cases()
    files = [p for p in vectors_dir.rglob("*") if p.suffix in {".cpim", ".mime", ".xml"}]
    assert len(cases) == len(files)
    assert folder.unknown_files() == []


def test_vector_sections_come_from_the_manifest_rules(vectors_dir: Path) -> None:
    case = next(c for c in VectorFolder(vectors_dir).cases() if c.id.endswith("i001-bare-lf"))
    assert case.section == "RFC 3862 §2.2 (CRLF MUST terminate each line)"
    assert case.check is Check.MALFORMED_CANONICAL
    assert case.input.fields["expected_code"] == "BARE_LF"


def test_manifest_rule_notation_becomes_rfc_sections() -> None:
    assert section_of(["3862 s.4.1-4.7", "3860 App. A"]) == "RFC 3862 §4.1-4.7; RFC 3860 App. A"


def test_capabilities_needed_follow_the_object(vectors_dir: Path) -> None:
    def needs(name: str) -> frozenset[Capability]:
        data = (vectors_dir / "cpim" / "valid" / name).read_bytes()
        return cpim_features(data.split(b"\r\n\r\n", 1)[1])

    assert Capability.BINARY_BODY in needs("013-binary-png-body.cpim")
    assert Capability.SUBJECT_LANGUAGES in needs("011-lang-tagged-subjects.cpim")
    assert Capability.NON_ASCII in needs("012-utf8-names-body.cpim")
    assert needs("001-minimal.cpim") == {Capability.MESSAGE, Capability.CPIM_BODY}


def test_default_folder_is_the_shipped_vectors(vectors_dir: Path) -> None:
    assert default_folder() == vectors_dir


def _user_folder(tmp_path: Path, vectors_dir: Path) -> Path:
    folder = tmp_path / "myvectors"
    (folder / "cpim" / "valid").mkdir(parents=True)
    shutil.copy(
        vectors_dir / "cpim" / "valid" / "001-minimal.cpim",
        folder / "cpim" / "valid" / "900-mine.cpim",
    )
    native = folder / "native" / "loopback"
    native.mkdir(parents=True)
    (native / "hello.parcel").write_bytes(
        b"LOOPBACK/1 message\r\nSender: im:a@example.com\r\nRecipient: im:b@example.net\r\n"
        b"Identity: hello-1\r\nContent-Type: text/plain\r\nLength: 2\r\n\r\nhi"
    )
    (folder / "cases").mkdir()
    (folder / "cases" / "mine.json").write_text(
        json.dumps(
            {
                "cases": [
                    {
                        "id": "mine/presence-open",
                        "section": "RFC 3863 §4.1.4",
                        "requirement": "My presence document survives.",
                        "capabilities": ["presence"],
                        "check": "presence",
                        "expect": "fields",
                        "input": {
                            "form": "payload",
                            "content_type": "application/pidf+xml",
                            "file": "open.xml",
                        },
                    }
                ]
            }
        )
    )
    (folder / "cases" / "open.xml").write_bytes(
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:a@example.com"/>'
    )
    (folder / "notes.txt").write_text("not a vector")
    return folder


def test_user_folder_adds_canonical_native_and_data_cases(
    tmp_path: Path, vectors_dir: Path
) -> None:
    folder = _user_folder(tmp_path, vectors_dir)
    target = Target(
        name="loopback", kind="loopback", mapper=lb.LoopbackMapper(), capabilities=lb.ALL
    )
    peer = Target(name="peer", kind="loopback", mapper=lb.LoopbackMapper(), capabilities=lb.ALL)
    suite = Suite.collect(target, folders=[folder], peers=[peer], properties=False)
    ids = {c.id for c in suite.cases}
    assert {"vector/cpim/900-mine", "vector/native/loopback/hello", "mine/presence-open"} <= ids
    assert any("notes.txt" in note for note in suite.notes)
    report = suite.run()
    graded = {r.case.id: r.outcome.grade for r in report.results}
    assert graded["vector/native/loopback/hello"] is Grade.PASS
    assert graded["vector/cpim/900-mine"] is Grade.PASS
    assert graded["cross/peer/vector/native/loopback/hello"] is Grade.PASS


def test_native_cases_apply_only_to_their_kind(tmp_path: Path, vectors_dir: Path) -> None:
    folder = _user_folder(tmp_path, vectors_dir)
    other = Target(name="other", kind="other", mapper=lb.LoopbackMapper(), capabilities=lb.ALL)
    suite = Suite.collect(other, folders=[folder], properties=False)
    assert not [c for c in suite.cases if c.kind is not None]


def test_same_folder_twice_keeps_case_ids_unique(vectors_dir: Path) -> None:
    target = Target(
        name="loopback", kind="loopback", mapper=lb.LoopbackMapper(), capabilities=lb.ALL
    )
    suite = Suite.collect(target, folders=[vectors_dir], properties=False)
    ids = [c.id for c in suite.cases]
    assert len(ids) == len(set(ids))
    assert "1:vector/cpim/001-minimal" in ids


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"check": "sideways"}, "'sideways' is not a valid Check"),
        ({"capabilities": ["telepathy"]}, "unknown capability 'telepathy'"),
        ({"input": {"form": "payload", "file": "missing.xml"}}, "cannot read input file"),
        ({"input": {"form": "payload", "text": "a", "base64": "YQ=="}}, "give only one"),
        ({"section": None}, "missing key 'section'"),
    ],
)
def test_bad_case_file_names_file_case_and_fault(
    tmp_path: Path, mutation: dict[str, object], message: str
) -> None:
    case = {
        "id": "bad/one",
        "section": "RFC 3862 §2",
        "requirement": "x.",
        "capabilities": ["message"],
        "check": "canonical",
        "expect": "identical",
        "input": {"form": "payload", "text": "x"},
    }
    case.update(mutation)
    case = {k: v for k, v in case.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"cases": [case]}))
    with pytest.raises(CaseFormatError) as caught:
        load_case_file(path)
    text = str(caught.value)
    assert message in text
    assert "bad.json" in text
    assert "docs/conformance.md" in text


def test_duplicate_case_ids_are_refused(tmp_path: Path) -> None:
    case = {
        "id": "dup",
        "section": "RFC 3862 §2",
        "requirement": "x.",
        "capabilities": ["message"],
        "check": "canonical",
        "expect": "identical",
        "input": {"form": "payload", "text": "x"},
    }
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"cases": [case, case]}))
    with pytest.raises(CaseFormatError, match="appears twice"):
        load_case_file(path)


def test_case_json_carries_the_input_inline() -> None:
    case = next(c for c in builtin_cases() if c.id == "presence/open")
    data = case.to_json()
    assert data["expect"] == Expect.FIELDS.value
    assert data["input"]["base64"]
    assert data["capabilities"] == ["presence"]


def test_native_sample_the_mapper_cannot_rebuild_fails_l2(
    tmp_path: Path, vectors_dir: Path
) -> None:
    folder = _user_folder(tmp_path, vectors_dir)
    (folder / "native" / "loopback" / "bare.parcel").write_bytes(
        b"LOOPBACK/1 message\r\nContent-Type: text/plain\r\nLength: 2\r\n\r\nhi"
    )
    target = Target(
        name="loopback", kind="loopback", mapper=lb.LoopbackMapper(), capabilities=lb.ALL
    )
    report = Suite.collect(target, folders=[folder], properties=False).run()
    outcome = next(r.outcome for r in report.results if r.case.id == "vector/native/loopback/bare")
    assert outcome.grade is Grade.FAIL
    assert "not equal under the protocol's equality" in outcome.detail
