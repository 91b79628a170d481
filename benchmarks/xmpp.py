"""XMPP adapter benchmark. Run: ``python -m benchmarks.xmpp [--seconds N] [--count N]
[--no-server]``.

Every rate is printed with its ratio to the baseline measured in the same run: slixmpp
parsing a message stanza into a ``Message`` and serialising it again (what any slixmpp
component pays to see a stanza and write one). Rows:

- mapping only (the pure mapper, as before): wire bytes -> ``decode`` -> ``to_canonical``;
  ``from_canonical`` -> ``encode`` for a foreign message (readable body + carriage) and for
  an XMPP-native payload (the law L2 path);
- the shell's real per-stanza paths, without the network: *inbound* = the stream parser's
  element (``ET.fromstring`` stands in for slixmpp's ``XMLPullParser``) -> the component's
  dispatch -> size check -> mapping -> envelope (``cpim`` payload built), everything but the
  core's ``deliver``; *outbound* = envelope -> stanzas -> the bytes ``send()`` queues for
  the socket;
- through a real Prosody on loopback: outbound ``send()`` confirmed by the ping barrier until
  a client received the last message; inbound a client's messages until the adapter handed
  the last one to ``deliver``. Client, adapter and Prosody share the machine (and the
  client shares the adapter's process and event loop), so these are lower bounds.

Rates are the best of several rounds (a shared machine slows every path alike).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from slixmpp import Message

from adapters.contract import AdapterContext, Receipt
from adapters.xmpp.adapter import XmppAdapter, XmppConfig, _Component
from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import XmppMapper
from adapters.xmpp.stanza import serialize
from canonical import cpim
from canonical.envelope import Envelope, Operation, Origin, Payload
from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import User

COMPONENT = "sip.xmpp.test"
MAPPER = XmppMapper(AddressMap(COMPONENT, {COMPONENT: "sip:sip.test"}))
STANZA = (
    b"<message from='alice@xmpp.test/phone' to='bob@sip.xmpp.test' id='m-1' type='chat'>"
    b"<body>Gr\xc3\xbc\xc3\x9fe, a message of ordinary length for the benchmark \xe2\x9c\x93</body>"
    b"<request xmlns='urn:xmpp:receipts'/><active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"<origin-id xmlns='urn:xmpp:sid:0' id='o-1'/></message>"
)
#: The same stanza as it arrives on the component stream (default namespace of the stream).
STREAM_STANZA = STANZA.replace(b"<message ", b"<message xmlns='jabber:component:accept' ", 1)

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
NATIVE = MAPPER.to_canonical(MAPPER.decode(STANZA), origin=Origin("xmpp"), received_at=0.0).value


def rates(
    paths: dict[str, Callable[[], object]], seconds: float, rounds: int = 8
) -> dict[str, float]:
    """Calls per second of each path: the paths take turns for ``rounds`` rounds of
    ``seconds / rounds`` each, and each keeps its best round, so a burst of load from other
    work on the machine slows one round of every path rather than all rounds of one."""
    best = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for name, fn in paths.items():
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds:
                for _ in range(50):
                    fn()
                n += 50
            best[name] = max(best[name], n / elapsed)
    return best


def baseline() -> None:
    """slixmpp: parse the stanza bytes into a Message and serialise it again."""
    Message(xml=ET.fromstring(STANZA)).__str__()


def decode_and_map() -> None:
    """The pure mapper: stanza bytes -> element -> canonical envelope (+ payload bytes)."""
    MAPPER.to_canonical(MAPPER.decode(STANZA), origin=Origin("xmpp"), received_at=0.0)


def foreign_out() -> None:
    """The pure mapper: canonical envelope -> stanza (readable body + carriage) -> bytes."""
    MAPPER.encode(MAPPER.from_canonical(FOREIGN).value)


def native_out() -> None:
    """The pure mapper: an XMPP-native payload back to its stanza (law L2, self-checked)."""
    MAPPER.encode(MAPPER.from_canonical(NATIVE).value)


def shell_paths() -> tuple[Callable[[], object], Callable[[], object]]:
    """The adapter's inbound and outbound per-stanza work, on an unconnected component."""
    config = XmppConfig.model_validate(
        {"component": COMPONENT, "secret": "x", "domain_map": {COMPONENT: "sip:sip.test"}}
    )
    adapter = XmppAdapter("xmpp", config, AdapterContext())
    component = _Component(config, adapter._map_inbound)
    spawn = component._spawn_event

    def inbound() -> None:
        spawn(ET.fromstring(STREAM_STANZA))

    def outbound() -> None:
        b"".join(serialize(s) for s in adapter.mapper.stanzas(FOREIGN).value)

    return inbound, outbound


async def run_client(jid: str, password: str, port: int, count: int, component: str) -> None:
    """The XMPP user of the Prosody rows, in a process of its own (``--client``): logs in,
    prints ``ready``; prints ``received`` once ``count`` messages from the component have
    arrived; on ``send`` (stdin) writes ``count`` messages to the component; exits on EOF."""
    user = User(jid, password)
    await user.login(port)
    got = 0
    all_in = asyncio.Event()

    def on_message(stanza: Message) -> None:
        nonlocal got
        if str(stanza["from"]).endswith(component):
            got += 1
            if got == count:
                all_in.set()

    user.add_event_handler("message", on_message)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await all_in.wait()
    print("received", flush=True)
    await reader.readline()  # "send"
    stanzas = [
        f"<message to='bob@{component}' id='in-{i}' type='chat'>"
        f"<body>inbound message {i} of ordinary length for the benchmark</body></message>"
        for i in range(count)
    ]
    for i in range(0, count, 100):
        user.send_raw("".join(stanzas[i : i + 100]))
        await asyncio.sleep(0)
    await reader.read()  # until the parent closes stdin
    await user.logout()


async def through_prosody(count: int) -> tuple[float, float]:
    """(outbound, inbound) messages per second through a real Prosody, the user's client in
    a process of its own: outbound from the first ``send()`` until the client has received
    the last message; inbound from the client's first write until ``deliver`` got the last."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ProsodyServer(Path(tmp))
        server.register("alice", "alicepw")
        server.start()
        client: asyncio.subprocess.Process | None = None
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
            delivered = 0
            all_in = asyncio.Event()

            async def deliver(envelope: Envelope) -> Receipt:
                nonlocal delivered
                delivered += 1
                if delivered == count:
                    all_in.set()
                return Receipt(envelope.identity)

            task = asyncio.create_task(adapter.run(deliver))
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.xmpp",
                "--client",
                f"alice@{server.domain}/bench",
                "alicepw",
                str(server.c2s_port),
                str(count),
                server.component,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert client.stdin is not None
            assert client.stdout is not None
            if (await asyncio.wait_for(client.stdout.readline(), 30)).strip() != b"ready":
                raise RuntimeError("the benchmark client could not log in")
            while not adapter.ready():  # noqa: ASYNC110 - polling the shell's readiness
                await asyncio.sleep(0.02)
            start = time.perf_counter()
            sends = [adapter.send(FOREIGN.replace(identity=f"{i:032x}")) for i in range(count)]
            await asyncio.gather(*sends)
            await asyncio.wait_for(client.stdout.readline(), 120)  # "received"
            outbound = count / (time.perf_counter() - start)
            start = time.perf_counter()
            client.stdin.write(b"send\n")
            await asyncio.wait_for(all_in.wait(), 120)
            inbound = count / (time.perf_counter() - start)
            client.stdin.close()
            await asyncio.wait_for(client.wait(), 10)
            await adapter.stop()
            await asyncio.wait_for(task, 10)
            return outbound, inbound
        finally:
            if client is not None and client.returncode is None:
                client.kill()
                await client.wait()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measured path")
    parser.add_argument("--count", type=int, default=5000, help="messages through Prosody")
    parser.add_argument("--no-server", action="store_true", help="skip the Prosody rows")
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)  # the user's process
    args = parser.parse_args()
    if args.client:
        jid, password, port, count, component = args.client
        asyncio.run(run_client(jid, password, int(port), int(count), component))
        return
    inbound, outbound = shell_paths()
    paths: dict[str, Callable[[], object]] = {
        "slixmpp parse + serialise (baseline)": baseline,
        "mapper: bytes -> decode -> to_canonical": decode_and_map,
        "mapper: from_canonical -> encode (foreign, carriage)": foreign_out,
        "mapper: from_canonical -> encode (native, L2)": native_out,
        "shell inbound: element -> dispatch -> envelope": inbound,
        "shell outbound: envelope -> stanza bytes queued": outbound,
    }
    measured = rates(paths, args.seconds)
    base = measured["slixmpp parse + serialise (baseline)"]
    for name, r in measured.items():
        print(f"{name:58s}: {r:9.0f} /s  ratio {r / base:5.2f}")
    if not args.no_server:
        out, into = asyncio.run(through_prosody(args.count))
        print(f"{'through Prosody, outbound (send() confirmed, client got it)':58s}: {out:9.0f} /s")
        print(f"{'through Prosody, inbound (client -> deliver())':58s}: {into:9.0f} /s")


if __name__ == "__main__":
    main()
