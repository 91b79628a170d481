"""The gateway's own SIP subscriptions survive the node that made them (docs/scaling.md,
adapters/sip/subscribers.py): three real ``cpimgw run`` nodes on one Redis, Kamailio with
the dispatcher and the presence server of ``sip.test``, a watcher on the testnet plugin's
network (``tests/plugins/cpimgw-testnet``: envelopes over loopback TCP, standing in for the
XMPP side) watching ``sip:bob@sip.test``, whose presence a SIP UA publishes.

The node holding the SIP dialog is killed with SIGKILL and *not* restarted: exactly one
survivor takes the subscription and subscribes again, and the watcher gets bob's next
change. Then that node stops gracefully (SIGTERM): the last node takes it over, and the
watcher gets the change after that. The watcher unsubscribes: the record is gone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from canonical.envelope import Envelope, Operation, Origin, identity_of, to_record
from gateway.demo.servers import gateway
from tests.cluster.kamailio import dispatching_kamailio, node_uri
from tests.cluster.nodes import SipSender, metric, metrics_text, sip_side
from tests.servers.process import ServerProcess, free_port
from tests.servers.redis import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

cpimgw_testnet = pytest.importorskip("cpimgw_testnet", reason="pip install -e the testnet plugin")

WATCHER = "xmpp:alice@xmpp.test"
BOB = "sip:bob@sip.test"
TAKEN = "cpimgw_sip_subscriptions_taken_over_total"


@dataclass
class Node:
    """One ``cpimgw run`` process: the testnet network (the watcher's side) and SIP."""

    name: str
    redis_url: str
    namespace: str
    kamailio_port: int
    sink_port: int
    workdir: Path
    sip_port: int = field(default_factory=lambda: free_port("udp"))
    inbound_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: ServerProcess | None = None

    def config(self) -> str:
        return f"""
[gateway]
id = "gw-subs"

[store]
backend = "redis"
url = "{self.redis_url}"
namespace = "{self.namespace}"

[cluster]
node = "{self.name}"
heartbeat = "300ms"
ttl = "1500ms"
claim_idle = "4s"
recover_interval = "500ms"

[delivery]
initial_backoff = "200ms"
max_backoff = "1s"
send_timeout = "3s"
drain_timeout = "2s"

[adapters.tn]
kind = "testnet"
listen = "127.0.0.1:{self.inbound_port}"
connect = "127.0.0.1:{self.sink_port}"

""" + sip_side(
            sip_port=self.sip_port,
            kamailio_port=self.kamailio_port,
            metrics_port=self.metrics_port,
            xmpp_adapter="tn",
        )

    def start(self) -> Node:
        path = self.workdir / f"{self.name}.toml"
        path.write_text(self.config())
        self.process = gateway(
            self.workdir, path, metrics_port=self.metrics_port, name=self.name, ready_timeout=60.0
        ).start()
        return self

    def taken(self) -> float:
        return metric(metrics_text(self.metrics_port), TAKEN, adapter="sip")


@dataclass
class Watcher:
    """The watcher's network: records what the gateway sends it, answers ok."""

    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (request := await cpimgw_testnet.read_frame(reader)) is not None:
                if "envelope" in request:
                    self.received.append(request["envelope"])
                writer.write(cpimgw_testnet.frame({"seq": request["seq"], "ok": True}))
        writer.close()

    def notes(self, note: str) -> list[dict[str, Any]]:
        """NOTIFYs from bob to the watcher whose document carries ``note``."""
        return [
            e
            for e in self.received
            if e["operation"] == "notify"
            and e["sender"].endswith("bob@sip.test")
            and e["payload"] is not None
            and note.encode() in base64.b64decode(e["payload"]["body"])
        ]


async def send(port: int, operation: Operation, run: str) -> None:
    """The watcher (un)subscribes through the node listening on ``port``."""
    envelope = Envelope(
        operation=operation,
        sender=WATCHER,
        recipient=BOB,
        payload=None,
        identity=identity_of(run, operation.value),
        origin=Origin(adapter="client"),
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(cpimgw_testnet.frame({"seq": 1, "envelope": to_record(envelope)}))
        await writer.drain()
        answer = await cpimgw_testnet.read_frame(reader)
    finally:
        writer.close()
    assert answer is not None
    assert answer["ok"], answer


async def wait_until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cpimgw-sip-subs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def watcher_network(port: int) -> AsyncIterator[Watcher]:
    watcher = Watcher()
    server = await asyncio.start_server(watcher.handle, "127.0.0.1", port)
    try:
        yield watcher
    finally:
        server.close()


async def test_a_killed_nodes_sip_subscription_is_taken_over_by_exactly_one_survivor(
    redis_server: RedisServer, redis_namespace: str, workdir: Path
) -> None:
    sink_port = free_port()
    names = ("n1", "n2", "n3")
    ports = {n: free_port("udp") for n in names}
    redis = Redis.from_url(redis_server.url)
    prefix = f"{{{redis_namespace}}}:"

    async def holder() -> str | None:
        found: Any = await redis.hget(prefix + "sipo", f"sip:alice@xmpp.test\x00{BOB}")
        return None if found is None else str(found.decode())

    with dispatching_kamailio(
        workdir / "kamailio", nodes=[node_uri(p) for p in ports.values()]
    ) as kamailio:
        nodes = {
            n: Node(
                n,
                redis_server.url,
                redis_namespace,
                kamailio.port,
                sink_port,
                workdir,
                sip_port=ports[n],
            )
            for n in names
        }
        bob = await SipSender(kamailio.port).start()
        try:
            async with watcher_network(sink_port) as watcher:
                await asyncio.gather(*(asyncio.to_thread(n.start) for n in nodes.values()))
                assert await bob.publish("before the kill") == 200
                await send(nodes["n1"].inbound_port, Operation.SUBSCRIBE, "subs")
                await wait_until(lambda: watcher.notes("before the kill"), 20, "first NOTIFY")
                first = await wait_until(holder, 5, "the subscription recorded")

                # the node holding the dialog dies without a word, and stays dead
                killed = nodes[first].process
                assert killed is not None
                killed.kill()
                survivors = [n for n in names if n != first]

                async def moved() -> str | None:
                    found = await holder()
                    return found if found in survivors else None

                second = await wait_until(moved, 15, "a survivor took the subscription")
                # the survivor's new dialog: Kamailio's first NOTIFY in it
                await asyncio.sleep(1.0)
                assert await bob.publish("after the kill") == 200
                await wait_until(lambda: watcher.notes("after the kill"), 15, "NOTIFY after kill")
                taken = {n: nodes[n].taken() for n in survivors}
                assert taken == {n: 1.0 if n == second else 0.0 for n in survivors}, taken

                # the new holder stops gracefully: the last node takes the subscription
                stopped = nodes[second].process
                assert stopped is not None
                stopped.stop(timeout=15)
                last = next(n for n in survivors if n != second)
                await wait_until(
                    lambda: _eq(holder(), last), 15, "the last node took the subscription"
                )
                await asyncio.sleep(1.0)
                assert await bob.publish("after the stop") == 200
                await wait_until(lambda: watcher.notes("after the stop"), 15, "NOTIFY after stop")
                assert nodes[last].taken() == 1.0
                assert len(watcher.notes("after the kill")) == 1
                assert len(watcher.notes("after the stop")) == 1

                # the watcher unsubscribes: the record goes
                await send(nodes[last].inbound_port, Operation.UNSUBSCRIBE, "unsubs")
                await wait_until(lambda: _eq(holder(), None), 10, "the record removed")
                assert await redis.hlen(prefix + "sips:" + last) == 0
        finally:
            await bob.close()
            for node in nodes.values():
                if node.process is not None:
                    node.process.stop(timeout=10)
            await redis.aclose()


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
