"""The codec's shortcuts read what the general reader reads: header names remembered from
earlier messages, counts of fields, the top Via taken from every Via already read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.sip import codec
from adapters.sip.codec import Request, parse
from adapters.sip.validation import check_request
from canonical.errors import ParseError

NAMES = st.sampled_from(
    ["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Subject", "X-Custom", "s"]
)
BLANKS = st.sampled_from(["", " ", "\t", " \t "])
VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=12,
)


def request_with(lines: list[tuple[str, str, str]]) -> bytes:
    head = "".join(f"{name}{blank}: {value}\r\n" for name, blank, value in lines)
    return f"OPTIONS sip:bob@example.com SIP/2.0\r\n{head}Content-Length: 0\r\n\r\n".encode()


@given(st.lists(st.tuples(NAMES, BLANKS, VALUES), max_size=8))
def test_remembered_header_names_read_as_on_first_sight(lines: list[tuple[str, str, str]]) -> None:
    data = request_with(lines)
    codec._NAMES.clear()
    first = parse(data)  # every name read and checked
    again = parse(data)  # every name remembered
    assert again.headers == first.headers
    assert [h.name for h in first.headers[:-1]] == [name for name, _, _ in lines]
    assert bytes(again) == data


@given(st.lists(st.tuples(NAMES, BLANKS, VALUES), max_size=8), NAMES)
def test_count_is_the_number_of_fields_of_a_name(
    lines: list[tuple[str, str, str]], asked: str
) -> None:
    message = parse(request_with(lines))
    assert message.count(asked) == len(message.get_all(asked))


def test_a_name_that_is_no_token_is_refused_though_a_token_name_was_remembered() -> None:
    parse(request_with([("Subject", "", "x")]))
    with pytest.raises(ParseError) as caught:
        parse(request_with([("Sub ject", "", "x")]))
    assert caught.value.code == "BAD_HEADER_NAME"


def test_the_top_via_read_after_the_checks_is_the_first_of_every_via() -> None:
    data = (
        b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1;rport\r\n"
        b"Via: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK-2\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        b"Call-ID: c1@x\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    checked = parse(data)
    assert isinstance(checked, Request)
    assert check_request(checked, methods=frozenset({"MESSAGE"})) is None
    assert checked.top_via == parse(data).top_via == checked.vias[0]
    assert checked.top_via.params[0] == ("branch", "z9hG4bK-1")
