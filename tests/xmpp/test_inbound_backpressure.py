"""Inbound backpressure: when more stanzas wait for the core than ``inbound_pending_max``,
the adapter stops reading the component stream, so the XMPP server holds the rest instead
of the gateway's memory; reading resumes as the core catches up, and every stanza arrives,
in order. A raw c2s client floods a real Prosody far faster than a deliberately slow core
takes the messages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest

from adapters.contract import AdapterContext, Receipt
from adapters.xmpp.adapter import XmppAdapter
from canonical import cpim
from canonical.envelope import Envelope
from tests.gateway.network import until
from tests.servers.prosody import ProsodyServer
from tests.xmpp.test_adapter_e2e import config, outbound
from tests.xmpp.test_component_down import carried_payload

pytestmark = pytest.mark.e2e

COUNT = 3000
BOUND = 64
FILLER = "x" * 1000  # ~1.1 KB on the wire per stanza
READ = 256 * 1024  # the most an asyncio transport reads at once
STREAM = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


class RawClient:
    """A c2s client on a plain socket (SASL PLAIN, resource binding, then raw bytes):
    nothing between the test and the wire, and no event loop of its own to slow it."""

    def __init__(self, port: int, user: str, password: str, domain: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.domain = domain
        self.seen = b""
        self._open()
        self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        sasl = "urn:ietf:params:xml:ns:xmpp-sasl"
        self.sock.sendall(f"<auth xmlns='{sasl}' mechanism='PLAIN'>{token}</auth>".encode())
        self._until(b"<success")
        self._open()
        self._until(b"</stream:features>")
        self.sock.sendall(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>flood</resource></bind></iq>"
        )
        self._until(b"</iq>")

    def _open(self) -> None:
        self.seen = b""
        self.sock.sendall(STREAM.format(domain=self.domain).encode())

    def _until(self, marker: bytes) -> None:
        while marker not in self.seen:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.seen!r}")
            self.seen += chunk
        self.seen = self.seen[self.seen.index(marker) :]

    def flood(self, to: str, count: int) -> None:
        stanzas = [
            f"<message type='chat' id='f{n}' to='{to}'><body>{n} {FILLER}</body></message>"
            for n in range(count)
        ]
        for start in range(0, count, 500):
            self.sock.sendall("".join(stanzas[start : start + 500]).encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"</stream:stream>")
        self.sock.close()


class GatedCore:
    """Takes nothing while the gate is shut, then a few messages at a time, slowly."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.slots = asyncio.Semaphore(4)
        self.order: list[int] = []

    async def __call__(self, envelope: Envelope) -> Receipt:
        assert envelope.payload is not None
        self.order.append(int(cpim.parse_body(envelope.payload.body).body.split(b" ")[0]))
        await self.gate.wait()
        async with self.slots:
            await asyncio.sleep(0.001)
        return Receipt(envelope.identity)


class Watched(XmppAdapter):
    """The adapter, noting the most stanzas it ever held for the core."""

    most_pending = 0

    def _on_stanza(self, element: ET.Element) -> None:
        super()._on_stanza(element)
        self.most_pending = max(self.most_pending, self.inbound_pending)


@contextlib.asynccontextmanager
async def serving(
    server: ProsodyServer, core: GatedCore, counts: list[str]
) -> AsyncIterator[Watched]:
    context = AdapterContext(
        gateway_id="gw-test", count=lambda name, **_labels: counts.append(name)
    )
    settings = config(server, inbound_pending_max=BOUND, barrier_timeout=0.3, send_timeout=120)
    adapter = Watched("xmpp", settings, context)
    task = asyncio.create_task(adapter.run(core))
    try:
        await until(adapter.ready, within=10)
        yield adapter
    finally:
        core.gate.set()
        await adapter.stop()
        await asyncio.wait_for(task, 30)


async def test_a_flood_faster_than_the_core_is_held_by_the_server_and_all_delivered(
    prosody: ProsodyServer,
) -> None:
    core = GatedCore()
    counts: list[str] = []
    async with serving(prosody, core, counts) as adapter:
        client = await asyncio.to_thread(
            RawClient, prosody.c2s_port, "carol", "carolpw", prosody.domain
        )
        try:
            await asyncio.to_thread(client.flood, f"bob@{prosody.component}", COUNT)
            await until(lambda: adapter.reading_paused, within=10)
            # a send while reading is paused: its barrier's answer waits unread behind the
            # flood, which must not count as a dead stream (no reconnect)
            sending = asyncio.create_task(adapter.send(outbound(carried_payload(), n=7)))
            await asyncio.sleep(1.0)  # several barrier_timeouts with the core taking nothing
            assert adapter.reading_paused
            assert adapter.ready()
            assert "xmpp_reconnects" not in counts
            # bounded: what one read can bring past the bound, far from the whole flood
            held = adapter.inbound_pending
            slack = READ // len(FILLER)
            assert BOUND <= held <= BOUND + slack
            assert adapter.most_pending <= BOUND + slack
            assert len(core.order) < COUNT  # the rest waits at the server
            core.gate.set()
            await until(lambda: len(core.order) == COUNT, within=60)
            await asyncio.wait_for(sending, 30)
        finally:
            await asyncio.to_thread(client.close)
        assert core.order == list(range(COUNT))  # every stanza, in the sender's order
        assert adapter.most_pending <= BOUND + slack
        assert counts.count("xmpp_reading_paused") >= 2  # paused again after resuming
        assert "xmpp_reconnects" not in counts
        await until(lambda: adapter.inbound_pending == 0)
        assert not adapter.reading_paused
