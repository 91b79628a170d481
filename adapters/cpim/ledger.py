"""The adapter's durable state, in the gateway's SQLite file: statuses, outboxes, webhooks.

DESIGN.md "Delivery": nothing acknowledged is lost. Three tables, next to the gateway
store's own (their names start with ``cpimhttp_``; the store never reads them):

- ``cpimhttp_status``: one row per operation an API caller sent (identity, owner,
  operation, ``accepted``/``delivered``/``failed``, the failure's reason). The core tells
  this adapter about failures (``report``), not about successes: while a row says
  ``accepted`` the API asks the gateway store what became of the identity (its
  ``outcome``, whatever the store's backend: :mod:`adapters.cpim.api`) and writes
  ``delivered`` here once the store says so, so the answer outlives the store's memory
  of it. The ledger itself never reads the store's tables.
- ``cpimhttp_outbox``: the per-client outbox. :meth:`Ledger.append` returns only after
  the row is committed, so ``send()`` acknowledges the core only once the event is on
  disk; streams read it by cursor (``seq``) and webhooks deliver from it. Rows leave only
  when acknowledged (a stream cursor, a WebSocket ack, a webhook 2xx) or, after the
  retention time, with a log line and a count.
- ``cpimhttp_hook``: each client's webhook backoff state, so retries resume after a restart.

One thread owns the connection and runs every queued operation of a round in a single
transaction (group commit), each under its own SAVEPOINT, like ``gateway.store.sqlite``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from canonical.envelope import Envelope, Payload, from_record, to_record
from canonical.errors import GatewayError, Reason

Synchronous = Literal["full", "normal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cpimhttp_status (
    identity TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    operation TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cpimhttp_status_age ON cpimhttp_status (updated_at);
CREATE TABLE IF NOT EXISTS cpimhttp_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL,
    identity TEXT NOT NULL,
    kind TEXT NOT NULL,
    meta TEXT NOT NULL,
    body BLOB,
    created_at REAL NOT NULL,
    UNIQUE (principal, identity, kind)
);
CREATE INDEX IF NOT EXISTS cpimhttp_outbox_by_principal ON cpimhttp_outbox (principal, seq);
CREATE TABLE IF NOT EXISTS cpimhttp_hook (
    principal TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
) WITHOUT ROWID;
"""

State = Literal["accepted", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Status:
    """The status resource of one operation (``GET /v1/status/{id}``)."""

    identity: str
    principal: str
    operation: str
    state: State
    reason: str | None = None
    detail: str | None = None
    attempts: int = 0
    known: bool = True  # False: the gateway store cannot tell (indeterminant)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def cpim_status(self) -> str | None:
        """RFC 3860 §3.4.1: success, failure, indeterminant, or None while pending."""
        if self.state == "delivered":
            return "success"
        if self.state == "failed":
            return "failure"
        return None if self.known else "indeterminant"


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row: its cursor, what kind of event, and the envelope."""

    seq: int
    principal: str
    kind: str
    envelope: Envelope
    created_at: float


def _encode(envelope: Envelope) -> tuple[str, bytes | None]:
    record = to_record(envelope)
    body: bytes | None = None
    if envelope.payload is not None:
        body = envelope.payload.body
        record["payload"]["body"] = ""
    return json.dumps(record, separators=(",", ":")), body


def _decode(meta: str, body: bytes | None) -> Envelope:
    envelope = from_record(json.loads(meta))
    if envelope.payload is not None:
        envelope = envelope.replace(
            payload=Payload(envelope.payload.content_type, bytes(body or b""))
        )
    return envelope


def _event(row: Sequence[Any]) -> Event:
    seq, principal, kind, meta, body, created = row
    return Event(int(seq), str(principal), str(kind), _decode(meta, body), float(created))


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


class _Writer(threading.Thread):
    def __init__(self, path: Path, synchronous: Synchronous, loop: asyncio.AbstractEventLoop):
        super().__init__(name=f"cpimgw-http-ledger:{path.name}", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.loop = loop
        self.ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.executescript(_SCHEMA)
        except BaseException as exc:  # noqa: BLE001 - reported to open()
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                first = self.ops.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < 1024:
                    try:
                        nxt = self.ops.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((op, None, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((op, value, None))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the whole round failed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(op, None, exc) for op in batch]
        try:
            self.loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:
            return


def _settle(results: list[tuple[_Op, Any, BaseException | None]]) -> None:
    for op, value, error in results:
        if op.future.done():
            continue
        if error is not None:
            op.future.set_exception(error)
        else:
            op.future.set_result(value)


class Ledger:
    """The tables above on one SQLite file (normally the gateway store's own file)."""

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "full") -> None:
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self._writer: _Writer | None = None

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _Writer(self.path, self.synchronous, asyncio.get_running_loop())
        writer.start()
        await asyncio.to_thread(writer.ready.wait)
        if writer.error is not None:
            writer.join()
            raise GatewayError(
                f"cannot open {self.path} for the HTTP adapter: {writer.error}",
                reason=Reason.INTERNAL,
                hint="check the adapter's database path and that its directory is writable",
            ) from writer.error
        self._writer = writer

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.ops.put(None)
            await asyncio.to_thread(writer.join)

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        if self._writer is None:
            raise GatewayError(
                f"the HTTP adapter's ledger {self.path} is not open",
                reason=Reason.UNAVAILABLE,
                hint="the adapter is starting or stopping; try again",
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writer.ops.put(_Op(fn, future))
        return future

    # -- statuses ---------------------------------------------------------------------

    def accepted(
        self, identity: str, principal: str, operation: str, *, at: float
    ) -> asyncio.Future[Any]:
        """Record an operation the gateway accepted (a duplicate keeps the first row).

        Returns the write's future without waiting for it: the operation itself is
        already in the gateway's store, and every later read of this ledger (a status
        request) is queued behind this write, so it sees the row. Only a crash within
        the next commit round (milliseconds) can lose the row — never the operation.
        """
        return self._submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO cpimhttp_status VALUES (?, ?, ?, 'accepted', NULL, NULL,"
                " ?, ?)",
                (identity, principal, operation, at, at),
            )
        )

    async def failed(
        self, identity: str, *, reason: str, detail: str, at: float, unless_settled: bool = False
    ) -> bool:
        """Mark an operation failed with its reason (the core's final report); False if it
        is unknown. ``unless_settled`` writes only over an ``accepted`` row: the adapter's
        own conclusion never replaces a report that landed meanwhile."""

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE cpimhttp_status SET state = 'failed', reason = ?, detail = ?,"
                " updated_at = ? WHERE identity = ? AND (? = 0 OR state = 'accepted')",
                (reason, detail, at, identity, int(unless_settled)),
            )
            return cur.rowcount > 0

        return bool(await self._submit(write))

    async def delivered(self, identity: str, *, at: float) -> bool:
        """Mark an accepted operation delivered (the gateway store said so); False if it
        is unknown or no longer ``accepted``."""

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE cpimhttp_status SET state = 'delivered', updated_at = ?"
                " WHERE identity = ? AND state = 'accepted'",
                (at, identity),
            )
            return cur.rowcount > 0

        return bool(await self._submit(write))

    async def status(self, identity: str) -> Status | None:
        """The row of ``identity`` as recorded here, None if unknown (the API completes an
        ``accepted`` one from the gateway store's outcome)."""

        def read(conn: sqlite3.Connection) -> Status | None:
            row = conn.execute(
                "SELECT principal, operation, state, reason, detail, created_at, updated_at"
                " FROM cpimhttp_status WHERE identity = ?",
                (identity,),
            ).fetchone()
            if row is None:
                return None
            principal, operation, state, reason, detail, created, updated = row
            return Status(
                identity, principal, operation, state, reason, detail, 0, True, created, updated
            )

        result: Status | None = await self._submit(read)
        return result

    # -- the outbox ---------------------------------------------------------------------

    async def append(self, items: Sequence[tuple[str, str, Envelope]], *, at: float) -> list[int]:
        """Add ``(principal, kind, envelope)`` events durably; returns their cursors.

        The same envelope (identity) of the same kind for the same principal is stored
        once: a resend after a crash does not duplicate the event.
        """
        encoded = [(p, k, e.identity, *_encode(e)) for p, k, e in items]

        def write(conn: sqlite3.Connection) -> list[int]:
            seqs: list[int] = []
            for principal, kind, identity, meta, body in encoded:
                conn.execute(
                    "INSERT OR IGNORE INTO cpimhttp_outbox"
                    " (principal, identity, kind, meta, body, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (principal, identity, kind, meta, body, at),
                )
                row = conn.execute(
                    "SELECT seq FROM cpimhttp_outbox WHERE principal = ? AND identity = ?"
                    " AND kind = ?",
                    (principal, identity, kind),
                ).fetchone()
                seqs.append(int(row[0]))
            return seqs

        result: list[int] = await self._submit(write)
        return result

    async def events(self, principal: str, *, after: int, limit: int = 100) -> list[Event]:
        """Events of ``principal`` with a cursor above ``after``, oldest first."""
        rows = await self._submit(
            lambda c: c.execute(
                "SELECT seq, principal, kind, meta, body, created_at FROM cpimhttp_outbox"
                " WHERE principal = ? AND seq > ? ORDER BY seq LIMIT ?",
                (principal, after, limit),
            ).fetchall()
        )
        return [_event(r) for r in rows]

    async def ack(self, principal: str, *, through: int) -> int:
        """The client has every event up to ``through``: remove them."""
        cur = await self._submit(
            lambda c: (
                c.execute(
                    "DELETE FROM cpimhttp_outbox WHERE principal = ? AND seq <= ?",
                    (principal, through),
                ).rowcount
            )
        )
        return int(cur)

    async def remove(self, seq: int) -> None:
        """Remove one event (a webhook delivered it) and reset the backoff."""

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT principal FROM cpimhttp_outbox WHERE seq = ?", (seq,)
            ).fetchone()
            conn.execute("DELETE FROM cpimhttp_outbox WHERE seq = ?", (seq,))
            if row is not None:
                conn.execute("DELETE FROM cpimhttp_hook WHERE principal = ?", (row[0],))

        await self._submit(write)

    async def backlog(self, principal: str) -> int:
        """How many events wait for ``principal``."""
        row = await self._submit(
            lambda c: c.execute(
                "SELECT count(*) FROM cpimhttp_outbox WHERE principal = ?", (principal,)
            ).fetchone()
        )
        return int(row[0])

    # -- webhook backoff ---------------------------------------------------------------

    async def hook_state(self, principal: str) -> tuple[int, float, str | None]:
        """(attempts, next attempt at, last error) of a client's webhook."""
        row = await self._submit(
            lambda c: c.execute(
                "SELECT attempts, next_at, last_error FROM cpimhttp_hook WHERE principal = ?",
                (principal,),
            ).fetchone()
        )
        if row is None:
            return 0, 0.0, None
        return int(row[0]), float(row[1]), row[2]

    async def hook_retry(
        self, principal: str, *, attempts: int, next_at: float, error: str
    ) -> None:
        await self._submit(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO cpimhttp_hook VALUES (?, ?, ?, ?)",
                (principal, attempts, next_at, error),
            )
        )

    # -- housekeeping ------------------------------------------------------------------

    async def prune(self, *, now: float, retention: float) -> dict[str, int]:
        """Drop events and statuses older than ``retention`` seconds; returns the number
        of events dropped per principal (the caller logs and counts them)."""
        horizon = now - retention

        def write(conn: sqlite3.Connection) -> dict[str, int]:
            dropped = {
                str(p): int(n)
                for p, n in conn.execute(
                    "SELECT principal, count(*) FROM cpimhttp_outbox WHERE created_at < ?"
                    " GROUP BY principal",
                    (horizon,),
                )
            }
            conn.execute("DELETE FROM cpimhttp_outbox WHERE created_at < ?", (horizon,))
            conn.execute("DELETE FROM cpimhttp_status WHERE updated_at < ?", (horizon,))
            return dropped

        result: dict[str, int] = await self._submit(write)
        return result


__all__ = ["Event", "Ledger", "Status", "Synchronous"]
