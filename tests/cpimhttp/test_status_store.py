"""The status resource reads what became of an operation from the gateway store's
``outcome`` — on every store backend (SQLite, Redis, memory) and whatever file the
adapter keeps its own tables in; the adapter reads none of the store's tables."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from adapters.contract import OutcomeState
from canonical.envelope import CPIM, Envelope
from canonical.errors import DeliveryError, GatewayError, Reason
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.cpimhttp.rig import (
    auth,
    base_url,
    build_gateway,
    cpim,
    http,
    http_config,
    net,
    running,
    status_of,
    wait_state,
)
from tests.gateway.network import until
from tests.servers.redis import redis_namespace, redis_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

CPIM_PACKAGE = Path(__file__).resolve().parents[2] / "adapters" / "cpim"
#: Tables of the gateway store (gateway/store/sqlite.py) the adapter must not read.
STORE_TABLES = ("queue", "seen", "dropped", "subscriptions", "presence", "ids", "meta")


async def post(session: aiohttp.ClientSession, url: str, text: str) -> str:
    async with session.post(
        url + "/v1/messages",
        data=cpim(text),
        headers={"Content-Type": CPIM, **auth()},
    ) as response:
        assert response.status == 202, await response.text()
        location: str = response.headers["Location"]
        return location


def store_of(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store | None:
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        namespace = request.getfixturevalue("redis_namespace")
        return RedisStore(server.url, namespace=namespace, node="status")
    if kind == "memory":
        return MemoryStore()
    return None  # the rig's SQLite store


@pytest.mark.parametrize("kind", ["sqlite", "redis", "memory"])
async def test_status_turns_delivered_on_every_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # the adapter's own file is not the store's: delivery still shows (issue 6: with the
    # Redis store the status never showed delivered)
    config = http_config(tmp_path / "adapter-only.db")
    gateway = build_gateway(
        tmp_path / "store.db", config=config, store=store_of(kind, request, tmp_path)
    )
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        location = await post(s, base_url(gw), f"on {kind}")
        await net(gw).wait_sent(1)
        done = await wait_state(s, base_url(gw), location, "delivered")
    assert done["cpim_status"] == "success"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_status_shows_attempts_and_the_last_error_then_failure(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    gateway = build_gateway(
        tmp_path / "store.db",
        config=http_config(tmp_path / "adapter.db"),
        store=store_of(kind, request, tmp_path),
    )
    net(gateway).fail_next(DeliveryError("busy here", retryable=True, retry_after=60))
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        location = await post(s, url, "retried")
        await until(lambda: net(gw).attempts >= 1)
        pending: dict[str, object] = {}
        for _ in range(500):  # the retry is written behind the failed attempt
            pending = await status_of(s, url, location)
            if pending["attempts"] == 1:
                break
            await asyncio.sleep(0.02)
        net(gw).fail_next(
            DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        waiting = [e.id for e in await gw.store.entries()]
        await gw.store.requeue(waiting, now=gw.clock())
        failed = await wait_state(s, url, location, "failed")
    assert (pending["state"], pending["cpim_status"]) == ("accepted", None)
    assert pending["attempts"] == 1
    assert "busy here" in str(pending["detail"])
    assert failed["cpim_status"] == "failure"
    assert failed["reason"] == "unknown-destination"  # the core's report, kept by the ledger


async def test_a_failed_status_always_carries_its_reason_while_the_report_is_on_its_way(
    tmp_path: Path,
) -> None:
    # The store marks the entry failed before the core calls report() with the reason
    # (gateway/core.py): hold the report a while and read the status meanwhile. No read
    # may say failed without the reason; it stays accepted until the report lands.
    gateway = build_gateway(tmp_path / "store.db")
    adapter = http(gateway)
    release = asyncio.Event()
    called = asyncio.Event()
    report = adapter.report

    async def held(envelope: Envelope, error: GatewayError) -> None:
        called.set()
        await release.wait()
        await report(envelope, error)

    adapter.report = held  # type: ignore[method-assign]
    net(gateway).fail_next(
        DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
    )
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        location = await post(s, url, "held report")
        await asyncio.wait_for(called.wait(), 10.0)
        identity = location.rsplit("/", 1)[1]
        outcome = await gw.store.outcome(identity)
        assert outcome is not None
        assert outcome.state is OutcomeState.FAILED
        meanwhile = [await status_of(s, url, location) for _ in range(5)]
        release.set()
        failed = await wait_state(s, url, location, "failed")
    assert {(m["state"], m["cpim_status"]) for m in meanwhile} == {("accepted", None)}
    assert all("no such user" in str(m["detail"]) for m in meanwhile)
    assert (failed["cpim_status"], failed["reason"]) == ("failure", "unknown-destination")


async def test_a_failure_no_report_follows_is_recorded_with_a_reason_after_the_grace(
    tmp_path: Path,
) -> None:
    # A failure the core never reports (here: the report is lost) still ends failed, with
    # a reason, once the adapter stops waiting for the report.
    gateway = build_gateway(tmp_path / "store.db")
    adapter = http(gateway)
    adapter.api.report_grace = 0.3
    lost = asyncio.Event()

    async def dropped(envelope: Envelope, error: GatewayError) -> None:
        lost.set()

    adapter.report = dropped  # type: ignore[method-assign]
    net(gateway).fail_next(DeliveryError("no such user", retryable=False))
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        location = await post(s, url, "lost report")
        await asyncio.wait_for(lost.wait(), 10.0)
        first = await status_of(s, url, location)
        failed = await wait_state(s, url, location, "failed")
        await gw.store.maintain(gw.clock() + 10_000.0)  # the store forgets it: kept here
        again = await status_of(s, url, location)
    assert (first["state"], first["cpim_status"]) == ("accepted", None)
    assert (failed["cpim_status"], failed["reason"]) == ("failure", "internal")
    assert "no such user" in str(failed["detail"])
    assert (again["state"], again["reason"]) == ("failed", "internal")


async def test_status_with_no_store_to_ask_is_indeterminant(tmp_path: Path) -> None:
    gateway = build_gateway(tmp_path / "store.db")
    http(gateway).context.outcome = None  # an adapter run without a gateway store
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        location = await post(s, base_url(gw), "unknowable")
        await net(gw).wait_sent(1)
        found = await status_of(s, base_url(gw), location)
    assert (found["state"], found["cpim_status"]) == ("accepted", "indeterminant")


async def test_delivered_is_kept_after_the_store_forgets_it(tmp_path: Path) -> None:
    store = MemoryStore(dedup_window=100.0)
    gateway = build_gateway(tmp_path / "store.db", store=store)
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        location = await post(s, base_url(gw), "remembered")
        await net(gw).wait_sent(1)
        await wait_state(s, base_url(gw), location, "delivered")
        await store.maintain(gw.clock() + 1000.0)  # past the dedup window: forgotten
        assert await store.outcome(location.rsplit("/", 1)[1]) is None
        again = await status_of(s, base_url(gw), location)
    assert (again["state"], again["cpim_status"]) == ("delivered", "success")


def test_the_adapter_reads_none_of_the_store_tables() -> None:
    # every table a SQL statement in adapters/cpim names is one of the adapter's own
    named = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE(?: IF NOT EXISTS)?)\s+(\w+)")
    tables: set[str] = set()
    for path in sorted(CPIM_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                tables.update(named.findall(node.value))
    assert tables, "no SQL found: the check would pass vacuously"
    assert {t for t in tables if not t.startswith("cpimhttp_")} == set()
    assert not tables & set(STORE_TABLES)
