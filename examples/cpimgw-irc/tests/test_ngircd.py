"""The IRC adapter against a real ngIRCd on loopback, with a plain IRC client as the user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cpimgw_irc.adapter import IrcAdapter, IrcConfig
from cpimgw_irc.line import Line, parse_line
from ngircd_server import Ircd, running_ircd

from adapters.contract import AdapterContext, Receipt
from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, GatewayError, Reason

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

LAB = "xmpp:lab@conference.example.com"


class Client:
    """A plain IRC user (RFC 2812 §3.1 registration) reading what the server relays."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nick: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.nick = nick

    @classmethod
    async def connect(cls, port: int, nick: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, nick)
        await client.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        await client.expect(lambda line: line.command == "001")
        return client

    async def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            self.writer.write(data + b"\r\n")
        await self.writer.drain()

    async def expect(self, wanted: Callable[[Line], bool], within: float = 10) -> Line:
        async def read() -> Line:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise ConnectionError(f"{self.nick}: server closed the connection")
                line = parse_line(raw.rstrip(b"\r\n"))
                if line.command == "PING":
                    await self.send(f"PONG :{line.text}")
                elif wanted(line):
                    return line

        return await asyncio.wait_for(read(), within)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class Gateway:
    """Stands for the gateway core: stores what the adapter delivers, or refuses it."""

    def __init__(self) -> None:
        self.delivered: asyncio.Queue[Envelope] = asyncio.Queue()
        self.refuse: GatewayError | None = None

    async def __call__(self, envelope: Envelope) -> Receipt:
        if self.refuse is not None:
            raise self.refuse
        await self.delivered.put(envelope)
        return Receipt(envelope.identity)


@pytest.fixture
def ircd(tmp_path: Path) -> Iterator[Ircd]:
    with running_ircd(tmp_path / "ngircd") as server:
        yield server


def make_adapter(port: int, **config: object) -> IrcAdapter:
    settings = IrcConfig(
        port=port,
        channels={"#lab": LAB},
        send_timeout=5,
        reconnect_max=0.5,
        **config,  # type: ignore[arg-type]
    )
    return IrcAdapter("irc", settings, AdapterContext(gateway_id="gw-test"))


@contextlib.asynccontextmanager
async def serving(adapter: IrcAdapter, gateway: Gateway) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(adapter.run(gateway))
    try:
        for _ in range(200):
            if adapter.ready():
                break
            await asyncio.sleep(0.025)
        assert adapter.ready(), "the adapter did not register with ngIRCd"
        yield task
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)


def message_to(recipient: str, text: str, sender: str = "sip:ada@example.net") -> Envelope:
    body = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()
    return Envelope(
        operation=Operation.MESSAGE,
        sender=sender,
        recipient=recipient,
        payload=Payload(CPIM, body),
        identity="e2e-1",
        origin=Origin(adapter="sip"),
    )


async def test_private_message_from_an_irc_user_is_delivered_as_cpim(ircd: Ircd) -> None:
    gateway = Gateway()
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, gateway):
        await alice.send("PRIVMSG cpimgw :sip:ada@example.net Grüße aus dem IRC")
        envelope = await asyncio.wait_for(gateway.delivered.get(), 10)
    await alice.close()
    assert envelope.sender == "im:alice@irc.example.org"
    assert envelope.recipient == "sip:ada@example.net"
    assert envelope.payload is not None
    message = cpim.parse_body(envelope.payload.body, strict=True)
    assert message.body == "Grüße aus dem IRC".encode()
    prefix = message.find("Prefix", "urn:cpimgw:irc:0")[0].value
    assert prefix == "alice!~alice@127.0.0.1"  # as ngIRCd relayed it


async def test_gateway_message_reaches_the_irc_user_led_by_its_sender(ircd: Ircd) -> None:
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, Gateway()):
        sent = await adapter.send(message_to("im:alice@irc.example.org", "hello ünïcode"))
        line = await alice.expect(lambda line: line.command == "PRIVMSG")
    await alice.close()
    assert "routed" in sent.detail
    assert line.nick == "cpimgw"
    assert line.params == ("alice", "<sip:ada@example.net> hello ünïcode")


async def test_long_text_arrives_in_lines_within_512_bytes(ircd: Ircd) -> None:
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    text = "0123456789 " * 100
    mapped = adapter.mapper.from_canonical(message_to("im:alice@irc.example.org", text))
    assert "white space at the end of a line (IRC servers strip it)" in {
        loss.detail for loss in mapped.losses
    }
    async with serving(adapter, Gateway()):
        await adapter.send(message_to("im:alice@irc.example.org", text))
        received = ""
        while received != text.rstrip(" "):
            line = await alice.expect(lambda line: line.command == "PRIVMSG")
            assert len(line.to_bytes()) <= 512
            received += line.text.removeprefix("<sip:ada@example.net> ")
    await alice.close()


async def test_send_to_an_unknown_nick_fails_as_unknown_destination(ircd: Ircd) -> None:
    adapter = make_adapter(ircd.port)
    async with serving(adapter, Gateway()):
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(message_to("im:nobody@irc.example.org", "anyone?"))
    assert caught.value.reason is Reason.UNKNOWN_DESTINATION
    assert not caught.value.retryable
    assert "No such nick" in str(caught.value)


async def test_refused_message_is_answered_with_a_notice(ircd: Ircd) -> None:
    gateway = Gateway()
    gateway.refuse = GatewayError("sender not allowed", reason=Reason.FORBIDDEN)
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, gateway):
        await alice.send("PRIVMSG cpimgw :sip:ada@example.net hi")
        notice = await alice.expect(lambda line: line.command == "NOTICE" and line.nick == "cpimgw")
    await alice.close()
    assert notice.text == "cpimgw: forbidden: sender not allowed"


async def test_message_without_address_gets_a_notice_with_the_fix(ircd: Ircd) -> None:
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, Gateway()):
        await alice.send("NOTICE cpimgw :a notice is never answered")
        await alice.send("PRIVMSG cpimgw :hello, who am I talking to?")
        notice = await alice.expect(lambda line: line.command == "NOTICE" and line.nick == "cpimgw")
    await alice.close()
    # The first NOTICE alice gets answers the PRIVMSG: the NOTICE before it got no reply.
    assert notice.text.startswith("cpimgw: bad-request: the message does not start with")
    assert "sip:ada@example.com hello" in notice.text


async def test_bridged_channel_both_ways(ircd: Ircd) -> None:
    gateway = Gateway()
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, gateway):
        await alice.send("JOIN #lab")
        await alice.expect(lambda line: line.command == "366")  # end of NAMES
        for _ in range(100):  # the bot joined at registration; wait until it is listed
            await alice.send("NAMES #lab")
            names = await alice.expect(lambda line: line.command == "353")
            if "cpimgw" in names.text.replace("@", "").split():
                break
            await asyncio.sleep(0.05)
        await alice.send("PRIVMSG #lab :results are in")
        envelope = await asyncio.wait_for(gateway.delivered.get(), 10)
        await adapter.send(message_to(LAB, "thanks"))
        line = await alice.expect(
            lambda line: line.command == "PRIVMSG" and line.params[0] == "#lab"
        )
    await alice.close()
    assert envelope.recipient == LAB
    assert line.text == "<sip:ada@example.net> thanks"


async def test_taken_nick_gets_a_suffix_and_the_bot_still_works(ircd: Ircd) -> None:
    squatter = await Client.connect(ircd.port, "cpimgw")
    alice = await Client.connect(ircd.port, "alice")
    gateway = Gateway()
    adapter = make_adapter(ircd.port)
    async with serving(adapter, gateway):
        assert adapter.nick == "cpimgw_"
        await alice.send("PRIVMSG cpimgw_ :im:ada@example.com still here")
        envelope = await asyncio.wait_for(gateway.delivered.get(), 10)
    await squatter.close()
    await alice.close()
    assert envelope.recipient == "im:ada@example.com"


async def test_final_failure_is_reported_to_the_irc_user(ircd: Ircd) -> None:
    gateway = Gateway()
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    async with serving(adapter, gateway):
        await alice.send("PRIVMSG cpimgw :sip:ada@example.net are you there?")
        envelope = await asyncio.wait_for(gateway.delivered.get(), 10)
        await adapter.report(
            envelope, GatewayError("gave up after 5 attempts", reason=Reason.EXPIRED)
        )
        notice = await alice.expect(lambda line: line.command == "NOTICE")
    await alice.close()
    assert notice.text == "cpimgw: expired: gave up after 5 attempts"


async def test_lost_server_fails_sends_retryably_then_the_adapter_reconnects(
    tmp_path: Path,
) -> None:
    with running_ircd(tmp_path / "first") as first:
        adapter = make_adapter(first.port)
        task = asyncio.create_task(adapter.run(Gateway()))
        for _ in range(200):
            if adapter.ready():
                break
            await asyncio.sleep(0.025)
        assert adapter.ready()
        port = first.port
    try:
        for _ in range(200):
            if not adapter.ready():
                break
            await asyncio.sleep(0.025)
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(message_to("im:alice@irc.example.org", "hello?"))
        assert caught.value.retryable
        with running_ircd(tmp_path / "second", port=port):
            alice = await Client.connect(port, "alice")
            for _ in range(400):
                if adapter.ready():
                    break
                await asyncio.sleep(0.025)
            assert adapter.ready(), "the adapter did not reconnect"
            await adapter.send(message_to("im:alice@irc.example.org", "back again"))
            line = await alice.expect(lambda line: line.command == "PRIVMSG")
            assert line.text.endswith("back again")
            await alice.close()
            await adapter.stop()
            await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            await adapter.stop()
            await asyncio.wait_for(task, 10)


async def test_stop_says_quit(ircd: Ircd) -> None:
    adapter = make_adapter(ircd.port)
    alice = await Client.connect(ircd.port, "alice")
    await alice.send("JOIN #lab")
    async with serving(adapter, Gateway()) as task:
        await alice.expect(lambda line: line.command == "JOIN" and line.nick == "cpimgw")
    quit_line = await alice.expect(lambda line: line.command == "QUIT" and line.nick == "cpimgw")
    await alice.close()
    assert task.done()
    assert "cpimgw stopping" in quit_line.text  # ngIRCd quotes the reason


async def test_tls_connection_verifies_the_server_and_carries_messages(tmp_path: Path) -> None:
    with running_ircd(tmp_path / "tls", tls=True) as server:
        assert server.tls_port is not None
        adapter = make_adapter(server.tls_port, tls=True, ca_file=str(server.certificate))
        gateway = Gateway()
        alice = await Client.connect(server.port, "alice")  # a plain client, same network
        async with serving(adapter, gateway):
            await alice.send("PRIVMSG cpimgw :im:ada@example.com over TLS")
            envelope = await asyncio.wait_for(gateway.delivered.get(), 10)
            await adapter.send(message_to("im:alice@irc.example.org", "back over TLS"))
            line = await alice.expect(lambda line: line.command == "PRIVMSG")
        await alice.close()
        log = server.log()
    assert envelope.recipient == "im:ada@example.com"
    assert line.text == "<sip:ada@example.net> back over TLS"
    assert "initialized TLS" in log


@pytest.mark.parametrize(("trusted", "server_name"), [(False, None), (True, "wrong.example.org")])
async def test_unverifiable_server_certificate_is_never_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, trusted: bool, server_name: str | None
) -> None:
    with running_ircd(tmp_path / "tls", tls=True) as server:
        assert server.tls_port is not None
        ca_file = str(server.certificate) if trusted else None
        adapter = make_adapter(server.tls_port, tls=True, ca_file=ca_file, server_name=server_name)
        task = asyncio.create_task(adapter.run(Gateway()))
        await asyncio.sleep(1.0)
        assert not adapter.ready()
        await adapter.stop()
        await asyncio.wait_for(task, 10)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
