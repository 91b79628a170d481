"""The canonical.cpim API beyond parsing: forms, edits, build, views, immutability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from canonical import cpim, vectorset
from canonical.errors import ParseError


def message(name: str) -> cpim.CpimMessage:
    return cpim.parse(vectorset.vector(name).read_bytes(), strict=True)


# -- forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", vectorset.valid_vectors(), ids=lambda v: v.name)
def test_body_and_entity_forms_convert_both_ways(vector: vectorset.Vector) -> None:
    data = vector.read_bytes()
    entity = cpim.parse(data)
    body = cpim.parse_body(entity.to_body())
    assert body.form == "body"
    assert body.to_body() == entity.to_body()
    assert body.to_entity() == data  # the vectors use exactly cpim.MIME_HEADER
    assert entity.to_entity() == data
    assert [h.name for h in body.headers] == [h.name for h in entity.headers]
    assert body.body == entity.body


def test_to_entity_with_another_mime_header() -> None:
    body = message("001").to_body()
    msg = cpim.parse_body(body)
    custom = b"Content-Type: message/cpim\r\nContent-ID: <x@example.com>\r\n"
    entity = cpim.parse(msg.to_entity(custom), strict=True)
    assert entity.mime_headers == (
        ("Content-Type", " message/cpim"),
        ("Content-ID", " <x@example.com>"),
    )
    assert entity.to_body() == body
    with pytest.raises(ValueError, match="CRLF"):
        msg.to_entity(b"Content-Type: message/cpim")


def test_parse_accepts_bytearray_and_memoryview_but_not_str() -> None:
    data = vectorset.vector("001").read_bytes()
    assert cpim.parse(bytearray(data)) == cpim.parse(data)
    assert cpim.parse(memoryview(data)) == cpim.parse(data)
    with pytest.raises(TypeError, match="bytes"):
        cpim.parse(data.decode())  # type: ignore[arg-type]


# -- equality and immutability --------------------------------------------------------------


def test_messages_are_equal_by_bytes_and_form() -> None:
    data = vectorset.vector("002").read_bytes()
    assert cpim.parse(data) == cpim.parse(data, strict=True)
    assert hash(cpim.parse(data)) == hash(cpim.parse(data, strict=True))
    assert cpim.parse(data) != cpim.parse(vectorset.vector("001").read_bytes())
    body = cpim.parse(data).to_body()
    assert cpim.parse_body(body) != cpim.parse(data)
    assert cpim.parse(data) != data


def test_messages_and_headers_cannot_be_changed() -> None:
    msg = message("002")
    with pytest.raises(AttributeError):
        msg.raw = b"x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        msg.headers[0].value = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        msg.sender.uri = "im:x"  # type: ignore[misc,union-attr]
    assert isinstance(msg.headers, tuple)
    msg.namespaces["x"] = "urn:example:changed"
    assert "x" not in msg.namespaces


def test_header_equality_and_repr() -> None:
    first = message("019").headers
    again = message("019").headers
    assert first == again
    assert first[0] != first[1]
    assert "From" in repr(first[0])
    assert len({*first, *again}) == len(first)
    assert "entity form" in repr(message("019"))


# -- views ---------------------------------------------------------------------------------


def test_subject_picks_the_best_language() -> None:
    msg = message("011")
    assert msg.subject() == "Dinner at eight"
    assert msg.subject("fr") == "Dîner à huit heures"
    assert msg.subject("FR") == "Dîner à huit heures"
    assert msg.subject("zh-Hant") == "八點晚餐"
    assert msg.subject("zh-TW") == "八點晚餐"  # same primary subtag
    assert msg.subject("ja-JP") == "八時に夕食"
    assert msg.subject("es") == "Dinner at eight"  # falls back to the untagged one
    assert message("001").subject() is None
    only_tagged = cpim.parse_body(
        b"Subject:;lang=fr bonjour\r\n\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert only_tagged.subject("de") == "bonjour"


def test_find_resolves_namespaces_not_spelling() -> None:
    msg = message("005")
    assert [h.value for h in msg.find("Subject")] == ["the real CPIM Subject"]
    widgets = msg.find("Subject", "http://ns.example.org/widgets/")
    assert [h.name for h in widgets] == ["Subject"]
    assert msg.find("Nothing") == ()


def test_header_exposes_its_parts() -> None:
    header = message("024").find("Label", "http://ns.example.org/feat/")[0]
    assert header.prefix == "Feat"
    assert header.params_raw == ';level=3;name="Top \\"secret\\" \\\\ v2";ttl=60;lang=en-GB'
    assert header.lang == "en-GB"
    assert dict(header.params)["name"] == 'Top "secret" \\ v2'
    assert message("001").headers[0].lang is None


def test_body_and_offsets() -> None:
    msg = message("021")
    assert msg.body == b""
    assert msg.body_offset == len(msg.raw)
    assert msg.headers_offset == len(cpim.MIME_HEADER) + 2


# -- lenient defects are computed on demand, once ----------------------------------------


def test_lenient_defects_are_stable_and_sorted() -> None:
    data = vectorset.vector("i009").read_bytes().replace(b"From: <", b"From:;x=1 <")
    msg = cpim.parse(data)
    first = msg.defects
    assert first is msg.defects
    assert [d.offset for d in first] == sorted(d.offset or 0 for d in first)
    assert {d.code for d in first} == {"PARAMS_NOT_ALLOWED", "TRAILING_WHITESPACE"}


# -- edits ---------------------------------------------------------------------------------


def test_with_header_appends_and_keeps_every_other_byte() -> None:
    msg = message("004")
    edited = msg.with_header("Acme.Note", "tab\there \\ end ", params=[("lang", "en")])
    line = b"Acme.Note:;lang=en tab\\there \\\\ end\\u0020\r\n"
    at = msg.headers[-1].offset + len(msg.headers[-1].raw)
    assert edited.raw == msg.raw[:at] + line + msg.raw[at:]
    added = edited.find("Note", "http://ns.example.org/acme-im/v1")[0]
    assert added.value == "tab\there \\ end "
    assert added.lang == "en"
    assert edited.policy == msg.policy


def test_with_header_at_an_index_and_in_an_empty_block() -> None:
    msg = message("001")
    first = msg.with_header("Subject", "hi", index=0)
    assert first.headers[0].name == "Subject"
    assert first.raw.replace(b"Subject: hi\r\n", b"", 1) == msg.raw
    empty = message("027")
    filled = empty.with_header("From", "<im:ada@example.com>")
    assert filled.sender == cpim.Party(None, "im:ada@example.com")
    with pytest.raises(IndexError):
        msg.with_header("Subject", "x", index=5)


def test_with_header_rejects_what_cannot_be_written() -> None:
    msg = message("001")
    with pytest.raises(ValueError, match="Header-name"):
        msg.with_header("Bad Name", "x")
    with pytest.raises(ValueError, match="empty"):
        msg.with_header("Subject", "")
    with pytest.raises(ValueError, match="lang"):
        msg.with_header("Subject", "x", params=[("lang", "en_US")])
    quoted = msg.with_header("X-Tag", "x", params=[("note", 'a "b"; c')])
    assert quoted.headers[-1].params == (("note", 'a "b"; c'),)


def test_without_header_removes_exactly_its_bytes() -> None:
    msg = message("003")
    no_cc = msg.without_header("cc")
    assert no_cc.cc == ()
    expected = msg.raw
    for header in reversed(msg.find("cc")):
        expected = expected[: header.offset] + expected[header.offset + len(header.raw) :]
    assert no_cc.raw == expected
    second_to = msg.without_header("To", occurrence=1)
    assert [p.uri for p in second_to.to] == ["im:charles@example.net", "xmpp:grace@example.com"]
    assert msg.without_header("Nothing") is msg
    with pytest.raises(IndexError):
        msg.without_header("To", occurrence=3)


def test_edits_keep_the_form_and_the_lenient_reading() -> None:
    body = cpim.parse_body(message("001").to_body())
    assert body.with_header("Subject", "x").form == "body"
    odd = cpim.parse(vectorset.vector("i007").read_bytes())
    assert [d.code for d in odd.with_header("Subject", "x").defects] == ["NO_SP_AFTER_COLON"]


# -- build ---------------------------------------------------------------------------------


def test_build_writes_the_documented_order_and_is_deterministic() -> None:
    kwargs = {
        "sender": cpim.Party("Ada Lovelace", "im:ada@example.com"),
        "to": [cpim.Party("Charles Babbage", "im:charles@example.net"), "sip:mary@example.org"],
        "cc": ["im:ops@example.com"],
        "datetime": "2024-03-05T09:30:12Z",
        "subjects": [(None, "Notes"), ("fr", "Notes")],
        "namespaces": [("Lab", "http://ns.example.org/lab-im/")],
        "extensions": [("Lab.Ack", "wanted")],
        "require": ["Lab.Ack"],
        "content_type": "text/plain; charset=utf-8",
        "entity_headers": [("Content-ID", "<note-1@example.com>")],
        "body": b"The engine's table.",
    }
    built = cpim.build(**kwargs)  # type: ignore[arg-type]
    assert built == cpim.build(**kwargs)  # type: ignore[arg-type]
    assert built.form == "body"
    assert built.raw == (
        b"From: Ada Lovelace <im:ada@example.com>\r\n"
        b"To: Charles Babbage <im:charles@example.net>\r\n"
        b"To: <sip:mary@example.org>\r\n"
        b"cc: <im:ops@example.com>\r\n"
        b"DateTime: 2024-03-05T09:30:12Z\r\n"
        b"Subject: Notes\r\n"
        b"Subject:;lang=fr Notes\r\n"
        b"NS: Lab <http://ns.example.org/lab-im/>\r\n"
        b"Lab.Ack: wanted\r\n"
        b"Require: Lab.Ack\r\n"
        b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-ID: <note-1@example.com>\r\n"
        b"\r\n"
        b"The engine's table."
    )
    entity = cpim.build(**{**kwargs, "form": "entity"})  # type: ignore[arg-type]
    assert entity.raw == cpim.MIME_HEADER + b"\r\n" + built.raw


def test_build_quotes_formal_names_tokens_cannot_carry() -> None:
    built = cpim.build(
        sender=cpim.Party('Lovelace, Ada "AL"', "im:ada@example.com"),
        to=[cpim.Party("  spaced  ", "im:b@example.com"), cpim.Party("", "im:c@example.com")],
        content_type="text/plain",
        body=b"",
    )
    lines = built.raw.split(b"\r\n")
    assert lines[0] == b'From: "Lovelace, Ada \\"AL\\""<im:ada@example.com>'
    assert lines[1] == b'To: "  spaced  "<im:b@example.com>'
    assert lines[2] == b"To: <im:c@example.com>"
    assert built.sender == cpim.Party('Lovelace, Ada "AL"', "im:ada@example.com")
    assert built.to[0].formal_name == "  spaced  "
    assert built.defects == ()


def test_build_escapes_values_and_checks_its_output() -> None:
    built = cpim.build(
        sender="im:ada@example.com",
        subjects=[(None, "a\\b\tc\x07\x7f ")],
        content_type="text/plain",
        body=b"x",
    )
    assert b"Subject: a\\\\b\\tc\\u0007\\u007F\\u0020\r\n" in built.raw
    assert built.subject() == "a\\b\tc\x07\x7f "


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sender": "not a uri"}, "absolute URI"),
        ({"sender": "im:a@example.com", "datetime": "yesterday"}, "RFC 3339"),
        ({"sender": "im:a@example.com", "subjects": [("en_US", "x")]}, "lang"),
        ({"sender": "im:a@example.com", "subjects": [(None, "")]}, "empty"),
        ({"sender": "im:a@example.com", "namespaces": [("A.B", "urn:x:y")]}, "prefix"),
        ({"sender": "im:a@example.com", "namespaces": [("A", "urn:x#f")]}, "absolute URI"),
        ({"sender": "im:a@example.com", "extensions": [("No Space", "x")]}, "Header-name"),
        (
            {"sender": "im:a@example.com", "namespaces": [(None, "urn:x:y")], "require": ["A"]},
            "default namespace",
        ),
        ({"sender": "im:a@example.com", "require": ["A, B"]}, "header name"),
        ({"sender": "im:a@example.com", "content_type": "a\r\nb"}, "one non-empty line"),
        ({"sender": "im:a@example.com", "entity_headers": [("X", "a\r\nb")]}, "one-line"),
    ],
)
def test_build_refuses_what_cannot_be_written(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"content_type": "text/plain", "body": b"x", **kwargs}
    with pytest.raises(ValueError, match=match):
        cpim.build(**arguments)  # type: ignore[arg-type]


def test_build_output_is_strictly_valid_or_a_parse_error_names_the_rule() -> None:
    with pytest.raises(ParseError) as caught:
        cpim.build(sender=None, extensions=[("P.X", "1")], content_type="text/plain", body=b"")
    assert caught.value.code == "UNDEFINED_PREFIX"


# -- DateTime helpers ------------------------------------------------------------------------


def test_format_datetime_writes_utc_and_reads_back() -> None:
    moment = datetime(2024, 3, 5, 9, 30, 12, 250000, tzinfo=timezone(timedelta(hours=-5)))
    text = cpim.format_datetime(moment)
    assert text == "2024-03-05T14:30:12.250000Z"
    value = cpim.parse_datetime(text)
    assert value is not None
    assert value.timestamp() == pytest.approx(moment.timestamp())
    assert cpim.format_datetime(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="aware"):
        cpim.format_datetime(datetime(2024, 1, 1))


def test_party_encode_chooses_the_form() -> None:
    assert cpim.Party(None, "im:a@example.com").encode() == "<im:a@example.com>"
    assert cpim.Party("Ada", "im:a@example.com").encode() == "Ada <im:a@example.com>"
    assert cpim.Party("A\tB", "im:a@example.com").encode() == '"A\\tB"<im:a@example.com>'
    with pytest.raises(ValueError, match="absolute URI"):
        cpim.Party(None, "a b").encode()


def test_caches_fed_by_input_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads, NS values and MIME names are remembered, but never long ones and never
    more than a fixed number, whatever the input."""
    long_name = "X" * 1000
    data = (
        cpim.MIME_HEADER
        + b"\r\n"
        + f"NS: p <urn:example:{'y' * 1000}>\r\n{long_name}: v\r\n\r\n".encode()
        + f"{long_name}: x\r\nContent-Type: text/plain\r\n\r\n".encode()
    )
    msg = cpim.parse(data, strict=True)
    assert msg.headers[1].name == long_name
    assert all(len(key) <= cpim._CACHED_SIZE for key in cpim._HEADS)
    assert all(len(key) <= cpim._CACHED_SIZE for key in cpim._NS_VALUES)
    assert all(len(key) <= cpim._CACHED_SIZE for key in cpim._MIME_NAMES)
    monkeypatch.setattr(cpim, "_HEADS", {})  # fill a scratch cache, not the shared one
    for i in range(cpim._HEADS_MAX + 10):
        cpim._read_head(f"H{i}:")
    assert len(cpim._HEADS) == cpim._HEADS_MAX
    assert cpim._read_head("Late:") == ("Late", None, "Late", "", False)  # still read
