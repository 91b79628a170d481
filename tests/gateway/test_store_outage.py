"""A store that fails for a while (a real SQLite file whose write lock another connection
holds: "database is locked") stops deliveries only for that while: the dispatcher and
the sends' store writes survive, readiness says the store is failing, the errors are
counted, and deliveries resume when the lock is released."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from adapters.contract import AdapterContext, Sent
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import Envelope
from canonical.errors import DeliveryError, Reason
from gateway.core import Gateway
from gateway.store.sqlite import SqliteStore
from tests.gateway.network import FAST, adapter, build, memory, until
from tests.gateway.samples import message


class Locker:
    """Another connection to the same file that takes and releases its write lock."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=0)

    async def lock(self) -> None:
        """Take the write lock once the gateway's store has committed what it holds (it
        holds the lock across loop turns while a batch runs: waiting for it on the loop
        would stall the store it waits for)."""
        for _ in range(5000):
            try:
                self.conn.execute("BEGIN EXCLUSIVE")
            except sqlite3.OperationalError:
                await asyncio.sleep(0.001)
            else:
                return
        raise AssertionError("the store kept the write lock for seconds")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        self.conn.close()


@contextmanager
def locker_of(path: Path) -> Iterator[Locker]:
    locker = Locker(path)
    try:
        yield locker
    finally:
        locker.close()


def store_of(path: Path) -> SqliteStore:
    # a short busy timeout: a locked write fails in 50 ms instead of 10 s
    return SqliteStore(path, synchronous="normal", poll_interval=0.02, busy_timeout=0.05)


def errors(gw: Gateway, operation: str) -> float:
    value = gw.metrics.registry.get_sample_value(
        "cpimgw_store_errors_total", {"operation": operation}
    )
    return value or 0.0


async def test_dispatcher_survives_a_locked_store_and_deliveries_resume(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with build(store=store_of(path)) as gw:
        sip = adapter(gw, "sip")
        await adapter(gw, "xmpp").inject(message(text="before"))
        await sip.wait_sent(1)
        with locker_of(path) as locker:
            await locker.lock()
            await until(lambda: not gw.ready()["store"])
            assert errors(gw, "dispatch") >= 1
            locker.release()
            await until(lambda: gw.ready()["store"])
        await adapter(gw, "xmpp").inject(message(text="after"))
        await sip.wait_sent(2)
        assert [e.payload.body for e in sip.sent][-1].endswith(b"after")
        [dispatcher] = [t for t in gw._tasks if t.get_name() == "dispatch"]
        assert not dispatcher.done()


class LockingAdapter(MemoryAdapter):
    """Its first send takes the store's write lock, then fails as retryable: the
    gateway's reschedule write then meets "database is locked"."""

    def __init__(self, name: str, locker: Locker) -> None:
        super().__init__(name, MemoryConfig(), AdapterContext(gateway_id="gw"))
        self.locker = locker

    async def send(self, envelope: Envelope) -> Sent:
        if self.attempts == 0:
            self.attempts += 1
            await self.locker.lock()
            raise DeliveryError("busy", retryable=True, reason=Reason.UNAVAILABLE)
        return await super().send(envelope)


async def test_a_reschedule_refused_by_a_locked_store_is_written_later_and_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    with locker_of(path) as locker:
        sip = LockingAdapter("sip", locker)
        gw = build(store=store_of(path), adapters={"xmpp": memory("xmpp"), "sip": sip})
        async with gw:
            await adapter(gw, "xmpp").inject(message(text="retried"))
            await until(lambda: errors(gw, "reschedule") >= 1)
            assert not gw.ready()["store"]
            assert not sip.sent
            locker.release()
            await sip.wait_sent(1)
            await gw.settle()
            assert gw.ready()["store"]
            assert gw.counters.retried == 1
            assert gw.counters.delivered == 1
            assert await gw.store.entries() == []


async def test_a_store_write_retried_past_the_send_timeout_is_not_cancelled(
    tmp_path: Path,
) -> None:
    """The send timeout bounds the send, not the store write after it: a reschedule
    retried through an outage longer than ``send_timeout`` is still written, and the
    message delivered (cancelled, it would leave the entry claimed with nobody to finish
    it)."""
    path = tmp_path / "q.db"
    with locker_of(path) as locker:
        sip = LockingAdapter("sip", locker)
        gw = build(
            store=store_of(path),
            adapters={"xmpp": memory("xmpp"), "sip": sip},
            delivery=replace(FAST, send_timeout=0.2),
        )
        async with gw:
            await adapter(gw, "xmpp").inject(message(text="retried"))
            await until(lambda: errors(gw, "reschedule") >= 1)
            await asyncio.sleep(1.5)  # past the deadline and a watch of the sends
            locker.release()
            await sip.wait_sent(1)
            await gw.settle()
            assert gw.counters.delivered == 1
            assert await gw.store.entries() == []
