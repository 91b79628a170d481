"""The pure SIP <-> canonical mapping: bodies byte for byte, text built deterministically,
laws L1 and L2 as hypothesis properties, presence, and the error tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sip.codec import Request, Response, reply
from adapters.sip.header import quote
from adapters.sip.mapping import (
    SIP_NS,
    BodyRoute,
    SipMapper,
    delivery_error,
    error_response,
    notify_state,
)
from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import GatewayError, MappingError, Reason

VECTORS = Path(__file__).resolve().parents[2] / "canonical" / "vectors"
ORIGIN = Origin(adapter="sip")
MAPPER = SipMapper(gateway_id="gw1")


def message(
    body: bytes,
    content_type: str | None,
    *,
    extra: list[tuple[str, str]] | None = None,
    from_: str = '"Alice A." <sip:alice@sip.test>;tag=a1',
    to: str = "<sip:bob@xmpp.test>",
    uri: str = "sip:bob@xmpp.test",
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
        ("From", from_),
        ("To", to),
        ("Call-ID", "call-1@sip.test"),
        ("CSeq", "7 MESSAGE"),
        ("Max-Forwards", "69"),
        *(extra or []),
    ]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return Request.build("MESSAGE", uri, headers, body)


def to_canonical(request: Request, mapper: SipMapper = MAPPER) -> Envelope:
    mapped = mapper.to_canonical(request, origin=ORIGIN, received_at=1700000000.0)
    assert mapped.value.losses == mapped.losses
    return mapped.value


CPIM_BODY = (
    b"From: Ada <im:ada@example.com>\r\nTo: <im:bob@xmpp.test>\r\n"
    b"DateTime: 2024-05-01T12:00:00Z\r\n\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe \xe2\x9c\x93\r\n"
)


def test_message_cpim_body_is_the_payload_byte_for_byte() -> None:
    env = to_canonical(message(CPIM_BODY, "message/cpim", extra=[("Subject", "hi")]))
    assert env.payload == Payload("message/cpim", CPIM_BODY)
    assert env.sender == "sip:alice@sip.test"
    assert env.recipient == "sip:bob@xmpp.test"
    assert env.max_forwards == 69
    assert env.losses == ()
    assert json.loads(env.attributes["sip.headers"]) == [["Subject", "hi"]]
    assert env.attributes["sip.from-display"] == "Alice A."


def test_signed_body_is_untouched() -> None:
    data = (VECTORS / "signed" / "s01-multipart-signed.mime").read_bytes()
    head, body = data.split(b"\r\n\r\n", 1)
    content_type = head.decode().split(":", 1)[1].strip()
    env = to_canonical(message(body, content_type))
    assert env.payload is not None
    assert env.payload.body == body
    assert env.payload.content_type == content_type
    assert env.payload.is_signed
    out = MAPPER.from_canonical(env).value
    assert out.body == body
    assert out.get("Content-Type") == content_type


def test_text_without_charset_is_read_as_utf8_into_a_deterministic_object() -> None:
    req = message("Grüße ✓".encode(), "text/plain", extra=[("Subject", "Hallo")])
    first, second = to_canonical(req), to_canonical(req)
    assert first.payload == second.payload
    assert first.losses == ()
    assert first.payload is not None
    parsed = cpim.parse_body(first.payload.body, strict=True)
    assert parsed.body == "Grüße ✓".encode()
    assert parsed.content_type == "text/plain; charset=utf-8"
    assert parsed.sender == cpim.Party("Alice A.", "sip:alice@sip.test")
    assert parsed.subject() == "Hallo"
    assert parsed.namespaces["sip"] == SIP_NS
    assert [h.value for h in parsed.find("Content-Type", SIP_NS)] == ["text/plain"]


def test_text_that_is_not_utf8_is_read_as_latin1_with_a_loss() -> None:
    env = to_canonical(message("Grüße".encode("latin-1"), "text/plain"))
    assert [loss.field for loss in env.losses] == ["body"]
    assert env.payload is not None
    assert cpim.parse_body(env.payload.body).body == "Grüße".encode()


def test_declared_charset_is_transcoded_with_a_loss() -> None:
    env = to_canonical(message("Привет".encode("koi8-r"), "text/plain; charset=koi8-r"))
    assert [loss.field for loss in env.losses] == ["body/charset"]
    assert env.payload is not None
    assert cpim.parse_body(env.payload.body).body == "Привет".encode()


def test_iscomposing_and_imdn_bodies_are_wrapped_and_come_back_native() -> None:
    iscomposing = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<isComposing '
        b'xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>active</state></isComposing>'
    )
    req = message(iscomposing, "application/im-iscomposing+xml")
    env = to_canonical(req)
    assert env.payload is not None
    parsed = cpim.parse_body(env.payload.body)
    assert parsed.content_type == "application/im-iscomposing+xml"
    assert parsed.body == iscomposing
    back = MAPPER.from_canonical(env).value
    assert MAPPER.equal(back, req)
    assert back.body == iscomposing


def test_imdn_request_in_cpim_is_exposed_as_attributes() -> None:
    data = (VECTORS / "cpim" / "valid" / "015-imdn-request.cpim").read_bytes()
    body = cpim.parse(data).to_body()
    env = to_canonical(message(body, "message/cpim"))
    assert env.attributes["imdn.message-id"]
    assert "delivery" in env.attributes["imdn.disposition-notification"]


def test_native_text_message_round_trips_without_a_loss() -> None:
    req = message(
        b"hello\r\nworld",
        "text/plain;charset=UTF-8",
        extra=[("Subject", "greeting"), ("Content-Language", "en"), ("X-Mood", "fine")],
    )
    env = to_canonical(req)
    back = MAPPER.from_canonical(env)
    assert back.losses == ()
    assert back.value.get("Content-Type") == "text/plain;charset=UTF-8"
    assert MAPPER.equal(back.value, req)


def test_outbound_message_carries_hops_trace_and_identity_call_id() -> None:
    env = to_canonical(message(CPIM_BODY, "message/cpim")).hop("gw0").hop("gw1")
    out = MAPPER.from_canonical(env).value
    assert out.max_forwards == 67
    assert out.get("Cpimgw-Trace") == "gw0, gw1"
    assert out.call_id == f"{env.identity}@gw1"
    assert MAPPER.from_canonical(env).value.call_id == out.call_id  # same on resend
    again = to_canonical(out)
    assert again.trace == ("gw0", "gw1")
    assert again.max_forwards == 67


def test_any_scheme_becomes_a_sip_uri() -> None:
    env = Envelope(
        Operation.MESSAGE,
        sender="xmpp:alice@xmpp.test/phone",
        recipient="im:bob@sip.test",
        payload=Payload(CPIM, CPIM_BODY),
        identity="0123456789abcdef0123456789abcdef",
        origin=Origin("xmpp"),
    )
    out = MAPPER.from_canonical(env).value
    assert out.uri == "sip:bob@sip.test"
    assert out.from_.uri.address_of_record == "sip:alice@xmpp.test"
    assert out.from_.uri.param("gr") == "phone"


def test_text_route_sends_text_plain_and_lists_what_it_drops() -> None:
    mapper = SipMapper(routes=[BodyRoute("sip.test", "text/plain")])
    data = (VECTORS / "cpim" / "valid" / "002-all-standard-headers.cpim").read_bytes()
    env = Envelope(
        Operation.MESSAGE,
        sender="sip:ada@example.com",
        recipient="sip:bob@sip.test",
        payload=Payload(CPIM, cpim.parse(data).to_body()),
        identity="f" * 32,
        origin=Origin("xmpp"),
    )
    mapped = mapper.from_canonical(env)
    assert mapped.value.get("Content-Type") == "text/plain;charset=UTF-8"
    assert mapped.value.body == cpim.parse(data).body
    assert {loss.field for loss in mapped.losses} >= {"cpim/DateTime"}


def test_415_fallback_only_for_unsigned_objects() -> None:
    env = to_canonical(message(CPIM_BODY, "message/cpim"))
    fallback = MAPPER.text_fallback(env)
    assert fallback.value.get("Content-Type") == "text/plain;charset=UTF-8"
    assert fallback.value.body == "Grüße ✓\r\n".encode()
    assert any(loss.field == "Content-Type" for loss in fallback.losses)
    signed = env.replace(payload=Payload('multipart/signed; boundary="b"', b"--b--\r\n"))
    with pytest.raises(MappingError) as err:
        MAPPER.text_fallback(signed)
    assert err.value.reason is Reason.UNSUPPORTED_MEDIA
    assert "signature" in str(err.value)


def test_body_without_content_type_is_refused_as_unsupported_media() -> None:
    with pytest.raises(MappingError) as err:
        to_canonical(message(b"x", None))
    assert err.value.reason is Reason.UNSUPPORTED_MEDIA


def test_oversized_payload_is_refused_as_too_large() -> None:
    mapper = SipMapper(policy=MAPPER.policy.replace(max_message_size=100))
    with pytest.raises(MappingError) as err:
        to_canonical(message(b"x" * 200, "text/plain"), mapper)
    assert err.value.reason is Reason.TOO_LARGE


# ----------------------------------------------------------------------------- presence


def subscribe(expires: str | None, to_tag: str | None = None) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKs"),
        ("From", "<sip:watcher@sip.test>;tag=w"),
        ("To", "<sip:carol@xmpp.test>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", "sub-1"),
        ("CSeq", "1 SUBSCRIBE"),
        ("Event", "presence"),
    ]
    if expires is not None:
        headers.append(("Expires", expires))
    return Request.build("SUBSCRIBE", "sip:carol@xmpp.test", headers)


def test_subscribe_maps_duration_probe_and_unsubscribe() -> None:
    env = to_canonical(subscribe(None))
    assert (env.operation, env.duration) == (Operation.SUBSCRIBE, 3600)
    assert (env.sender, env.recipient) == ("sip:watcher@sip.test", "sip:carol@xmpp.test")
    assert to_canonical(subscribe("600")).duration == 600
    probe = to_canonical(subscribe("0"))
    assert (probe.operation, probe.duration) == (Operation.SUBSCRIBE, 0)
    leave = to_canonical(subscribe("0", to_tag="gw"))
    assert leave.operation is Operation.UNSUBSCRIBE


def test_other_event_packages_are_refused() -> None:
    req = subscribe("600").with_replaced("Event", "dialog")
    with pytest.raises(MappingError) as err:
        to_canonical(req)
    assert err.value.reason is Reason.UNSUPPORTED_FEATURE


def test_notify_keeps_pidf_bytes_and_state() -> None:
    pidf = (VECTORS / "cpim" / "valid" / "017-pidf-body.cpim").read_bytes().split(b"\r\n\r\n")[-1]
    req = Request.build(
        "NOTIFY",
        "sip:gw@127.0.0.1",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKn"),
            ("From", "<sip:bob@sip.test>;tag=p"),
            ("To", "<sip:alice@xmpp.test>;tag=w"),
            ("Call-ID", "sub-2"),
            ("CSeq", "3 NOTIFY"),
            ("Event", "presence"),
            ("Subscription-State", "active;expires=599"),
            ("Content-Type", "application/pidf+xml"),
        ],
        pidf,
    )
    env = to_canonical(req)
    assert env.operation is Operation.NOTIFY
    assert env.payload == Payload("application/pidf+xml", pidf)
    assert env.attributes["subscription.state"] == "active"
    assert env.attributes["subscription.expires"] == "599"
    assert (env.sender, env.recipient) == ("sip:bob@sip.test", "sip:alice@xmpp.test")
    out = MAPPER.notify_request(env)
    assert out.body == pidf
    assert out.get("Subscription-State") == "active"


def test_authorize_states() -> None:
    base = Envelope(
        Operation.AUTHORIZE, "sip:a@x", "sip:b@y", None, "i" * 32, Origin("xmpp"), granted=True
    )
    assert notify_state(base, expires=300) == "active;expires=300"
    assert notify_state(base.replace(granted=False)) == "terminated;reason=rejected"


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (Reason.UNKNOWN_DESTINATION, 404),
        (Reason.FORBIDDEN, 403),
        (Reason.TOO_LARGE, 413),
        (Reason.UNSUPPORTED_MEDIA, 415),
        (Reason.LOOP, 482),
        (Reason.UNAVAILABLE, 480),
        (Reason.INTERNAL, 500),
    ],
)
def test_gateway_errors_become_sip_statuses(reason: Reason, status: int) -> None:
    got, phrase, extra = error_response(GatewayError("no", reason=reason, hint="fix it"))
    assert got == status
    assert phrase
    assert any(name == "Warning" and "fix it" in value for name, value in extra)


def test_loop_with_spent_budget_is_483_and_rate_limit_carries_retry_after() -> None:
    assert error_response(GatewayError("x", reason=Reason.LOOP), max_forwards=1)[0] == 483
    _, _, extra = error_response(GatewayError("x", reason=Reason.RATE_LIMITED), retry_after=4.2)
    assert ("Retry-After", "4") in extra


@pytest.mark.parametrize(
    ("status", "retryable", "reason"),
    [
        (408, True, Reason.TIMEOUT),
        (480, True, Reason.UNAVAILABLE),
        (503, True, Reason.UNAVAILABLE),
        (404, False, Reason.UNKNOWN_DESTINATION),
        (403, False, Reason.FORBIDDEN),
        (488, False, Reason.UNSUPPORTED_MEDIA),
        (603, False, Reason.FORBIDDEN),
        (599, True, Reason.INTERNAL),
    ],
)
def test_sip_failures_are_temporary_or_permanent(
    status: int, retryable: bool, reason: Reason
) -> None:
    req = message(b"x", "text/plain")
    extra = [("Retry-After", "30")] if status == 503 else []
    err = delivery_error(reply(req, status, "X", extra=extra), target="sip:bob@sip.test")
    assert (err.retryable, err.reason) == (retryable, reason)
    assert err.status is not None
    assert err.status.startswith(str(status))
    if status == 503:
        assert err.retry_after == 30.0


# ------------------------------------------------------------------------- laws L1, L2

names = (
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x24F, blacklist_categories=("Cs", "Cc")),
        min_size=1,
        max_size=12,
    )
    .map(str.strip)
    .filter(bool)
)
users = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True)
texts = st.text(max_size=200).filter(lambda t: "\x00" not in t)


@st.composite
def cpim_payloads(draw: st.DrawFn) -> Payload:
    kind = draw(st.sampled_from(["built", "vector", "signed"]))
    if kind == "vector":
        path = draw(st.sampled_from(sorted((VECTORS / "cpim" / "valid").glob("*.cpim"))))
        return Payload(CPIM, cpim.parse(path.read_bytes()).to_body())
    if kind == "signed":
        return Payload(
            'multipart/signed; protocol="application/pkcs7-signature"; boundary=b1',
            draw(st.binary(min_size=1, max_size=300)),
        )
    message = cpim.build(
        sender=cpim.Party(draw(st.none() | names), f"im:{draw(users)}@example.com"),
        to=[cpim.Party(None, f"im:{draw(users)}@example.net")],
        subjects=[(None, s) for s in draw(st.lists(names, max_size=2))],
        content_type="text/plain; charset=utf-8",
        body=draw(texts).encode("utf-8"),
    )
    return Payload(CPIM, bytes(message))


@settings(max_examples=200, deadline=None)
@given(cpim_payloads(), st.integers(1, 70), st.lists(users, max_size=3))
def test_law_l1_canonical_survives_the_trip_through_sip(
    payload: Payload, hops: int, trace: list[str]
) -> None:
    env = Envelope(
        Operation.MESSAGE,
        sender="xmpp:alice@xmpp.test",
        recipient="sip:bob@sip.test",
        payload=payload,
        identity="0" * 32,
        origin=Origin("xmpp"),
        max_forwards=hops,
        trace=tuple(trace),
    )
    wire = MAPPER.encode(MAPPER.from_canonical(env).value)
    back = to_canonical(MAPPER.decode(wire))
    assert back.payload == payload
    assert (back.max_forwards, back.trace) == (hops, tuple(trace))


header_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
)


@st.composite
def native_messages(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["text", "text-bare", "cpim", "iscomposing"]))
    extra: list[tuple[str, str]] = []
    if draw(st.booleans()):
        extra.append(("Subject", draw(names)))
    for name in draw(st.lists(st.sampled_from(["X-Mood", "Priority", "Date"]), max_size=2)):
        extra.append((name, draw(header_values)))
    display = draw(st.none() | names)
    from_ = (f"{quote(display)} " if display else "") + f"<sip:{draw(users)}@sip.test>;tag=t"
    if kind == "cpim":
        return message(CPIM_BODY, "message/cpim", extra=extra, from_=from_)
    if kind == "iscomposing":
        return message(b"<isComposing/>", "application/im-iscomposing+xml", from_=from_)
    content_type = "text/plain" if kind == "text-bare" else "text/plain;charset=UTF-8"
    return message(draw(texts).encode("utf-8"), content_type, extra=extra, from_=from_)


@settings(max_examples=200, deadline=None)
@given(native_messages())
def test_law_l2_native_survives_the_trip_through_canonical(native: Request) -> None:
    env = to_canonical(MAPPER.decode(MAPPER.encode(native)))
    back = MAPPER.from_canonical(env)
    assert env.losses == ()
    assert back.losses == ()
    assert MAPPER.equal(back.value, native)


def test_equal_ignores_transport_fields_but_not_content() -> None:
    a = message(b"x", "text/plain", extra=[("Subject", "s")])
    b = a.with_replaced("Call-ID", "other").with_replaced("Max-Forwards", "3")
    assert MAPPER.equal(a, b)
    assert not MAPPER.equal(a, a.with_body(b"y"))
    assert not MAPPER.equal(a, a.with_replaced("Subject", "t"))
    response = Response.build(200, "OK", [])
    assert response.status == 200


@pytest.mark.parametrize(
    ("envelope", "operation", "detail"),
    [
        (
            Envelope(
                Operation.SUBSCRIBE,
                "xmpp:a@x.test",
                "sip:b@sip.test",
                None,
                "1" * 32,
                Origin("xmpp"),
                duration=600,
            ),
            Operation.SUBSCRIBE,
            600,
        ),
        (
            Envelope(
                Operation.SUBSCRIBE,
                "xmpp:a@x.test",
                "sip:b@sip.test",
                None,
                "1" * 32,
                Origin("xmpp"),
                duration=0,
            ),
            Operation.SUBSCRIBE,
            0,
        ),
        (
            Envelope(
                Operation.UNSUBSCRIBE,
                "xmpp:a@x.test",
                "sip:b@sip.test",
                None,
                "1" * 32,
                Origin("xmpp"),
            ),
            Operation.UNSUBSCRIBE,
            None,
        ),
        (
            Envelope(
                Operation.AUTHORIZE,
                "xmpp:a@x.test",
                "sip:b@sip.test",
                None,
                "1" * 32,
                Origin("xmpp"),
                granted=True,
            ),
            Operation.AUTHORIZE,
            True,
        ),
        (
            Envelope(
                Operation.AUTHORIZE,
                "xmpp:a@x.test",
                "sip:b@sip.test",
                None,
                "1" * 32,
                Origin("xmpp"),
                granted=False,
            ),
            Operation.AUTHORIZE,
            False,
        ),
    ],
)
def test_subscription_operations_survive_the_wire(
    envelope: Envelope, operation: Operation, detail: object
) -> None:
    mapped = MAPPER.from_canonical(envelope)
    back = to_canonical(MAPPER.decode(MAPPER.encode(mapped.value)))
    assert back.operation is operation
    if operation is Operation.AUTHORIZE:
        assert back.granted is detail
    elif operation is Operation.SUBSCRIBE:
        assert back.duration == detail


def test_until_cancelled_subscription_records_the_expires_it_needs() -> None:
    env = Envelope(
        Operation.SUBSCRIBE, "xmpp:a@x.test", "sip:b@sip.test", None, "1" * 32, Origin("xmpp")
    )
    mapped = MAPPER.from_canonical(env)
    assert mapped.value.get("Expires") == "3600"
    assert [loss.field for loss in mapped.losses] == ["duration"]
