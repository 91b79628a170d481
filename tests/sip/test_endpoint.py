"""The asyncio endpoint on loopback: transactions over UDP, TCP and TLS, loss recovery,
bad input, digest. Two real endpoints talk through real sockets (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.sip.codec import Request, parse
from adapters.sip.digest import Credential, DigestClient, DigestServer
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transaction import Timers
from adapters.sip.transport import Peer
from canonical.errors import DeliveryError
from tests import pki
from tests.servers.process import free_port
from tests.sip.relay import LossyUdpRelay

FAST = Timers(t1=0.05, t2=0.4, t4=0.5)


class Metrics(Counter[str]):
    def __call__(self, name: str, **labels: Any) -> None:
        self[name] += 1
        for key, value in labels.items():
            self[f"{name}{{{key}={value}}}"] += 1


def message(uri: str = "sip:bob@127.0.0.1", body: bytes = b"hello", call_id: str = "c1") -> Request:
    return Request.build(
        "MESSAGE",
        uri,
        [
            ("From", "<sip:alice@example.org>;tag=a1"),
            ("To", f"<{uri}>"),
            ("Call-ID", call_id),
            ("CSeq", "1 MESSAGE"),
            ("Max-Forwards", "70"),
            ("Content-Type", "message/cpim"),
        ],
        body,
    )


class Server:
    """An endpoint that records what it got and answers with ``status``."""

    def __init__(self, status: int = 202, digest: DigestServer | None = None) -> None:
        self.received: list[Request] = []
        self.status = status
        self.digest = digest
        self.metrics = Metrics()
        self.endpoint = Endpoint(
            handler=self.handle,
            methods=frozenset({"MESSAGE", "OPTIONS"}),
            timers=FAST,
            count=self.metrics,
        )

    async def handle(self, incoming: Incoming) -> None:
        if self.digest is not None:
            verdict = self.digest.verify(incoming.request, asyncio.get_running_loop().time())
            if not verdict.ok:
                now = asyncio.get_running_loop().time()
                incoming.respond(
                    401, "Unauthorized", extra=self.digest.challenge(now, stale=verdict.stale)
                )
                return
        self.received.append(incoming.request)
        incoming.respond(self.status, "Accepted" if self.status == 202 else "Refused")


async def listening_server() -> Server:
    """A :class:`Server` bound to one port for both UDP and TCP (as a SIP server listens).

    The port comes from :func:`free_port` (outside the kernel's ephemeral range, free
    for both just now); if it is taken meanwhile, a new server tries another.
    """
    for _ in range(20):
        srv = Server()
        port = free_port("udp")
        try:
            await srv.endpoint.listen("UDP", "127.0.0.1", port)
            await srv.endpoint.listen("TCP", "127.0.0.1", port)
        except OSError:
            await srv.endpoint.close()
            continue
        return srv
    raise OSError("no port on 127.0.0.1 free for both UDP and TCP")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await listening_server()
    yield srv
    await srv.endpoint.close()


async def client_endpoint(**kwargs: Any) -> Endpoint:
    async def refuse(incoming: Incoming) -> None:
        incoming.respond(403, "Forbidden")

    ep = Endpoint(handler=refuse, methods=frozenset({"MESSAGE"}), timers=FAST, **kwargs)
    await ep.listen("UDP", "127.0.0.1", 0)
    return ep


async def test_message_over_udp_keeps_the_body_and_gets_the_final_response(server: Server) -> None:
    client = await client_endpoint()
    try:
        body = b"From: <im:a@example.org>\r\n\r\nContent-Type: text/plain\r\n\r\n\xc3\xa9\x00\r\n"
        response = await client.request(message(body=body), server.endpoint.local("UDP"))
        assert response.status == 202
        assert response.to.tag
        assert server.received[0].body == body
        assert server.received[0].top_via.transport == "UDP"
    finally:
        await client.close()


async def test_oversized_request_leaves_udp_for_tcp(server: Server) -> None:
    client = await client_endpoint()
    try:
        body = b"x" * 4000
        response = await client.request(message(body=body), server.endpoint.local("UDP"))
        assert response.status == 202
        assert server.received[0].top_via.transport == "TCP"
        assert server.received[0].body == body
    finally:
        await client.close()


async def test_oversized_request_without_tcp_fails_as_too_large() -> None:
    srv = Server()
    await srv.endpoint.listen("UDP", "127.0.0.1", 0)  # no TCP listener at all
    client = await client_endpoint()
    try:
        with pytest.raises(DeliveryError) as err:
            await client.request(message(body=b"x" * 2000), srv.endpoint.local("UDP"))
        assert err.value.reason == "too-large"
        assert err.value.retryable is False
        assert srv.received == []
    finally:
        await client.close()
        await srv.endpoint.close()


async def test_lost_request_and_lost_response_are_recovered_once(server: Server) -> None:
    target = server.endpoint.local("UDP")
    relay = LossyUdpRelay((target.host, target.port), lambda i, _d, _dir: i == 0)
    port = await relay.start()
    client = await client_endpoint()
    try:
        response = await client.request(message(), Peer("UDP", "127.0.0.1", port))
        assert response.status == 202
        assert [d for d, _ in relay.log.dropped] == ["up", "down"]
        assert len(server.received) == 1  # the retransmission was absorbed
        assert server.metrics["sip_retransmissions_absorbed_total"] >= 1
    finally:
        relay.close()
        await client.close()


async def test_dead_peer_times_out_after_64_t1() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # a port that swallows everything
    client = await client_endpoint()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DeliveryError) as err:
            await client.request(message(), Peer("UDP", "127.0.0.1", sock.getsockname()[1]))
        elapsed = loop.time() - start
        assert err.value.retryable
        assert err.value.reason == "timeout"
        # Timer F (64*T1), not sooner; and not some much later timeout (slack for load)
        assert 64 * FAST.t1 <= elapsed < 64 * FAST.t1 * 3
    finally:
        sock.close()
        await client.close()


def raw_exchange(port: int, data: bytes, *, expect_reply: bool = True) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0 if expect_reply else 0.3)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65536)
        except TimeoutError:
            return None


def raw(method: str, port: int, *extra: str, body: bytes = b"", length: int | None = None) -> bytes:
    lines = [
        f"{method} sip:bob@127.0.0.1:{port} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKraw1;rport",
        "From: <sip:alice@example.org>;tag=r",
        "To: <sip:bob@example.org>",
        "Call-ID: raw@test",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        *extra,
        f"Content-Length: {len(body) if length is None else length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_bad_input_gets_the_right_answer_and_the_endpoint_keeps_serving(
    server: Server,
) -> None:
    port = server.endpoint.local("UDP").port
    run = asyncio.to_thread
    assert await run(raw_exchange, port, b"\x00\xffgarbage", expect_reply=False) is None
    assert await run(raw_exchange, port, b"\r\n\r\n", expect_reply=False) is None
    wrong_length = await run(raw_exchange, port, raw("MESSAGE", port, body=b"abc", length=50))
    assert wrong_length is not None
    assert wrong_length.startswith(b"SIP/2.0 400 ")
    assert b"TRUNCATED" in wrong_length
    unknown = await run(raw_exchange, port, raw("FROBNICATE", port))
    assert unknown is not None
    assert unknown.startswith(b"SIP/2.0 501 ")
    flood = raw("MESSAGE", port, *(f"X-Flood-{i}: y" for i in range(400)))
    flooded = await run(raw_exchange, port, flood)
    assert flooded is not None
    assert flooded.startswith(b"SIP/2.0 400 ")
    no_hops = await run(
        raw_exchange, port, raw("MESSAGE", port).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    )
    assert no_hops is not None
    assert no_hops.startswith(b"SIP/2.0 483 ")
    assert server.metrics["sip_malformed_total"] >= 3
    assert server.received == []
    client = await client_endpoint()
    try:
        assert (await client.request(message(), server.endpoint.local("UDP"))).status == 202
    finally:
        await client.close()


async def test_invite_is_refused_with_405_and_retransmitted_until_ack(server: Server) -> None:
    port = server.endpoint.local("UDP").port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        sock.sendto(raw("INVITE", port), ("127.0.0.1", port))
        first = await asyncio.to_thread(sock.recv, 65536)
        again = await asyncio.to_thread(sock.recv, 65536)  # Timer G retransmission
        assert first == again
        response = parse(first)
        assert response.status == 405  # type: ignore[attr-defined]
        assert "MESSAGE" in (response.get("Allow") or "")


async def test_tls_with_a_trusted_certificate_and_refusal_of_an_untrusted_one(
    tmp_path: Path,
) -> None:
    ca = pki.make_ca()
    crt, key = pki.make_leaf(ca, "127.0.0.1", ips=("127.0.0.1",)).write(tmp_path, "srv")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)
    srv = Server()
    srv.endpoint.transports.tls_server = server_ctx
    tls = await srv.endpoint.listen("TLS", "127.0.0.1", 0)
    trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
    good = await client_endpoint(tls_client=trusting)
    stranger = pki.make_ca("another CA")
    bad = await client_endpoint(
        tls_client=ssl.create_default_context(cadata=stranger.cert_pem.decode())
    )
    try:
        response = await good.request(message(), tls)
        assert response.status == 202
        assert srv.received[0].top_via.transport == "TLS"
        with pytest.raises(DeliveryError) as err:
            await bad.request(message(call_id="c2"), tls)
        assert "not trusted" in str(err.value)
        assert len(srv.received) == 1
    finally:
        await good.close()
        await bad.close()
        await srv.endpoint.close()


@pytest.mark.parametrize("algorithms", [("MD5",), ("SHA-256",), ("SHA-256", "MD5")])
async def test_digest_challenge_is_answered(algorithms: tuple[str, ...]) -> None:
    srv = Server(digest=DigestServer("example.org", b"secret", {"gw": "pw"}, algorithms=algorithms))
    target = await srv.endpoint.listen("UDP", "127.0.0.1", 0)
    client = await client_endpoint()
    try:
        digest = DigestClient([Credential("gw", "pw", "example.org")])
        response = await client.request(message(), target, digest=digest)
        assert response.status == 202
        auth = srv.received[0].get("Authorization") or ""
        assert f"algorithm={algorithms[-1] if len(algorithms) == 1 else 'SHA-256'}" in auth
        assert srv.received[0].cseq.number == 2
        wrong = DigestClient([Credential("gw", "bad", "example.org")])
        refused = await client.request(message(call_id="c3"), target, digest=wrong)
        assert refused.status == 401
    finally:
        await client.close()
        await srv.endpoint.close()


async def test_many_concurrent_transactions_each_complete(server: Server) -> None:
    client = await client_endpoint()
    try:
        target = server.endpoint.local("UDP")
        results = await asyncio.gather(
            *(client.request(message(call_id=f"m{i}"), target) for i in range(300))
        )
        assert {r.status for r in results} == {202}
        assert len({r.call_id for r in results}) == 300
        assert len(server.received) == 300
    finally:
        await client.close()


async def test_bytes_after_content_length_are_discarded_with_a_record(server: Server) -> None:
    port = server.endpoint.local("UDP").port
    data = raw("MESSAGE", port, "Content-Type: text/plain", body=b"abc") + b"TRAILING JUNK"
    answer = await asyncio.to_thread(raw_exchange, port, data)
    assert answer is not None
    assert answer.startswith(b"SIP/2.0 202 ")
    assert server.received[0].body == b"abc"
    assert server.metrics["sip_defects_total{code=EXCESS_BYTES}"] == 1


async def test_byte_identical_retransmission_gets_the_same_answer_without_a_second_request(
    server: Server,
) -> None:
    """A retransmitted datagram is recognised by its bytes (not parsed again): the handler
    sees the request once, and each copy after the answer gets the answer again."""
    target = server.endpoint.local("UDP")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        datagram = bytes(
            message().with_top_via(f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKretx1;rport")
        )
        sock.sendto(datagram, (target.host, target.port))
        first = await asyncio.to_thread(sock.recv, 65536)
        sock.sendto(datagram, (target.host, target.port))
        second = await asyncio.to_thread(sock.recv, 65536)
        # one byte different (another branch): a new transaction, handled anew
        other = datagram.replace(b"z9hG4bKretx1", b"z9hG4bKretx2")
        sock.sendto(other, (target.host, target.port))
        third = await asyncio.to_thread(sock.recv, 65536)
    assert parse(first).status == 202
    assert second == first
    assert parse(third).status == 202
    assert parse(third).top_via.branch == "z9hG4bKretx2"
    assert len(server.received) == 2
    assert server.metrics["sip_retransmissions_absorbed_total{method=MESSAGE}"] == 1
