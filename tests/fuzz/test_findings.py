"""What the fuzzers found, each pinned as the behaviour it has since the fix (the inputs
themselves are replayed from ``tests/fuzz/regressions/`` by ``test_fuzz.py``)."""

from __future__ import annotations

import pytest

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter
from adapters.sip.adapter import SipAdapter
from adapters.xmpp.adapter import XmppAdapter
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import MappingError, ParseError, Reason

XMPP = XmppAdapter("xmpp", XmppAdapter.sample().config, AdapterContext()).mapper


def test_xmpp_subject_whose_lang_is_not_a_language_tag_travels_as_an_element() -> None:
    # xmpp_stanza: <subject xml:lang='en_US'> made cpim.build raise ValueError, which the
    # component only logged ("inbound stanza failed"): the sender got no answer at all.
    stanza = XMPP.decode(
        b"<message from='ada@xmpp.example.com/pc' to='bob@sip.example.com' type='chat' "
        b"id='m1'><subject xml:lang='en_US'>hello</subject><body>x</body></message>"
    )
    mapped = XMPP.to_canonical(stanza, origin=Origin(adapter="xmpp"), received_at=0.0)
    assert mapped.value.payload is not None
    assert b"xmpp.Element" in mapped.value.payload.body
    assert b";lang=" not in mapped.value.payload.body
    back = XMPP.from_canonical(mapped.value).value
    assert XMPP.equal(back, stanza)  # law L2 holds for it


def test_xmpp_stanza_whose_address_cannot_be_a_cpim_uri_is_refused_as_bad_request() -> None:
    # xmpp_stanza: a JID domain with '|' made cpim.build raise ValueError (not a URI), which
    # the component only logged; it is now a ParseError the sender gets as an error stanza.
    stanza = XMPP.decode(
        b"<message from='ada@xmpp.example.com/pc' to='bob@sip.e|xample.com' type='chat' "
        b"id='m2'><body>hi</body></message>"
    )
    with pytest.raises(ParseError) as caught:
        XMPP.to_canonical(stanza, origin=Origin(adapter="xmpp"), received_at=0.0)
    # named by the address map since it reads JIDs through canonical.address (jid-malformed)
    assert caught.value.code == "JID_MALFORMED"
    assert caught.value.reason is Reason.BAD_REQUEST
    assert "sip.e|xample.com" in str(caught.value)


HTTP = CpimHttpAdapter("cpim", CpimHttpAdapter.sample().config, AdapterContext()).mapper
SIP = SipAdapter("sip", SipAdapter.sample().config, AdapterContext()).mapper
BOT_ORIGIN = Origin(adapter="cpim", peer="bot")


def http_message(*headers: bytes) -> Envelope:
    raw = (
        b"POST /v1/messages HTTP/1.1\r\nCpimgw-From: im:bot@bots.test\r\n"
        b"Cpimgw-To: sip:bob@example.net\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Type: message/cpim\r\n\r\n"
        b"From: <im:bot@bots.test>\r\nTo: <sip:bob@example.net>\r\n\r\n"
        b"Content-Type: text/plain\r\n\r\nhi"
    )
    return HTTP.read(HTTP.decode(raw), origin=BOT_ORIGIN, received_at=0.0).envelope


def test_sip_request_never_takes_routing_or_identity_headers_from_envelope_attributes() -> None:
    # http_request: an API client's Cpimgw-Attribute sip.headers reached the SIP request
    # verbatim, so it could add P-Asserted-Identity (RFC 3325) or Route headers. The API
    # now refuses private attributes too; the SIP mapping holds on its own, whoever set it.
    envelope = http_message().replace(
        attributes={
            "sip.headers": '[["P-Asserted-Identity","<sip:boss@example.net>"],'
            '["Route","<sip:evil.example;lr>"],["v","SIP/2.0/UDP evil"],["Subject","kept"]]'
        }
    )
    request = SIP.from_canonical(envelope).value
    assert request.get("P-Asserted-Identity") is None
    assert request.get("Route") is None
    assert len(request.get_all("Via")) == 0
    assert request.get("Subject") == "kept"  # end-to-end headers still travel (law L2)


def test_unreadable_sip_headers_attribute_is_a_mapping_error() -> None:
    envelope = http_message().replace(attributes={"sip.headers": "not json"})
    with pytest.raises(MappingError):
        SIP.from_canonical(envelope)


def test_content_type_with_a_line_break_is_a_mapping_error_on_the_sip_side() -> None:
    # http_request: a Content-Type holding a bare LF made Request.build raise ValueError in
    # send(), which the core retried as an internal error until the message expired
    envelope = http_message().replace(
        payload=Payload("message/cpim;\nx=1", http_message().payload.body)  # type: ignore[union-attr]
    )
    with pytest.raises(MappingError) as caught:
        SIP.from_canonical(envelope)
    assert caught.value.reason is Reason.BAD_REQUEST


def test_http_encode_of_a_content_type_latin_1_cannot_hold_is_a_mapping_error() -> None:
    # xmpp_stanza: HttpMapper.encode raised UnicodeEncodeError (fixed in adapters/cpim, ddffcd4)
    envelope = http_message().replace(
        payload=Payload("text/plain; x=\u041f", b"hi"),
    )
    with pytest.raises(MappingError):
        HTTP.encode(HTTP.from_canonical(envelope).value)


def test_api_client_cannot_set_another_adapters_private_attributes() -> None:
    # http_request: clients set sip.*/xmpp.* attributes (fixed in adapters/cpim, ddffcd4)
    envelope = http_message(
        b"Cpimgw-Attribute: sip.from-display=The Boss",
        b"Cpimgw-Attribute: xmpp.origin-id=someone-elses-id",
    )
    assert "sip.from-display" not in envelope.attributes
    assert "xmpp.origin-id" not in envelope.attributes


def test_http_numbers_are_ascii_digits_only() -> None:
    # http_request: "Content-Length: 1³1" passed str.isdigit() and made int() raise
    # ValueError; Max-Forwards and Cpimgw-Duration are read the same way (a 500 from the API)
    raw = (
        "POST /v1/messages HTTP/1.1\r\nCpimgw-From: im:bot@bots.test\r\n"
        "Cpimgw-To: sip:bob@example.net\r\nContent-Type: message/cpim\r\n"
        "Content-Length: 1\u00b31\r\n\r\nx"
    ).encode("latin-1")
    with pytest.raises(ParseError):
        HTTP.decode(raw)
    with pytest.raises(ParseError) as caught:
        http_message("Max-Forwards: \u00b3".encode("latin-1"))
    assert caught.value.code == "HTTP_BAD_NUMBER"


def test_a_notify_whose_subscription_state_holds_a_line_break_is_a_mapping_error() -> None:
    # http_request: Cpimgw-Attribute subscription.state (an application may set it; in
    # RFC 8187 form it can hold %0A) made Request.build raise ValueError in the SIP NOTIFY
    envelope = Envelope(
        Operation.NOTIFY,
        "im:bot@bots.test",
        "sip:bob@example.net",
        Payload("application/pidf+xml", b"<presence/>"),
        "n-1",
        BOT_ORIGIN,
        attributes={"subscription.state": "active\nVia: SIP/2.0/UDP evil"},
    )
    with pytest.raises(MappingError) as caught:
        SIP.from_canonical(envelope)
    assert caught.value.reason is Reason.BAD_REQUEST
