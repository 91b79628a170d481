"""XMPP adapter benchmark: stanza <-> canonical mapping against slixmpp's own stanza
parse + serialise (the baseline, same run, same stanzas), and messages per second
through a real Prosody (component -> server -> one client). Run: python -m benchmarks.xmpp"""

from __future__ import annotations

import asyncio
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from slixmpp import Message

from adapters.contract import AdapterContext, Receipt
from adapters.xmpp.adapter import XmppAdapter, XmppConfig
from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import XmppMapper
from canonical import cpim
from canonical.envelope import Envelope, Operation, Origin, Payload
from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import User

MAPPER = XmppMapper(AddressMap("sip.xmpp.test", {"sip.xmpp.test": "sip:sip.test"}))
STANZA = (
    b"<message from='alice@xmpp.test/phone' to='bob@sip.xmpp.test' id='m-1' type='chat'>"
    b"<body>Gr\xc3\xbc\xc3\x9fe, a message of ordinary length for the benchmark \xe2\x9c\x93</body>"
    b"<request xmlns='urn:xmpp:receipts'/><active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"<origin-id xmlns='urn:xmpp:sid:0' id='o-1'/></message>"
)


def rate(fn: object, seconds: float = 1.0) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    call = fn  # type: ignore[assignment]
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            call()  # type: ignore[operator]
        n += 50
    return n / elapsed


def baseline() -> None:
    """slixmpp: parse the stanza bytes into a Message and serialise it again."""
    Message(xml=ET.fromstring(STANZA)).__str__()


def inbound() -> None:
    """cpimgw: stanza bytes -> element -> canonical envelope (+ payload bytes)."""
    MAPPER.to_canonical(MAPPER.decode(STANZA), origin=Origin("xmpp"), received_at=0.0)


FOREIGN = Envelope(
    Operation.MESSAGE,
    "sip:ada@sip.test",
    "xmpp:alice@xmpp.test",
    Payload(
        "message/cpim",
        bytes(
            cpim.build(
                sender="sip:ada@sip.test",
                to=["im:alice@xmpp.test"],
                content_type="text/plain; charset=utf-8",
                body="Grüße from SIP, a message of ordinary length ✓".encode(),
            )
        ),
    ),
    "0" * 32,
    Origin("sip"),
)


def outbound() -> None:
    """cpimgw: canonical envelope -> stanza (readable body + carriage) -> bytes."""
    MAPPER.encode(MAPPER.from_canonical(FOREIGN).value)


def native_back() -> None:
    """cpimgw: an XMPP-native payload back to its stanza (the law L2 path, round-trip checked)."""
    MAPPER.encode(MAPPER.from_canonical(NATIVE).value)


NATIVE = MAPPER.to_canonical(MAPPER.decode(STANZA), origin=Origin("xmpp"), received_at=0.0).value


async def through_prosody(count: int = 2000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = ProsodyServer(Path(tmp))
        server.register("alice", "alicepw")
        server.start()
        try:
            cfg = XmppConfig.model_validate(
                {
                    "port": server.component_port,
                    "component": server.component,
                    "secret": server.secret,
                    "domain_map": {server.component: "sip:sip.test"},
                    "domains": [server.domain],
                }
            )
            adapter = XmppAdapter("xmpp", cfg, AdapterContext())

            async def deliver(env: Envelope) -> Receipt:
                return Receipt(env.identity)

            task = asyncio.create_task(adapter.run(deliver))
            alice = User("alice@xmpp.test/bench", "alicepw")
            await alice.login(server.c2s_port)
            while not adapter.ready():  # noqa: ASYNC110 - polling the shell's readiness
                await asyncio.sleep(0.02)
            start = time.perf_counter()
            sends = [adapter.send(FOREIGN.replace(identity=f"{i:032x}")) for i in range(count)]
            await asyncio.gather(*sends)
            await alice.wait_for(
                lambda s: s.name == "message" and s["id"] == f"{count - 1:032x}", wait=120
            )
            elapsed = time.perf_counter() - start
            await alice.logout()
            await adapter.stop()
            await asyncio.wait_for(task, 10)
            return count / elapsed
        finally:
            server.stop()


def main() -> None:
    base = rate(baseline)
    print(f"slixmpp parse+serialise (baseline): {base:10.0f} stanzas/s")
    for name, fn in (
        ("stanza -> canonical", inbound),
        ("canonical -> stanza (foreign, carriage)", outbound),
        ("canonical -> stanza (native, L2)", native_back),
    ):
        r = rate(fn)
        print(f"{name:40s}: {r:10.0f} /s  ratio to baseline {r / base:5.2f}")
    mps = asyncio.run(through_prosody())
    print(f"through Prosody (send() confirmed by ping barrier, client received): {mps:8.0f} msg/s")
    print(f"ratio of Prosody throughput to baseline mapping rate: {mps / base:5.3f}")


if __name__ == "__main__":
    main()
