"""A SIP watcher's subscription (RFC 6665 §4.2, the gateway as notifier) served by every
node of a cluster: two SIP adapters, each a gateway node's, keep their watchers' dialogs
in one real Redis behind a real Kamailio dispatcher. The node that did not accept the
SUBSCRIBE notifies the watcher in the dialog; after the accepting node dies without a
word the other one goes on notifying, and the watcher's refresh reaches it and is
answered 200 (not 481)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.contract import AdapterContext
from adapters.sip.adapter import SipAdapter
from adapters.sip.codec import Request, Response
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.subscription import Dialog
from adapters.sip.transport import Peer
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload
from gateway.store.redis import RedisStore
from tests.cluster.kamailio import DispatchingKamailio, dispatching_kamailio, node_uri
from tests.cluster.nodes import AdapterNode
from tests.servers.process import free_port
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e

ADA = "sip:ada@xmpp.test"


def pidf(note: str) -> bytes:
    return (
        f"<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{ADA}'>"
        f"<tuple id='t'><status><basic>open</basic></status><note>{note}</note></tuple>"
        "</presence>"
    ).encode()


@dataclass(kw_only=True)
class Node(AdapterNode):
    """One gateway node's SIP adapter on the shared store, with a recording ``deliver``."""

    name: str
    store: RedisStore

    async def start(self, proxy_port: int) -> None:
        config = self.sip_config(proxy_port, t1=0.1)
        context = AdapterContext(
            gateway_id="gw-cluster", logger=logging.getLogger(f"cpimgw.test.{self.name}")
        )
        adapter = SipAdapter(f"sip-{self.name}", config, context)
        adapter.share(self.store)  # what gateway.cluster.watch does on a shared store
        self.run(adapter)
        await asyncio.wait_for(adapter.started(), 10)

    async def kill(self) -> None:
        """Gone at once, like ``kill -9``: sockets closed, nothing said to anybody."""
        assert self.adapter is not None
        assert self.adapter.endpoint is not None
        if self.adapter._housekeeper is not None:
            self.adapter._housekeeper.cancel()
        for task in list(self.adapter._tasks):
            task.cancel()
        await self.adapter.endpoint.transports.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.adapter = self.task = None


@dataclass
class Watcher:
    """A SIP UA subscribed to ``ADA`` through the proxy; answers every NOTIFY 200."""

    endpoint: Endpoint | None = None
    notifies: list[Request] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, incoming: Incoming) -> None:
        self.notifies.append(incoming.request)
        self.arrived.set()
        incoming.to_tag = incoming.request.to.tag or incoming.to_tag
        incoming.respond(200, "OK")

    async def next_notify(self, count: int, within: float = 10.0) -> Request:
        async with asyncio.timeout(within):
            while len(self.notifies) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.notifies[count - 1]

    def contact(self) -> str:
        assert self.endpoint is not None
        return f"<sip:watcher@127.0.0.1:{self.endpoint.local('UDP').port}>"


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> AsyncIterator[tuple[DispatchingKamailio, list[Node], Watcher]]:
    stores = [RedisStore(redis_server.url, namespace=namespace, node=name) for name in ("a", "b")]
    nodes = [Node(free_port("udp"), name=s.name, store=s) for s in stores]
    watcher = Watcher()
    with dispatching_kamailio(
        tmp_path / "kamailio", nodes=[node_uri(n.port) for n in nodes]
    ) as kamailio:
        try:
            for node in nodes:
                await node.start(kamailio.port)
            watcher.endpoint = Endpoint(handler=watcher.handle, methods=frozenset({"NOTIFY"}))
            await watcher.endpoint.listen("UDP", "127.0.0.1", 0)
            yield kamailio, nodes, watcher
        finally:
            if watcher.endpoint is not None:
                await watcher.endpoint.close()
            for node in nodes:
                await node.stop()
            for store in stores:
                await store.client.aclose()


def subscribe(watcher: Watcher) -> Request:
    return Request.build(
        "SUBSCRIBE",
        ADA,
        [
            ("From", "<sip:watcher@sip.test>;tag=w1"),
            ("To", f"<{ADA}>"),
            ("Call-ID", "watch-ada-1"),
            ("CSeq", "1 SUBSCRIBE"),
            ("Max-Forwards", "70"),
            ("Contact", watcher.contact()),
            ("Event", "presence"),
            ("Accept", "application/pidf+xml"),
            ("Expires", "600"),
        ],
    )


def notify_envelope(note: str, n: int) -> Envelope:
    return Envelope(
        Operation.NOTIFY,
        sender="xmpp:ada@xmpp.test",
        recipient="sip:watcher@sip.test",
        payload=Payload(PIDF, pidf(note)),
        identity=f"{n:032x}",
        origin=Origin("xmpp"),
    )


async def test_any_node_notifies_a_sip_watcher_and_takes_its_refresh_after_a_kill(
    tmp_path: Path, redis_server: RedisServer, redis_namespace: str
) -> None:
    async with cluster(tmp_path, redis_server, redis_namespace) as (kamailio, nodes, watcher):
        assert watcher.endpoint is not None
        proxy = Peer("UDP", "127.0.0.1", kamailio.port)
        accepted: Response = await watcher.endpoint.request(subscribe(watcher), proxy)
        assert accepted.status == 200
        first = await watcher.next_notify(1)
        assert (first.get("Subscription-State") or "").startswith("pending")
        owner = next(
            n for n in nodes if any(e.operation is Operation.SUBSCRIBE for e in n.received)
        )
        other = next(n for n in nodes if n is not owner)
        assert other.adapter is not None

        # the node that did not accept the SUBSCRIBE notifies in the dialog
        sent = await other.adapter.send(notify_envelope("from the other node", 1))
        assert sent.detail == "NOTIFY to 1 watcher(s)"
        second = await watcher.next_notify(2)
        assert second.body == pidf("from the other node")
        assert second.call_id == "watch-ada-1"
        assert second.to.tag == "w1"
        assert second.from_.tag == accepted.to.tag
        assert second.cseq.number > first.cseq.number

        # the accepting node dies; the survivor goes on
        await owner.kill()
        sent = await other.adapter.send(notify_envelope("after the kill", 2))
        assert sent.detail == "NOTIFY to 1 watcher(s)"
        third = await watcher.next_notify(3)
        assert third.body == pidf("after the kill")
        assert third.cseq.number > second.cseq.number
        assert third.contact is not None
        assert third.contact.uri.port == other.port  # refreshes now go to a live node

        # the watcher refreshes in the dialog (RFC 6665 §4.1.2.2): the survivor answers it
        dialog = Dialog(
            call_id="watch-ada-1",
            local_tag="w1",
            local_uri="sip:watcher@sip.test",
            remote_uri=ADA,
            remote_target=third.contact.uri.text,
            remote_tag=accepted.to.tag,
            route_set=tuple(f"<{r.uri.text}>" for r in reversed(accepted.record_routes)),
            local_cseq=1,
        )
        refresh = dialog.request(
            "SUBSCRIBE",
            [("Event", "presence"), ("Expires", "300"), ("Contact", watcher.contact())],
        )
        answer = await watcher.endpoint.request(refresh, proxy)
        assert answer.status == 200, answer.reason
        assert answer.get("Expires") == "300"
        fourth = await watcher.next_notify(4)
        assert (fourth.get("Subscription-State") or "").startswith("active;expires=")
        assert fourth.body == pidf("after the kill")  # the last state, kept in the store
        assert any(e.operation is Operation.SUBSCRIBE for e in other.received)
