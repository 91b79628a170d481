"""Conformance journeys that start from native SIP (RFC 3428 MESSAGE requests as they come
off the wire), shipped with the kit in ``adapters/conformance/vectors/native/sip/``:

- every sample is an L2 case for adapters of kind ``sip`` (wire -> canonical -> wire,
  equal under SIP's equality), and a cross-protocol case through every peer
  (SIP -> canonical -> XMPP -> canonical -> SIP, payload identical after every hop, the
  signed sample's verdict unchanged after every hop);
- a peer that cannot carry the payload the SIP adapter made (IRC: no cpim-body, no
  signed-body) is UNSUPPORTED with its losses recorded, never a FAIL;
- the report (JSON and HTML) lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.conformance.case import Check
from adapters.conformance.checks import payload_needs
from adapters.conformance.folder import split_entity
from adapters.conformance.grade import Grade
from adapters.conformance.report import Report, to_html
from adapters.conformance.runner import Suite, builtin_cases
from adapters.conformance.target import Target
from adapters.contract import Capability
from canonical.envelope import CPIM, Payload

SAMPLES = (
    Path(__file__).resolve().parents[2] / "adapters" / "conformance" / "vectors" / "native" / "sip"
)
NAMES = sorted(p.stem for p in SAMPLES.glob("*.sip"))
COMPACT = (b"\r\nf:", b"\r\nt:", b"\r\ni:", b"\r\nc:", b"\r\nl:", b"\r\nv:")


def sample_ids() -> set[str]:
    return {f"vector/native/sip/{name}" for name in NAMES}


def test_samples_are_raw_sip_messages_of_the_shapes_promised() -> None:
    kinds = set()
    for path in SAMPLES.glob("*.sip"):
        head, body = split_entity(path.read_bytes())
        assert head.startswith(b"MESSAGE sip:"), path
        assert b"\n" not in head.replace(b"\r\n", b""), f"{path}: bare LF in the header block"
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith((b"l:", b"content-length:"))
        )
        assert length == len(body), f"{path}: Content-Length {length} for {len(body)} bytes"
        ctype = next(
            line.split(b":", 1)[1].strip().lower()
            for line in lines
            if line.lower().startswith((b"c:", b"content-type:"))
        )
        kinds.add(ctype.split(b";")[0])
        if any(marker in head for marker in COMPACT):
            kinds.add(b"compact")
    assert {b"text/plain", b"message/cpim", b"multipart/signed", b"compact"} <= kinds


def test_kit_ships_the_sip_samples_as_native_cases_of_kind_sip() -> None:
    natives = {c.id: c for c in builtin_cases() if c.check is Check.NATIVE and c.kind == "sip"}
    assert sample_ids() <= set(natives)
    assert all(natives[i].trust for i in sample_ids())  # the signed one is verified per hop


@pytest.fixture(scope="module")
def sip_report() -> Report:
    target = Target.installed("sip")
    peers = [Target.installed(name) for name in ("xmpp", "cpim", "irc") if _loads(name)]
    suite = Suite.collect(target, peers=peers, properties=False)
    suite.cases = [c for c in suite.cases if "native/sip/" in c.id]
    return suite.run()


def _loads(name: str) -> bool:
    try:
        Target.installed(name)
    except Exception:
        return False
    return True


def grades(report: Report) -> dict[str, tuple[Grade, str]]:
    return {r.case.id: (r.outcome.grade, r.outcome.detail) for r in report.results}


def test_sip_samples_survive_their_own_round_trip(sip_report: Report) -> None:
    found = grades(sip_report)
    for case_id in sample_ids():
        assert found[case_id][0] is Grade.PASS, found[case_id]


def test_journeys_from_native_sip_through_xmpp_keep_the_payload_and_the_signature(
    sip_report: Report,
) -> None:
    found = grades(sip_report)
    for name in NAMES:
        grade, detail = found[f"cross/xmpp/vector/native/sip/{name}"]
        assert grade is Grade.PASS, detail
        assert "identical payload at every hop" in detail
        if "signed" in name:
            assert "signature verdict unchanged at every hop" in detail, detail


def test_no_journey_from_native_sip_fails_and_irc_is_unsupported_not_failed(
    sip_report: Report,
) -> None:
    assert not sip_report.failures(), [(r.case.id, r.outcome.detail) for r in sip_report.failures()]
    crosses = [r for r in sip_report.results if r.case.check is Check.CROSS]
    assert {r.case.peer for r in crosses} >= {"xmpp", "cpim"}
    for result in crosses:
        if result.case.peer == "irc":
            assert result.outcome.grade is Grade.UNSUPPORTED, result.outcome.detail
            assert "needs" in result.outcome.detail


def test_report_shows_the_native_sip_journeys(sip_report: Report, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    sip_report.write(path)
    rows = json.loads(path.read_text())["results"]
    ids = {row["id"] for row in rows}
    assert sample_ids() <= ids
    assert {f"cross/xmpp/vector/native/sip/{name}" for name in NAMES} <= ids
    html = to_html(sip_report)
    for name in NAMES:
        assert f"vector/native/sip/{name}" in html


def test_payload_needs_name_what_carrying_the_object_exactly_takes() -> None:
    for name in NAMES:
        if "signed" in name:
            head, body = split_entity((SAMPLES / f"{name}.sip").read_bytes())
            ctype = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"c:")
            )
            assert Capability.SIGNED_BODY in payload_needs(Payload(ctype, body))
    cpim = (
        b"From: <sip:a@example.net>\r\nTo: <im:b@example.com>\r\n"
        b"Subject: hi\r\n\r\nContent-Type: text/plain\r\n\r\n\xc3\xa9"
    )
    needs = payload_needs(Payload(CPIM, cpim))
    assert {Capability.CPIM_BODY, Capability.SUBJECT, Capability.NON_ASCII} <= needs
    assert payload_needs(None) == frozenset()
