"""A Redis outage is seen like any other store error: a real ``redis-server`` killed
(SIGKILL, then started again on its data) or frozen (SIGSTOP, then SIGCONT) under a running
gateway turns ``/readyz`` not ready (``store: false``), counts
``cpimgw_store_errors_total{operation="dispatch"}`` and logs an error line; when Redis
answers again readiness comes back, the entry that fell due during the outage is
delivered and new messages flow. Nothing acknowledged before the outage is lost."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from canonical.errors import DeliveryError, Reason
from gateway.cluster import Timing
from gateway.core import Gateway
from gateway.health import HealthServer
from gateway.store.redis import RedisStore
from tests.gateway.network import adapter, build, until
from tests.gateway.samples import message
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone (it is killed and frozen), appendfsync always."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.signal(signal.SIGCONT)  # a frozen process cannot stop
        server.stop()


def store_on(server: RedisServer) -> RedisStore:
    # Short socket timeouts: a frozen Redis is noticed in half a second instead of ten.
    client = Redis.from_url(
        server.url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    timing = Timing(heartbeat=0.5, ttl=5.0, claim_idle=3.0, recover_interval=0.5)
    return RedisStore(server.url, namespace="outage", node="n1", timing=timing, client=client)


def errors(gw: Gateway, operation: str) -> float:
    value = gw.metrics.registry.get_sample_value(
        "cpimgw_store_errors_total", {"operation": operation}
    )
    return value or 0.0


async def readyz(port: int) -> tuple[int, dict[str, bool]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        body = await response.json()
        return response.status, body["components"]


texts = ("before", "held", "after")


@pytest.mark.parametrize("outage", ["kill", "sigstop"])
async def test_a_redis_outage_makes_the_gateway_not_ready_and_deliveries_resume(
    redis: RedisServer, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with build(store=store_on(redis)) as gw:
        health = HealthServer(gw, host="127.0.0.1", port=0)
        port = await health.start()
        try:
            sip = adapter(gw, "sip")
            await adapter(gw, "xmpp").inject(message(text="before"))
            await sip.wait_sent(1)
            assert (await readyz(port))[0] == 200
            # "held" is refused once and rescheduled one second later: it falls due
            # while Redis is away and must be delivered when Redis is back.
            sip.fail_next(
                DeliveryError("busy", retryable=True, reason=Reason.UNAVAILABLE, retry_after=1.0)
            )
            await adapter(gw, "xmpp").inject(message(text="held"))
            await until(lambda: gw.counters.retried == 1)
            assert redis.process is not None
            if outage == "kill":
                redis.kill()
            else:
                redis.process.signal(signal.SIGSTOP)

            await until(lambda: not gw.ready()["store"], within=10.0)
            status, components = await readyz(port)
            assert (status, components["store"]) == (503, False)
            assert errors(gw, "dispatch") >= 1
            assert any("a store call failed" in r.getMessage() for r in caplog.records)
            await until(lambda: errors(gw, "dispatch") >= 2, within=10.0)  # still probing
            assert len(sip.sent) == 1

            if outage == "kill":
                redis.start()  # same port, same data directory (AOF)
            else:
                redis.process.signal(signal.SIGCONT)
            await until(lambda: gw.ready()["store"], within=15.0)
            assert (await readyz(port))[0] == 200
            await sip.wait_sent(2)
            await adapter(gw, "xmpp").inject(message(text="after"))
            await sip.wait_sent(3)
            await gw.settle()
            # each acknowledged message delivered, "held" exactly once
            sent = [e.identity for e in sip.sent]
            assert sorted(sent) == sorted(message(text=t).identity for t in texts)
            assert await gw.store.entries() == []
            [dispatcher] = [t for t in gw._tasks if t.get_name() == "dispatch"]
            assert not dispatcher.done()
        finally:
            await health.stop()
