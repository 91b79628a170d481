"""The SIP codec keeps every byte: header lines as written, bodies as bytes (RFC 3261 §7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sip.codec import Limits, Request, Response, StreamFramer, parse, reply
from canonical.errors import ParseError

CRLF = "\r\n"


def wire(*lines: str, body: bytes = b"") -> bytes:
    return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + body


MESSAGE = wire(
    "MESSAGE sip:bob@example.com SIP/2.0",
    "v: SIP/2.0/UDP a.example;branch=z9hG4bK1",
    "X-Between: kept",
    "Via: SIP/2.0/UDP b.example;branch=z9hG4bK2",
    "Subject: folded",
    "  over two lines",
    "f: Alice <sip:alice@example.com>;tag=1",
    "t: <sip:bob@example.com>",
    "i: abc@host",
    "CSeq: 1 MESSAGE",
    "Max-Forwards: 70",
    "c: application/octet-stream",
    "l: 12",
    body=b"ab\r\n\r\n\x82\xff\xfe\x00!\n",
)


def test_unmodified_message_serialises_to_identical_bytes() -> None:
    msg = parse(MESSAGE)
    assert bytes(msg) == MESSAGE


def test_compact_forms_interleaved_via_and_folding_are_read_but_kept() -> None:
    msg = parse(MESSAGE)
    assert [h.name for h in msg.headers][:3] == ["v", "X-Between", "Via"]
    assert [v.host for v in msg.vias] == ["a.example", "b.example"]
    assert msg.get("Subject") == "folded over two lines"
    assert msg.call_id == "abc@host"
    assert msg.from_.display_name == "Alice"
    assert msg.content_type is not None
    assert msg.content_type.essence == "application/octet-stream"


def test_body_is_bytes_and_content_length_counts_bytes() -> None:
    msg = parse(MESSAGE)
    assert msg.body == b"ab\r\n\r\n\x82\xff\xfe\x00!\n"
    utf8 = "Grüße ✓".encode()
    new = msg.with_body(utf8)
    assert new.get("Content-Length") == str(len(utf8)) == "11"
    assert parse(bytes(new)).body == utf8


def test_edit_changes_only_its_line() -> None:
    msg = parse(MESSAGE)
    edited = msg.with_replaced("To", "<sip:carol@example.com>")
    before = bytes(msg).split(b"\r\n")
    after = bytes(edited).split(b"\r\n")
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [(b"t: <sip:bob@example.com>", b"t: <sip:carol@example.com>")]


def test_top_via_is_added_and_removed_without_touching_other_lines() -> None:
    msg = parse(MESSAGE)
    pushed = msg.with_top_via("SIP/2.0/TCP gw.example;branch=z9hG4bKnew")
    assert [v.host for v in pushed.vias] == ["gw.example", "a.example", "b.example"]
    assert bytes(pushed.without_top_via()) == MESSAGE


def test_header_injection_is_refused() -> None:
    msg = parse(MESSAGE)
    with pytest.raises(ValueError, match="CR or LF"):
        msg.with_header("X-Evil", "a\r\nVia: forged")


def test_reply_copies_via_from_callid_cseq_and_tags_to() -> None:
    msg = parse(MESSAGE)
    assert isinstance(msg, Request)
    resp = reply(msg, 202, "Accepted", to_tag="xyz")
    assert [h.raw for h in resp.fields("Via")] == [h.raw for h in msg.fields("Via")]
    assert resp.to.tag == "xyz"
    assert resp.cseq == msg.cseq
    assert parse(bytes(resp)).status == 202


def test_stream_framer_cuts_messages_at_any_split_point() -> None:
    stream = b"\r\n\r\n" + MESSAGE + MESSAGE
    for step in (1, 7, 64, len(stream)):
        framer = StreamFramer()
        out = []
        for i in range(0, len(stream), step):
            out += framer.feed(stream[i : i + step])
        assert [bytes(m) for m in out] == [MESSAGE, MESSAGE]
        assert framer.pending == 0


def test_stream_message_without_content_length_is_a_framing_error() -> None:
    data = wire("OPTIONS sip:a@b SIP/2.0", "Via: SIP/2.0/TCP h;branch=z9hG4bKx")
    with pytest.raises(ParseError) as err:
        StreamFramer().feed(data)
    assert err.value.code == "NO_CONTENT_LENGTH"


def test_stream_head_flood_is_bounded() -> None:
    framer = StreamFramer(Limits(max_head=1024))
    with pytest.raises(ParseError) as err:
        framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 400)
    assert err.value.code == "HEAD_TOO_LARGE"


def test_header_flood_is_refused_with_a_count() -> None:
    data = wire("OPTIONS sip:a@b SIP/2.0", *(f"X-{i}: v" for i in range(300)))
    with pytest.raises(ParseError) as err:
        parse(data, limits=Limits(max_headers=256))
    assert err.value.code == "TOO_MANY_HEADERS"
    assert err.value.reason == "too-large"


def test_oversized_datagram_is_refused() -> None:
    with pytest.raises(ParseError) as err:
        parse(MESSAGE, limits=Limits(max_message=100))
    assert err.value.code == "TOO_LARGE"


def test_bare_lf_in_headers_names_the_byte() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\nTo: y\r\n\r\n"
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "BARE_LF"
    assert err.value.offset == data.index(b"\n", 26)


def test_header_line_without_colon_names_the_line() -> None:
    data = wire("OPTIONS sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h", "garbage line")
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "NO_COLON"
    assert err.value.line == 3


def test_garbage_is_a_parse_error_not_a_crash() -> None:
    for data in (b"", b"\x00\x01\x02", b"hello world\r\n\r\n", b"SIP/2.0\r\n\r\n", b"\xff" * 50):
        with pytest.raises(ParseError):
            parse(data)


def test_response_build_and_retry_after() -> None:
    resp = Response.build(
        503,
        "Service Unavailable",
        [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Retry-After", "120 (maintenance)")],
    )
    assert parse(bytes(resp)).retry_after == 120  # type: ignore[attr-defined]


# -------------------------------------------------------------------- property tests

names = st.sampled_from(
    ["Via", "v", "From", "f", "To", "t", "i", "Call-ID", "CSeq", "X-Custom", "subject", "c"]
)
value_text = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")
    ),
    max_size=40,
).map(lambda s: s.strip(" \t"))


@st.composite
def header_lines(draw: st.DrawFn) -> str:
    name = draw(names)
    space_before = draw(st.sampled_from(["", " ", "\t", "  "]))
    space_after = draw(st.sampled_from(["", " ", "   "]))
    parts = draw(st.lists(value_text, min_size=1, max_size=3))
    folds = [draw(st.sampled_from([" ", "\t", "   "])) for _ in parts[1:]]
    value = parts[0] + "".join(CRLF + f + p for f, p in zip(folds, parts[1:], strict=True))
    return f"{name}{space_before}:{space_after}{value}"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=300))
    headers = draw(st.lists(header_lines(), max_size=12))
    cl_name = draw(st.sampled_from(["Content-Length", "l", "content-length"]))
    headers.insert(draw(st.integers(0, len(headers))), f"{cl_name}: {len(body)}")
    start = draw(
        st.sampled_from(
            ["MESSAGE sip:bob@example.com SIP/2.0", "SIP/2.0 202 Accepted", "SIP/2.0 100 "]
        )
    )
    return wire(start, *headers, body=body)


@settings(max_examples=300)
@given(messages())
def test_any_accepted_message_round_trips_byte_for_byte(data: bytes) -> None:
    msg = parse(data)
    assert bytes(msg) == data
    assert parse(bytes(msg)).body == msg.body


@settings(max_examples=150)
@given(messages(), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_stream_framing_matches_datagram_parsing(data: bytes, cuts: list[int]) -> None:
    stream = data * 2
    framer = StreamFramer()
    out = []
    pos = 0
    for cut in cuts:
        out += framer.feed(stream[pos : pos + cut])
        pos += cut
    out += framer.feed(stream[pos:])
    assert [bytes(m) for m in out] == [data, data]


@settings(max_examples=150)
@given(messages(), value_text)
def test_header_edit_leaves_every_other_line_alone(data: bytes, new_value: str) -> None:
    msg = parse(data)
    edited = msg.with_header("X-Added", new_value, index=0)
    assert edited.headers[1:] == msg.headers
    assert edited.body == msg.body
    assert bytes(edited.without("X-Added")) == data
