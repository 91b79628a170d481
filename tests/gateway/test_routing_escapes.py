"""A route that changes the scheme converts the user as docs/addresses.md "Conversion between
schemes" says (gateway/routing.py ``rewrite``): into XMPP the user is XEP-0106-escaped
(``sip:d'artagnan@x`` -> ``xmpp:d\\27artagnan@x``), out of it unescaped, and each scheme
percent-encodes what it reserves; a route that keeps the scheme changes only the host, byte
for byte. The routing law: an address rewritten to xmpp and back is the same address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.address import Address, escape_localpart, gateway_xmpp, is_canonical_localpart
from canonical.errors import ParseError, Reason, RoutingError
from gateway.routing import Route, RoutingTable, rewrite

TABLE = RoutingTable(
    [
        Route("xmpp.test", "xmpp", scheme="xmpp"),
        Route("sip.test", "sip", scheme="sip"),
        Route("im.test", "http", scheme="im", domain="example.net"),
    ]
)


@pytest.mark.parametrize(
    ("recipient", "rewritten"),
    [
        ("sip:d'artagnan@xmpp.test", "xmpp:d\\27artagnan@xmpp.test"),
        ("sip:d%27artagnan@xmpp.test;gr=musket", "xmpp:d\\27artagnan@xmpp.test"),
        ("sip:o%27neil@xmpp.test", "xmpp:o\\27neil@xmpp.test"),  # not the JID o%27neil
        ("im:a%20b%3Ac@xmpp.test", "xmpp:a\\20b\\3ac@xmpp.test"),
        ("sip:who?@xmpp.test", "xmpp:who%3F@xmpp.test"),  # '?' encoded in the xmpp: form
        ("sip:100%25@xmpp.test", "xmpp:100%25@xmpp.test"),  # the JID 100%
        ("sip:j%C3%BCrgen@xmpp.test", "xmpp:jürgen@xmpp.test"),
        ("xmpp:d\\27artagnan@sip.test/musket", "sip:d'artagnan@sip.test"),
        ("xmpp:who%3F@sip.test", "sip:who?@sip.test"),
        ("xmpp:a\\20b@im.test", "im:a%20b@example.net"),
    ],
)
def test_route_scheme_converts_the_user(recipient: str, rewritten: str) -> None:
    assert TABLE.resolve(recipient).recipient == rewritten


def test_rewritten_jid_is_the_one_the_xmpp_side_serves() -> None:
    rewritten = TABLE.resolve("sip:d'artagnan@xmpp.test").recipient
    assert Address.from_gateway(rewritten).jid == "d\\27artagnan@xmpp.test"


@pytest.mark.parametrize(
    ("recipient", "code"),
    [
        ("sip:%20bob@xmpp.test", "JID_BAD_ESCAPE"),  # XEP-0106 §3.2: no leading space
        ("sip:%F0%9F%98%80@xmpp.test", "JID_BAD_LOCALPART"),  # a symbol, RFC 7622 §3.3
        ("xmpp:foo\\5cbar@sip.test", "JID_AMBIGUOUS_ESCAPE"),  # XEP-0106 §7
    ],
)
def test_user_the_target_scheme_cannot_hold_is_a_bad_request_naming_why(
    recipient: str, code: str
) -> None:
    with pytest.raises(RoutingError) as info:
        TABLE.resolve(recipient)
    assert info.value.reason is Reason.BAD_REQUEST
    assert code in str(info.value)
    assert repr(recipient) in str(info.value)


@pytest.mark.parametrize(
    ("address", "scheme", "domain", "rewritten"),
    [
        ("sip:o%27neil@a.test;transport=tcp", None, "b.test", "sip:o%27neil@b.test;transport=tcp"),
        ("sip:o%27neil@a.test:5061;gr=x", "sip", None, "sip:o%27neil@a.test:5061;gr=x"),
        ("xmpp:d\\27artagnan@a.test/my phone", "xmpp", "b.test", None),
        ("xmpp:who?@a.test/r", None, "b.test", "xmpp:who?@b.test/r"),
        ("im:d%27artagnan@a.test", "im", None, "im:d%27artagnan@a.test"),
        ("sip://x@a.test", None, "b.test", "sip://x@b.test"),  # a SIP user may begin '//'
    ],
)
def test_rewrite_that_keeps_the_scheme_keeps_the_text(
    address: str, scheme: str | None, domain: str | None, rewritten: str | None
) -> None:
    expected = rewritten or address.replace("a.test", domain or "a.test")
    assert rewrite(address, scheme=scheme, domain=domain) == expected


# ------------------------------------------------------------------ laws

ESCAPABLE = " \"&'/:<>@\\"
users = st.text(
    st.one_of(
        st.sampled_from("abcXYZ019-_.!~*()=+$,;?%#" + ESCAPABLE),
        st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
    ),
    min_size=1,
    max_size=16,
)


@given(users, st.sampled_from(["sip", "sips", "im", "pres"]), st.sampled_from([None, "b.test"]))
def test_address_rewritten_to_xmpp_and_back_is_the_same(
    user: str, scheme: str, domain: str | None
) -> None:
    """scheme: -> xmpp: -> scheme: is the identity on the address (its canonical text), and
    the xmpp: address names the JID XEP-0106 escaping gives."""
    original = str(Address(scheme, user, "a.test"))  # type: ignore[arg-type]
    try:
        Address("xmpp", escape_localpart(user), "a.test")
    except ParseError:
        # refused exactly when the user cannot be a JID localpart (leading/trailing space,
        # a character RFC 7622 §3.3 forbids), as a bad request
        with pytest.raises(RoutingError) as refused:
            rewrite(original, scheme="xmpp", domain=domain)
        assert refused.value.reason is Reason.BAD_REQUEST
        return
    there = rewrite(original, scheme="xmpp", domain=domain)
    assert Address.from_gateway(there).jid == f"{escape_localpart(user)}@{domain or 'a.test'}"
    back = rewrite(there, scheme=scheme, domain="a.test" if domain else None)
    assert back == original


@given(users, st.sampled_from(["sip", "im"]), st.sampled_from([None, "r", "my phone?"]))
def test_jid_rewritten_to_another_scheme_and_back_is_the_same_bare_jid(
    user: str, scheme: str, resource: str | None
) -> None:
    try:
        jid = Address("xmpp", escape_localpart(user), "a.test", resource=resource)
    except ParseError:
        return
    original = gateway_xmpp(jid.jid)
    if not is_canonical_localpart(jid.user or ""):
        # a JID that is not canonically escaped has no URI (XEP-0106 §7)
        with pytest.raises(RoutingError, match="JID_AMBIGUOUS_ESCAPE"):
            rewrite(original, scheme=scheme, domain=None)
        return
    there = rewrite(original, scheme=scheme, domain=None)
    back = rewrite(there, scheme="xmpp", domain=None)
    assert back == gateway_xmpp(jid.bare_jid)


@given(users.map(lambda u: str(Address("sip", u, "a.test"))), st.sampled_from(["b.test", None]))
def test_rewrite_under_the_same_scheme_replaces_only_the_host(
    address: str, domain: str | None
) -> None:
    assert rewrite(address, scheme="sip", domain=domain) == address.replace(
        "@a.test", f"@{domain or 'a.test'}"
    )
