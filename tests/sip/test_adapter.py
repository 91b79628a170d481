"""The SIP adapter on loopback against a SIP peer of our own stack (a real endpoint on real
sockets): ordering per destination, identity on resend, temporary vs permanent failures,
failure reports, server-side digest, bad input, and graceful stop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.contract import load
from adapters.sip.adapter import SipAdapter, SipConfig
from adapters.sip.codec import Request
from adapters.sip.digest import Credential, DigestClient
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transaction import Timers
from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, GatewayError, Reason
from tests.servers.process import free_port
from tests.sip.conftest import Gateway, running

FAST = Timers(t1=0.05, t2=0.4, t4=0.5)
BODY = (
    b"From: <im:alice@xmpp.test>\r\nTo: <im:bob@sip.test>\r\n\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
)

Answer = Callable[[Incoming], Awaitable[None]]


@dataclass
class Peer:
    """The proxy/UA side: records requests and answers with ``answer``."""

    answer: Answer | None = None
    received: list[Request] = field(default_factory=list)
    endpoint: Endpoint | None = None

    async def handle(self, incoming: Incoming) -> None:
        self.received.append(incoming.request)
        if self.answer is not None:
            await self.answer(incoming)
        else:
            incoming.respond(200, "OK")


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    p.endpoint = Endpoint(
        handler=p.handle, methods=frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY"}), timers=FAST
    )
    await p.endpoint.listen("UDP", "127.0.0.1", 0)
    yield p
    await p.endpoint.close()


def config(peer: Peer, **overrides: Any) -> SipConfig:
    assert peer.endpoint is not None
    port = free_port("udp")
    values: dict[str, Any] = {
        "listen": [{"transport": "udp", "port": port}, {"transport": "tcp", "port": port}],
        "proxy": f"sip:127.0.0.1:{peer.endpoint.local('UDP').port};transport=udp",
        "domains": ["xmpp.test"],
        "t1": 0.05,
        "t2": 0.4,
        "t4": 0.5,
    }
    values.update(overrides)
    return SipConfig.model_validate(values)


def envelope(recipient: str, identity: str, **extra: Any) -> Envelope:
    return Envelope(
        Operation.MESSAGE,
        sender="xmpp:alice@xmpp.test",
        recipient=recipient,
        payload=Payload(CPIM, BODY),
        identity=identity,
        origin=Origin("xmpp", reply_to="xmpp:alice@xmpp.test"),
        **extra,
    )


def test_the_adapter_loads_through_its_entry_point() -> None:
    assert load("sip") is SipAdapter
    sample = SipAdapter.sample()
    assert isinstance(sample.config, SipConfig)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="proxy"):
        SipConfig.model_validate({"proxy": "http://x", "domains": ["a"]})
    with pytest.raises(ValueError, match="domains"):
        SipConfig.model_validate({"proxy": "sip:127.0.0.1", "domains": []})


async def test_one_outstanding_message_per_destination_many_in_parallel(peer: Peer) -> None:
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    overall = {"now": 0, "peak": 0}

    async def slow(incoming: Incoming) -> None:
        uri = incoming.request.uri
        active[uri] = active.get(uri, 0) + 1
        overall["now"] += 1
        peak[uri] = max(peak.get(uri, 0), active[uri])
        overall["peak"] = max(overall["peak"], overall["now"])
        await asyncio.sleep(0.05)
        active[uri] -= 1
        overall["now"] -= 1
        incoming.respond(200, "OK")

    peer.answer = slow
    async with running(config(peer)) as gw:
        sends = [
            gw.adapter.send(envelope(f"sip:user{i % 4}@sip.test", f"{i:032x}")) for i in range(16)
        ]
        results = await asyncio.gather(*sends)
    assert len(results) == 16
    assert set(peak.values()) == {1}  # RFC 3428 §8
    assert overall["peak"] == 4  # the four destinations proceed side by side


async def test_resend_carries_the_same_call_id(peer: Peer) -> None:
    async with running(config(peer)) as gw:
        env = envelope("sip:bob@sip.test", "d" * 32)
        await gw.adapter.send(env)
        await gw.adapter.send(env)
    assert [r.call_id for r in peer.received] == [f"{'d' * 32}@gw-test"] * 2


async def test_temporary_failure_is_retryable_with_retry_after(peer: Peer) -> None:
    async def busy(incoming: Incoming) -> None:
        incoming.respond(503, "Service Unavailable", extra=[("Retry-After", "17")])

    peer.answer = busy
    async with running(config(peer)) as gw:
        with pytest.raises(DeliveryError) as err:
            await gw.adapter.send(envelope("sip:bob@sip.test", "e" * 32))
    assert (err.value.retryable, err.value.retry_after) == (True, 17.0)


async def test_silent_peer_is_a_retryable_timeout() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = free_port("udp")
    cfg = SipConfig.model_validate(
        {
            "listen": [{"transport": "udp", "port": port}],
            "proxy": f"sip:127.0.0.1:{sink.getsockname()[1]}",
            "domains": ["xmpp.test"],
            "t1": 0.02,
        }
    )
    try:
        async with running(cfg) as gw:
            with pytest.raises(DeliveryError) as err:
                await gw.adapter.send(envelope("sip:bob@sip.test", "f" * 32))
        assert (err.value.reason, err.value.retryable) == (Reason.TIMEOUT, True)
    finally:
        sink.close()


async def test_report_is_an_imdn_when_negative_delivery_was_asked(peer: Peer) -> None:
    asked = Envelope(
        Operation.MESSAGE,
        sender="sip:bob@sip.test",
        recipient="xmpp:carol@xmpp.test",
        payload=Payload(CPIM, BODY),
        identity="1" * 32,
        origin=Origin("sip", reply_to="sip:bob@sip.test"),
        received_at=1700000000.0,
        attributes={
            "imdn.message-id": "Msg-42",
            "imdn.disposition-notification": "positive-delivery, negative-delivery",
        },
    )
    async with running(config(peer)) as gw:
        await gw.adapter.report(asked, GatewayError("gone", reason=Reason.UNKNOWN_DESTINATION))
        await gw.adapter.report(
            asked.replace(attributes={}), GatewayError("busy", reason=Reason.UNAVAILABLE)
        )
        imdn, text = peer.received
        assert imdn.uri == "sip:bob@sip.test"
        assert imdn.from_.uri.address_of_record == "sip:carol@xmpp.test"
        body = cpim.parse_body(imdn.body, strict=True)
        assert body.content_type == "message/imdn+xml"
        assert b"<message-id>Msg-42</message-id>" in body.body
        assert b"<failed/>" in body.body
        assert text.get("Content-Type") == "text/plain;charset=UTF-8"
        assert text.from_.uri.address_of_record == "sip:postmaster@xmpp.test"
        for notice, reason in ((imdn, Reason.UNKNOWN_DESTINATION), (text, Reason.UNAVAILABLE)):
            found = gw.adapter.mapper.error_from_native(notice)
            assert found is not None
            assert found.reason is reason


@dataclass
class Client:
    endpoint: Endpoint

    async def message(self, gw: Gateway, uri: str, **kw: Any) -> int:
        request = Request.build(
            "MESSAGE",
            uri,
            [
                ("From", "<sip:bob@sip.test>;tag=b"),
                ("To", f"<{uri}>"),
                ("Call-ID", kw.pop("call_id", "in-1")),
                ("CSeq", "1 MESSAGE"),
                ("Max-Forwards", "70"),
                ("Content-Type", "text/plain"),
            ],
            kw.pop("body", b"hello"),
        )
        response = await self.endpoint.request(request, gw.adapter.local("UDP"), **kw)
        return response.status


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async def refuse(incoming: Incoming) -> None:
        incoming.respond(403, "Forbidden")

    ep = Endpoint(handler=refuse, methods=frozenset(), timers=FAST)
    await ep.listen("UDP", "127.0.0.1", 0)
    yield Client(ep)
    await ep.close()


async def test_inbound_message_for_a_foreign_domain_is_404(peer: Peer, client: Client) -> None:
    async with running(config(peer)) as gw:
        assert await client.message(gw, "sip:carol@elsewhere.test") == 404
        assert await client.message(gw, "sip:carol@xmpp.test", call_id="in-2") == 202
        assert len(gw.recorder.envelopes) == 1


async def test_server_digest_challenges_inbound_requests(peer: Peer, client: Client) -> None:
    auth = {"realm": "xmpp.test", "users": {"bob": "pw"}}
    async with running(config(peer, server_auth=auth)) as gw:
        assert await client.message(gw, "sip:carol@xmpp.test") == 401
        digest = DigestClient([Credential("bob", "pw")])
        assert await client.message(gw, "sip:carol@xmpp.test", call_id="a2", digest=digest) == 202
        assert gw.recorder.envelopes[0].sender == "sip:bob@sip.test"


async def test_unknown_dialogs_get_481_and_options_lists_what_is_served(
    peer: Peer, client: Client
) -> None:
    async with running(config(peer)) as gw:
        notify = Request.build(
            "NOTIFY",
            "sip:cpimgw@127.0.0.1",
            [
                ("From", "<sip:bob@sip.test>;tag=x"),
                ("To", "<sip:alice@xmpp.test>;tag=nope"),
                ("Call-ID", "no-such-dialog"),
                ("CSeq", "1 NOTIFY"),
                ("Event", "presence"),
                ("Subscription-State", "active"),
            ],
        )
        response = await client.endpoint.request(notify, gw.adapter.local("UDP"))
        assert response.status == 481
        options = Request.build(
            "OPTIONS",
            "sip:cpimgw@127.0.0.1",
            [
                ("From", "<sip:bob@sip.test>;tag=x"),
                ("To", "<sip:cpimgw@127.0.0.1>"),
                ("Call-ID", "o1"),
                ("CSeq", "1 OPTIONS"),
            ],
        )
        response = await client.endpoint.request(options, gw.adapter.local("UDP"))
        assert response.status == 200
        assert "MESSAGE" in (response.get("Allow") or "")


async def test_garbage_is_counted_and_the_adapter_keeps_serving(peer: Peer, client: Client) -> None:
    async with running(config(peer)) as gw:
        port = gw.adapter.local("UDP").port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for junk in (b"\x16\x03\x01garbage", b"NOTSIP\r\n\r\n", b"\xff" * 3000):
                sock.sendto(junk, ("127.0.0.1", port))
        tcp = socket.create_connection(("127.0.0.1", port))
        tcp.sendall(b"MESSAGE sip:x@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")
        await asyncio.sleep(0.2)
        tcp.close()
        assert await client.message(gw, "sip:carol@xmpp.test") == 202
        assert gw.metrics.counts["sip_malformed_total"] >= 4


async def test_stop_answers_requests_in_flight(peer: Peer, client: Client) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    async with running(config(peer)) as gw:
        original = gw.recorder.__call__

        async def slow(env: Envelope) -> Any:
            started.set()
            await release.wait()
            return await original(env)

        gw.adapter._deliver = slow
        pending = asyncio.create_task(client.message(gw, "sip:carol@xmpp.test"))
        await started.wait()
        stopping = asyncio.create_task(gw.adapter.stop())
        await asyncio.sleep(0.05)
        release.set()
        await stopping
        assert await pending == 202
        assert len(gw.recorder.envelopes) == 1


async def test_fetch_subscription_gets_one_notify_with_the_core_answer(peer: Peer) -> None:
    assert peer.endpoint is not None
    async with running(config(peer)) as gw:
        contact = peer.endpoint.local("UDP")
        fetch = Request.build(
            "SUBSCRIBE",
            "sip:carol@xmpp.test",
            [
                ("From", "<sip:watcher@sip.test>;tag=w1"),
                ("To", "<sip:carol@xmpp.test>"),
                ("Call-ID", "fetch-1"),
                ("CSeq", "1 SUBSCRIBE"),
                ("Contact", f"<sip:watcher@127.0.0.1:{contact.port}>"),
                ("Event", "presence"),
                ("Expires", "0"),
            ],
        )
        response = await peer.endpoint.request(fetch, gw.adapter.local("UDP"))
        assert (response.status, response.get("Expires")) == (200, "0")
        sub = await gw.recorder.wait_for(lambda e: e.operation is Operation.SUBSCRIBE)
        assert sub.duration == 0
        pidf = b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:carol@xmpp.test'/>"
        await gw.adapter.send(
            Envelope(
                Operation.NOTIFY,
                sender="xmpp:carol@xmpp.test",
                recipient="sip:watcher@sip.test",
                payload=Payload("application/pidf+xml", pidf),
                identity="9" * 32,
                origin=Origin("xmpp"),
            )
        )
        notifies = [r for r in peer.received if r.method == "NOTIFY"]
        assert len(notifies) == 1
        assert (notifies[0].get("Subscription-State") or "").startswith("terminated")
        assert notifies[0].body == pidf
        assert notifies[0].call_id == "fetch-1"


async def test_watcher_refresh_and_unsubscribe_in_the_dialog(peer: Peer) -> None:
    assert peer.endpoint is not None
    async with running(config(peer)) as gw:
        contact = peer.endpoint.local("UDP")

        def subscribe(cseq: int, expires: int, to_tag: str | None) -> Request:
            to = "<sip:carol@xmpp.test>" + (f";tag={to_tag}" if to_tag else "")
            return Request.build(
                "SUBSCRIBE",
                "sip:carol@xmpp.test",
                [
                    ("From", "<sip:watcher@sip.test>;tag=w2"),
                    ("To", to),
                    ("Call-ID", "refresh-1"),
                    ("CSeq", f"{cseq} SUBSCRIBE"),
                    ("Contact", f"<sip:watcher@127.0.0.1:{contact.port}>"),
                    ("Event", "presence"),
                    ("Expires", str(expires)),
                ],
            )

        first = await peer.endpoint.request(subscribe(1, 600, None), gw.adapter.local("UDP"))
        assert first.status == 200
        tag = first.to.tag
        refreshed = await peer.endpoint.request(subscribe(2, 300, tag), gw.adapter.local("UDP"))
        assert (refreshed.status, refreshed.get("Expires")) == (200, "300")
        stale = await peer.endpoint.request(subscribe(2, 300, tag), gw.adapter.local("UDP"))
        assert stale.status == 500  # CSeq not above the last one (RFC 3261 §12.2.2)
        left = await peer.endpoint.request(subscribe(3, 0, tag), gw.adapter.local("UDP"))
        assert left.status == 200
        await gw.recorder.wait_for(lambda e: e.operation is Operation.UNSUBSCRIBE)
        gone = await peer.endpoint.request(subscribe(4, 600, tag), gw.adapter.local("UDP"))
        assert gone.status == 481
        for _ in range(500):  # the terminated NOTIFY follows the 481
            states = [
                r.get("Subscription-State") or "" for r in peer.received if r.method == "NOTIFY"
            ]
            if states and states[-1].startswith("terminated"):
                break
            await asyncio.sleep(0.01)
        assert states[0].startswith("pending")
        assert states[-1] == "terminated;reason=timeout"
        assert [e.operation for e in gw.recorder.envelopes] == [
            Operation.SUBSCRIBE,
            Operation.SUBSCRIBE,
            Operation.UNSUBSCRIBE,
        ]
