"""The gateway-wide address form (docs/addresses.md "XMPP users seen from the other
adapters"): ``Address.from_gateway`` reads what every adapter puts in an envelope, an
``xmpp:`` address as the JID the XMPP server stamped with only ``%``, ``?`` and ``#``
percent-encoded (RFC 5122 §2.2 reads them as escape, query and fragment), and an RFC 5122
IRI as the JID it names; ``to_gateway`` / ``gateway_xmpp`` write it, ``gateway_jid`` reads
the JID text back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.address import Address, gateway_jid, gateway_xmpp
from canonical.errors import ParseError
from tests.canonical.test_address import _JID_DOMAIN, _JID_LOCAL, _RESOURCE, ADDRESSES


@pytest.mark.parametrize(
    ("text", "jid"),
    [
        ("xmpp:d\\27artagnan@xmpp.example/my phone", "d\\27artagnan@xmpp.example/my phone"),
        ("xmpp:d%5C27artagnan@xmpp.example/my%20phone", "d\\27artagnan@xmpp.example/my phone"),
        ("xmpp:who%3F@xmpp.example/what%3F%23", "who?@xmpp.example/what?#"),
        ("xmpp:o%2527neil@xmpp.example", "o%27neil@xmpp.example"),
        ("xmpp:a;b@xmpp.example/x@y/z", "a;b@xmpp.example/x@y/z"),
        ("XMPP:jürgen@xmpp.example/Küche", "jürgen@xmpp.example/Küche"),
        ("xmpp:juliet@xmpp.example/balcony?message;subject=hi", "juliet@xmpp.example/balcony"),
        ("xmpp:xmpp.example", "xmpp.example"),
    ],
)
def test_gateway_xmpp_address_reads_as_the_jid_it_names(text: str, jid: str) -> None:
    assert gateway_jid(text) == jid
    assert Address.from_gateway(text).jid == jid


def test_a_query_is_kept_when_the_address_is_read_as_a_uri() -> None:
    address = Address.from_gateway("xmpp:romeo@xmpp.example?message;subject=hi")
    assert address.params == (("message", None), ("subject", "hi"))
    assert address.to_gateway() == "xmpp:romeo@xmpp.example?message;subject=hi"


def test_other_schemes_read_as_uris() -> None:
    assert Address.from_gateway("sip:o%27neil@x.example;gr=a") == Address.parse(
        "sip:o'neil@x.example;gr=a"
    )
    assert Address.from_gateway("im:who%3F@x.example").to_gateway() == "im:who%3F@x.example"


@pytest.mark.parametrize(
    ("text", "code", "offset"),
    [
        ("xmpp:a b@x.example", "JID_BAD_LOCALPART", 6),  # raw space: not a localpart
        ("xmpp:alice@x.example/", "JID_BAD_RESOURCE", 21),
        ("xmpp:a%zz@x.example", "ADDRESS_BAD_PERCENT", 6),
        ("xmpp:a%FF@x.example", "ADDRESS_BAD_PERCENT", 5),  # not UTF-8
        ("xmpp:a%2Fb@x.example", "JID_BAD_LOCALPART", 5),  # would split the JID elsewhere
        ("xmpp:a%40b@x.example", "JID_BAD_LOCALPART", 5),
        ("xmpp:a@x%2Fy.example", "JID_BAD_DOMAIN", 7),
        ("xmpp:alice@x.example#top", "ADDRESS_UNSUPPORTED", 20),
        ("xmpp://me@x.example/alice@x.example", "ADDRESS_UNSUPPORTED", 5),
        ("xmpp:a\udc80@x.example", "JID_BAD_LOCALPART", 6),  # a lone surrogate
        ("xmpp:a%25\udc80@x.example", "ADDRESS_BAD_CHAR", 9),
    ],
)
def test_address_that_names_no_jid_is_refused_with_code_and_place(
    text: str, code: str, offset: int | None
) -> None:
    with pytest.raises(ParseError) as info:
        Address.from_gateway(text)
    assert info.value.code == code
    if offset is not None:
        assert info.value.offset == offset
    assert info.value.hint


def test_gateway_jid_refuses_other_schemes() -> None:
    with pytest.raises(ParseError) as info:
        gateway_jid("sip:alice@x.example")
    assert info.value.code == "ADDRESS_BAD_SCHEME"


# ------------------------------------------------------------------ laws

_JIDS = st.builds(
    lambda local, domain, resource: (
        (f"{local}@" if local is not None else "")
        + domain
        + (f"/{resource}" if resource is not None else "")
    ),
    st.one_of(st.none(), _JID_LOCAL),
    _JID_DOMAIN,
    st.one_of(st.none(), _RESOURCE),
)


@given(ADDRESSES)
def test_every_address_reads_back_from_its_gateway_text(address: Address) -> None:
    assert Address.from_gateway(address.to_gateway()) == address


@given(ADDRESSES)
def test_canonical_text_reads_as_the_same_address(address: Address) -> None:
    """An RFC 5122 IRI in canonical spelling names the same JID as the gateway form."""
    assert Address.from_gateway(str(address)) == address


@given(_JIDS)
def test_gateway_jid_inverts_gateway_xmpp(jid: str) -> None:
    text = gateway_xmpp(jid)
    assert gateway_jid(text) == jid
    assert "?" not in text
    assert "#" not in text
    assert Address.from_gateway(text) == Address.from_jid(jid)


@given(_JIDS.filter(lambda j: not any(c in j for c in "%?#")))
def test_jid_without_uri_delimiters_is_written_as_stamped(jid: str) -> None:
    assert gateway_xmpp(jid) == f"xmpp:{jid}"
