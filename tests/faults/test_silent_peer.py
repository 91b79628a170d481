"""A peer that accepts TCP but never answers a byte (a tarpit of the test's own) in place of
the XMPP server on the component connection, and in place of the SIP proxy over TCP.

Promised: the gateway does not hang on it — connection attempts and sends time out and
are tried again, every other leg keeps working, what cannot be delivered is reported to
its sender once it expires (SIP: a failure notice MESSAGE; XMPP: an error stanza), and
memory and connection counts stay bounded while the peer stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    fault_stack,
    http_get,
    sip_ua,
)
from tests.faults.figures import record
from tests.servers.process import free_port
from tests.xmpp.users import User

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Tarpit:
    """Accepts every TCP connection, reads and discards, never writes."""

    port: int
    connections: int = 0
    open: int = 0
    received: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += len(data)
        except ConnectionError:
            pass
        finally:
            self.open -= 1


@contextlib.asynccontextmanager
async def tarpit() -> AsyncIterator[Tarpit]:
    pit = Tarpit(free_port())
    server = await asyncio.start_server(pit.handle, "127.0.0.1", pit.port)
    try:
        yield pit
    finally:
        for writer in pit.writers:
            writer.close()
        server.close()


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_silent_xmpp_server_queues_then_reports_to_the_sip_sender(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    async with tarpit() as pit:
        with fault_stack(tmp_path, start_gateway=False, xmpp_port=pit.port, expiry="6s") as s:
            await asyncio.to_thread(s.gateway.start, wait_ready=False)
            up = await until(lambda: http_get(s.settings.metrics_port, "/healthz")[0] == 200, 30)
            async with sip_ua(s.kamailio.port, s.sink_port) as ua:
                statuses = []
                rss = [s.gateway.rss_kib()]
                for i in range(10):
                    statuses.append(
                        await ua.send(
                            ua.message(
                                f"sip:sink-bob@{SIP_DOMAIN}",
                                f"sip:alice@{XMPP_DOMAIN}",
                                f"to a silent server {i}".encode(),
                                call_id=f"silent{i}-{run}",
                            )
                        )
                    )
                started = time.monotonic()

                def notices() -> list[Any]:
                    return [r for r in ua.received if r.request.method == "MESSAGE"]

                reported = await until(lambda: len(notices()) >= 10, 60)
                reported_after = time.monotonic() - started
                await asyncio.sleep(5)  # keep the silence up a little longer
                rss.append(s.gateway.rss_kib())
                ready = http_get(s.settings.metrics_port, "/readyz")
                record(
                    "silent-xmpp-server",
                    sip_statuses=sorted(set(statuses)),
                    failure_notices=len(notices()),
                    notices_after_seconds=round(reported_after, 1),
                    tarpit_connections=pit.connections,
                    tarpit_open_connections=pit.open,
                    readyz_status=ready[0],
                    rss_kib=rss,
                    gateway_alive=s.gateway.alive(),
                )
                assert up
                assert set(statuses) == {202}, statuses
                assert reported, f"no failure notice reached the sender\n{s.gateway.log()}"
                assert ready[0] == 503  # not ready while the XMPP leg is down
                assert pit.open <= 2  # no pile of half-open streams
                assert s.gateway.alive()


async def test_silent_sip_proxy_over_tcp_times_out_and_reports_to_the_xmpp_sender(
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    errors: list[tuple[str, str]] = []
    async with tarpit() as pit:
        with fault_stack(
            tmp_path,
            start_gateway=False,
            expiry="8s",
            sip_proxy_transport="tcp",
        ) as s:
            s.settings.proxy_port = pit.port
            await asyncio.to_thread(s.gateway.start)
            alice = User(f"alice@{XMPP_DOMAIN}/desk", PASSWORD)
            alice.add_event_handler(
                "message_error", lambda m: errors.append((m["id"], m["error"]["condition"]))
            )
            await alice.login(s.prosody.c2s_port)
            ids = []
            for i in range(5):
                msg = alice.make_message(
                    mto=f"carol{i}@{COMPONENT}", mbody="to a silent proxy", mtype="chat"
                )
                msg["id"] = f"tcp{i}-{run}"
                ids.append(msg["id"])
                msg.send()
            started = time.monotonic()
            reported = await until(lambda: {i for i, _ in errors} >= set(ids), 60)
            reported_after = time.monotonic() - started
            # the other leg still works: SIP -> XMPP through Kamailio
            async with sip_ua(s.kamailio.port) as ua:
                other_leg = await ua.send(
                    ua.message(
                        f"sip:bob@{SIP_DOMAIN}", f"sip:alice@{XMPP_DOMAIN}", b"hi", call_id=run
                    )
                )
            metrics = s.gateway.metrics()
            record(
                "silent-sip-proxy-tcp",
                xmpp_errors=sorted({c for _, c in errors}),
                errors_after_seconds=round(reported_after, 1),
                tarpit_connections=pit.connections,
                tarpit_open_connections=pit.open,
                tarpit_bytes_received=pit.received,
                other_leg_status=other_leg,
                retries=sum(
                    float(x.rsplit(" ", 1)[1])
                    for x in metrics.splitlines()
                    if x.startswith("cpimgw_retries_total{")
                ),
                gateway_alive=s.gateway.alive(),
            )
            await alice.logout()
            assert reported, f"errors: {errors}\n{s.gateway.log()}"
            assert other_leg == 202
            assert pit.open <= 2, pit
            assert s.gateway.alive()


async def test_silent_xmpp_server_is_given_up_and_connected_to_again(tmp_path: Path) -> None:
    async with tarpit() as pit:
        with fault_stack(tmp_path, start_gateway=False, xmpp_port=pit.port) as s:
            await asyncio.to_thread(s.gateway.start, wait_ready=False)
            # connect_timeout (10 s) without a session: that connection is given up
            tried_again = await until(lambda: pit.connections >= 2, 20)
            assert s.gateway.alive()
            assert tried_again, f"{pit.connections} connection(s) in 20 s"
