"""Admission control of the SIP adapter over real sockets on 127.0.0.1: raw UDP and TCP
requests against the gateway core (``gateway.core.Gateway``) on a store made slow on
purpose, delivering to an in-memory network. Past the bound new MESSAGEs get 503 with
Retry-After at once; what was accepted is answered 202 and delivered, once; in-dialog
requests and OPTIONS keep flowing; when the load drops requests are accepted again."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from adapters.contract import AdapterContext
from adapters.memory import MemoryAdapter, MemoryConfig
from adapters.sip.adapter import SipAdapter, SipConfig
from gateway.core import DeliveryPolicy, Gateway
from gateway.routing import Route, RoutingTable
from gateway.security import Rules
from gateway.store import Accepted, Commit
from gateway.store.memory import MemoryStore
from tests.servers.process import free_port
from tests.sip.conftest import Metrics

RETRY_AFTER = 7
_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ")
_CALL_ID = re.compile(rb"\r\nCall-ID: *([^\r]+)\r\n", re.IGNORECASE)
_RETRY = re.compile(rb"\r\nRetry-After: *(\d+)", re.IGNORECASE)


class SlowStore(MemoryStore):
    """A store whose writes wait for ``gate`` and then take ``seconds`` each, one at a
    time: a core with a fixed, small capacity (or none while the gate is shut)."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.gate = asyncio.Event()
        self.gate.set()
        self._one = asyncio.Lock()

    async def commit(self, batch: Commit) -> Accepted:
        await self.gate.wait()
        async with self._one:
            await asyncio.sleep(self.seconds)
            return await super().commit(batch)


@dataclass
class Answer:
    status: int
    retry_after: int | None


@dataclass
class UdpSender(asyncio.DatagramProtocol):
    """A raw SIP UAC over UDP: sends bytes, files every response by Call-ID."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    transport: asyncio.DatagramTransport | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        file(self.answers, data)
        self.changed.set()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def final(self, call_ids: list[str], *, within: float = 20.0) -> None:
        """Wait until each of ``call_ids`` has a final response."""
        async with asyncio.timeout(within):
            while not all(any(a.status >= 200 for a in self.answers.get(c, ())) for c in call_ids):
                self.changed.clear()
                await self.changed.wait()


def file(answers: dict[str, list[Answer]], data: bytes) -> None:
    status, call_id, retry = _STATUS.match(data), _CALL_ID.search(data), _RETRY.search(data)
    assert status is not None, data
    assert call_id is not None, data
    answers.setdefault(call_id.group(1).decode(), []).append(
        Answer(int(status.group(1)), int(retry.group(1)) if retry else None)
    )


def request(
    method: str,
    call_id: str,
    *,
    port: int,
    transport: str = "UDP",
    to_tag: str = "",
    body: bytes = b"",
) -> bytes:
    head = (
        f"{method} sip:carol@xmpp.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:bob@sip.test>;tag=f-{call_id}\r\n"
        f"To: <sip:carol@xmpp.test>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
    )
    if method == "NOTIFY":
        head += "Event: presence\r\nSubscription-State: active;expires=60\r\n"
    if body:
        head += "Content-Type: text/plain\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def message(call_id: str, port: int, transport: str = "UDP") -> bytes:
    return request("MESSAGE", call_id, port=port, transport=transport, body=text(call_id))


def text(call_id: str) -> bytes:
    return f"hello from {call_id}".encode()


@dataclass
class Deployment:
    sip: SipAdapter
    sink: MemoryAdapter
    store: SlowStore
    metrics: Metrics
    uac: UdpSender
    port: int

    def delivered(self) -> list[str]:
        """The Call-IDs whose text reached the in-memory network, in order."""
        found = []
        for envelope in self.sink.sent:
            assert envelope.payload is not None
            match = re.search(rb"hello from ([\w-]+)", envelope.payload.body)
            assert match is not None
            found.append(match.group(1).decode())
        return found

    async def tcp(self, data: bytes) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        finally:
            writer.close()
        answers: dict[str, list[Answer]] = {}
        file(answers, head)
        [[answer]] = answers.values()
        return answer


@pytest.fixture
async def deployment(request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    store = SlowStore(getattr(request, "param", 0.0))
    metrics = Metrics()
    port = free_port("udp")
    config = SipConfig.model_validate(
        {
            "listen": [{"transport": "udp", "port": port}, {"transport": "tcp", "port": port}],
            "proxy": f"sip:127.0.0.1:{free_port('udp')};transport=udp",  # nothing goes out
            "domains": ["xmpp.test"],
            "overload_delay": 0.1,
            "overload_retry_after": RETRY_AFTER,
        }
    )
    sip = SipAdapter("sip", config, AdapterContext(gateway_id="gw", count=metrics))
    sink = MemoryAdapter("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    gateway = Gateway(
        gateway_id="gw",
        adapters={"sip": sip, "xmpp": sink},
        store=store,
        routing=RoutingTable([Route("xmpp.test", "xmpp"), Route("sip.test", "sip")]),
        rules=Rules(rate=0),
        delivery=DeliveryPolicy(initial_backoff=0.01, max_backoff=0.05, drain_timeout=5.0),
    )
    loop = asyncio.get_running_loop()
    transport, uac = await loop.create_datagram_endpoint(
        UdpSender, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port)
    )
    try:
        async with gateway:
            await sip.started()
            yield Deployment(sip, sink, store, metrics, uac, port)
            store.gate.set()
    finally:
        transport.close()


async def test_stalled_core_gets_503_for_new_work_and_answers_what_it_took(
    deployment: Deployment,
) -> None:
    d, uac, port = deployment, deployment.uac, deployment.uac.port
    d.store.gate.clear()  # the store stops taking writes
    taken = message("taken", port)
    uac.send(taken)
    await asyncio.sleep(0.3)  # longer than overload_delay with nothing answered

    refused = [f"refused-{n}" for n in range(10)]
    for call_id in refused:
        uac.send(message(call_id, port))
    await uac.final(refused)
    for call_id in refused:
        assert [(a.status, a.retry_after) for a in uac.answers[call_id]] == [(503, RETRY_AFTER)]
    assert (await d.tcp(message("over-tcp", port, "TCP"))).status == 503

    # the request taken before is not refused when its sender retransmits it: its
    # transaction absorbs the copies until the store answers
    for _ in range(3):
        uac.send(taken)
    # in-dialog requests and OPTIONS are not new work: answered as ever, not 503
    uac.send(request("NOTIFY", "in-dialog", port=port, to_tag="t1"))
    uac.send(request("OPTIONS", "options", port=port))
    await uac.final(["in-dialog", "options"])
    assert [a.status for a in uac.answers["in-dialog"]] == [481]
    assert [a.status for a in uac.answers["options"]] == [200]
    assert "taken" not in uac.answers

    d.store.gate.set()  # the store is back
    await uac.final(["taken"])
    assert {a.status for a in uac.answers["taken"]} == {202}
    uac.send(message(refused[0], port))  # a refused request's retransmission: same answer
    for _ in range(500):
        if len(uac.answers[refused[0]]) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [a.status for a in uac.answers[refused[0]]] == [503, 503]

    # recovery: the load dropped, new requests are taken again, several at once too
    after = [f"after-{n}" for n in range(6)]
    uac.send(message(after[0], port))
    await uac.final(after[:1])
    for call_id in after[1:]:
        uac.send(message(call_id, port))
    await uac.final(after)
    assert all([a.status for a in uac.answers[c]] == [202] for c in after)

    await d.sink.wait_sent(7)
    assert sorted(d.delivered()) == sorted(["taken", *after])  # once each, nothing refused
    assert d.metrics.counts["sip_overload_rejections_total"] == 11
    assert d.metrics.counts["sip_overload_rejections_total{method=MESSAGE}"] == 11


@pytest.mark.parametrize("deployment", [0.02], indirect=True)
async def test_flood_beyond_capacity_is_partly_refused_and_every_accepted_one_delivered(
    deployment: Deployment,
) -> None:
    d, uac, port = deployment, deployment.uac, deployment.uac.port
    # the store takes 50 writes a second; 150 MESSAGEs come at about 330 a second
    flood = [f"flood-{n}" for n in range(150)]
    for call_id in flood:
        uac.send(message(call_id, port))
        await asyncio.sleep(0.003)
    await uac.final(flood, within=30)
    finals = {c: [a for a in uac.answers[c] if a.status >= 200] for c in flood}
    assert all(len(found) == 1 for found in finals.values())  # one answer each
    accepted = [c for c, [a] in finals.items() if a.status == 202]
    refused = [c for c, [a] in finals.items() if a.status == 503]
    assert len(accepted) + len(refused) == len(flood)
    assert accepted
    assert refused
    assert all(finals[c][0].retry_after == RETRY_AFTER for c in refused)
    assert d.metrics.counts["sip_overload_rejections_total"] == len(refused)

    await d.sink.wait_sent(len(accepted), within=30)
    await asyncio.sleep(0.2)  # nothing more comes
    assert sorted(d.delivered()) == sorted(accepted)

    # the flood is over: the next request is accepted
    uac.send(message("calm", port))
    await uac.final(["calm"])
    assert [a.status for a in uac.answers["calm"]] == [202]
