"""canonical.address: URI and JID parsing, XEP-0106 escaping, conversion between schemes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.address import (
    Address,
    domain_matches,
    escape_localpart,
    is_canonical_localpart,
    unescape_localpart,
)
from canonical.errors import ParseError

# --- canonical texts round-trip exactly ------------------------------------------------------

CANONICAL = [
    # RFC 3261 §19.1.3 examples (without the password ones, which cpimgw refuses)
    "sip:alice@atlanta.com",
    "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
    "sip:+1-212-555-1212@gateway.com;user=phone",
    "sips:1212@gateway.com",
    "sip:alice@192.0.2.4",
    "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
    "sip:alice;day=tuesday@atlanta.com",
    # parameters in order, flag parameters, IPv6 reference with port
    "sip:[2001:db8::10]:5070;lr;transport=tcp;maddr=239.255.255.1",
    "sip:bob@Biloxi.Example.COM:5061;transport=TLS",
    "sip:watcher@127.0.0.1:15082;transport=UDP",
    # im: / pres: (RFC 3860 §3.2, RFC 3859 §3.2)
    "im:ada@example.com",
    "pres:ada@example.com",
    "im:fred@example.com?subject=hi%20there",
    "im:o'neil@example.com",
    "im:first.last+tag@example.com",
    "im:%C3%A9lodie@example.fr",
    "im:example.com",
    # xmpp: (RFC 5122) as IRIs
    "xmpp:juliet@example.com",
    "xmpp:juliet@example.com/balcony",
    "xmpp:example.com",
    "xmpp:d%5C27artagnan@musketeers.lit",
    "xmpp:romeo@montague.net?message;subject=Test%20Message;body=Here%27s%20a%20test",
    "xmpp:jué@ü.example/rés",
    "xmpp:user@[::1]/res",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_text_survives_parse_and_str(text: str) -> None:
    address = Address.parse(text)
    assert str(address) == text
    assert Address.parse(str(address)) == address


def test_sip_uri_fields_are_decoded() -> None:
    a = Address.parse("sips:alice@atlanta.com?subject=project%20x&priority=urgent")
    assert (a.scheme, a.user, a.host, a.port) == ("sips", "alice", "atlanta.com", None)
    assert a.headers == (("subject", "project x"), ("priority", "urgent"))
    b = Address.parse("sip:[2001:db8::10]:5070;lr;transport=tcp")
    assert (b.user, b.host, b.port) == (None, "[2001:db8::10]", 5070)
    assert b.params == (("lr", None), ("transport", "tcp"))


def test_noncanonical_percent_encoding_decodes_to_the_same_address() -> None:
    a = Address.parse("im:o%27neil@example.com")
    assert a == Address.parse("im:o'neil@example.com")
    assert a.user == "o'neil"
    assert str(a) == "im:o'neil@example.com"
    assert Address.parse("sip:%61lice@atlanta.com") == Address.parse("sip:alice@atlanta.com")
    assert Address.parse("sip:%e2%9c%93@x.org").user == "✓"
    assert str(Address.parse("sip:%e2%9c%93@x.org")) == "sip:%E2%9C%93@x.org"


def test_scheme_and_host_compare_case_insensitively_user_does_not() -> None:
    a = Address.parse("SIP:Bob@Example.COM")
    assert a.scheme == "sip"
    assert str(a) == "sip:Bob@Example.COM"  # the host keeps its case when printed
    assert a == Address.parse("sip:Bob@example.com")
    assert hash(a) == hash(Address.parse("sip:Bob@example.com"))
    assert a != Address.parse("sip:bob@example.com")
    assert Address.parse("xmpp:Juliet@EXAMPLE.com/Balcony") != Address.parse(
        "xmpp:Juliet@example.com/balcony"
    )


def test_scheme_less_text_is_a_jid() -> None:
    a = Address.parse("juliet@example.com/balcony")
    assert (a.scheme, a.user, a.host, a.resource) == ("xmpp", "juliet", "example.com", "balcony")
    assert a.jid == "juliet@example.com/balcony"
    assert Address.parse("example.com").user is None


def test_jid_resource_is_split_off_before_the_localpart() -> None:
    # RFC 7622 §3.2: first the resource (from the first '/'), then the localpart
    a = Address.parse("a@b/c@d/e")
    assert (a.user, a.host, a.resource) == ("a", "b", "c@d/e")
    b = Address.parse("b/c@d")
    assert (b.user, b.host, b.resource) == (None, "b", "c@d")
    assert Address.parse(str(a)) == a
    assert Address.parse(str(b)) == b


def test_jid_final_dot_is_stripped() -> None:
    assert Address.parse("juliet@example.com.").host == "example.com"


def test_xmpp_localpart_is_kept_escaped() -> None:
    a = Address.parse("tréville\\40musketeers.lit@smtp.gascon.fr")
    assert a.user == "tréville\\40musketeers.lit"
    assert a.jid == "tréville\\40musketeers.lit@smtp.gascon.fr"
    assert str(a) == "xmpp:tréville%5C40musketeers.lit@smtp.gascon.fr"


# --- XEP-0106 ---------------------------------------------------------------------------------

# XEP-0106 §5.1 table: user input -> escaped JID localpart (examples 9-11 are below)
XEP_TABLE = [
    ("space cadet", "space\\20cadet"),
    ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
    ("at&t guy", "at\\26t\\20guy"),
    ("d'artagnan", "d\\27artagnan"),
    ("/.fanboy", "\\2f.fanboy"),
    ("::foo::", "\\3a\\3afoo\\3a\\3a"),
    ("<foo>", "\\3cfoo\\3e"),
    ("user@host", "user\\40host"),
    ("c:\\5commas", "c\\3a\\5c5commas"),
    # §5.2-5.5: email, sip:, im:, wv: and IRC examples
    ("here's_a_wild_&_/cr%zy/_address", "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address"),
    (
        'here\'s_a_wild_&_/cr%zy/_address_for:<wv>("IMPS")',
        "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address_for\\3a\\3cwv\\3e(\\22IMPS\\22)",
    ),
    ("\\3and\\2is\\5cool", "\\5c3and\\2is\\5c5cool"),
    ("somenick!user\"&'/:<>\\3address", "somenick!user\\22\\26\\27\\2f\\3a\\3c\\3e\\5c3address"),
]


@pytest.mark.parametrize(("plain", "escaped"), XEP_TABLE)
def test_xep0106_examples_escape_and_unescape(plain: str, escaped: str) -> None:
    assert escape_localpart(plain) == escaped
    assert unescape_localpart(escaped) == plain


@pytest.mark.parametrize(
    ("plain", "xep_escaped", "rule_escaped"),
    [
        # XEP-0106 table examples 9-11 escape a backslash that starts no escape sequence, which
        # its own §4.4 forbids ("foo\bar is not modified"). We follow §4.2-4.4; both forms
        # unescape to the same user input.
        ("c:\\net", "c\\3a\\5cnet", "c\\3a\\net"),
        ("c:\\\\net", "c\\3a\\5c\\5cnet", "c\\3a\\\\net"),
        ("c:\\cool stuff", "c\\3a\\5ccool\\20stuff", "c\\3a\\cool\\20stuff"),
    ],
)
def test_xep0106_examples_9_to_11_follow_the_business_rules(
    plain: str, xep_escaped: str, rule_escaped: str
) -> None:
    assert escape_localpart(plain) == rule_escaped
    assert unescape_localpart(xep_escaped) == plain
    assert unescape_localpart(rule_escaped) == plain


@pytest.mark.parametrize("text", ["\\2plus\\2is\\4", "foo\\bar", "foob\\41r", "x\\2F", "\\5"])
def test_xep0106_partial_and_foreign_sequences_are_not_touched(text: str) -> None:
    assert escape_localpart(text) == text
    assert unescape_localpart(text) == text


@pytest.mark.parametrize("text", [" x", "x ", " "])
def test_xep0106_space_may_not_begin_or_end_an_escaped_localpart(text: str) -> None:
    with pytest.raises(ParseError) as info:
        escape_localpart(text)
    assert info.value.code == "JID_BAD_ESCAPE"


def test_noncanonical_escapes_are_detected() -> None:
    assert is_canonical_localpart("d\\27artagnan")
    assert is_canonical_localpart("foo\\bar")
    assert not is_canonical_localpart("foo\\5cbar")  # unescapes to foo\bar, a JID of its own
    assert not is_canonical_localpart("\\20x")


_PLAIN = (
    st.lists(
        st.one_of(
            st.sampled_from([*" \"&'/:<>@\\", "\\20", "\\5c", "\\27", "\\2f", "20", "5c"]),
            st.characters(blacklist_categories=("Cs",)),
        ),
        min_size=1,
        max_size=20,
    )
    .map("".join)
    .filter(lambda s: not s.startswith(" ") and not s.endswith(" "))
)


@given(_PLAIN)
def test_unescape_inverts_escape(plain: str) -> None:
    escaped = escape_localpart(plain)
    assert unescape_localpart(escaped) == plain
    assert is_canonical_localpart(escaped)
    assert not any(c in escaped for c in " \"&'/:<>@")


@given(_PLAIN)
def test_escape_is_idempotent_on_its_unescaping(plain: str) -> None:
    escaped = escape_localpart(plain)
    assert escape_localpart(unescape_localpart(escaped)) == escaped


# --- conversion between schemes --------------------------------------------------------------


def test_sip_uri_becomes_escaped_jid_and_back() -> None:
    # XEP-0106 §5.3: the sip: URI example
    sip = Address.parse("sip:here%27s_a_wild_%26_%2Fcr%25zy%2F_address@example.com")
    jid = sip.with_scheme("xmpp")
    assert jid.jid == "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address@example.com"
    assert jid.with_scheme("sip") == sip
    # RFC 7247 §6.4: only what sip: reserves is percent-encoded
    assert str(jid.with_scheme("sip")) == "sip:here's_a_wild_&_/cr%25zy/_address@example.com"


def test_resource_maps_to_gruu_and_back() -> None:
    # RFC 7247 §6.3: sip:foo@sip.example;gr=bar <-> foo@sip.example/bar
    full = Address.parse("foo@sip.example/bar")
    sip = full.with_scheme("sip")
    assert str(sip) == "sip:foo@sip.example;gr=bar"
    assert sip.gruu == "bar"
    assert sip.with_scheme("xmpp") == full
    assert full.sip_uri == "sip:foo@sip.example;gr=bar"


def test_device_part_cannot_go_into_im_or_pres() -> None:
    full = Address.parse("juliet@example.com/balcony")
    with pytest.raises(ParseError) as info:
        full.with_scheme("im")
    assert info.value.code == "ADDRESS_NOT_REPRESENTABLE"
    assert "bare" in info.value.hint
    assert str(full.bare.with_scheme("pres")) == "pres:juliet@example.com"


def test_locators_are_dropped_by_with_scheme() -> None:
    sip = Address.parse("sip:bob@example.net:5070;transport=tcp?subject=x")
    assert str(sip.with_scheme("im")) == "im:bob@example.net"
    assert str(sip.with_scheme("sips")) == "sips:bob@example.net"
    assert sip.with_scheme("sip") is sip


def test_ambiguous_escaped_jid_is_not_mapped() -> None:
    with pytest.raises(ParseError) as info:
        Address.parse("foo\\5cbar@example.com").with_scheme("sip")
    assert info.value.code == "JID_AMBIGUOUS_ESCAPE"


def test_idn_domain_is_a_labels_in_uris_and_u_labels_in_jids() -> None:
    jid = Address.parse("juliet@ü.example")
    assert str(jid.with_scheme("im")) == "im:juliet@xn--tda.example"
    assert Address.parse("sip:juliet@xn--tda.example").jid == "juliet@ü.example"


def test_jid_property_escapes_uri_users() -> None:
    assert Address.parse("im:o%27neil@example.com").jid == "o\\27neil@example.com"
    assert Address.parse("sip:bob%40example.net@sip.example.com").jid == (
        "bob\\40example.net@sip.example.com"
    )
    assert Address.parse("juliet@example.com/balcony").bare_jid == "juliet@example.com"


def test_space_edged_user_cannot_become_a_jid() -> None:
    with pytest.raises(ParseError) as info:
        Address.parse("sip:%20bob@example.com").with_scheme("xmpp")
    assert info.value.code == "JID_BAD_ESCAPE"


# --- domain and matches ----------------------------------------------------------------------


def test_domain_is_the_lower_case_routing_key() -> None:
    assert Address.parse("sip:Bob@Example.COM.").domain == "example.com"
    assert Address.parse("xmpp:a@[::1]").domain == "[::1]"


@pytest.mark.parametrize(
    ("address", "pattern", "expected"),
    [
        ("sip:a@example.com", "*", True),
        ("sip:a@example.com", "example.com", True),
        ("sip:a@EXAMPLE.com", "Example.Com.", True),
        ("sip:a@example.com", "*.example.com", False),
        ("sip:a@sip.example.com", "*.example.com", True),
        ("a@x.y.example.com/r", "*.example.com", True),
        ("sip:a@badexample.com", "*.example.com", False),
        ("sip:a@example.com.evil", "example.com", False),
    ],
)
def test_matches_domain_globs(address: str, pattern: str, expected: bool) -> None:
    assert Address.parse(address).matches(pattern) is expected


@pytest.mark.parametrize("pattern", ["", "a*b.com", "*example.com", "*.*.com", "u@example.com"])
def test_malformed_pattern_is_refused(pattern: str) -> None:
    with pytest.raises(ParseError) as info:
        domain_matches("example.com", pattern)
    assert info.value.code == "ADDRESS_BAD_PATTERN"


# --- invalid input ---------------------------------------------------------------------------

INVALID = [
    ("", "ADDRESS_EMPTY", None),
    ("tel:+1-201-555-0123", "ADDRESS_BAD_SCHEME", 0),
    ("mailto:a@example.com", "ADDRESS_BAD_SCHEME", 0),
    ("<sip:bob@example.com>", "ADDRESS_BAD_SCHEME", 0),
    ("sip:", "ADDRESS_NO_HOST", 4),
    ("sip:bob@", "ADDRESS_NO_HOST", 8),
    ("im:bob@", "ADDRESS_NO_HOST", 7),
    ("im:", "ADDRESS_NO_HOST", 3),
    ("sip:@example.com", "ADDRESS_BAD_USER", 4),
    ("sip:bob%2@example.com", "ADDRESS_BAD_PERCENT", 7),
    ("sip:bob%zz@example.com", "ADDRESS_BAD_PERCENT", 7),
    ("sip:bob%FF@example.com", "ADDRESS_BAD_PERCENT", 4),
    ("sip:b b@example.com", "ADDRESS_BAD_CHAR", 5),
    ("sip:bö@example.com", "ADDRESS_BAD_CHAR", 5),
    ("sip:bob:secret@example.com", "ADDRESS_PASSWORD", 7),
    ("sip:bob@exa mple.com", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@example.123", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@ü.example", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@999.1.1.1", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@[::1", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@[zz::1]", "ADDRESS_BAD_HOST", 8),
    ("sip:bob@example.com:99999", "ADDRESS_BAD_PORT", 19),
    ("sip:bob@example.com:50a", "ADDRESS_BAD_PORT", 19),
    ("sip:bob@example.com;=x", "ADDRESS_BAD_PARAM", 19),
    ("sip:bob@example.com;x=", "ADDRESS_BAD_PARAM", 19),
    ("sip:bob@example.com?subject", "ADDRESS_BAD_HEADER", 20),
    ("im:bob@example.com:5222", "ADDRESS_BAD_PORT", 18),
    ("im:bob@example.com#frag", "ADDRESS_BAD_CHAR", 18),
    ("xmpp://guest@example.com/support@example.com", "ADDRESS_UNSUPPORTED", 5),
    ("xmpp:juliet@example.com#x", "ADDRESS_UNSUPPORTED", 23),
    ("xmpp:juliet@example.com:5222", "ADDRESS_BAD_PORT", 23),
    ("xmpp:ju%20liet@example.com", "JID_BAD_LOCALPART", 5),
    ("xmpp:ju\\liet@example.com", "ADDRESS_BAD_CHAR", 7),
    ("@example.com", "JID_BAD_LOCALPART", 0),
    ("d'artagnan@example.com", "JID_BAD_LOCALPART", 1),
    ("juliet@example.com/", "JID_BAD_RESOURCE", 19),
    ("juliet@exa_mple.com", "JID_BAD_DOMAIN", 7),
    ("juliet@-x.com", "JID_BAD_DOMAIN", 7),
    ("juliet@", "JID_BAD_DOMAIN", 7),
    ("x" * 1024 + "@example.com", "JID_TOO_LONG", 0),
    ("juliet@example.com/" + "r" * 1024, "JID_TOO_LONG", 19),
    ("juliet@" + "a." * 511 + "com", "JID_TOO_LONG", 7),
]


@pytest.mark.parametrize(("text", "code", "offset"), INVALID)
def test_invalid_address_raises_with_code_offset_and_hint(
    text: str, code: str, offset: int | None
) -> None:
    with pytest.raises(ParseError) as info:
        Address.parse(text)
    assert info.value.code == code
    assert info.value.offset == offset
    assert info.value.hint
    assert isinstance(info.value, ValueError)


def test_construction_validates_so_str_always_parses_back() -> None:
    with pytest.raises(ParseError):
        Address("sip", "bob", "exa mple.com")
    with pytest.raises(ParseError):
        Address("im", "bob", "example.com", port=5060)
    with pytest.raises(ParseError):
        Address("xmpp", "d'artagnan", "example.com")
    with pytest.raises(ParseError):
        Address("sip", "bob", "example.com", resource="phone")
    with pytest.raises(ParseError):
        Address("gopher", "bob", "example.com")  # type: ignore[arg-type]


# --- the law: Address.parse(str(a)) == a, for every scheme -----------------------------------

_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_TOP = st.from_regex(r"[A-Za-z]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_HOSTNAME = st.builds(
    lambda labels, top, dot: ".".join([*labels, top]) + dot,
    st.lists(_LABEL, max_size=3),
    _TOP,
    st.sampled_from(["", "."]),
)
_IPV4 = st.ip_addresses(v=4).map(str)
_IPV6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
_URI_HOST = st.one_of(_HOSTNAME, _IPV4, _IPV6)
_PARAM = st.tuples(_ANY_TEXT, st.one_of(st.none(), _ANY_TEXT))
_HEADER = st.tuples(_ANY_TEXT, st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))

_SIP = st.builds(
    Address,
    st.sampled_from(["sip", "sips"]),
    st.one_of(st.none(), _ANY_TEXT),
    _URI_HOST,
    st.one_of(st.none(), st.integers(0, 65535)),
    st.none(),
    st.lists(_PARAM, max_size=3).map(tuple),
    st.lists(_HEADER, max_size=3).map(tuple),
)
_IM = st.builds(
    lambda scheme, user, host, headers: Address(scheme, user, host, headers=headers),
    st.sampled_from(["im", "pres"]),
    st.one_of(st.none(), _ANY_TEXT),
    _URI_HOST,
    st.lists(_HEADER, max_size=2).map(tuple),
)
_JID_LOCAL_CHAR = st.one_of(
    st.sampled_from([c for c in map(chr, range(0x21, 0x7F)) if c not in "\"&'/:<>@"]),
    st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd", "Mn"), min_codepoint=0x80),
)
_JID_LOCAL = st.text(_JID_LOCAL_CHAR, min_size=1, max_size=12)
_JID_LABEL = st.from_regex(
    r"[a-zA-Z0-9äöüéñ]([a-zA-Z0-9äöüéñ-]{0,8}[a-zA-Z0-9äöüéñ])?", fullmatch=True
)
_JID_DOMAIN = st.one_of(st.lists(_JID_LABEL, min_size=1, max_size=3).map(".".join), _IPV4, _IPV6)
_RESOURCE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Zl", "Zp")), min_size=1, max_size=12
)
_QUERY = st.one_of(
    st.just(()),
    st.builds(
        lambda t, pairs: ((t, None), *pairs),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
        st.lists(
            st.tuples(_ANY_TEXT, st.text(st.characters(blacklist_categories=("Cs",)))), max_size=2
        ),
    ),
)
_XMPP = st.builds(
    lambda user, host, resource, query: Address(
        "xmpp", user, host, resource=resource, params=query
    ),
    st.one_of(st.none(), _JID_LOCAL),
    _JID_DOMAIN,
    st.one_of(st.none(), _RESOURCE),
    _QUERY,
)
ADDRESSES = st.one_of(_SIP, _IM, _XMPP)


@given(ADDRESSES)
def test_parse_of_str_gives_back_the_address(address: Address) -> None:
    text = str(address)
    parsed = Address.parse(text)
    assert parsed == address
    assert str(parsed) == text  # the printed form is canonical: it prints itself again


@given(st.one_of(_XMPP.map(lambda a: Address("xmpp", a.user, a.host, resource=a.resource))))
def test_jid_text_parses_back_to_the_address(address: Address) -> None:
    assert Address.parse(address.jid) == address
    assert Address.from_jid(address.jid) == address


_FRIENDLY_USER = st.text(
    st.one_of(
        st.sampled_from([chr(c) for c in range(0x20, 0x7F)]),
        st.sampled_from(list("éüñøßЖ中")),
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s[0] != " " and s[-1] != " ")
_ASCII_LABEL_HOST = st.one_of(_HOSTNAME.filter(lambda h: not h.endswith(".")), _IPV4, _IPV6)


@given(
    st.sampled_from(["im", "pres", "sip", "sips"]),
    _FRIENDLY_USER,
    _ASCII_LABEL_HOST,
    st.sampled_from(["im", "pres", "sip", "sips", "xmpp"]),
)
def test_with_scheme_there_and_back_from_uri_schemes(
    scheme: str, user: str, host: str, target: str
) -> None:
    address = Address(scheme, user, host)  # type: ignore[arg-type]
    there = address.with_scheme(target)  # type: ignore[arg-type]
    assert there.with_scheme(address.scheme) == address


@given(
    _JID_LOCAL.filter(is_canonical_localpart),
    st.lists(_LABEL, min_size=1, max_size=2).map(lambda ls: ".".join([*ls, "example"])),
    st.one_of(st.none(), _RESOURCE),
    st.sampled_from(["im", "pres", "sip", "sips"]),
)
def test_with_scheme_there_and_back_from_xmpp(
    local: str, domain: str, resource: str | None, target: str
) -> None:
    address = Address("xmpp", local, domain, resource=resource)
    if resource is not None and target in ("im", "pres"):
        address = address.bare
    there = address.with_scheme(target)  # type: ignore[arg-type]
    assert there.with_scheme("xmpp") == address


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        address = Address.parse(text)
    except ParseError as err:
        code = err.code
    else:
        assert Address.parse(str(address)) == address
        return
    assert code.startswith(("ADDRESS_", "JID_"))


@given(ADDRESSES, st.integers(0, 60), st.characters())
def test_mutated_addresses_parse_or_raise_parse_error(address: Address, at: int, ch: str) -> None:
    text = str(address)
    mutated = text[:at] + ch + text[at + 1 :]
    try:
        parsed = Address.parse(mutated)
    except ParseError:
        return
    assert Address.parse(str(parsed)) == parsed
