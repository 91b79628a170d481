"""Limits through ``cpimgw run`` with Prosody and Kamailio: oversized messages, header floods,
subscription floods and slow clients are refused with the right error, and the gateway's
resources stay bounded (RSS and open file descriptors of its process are measured).

The stack runs with ``[security] max_size = 100000`` (below Prosody's own stanza limit, so
the gateway's check is the one tested), ``rate = 5`` and ``burst = 10`` per sender.
XMPP error conditions are read from the stanza's XML (slixmpp does not know
``policy-violation``, RFC 6120 §8.3.3.12).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from adapters.sip.codec import Request, Response, parse
from canonical import cpim, xmldoc
from canonical.errors import ParseError, Reason
from canonical.policy import Policy
from tests.e2e.stack import (
    API_BOT,
    API_TOKEN,
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    Stack,
    fault_stack,
    sip_ua,
)
from tests.faults.figures import record
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

MAX_SIZE = 100_000
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fault_stack(
        tmp_path_factory.mktemp("limits"), max_size=MAX_SIZE, rate=5.0, burst=10.0
    ) as s:
        yield s


def condition_of(stanza: Any) -> str:
    """The defined condition of an error stanza (RFC 6120 §8.3.3), from its XML."""
    for error in stanza.xml:
        if error.tag.endswith("}error"):
            for child in error:
                if child.tag.startswith(STANZAS) and not child.tag.endswith("}text"):
                    return str(child.tag[len(STANZAS) :])
    return ""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


def sip_request(method: str, uri: str, sender: str, body: bytes = b"", **extra: str) -> bytes:
    call_id = uuid.uuid4().hex
    headers = [
        ("Via", f"SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{call_id[:12]}"),
        ("From", f"<{sender}>;tag={call_id[:6]}"),
        ("To", f"<{uri}>"),
        ("Call-ID", call_id),
        ("CSeq", f"1 {method}"),
        ("Max-Forwards", "70"),
        *extra.items(),
    ]
    if body:
        headers.append(("Content-Type", "text/plain"))
    return bytes(Request.build(method, uri, [(k.replace("_", "-"), v) for k, v in headers], body))


async def sip_over_tcp(port: int, data: bytes, within: float = 10.0) -> int | None:
    """Send one request over a fresh TCP connection; the final status, or None when the
    gateway closed the connection without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        buffer = b""
        async with asyncio.timeout(within):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return None
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    message = parse(head + b"\r\n\r\n")
                    buffer = rest
                    if isinstance(message, Response) and message.status >= 200:
                        return message.status
    finally:
        writer.close()


def test_an_object_over_the_size_limit_is_too_large_not_malformed() -> None:
    # limits-oversized: a message/cpim body past max_size was refused 400 by the HTTP API
    # (POLICY_MESSAGE_TOO_LARGE carried the default bad-request reason); it is 413 now
    policy = Policy(max_message_size=100)
    with pytest.raises(ParseError) as caught:
        cpim.parse_body(
            b"From: <im:a@b.c>\r\n\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100, policy=policy
        )
    assert caught.value.code == "POLICY_MESSAGE_TOO_LARGE"
    assert caught.value.reason is Reason.TOO_LARGE
    with pytest.raises(ParseError) as caught:
        xmldoc.parse_xml(b"<a>" + b"x" * 100 + b"</a>", policy=policy)
    assert caught.value.code == "XML_TOO_LARGE"
    assert caught.value.reason is Reason.TOO_LARGE


async def test_oversized_objects_are_refused_on_every_leg(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    big = b"x" * (MAX_SIZE + 1)
    results: dict[str, Any] = {}
    # HTTP API: past the gateway's max_size
    async with aiohttp.ClientSession() as session:
        body = (
            f"From: <{API_BOT}>\r\nTo: <sip:bob@{SIP_DOMAIN}>\r\n\r\n"
            "Content-Type: text/plain\r\n\r\n"
        )
        async with session.post(
            f"http://127.0.0.1:{gw.settings.http_port}/v1/messages",
            data=body.encode() + big,
            headers={
                "Authorization": f"Bearer {API_TOKEN}",
                "Cpimgw-To": f"sip:bob@{SIP_DOMAIN}",
                "Content-Type": "message/cpim",
            },
        ) as response:
            results["http"] = response.status
        # ... and past the API's own body limit (1 MiB): refused before it is read whole
        async with session.post(
            f"http://127.0.0.1:{gw.settings.http_port}/v1/messages",
            data=b"x" * (1024 * 1024 + 1),
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "message/cpim"},
        ) as response:
            results["http_body_limit"] = response.status
    # SIP: over TCP straight to the gateway (UDP cannot hold it)
    results["sip"] = await sip_over_tcp(
        gw.settings.sip_port,
        sip_request("MESSAGE", f"sip:alice@{XMPP_DOMAIN}", f"sip:bob@{SIP_DOMAIN}", big[:70_000]),
    )
    # XMPP: a stanza under Prosody's limit but past the gateway's
    errors: dict[str, str] = {}
    async with logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice:
        alice.add_event_handler(
            "message_error", lambda m: errors.__setitem__(m["id"], condition_of(m))
        )
        msg = alice.make_message(mto=f"sink-bob@{COMPONENT}", mbody="y" * (MAX_SIZE + 1))
        msg["id"] = f"big-{run}"
        msg.send()
        await until(lambda: msg["id"] in errors, 10)
        results["xmpp"] = errors.get(msg["id"])
    record("limits-oversized", max_size=MAX_SIZE, results=results)
    assert results["http"] == 413
    assert results["http_body_limit"] == 413
    assert results["sip"] == 413
    assert results["xmpp"] == "policy-violation"
    assert gw.gateway.alive()


async def test_header_floods_are_refused(gw: Stack) -> None:
    results: dict[str, Any] = {}
    flood = {f"X-Flood-{i}": "x" for i in range(400)}  # the SIP adapter takes 256 at most
    flooded = sip_request(
        "MESSAGE", f"sip:alice@{XMPP_DOMAIN}", f"sip:bob@{SIP_DOMAIN}", b"hi", **flood
    )
    # over UDP: a stateless 400 back to the Via (RFC 3261 §21.4.1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        port = udp.getsockname()[1]
        udp.sendto(
            flooded.replace(b"SIP/2.0/TCP 127.0.0.1:9", f"SIP/2.0/UDP 127.0.0.1:{port}".encode()),
            ("127.0.0.1", gw.settings.sip_port),
        )
        answer = parse(udp.recv(65536))
        results["sip_udp"] = answer.status if isinstance(answer, Response) else None
    # over TCP a framing fault ends the connection (RFC 3261 §18.3): closed, no answer
    results["sip_tcp"] = await sip_over_tcp(gw.settings.sip_port, flooded)
    cpim_flood = "".join(f"X{i}: y\r\n" for i in range(2000))  # Policy.max_headers is 1000
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{gw.settings.http_port}/v1/messages",
            data=(
                f"From: <{API_BOT}>\r\nTo: <sip:bob@{SIP_DOMAIN}>\r\n{cpim_flood}\r\n"
                "Content-Type: text/plain\r\n\r\nhi"
            ).encode(),
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "message/cpim"},
        ) as response:
            results["cpim"] = (response.status, (await response.json()).get("code"))
        async with session.post(
            f"http://127.0.0.1:{gw.settings.http_port}/v1/messages",
            data=b"hi",
            headers={f"X-Flood-{i}": "x" * 100 for i in range(500)},
        ) as response:
            results["http"] = response.status
    record("limits-header-floods", results=results)
    assert results["sip_udp"] == 400, results
    assert results["sip_tcp"] in (None, 400, 413), results
    assert results["cpim"] == (400, "POLICY_TOO_MANY_HEADERS")
    assert results["http"] in (400, 413, 431), results
    assert gw.gateway.alive()


async def test_subscription_floods_are_rate_limited_with_bounded_memory(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    rss_before = gw.gateway.rss_kib()
    statuses: list[int] = []
    started = time.monotonic()
    async with sip_ua(gw.kamailio.port) as ua:
        for i in range(200):
            request = Request.build(
                "SUBSCRIBE",
                f"sip:user{i}@{XMPP_DOMAIN}",
                [
                    ("From", f"<sip:flooder@{SIP_DOMAIN}>;tag=f{i}"),
                    ("To", f"<sip:user{i}@{XMPP_DOMAIN}>"),
                    ("Call-ID", f"flood{i}-{run}"),
                    ("CSeq", "1 SUBSCRIBE"),
                    ("Max-Forwards", "70"),
                    ("Event", "presence"),
                    ("Expires", "3600"),
                    ("Contact", f"<sip:flooder@127.0.0.1:{ua.endpoint.local('UDP').port}>"),
                    ("Accept", "application/pidf+xml"),
                ],
            )
            statuses.append(await ua.send(request))
    # the SUBSCRIBEs go one after the other: the bucket (burst 10, 5/s) refills meanwhile
    allowed = 10 + 5.0 * (time.monotonic() - started) + 2
    errors: list[str] = []
    async with logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice:
        alice.add_event_handler("presence_error", lambda p: errors.append(p["error"]["condition"]))
        for i in range(200):
            alice.send_presence_subscription(pto=f"contact{i}-{run}@{COMPONENT}")
        await until(lambda: len(errors) >= 150, 15)
    rss_after = gw.gateway.rss_kib()
    accepted = sum(1 for s in statuses if s < 300)
    limited = sum(1 for s in statuses if s == 480)
    record(
        "limits-subscription-flood",
        sip_subscribes=len(statuses),
        sip_accepted=accepted,
        sip_rate_limited=limited,
        sip_statuses=sorted(set(statuses)),
        xmpp_subscribes=200,
        xmpp_errors=len(errors),
        xmpp_conditions=sorted(set(errors)),
        rss_growth_kib=rss_after - rss_before,
    )
    assert accepted <= allowed, (accepted, allowed)
    assert limited >= len(statuses) - allowed, statuses
    assert len(errors) >= 150
    assert set(errors) == {"resource-constraint"}
    assert rss_after - rss_before < 32 * 1024


@contextlib.asynccontextmanager
async def slow_clients(port: int, count: int, opening: bytes):  # type: ignore[no-untyped-def]
    """``count`` connections that send ``opening`` and then one byte every second."""
    pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(opening)
        pairs.append((reader, writer))
    writers = [w for _, w in pairs]

    async def trickle() -> None:
        while True:
            await asyncio.sleep(1.0)
            for writer in writers:
                if not writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        writer.write(b"x")

    task = asyncio.create_task(trickle())
    try:
        yield pairs
    finally:
        task.cancel()
        for writer in writers:
            writer.close()


def closed_by_peer(pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of the connections the other side has closed (EOF seen, or reset)."""
    return sum(
        1
        for reader, writer in pairs
        if reader.at_eof() or reader.exception() or writer.is_closing()
    )


@pytest.mark.slow
async def test_slow_clients_do_not_starve_the_listeners(gw: Stack) -> None:
    count = 300
    pid = gw.gateway.pid
    fds_before = open_fds(pid)
    results: dict[str, Any] = {"slow_connections": count}
    http_head = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nX-Slow: "
    sip_head = b"MESSAGE sip:alice@xmpp.test SIP/2.0\r\nX-Slow: "
    async with (
        slow_clients(gw.settings.http_port, count, http_head) as http_slow,
        slow_clients(gw.settings.sip_port, count, sip_head) as sip_slow,
    ):
        await asyncio.sleep(2)
        results["fds_with_slow_clients"] = open_fds(pid) - fds_before
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(
                f"http://127.0.0.1:{gw.settings.http_port}/v1/status/none",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as response:
                results["http_status_while_slow"] = response.status
            results["http_seconds_while_slow"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        results["sip_status_while_slow"] = await sip_over_tcp(
            gw.settings.sip_port,
            sip_request("OPTIONS", f"sip:alice@{XMPP_DOMAIN}", f"sip:bob@{SIP_DOMAIN}"),
        )
        results["sip_seconds_while_slow"] = round(time.monotonic() - started, 3)
        # the SIP listener gives a begun message Timer F (64*T1 = 6.4 s here) to complete
        await asyncio.sleep(10)
        results["sip_closed_by_gateway_after_12s"] = closed_by_peer(sip_slow)
        results["http_closed_by_gateway_after_12s"] = closed_by_peer(http_slow)
        results["fds_after_12s"] = open_fds(pid) - fds_before
        results["rss_kib"] = gw.gateway.rss_kib()
    record("limits-slow-clients", **results)
    assert results["http_status_while_slow"] == 404
    assert results["sip_status_while_slow"] == 200
    assert results["http_seconds_while_slow"] < 2
    assert results["sip_seconds_while_slow"] < 2
    assert results["sip_closed_by_gateway_after_12s"] == count
    assert results["http_closed_by_gateway_after_12s"] == count
    assert gw.gateway.alive()


async def test_slow_http_clients_are_disconnected(gw: Stack) -> None:
    # limits-slow-clients: the HTTP listener had no deadline for a request head, so
    # clients trickling one held a descriptor each for as long as they went on; a head
    # must now complete within header_timeout (10 s by default)
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nX-Slow: "
    async with slow_clients(gw.settings.http_port, 10, head) as slow:
        await asyncio.sleep(15)
        closed = closed_by_peer(slow)
    assert closed == 10
