"""RFC 2812 §2.3 lines: parsed and written back byte for byte, clear errors otherwise."""

from __future__ import annotations

import pytest
from cpimgw_irc.line import MAX_LINE, Line, bytes_of, parse_line, parse_lines
from hypothesis import given
from hypothesis import strategies as st

from canonical.errors import ParseError


def test_privmsg_with_prefix_and_trailing_text_is_read_field_by_field() -> None:
    line = parse_line(b":alice!~alice@127.0.0.1 PRIVMSG cpimgw :sip:ada@example.net hi there")
    assert line.prefix == "alice!~alice@127.0.0.1"
    assert line.nick == "alice"
    assert line.command == "PRIVMSG"
    assert line.params == ("cpimgw", "sip:ada@example.net hi there")
    assert line.trailing


def test_numeric_reply_keeps_every_parameter() -> None:
    line = parse_line(b":irc.example.org 401 cpimgw nobody :No such nick or channel name")
    assert line.command == "401"
    assert line.params == ("cpimgw", "nobody", "No such nick or channel name")


def test_written_line_is_the_line_read() -> None:
    data = b":irc.example.org 005 cpimgw CHANTYPES=#&+ NICKLEN=9 :are supported on this server"
    assert parse_line(data).to_bytes() == data + b"\r\n"


def test_last_parameter_without_colon_stays_without_colon() -> None:
    data = b"JOIN #lab"
    assert parse_line(data).to_bytes() == data + b"\r\n"


def test_fifteenth_parameter_takes_the_rest_of_the_line() -> None:
    params = " ".join(f"p{i}" for i in range(14))
    line = parse_line(f"CMD {params} last with spaces".encode())
    assert len(line.params) == 15
    assert line.params[-1] == "last with spaces"


def test_bytes_that_are_not_utf8_survive() -> None:
    data = b":a!b@c PRIVMSG cpimgw :im:ada@example.com caf\xe9"
    line = parse_line(data)
    assert bytes_of(line.text).endswith(b"caf\xe9")
    assert line.to_bytes() == data + b"\r\n"


@pytest.mark.parametrize(
    ("data", "code", "offset"),
    [
        (b"PRIVMSG a :x\x00y", "NUL", 12),
        (b"PRIVMSG a :x\ry", "BARE_CR", 12),
        (b": PRIVMSG a :x", "EMPTY_PREFIX", 0),
        (b":prefix", "NO_COMMAND", 0),
        (b"PRIV-MSG a :x", "BAD_COMMAND", 0),
        (b"PRIVMSG a :" + b"x" * MAX_LINE, "LINE_TOO_LONG", MAX_LINE - 2),
    ],
)
def test_malformed_line_is_refused_with_code_and_offset(
    data: bytes, code: str, offset: int
) -> None:
    with pytest.raises(ParseError) as caught:
        parse_line(data)
    assert caught.value.code == code
    assert caught.value.offset == offset
    assert caught.value.hint or caught.value.message


def test_input_without_any_message_is_refused() -> None:
    with pytest.raises(ParseError, match="no IRC message"):
        parse_lines(b"\r\n\r\n")


def test_error_offset_counts_from_the_start_of_the_input() -> None:
    with pytest.raises(ParseError) as caught:
        parse_lines(b"PING :a\r\nPRIVMSG a :x\x00\r\n")
    assert caught.value.offset == 9 + 12
    assert caught.value.line == 2


def test_lf_only_lines_are_accepted_as_servers_do() -> None:
    assert len(parse_lines(b"PING :a\nPING :b\n")) == 2


def test_same_as_folds_the_target_and_ignores_the_colon_form() -> None:
    a = parse_line(b"PRIVMSG Cpimgw :hello")
    b = Line("PRIVMSG", ("cpimgw", "hello"), trailing=False)
    assert a.same_as(b)
    assert not a.same_as(Line("PRIVMSG", ("cpimgw", "Hello")))


middles = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_characters=":"),
    min_size=1,
    max_size=10,
)
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF), max_size=80)


@given(
    st.none() | middles,
    st.sampled_from(["PRIVMSG", "NOTICE", "001", "JOIN"]),
    st.lists(middles, max_size=4),
    texts,
)
def test_any_line_written_reads_back_the_same(
    prefix: str | None, command: str, middle: list[str], text: str
) -> None:
    line = Line(command, (*middle, text), prefix, trailing=True)
    again = parse_lines(line.to_bytes())
    assert again == (line,)
