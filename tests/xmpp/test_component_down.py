"""When the XMPP server refuses the component (wrong secret, unknown component domain) or
is not there: an error line that names the component, the server and the fix, /readyz
down with that reason, reconnection with capped backoff until the server takes it, and
sends answered at once as retryable so the core keeps them — against a real Prosody."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.contract import AdapterContext, Receipt
from adapters.memory import MemoryAdapter, MemoryConfig
from adapters.xmpp.adapter import XmppAdapter, XmppConfig
from canonical import cpim
from canonical.envelope import Envelope, Payload
from canonical.errors import DeliveryError, Reason
from gateway.core import DeliveryPolicy, Gateway
from gateway.health import HealthServer
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store.memory import MemoryStore
from tests.gateway.network import until
from tests.gateway.samples import message
from tests.servers.process import free_port
from tests.servers.prosody import ProsodyServer
from tests.xmpp.test_adapter_e2e import carried, config, outbound
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


class Lines(logging.Handler):
    """The adapter's log records, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def context(lines: Lines, counts: list[str] | None = None) -> AdapterContext:
    logger = logging.getLogger(f"cpimgw.test.xmpp.{id(lines)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(lines)
    seen = counts if counts is not None else []
    return AdapterContext(
        gateway_id="gw-test", logger=logger, count=lambda name, **_labels: seen.append(name)
    )


def carried_payload() -> Payload:
    return Payload(
        "message/cpim",
        bytes(
            cpim.build(
                sender="sip:ada@sip.test",
                to=["im:alice@xmpp.test"],
                content_type="text/plain; charset=utf-8",
                body=b"while the component was refused",
            )
        ),
    )


async def nothing(envelope: Envelope) -> Receipt:
    return Receipt(envelope.identity)


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def started(adapter: XmppAdapter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(adapter.run(nothing))
    try:
        yield task
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)


async def test_wrong_secret_is_an_error_line_with_the_fix_and_is_retried_until_fixed(
    prosody_own: ProsodyServer,
) -> None:
    server = prosody_own
    lines = Lines()
    settings = config(server, secret="not-the-secret", reconnect_initial=0.1, reconnect_max=0.4)
    adapter = XmppAdapter("xmpp", settings, context(lines))
    async with started(adapter) as task:
        await until(lambda: len(lines.at(logging.ERROR)) >= 5, within=15)
        assert not task.done()  # the adapter keeps trying: it did not give up
        assert not adapter.ready()
        line = lines.at(logging.ERROR)[0]
        for part in (
            f"component {server.component}",
            f"127.0.0.1:{server.component_port}",
            "not-authorized",
            "check the component secret in [adapters.xmpp]",
            "prosody.cfg.lua",
            "reconnecting in",
        ):
            assert part in line, line
        reason = adapter.not_ready_reason()
        assert reason is not None
        assert "not-authorized" in reason
        assert "prosody.cfg.lua" in reason
        # capped exponential backoff: the logged waits double from 0.1 s to 0.4 s (±20 %)
        waits = [
            float(m.group(1))
            for line in lines.at(logging.ERROR)
            if (m := re.search(r"reconnecting in ([0-9.]+)s", line))
        ]
        assert 0.08 <= waits[0] <= 0.12
        assert max(waits) <= 0.4 * 1.2
        assert waits[-1] >= 0.4 * 0.8
        # a send now is answered at once, retryable, and leaves nothing queued here
        with pytest.raises(DeliveryError) as refused:
            await adapter.send(outbound(carried_payload(), n=1))
        assert refused.value.retryable
        assert refused.value.reason is Reason.UNAVAILABLE
        assert "not-authorized" in str(refused.value)
        assert adapter._outbound == []
        # the operator fixes the server side; the adapter connects without a restart
        server.secret = "not-the-secret"
        await asyncio.to_thread(server.restart)
        await until(adapter.ready, within=15)
        assert adapter.not_ready_reason() is None
        sent = await adapter.send(outbound(carried_payload(), n=2))
        assert sent.native_id


async def test_unknown_component_domain_names_the_missing_component_entry(
    prosody: ProsodyServer,
) -> None:
    lines = Lines()
    settings = config(
        prosody, component="nowhere.xmpp.test", domain_map={"nowhere.xmpp.test": "sip:sip.test"}
    )
    adapter = XmppAdapter("xmpp", settings, context(lines))
    async with started(adapter):
        await until(lambda: bool(lines.at(logging.ERROR)), within=15)
        line = lines.at(logging.ERROR)[0]
        assert "refused component nowhere.xmpp.test" in line
        assert "host-unknown" in line
        assert 'Component "nowhere.xmpp.test"' in line
        assert not adapter.ready()


async def test_a_server_that_is_not_there_is_retried_and_reported_as_such() -> None:
    lines = Lines()
    settings = XmppConfig(
        port=free_port(),  # nothing listens there
        component="sip.xmpp.test",
        secret="s",  # type: ignore[arg-type]
        domains=["xmpp.test"],
        reconnect_initial=0.05,
        reconnect_max=0.1,
    )
    adapter = XmppAdapter("xmpp", settings, context(lines))
    async with started(adapter):
        await until(lambda: len(lines.at(logging.WARNING)) >= 3, within=15)
        reason = adapter.not_ready_reason()
        assert reason is not None
        assert "cannot connect" in reason
        assert f"127.0.0.1:{settings.port}" in reason
        assert not lines.at(logging.ERROR)  # a server being down is no configuration error


async def test_the_gateway_keeps_messages_for_a_refused_component_and_delivers_them_once_fixed(
    prosody_own: ProsodyServer,
) -> None:
    server = prosody_own
    lines = Lines()
    xmpp = XmppAdapter(
        "xmpp",
        config(server, secret="wrong", reconnect_initial=0.1, reconnect_max=0.3),
        context(lines),
    )
    sip = MemoryAdapter("sip", MemoryConfig(), AdapterContext(gateway_id="gw-test"))
    gateway = Gateway(
        gateway_id="gw-test",
        adapters={"xmpp": xmpp, "sip": sip},
        store=MemoryStore(),
        routing=RoutingTable([Route("xmpp.test", "xmpp"), Route("sip.test", "sip")]),
        rules=Rules(rate=0),
        delivery=DeliveryPolicy(
            initial_backoff=0.2, max_backoff=0.5, max_attempts=1000, drain_timeout=2.0
        ),
        seen=SeenSet(window=30.0),
    )
    health = HealthServer(gateway, host="127.0.0.1", port=free_port())
    port = await health.start()
    try:
        await gateway.start()
        await sip.started()
        await until(lambda: bool(lines.at(logging.ERROR)), within=15)
        status, body = await readyz(port)
        assert status == 503
        assert body["components"] == {
            "accepting": True,
            "adapter:sip": True,
            "adapter:xmpp": False,
            "store": True,
        }
        reasons = body["reasons"]
        assert isinstance(reasons, dict)
        assert list(reasons) == ["adapter:xmpp"]
        assert "not-authorized" in reasons["adapter:xmpp"]
        assert "check the component secret" in reasons["adapter:xmpp"]
        envelope = message(
            "sip:ada@sip.test",
            "xmpp:alice@xmpp.test",
            "kept while XMPP was down",
            adapter="sip",
            received_at=time.time(),
        )
        await sip.inject(envelope)
        await until(lambda: gateway.counters.retried >= 2, within=15)  # retried, not failed
        assert gateway.counters.failed == 0
        assert gateway.counters.delivered == 0
        server.secret = "wrong"
        await asyncio.to_thread(server.restart)
        await until(lambda: gateway.counters.delivered == 1, within=30)
        status, body = await readyz(port)
        assert status == 200
        assert "reasons" not in body
    finally:
        await gateway.stop()
        await health.stop()
    async with logged_in("alice@xmpp.test/late", "alicepw", server.c2s_port) as alice:
        got = await alice.wait_for(
            lambda s: s.name == "message" and s["from"].domain == server.component
        )
    assert b"kept while XMPP was down" in carried(got).body
