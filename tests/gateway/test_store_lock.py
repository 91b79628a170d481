"""While another process holds the SQLite file's write lock (an operator's ``cpimgw queue
drop`` on a large queue), the gateway's event loop keeps serving: the store waits for the
lock in its own thread, never on the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from canonical.envelope import Envelope, Operation, Origin, Payload
from gateway.store import Commit, Outbound
from gateway.store.sqlite import SqliteStore


def envelope(n: int) -> Envelope:
    return Envelope(
        operation=Operation.MESSAGE,
        sender="xmpp:alice@example.com",
        recipient="sip:bob@example.net",
        payload=Payload("text/plain", f"hello {n}".encode()),
        identity=f"lock-{n}",
        origin=Origin("xmpp"),
        received_at=1.0,
    )


def commit_of(n: int) -> Commit:
    return Commit(f"lock-{n}", 1.0, (Outbound("sip", envelope(n), 100.0),))


async def test_loop_keeps_serving_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    # busy_timeout long enough that a loop blocked in the lock wait could not release it
    # in time: the commit below succeeds only if the loop ran the release while the
    # store was still waiting for the lock
    store = SqliteStore(path, synchronous="normal", busy_timeout=5.0)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        ticks = 0
        writing = asyncio.ensure_future(store.commit(commit_of(1)))
        while ticks < 20:  # the loop runs other work while the write waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert not writing.done(), "the write went through while another writer held the lock"
        other.execute("ROLLBACK")  # the operator's command ends: the write goes on
        accepted = await writing
        assert not accepted.duplicate
        assert len(accepted.ids) == 1
        claimed = await store.claim(2.0, 10)
        assert [e.envelope.identity for e in claimed] == ["lock-1"]
    finally:
        other.close()
        await store.close()


async def test_a_write_refused_by_a_held_lock_fails_alone_and_the_next_one_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path, synchronous="normal", busy_timeout=0.2)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await store.commit(commit_of(1))
        finally:
            ticker.cancel()
        assert ticks > 0, "the loop did not run while the store waited for the lock"
        other.execute("ROLLBACK")
        accepted = await store.commit(commit_of(2))
        assert len(accepted.ids) == 1
        assert [e.envelope.identity for e in await store.claim(2.0, 10)] == ["lock-2"]
    finally:
        other.close()
        await store.close()
