"""The IRC mapper: PRIVMSG <-> canonical, addressing, recorded losses, refusals, failures."""

from __future__ import annotations

import pytest
from cpimgw_irc.line import Line, parse_line
from cpimgw_irc.mapping import IRC_NS, IrcMapper, IrcMessage
from hypothesis import given
from hypothesis import strategies as st

from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import GatewayError, MappingError, ParseError, Reason

NOW = 1_700_000_000.0
MAPPER = IrcMapper(
    network="irc.example.org",
    nick="cpimgw",
    channels={"#lab": "xmpp:lab@conference.example.com"},
)


def inbound(*raw: bytes) -> Envelope:
    native = IrcMessage(tuple(parse_line(r) for r in raw))
    return MAPPER.to_canonical(native, origin=Origin(adapter="irc"), received_at=NOW).value


def outbound(
    body: bytes,
    *,
    sender: str = "sip:ada@example.net",
    recipient: str = "im:alice@irc.example.org",
    content_type: str = CPIM,
    operation: Operation = Operation.MESSAGE,
) -> tuple[IrcMessage, tuple[str, ...]]:
    envelope = Envelope(
        operation=operation,
        sender=sender,
        recipient=recipient,
        payload=Payload(content_type, body),
        identity="id-1",
        origin=Origin(adapter="sip"),
    )
    mapped = MAPPER.from_canonical(envelope)
    return mapped.value, tuple(loss.field for loss in mapped.losses)


def cpim_body(
    *headers: str, entity: str = "Content-Type: text/plain; charset=utf-8", text: str = "hello"
) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + entity + "\r\n\r\n" + text).encode()


def test_private_message_to_the_bot_is_addressed_by_its_first_word() -> None:
    envelope = inbound(
        b":alice!~alice@127.0.0.1 PRIVMSG cpimgw :sip:ada@example.net Hello from IRC"
    )
    assert envelope.sender == "im:alice@irc.example.org"
    assert envelope.recipient == "sip:ada@example.net"
    message = cpim.parse_body(envelope.payload.body if envelope.payload else b"", strict=True)
    assert message.body == b"Hello from IRC"
    assert message.sender is not None
    assert message.sender.uri == "im:alice@irc.example.org"
    assert [p.uri for p in message.to] == ["sip:ada@example.net"]
    assert message.find("Target", IRC_NS)[0].value == "cpimgw"
    assert message.find("Prefix", IRC_NS)[0].value == "alice!~alice@127.0.0.1"
    assert envelope.origin.reply_to == "im:alice@irc.example.org"


def test_canonical_object_is_deterministic() -> None:
    raw = b":alice!~a@h PRIVMSG cpimgw :<im:ada@example.com> same input, same bytes"
    assert inbound(raw).payload == inbound(raw).payload


def test_bridged_channel_message_goes_to_the_channel_address() -> None:
    envelope = inbound(b":alice!~alice@127.0.0.1 PRIVMSG #Lab :results are in")
    assert envelope.recipient == "xmpp:lab@conference.example.com"


def test_unbridged_channel_is_refused_with_the_fix() -> None:
    with pytest.raises(MappingError) as caught:
        inbound(b":alice!~a@h PRIVMSG #other :hello")
    assert caught.value.reason is Reason.UNKNOWN_DESTINATION
    assert "channels" in caught.value.hint


def test_private_message_without_an_address_is_refused_with_an_example() -> None:
    with pytest.raises(MappingError) as caught:
        inbound(b":alice!~a@h PRIVMSG cpimgw :hello there")
    assert caught.value.reason is Reason.BAD_REQUEST
    assert "sip:ada@example.com hello" in caught.value.hint


@pytest.mark.parametrize(
    "raw",
    [
        b":alice!~alice@127.0.0.1 PRIVMSG cpimgw :sip:ada@example.net Hello",
        b":bob!~b@h PRIVMSG cpimgw :<xmpp:c@xmpp.example.com> Gr\xc3\xbc\xc3\x9fe",
        b":alice!~a@h PRIVMSG #lab :channel talk",
        b':[al]\\ce^!~x@h PRIVMSG cpimgw :im:ada@example.com back\\slash "q"  two spaces',
        b":alice!~a@h PRIVMSG cpimgw :im:ada@example.com caf\xe9",
        b"PRIVMSG cpimgw :im:ada@example.com no prefix",
    ],
)
def test_irc_message_maps_back_to_equal_lines(raw: bytes) -> None:
    native = IrcMessage((parse_line(raw),))
    envelope = MAPPER.to_canonical(native, origin=Origin(adapter="irc"), received_at=NOW).value
    back = MAPPER.from_canonical(envelope)
    assert MAPPER.equal(back.value, native)
    assert back.losses == ()
    assert MAPPER.encode(back.value) == raw + b"\r\n"


def test_bytes_that_are_not_utf8_are_labelled_unknown_8bit() -> None:
    envelope = inbound(b":alice!~a@h PRIVMSG cpimgw :im:ada@example.com caf\xe9")
    message = cpim.parse_body(envelope.payload.body if envelope.payload else b"")
    assert message.content_type == "text/plain; charset=unknown-8bit"
    assert message.body == b"caf\xe9"


def test_text_from_elsewhere_is_led_by_its_sender_and_losses_are_recorded() -> None:
    body = cpim_body(
        "From: Ada Lovelace <sip:ada@example.net>",
        "To: <im:alice@irc.example.org>",
        "DateTime: 2024-03-05T17:00:00Z",
        "Subject: Engines",
    )
    native, losses = outbound(body)
    assert [line.to_bytes() for line in native.lines] == [
        b"PRIVMSG alice :<sip:ada@example.net> hello\r\n"
    ]
    assert {"message/cpim", "From", "DateTime", "Subject"} <= set(losses)


def test_multi_line_text_becomes_one_privmsg_per_line_with_the_loss_recorded() -> None:
    native, losses = outbound(cpim_body("From: <sip:ada@example.net>", text="one\r\ntwo\nthree"))
    assert [line.text for line in native.lines] == [
        "<sip:ada@example.net> one",
        "<sip:ada@example.net> two",
        "<sip:ada@example.net> three",
    ]
    assert "body" in losses


def test_long_text_is_split_inside_the_512_byte_limit_without_cutting_utf8() -> None:
    native, losses = outbound(cpim_body("From: <sip:ada@example.net>", text="ü" * 600))
    assert len(native.lines) > 1
    for line in native.lines:
        relayed = b":nine_char!~username@" + b"h" * 63 + b" " + line.to_bytes()
        assert len(relayed) <= 512
        line.text.encode("utf-8")  # every piece is whole UTF-8
    assert "".join(line.text.split("> ", 1)[1] for line in native.lines) == "ü" * 600
    assert "body" in losses


def test_message_to_a_bridged_channel_address() -> None:
    native, _ = outbound(
        cpim_body("From: <sip:ada@example.net>"), recipient="xmpp:lab@conference.example.com"
    )
    assert native.lines[0].params[0] == "#lab"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"recipient": "sip:bob@example.net"}, Reason.UNKNOWN_DESTINATION),
        ({"operation": Operation.NOTIFY}, Reason.UNSUPPORTED_FEATURE),
        ({"content_type": "multipart/signed; boundary=x"}, Reason.UNSUPPORTED_MEDIA),
        ({"content_type": "image/png"}, Reason.UNSUPPORTED_MEDIA),
    ],
)
def test_what_irc_cannot_carry_is_refused_with_a_reason(
    kwargs: dict[str, object], reason: Reason
) -> None:
    with pytest.raises(MappingError) as caught:
        outbound(cpim_body("From: <sip:ada@example.net>"), **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason is reason


def test_required_extension_is_refused_rfc3862_section_3_5() -> None:
    body = cpim_body(
        "From: <sip:ada@example.net>", "NS: lab <urn:example:lab>", "Require: lab.Seq", "lab.Seq: 1"
    )
    with pytest.raises(MappingError) as caught:
        outbound(body)
    assert caught.value.reason is Reason.UNSUPPORTED_FEATURE
    assert "lab.Seq" in str(caught.value)


def test_binary_entity_is_refused_not_mangled() -> None:
    body = cpim_body(
        "From: <sip:ada@example.net>", entity="Content-Type: image/png", text="\x89PNG"
    )
    with pytest.raises(MappingError, match="IRC carries text"):
        outbound(body)


def test_malformed_cpim_is_refused_with_the_parse_error() -> None:
    with pytest.raises(ParseError):
        outbound(b"From: <sip:ada@example.net>\n\nContent-Type: text/plain\n\nbare LF")


def test_failure_is_a_notice_that_reads_back_as_the_same_reason() -> None:
    envelope = inbound(b":alice!~a@h PRIVMSG cpimgw :sip:ada@example.net hi")
    notice = MAPPER.error_to_native(
        envelope, GatewayError("no such user", reason=Reason.UNKNOWN_DESTINATION)
    )
    assert MAPPER.encode(notice) == b"NOTICE alice :cpimgw: unknown-destination: no such user\r\n"
    back = MAPPER.error_from_native(MAPPER.decode(MAPPER.encode(notice)))
    assert back is not None
    assert back.reason is Reason.UNKNOWN_DESTINATION
    assert back.message == "no such user"


def test_server_error_numerics_read_as_failures() -> None:
    native = MAPPER.decode(b":irc.example.org 401 cpimgw nobody :No such nick or channel name\r\n")
    failure = MAPPER.error_from_native(native)
    assert failure is not None
    assert failure.reason is Reason.UNKNOWN_DESTINATION
    assert MAPPER.error_from_native(MAPPER.decode(b"PRIVMSG a :hi\r\n")) is None


words = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_characters="\x7f"),
    min_size=1,
    max_size=12,
)


@given(
    st.sampled_from(["alice", "b0b", "[x]\\y", "z^`|"]),
    st.sampled_from(["sip:ada@example.net", "<im:ada@example.com>", "xmpp:c@x.example.com/r"]),
    st.lists(words, min_size=0, max_size=8).map(" ".join),
)
def test_every_irc_message_survives_its_own_mapping(nick: str, address: str, text: str) -> None:
    line = Line("PRIVMSG", ("cpimgw", f"{address} {text}"), f"{nick}!~u@127.0.0.1", trailing=True)
    native = IrcMessage((line,))
    envelope = MAPPER.to_canonical(native, origin=Origin(adapter="irc"), received_at=NOW).value
    assert MAPPER.equal(MAPPER.from_canonical(envelope).value, native)
