"""The hard cases of research/standards.md §1.4 and §9, with small inputs written here
(several stand in for vectors kept back for independent checking; the vector each one
mirrors is named in the test's docstring)."""

from __future__ import annotations

import pytest

from canonical import cpim
from canonical.errors import ParseError
from canonical.policy import Policy

FROM = b"From: <im:ada@example.com>"
TO = b"To: <im:charles@example.net>"
ENTITY = b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello"


def obj(*headers: bytes, entity: bytes = ENTITY, mime: bytes = cpim.MIME_HEADER) -> bytes:
    """An entity-form object with these CPIM header lines."""
    return mime + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + entity


def strict_code(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, strict=True, **kwargs)  # type: ignore[arg-type]
    return caught.value.code


def lenient_codes(data: bytes, **kwargs: object) -> list[str]:
    msg = cpim.parse(data, **kwargs)  # type: ignore[arg-type]
    assert bytes(msg) == data
    return [d.code for d in msg.defects]


def only(msg: cpim.CpimMessage, local: str, namespace: str = cpim.CPIM_NS) -> cpim.Header:
    (header,) = msg.find(local, namespace)
    return header


# -- §9.1, 9.2, 9.18: values and the single SP -----------------------------------------


def test_value_may_begin_with_space_after_the_separator() -> None:
    """Vector 018: ``Subject:  x`` has the value `` x``."""
    msg = cpim.parse(obj(FROM, TO, b"Subject:  indented"), strict=True)
    assert only(msg, "Subject").value == " indented"
    assert msg.subject() == " indented"


def test_semicolon_after_the_space_is_value_text() -> None:
    """Vector 023."""
    msg = cpim.parse(obj(FROM, b"Subject: ;lang=de kein Parameter"), strict=True)
    subject = only(msg, "Subject")
    assert subject.params == ()
    assert subject.lang is None
    assert subject.value == ";lang=de kein Parameter"


def test_space_only_value_is_written_escaped() -> None:
    """Vector 018: an empty-looking value must be escaped (\\u0020); a raw trailing SP is
    TRAILING_WHITESPACE."""
    msg = cpim.parse(obj(FROM, b"Subject: \\u0020"), strict=True)
    assert only(msg, "Subject").value == " "
    assert strict_code(obj(FROM, b"Subject: ")) == "TRAILING_WHITESPACE"
    assert "TRAILING_WHITESPACE" in lenient_codes(obj(FROM, b"Subject: x "))


def test_empty_value_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="empty header value"):
        cpim.encode_value("")


# -- §9.3 quoted Formal-name ------------------------------------------------------------


def test_quoted_formal_name_directly_before_angle_is_valid() -> None:
    """Vector 010: the String form of Formal-name, escapes decoded."""
    data = obj(b'From: "Lovelace, Ada \\"A.L.\\" (Countess)"<im:ada@example.com>', TO)
    msg = cpim.parse(data, strict=True)
    assert msg.sender == cpim.Party('Lovelace, Ada "A.L." (Countess)', "im:ada@example.com")


def test_quoted_formal_name_followed_by_space_is_strictly_invalid() -> None:
    """Vector i024: common in the wild, accepted leniently with a defect."""
    data = obj(b'From: "Ada Lovelace" <im:ada@example.com>', TO)
    assert strict_code(data) == "SP_AFTER_STRING_NAME"
    assert lenient_codes(data) == ["SP_AFTER_STRING_NAME"]
    assert cpim.parse(data).sender == cpim.Party("Ada Lovelace", "im:ada@example.com")


def test_token_formal_name_keeps_dots_and_non_ascii() -> None:
    msg = cpim.parse(obj("From: Åsa O'Neil Jr. <im:asa@example.com>".encode(), TO), strict=True)
    assert msg.sender == cpim.Party("Åsa O'Neil Jr.", "im:asa@example.com")


def test_formal_name_with_separators_must_be_quoted() -> None:
    data = obj(b"From: Lovelace, Ada <im:ada@example.com>", TO)
    assert strict_code(data) == "BAD_FORMAL_NAME"
    assert cpim.parse(data).sender == cpim.Party("Lovelace, Ada", "im:ada@example.com")


def test_from_takes_no_parameters() -> None:
    """Vector i033: the generic Header rule would allow them, From's own syntax does not."""
    data = obj(b"From:;lang=en <im:ada@example.com>", TO)
    assert strict_code(data) == "PARAMS_NOT_ALLOWED"
    assert lenient_codes(data) == ["PARAMS_NOT_ALLOWED"]
    assert cpim.parse(data).sender == cpim.Party(None, "im:ada@example.com")


def test_relative_uri_in_from_is_rejected() -> None:
    assert strict_code(obj(b"From: <ada@example.com>", TO)) == "BAD_FORMAL_NAME"


# -- §9.4-9.7 namespaces ------------------------------------------------------------------


def test_ns_with_and_without_space_before_angle() -> None:
    """Vectors 004 and 034 (the documented strict-mode exception)."""
    data = obj(
        FROM, b"NS: Spaced <urn:example:spaced>", b"NS: Tight<urn:example:tight>", b"Tight.X: 1"
    )
    msg = cpim.parse(data, strict=True)
    assert msg.namespaces == {
        None: cpim.CPIM_NS,
        "Spaced": "urn:example:spaced",
        "Tight": "urn:example:tight",
    }
    assert only(msg, "X", "urn:example:tight").name == "Tight.X"


def test_default_namespace_redeclared_hides_the_core_headers() -> None:
    """Vector 005: after ``NS: <uri>`` a plain ``From:`` or ``NS:`` is no core header."""
    data = obj(
        FROM,
        b"NS: <urn:example:widgets>",
        b"From: <im:mallory@example.org>",
        b"NS: gadget <urn:example:gadgets>",
        b"Subject: widget subject",
    )
    msg = cpim.parse(data, strict=True)
    assert msg.sender == cpim.Party(None, "im:ada@example.com")
    assert msg.subjects == ()
    assert [h.namespace for h in msg.headers[2:]] == ["urn:example:widgets"] * 3
    assert "gadget" not in msg.namespaces
    assert msg.namespaces[None] == "urn:example:widgets"


def test_two_prefixes_for_one_uri_name_the_same_header() -> None:
    """Vector 006."""
    data = obj(FROM, b"NS: a <urn:example:x>", b"NS: b <urn:example:x>", b"a.Tag: 1", b"b.Tag: 2")
    msg = cpim.parse(data, strict=True)
    assert [h.value for h in msg.find("Tag", "urn:example:x")] == ["1", "2"]


def test_prefix_rebound_later_applies_to_later_headers_only() -> None:
    data = obj(
        FROM, b"NS: p <urn:example:one>", b"p.Tag: 1", b"NS: p <urn:example:two>", b"p.Tag: 2"
    )
    msg = cpim.parse(data, strict=True)
    assert [h.namespace for h in msg.headers if h.local == "Tag"] == [
        "urn:example:one",
        "urn:example:two",
    ]
    assert msg.namespaces["p"] == "urn:example:two"


def test_prefix_used_before_its_declaration_is_undefined() -> None:
    """Vector i016."""
    data = obj(FROM, b"Late.Tag: 1", b"NS: Late <urn:example:late>")
    assert strict_code(data) == "UNDEFINED_PREFIX"
    msg = cpim.parse(data)
    assert [d.code for d in msg.defects] == ["UNDEFINED_PREFIX"]
    assert msg.headers[1].namespace is None
    assert msg.find("Tag", "urn:example:late") == ()


def test_core_namespace_bound_to_a_prefix() -> None:
    data = obj(b"NS: core <urn:ietf:params:cpim-headers:>", b"core.From: <im:ada@example.com>")
    assert cpim.parse(data, strict=True).sender == cpim.Party(None, "im:ada@example.com")


@pytest.mark.parametrize(
    "value",
    [b"NS: X <relative/path>", b"NS: X <urn:example:x#frag>", b"NS: X urn:example:x", b"NS: "],
)
def test_ns_needs_an_absolute_uri_without_fragment(value: bytes) -> None:
    """Vector i028."""
    data = obj(FROM, value)
    code = strict_code(data)
    assert code in {"BAD_NS_URI", "TRAILING_WHITESPACE"}
    assert code in lenient_codes(data)


# -- §9.8 Require ------------------------------------------------------------------------


def test_require_names_resolve_at_their_line() -> None:
    data = obj(FROM, b"NS: F <urn:example:f>", b"Require: F.Ack,Subject,Render-Math", b"F.Ack: yes")
    msg = cpim.parse(data, strict=True)
    assert msg.requirements == (
        cpim.Requirement("F.Ack", "urn:example:f", "Ack"),
        cpim.Requirement("Subject", cpim.CPIM_NS, "Subject"),
        cpim.Requirement("Render-Math", cpim.CPIM_NS, "Render-Math"),
    )


def test_require_with_undeclared_prefix_is_rejected() -> None:
    data = obj(FROM, b"Require: Nope.Thing")
    assert strict_code(data) == "UNDEFINED_PREFIX"
    assert cpim.parse(data).requirements == (cpim.Requirement("Nope.Thing", None, "Thing"),)


def test_require_with_spaces_is_strict_only() -> None:
    data = obj(FROM, b"NS: F <urn:example:f>", b"Require: F.One , F.Two")
    assert strict_code(data) == "REQUIRE_SPACE"
    assert cpim.parse(data).require == ("F.One", "F.Two")


# -- §9.9 case-sensitive names -----------------------------------------------------------


def test_case_variants_of_core_names_are_other_headers() -> None:
    """Vector 028: ``from:`` must never be read as the sender."""
    data = obj(b"from: <im:impostor@example.org>", b"SUBJECT: not it", b"Datetime: x", TO)
    msg = cpim.parse(data, strict=True)
    assert msg.sender is None
    assert msg.subjects == ()
    assert msg.datetime is None
    assert [h.local for h in msg.headers] == ["from", "SUBJECT", "Datetime", "To"]


# -- §9.10, 9.11 escapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("a\\tb\\nc\\\\d", "a\tb\nc\\d"),
        ("\\u007F\\u007f\\u0041", "\x7f\x7fA"),
        ("say \\\"hi\\\" and \\'so\\'", "say \"hi\" and 'so'"),
        ("\\b\\r", "\b\r"),
        ("smile \\uD83D\\uDE00", "smile \U0001f600"),
        ("lone \\uD83D here", "lone \ufffd here"),
        ("\\q", "q"),
        ("trailing\\", "trailing"),
        ("\\u12", "u12"),
    ],
)
def test_escapes_decode_as_receivers_should(raw: str, decoded: str) -> None:
    """RFC 3862 §2.3.1; vectors 009, i013, i014."""
    assert cpim.decode_escapes(raw) == decoded


def test_undefined_escape_in_a_value_is_a_defect_decoded_leniently() -> None:
    data = obj(FROM, b"Subject: C:\\temp\\quux")
    assert strict_code(data) == "UNESCAPED_BACKSLASH"
    msg = cpim.parse(data)
    assert [d.code for d in msg.defects] == ["UNESCAPED_BACKSLASH"]
    assert only(msg, "Subject").value == "C:\temp" + "quux"


def test_escaped_backslash_before_a_letter_is_fine() -> None:
    msg = cpim.parse(obj(FROM, b"Subject: C:\\\\quux"), strict=True)
    assert only(msg, "Subject").value == "C:\\quux"


def test_lone_trailing_backslash_is_reported_and_dropped() -> None:
    data = obj(FROM, b"Subject: end\\")
    assert strict_code(data) == "UNESCAPED_BACKSLASH"
    assert only(cpim.parse(data), "Subject").value == "end"


def test_undefined_escape_in_a_parameter_string() -> None:
    """Vector i013: Strings are strict about escapes."""
    data = obj(FROM, b"NS: F <urn:example:f>", b'F.Label:;note="bad \\q" x')
    assert strict_code(data) == "BAD_ESCAPE_IN_STRING"
    assert only(cpim.parse(data), "Label", "urn:example:f").params == (("note", "bad q"),)


# -- §9.12-9.14 controls, UTF-8, line ends ------------------------------------------------


@pytest.mark.parametrize("char", [b"\t", b"\x07", b"\x7f", b"\x00", b"\x1b"])
def test_raw_control_character_in_a_value(char: bytes) -> None:
    """Vectors i010, i011."""
    data = obj(FROM, b"Subject: a" + char + b"b")
    assert strict_code(data) == "CTL_IN_HEADER"
    assert lenient_codes(data) == ["CTL_IN_HEADER"]


def test_raw_cr_inside_a_header_line_is_a_bare_cr() -> None:
    """Vector i031."""
    data = obj(FROM, b"Subject: a\rb")
    assert strict_code(data) == "BARE_CR"
    with pytest.raises(ParseError, match="BARE_CR"):
        cpim.parse(data)


def test_bare_lf_in_one_line_is_fatal_with_its_line() -> None:
    """Vector i002."""
    data = obj(FROM, TO + b"\nSubject: x")
    with pytest.raises(ParseError) as caught:
        cpim.parse(data)
    assert caught.value.code == "BARE_LF"
    assert caught.value.line == 4
    assert caught.value.offset == data.index(b"\nSubject")


@pytest.mark.parametrize("char", ["\u0085", "\u2028", "\u2029", "\u00a0"])
def test_unicode_line_separators_are_legal_raw(char: str) -> None:
    """Vector 033: they are UCS-high, not CTL; nothing splits on them."""
    data = obj(FROM, f"Subject: one{char}two".encode())
    msg = cpim.parse(data, strict=True)
    assert only(msg, "Subject").value == f"one{char}two"
    assert len(msg.headers) == 2


@pytest.mark.parametrize(
    "bad",
    [b"\xc3\x28", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"],
)
def test_malformed_utf8_in_headers_is_fatal(bad: bytes) -> None:
    """Vector i019; overlong forms, encoded surrogates and 5-byte forms (RFC 3629)."""
    data = obj(FROM, b"Subject: caf" + bad + b"!")
    for strict in (True, False):
        with pytest.raises(ParseError) as caught:
            cpim.parse(data, strict=strict)
        assert caught.value.code == "BAD_UTF8"
        assert caught.value.offset == data.index(bad)


def test_crlf_in_the_body_is_content() -> None:
    body = b"line 1\r\n\r\nFrom: <im:fake@example.org>\r\n\r\nContent-type: Message/CPIM\r\n"
    msg = cpim.parse(obj(FROM, entity=b"Content-Type: text/plain\r\n\r\n" + body), strict=True)
    assert msg.body == body
    assert msg.sender == cpim.Party(None, "im:ada@example.com")


# -- §9.15-9.17 structure -----------------------------------------------------------------


def test_empty_cpim_header_block() -> None:
    """Vector 027, and the same in body form."""
    data = obj()
    msg = cpim.parse(data, strict=True)
    assert msg.headers == ()
    assert cpim.parse_body(msg.to_body(), strict=True).body == b"hello"
    assert strict_code(data, profile="msrp") == "PROFILE_MISSING"


def test_mime_header_names_are_case_insensitive_and_kept_as_written() -> None:
    data = (
        b"CONTENT-TYPE: message/cpim; x=1\r\n\r\n"
        + FROM
        + b"\r\n\r\ncontent-TYPE: text/plain\r\n\r\nx"
    )
    msg = cpim.parse(data, strict=True)
    assert msg.mime_headers == (("CONTENT-TYPE", " message/cpim; x=1"),)
    assert msg.entity_headers == (("content-TYPE", " text/plain"),)
    assert msg.content_type == "text/plain"
    assert bytes(msg) == data


def test_folded_mime_header_in_the_entity_is_kept() -> None:
    """Vector 018: folding is MIME's business inside the entity."""
    entity = b"Content-Type: text/plain;\r\n charset=utf-8\r\nContent-ID: <a@b>\r\n\r\nx"
    msg = cpim.parse(obj(FROM, entity=entity), strict=True)
    assert msg.entity_headers == (
        ("Content-Type", " text/plain;\r\n charset=utf-8"),
        ("Content-ID", " <a@b>"),
    )
    assert msg.content_type == "text/plain; charset=utf-8"


def test_folded_cpim_header_is_read_as_a_continuation_leniently() -> None:
    """Vector i008."""
    data = obj(FROM, b"Subject: first part", b" second part", TO)
    assert strict_code(data) == "LEADING_WHITESPACE"
    msg = cpim.parse(data)
    assert [d.code for d in msg.defects] == ["LEADING_WHITESPACE"]
    subject = only(msg, "Subject")
    assert subject.value_raw == "first part\r\n second part"
    assert subject.raw == b"Subject: first part\r\n second part\r\n"
    assert msg.to == (cpim.Party(None, "im:charles@example.net"),)


def test_first_line_starting_with_whitespace_is_never_a_core_header() -> None:
    data = obj(b" From: <im:mallory@example.org>", TO)
    assert strict_code(data) == "LEADING_WHITESPACE"
    msg = cpim.parse(data)
    assert msg.sender is None
    assert "LEADING_WHITESPACE" in [d.code for d in msg.defects]


def test_entity_without_headers_or_without_the_entity() -> None:
    assert strict_code(obj(FROM, entity=b"\r\nbody")) == "ENTITY_NO_CONTENT_TYPE"
    with pytest.raises(ParseError, match="ENTITY_NO_CONTENT_TYPE"):
        cpim.parse(cpim.MIME_HEADER + b"\r\n" + FROM + b"\r\n\r\n")


def test_outer_block_must_say_message_cpim() -> None:
    assert strict_code(b"\r\n" + FROM + b"\r\n\r\n" + ENTITY) == "NOT_MESSAGE_CPIM"
    assert strict_code(b"X-Other: 1\r\n\r\n" + FROM + b"\r\n\r\n" + ENTITY) == "NOT_MESSAGE_CPIM"


def test_body_without_blank_line_anywhere() -> None:
    with pytest.raises(ParseError) as caught:
        cpim.parse_body(FROM + b"\r\n" + TO + b"\r\n")
    assert caught.value.code == "NO_BLANK_LINE"


# -- §9.20 names and separators ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"Reply/To: x", "BAD_HEADER_NAME"),
        (b"Two Words: x", "BAD_HEADER_NAME"),
        (b"a.b.c: x", "BAD_HEADER_NAME"),
        (b".x: y", "BAD_HEADER_NAME"),
        (b"Subject : x", "SPACE_BEFORE_COLON"),
        (b"Subject:x", "NO_SP_AFTER_COLON"),
        (b"Subject:", "NO_SP_AFTER_COLON"),
        (b"Subject:;lang=en", "NO_SP_AFTER_COLON"),
        (b"Subject:;lang x", "BAD_PARAMETER"),
        (b'Subject:;lang="unterminated x', "BAD_PARAMETER"),
        (b"Subject:;lang=en;x=1 y", "PARAMS_NOT_ALLOWED"),
    ],
)
def test_malformed_header_lines(line: bytes, code: str) -> None:
    """Vectors i005-i007, i017, i018, i030 and parameter faults."""
    data = obj(FROM, line)
    assert strict_code(data) == code
    assert code in lenient_codes(data)


@pytest.mark.parametrize(
    ("line", "code"), [(b"Subject hi", "NO_COLON"), (b": orphan", "EMPTY_NAME")]
)
def test_lines_that_are_not_headers_are_fatal(line: bytes, code: str) -> None:
    for strict in (True, False):
        with pytest.raises(ParseError) as caught:
            cpim.parse(obj(FROM, line), strict=strict)
        assert caught.value.code == code


# -- §9.21 DateTime ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2016-12-31T23:59:60Z",
        "2016-12-31T18:59:60-05:00",
        "2024-02-29T08:15:30.123456789-00:00",
        "2000-02-29T00:00:00+14:00",
        "1999-01-01T00:00:00.5Z",
    ],
)
def test_valid_datetimes(text: str) -> None:
    """Vectors 025, 026."""
    msg = cpim.parse(obj(FROM, f"DateTime: {text}".encode()), strict=True)
    assert msg.datetime is not None
    assert msg.datetime.text == text


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T12:60:00Z",
        "2024-01-01T12:00:60Z",
        "2024-01-01T12:00:00+24:00",
        "2024-01-01 12:00:00Z",
        "2024-01-01T12:00:00",
        "2024-01-01T12:00:00.Z",
        "Tue, 05 Mar 2024 09:30:12 -0500",
    ],
)
def test_invalid_datetimes(text: str) -> None:
    """Vector i026 and RFC 3339 §5.6/5.7 ranges."""
    data = obj(FROM, f"DateTime: {text}".encode())
    assert strict_code(data) == "BAD_DATETIME"
    assert cpim.parse(data).datetime is None


def test_lower_case_t_and_z_are_accepted_with_a_warning_in_both_modes() -> None:
    data = obj(FROM, b"DateTime: 2024-03-05t09:30:12z")
    for strict in (True, False):
        msg = cpim.parse(data, strict=strict)
        assert [d.code for d in msg.defects] == ["DATETIME_LOWERCASE"]
        assert msg.datetime is not None
    assert "DATETIME_LOWERCASE" in cpim.WARNING_CODES


def test_leap_second_timestamp_counts_as_the_end_of_the_minute() -> None:
    value = cpim.parse_datetime("2016-12-31T23:59:60Z")
    assert value is not None
    assert value.second == 60
    before = cpim.parse_datetime("2016-12-31T23:59:59Z")
    assert before is not None
    assert value.timestamp() == pytest.approx(before.timestamp() + 0.999999)


def test_unknown_offset_is_utc_with_no_offset() -> None:
    value = cpim.parse_datetime("2024-03-05T09:30:12-00:00")
    zulu = cpim.parse_datetime("2024-03-05T09:30:12Z")
    assert value is not None
    assert zulu is not None
    assert value.offset_minutes is None
    assert zulu.offset_minutes == 0
    assert value.timestamp() == zulu.timestamp()


# -- §9.22 language tags -------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag", ["en", "zh-Hant", "x-piglatin", "i-default", "sgn-BE-fr", "de-1996"]
)
def test_valid_language_tags(tag: str) -> None:
    msg = cpim.parse(obj(FROM, f"Subject:;lang={tag} text".encode()), strict=True)
    assert msg.subjects == (cpim.Subject(tag, "text"),)


@pytest.mark.parametrize("tag", ["en_US", "toolongtag", "en-", "1en"])
def test_invalid_language_tags(tag: str) -> None:
    """Vector i029."""
    data = obj(FROM, f"Subject:;lang={tag} text".encode())
    assert strict_code(data) == "BAD_LANG_TAG"


def test_lang_on_an_extension_header_is_checked_too() -> None:
    data = obj(FROM, b"NS: F <urn:example:f>", b"F.Note:;lang=en_GB x")
    assert strict_code(data) == "BAD_LANG_TAG"


# -- §9.23 URIs ---------------------------------------------------------------------------


def test_uris_with_params_headers_and_escapes() -> None:
    """Vector 032."""
    data = obj(
        b"From: <sips:ada@example.com;transport=tls?subject=a%20b>",
        b"To: <im:o%27malley@example.net>",
        b"cc: <tel:+1-201-555-0123>",
    )
    msg = cpim.parse(data, strict=True)
    assert msg.sender == cpim.Party(None, "sips:ada@example.com;transport=tls?subject=a%20b")
    assert msg.cc == (cpim.Party(None, "tel:+1-201-555-0123"),)


# -- §9.24 profile ------------------------------------------------------------------------


def test_msrp_profile_repeats_and_presence() -> None:
    """Vectors i027, i032."""
    twice = obj(FROM, TO, b"Subject: a", b"Subject: b")
    assert strict_code(twice, profile="msrp") == "PROFILE_REPEAT"
    assert cpim.parse(twice, strict=True).subject() == "a"
    many = obj(FROM, TO, TO, b"cc: <im:x@example.org>", b"cc: <im:y@example.org>")
    assert bytes(cpim.parse(many, strict=True, profile="msrp")) == many
    assert strict_code(obj(TO), profile="msrp") == "PROFILE_MISSING"
    assert lenient_codes(obj(TO), profile="msrp") == ["PROFILE_MISSING"]


# -- §9.25-9.27 bodies --------------------------------------------------------------------


def test_binary_body_passes_untouched() -> None:
    """Vectors 013, 014."""
    body = bytes(range(256)) + b"\r\n\r\n\n\r\x1a"
    msg = cpim.parse(obj(FROM, entity=b"Content-Type: application/octet-stream\r\n\r\n" + body))
    assert msg.body == body


def test_nested_message_cpim_is_not_recursed_into() -> None:
    """Vector 029: the inner object is the body, as bytes."""
    inner = obj(b"From: <im:inner@example.com>")
    outer = obj(
        b"From: <im:gateway@example.net>", entity=b"Content-Type: message/cpim\r\n\r\n" + inner
    )
    msg = cpim.parse(outer, strict=True)
    assert msg.sender == cpim.Party(None, "im:gateway@example.net")
    assert msg.body == inner
    assert cpim.parse(msg.body).sender == cpim.Party(None, "im:inner@example.com")


# -- §9.30 IMDN --------------------------------------------------------------------------


def test_imdn_dispositions_tolerate_spaces_and_unknown_tokens() -> None:
    data = obj(
        FROM,
        b"NS: imdn <urn:ietf:params:imdn>",
        b"imdn.Disposition-Notification: positive-delivery ,  Display,future-thing",
    )
    msg = cpim.parse(data, strict=True)
    assert msg.dispositions == ("positive-delivery", "display", "future-thing")


# -- policy limits ------------------------------------------------------------------------


def test_line_length_policy_applies_to_every_block_and_mode() -> None:
    policy = Policy(max_line_length=40)
    long_value = b"x" * 50
    cases = [
        obj(FROM, b"Subject: " + long_value),
        obj(FROM, entity=b"Content-Type: text/plain; a=" + long_value + b"\r\n\r\nx"),
        obj(FROM, mime=b"Content-type: Message/CPIM; a=" + long_value + b"\r\n"),
    ]
    for data in cases:
        for strict in (True, False):
            with pytest.raises(ParseError) as caught:
                cpim.parse(data, policy=policy, strict=strict)
            assert caught.value.code == "POLICY_LINE_TOO_LONG"
            assert caught.value.reason.value == "bad-request"
    long_line = obj(FROM, b"Subject: " + b"y" * 6000)  # vector 031: long but within policy
    assert len(cpim.parse(long_line, strict=True).headers[1].value) == 6000


def test_message_size_and_header_count_policies() -> None:
    data = obj(FROM, TO, b"Subject: a", b"Subject: b")
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, policy=Policy(max_message_size=len(data) - 1))
    assert caught.value.code == "POLICY_MESSAGE_TOO_LARGE"
    assert bytes(cpim.parse(data, policy=Policy(max_message_size=len(data)))) == data
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, policy=Policy(max_headers=3))
    assert caught.value.code == "POLICY_TOO_MANY_HEADERS"
    assert len(cpim.parse(data, policy=Policy(max_headers=4)).headers) == 4


def test_policy_keywords_override_the_policy() -> None:
    data = obj(FROM, b"Subject:x")
    assert lenient_codes(data) == ["NO_SP_AFTER_COLON"]
    with pytest.raises(ParseError):
        cpim.parse(data, policy=Policy(strict=True))
    assert cpim.parse(data, policy=Policy(strict=True), strict=False).defects
    assert cpim.parse(data, policy=Policy(strict=True), strict=False).policy.strict is False
