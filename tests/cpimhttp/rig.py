"""A gateway with the HTTP adapter listening on loopback, the way ``cpimgw run`` wires it,
and a memory adapter standing for the other network (``example.net``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from adapters.contract import AdapterContext
from adapters.cpim.adapter import ClientConfig, CpimHttpAdapter, CpimHttpConfig
from adapters.cpim.token import digest
from adapters.memory import MemoryAdapter
from canonical.policy import DEFAULT, Policy
from gateway.core import Gateway
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store import Store
from gateway.store.sqlite import SqliteStore
from tests.gateway.network import FAST, memory, until
from tests.servers.process import free_port

BOT = "im:bot@bots.test"
OTHER_BOT = "im:other@bots.test"
CAROL = "sip:carol@example.net"
TOKENS = {"bot": "bot-token-1", "other": "other-token-2", "mute": "mute-token-3"}


def client(name: str, **extra: Any) -> ClientConfig:
    address = {"bot": BOT, "other": OTHER_BOT}.get(name)
    fields: dict[str, Any] = {
        "name": name,
        "token_sha256": digest(TOKENS[name]),
        "send_as": [address] if address else [],
        "watch": [address] if address else [],
    }
    return ClientConfig(**{**fields, **extra})


def cpim(text: str, sender: str = BOT, to: str = CAROL, extra: str = "") -> bytes:
    """A message/cpim body (RFC 3862 body form)."""
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nDateTime: 2024-03-05T17:00:00Z\r\n{extra}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


def auth(name: str = "bot") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def http_config(path: Path, **changes: Any) -> CpimHttpConfig:
    base: dict[str, Any] = {
        "port": free_port(),
        "database": path,
        "synchronous": "normal",
        "clients": [client("bot"), client("other"), client("mute")],
        "heartbeat": 1.0,
    }
    base.update(changes)
    return CpimHttpConfig(**base)


def build_gateway(
    path: Path,
    *,
    config: CpimHttpConfig | None = None,
    routes: Sequence[Route] = (Route("bots.test", "api"), Route("example.net", "net")),
    rules: Rules | None = None,
    policy: Policy = DEFAULT,
    gateway_id: str = "gw",
    net: MemoryAdapter | None = None,
    store: Store | None = None,
) -> Gateway:
    api = CpimHttpAdapter(
        "api",
        config or http_config(path),
        AdapterContext(gateway_id=gateway_id, logger=logging.getLogger("test.http"), policy=policy),
    )
    return Gateway(
        gateway_id=gateway_id,
        adapters={"api": api, "net": net or memory("net", gateway_id)},
        store=store or SqliteStore(path, synchronous="normal"),
        routing=RoutingTable(routes),
        rules=rules or Rules(rate=0),
        delivery=FAST,
        seen=SeenSet(window=0),
    )


def http(gateway: Gateway, name: str = "api") -> CpimHttpAdapter:
    found = gateway.adapters[name]
    assert isinstance(found, CpimHttpAdapter)
    return found


def net(gateway: Gateway) -> MemoryAdapter:
    found = gateway.adapters["net"]
    assert isinstance(found, MemoryAdapter)
    return found


def base_url(gateway: Gateway, name: str = "api") -> str:
    adapter = http(gateway, name)
    scheme = "https" if adapter.settings.tls is not None else "http"
    return f"{scheme}://127.0.0.1:{adapter.port}"


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Start the gateway, wait until every HTTP adapter listens, always stop it."""
    await gateway.start()
    try:
        for name, adapter in gateway.adapters.items():
            if isinstance(adapter, CpimHttpAdapter):
                await until(adapter.ready, within=10.0)
            elif isinstance(adapter, MemoryAdapter):
                await asyncio.wait_for(adapter.started(), 10.0)
            del name
        yield gateway
    finally:
        await gateway.stop()


async def status_of(
    session: aiohttp.ClientSession, url: str, location: str, who: str = "bot"
) -> dict[str, Any]:
    async with session.get(url + location, headers=auth(who)) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def wait_state(
    session: aiohttp.ClientSession, url: str, location: str, state: str, within: float = 10.0
) -> dict[str, Any]:
    """Poll a status resource until it reaches ``state``."""
    body: dict[str, Any] = {}
    for _ in range(int(within / 0.05)):
        body = await status_of(session, url, location)
        if body["state"] == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"status stayed {body} instead of {state}")
