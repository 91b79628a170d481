"""The pure HTTP mapping: laws L1/L2/L3 through the wire format, statuses, bad input."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.conformance.runner import run_suite
from adapters.conformance.target import Target
from adapters.cpim.adapter import CpimHttpAdapter
from adapters.cpim.mapping import (
    FROM_STATUS,
    HTTP_STATUS,
    RETRYABLE,
    HttpMapper,
    HttpRequest,
    decode_value,
    encode_value,
    error_from_status,
    event_of,
    problem,
    read_authors,
    report_of,
)
from canonical import smime, vectorset
from canonical.envelope import (
    CPIM,
    PIDF,
    Envelope,
    Operation,
    Origin,
    Payload,
    identity_of,
)
from canonical.errors import GatewayError, MappingError, ParseError, Reason
from canonical.policy import STRICT
from tests.pki import make_ca, make_leaf

ROOT = Path(__file__).resolve().parents[2]
MAPPER = HttpMapper(adapter="api")
ORIGIN = Origin(adapter="api", peer="gw-a", context={"kind": "peer"})
APP = Origin(adapter="api", peer="bot", context={"kind": "client"})
SIGNED = smime.payload_from_entity(
    vectorset.root().joinpath("signed", "s01-multipart-signed.mime").read_bytes()
)

PIDF_DOC = (
    b"<?xml version='1.0' encoding='UTF-8'?>\r\n"
    b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:ada@example.com'>"
    b"<tuple id='t1'><status><basic>open</basic></status></tuple></presence>"
)

addresses = st.sampled_from(
    [
        "im:ada@example.com",
        "xmpp:ada@xmpp.example.com/phone",
        "sip:bob@example.net",
        "xmpp:ñandú@example.com",
        "sip:+15551234@example.net;user=phone",
        "im:charles@bots.example.net",
    ]
)
trace = st.lists(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), max_size=4)
attributes = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True), st.text(max_size=40), max_size=3
)


def cpim_body(
    text: str, sender: str = "im:ada@example.com", to: str = "im:bob@example.net"
) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nDateTime: 2024-03-05T17:00:00Z\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


def roundtrip(envelope: Envelope) -> Envelope:
    """Envelope -> request -> bytes -> request -> envelope (what a peer reads)."""
    wire = MAPPER.encode(MAPPER.from_canonical(envelope).value)
    return MAPPER.to_canonical(MAPPER.decode(wire), origin=ORIGIN, received_at=1.0).value


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    operation = draw(st.sampled_from(list(Operation)))
    payload = None
    if operation is Operation.MESSAGE:
        payload = draw(
            st.one_of(
                st.just(SIGNED),
                st.text(max_size=80).map(lambda t: Payload(CPIM, cpim_body(t))),
                st.binary(min_size=1).map(
                    lambda b: Payload("application/pkcs7-mime; smime-type=enveloped-data", b)
                ),
            )
        )
    elif operation is Operation.NOTIFY:
        payload = Payload(PIDF, PIDF_DOC)
    return Envelope(
        operation=operation,
        sender=draw(addresses),
        recipient=draw(addresses),
        payload=payload,
        identity=draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True)),
        origin=Origin(adapter="core"),
        max_forwards=draw(st.integers(0, 255)),
        trace=tuple(draw(trace)),
        duration=draw(st.one_of(st.none(), st.integers(0, 86400)))
        if operation is Operation.SUBSCRIBE
        else None,
        granted=draw(st.booleans()) if operation is Operation.AUTHORIZE else None,
        attributes=draw(attributes),
    )


@given(envelopes())
@settings(max_examples=200)
def test_every_envelope_field_survives_the_wire_to_a_peer(envelope: Envelope) -> None:
    """L1 through the wire, and every transport fact with it (payload byte for byte)."""
    back = roundtrip(envelope)
    for name in ("operation", "sender", "recipient", "payload", "identity", "max_forwards"):
        assert getattr(back, name) == getattr(envelope, name), name
    assert (back.trace, back.duration, back.granted) == (
        envelope.trace,
        envelope.duration,
        envelope.granted,
    )
    assert dict(back.attributes) == dict(envelope.attributes)


@given(st.text(max_size=200), addresses, addresses)
def test_cpim_payload_comes_back_byte_for_byte(text: str, sender: str, recipient: str) -> None:
    """L1: to_canonical(decode(encode(from_canonical(c)))) gives c's payload exactly."""
    body = cpim_body(text)
    envelope = Envelope(
        Operation.MESSAGE, sender, recipient, Payload(CPIM, body), identity_of(body), ORIGIN
    )
    assert roundtrip(envelope).payload == Payload(CPIM, body)


@given(envelopes())
@settings(max_examples=100)
def test_native_request_survives_canonical_and_back(envelope: Envelope) -> None:
    """L2: a request a peer sends equals, under the protocol's equality, the request
    rebuilt from its envelope."""
    native = MAPPER.decode(MAPPER.encode(MAPPER.from_canonical(envelope).value))
    again = MAPPER.from_canonical(
        MAPPER.to_canonical(native, origin=ORIGIN, received_at=2.0).value
    ).value
    assert MAPPER.equal(again, native)


def test_signed_object_passes_untouched_and_still_verifies() -> None:
    """L3: a multipart/signed object crosses the HTTP hop and verifies byte-exactly."""
    ca = make_ca()
    leaf = make_leaf(ca, "ada", uris=("im:ada@example.com",))
    entity = b"Content-type: Message/CPIM\r\n\r\n" + cpim_body("signed hello")
    payload = smime.sign(entity, leaf.cert, leaf.key, chain=[ca.cert])
    envelope = Envelope(
        Operation.MESSAGE, "xmpp:ada@example.com", "sip:bob@example.net", payload,
        identity_of(payload.body), ORIGIN,
    )  # fmt: skip
    back = roundtrip(envelope)
    assert back.payload == payload
    assert back.payload is not None
    result = smime.verify(back.payload, [ca.cert], now=dt.datetime.now(dt.UTC))
    assert result.valid, result.error


def test_shipped_signed_vector_passes_and_names_its_signed_from() -> None:
    authors = read_authors(SIGNED)
    assert authors.sender == "im:ada@example.com"
    assert authors.recipients == ("im:charles@example.net",)


def test_pidf_and_encrypted_objects_pass_untouched() -> None:
    for operation, payload in (
        (Operation.NOTIFY, Payload(PIDF, PIDF_DOC)),
        (
            Operation.MESSAGE,
            Payload("application/pkcs7-mime; smime-type=enveloped-data", b"\x30\x80\x01"),
        ),
    ):
        envelope = Envelope(
            operation, "pres:ada@example.com", "sip:bob@example.net", payload, "abc", ORIGIN
        )
        assert roundtrip(envelope).payload == payload


def test_every_valid_cpim_vector_crosses_unchanged() -> None:
    for vector in vectorset.valid_vectors():
        data = vector.read_bytes()
        body = data.split(b"\r\n\r\n", 1)[1]  # entity form -> body form
        envelope = Envelope(
            Operation.MESSAGE, "im:a@example.com", "im:b@example.com", Payload(CPIM, body),
            identity_of(body), ORIGIN,
        )  # fmt: skip
        assert roundtrip(envelope).payload == Payload(CPIM, body), vector.name


@given(st.text(max_size=60))
def test_header_values_round_trip_through_the_ext_value_form(text: str) -> None:
    encoded = encode_value(text)
    assert encoded.isascii()
    assert "\r" not in encoded
    assert "\n" not in encoded
    assert decode_value(encoded, header="X") == text


def test_defaults_come_from_the_cpim_object() -> None:
    request = HttpRequest(
        "POST",
        "/v1/messages",
        (("Content-Type", CPIM),),
        cpim_body("hi", "im:ada@a.example", "im:bob@b.example"),
    )
    envelope = MAPPER.to_canonical(request, origin=ORIGIN, received_at=5.0).value
    assert (envelope.sender, envelope.recipient) == ("im:ada@a.example", "im:bob@b.example")
    assert envelope.max_forwards == 70


def test_bad_cpim_is_refused_with_its_code_and_offset() -> None:
    body = (
        b"From: <im:ada@example.com>\nTo: <im:bob@example.net>\r\n\r\nContent-Type: a/b\r\n\r\nhi"
    )
    request = HttpRequest("POST", "/v1/messages", (("Content-Type", CPIM),), body)
    with pytest.raises(ParseError) as caught:
        MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.0)
    assert caught.value.code == "BARE_LF"
    assert caught.value.offset == body.index(b"\n")
    shown = problem(caught.value)
    assert shown["status"] == 400
    assert (shown["code"], shown["offset"]) == ("BARE_LF", caught.value.offset)


def test_strict_policy_refuses_what_lenient_relays() -> None:
    tail = b"\r\n\r\nContent-Type: a/b\r\n\r\nhi"
    body = b'From: "Ada"<im:ada@example.com>\r\nTo: <im:bob@example.net>' + tail
    loose = b'From: "Ada" <im:ada@example.com>\r\nTo: <im:bob@example.net>' + tail
    request = HttpRequest("POST", "/v1/messages", (("Content-Type", CPIM),), loose)
    MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.0)
    with pytest.raises(ParseError):
        HttpMapper(policy=STRICT).to_canonical(request, origin=ORIGIN, received_at=1.0)
    ok = HttpRequest("POST", "/v1/messages", (("Content-Type", CPIM),), body)
    HttpMapper(policy=STRICT).to_canonical(ok, origin=ORIGIN, received_at=1.0)


def test_unsupported_media_type_is_a_mapping_error_with_415() -> None:
    request = HttpRequest("POST", "/v1/messages", (("Content-Type", "text/plain"),), b"hi")
    with pytest.raises(MappingError) as caught:
        MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.0)
    assert HTTP_STATUS[caught.value.reason] == 415


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ((("Cpimgw-From", "ftp:x@example.com"),), "ADDRESS_BAD_SCHEME"),
        ((("Max-Forwards", "-1"),), "HTTP_BAD_NUMBER"),
        ((("Max-Forwards", "256"),), "HTTP_BAD_NUMBER"),
        ((("Cpimgw-Trace", "gw a, b"),), "HTTP_BAD_TRACE"),
        ((("Cpimgw-Attribute", "no-equals"),), "HTTP_BAD_ATTRIBUTE"),
        ((("Cpimgw-Id", "x" * 200),), "HTTP_BAD_ID"),
    ],
)
def test_bad_transport_headers_are_named(headers: tuple[tuple[str, str], ...], code: str) -> None:
    request = HttpRequest(
        "POST", "/v1/messages", (("Content-Type", CPIM), *headers), cpim_body("x")
    )
    with pytest.raises(ParseError) as caught:
        MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.0)
    assert caught.value.code.startswith(code)


def test_every_reason_has_an_http_status_and_comes_back() -> None:
    assert set(HTTP_STATUS) == set(Reason)
    for reason, status in HTTP_STATUS.items():
        back = error_from_status(status, {"reason": reason.value}, retry_after=None, where="x")
        assert back.reason is reason
        assert status in FROM_STATUS  # the status alone reads back to some reason too


def test_status_table_is_the_one_in_docs_mapping_errors() -> None:
    """docs/mapping/errors.md is the single table: its HTTP and Retry? columns."""
    rows = {}
    text = (ROOT / "docs" / "mapping" / "errors.md").read_text("utf-8")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[4][:3].isdigit():
            rows[Reason(cells[0].strip("`"))] = (int(cells[4][:3]), cells[5])
    assert set(rows) == set(Reason)
    for reason, (status, retry) in rows.items():
        assert HTTP_STATUS[reason] == status, reason
        assert (reason in RETRYABLE) == retry.startswith(("yes", "after")), reason


def test_peer_status_without_body_reads_by_class() -> None:
    assert error_from_status(418, None, retry_after=None, where="x").retryable is False
    busy = error_from_status(503, None, retry_after=7.0, where="x")
    assert (busy.retryable, busy.retry_after, busy.reason) == (True, 7.0, Reason.UNAVAILABLE)


def test_failure_report_reads_back_as_the_same_failure() -> None:
    envelope = Envelope(
        Operation.MESSAGE, "sip:bob@example.net", "xmpp:ada@example.com",
        Payload(CPIM, cpim_body("x")), "f" * 32,
        Origin(adapter="api", reply_to="sip:bob@example.net"),
    )  # fmt: skip
    error = GatewayError("no such user", reason=Reason.UNKNOWN_DESTINATION)
    native = MAPPER.error_to_native(envelope, error)
    assert native.body == b""
    back = MAPPER.error_from_native(MAPPER.decode(MAPPER.encode(native)))
    assert back is not None
    assert back.reason is Reason.UNKNOWN_DESTINATION
    report = MAPPER.to_canonical(native, origin=ORIGIN, received_at=1.0).value
    assert report == report_of(envelope, error).replace(origin=report.origin, received_at=1.0)


def test_an_application_sets_only_its_own_attributes_a_peer_carries_all() -> None:
    headers = (
        ("Content-Type", CPIM),
        ("Cpimgw-Attribute", "imdn.message-id=m-1"),
        ("Cpimgw-Attribute", "sip.from-display=The%20Boss"),
        ("Cpimgw-Attribute", "xmpp.origin-id=someone-elses"),
    )
    request = HttpRequest("POST", "/v1/messages", headers, cpim_body("x"))
    app = MAPPER.to_canonical(request, origin=APP, received_at=1.0)
    assert dict(app.value.attributes) == {"imdn.message-id": "m-1"}
    assert [loss.field for loss in app.losses] == [
        "Cpimgw-Attribute: sip.from-display",
        "Cpimgw-Attribute: xmpp.origin-id",
    ]
    unknown = MAPPER.to_canonical(request, origin=Origin("api"), received_at=1.0).value
    assert "sip.from-display" not in unknown.attributes
    peer = MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.0).value
    assert peer.attributes["sip.from-display"] == "The Boss"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"payload": Payload("text/plain; x=\u041f", b"hi")}, Reason.UNSUPPORTED_MEDIA),
        ({"payload": Payload("message/cpim\r\nX-Injected: 1", b"hi")}, Reason.UNSUPPORTED_MEDIA),
        ({"trace": ("gw a\r\nX: 1",)}, Reason.BAD_REQUEST),
    ],
)
def test_values_no_header_can_hold_are_mapping_errors(
    changes: dict[str, object], reason: Reason
) -> None:
    envelope = Envelope(
        Operation.MESSAGE, "im:a@example.com", "im:b@example.com",
        Payload(CPIM, cpim_body("x")), "i", ORIGIN,
    ).replace(**changes)  # fmt: skip
    with pytest.raises(MappingError) as caught:
        MAPPER.encode(MAPPER.from_canonical(envelope).value)
    assert caught.value.reason is reason


def test_attribute_names_no_header_can_hold_are_reported_losses() -> None:
    envelope = Envelope(
        Operation.MESSAGE, "im:a@example.com", "im:b@example.com",
        Payload(CPIM, cpim_body("x")), "i", ORIGIN,
        attributes={"ok.name": "v", "bad name\r\nX-Injected": "v"},
    )  # fmt: skip
    mapped = MAPPER.from_canonical(envelope)
    assert [v for k, v in mapped.value.headers if k == "Cpimgw-Attribute"] == ["ok.name=v"]
    assert len(mapped.losses) == 1


def test_event_carries_the_payload_exactly() -> None:
    body = bytes(range(256))
    envelope = Envelope(
        Operation.MESSAGE, "im:a@example.com", "im:b@example.com",
        Payload("application/pkcs7-mime; smime-type=enveloped-data", body), "i", ORIGIN,
    )  # fmt: skip
    event = event_of(envelope, seq=7)
    assert base64.b64decode(event["body"]) == body
    assert event["id"] == "7"


def test_conformance_kit_passes_on_the_http_mapper() -> None:
    report = run_suite(Target.from_adapter(CpimHttpAdapter), peers=[])
    assert not report.failed, [(r.case.id, r.outcome) for r in report.failures()]
    assert report.counts()
