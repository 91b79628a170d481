"""Who a CPIM From names, across schemes (canonical.smime.match_sender, used by the
gateway's author check and by signature checks): an XMPP user's JID names the user its
localpart unescapes to (XEP-0106 §4.2, RFC 7247 §6; docs/addresses.md "Conversion between
schemes"), so ``xmpp:d\\27artagnan@xmpp.test/musket`` is ``im:d'artagnan@xmpp.test``, and a
Unicode JID domain is its A-label form. A JID that is not canonically escaped names no user
of another scheme (XEP-0106 §7), only itself."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.address import Address, escape_localpart, gateway_xmpp
from canonical.errors import ParseError
from canonical.smime import match_sender


@pytest.mark.parametrize(
    ("sender", "author"),
    [
        ("xmpp:d\\27artagnan@xmpp.test/musket", "im:d'artagnan@xmpp.test"),
        ("xmpp:d\\27artagnan@xmpp.test", "sip:d%27artagnan@xmpp.test"),
        ("xmpp:a\\20b\\3ac@xmpp.test/my phone", "im:a%20b%3Ac@xmpp.test"),
        ("xmpp:bob@ü.example/r", "im:bob@xn--tda.example"),
        ("xmpp:bad\\zz@xmpp.test", "im:bad%5Czz@xmpp.test"),  # not an escape (§4.4)
        ("xmpp:foo\\5cbar@x.test/r", "xmpp:foo\\5cbar@x.test"),  # itself, in its scheme
    ],
)
def test_xmpp_sender_is_named_by_its_unescaped_user(sender: str, author: str) -> None:
    assert match_sender(sender, [author]) == author


@pytest.mark.parametrize(
    ("sender", "author"),
    [
        # the escaped spelling names the user d\27artagnan, not d'artagnan
        ("xmpp:d\\27artagnan@xmpp.test", "im:d%5C27artagnan@xmpp.test"),
        # foo\5cbar is not canonical: im:foo%5C5cbar is the user of foo\5c5cbar
        ("xmpp:foo\\5cbar@x.test", "im:foo%5C5cbar@x.test"),
        ("xmpp:athos@xmpp.test", "im:d'artagnan@xmpp.test"),
    ],
)
def test_other_users_are_not_named(sender: str, author: str) -> None:
    assert match_sender(sender, [author]) is None


@pytest.mark.parametrize(
    ("sender", "author"),
    [
        # a JID localpart may hold ';', '?' and '#' (RFC 7622 §3.3); a SIP user ';' and '?'
        # raw (RFC 3261 §25.1), im: percent-encodes them (RFC 3860 §3.2)
        ("xmpp:who%3F@xmpp.test/r", "sip:who?@xmpp.test"),
        ("xmpp:who%3F@xmpp.test/r", "im:who%3F@xmpp.test"),
        ("xmpp:a;b@xmpp.test/r", "sip:a;b@xmpp.test;gr=r"),
        ("xmpp:a;b@xmpp.test", "im:a%3Bb@xmpp.test"),
        ("xmpp:no%23pe@xmpp.test", "pres:no%23pe@xmpp.test"),
        ("xmpp:o%2527neil@xmpp.test", "im:o%2527neil@xmpp.test"),  # the JID o%27neil
        ("who?@xmpp.test/r@x", "im:who%3F@xmpp.test"),  # a bare JID, as a stanza gives it
        ("sip:alice;day=tuesday@atlanta.example", "im:alice%3Bday=tuesday@atlanta.example"),
    ],
)
def test_users_holding_uri_delimiters_are_named_by_their_whole_user(
    sender: str, author: str
) -> None:
    assert match_sender(sender, [author]) == author


@pytest.mark.parametrize(
    ("sender", "author"),
    [
        ("xmpp:who%3F@xmpp.test", "im:who@xmpp.test"),  # not cut at '?'
        ("xmpp:a;b@xmpp.test", "sip:a@xmpp.test"),  # not cut at ';'
        ("xmpp:o%2527neil@xmpp.test", "im:o'neil@xmpp.test"),  # %25 is a '%'
        ("o%27neil@xmpp.test", "im:o'neil@xmpp.test"),  # a bare JID is not percent-decoded
    ],
)
def test_a_user_cut_at_a_delimiter_is_another_user(sender: str, author: str) -> None:
    assert match_sender(sender, [author]) is None


# every character an XMPP user's name may hold, ';', '?', '#' and '%' included
user_char = st.one_of(
    st.sampled_from("abcXYZ019-_.!~*()=+$,%;?# \"&'/:<>\\"),
    st.characters(categories=("Ll", "Lu", "Lo", "Nd"), min_codepoint=0x80),
)


@given(
    st.text(user_char, min_size=1, max_size=16).filter(lambda u: u.strip(" ") == u),
    st.sampled_from(["im", "pres", "sip", "sips"]),
    st.sampled_from([None, "r", "my phone", "a?b#c;d%e"]),
)
def test_jid_names_the_uri_its_user_converts_to(
    user: str, scheme: str, resource: str | None
) -> None:
    """The JID, as the XMPP adapter names it (``xmpp:`` + JID, ``%?#`` encoded) and as a
    stanza gives it (bare text), names the URI of its user under every scheme."""
    try:
        jid = Address("xmpp", escape_localpart(user), "xmpp.test", resource=resource)
        uri = str(jid.bare.with_scheme(scheme))  # type: ignore[arg-type]
    except ParseError:
        return
    text = jid.jid
    assert match_sender(gateway_xmpp(text), [uri]) == uri
    assert match_sender(text, [uri]) == uri
    assert match_sender(uri, [gateway_xmpp(text)]) == gateway_xmpp(text)
