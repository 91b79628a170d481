"""The component's JIDs and gateway-wide URIs map both ways (docs/addresses.md "Conversion
between schemes", docs/mapping/xmpp.md "Addresses"): out of XMPP the XEP-0106-unescaped user
is percent-encoded as UTF-8 octets where the URI scheme reserves it (RFC 3986 §2.1, RFC 3261
§25.1); into XMPP the percent-decoded user is XEP-0106-escaped (§4.2). JID -> URI -> JID gives
the same JID, URI -> JID -> URI the same URI in canonical spelling, and what cannot map is
refused with JID_MALFORMED (answered jid-malformed on XMPP, 400 on SIP)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import XmppMapper
from canonical.address import Address, escape_localpart, is_canonical_localpart
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import ParseError, Reason

COMPONENT = "sip.xmpp.test"
SIP_DOMAIN = "sip.test"


def fresh_map() -> AddressMap:
    """A map without remembered translations, so each law runs the conversion itself."""
    return AddressMap(COMPONENT, {COMPONENT: f"sip:{SIP_DOMAIN}"}, frozenset({"xmpp.test"}))


# users: ASCII letters and punctuation (all ten XEP-0106 characters, the backslash, and what
# SIP must percent-encode), non-ASCII letters and digits, combining marks
ESCAPABLE = " \"&'/:<>@\\"
SIP_RESERVED = "%#[]^`{|}"
user_char = st.one_of(
    st.sampled_from("abcXYZ019-_.!~*()=+$,;?" + ESCAPABLE + SIP_RESERVED),
    st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
    st.sampled_from("üßéøçñ東京Жя\u0301"),
)
users = (
    st.text(user_char, min_size=1, max_size=16)
    .filter(lambda u: u.strip(" ") == u)  # XEP-0106 §3.2: no \20 first or last
    .filter(lambda u: not u.startswith("\u0301"))
    .filter(lambda u: "@" not in u)  # an escaped "@" names a whole foreign address
)


def sip_user_ok(user: str) -> bool:
    try:
        Address("xmpp", escape_localpart(user), COMPONENT)
    except ParseError:
        return False
    return True


@given(users.filter(sip_user_ok))
def test_jid_to_uri_percent_encodes_the_unescaped_user_and_maps_back(user: str) -> None:
    jid = f"{escape_localpart(user)}@{COMPONENT}"
    uri = fresh_map().to_uri(jid)
    assert uri.isascii(), uri  # a URI, not an IRI: UTF-8 octets as %HH (RFC 3261 §25.1)
    parsed = Address.parse(uri)
    assert (parsed.scheme, parsed.user, parsed.host) == ("sip", user, SIP_DOMAIN)
    assert str(parsed) == uri  # canonical spelling
    assert fresh_map().to_jid(uri) == jid


@given(users.filter(sip_user_ok))
def test_uri_to_jid_and_back_gives_the_canonical_uri(user: str) -> None:
    canonical = str(Address("sip", user, SIP_DOMAIN))
    # the same user with every octet percent-encoded is the same address (RFC 3261 §19.1.4)
    everything = "".join(f"%{b:02x}" for b in user.encode())
    for uri in (canonical, f"sip:{everything}@{SIP_DOMAIN};transport=tcp"):
        jid = fresh_map().to_jid(uri)
        assert jid == f"{escape_localpart(user)}@{COMPONENT}"
        assert fresh_map().to_uri(jid) == canonical


host_name = st.from_regex(
    r"([a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?\.){0,2}[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True
)


@given(users.filter(sip_user_ok), host_name)
def test_escaped_foreign_address_with_any_user_maps_to_im_and_back(user: str, host: str) -> None:
    jid = f"{escape_localpart(f'{user}@{host}')}@{COMPONENT}"
    uri = fresh_map().to_uri(jid)
    assert uri.isascii(), uri
    parsed = Address.parse(uri)
    assert (parsed.scheme, parsed.user, parsed.host) == ("im", user, host)
    assert fresh_map().to_jid(uri) == jid


local_text = st.text(st.sampled_from("ab\\0235acfz:@ü"), min_size=1, max_size=12)


@given(local_text)
def test_any_escaped_localpart_maps_back_to_itself_or_is_refused_as_malformed(
    local: str,
) -> None:
    """Over arbitrary backslash sequences (partial, foreign, upper-case hex, \\5c): a JID the
    component serves either survives JID -> URI -> JID or is refused as JID_MALFORMED."""
    jid = f"{local}@{COMPONENT}"
    try:
        uri = fresh_map().to_uri(jid)
    except ParseError as exc:
        refused: ParseError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.code == "JID_MALFORMED", refused
        return
    assert is_canonical_localpart(local)
    assert fresh_map().to_jid(uri) == jid


@pytest.mark.parametrize(
    ("jid", "uri"),
    [
        ("a\\3a@sip.xmpp.test", "sip:a%3A@sip.test"),  # not sip:a:@ (a password)
        ("jürgen@sip.xmpp.test", "sip:j%C3%BCrgen@sip.test"),
        ("bad\\zz@sip.xmpp.test", "sip:bad%5Czz@sip.test"),  # a foreign sequence stays
        ("a\\20b\\40x.net@sip.xmpp.test", "im:a%20b@x.net"),
        ("o\\27neil@sip.xmpp.test", "sip:o'neil@sip.test"),
        ("東京@sip.xmpp.test", "sip:%E6%9D%B1%E4%BA%AC@sip.test"),
        ("bob\\40ü.example@sip.xmpp.test", "im:bob@xn--tda.example"),
        ("c\\3a\\5c5commas@sip.xmpp.test", "sip:c%3A%5C5commas@sip.test"),
    ],
)
def test_documented_examples_map_both_ways(jid: str, uri: str) -> None:
    assert fresh_map().to_uri(jid) == uri
    assert fresh_map().to_jid(uri) == jid


def test_served_users_percent_decoded_and_escaped_into_their_own_jid() -> None:
    addresses = fresh_map()
    assert addresses.to_jid("sip:o%27neil@xmpp.test") == "o\\27neil@xmpp.test"
    assert addresses.to_jid("sip:j%C3%BCrgen@XMPP.test;gr=x") == "jürgen@xmpp.test"


@pytest.mark.parametrize(
    ("jid", "why"),
    [
        ("foo\\5cbar@sip.xmpp.test", "not canonically escaped"),  # XEP-0106 §7
        ("\\20a@sip.xmpp.test", "not canonically escaped"),
        ("😀@sip.xmpp.test", "not allowed in a JID localpart"),  # RFC 7622 §3.3: a symbol
        ("u\\401@sip.xmpp.test", "not a valid host"),
        ("u\\40a..b@sip.xmpp.test", "not a valid"),
    ],
)
def test_jid_that_cannot_be_a_uri_is_refused_as_malformed(jid: str, why: str) -> None:
    with pytest.raises(ParseError) as info:
        fresh_map().to_uri(jid)
    assert info.value.code == "JID_MALFORMED"
    assert why in str(info.value)
    assert repr(jid) in str(info.value)  # says which JID


@pytest.mark.parametrize(
    ("uri", "code", "why"),
    [
        ("sip:%F0%9F%98%80@sip.test", "JID_MALFORMED", "JID_BAD_LOCALPART"),
        ("sip:%20bob@sip.test", "JID_MALFORMED", "JID_BAD_ESCAPE"),
        ("sip:a%00b@sip.test", "JID_MALFORMED", "JID_BAD_LOCALPART"),
        ("sip:a:pw@sip.test", "URI_MALFORMED", "ADDRESS_PASSWORD"),
        ("sip:j%C3@sip.test", "URI_MALFORMED", "ADDRESS_BAD_PERCENT"),
        ("sip:jürgen@sip.test", "URI_MALFORMED", "ADDRESS_BAD_CHAR"),  # raw: encode it
        ("tel:+4930123", "URI_MALFORMED", "ADDRESS_BAD_SCHEME"),
    ],
)
def test_uri_that_cannot_be_a_jid_is_refused_with_the_reason(uri: str, code: str, why: str) -> None:
    with pytest.raises(ParseError) as info:
        fresh_map().to_jid(uri)
    assert info.value.code == code
    assert why in str(info.value)
    assert info.value.reason is Reason.BAD_REQUEST  # a 400 on SIP


def test_domain_map_entry_that_is_no_foreign_domain_is_refused_at_construction() -> None:
    for target in ("sip:bob@sip.test", "example.net", "sip:"):
        with pytest.raises(ParseError) as info:
            AddressMap(COMPONENT, {COMPONENT: target})
        assert info.value.code == "DOMAIN_MAP"
        assert target in str(info.value)


# ------------------------------------------------------------------ through the mapper

MAPPER = XmppMapper(fresh_map())
ORIGIN = Origin(adapter="xmpp", native_id="m1")


def stanza(sender: str, to: str) -> ET.Element:
    element = ET.Element(
        "{jabber:component:accept}message", {"from": sender, "to": to, "type": "chat"}
    )
    ET.SubElement(element, "{jabber:component:accept}body").text = "Grüß dich"
    return element


def test_message_to_a_non_ascii_jid_gets_the_percent_encoded_sip_recipient() -> None:
    mapped = MAPPER.to_canonical(
        stanza("romeo@xmpp.test/r", "jürgen@sip.xmpp.test"), origin=ORIGIN, received_at=0.0
    )
    assert mapped.value.recipient == "sip:j%C3%BCrgen@sip.test"
    assert mapped.value.sender == "xmpp:romeo@xmpp.test/r"


def test_message_from_a_percent_encoded_sip_user_comes_from_the_escaped_jid() -> None:
    envelope = Envelope(
        operation=Operation.MESSAGE,
        sender="sip:a%3A@sip.test",
        recipient="xmpp:romeo@xmpp.test",
        identity="i18n-1",
        payload=Payload("text/plain; charset=utf-8", "Grüß dich".encode()),
        origin=Origin(adapter="sip"),
    )
    native = MAPPER.from_canonical(envelope).value
    assert native.get("from") == "a\\3a@sip.xmpp.test"
    assert native.get("to") == "romeo@xmpp.test"
