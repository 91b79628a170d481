"""Kamailio's dispatcher in front of three SIP adapters (one per gateway node): requests
for the gateway's domain are spread over the nodes, a node that stops answering the
OPTIONS probes is taken out and put back when it answers again, and a request that hits
a dead node before the probe noticed goes on to the next node (no loss, no error)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from adapters.contract import AdapterContext
from adapters.sip.adapter import SipAdapter
from adapters.sip.codec import Request
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transport import Peer
from tests.cluster.kamailio import DispatchingKamailio, dispatching_kamailio, node_uri
from tests.cluster.nodes import AdapterNode
from tests.servers.process import free_port

pytestmark = pytest.mark.e2e


class Node(AdapterNode):
    """One gateway node's SIP adapter with a recording ``deliver``."""

    async def start(self, proxy_port: int) -> None:
        config = self.sip_config(proxy_port)
        context = AdapterContext(
            gateway_id=f"gw-{self.port}", logger=logging.getLogger("cpimgw.test.cluster")
        )
        adapter = SipAdapter(f"sip-{self.port}", config, context)
        self.run(adapter)
        for _ in range(1000):
            if adapter.ready():
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the SIP adapter on port {self.port} did not get ready")


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[DispatchingKamailio, list[Node]]]:
    nodes = [Node(free_port("udp")) for _ in range(3)]
    with dispatching_kamailio(
        tmp_path / "kamailio", nodes=[node_uri(n.port) for n in nodes]
    ) as kamailio:
        try:
            for node in nodes:
                await node.start(kamailio.port)
            yield kamailio, nodes
        finally:
            for node in nodes:
                await node.stop()


@contextlib.asynccontextmanager
async def sender() -> AsyncIterator[Endpoint]:
    async def refuse(incoming: Incoming) -> None:
        incoming.respond(403, "Forbidden")

    endpoint = Endpoint(handler=refuse, methods=frozenset())
    await endpoint.listen("UDP", "127.0.0.1", 0)
    try:
        yield endpoint
    finally:
        await endpoint.close()


async def message(endpoint: Endpoint, kamailio: DispatchingKamailio, n: int) -> int:
    uri = f"sip:user{n % 4}@xmpp.test"
    request = Request.build(
        "MESSAGE",
        uri,
        [
            ("From", "<sip:bob@sip.test>;tag=b"),
            ("To", f"<{uri}>"),
            ("Call-ID", f"dispatch-{n}"),
            ("CSeq", "1 MESSAGE"),
            ("Max-Forwards", "70"),
            ("Content-Type", "text/plain"),
        ],
        f"message {n}".encode(),
    )
    response = await endpoint.request(request, Peer("UDP", "127.0.0.1", kamailio.port))
    return response.status


async def until(check: Callable[[], bool], within: float = 15.0) -> None:
    for _ in range(int(within * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not true after {within}s")


async def test_dispatcher_spreads_probes_and_fails_over_across_nodes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (kamailio, nodes), sender() as endpoint:
        uris = [node_uri(n.port) for n in nodes]
        await until(lambda: set(kamailio.states().values()) == {"AP"})
        statuses = [await message(endpoint, kamailio, n) for n in range(30)]
        assert statuses == [202] * 30
        assert [len(n.received) for n in nodes] == [10, 10, 10], "round robin"

        # a node stops: the probes take it out, the others get everything
        await nodes[1].stop()
        await until(lambda: kamailio.states()[uris[1]].startswith("I"))
        before = [len(n.received) for n in nodes]
        statuses = [await message(endpoint, kamailio, n) for n in range(30, 60)]
        assert statuses == [202] * 30
        after = [len(n.received) for n in nodes]
        assert after[1] == before[1]
        assert sum(after) - sum(before) == 30

        # a node dies between two probes: the request that meets it goes to the next node.
        # Probes come every second; if one reaches the dead node before the requests do
        # (a loaded machine), the node is put back and the round tried again.
        sent = 60
        for _ in range(5):
            await nodes[2].stop()
            if kamailio.states()[uris[2]] == "AP":  # not noticed yet
                statuses = await asyncio.gather(
                    *(message(endpoint, kamailio, n) for n in range(sent, sent + 6))
                )
                sent += 6
                assert statuses == [202] * 6
                if "trying the next" in kamailio.log:
                    break
            await nodes[2].start(kamailio.port)
            await until(lambda: kamailio.states()[uris[2]] == "AP")
        assert "trying the next" in kamailio.log

        # back: the probe answers put the nodes in again
        await nodes[1].start(kamailio.port)
        await nodes[2].start(kamailio.port)
        await until(lambda: set(kamailio.states().values()) == {"AP"})
        received = {e.identity for n in nodes for e in n.received}
        assert len(received) == sent, "every message arrived once, whatever node took it"
