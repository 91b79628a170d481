"""A gateway wired to in-memory adapters, the way ``cpimgw run`` wires real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from adapters.contract import AdapterContext
from adapters.memory import MemoryAdapter, MemoryConfig
from gateway.core import DeliveryPolicy, Gateway
from gateway.presence import PresenceBook
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore

FAST = DeliveryPolicy(initial_backoff=0.01, max_backoff=0.05, drain_timeout=2.0, send_timeout=2.0)


def memory(name: str, gateway_id: str = "gw", **config: object) -> MemoryAdapter:
    return MemoryAdapter(name, MemoryConfig(**config), AdapterContext(gateway_id=gateway_id))  # type: ignore[arg-type]


def build(
    routes: Sequence[Route] = (
        Route("xmpp.example.com", "xmpp"),
        Route("sip.example.net", "sip"),
    ),
    *,
    gateway_id: str = "gw",
    store: Store | None = None,
    path: Path | None = None,
    adapters: dict[str, MemoryAdapter] | None = None,
    rules: Rules | None = None,
    delivery: DeliveryPolicy = FAST,
    presence: PresenceBook | None = None,
    seen_window: float = 30.0,
) -> Gateway:
    made = adapters or {name: memory(name, gateway_id) for name in ("xmpp", "sip")}
    chosen = store or (SqliteStore(path, synchronous="normal") if path else MemoryStore())
    return Gateway(
        gateway_id=gateway_id,
        adapters=made,
        store=chosen,
        routing=RoutingTable(routes),
        rules=rules or Rules(rate=0),
        delivery=delivery,
        presence=presence,
        seen=SeenSet(window=seen_window),
    )


def adapter(gateway: Gateway, name: str) -> MemoryAdapter:
    found = gateway.adapters[name]
    assert isinstance(found, MemoryAdapter)
    return found


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling; for state without an event to await)."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"condition not met within {within}s")


async def until_no_report_owed(store: Store, *, within: float = 4.0) -> None:
    """Wait until the store owes no failure report (the adapter took it; the store's
    ``reported`` lands just after), then check it."""
    for _ in range(int(within / 0.02)):
        if not await store.reports():
            break
        await asyncio.sleep(0.02)
    assert await store.reports() == []
