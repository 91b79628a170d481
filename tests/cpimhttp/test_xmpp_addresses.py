"""XMPP users' gateway-wide addresses cross the HTTP hop between gateways as they are.

The XMPP adapter names its users ``xmpp:<JID as the server stamped it>``: an escaped
localpart (``d\\27artagnan``, XEP-0106) and a resource with spaces (``my phone``) stay
raw, which an RFC 5122 IRI would have to percent-encode (docs/addresses.md "The XMPP
component's address map"). What one gateway writes in ``Cpimgw-From``/``Cpimgw-To`` the
next one reads back unchanged (law L2 of the HTTP mapper), and a client may name such a
user the same way; what is neither a JID nor a URI is refused with the JID's reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter, CpimHttpConfig, PeerConfig
from adapters.cpim.mapping import FROM, TO, HttpMapper, HttpRequest
from adapters.cpim.token import AddressPattern
from canonical.address import Address, escape_localpart, gateway_xmpp
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, ParseError

MAPPER = HttpMapper(adapter="api")
PEER = Origin(adapter="api", peer="gw-a", context={"kind": "peer"})
BODY = (
    b"From: <im:d'artagnan@xmpp.test>\r\nTo: <sip:bob@sip.test>\r\n\r\n"
    b"Content-Type: text/plain\r\n\r\nEn garde"
)


def through_a_peer(sender: str, recipient: str) -> Envelope:
    envelope = Envelope(
        Operation.MESSAGE,
        sender,
        recipient,
        Payload(CPIM, BODY),
        "0123456789abcdef0123456789abcdef",
        Origin("xmpp"),
    )
    wire = MAPPER.encode(MAPPER.from_canonical(envelope).value)
    return MAPPER.to_canonical(MAPPER.decode(wire), origin=PEER, received_at=1.0).value


@pytest.mark.parametrize(
    "jid",
    [
        "d\\27artagnan@xmpp.test",
        "d\\27artagnan@xmpp.test/my phone",
        "alice@xmpp.test/my phone",
        "a\\20b\\3ac@xmpp.test/Küche",
        "who%3F@xmpp.test/what%3F",  # the JID who?@xmpp.test/what?
    ],
)
def test_stamped_xmpp_address_crosses_to_the_next_gateway_unchanged(jid: str) -> None:
    back = through_a_peer(f"xmpp:{jid}", f"xmpp:{jid}")
    assert back.sender == f"xmpp:{jid}"
    assert back.recipient == f"xmpp:{jid}"
    assert back.payload == Payload(CPIM, BODY)


def test_rfc5122_query_form_is_still_read_as_a_uri() -> None:
    back = through_a_peer("xmpp:alice@xmpp.test?message", "sip:bob@sip.test")
    assert back.sender == "xmpp:alice@xmpp.test?message"


@pytest.mark.parametrize(
    ("sender", "code"),
    [
        ("xmpp:a b@xmpp.test", "JID_BAD_LOCALPART"),
        ("xmpp:alice@xmpp.test/", "JID_BAD_RESOURCE"),
        ("xmpp:alice@", "JID_BAD_DOMAIN"),
    ],
)
def test_xmpp_address_that_is_no_jid_nor_uri_is_refused_with_the_jid_reason(
    sender: str, code: str
) -> None:
    request = HttpRequest(
        "POST",
        "/v1/messages",
        ((FROM, sender), (TO, "sip:bob@sip.test"), ("Content-Type", CPIM)),
        BODY,
    )
    with pytest.raises(ParseError) as info:
        MAPPER.to_canonical(request, origin=PEER, received_at=1.0)
    assert info.value.code == code
    assert info.value.message.startswith(f"{FROM}: ")


user_char = st.one_of(
    st.sampled_from("abcXYZ019-_.!~*()=+$,;?%# \"&'/:<>\\"),
    st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
)


@given(
    st.text(user_char, min_size=1, max_size=12).filter(lambda u: u.strip(" ") == u),
    st.one_of(st.none(), st.text(st.sampled_from("ab /?&;=%'Ü"), min_size=1, max_size=8)),
)
def test_any_stamped_jid_crosses_the_http_hop_unchanged(user: str, resource: str | None) -> None:
    try:
        local = escape_localpart(user)
        Address("xmpp", local, "xmpp.test", resource=resource)
    except ParseError:
        return
    # as the XMPP adapter names the user: '%', '?' and '#' percent-encoded (RFC 5122 §2.2)
    address = gateway_xmpp(f"{local}@xmpp.test" + (f"/{resource}" if resource is not None else ""))
    back = through_a_peer(address, "sip:bob@sip.test")
    assert back.sender == address


# ------------------------------------------------------------------ tokens and peers

XMPP_SENDERS = [
    "xmpp:d\\27artagnan@xmpp.test/my phone",
    "xmpp:who%3F@xmpp.test/what%3F",
    "xmpp:d%5C27artagnan@xmpp.test",  # the same user as an RFC 5122 IRI
]


@pytest.mark.parametrize("sender", XMPP_SENDERS)
def test_send_as_patterns_match_an_xmpp_user_by_its_jid(sender: str) -> None:
    assert AddressPattern.parse("*@xmpp.test").matches(sender)
    assert AddressPattern.parse("xmpp:*@xmpp.test").matches(sender)
    assert not AddressPattern.parse("*@sip.test").matches(sender)


def test_user_pattern_names_the_escaped_jid_localpart() -> None:
    pattern = AddressPattern.parse("xmpp:d\\27artagnan@xmpp.test")
    assert pattern.matches("xmpp:d\\27artagnan@xmpp.test/my phone")
    assert pattern.matches("xmpp:d%5C27artagnan@xmpp.test")
    assert not pattern.matches("xmpp:athos@xmpp.test/my phone")


@pytest.mark.parametrize("recipient", XMPP_SENDERS)
async def test_peer_for_an_xmpp_recipient_is_chosen_by_its_domain(
    recipient: str, tmp_path: Path
) -> None:
    config = CpimHttpConfig(
        listen=False,
        database=tmp_path / "api.sqlite",
        peers=[
            PeerConfig(name="gw-s.test", domains=["sip.test"], url="http://127.0.0.1:9"),
            PeerConfig(name="gw-x.test", domains=["xmpp.test"], url="http://127.0.0.1:7"),
        ],
    )
    adapter = CpimHttpAdapter(
        "api", config, AdapterContext(gateway_id="gw", logger=logging.getLogger("test.http"))
    )
    envelope = Envelope(
        Operation.MESSAGE,
        "sip:bob@sip.test",
        recipient,
        Payload(CPIM, BODY),
        "0123456789abcdef0123456789abcdef",
        Origin("sip"),
    )
    try:
        with pytest.raises(DeliveryError) as info:  # nobody listens on port 7: refused there
            await adapter.send(envelope)
    finally:
        await adapter.client.close()
        await adapter.ledger.close()
    assert "127.0.0.1:7" in str(info.value)
