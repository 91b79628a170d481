"""The CPIM From (and the PIDF entity) of an XMPP user names the user, not the escaped JID
(docs/addresses.md "Conversion between schemes", docs/mapping/xmpp.md "Message stanza ->
payload"): ``d\\27artagnan@xmpp.test`` writes as ``im:d'artagnan@xmpp.test`` — the localpart
XEP-0106-unescaped, percent-encoded as the im: scheme requires (RFC 3922 §3.2, RFC 7247
§6.4) — and the way back, im: -> JID (XEP-0106 §4.2 escaping), is the same bare JID. Only
objects the mapper builds are written this way; an object that arrives built is carried
byte for byte (law L1), and native stanzas still come back without carriage (law L2)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import XmppMapper
from adapters.xmpp.presence import user_uri
from adapters.xmpp.stanza import CARRIAGE_NS, COMPONENT_NS
from canonical import cpim
from canonical import presence as pidf
from canonical.address import Address, escape_localpart
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import ParseError

XMPP = "xmpp.test"
COMPONENT = "sip.xmpp.test"
ORIGIN = Origin("xmpp")
NS = COMPONENT_NS


def fresh_map() -> AddressMap:
    """No remembered translations: each law runs the conversion itself."""
    return AddressMap(COMPONENT, {COMPONENT: "sip:sip.test"}, frozenset({XMPP}))


MAPPER = XmppMapper(fresh_map())


def message(sender: str, to: str = f"bob@{COMPONENT}", body: str = "En garde") -> ET.Element:
    element = ET.Element(f"{{{NS}}}message", {"from": sender, "to": to, "type": "chat"})
    ET.SubElement(element, f"{{{NS}}}body").text = body
    return MAPPER.decode(MAPPER.encode(element))


def cpim_of(envelope: Envelope) -> cpim.CpimMessage:
    assert envelope.payload is not None
    return cpim.parse_body(envelope.payload.body, strict=True)


@pytest.mark.parametrize(
    ("jid", "im"),
    [
        ("d\\27artagnan@xmpp.test/my phone", "im:d'artagnan@xmpp.test"),
        ("a\\20b\\3ac@xmpp.test/r", "im:a%20b%3Ac@xmpp.test"),
        ("jürgen@xmpp.test/Küche", "im:j%C3%BCrgen@xmpp.test"),  # a URI, not an IRI
        ("bad\\zz@xmpp.test", "im:bad%5Czz@xmpp.test"),  # not an escape (§4.4): kept
        ("alice@xmpp.test/x y", "im:alice@xmpp.test"),
    ],
)
def test_cpim_from_of_an_xmpp_user_is_the_unescaped_im_uri(jid: str, im: str) -> None:
    envelope = MAPPER.to_canonical(message(jid), origin=ORIGIN, received_at=1.0).value
    assert envelope.sender == f"xmpp:{jid}"  # the transport address keeps the JID as stamped
    built = cpim_of(envelope)
    assert built.sender is not None
    assert built.sender.uri == im
    assert fresh_map().to_jid(im) == jid.partition("/")[0]


def test_escaped_sender_still_comes_back_as_the_same_stanza_without_carriage() -> None:
    native = message("d\\27artagnan@xmpp.test/my phone")
    mapped = MAPPER.to_canonical(native, origin=ORIGIN, received_at=1.0).value
    back = MAPPER.from_canonical(mapped).value
    assert back.find(f"{{{CARRIAGE_NS}}}cpim") is None  # law L2
    assert MAPPER.equal(MAPPER.decode(MAPPER.encode(back)), native)


def test_object_that_arrives_built_keeps_its_escaped_from_byte_for_byte() -> None:
    # built elsewhere with the escaped form percent-encoded: never rewritten (RFC 3862 §2.2)
    body = (
        b"From: <im:d%5C27artagnan@xmpp.test>\r\nTo: <sip:bob@sip.test>\r\n"
        b"NS: xmpp <urn:cpimgw:xmpp:0>\r\nxmpp.Type: chat\r\n\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nEn garde"
    )
    envelope = Envelope(
        Operation.MESSAGE,
        sender="sip:bob@sip.test",
        recipient="xmpp:d\\27artagnan@xmpp.test",
        payload=Payload(CPIM, body),
        identity="0123456789abcdef0123456789abcdef",
        origin=Origin("sip"),
    )
    stanza = MAPPER.from_canonical(envelope).value
    again = MAPPER.to_canonical(
        MAPPER.decode(MAPPER.encode(stanza)), origin=ORIGIN, received_at=1.0
    ).value
    assert again.payload == envelope.payload  # law L1


def test_presence_of_an_escaped_user_names_the_unescaped_pres_uri() -> None:
    stanza = MAPPER.decode(
        f"<presence xmlns='{NS}' from='d\\27artagnan@xmpp.test/my phone' "
        f"to='bob@{COMPONENT}'/>".encode()
    )
    envelope = MAPPER.to_canonical(stanza, origin=ORIGIN, received_at=1.0).value
    assert envelope.payload is not None
    document = pidf.parse_pidf(envelope.payload.body)
    assert document.entity == "pres:d'artagnan@xmpp.test"
    assert fresh_map().to_jid(document.entity) == "d\\27artagnan@xmpp.test"


@pytest.mark.parametrize("local", ["foo\\5cbar", "\\20a"])
def test_sender_whose_jid_has_no_im_uri_is_refused_as_malformed(local: str) -> None:
    # foo\5cbar unescapes to foo\bar, the user of foo\5c5cbar too (XEP-0106 §7)
    with pytest.raises(ParseError) as info:
        MAPPER.to_canonical(message(f"{local}@xmpp.test/r"), origin=ORIGIN, received_at=1.0)
    assert info.value.code == "JID_MALFORMED"
    assert repr(f"{local}@xmpp.test/r") in info.value.message
    assert "JID_AMBIGUOUS_ESCAPE" in info.value.message


# ------------------------------------------------------------------ laws

ESCAPABLE = " \"&'/:<>@\\"
user_char = st.one_of(
    st.sampled_from("abcXYZ019-_.!~*()=+$,;?%#[]^`{|}" + ESCAPABLE),
    st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
)
users = st.text(user_char, min_size=1, max_size=16).filter(
    lambda u: u.strip(" ") == u and "@" not in u  # XEP-0106 §3.2; "@" names a foreign address
)


def local_of(user: str) -> str | None:
    try:
        local = escape_localpart(user)
        Address("xmpp", local, XMPP)
    except ParseError:
        return None
    return local


@given(users, st.sampled_from(["im", "pres"]), st.sampled_from([None, "my phone", "r/1"]))
def test_im_and_pres_uri_of_a_jid_map_back_to_the_same_bare_jid(
    user: str, scheme: str, resource: str | None
) -> None:
    """JID -> im:/pres: (unescaped, percent-encoded) -> JID (escaped, XEP-0106 §4.2) is the
    identity on the bare JID, and the URI is ASCII and canonically spelled."""
    local = local_of(user)
    if local is None:
        return
    jid = f"{local}@{XMPP}" + (f"/{resource}" if resource else "")
    uri = user_uri(jid, scheme)
    assert uri.isascii(), uri
    assert str(Address.parse(uri)) == uri
    assert Address.parse(uri).user == user
    assert fresh_map().to_jid(uri) == f"{local}@{XMPP}"


@settings(max_examples=60, deadline=None)
@given(users, st.sampled_from(["r", "my phone", "what?"]))
def test_message_from_any_user_round_trips_and_its_from_names_the_user(
    user: str, resource: str
) -> None:
    """Through the mapper: CPIM From = the user's im: URI, which maps back to the stanza's
    bare from; from_canonical gives the stanza back without carriage (law L2)."""
    local = local_of(user)
    if local is None:
        return
    native = message(f"{local}@{XMPP}/{resource}")
    envelope = MAPPER.to_canonical(native, origin=ORIGIN, received_at=2.0).value
    sender = cpim_of(envelope).sender
    assert sender is not None
    assert fresh_map().to_jid(sender.uri) == f"{local}@{XMPP}"
    back = MAPPER.from_canonical(envelope).value
    assert back.find(f"{{{CARRIAGE_NS}}}cpim") is None
    assert MAPPER.equal(MAPPER.decode(MAPPER.encode(back)), native)


@pytest.mark.parametrize(
    ("jid", "uri"),
    [
        ("who?@xmpp.test/r", "xmpp:who%3F@xmpp.test/r"),
        ("alice@xmpp.test/what?", "xmpp:alice@xmpp.test/what%3F"),
        ("no#pe@xmpp.test/a#b", "xmpp:no%23pe@xmpp.test/a%23b"),
        ("o%27neil@xmpp.test", "xmpp:o%2527neil@xmpp.test"),  # the JID, not o'neil
        ("d\\27artagnan@xmpp.test/my phone", "xmpp:d\\27artagnan@xmpp.test/my phone"),
    ],
)
def test_xmpp_address_with_uri_delimiters_maps_back_to_the_same_jid(jid: str, uri: str) -> None:
    """RFC 5122 §2.2 reads '%', '?' and '#' as escape, query and fragment: the adapter's
    xmpp: address percent-encodes exactly these, so replies reach the same JID."""
    assert fresh_map().to_uri(jid) == uri
    assert fresh_map().to_jid(uri) == jid
    assert Address.from_gateway(uri).jid == jid  # every other adapter reads the same JID


@pytest.mark.parametrize(
    ("uri", "jid"),
    [
        ("xmpp:juliet@xmpp.test/balcony?message;subject=hi", "juliet@xmpp.test/balcony"),
        ("xmpp:d%5C27artagnan@xmpp.test/my%20phone", "d\\27artagnan@xmpp.test/my phone"),
    ],
)
def test_rfc_5122_iri_maps_to_the_jid_it_names(uri: str, jid: str) -> None:
    assert fresh_map().to_jid(uri) == jid


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("xmpp:a%zz@xmpp.test", "ADDRESS_BAD_PERCENT"),
        ("xmpp:a%2Fb@xmpp.test", "JID_BAD_LOCALPART"),  # '/' would split the JID elsewhere
        ("xmpp:alice@xmpp.test#frag", "ADDRESS_UNSUPPORTED"),
    ],
)
def test_xmpp_address_that_names_no_jid_is_refused_naming_why(uri: str, code: str) -> None:
    with pytest.raises(ParseError) as info:
        fresh_map().to_jid(uri)
    assert info.value.code == "URI_MALFORMED"
    assert code in info.value.message


jid_resources = st.one_of(
    st.none(),
    st.text(
        st.one_of(st.sampled_from(" a-/@:;=?&%#'\\"), st.characters(categories=("L", "Nd"))),
        min_size=1,
        max_size=12,
    ),
)


@given(users, jid_resources)
def test_jid_of_a_server_user_maps_to_its_address_and_back(user: str, resource: str | None) -> None:
    """JID -> gateway-wide xmpp: address -> JID is the identity, through the address map
    and through canonical.address (the reader of the other adapters)."""
    local = local_of(user)
    if local is None:
        return
    jid = f"{local}@{XMPP}" + (f"/{resource}" if resource is not None else "")
    try:
        Address.from_jid(jid)
    except ParseError:
        return
    uri = fresh_map().to_uri(jid)
    assert fresh_map().to_jid(uri) == jid
    assert Address.from_gateway(uri).jid == jid
