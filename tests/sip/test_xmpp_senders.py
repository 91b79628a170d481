"""XMPP users write to SIP whatever their JID holds (docs/addresses.md "The XMPP component's
address map", docs/mapping/sip.md "Envelope -> MESSAGE").

The XMPP adapter names its users ``xmpp:<JID as the server stamped it>``: the localpart
XEP-0106-escaped (``d\\27artagnan``), the resource as it is (``my phone``). The SIP mapper
reads that text as a JID, not as an RFC 5122 IRI (which would have to percent-encode the
backslash and the space), unescapes the localpart into the SIP user, percent-encoded as
RFC 3261 §25.1 requires, and makes the resource the ``gr`` parameter (RFC 7247 §6.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.sip.mapping import BodyRoute, SipMapper, sip_address
from canonical.address import Address, escape_localpart, gateway_xmpp
from canonical.envelope import CPIM, PIDF, Envelope, Operation, Origin, Payload
from canonical.errors import MappingError, ParseError, Reason

MAPPER = SipMapper(gateway_id="gw1")
BODY = (
    b"From: <im:d'artagnan@xmpp.test>\r\nTo: <sip:bob@sip.test>\r\n\r\n"
    b"Content-Type: text/plain\r\n\r\nEn garde\r\n"
)


def envelope(sender: str, recipient: str = "sip:bob@sip.test", **kw: object) -> Envelope:
    fields: dict[str, object] = {
        "payload": Payload(CPIM, BODY),
        "identity": "0123456789abcdef0123456789abcdef",
        "origin": Origin("xmpp"),
    }
    fields.update(kw)
    return Envelope(Operation.MESSAGE, sender=sender, recipient=recipient, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sender", "sip_uri"),
    [
        ("xmpp:d\\27artagnan@xmpp.test", "sip:d'artagnan@xmpp.test"),
        ("xmpp:alice@xmpp.test/my phone", "sip:alice@xmpp.test;gr=my%20phone"),
        ("xmpp:d\\27artagnan@xmpp.test/my phone", "sip:d'artagnan@xmpp.test;gr=my%20phone"),
        ("xmpp:a\\3a\\20b@xmpp.test", "sip:a%3A%20b@xmpp.test"),  # ':' would read as password
        ("xmpp:jürgen@xmpp.test/Küche", "sip:j%C3%BCrgen@xmpp.test;gr=K%C3%BCche"),
        ("xmpp:bad\\zz@xmpp.test", "sip:bad%5Czz@xmpp.test"),  # not an escape: kept (§4.4)
        ("xmpp:alice@xmpp.test?message;subject=hi", "sip:alice@xmpp.test"),  # RFC 5122 query
        ("xmpp:who%3F@xmpp.test/what%3F", "sip:who?@xmpp.test;gr=what%3F"),  # '?' encoded
        ("xmpp:d%5C27artagnan@xmpp.test", "sip:d'artagnan@xmpp.test"),  # an RFC 5122 IRI
    ],
)
def test_xmpp_sender_as_stamped_is_written_as_the_unescaped_sip_user(
    sender: str, sip_uri: str
) -> None:
    assert sip_address(sender) == sip_uri
    out = MAPPER.from_canonical(envelope(sender)).value
    from_ = Address.parse(out.from_.uri.text)
    assert str(from_) == sip_uri
    # the request as written is read back the same (From parsed by the SIP codec)
    again = MAPPER.decode(MAPPER.encode(out))
    assert Address.parse(again.from_.uri.text) == from_


def test_message_to_an_escaped_jid_goes_to_the_unescaped_sip_request_uri() -> None:
    out = MAPPER.from_canonical(
        envelope("sip:bob@sip.test", recipient="xmpp:d\\27artagnan@xmpp.test/my phone")
    ).value
    assert out.uri == "sip:d'artagnan@xmpp.test;gr=my%20phone"


def test_subscribe_and_notify_from_an_escaped_jid_name_the_unescaped_sip_user() -> None:
    watcher = Envelope(
        Operation.SUBSCRIBE,
        sender="xmpp:d\\27artagnan@xmpp.test/my phone",
        recipient="sip:bob@sip.test",
        payload=None,
        identity="1" * 32,
        origin=Origin("xmpp"),
    )
    subscribe = MAPPER.subscribe_request(watcher)
    assert subscribe.from_.uri.address_of_record == "sip:d'artagnan@xmpp.test"
    notify = MAPPER.notify_request(
        Envelope(
            Operation.NOTIFY,
            sender="xmpp:d\\27artagnan@xmpp.test",
            recipient="sip:bob@sip.test",
            identity="2" * 32,
            payload=Payload(PIDF, b"<presence/>"),
            origin=Origin("xmpp"),
            attributes={"subscription.state": "active"},
        )
    )
    assert notify.from_.uri.address_of_record == "sip:d'artagnan@xmpp.test"


def test_text_route_for_an_escaped_jid_matches_its_sip_user() -> None:
    mapper = SipMapper(routes=[BodyRoute("xmpp:d\\27artagnan@xmpp.test", "text/plain")])
    assert mapper.body_type_for("sip:d%27artagnan@xmpp.test") == "text/plain"
    assert mapper.body_type_for("xmpp:d\\27artagnan@xmpp.test/my phone") == "text/plain"
    assert mapper.body_type_for("xmpp:athos@xmpp.test") == "message/cpim"


@pytest.mark.parametrize(
    ("sender", "code"),
    [
        # XEP-0106 §7: foo\5cbar unescapes to foo\bar, the user of foo\5c5cbar as well
        ("xmpp:foo\\5cbar@xmpp.test", "JID_AMBIGUOUS_ESCAPE"),
        ("xmpp:a b@xmpp.test", "JID_BAD_LOCALPART"),  # raw space: not a JID, not an IRI
        ("xmpp:alice@xmpp.test/", "JID_BAD_RESOURCE"),
    ],
)
def test_xmpp_sender_without_a_sip_uri_is_a_bad_request_naming_why(sender: str, code: str) -> None:
    with pytest.raises(MappingError) as info:
        MAPPER.from_canonical(envelope(sender))
    assert info.value.reason is Reason.BAD_REQUEST
    assert code in str(info.value)
    assert repr(sender) in str(info.value)
    # the same refusal, with its code, for every other reader of gateway-wide addresses
    with pytest.raises(ParseError) as parse:
        Address.from_gateway(sender).sip_uri  # noqa: B018 - the conversion is what refuses
    assert parse.value.code == code


# ------------------------------------------------------------------ laws

ESCAPABLE = " \"&'/:<>@\\"
user_char = st.one_of(
    st.sampled_from("abcXYZ019-_.!~*()=+$,;?%#" + ESCAPABLE),
    st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
)
users = st.text(user_char, min_size=1, max_size=16).filter(lambda u: u.strip(" ") == u)
resources = st.one_of(
    st.none(),
    st.text(
        st.one_of(st.sampled_from(" abc-/@:;=?&%'\\"), st.characters(categories=("L", "Nd"))),
        min_size=1,
        max_size=12,
    ),
)


def jid_of(user: str, resource: str | None) -> str | None:
    """The JID of an XMPP user named ``user`` (escaped), or None when none can exist."""
    try:
        local = escape_localpart(user)
        Address("xmpp", local, "xmpp.test", resource=resource)
    except ParseError:
        return None
    return f"{local}@xmpp.test" + (f"/{resource}" if resource is not None else "")


@given(users, resources)
def test_sip_uri_of_a_stamped_jid_maps_back_to_the_same_jid(
    user: str, resource: str | None
) -> None:
    """JID -> sip: (unescaped user, gr = resource) -> JID (XEP-0106 §4.2 escaping, RFC 7247
    §6.3) is the identity, and the sip: URI is ASCII (RFC 3261 §25.1)."""
    jid = jid_of(user, resource)
    if jid is None:
        return
    uri = sip_address(gateway_xmpp(jid))  # as the XMPP adapter names the user
    assert uri.isascii(), uri
    sip = Address.parse(uri)
    assert sip.user == user
    assert sip.gruu == resource
    assert sip.jid == jid
