"""Pure mapping tests: laws L1 and L2 (hypothesis), vectors, RFC 3923 carriage, errors."""

from __future__ import annotations

import base64
import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.xmpp import mapping
from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import TEXT_PLAIN, XmppMapper, entity_to_payload
from adapters.xmpp.stanza import CARRIAGE_NS, COMPONENT_NS, E2E_NS, XML_LANG
from canonical import cpim, smime
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import GatewayError, ParseError, Reason, RoutingError
from tests.pki import make_ca, make_leaf

MAPPER = XmppMapper(
    AddressMap("sip.xmpp.test", {"sip.xmpp.test": "sip:sip.test"}, frozenset({"xmpp.test"}))
)
ORIGIN = Origin("xmpp")
NS = COMPONENT_NS
VECTORS = Path(__file__).resolve().parents[2] / "canonical" / "vectors"


def stanza(xml: str) -> ET.Element:
    return MAPPER.decode(xml.encode())


def through_wire(element: ET.Element) -> ET.Element:
    return MAPPER.decode(MAPPER.encode(element))


def foreign(payload: Payload, **kw: object) -> Envelope:
    return Envelope(
        Operation.MESSAGE,
        "sip:ada@sip.test",
        "xmpp:alice@xmpp.test",
        payload,
        "0123456789abcdef0123456789abcdef",
        Origin("sip"),
        **kw,  # type: ignore[arg-type]
    )


def vector_payload(path: Path) -> Payload:
    data = path.read_bytes()
    if path.suffix == ".cpim":
        return Payload("message/cpim", cpim.parse(data).to_body())
    return entity_to_payload(data)[0]


# ---------------------------------------------------------------- L2: native survives
text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=40,
)
body_text = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
        st.sampled_from(["\n", "\t", " "]),
    ),
    max_size=60,
)
token = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True)
lang = st.sampled_from(["en", "fr", "de-CH", "zh-Hant"])


@st.composite
def native_messages(draw: st.DrawFn) -> ET.Element:
    attrs = {"from": draw(st.sampled_from(["alice@xmpp.test/phone", "bob@xmpp.test/x y"]))}
    attrs["to"] = draw(
        st.sampled_from(["carol@sip.xmpp.test", "dave\\40example.net@sip.xmpp.test"])
    )
    if draw(st.booleans()):
        attrs["id"] = draw(token)
    if draw(st.booleans()):
        attrs["type"] = draw(st.sampled_from(["chat", "normal", "headline"]))
    if draw(st.booleans()):
        attrs[XML_LANG] = draw(lang)
    msg = ET.Element(f"{{{NS}}}message", attrs)
    for language in draw(st.lists(st.one_of(st.none(), lang), max_size=3, unique=True)):
        el = ET.SubElement(msg, f"{{{NS}}}subject")
        if language:
            el.set(XML_LANG, language)
        el.text = draw(text)
    for i, language in enumerate(
        draw(st.lists(st.one_of(st.none(), lang), max_size=2, unique=True))
    ):
        el = ET.SubElement(msg, f"{{{NS}}}body")
        if language:
            el.set(XML_LANG, language)
        el.text = draw(body_text) if i == 0 else draw(text)
    if draw(st.booleans()):
        el = ET.SubElement(msg, f"{{{NS}}}thread")
        el.text = draw(token)
        if draw(st.booleans()):
            el.set("parent", draw(token))
    if draw(st.booleans()):
        state = draw(st.sampled_from(["active", "composing", "paused", "inactive", "gone"]))
        ET.SubElement(msg, f"{{http://jabber.org/protocol/chatstates}}{state}")
    if draw(st.booleans()):
        ET.SubElement(msg, "{urn:xmpp:receipts}request")
    if draw(st.booleans()):
        ET.SubElement(msg, "{urn:xmpp:chat-markers:0}markable")
    if draw(st.booleans()):
        ET.SubElement(msg, "{urn:xmpp:receipts}received", {"id": draw(token)})
    if draw(st.booleans()):
        ET.SubElement(msg, "{urn:xmpp:sid:0}origin-id", {"id": draw(token)})
    if draw(st.booleans()):
        ext = ET.SubElement(msg, "{urn:example:ext}x", {"a": draw(token)})
        ext.text = draw(text)
        ET.SubElement(ext, "{urn:example:ext}y").tail = draw(text)
    return through_wire(msg)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(native_messages())
def test_native_message_survives_round_trip(message: ET.Element) -> None:
    mapped = MAPPER.to_canonical(message, origin=ORIGIN, received_at=1_700_000_000.25)
    back = MAPPER.from_canonical(mapped.value).value
    assert MAPPER.equal(through_wire(back), message), (MAPPER.encode(message), MAPPER.encode(back))
    assert back.find(f"{{{CARRIAGE_NS}}}cpim") is None  # L2 needs no carriage


@settings(max_examples=60, deadline=None)
@given(native_messages())
def test_canonical_form_of_a_stanza_is_deterministic(message: ET.Element) -> None:
    one = MAPPER.to_canonical(message, origin=ORIGIN, received_at=5.0).value
    two = MAPPER.to_canonical(through_wire(message), origin=ORIGIN, received_at=5.0).value
    assert one.payload == two.payload
    assert one.identity == two.identity
    assert cpim.parse_body(one.payload.body, strict=True)  # type: ignore[union-attr]


def test_unknown_extension_element_survives_round_trip() -> None:
    message = stanza(
        "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='m1'>"
        "<body>hi</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
        "<body xmlns='http://www.w3.org/1999/xhtml'><p>hi <b>you</b>!</p></body></html></message>"
    )
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    assert b"xmpp.Element: <html" in env.payload.body  # type: ignore[union-attr]
    assert MAPPER.equal(MAPPER.from_canonical(env).value, message)


# ---------------------------------------------------------------- L1: canonical survives
payload_bodies = st.binary(max_size=300)


@settings(max_examples=150, deadline=None)
@given(
    body=payload_bodies,
    content_type=st.sampled_from(
        ["text/plain; charset=utf-8", "image/png", "application/octet-stream"]
    ),
    subjects=st.lists(
        st.tuples(st.one_of(st.none(), lang), text.filter(lambda t: t == t.strip())), max_size=2
    ),
)
def test_canonical_payload_survives_trip_through_the_wire(
    body: bytes, content_type: str, subjects: list[tuple[str | None, str]]
) -> None:
    message = cpim.build(
        sender="sip:ada@sip.test",
        to=["im:alice@xmpp.test"],
        subjects=subjects,
        content_type=content_type,
        body=body,
    )
    payload = Payload("message/cpim", bytes(message))
    out = MAPPER.from_canonical(foreign(payload).hop("gw-a")).value
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload == payload
    assert back.trace == ("gw-a",)
    assert back.max_forwards == 69


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (VECTORS / "cpim" / "valid").glob("*.cpim"))
)
def test_every_valid_vector_survives_trip_through_the_wire(name: str) -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / name)
    out = MAPPER.from_canonical(foreign(payload)).value
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload == payload


def test_binary_content_gets_a_description_never_the_bytes() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "013-binary-png-body.cpim")
    out = MAPPER.from_canonical(foreign(payload)).value
    body = out.findtext(f"{{{NS}}}body") or ""
    assert body.startswith("[image/png content, ")
    assert "bytes" in body
    assert "PNG" not in body


def test_foreign_text_gets_readable_body_subjects_and_ids_from_identity() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "011-lang-tagged-subjects.cpim")
    env = foreign(payload)
    out = MAPPER.from_canonical(env).value
    assert len(out.findall(f"{{{NS}}}subject")) >= 2
    assert out.get("id") == env.identity
    assert out.find("{urn:xmpp:sid:0}origin-id").get("id") == env.identity  # type: ignore[union-attr]
    assert MAPPER.encode(MAPPER.from_canonical(env).value) == MAPPER.encode(out)  # resend: same


def test_imdn_request_gives_receipt_request_with_message_id() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "015-imdn-request.cpim")
    out = MAPPER.from_canonical(foreign(payload)).value
    assert out.get("id") == "Qz7pLw2xV9kR"
    assert out.find("{urn:xmpp:receipts}request") is not None
    assert out.find("{urn:xmpp:chat-markers:0}markable") is not None


def test_imdn_delivered_becomes_receipt() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "016-imdn-delivery-notification.cpim")
    out = MAPPER.from_canonical(foreign(payload)).value
    assert out.find("{urn:xmpp:receipts}received").get("id") == "Qz7pLw2xV9kR"  # type: ignore[union-attr]


def test_iscomposing_active_becomes_composing() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "030-iscomposing-body.cpim")
    out = MAPPER.from_canonical(foreign(payload)).value
    assert out.find("{http://jabber.org/protocol/chatstates}composing") is not None
    assert out.find(f"{{{NS}}}body") is None


def test_chat_state_without_body_becomes_iscomposing() -> None:
    env = MAPPER.to_canonical(
        stanza(
            "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='c1'>"
            "<paused xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ),
        origin=ORIGIN,
        received_at=0,
    ).value
    inner = cpim.parse_body(env.payload.body)  # type: ignore[union-attr]
    assert inner.content_type == "application/im-iscomposing+xml"
    assert b"<state>idle</state>" in inner.body


def test_receipt_becomes_imdn_delivered() -> None:
    env = MAPPER.to_canonical(
        stanza(
            "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='r1'>"
            "<received xmlns='urn:xmpp:receipts' id='orig-7'/></message>"
        ),
        origin=ORIGIN,
        received_at=0,
    ).value
    inner = cpim.parse_body(env.payload.body)  # type: ignore[union-attr]
    assert inner.content_type == "message/imdn+xml"
    assert b"<message-id>orig-7</message-id>" in inner.body
    assert b"<delivered/>" in inner.body


# ---------------------------------------------------------------- secured objects
def test_signed_payload_rides_carriage_and_e2e() -> None:
    payload = vector_payload(VECTORS / "signed" / "s01-multipart-signed.mime")
    out = MAPPER.from_canonical(foreign(payload)).value
    carriage = out.find(f"{{{CARRIAGE_NS}}}cpim")
    assert carriage is not None
    assert base64.b64decode(carriage.text or "") == payload.body
    assert out.find(f"{{{E2E_NS}}}e2e") is not None
    assert "covered by the signature" in (out.findtext(f"{{{NS}}}body") or "")
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload == payload


def test_e2e_charref_form_gives_the_signed_bytes() -> None:
    expected = vector_payload(VECTORS / "signed" / "s01-multipart-signed.mime")
    message = MAPPER.decode((VECTORS / "signed" / "s06-xmpp-e2e-charref-cr.xml").read_bytes())
    message.set("from", "ada@xmpp.test/engine")
    message.set("to", "charles@sip.xmpp.test")
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    assert env.payload == expected


def test_e2e_cdata_form_restores_crlf_and_gives_the_signed_bytes() -> None:
    expected = vector_payload(VECTORS / "signed" / "s01-multipart-signed.mime")
    message = MAPPER.decode((VECTORS / "signed" / "s07-xmpp-e2e-cdata.xml").read_bytes())
    assert "\r" not in (message.find(f"{{{E2E_NS}}}e2e").text or "")  # type: ignore[union-attr]
    message.set("from", "ada@xmpp.test/engine")
    message.set("to", "charles@sip.xmpp.test")
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    assert env.payload == expected


def test_signature_still_verifies_after_crossing() -> None:
    ca = make_ca()
    signer = make_leaf(ca, "ada", uris=("sip:ada@sip.test",))
    entity = bytes(
        cpim.build(
            sender="sip:ada@sip.test",
            to=["im:alice@xmpp.test"],
            content_type="text/plain; charset=utf-8",
            body="signed ✓\r\nline two\r\n".encode(),
            form="entity",
        )
    )
    payload = smime.sign(entity, signer.cert, signer.key)
    out = MAPPER.from_canonical(foreign(payload)).value
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload is not None
    result = smime.verify(back.payload, [ca.cert], now=dt.datetime.now(dt.UTC))
    assert result.valid, result.error


# ---------------------------------------------------------------- refusals, errors, addresses
def test_bad_base64_in_carriage_is_refused_with_its_reason() -> None:
    bad = stanza(
        "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test'>"
        "<cpim xmlns='urn:cpimgw:carriage:0' type='message/cpim'>!!notbase64</cpim></message>"
    )
    with pytest.raises(ParseError) as info:
        MAPPER.to_canonical(bad, origin=ORIGIN, received_at=0)
    assert info.value.code == "CARRIAGE_BASE64"
    assert info.value.reason is Reason.BAD_REQUEST


def test_unmapped_component_address_is_unknown_destination() -> None:
    mapper = XmppMapper(AddressMap("gw.xmpp.test"))
    with pytest.raises(RoutingError):
        mapper.to_canonical(
            stanza(
                "<message from='alice@xmpp.test/r' to='carol@gw.xmpp.test'><body>x</body></message>"
            ),
            origin=ORIGIN,
            received_at=0,
        )


def test_malformed_jid_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as info:
        MAPPER.addresses.to_uri("a b@sip.xmpp.test")
    assert info.value.code == "JID_MALFORMED"


@pytest.mark.parametrize(
    ("jid", "uri"),
    [
        ("bob@sip.xmpp.test", "sip:bob@sip.test"),
        ("bob\\40example.net@sip.xmpp.test", "im:bob@example.net"),
        ("alice@xmpp.test/phone", "xmpp:alice@xmpp.test/phone"),
    ],
)
def test_addresses_map_both_ways(jid: str, uri: str) -> None:
    assert MAPPER.addresses.to_uri(jid) == uri
    assert MAPPER.addresses.to_jid(uri) == jid


def test_served_domain_under_another_scheme_is_the_users_own_jid() -> None:
    # a SIP user answers sip:alice@xmpp.test: that is alice's JID, not an escaped foreign one
    assert MAPPER.addresses.to_jid("sip:alice@xmpp.test;gr=phone") == "alice@xmpp.test"
    assert MAPPER.addresses.to_jid("im:carol@XMPP.test") == "carol@xmpp.test"


def test_foreign_address_without_map_is_escaped_into_the_component() -> None:
    assert (
        MAPPER.addresses.to_jid("sip:o'neil@example.org")
        == "o\\27neil\\40example.org@sip.xmpp.test"
    )


@pytest.mark.parametrize(
    "reason",
    [
        Reason.BAD_REQUEST,
        Reason.UNKNOWN_DESTINATION,
        Reason.FORBIDDEN,
        Reason.UNAUTHENTICATED,
        Reason.UNSUPPORTED_FEATURE,
        Reason.RATE_LIMITED,
        Reason.SIGNATURE_INVALID,
        Reason.STALE,
        Reason.TIMEOUT,
        Reason.UNAVAILABLE,
        Reason.CONFLICT,
        Reason.INTERNAL,
    ],
)
def test_error_reason_reads_back_from_its_stanza(reason: Reason) -> None:
    message = stanza(
        "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='q'><body>x</body></message>"
    )
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    error = MAPPER.error_to_native(env, GatewayError("refused", reason=reason))
    assert error.get("to") == "alice@xmpp.test/r"
    assert error.get("id") == "q"
    assert error.get("type") == "error"
    read = MAPPER.error_from_native(through_wire(error))
    assert read is not None
    assert read.reason is reason


# ---------------------------------------------------------------- wire format
def test_bytes_that_are_not_utf8_are_a_parse_error_at_their_offset() -> None:
    with pytest.raises(ParseError) as info:
        MAPPER.decode(b"<message to='a@b'>\xff</message>")
    assert info.value.code == "XML_MALFORMED"
    assert info.value.offset == 18  # the 0xff byte, counted in the caller's bytes


def test_two_stanzas_in_one_wire_message_are_refused() -> None:
    with pytest.raises(ParseError) as info:
        MAPPER.decode(b"<message/><message/>")
    assert info.value.code == "STANZA_COUNT"


xml_text = st.lists(
    st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
        st.sampled_from(["\r", "\n", "\t", "\r\n", "&", "<", ">", "'", '"', "]]>"]),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=xml_text, tail=xml_text, value=xml_text)
def test_serialised_stanza_parses_back_to_the_same_characters(
    text: str, tail: str, value: str
) -> None:
    message = ET.Element(f"{{{NS}}}message", {"to": value, XML_LANG: "en"})
    child = ET.SubElement(message, "{urn:example:ext}x", {"{urn:example:attr}a": value})
    child.text = text
    ET.SubElement(child, "{urn:example:ext}y").tail = tail
    ET.SubElement(message, f"{{{NS}}}body").text = text
    back = through_wire(message)
    assert back.get("to") == value
    assert back.get(XML_LANG) == "en"
    assert back[0].get("{urn:example:attr}a") == value
    assert (back[0].text or "") == text
    assert (back[0][0].tail or "") == tail
    assert (back.findtext(f"{{{NS}}}body") or "") == text
    assert MAPPER.equal(back, message)


def test_characters_xml_cannot_carry_are_refused_not_written() -> None:
    message = ET.Element(f"{{{NS}}}message", {"to": "a@b"})
    ET.SubElement(message, f"{{{NS}}}body").text = "bell \x07"
    with pytest.raises(GatewayError) as info:
        MAPPER.encode(message)
    assert "U+0007" in str(info.value)


# ---------------------------------------------------------------- ids of exactly carried stanzas
def test_stanza_with_carriage_comes_back_with_its_own_ids() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "001-minimal.cpim")
    first = through_wire(MAPPER.from_canonical(foreign(payload)).value)
    first.set("id", "client-chosen-id")
    first.find("{urn:xmpp:sid:0}origin-id").set("id", "client-origin")  # type: ignore[union-attr]
    env = MAPPER.to_canonical(first, origin=ORIGIN, received_at=0).value
    assert env.attributes["xmpp.id"] == "client-chosen-id"
    again = through_wire(MAPPER.from_canonical(env).value)
    assert MAPPER.equal(again, first)


def test_foreign_message_ids_come_from_the_identity_on_every_resend() -> None:
    payload = vector_payload(VECTORS / "cpim" / "valid" / "001-minimal.cpim")
    one = MAPPER.from_canonical(foreign(payload)).value
    two = MAPPER.from_canonical(foreign(payload)).value
    assert one.get("id") == two.get("id") == "0123456789abcdef0123456789abcdef"
    origin = one.find("{urn:xmpp:sid:0}origin-id")
    assert origin is not None
    assert origin.get("id") == one.get("id")


@pytest.mark.parametrize("name", ["s06-xmpp-e2e-charref-cr.xml", "s07-xmpp-e2e-cdata.xml"])
def test_e2e_stanza_comes_back_in_the_form_it_came_in(name: str) -> None:
    message = MAPPER.decode((VECTORS / "signed" / name).read_bytes())
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    back = through_wire(MAPPER.from_canonical(env).value)
    assert back.find(f"{{{CARRIAGE_NS}}}cpim") is None
    assert MAPPER.equal(back, message)
    again = MAPPER.to_canonical(back, origin=ORIGIN, received_at=0).value
    assert again.payload == env.payload


# ---------------------------------------------------------------- the direct CPIM writer
header_value = st.lists(
    st.one_of(
        st.characters(blacklist_categories=("Cs", "Cn")), st.sampled_from(["\\", "\r\n", " "])
    ),
    min_size=1,
    max_size=30,
).map("".join)
uris = st.sampled_from(
    ["im:alice@xmpp.test", "sip:bob@sip.test", "im:d%C3%A9j%C3%A0@xmpp.test", "im:xmpp.test"]
)


@settings(max_examples=200, deadline=None)
@given(
    sender=uris,
    recipient=uris,
    disposition=st.booleans(),
    extensions=st.lists(
        st.tuples(
            st.sampled_from(["xmpp.Id", "xmpp.Type", "xmpp.Element", "imdn.Message-ID"]),
            header_value,
        ),
        max_size=6,
    ),
    content_type=st.sampled_from([TEXT_PLAIN, "application/im-iscomposing+xml"]),
    language=st.one_of(st.none(), st.sampled_from(["en", "de-CH", "x\ty", "zh-Hant"])),
    body=st.binary(max_size=40),
)
def test_direct_cpim_writer_gives_the_bytes_cpim_build_gives(
    sender: str,
    recipient: str,
    disposition: bool,
    extensions: list[tuple[str, str]],
    content_type: str,
    language: str | None,
    body: bytes,
) -> None:
    entity = [("Content-Language", language)] if language else []
    namespaces: list[tuple[str | None, str]] = [("xmpp", "urn:cpimgw:xmpp:0")]
    if disposition:
        namespaces.append(("imdn", "urn:ietf:params:imdn"))
    else:
        extensions = [(n, v) for n, v in extensions if not n.startswith("imdn.")]
    args = {"content_type": content_type, "entity_headers": entity, "body": body}
    try:
        expected: bytes | None = bytes(
            cpim.build(
                sender=sender,
                to=[recipient],
                namespaces=namespaces,
                extensions=extensions,
                form="body",
                **args,  # type: ignore[arg-type]
            )
        )
    except ValueError:
        expected = None
    try:
        written = mapping._write_cpim(
            sender,
            recipient,
            disposition=disposition,
            extensions=extensions,
            **args,  # type: ignore[arg-type]
        )
    except ValueError:
        assert expected is None
        return
    if written is not None:  # None: the writer hands the message to cpim.build
        assert written == expected
