"""The embedded durable store: one SQLite file in WAL mode, with group commit.

Why this shape:

- **Nothing acknowledged is lost** (DESIGN.md "Delivery"): :meth:`SqliteStore.commit`
  resolves only after the transaction holding the envelope has committed. With
  ``synchronous = "full"`` (the default) the WAL is fsynced at every commit, so the
  entry survives a power cut too; ``"normal"`` survives a killed process (``kill -9``)
  but not a power cut, and is faster.
- **Group commit**: every operation is queued to one pump. It runs all the operations
  queued while the previous transaction was committing in a single transaction, so many
  concurrent ``deliver`` calls share one fsync. The statements run on the event loop's
  thread (microseconds each, no locks); ``COMMIT`` — the fsync — runs in the store's
  thread, and so does ``BEGIN IMMEDIATE`` whenever it has to wait for the write lock
  another process holds (a free lock is taken on the loop at once). One failing
  operation fails alone: the batch is then replayed one by one.
- **Message commits queued together are written together** (:class:`_Commits`): their
  dedup marks with one ``executemany``, their queue rows with a few multi-row
  ``INSERT`` statements, and completions are deleted by ranges of ids, so the durable
  path costs few statements and Python objects per message besides the caller's own
  future.
- **The hot path does not read the database**: a serving store keeps the pending,
  unclaimed entries of this node in memory (loaded at :meth:`open`); :meth:`claim` pops
  them from a heap. Once per ``poll_interval`` it reads a counter that ``cpimgw queue
  retry|drop`` bumps, and rescans the pending ids only when it moved, so what the operator
  changed while the gateway runs is noticed without scanning a large queue every second.
- Completions are not waited for: a delivery recorded in memory is deleted with the next
  batch; a crash before that only means the message is sent again with its identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import GatewayError, Loss, Reason
from gateway.presence import LastPresence, Subscription, SubscriptionState
from gateway.security import Buckets
from gateway.store import Accepted, Commit, Entry, EntryState, Outcome, QueueStats, outcome_of

Synchronous = Literal["full", "normal"]
T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_error TEXT,
    meta TEXT NOT NULL,
    body BLOB
);
CREATE INDEX IF NOT EXISTS queue_by_state ON queue (state, next_at);
CREATE TABLE IF NOT EXISTS seen (
    identity TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (at);
CREATE TABLE IF NOT EXISTS subscriptions (
    watcher TEXT NOT NULL,
    presentity TEXT NOT NULL,
    state TEXT NOT NULL,
    watcher_adapter TEXT NOT NULL,
    presentity_adapter TEXT NOT NULL,
    expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (watcher, presentity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS presence (
    presentity TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    at REAL NOT NULL,
    identity TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ids (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dropped (
    identity TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

_ENTRY_COLUMNS = (
    "id, target, state, attempts, next_at, created_at, expires_at, last_error, meta, body, report"
)


#: Version tag of the stored envelope encoding (first element of the JSON array).
ENCODING = 1


#: The compact JSON of a row's meta, as chunks to join: the same bytes as
#: ``json.dumps(meta, separators=(",", ":"))``. ``json.dumps`` with options builds a new
#: encoder per call and ``JSONEncoder.encode`` its C scanner per call; here the C scanner
#: is built once, for every row (the pure-Python encoder where the interpreter lacks it).
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_make_scanner: Any = getattr(json.encoder, "c_make_encoder", None)
_meta_chunks: Callable[[Any, bool], Iterable[str]] = (
    _COMPACT.iterencode
    if _make_scanner is None
    else _make_scanner(
        None,  # no markers: check_circular=False
        _COMPACT.default,
        json.encoder.encode_basestring_ascii,
        _COMPACT.indent,
        _COMPACT.key_separator,
        _COMPACT.item_separator,
        _COMPACT.sort_keys,
        _COMPACT.skipkeys,
        _COMPACT.allow_nan,
    )
)
_join = "".join


def encode_envelope(envelope: Envelope) -> tuple[str, bytes | None]:
    """The envelope as (a compact JSON array without the payload body, the body bytes):
    no base64 on disk, and no dict keys repeated in every row. (Once per stored message:
    the operation, a ``StrEnum``, and the trace, a tuple, go to the encoder as they are —
    the same JSON as their value and a list.)"""
    payload = envelope.payload
    origin = envelope.origin
    losses = envelope.losses
    meta = [
        ENCODING,
        envelope.operation,
        envelope.sender,
        envelope.recipient,
        None if payload is None else payload.content_type,
        envelope.identity,
        [origin.adapter, origin.peer, origin.native_id, origin.reply_to, dict(origin.context)],
        envelope.max_forwards,
        envelope.trace,
        envelope.received_at,
        envelope.duration,
        envelope.granted,
        [[loss.field, loss.detail] for loss in losses] if losses else [],
        dict(envelope.attributes),
    ]
    return _join(_meta_chunks(meta, False)), None if payload is None else payload.body


def decode_envelope(meta: str, body: bytes | None) -> Envelope:
    """Reverse :func:`encode_envelope`."""
    data = json.loads(meta)
    if not isinstance(data, list) or data[0] != ENCODING:
        raise GatewayError(
            "a queue entry has an encoding this cpimgw does not read",
            reason=Reason.INTERNAL,
            hint="run the cpimgw version that wrote the store",
        )
    (
        _,
        op,
        sender,
        recipient,
        ctype,
        identity,
        origin,
        hops,
        trace,
        at,
        dur,
        granted,
        losses,
        attrs,
    ) = data
    adapter, peer, native_id, reply_to, context = origin
    return Envelope(
        operation=Operation(op),
        sender=sender,
        recipient=recipient,
        payload=None if ctype is None else Payload(ctype, bytes(body or b"")),
        identity=identity,
        origin=Origin(adapter, peer, native_id, reply_to, context),
        max_forwards=int(hops),
        trace=tuple(trace),
        received_at=float(at),
        duration=dur,
        granted=granted,
        losses=tuple(Loss(f, d) for f, d in losses),
        attributes=attrs,
    )


def _entry(row: Sequence[Any]) -> Entry:
    entry_id, target, state, attempts, next_at, created_at, expires_at, error, meta, body = row[:10]
    return Entry(
        id=str(entry_id),
        target=str(target),
        envelope=decode_envelope(meta, body),
        state=EntryState(state),
        attempts=int(attempts),
        next_at=float(next_at),
        created_at=float(created_at),
        expires_at=float(expires_at),
        last_error=error,
        report=row[10],
    )


@dataclass(slots=True)
class _Op:
    """One queued operation: a function of the connection, run in the pump's batch."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    after: Callable[[Any], None] | None = None

    @property
    def size(self) -> int:
        return 1

    def run(self, conn: sqlite3.Connection) -> Any:
        return self.fn(conn)

    def settle(self, value: Any, error: BaseException | None) -> None:
        """On the loop, once the transaction committed (or failed)."""
        if error is None and self.after is not None:
            self.after(value)
        future = self.future
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def split(self) -> list[_Op]:
        return [self]


_SEEN = (
    "INSERT INTO seen (identity, at) VALUES (?, ?) ON CONFLICT (identity)"
    " DO UPDATE SET at = excluded.at WHERE seen.at <= ?"
)
_QUEUE_ROW = "(?, ?, 'pending', 0, ?, ?, ?, ?, ?)"
#: Queue rows per INSERT statement, largest first: a batch's rows go in as few
#: statements as these sizes allow, and each size's statement stays prepared in the
#: connection's cache (7 parameters a row: 128 rows stay under SQLite's oldest limit of
#: 999 parameters a statement).
_CHUNKS = (128, 32, 8, 2, 1)
_INSERT_QUEUE = {
    size: "INSERT INTO queue (identity, target, state, attempts, next_at, created_at,"  # noqa: S608
    f" expires_at, meta, body) VALUES {','.join([_QUEUE_ROW] * size)}"
    for size in _CHUNKS
}
_Encoded = list[tuple[str, bytes | None]]


class _Commits:
    """Message commits (queue entries and a dedup mark, nothing else) queued one after
    another: written together in the pump's batch, with a statement per batch rather than
    per message, and without a function object per call.

    - The dedup marks of all of them go in with one ``executemany``; when it changed
      fewer rows than there are identities (a duplicate, rare), it is rolled back to a
      savepoint and the marks are written one by one, which tells which ones were
      duplicates (a later call with the same identity as an earlier one in the batch
      included), exactly as a commit of its own would.
    - Their queue rows go in with multi-row ``INSERT`` statements (:data:`_CHUNKS`).
      The ids follow from the last id of each statement: under ``AUTOINCREMENT`` each
      new row gets one more than the largest id the table ever had, and the batch holds
      the write lock, so one statement's rows get consecutive ids in order.
    """

    __slots__ = ("commits", "encoded", "futures", "store")

    def __init__(
        self,
        store: SqliteStore,
        commits: list[Commit],
        encoded: list[_Encoded],
        futures: list[asyncio.Future[Any]],
    ) -> None:
        self.store = store
        self.commits = commits
        self.encoded = encoded
        self.futures = futures

    @property
    def size(self) -> int:
        return len(self.commits)

    def run(self, conn: sqlite3.Connection) -> list[Accepted]:
        commits = self.commits
        window = self.store.dedup_window
        marks = [(c.identity, c.at, c.at - window) for c in commits if c.identity]
        fresh: list[bool] | None = None  # None: none of them is a duplicate
        if len(marks) == 1:
            if conn.execute(_SEEN, marks[0]).rowcount == 0:
                fresh = [not c.identity for c in commits]
        elif marks:
            conn.execute("SAVEPOINT marks")
            if conn.executemany(_SEEN, marks).rowcount != len(marks):
                conn.execute("ROLLBACK TO marks")
                fresh = [
                    not c.identity
                    or conn.execute(_SEEN, (c.identity, c.at, c.at - window)).rowcount > 0
                    for c in commits
                ]
            conn.execute("RELEASE marks")
        params: list[Any] = []
        singles = True  # one entry each (messages): one id each, in order
        every = fresh or _ALL_FRESH  # endless when None: strict=False
        for commit, encoded, new in zip(commits, self.encoded, every, strict=False):
            if not new:
                continue
            at = commit.at
            if len(encoded) == 1:
                out = commit.entries[0]
                meta, body = encoded[0]
                params += (out.envelope.identity, out.target, at, at, out.expires_at, meta, body)
                continue
            singles = False
            for out, (meta, body) in zip(commit.entries, encoded, strict=True):
                params += (out.envelope.identity, out.target, at, at, out.expires_at, meta, body)
        ids = _insert_queue_rows(conn, params)
        if singles and fresh is None:
            return [Accepted(duplicate=False, ids=(entry_id,)) for entry_id in ids]
        accepted: list[Accepted] = []
        taken = 0
        for index, commit in enumerate(commits):
            if fresh is not None and not fresh[index]:
                accepted.append(_DUPLICATE)
                continue
            count = len(commit.entries)
            accepted.append(Accepted(duplicate=False, ids=tuple(ids[taken : taken + count])))
            taken += count
        return accepted

    def settle(self, value: list[Accepted] | None, error: BaseException | None) -> None:
        """On the loop: remember the new entries (a serving store hands them out from
        memory), then answer each caller still waiting."""
        if error is None and value is not None:
            store = self.store
            if store.serve:  # as store._remember(), inlined: once per message
                ready, due, pending = store._ready, store._due, EntryState.PENDING
                for commit, accepted in zip(self.commits, value, strict=True):
                    at = commit.at
                    for out, entry_id in zip(commit.entries, accepted.ids, strict=False):
                        ready[entry_id] = Entry(
                            id=entry_id,
                            target=out.target,
                            envelope=out.envelope,
                            state=pending,
                            attempts=0,
                            next_at=at,
                            created_at=at,
                            expires_at=out.expires_at,
                        )
                        heapq.heappush(due, (at, int(entry_id), entry_id))
            for future, accepted in zip(self.futures, value, strict=True):
                if not future.done():
                    future.set_result(accepted)
            return
        for future in self.futures:
            if not future.done():
                future.set_exception(error or RuntimeError("the store gave no answer"))

    def split(self) -> list[_Commits]:
        """One group per commit, each to run in a transaction of its own."""
        return [
            _Commits(self.store, [commit], [encoded], [future])
            for commit, encoded, future in zip(
                self.commits, self.encoded, self.futures, strict=True
            )
        ]


_DUPLICATE = Accepted(duplicate=True)
_ALL_FRESH = itertools.repeat(True)


def _insert_queue_rows(conn: sqlite3.Connection, params: list[Any]) -> list[str]:
    """Insert the queue rows whose parameters ``params`` holds (7 a row, in order); their
    ids, in the same order (see :class:`_Commits` for why they are consecutive)."""
    ids: list[str] = []
    rows = len(params) // 7
    start = 0
    for size in _CHUNKS:
        statement = _INSERT_QUEUE[size]
        while rows - start >= size:
            cur = conn.execute(statement, params[start * 7 : (start + size) * 7])
            last = int(cur.lastrowid or 0)
            ids += map(str, range(last - size + 1, last + 1))
            start += size
    return ids


def connect(
    path: Path, synchronous: Synchronous, *, busy_timeout: float = 10.0
) -> sqlite3.Connection:
    """Open the file in WAL mode with the schema in place (the schema version checked).
    ``busy_timeout`` (s): how long a write waits for another connection's write lock
    before it fails with "database is locked"."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _prepare(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, synchronous: Synchronous) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise GatewayError(
            f"the store {path} cannot use write-ahead logging (journal mode {mode})",
            reason=Reason.INTERNAL,
            hint="put the store on a local file system",
        )
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.executescript(_SCHEMA)
    columns = {str(c[1]) for c in conn.execute("PRAGMA table_info(queue)")}
    if "report" not in columns:  # added in place: a failure report still owed (reason)
        conn.execute("ALTER TABLE queue ADD COLUMN report TEXT")
    # the owed reports are few among the failed entries kept: found without a scan
    conn.execute("CREATE INDEX IF NOT EXISTS queue_owed ON queue (id) WHERE report IS NOT NULL")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise GatewayError(
            f"the store {path} has schema {row[0]}, this cpimgw reads {SCHEMA_VERSION}",
            reason=Reason.INTERNAL,
            hint="run the cpimgw version that wrote it, or move the file away",
        )


#: What an operation of a batch gave: its value, or the error it (or the commit) raised.
_Result = tuple[_Op | _Commits, Any, BaseException | None]
#: At most this many commits in one group (a batch holds at most 4096 operations).
_GROUP = 4096


class _Pump:
    """Runs queued operations in batches, one transaction per batch (group commit).

    The statements run on the event loop's thread (they are fast and need no locking:
    only the pump touches the connection); ``COMMIT`` — where SQLite fsyncs the WAL and
    checkpoints it now and then — goes to the store's own thread, and the operations
    queued meanwhile form the next batch; so does ``BEGIN IMMEDIATE`` when another
    connection holds the write lock (:meth:`_begin`). One thread hop per batch, no lock
    ping-pong per row, and the loop never waits for the file's write lock.
    """

    def __init__(
        self, conn: sqlite3.Connection, synchronous: Synchronous, busy_timeout: float
    ) -> None:
        self.conn = conn
        self.synchronous = synchronous
        self.busy_ms = int(busy_timeout * 1000)
        conn.execute("PRAGMA busy_timeout = 0")  # waits for the lock go to the thread
        self.loop = asyncio.get_running_loop()  # made by the store's open(), on the loop
        self.ops: list[_Op | _Commits] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.batches = 0
        self.operations = 0
        self.task: asyncio.Task[None] | None = None
        self.committer = _Committer()

    def start(self) -> None:
        self.committer.start()
        self.task = asyncio.create_task(self._run(), name="cpimgw-store")

    def submit(self, op: _Op) -> None:
        self.ops.append(op)
        self.wake.set()

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task
        self.committer.stop()
        self.conn.close()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.ops:
                if self.closing:
                    return
                continue
            while self.ops:
                batch, self.ops = self.ops[:4096], self.ops[4096:]
                _settle(await self._run_batch(batch))
            if self.closing:
                self.wake.set()

    async def _run_batch(self, batch: list[_Op | _Commits]) -> list[_Result]:
        """One transaction for the whole batch. If an operation fails, the batch is rolled
        back and every operation runs again in a transaction of its own (each commit of a
        group of commits too), so one failing operation fails alone (the rare path; the
        common one has no per-operation cost)."""
        self.batches += 1
        self.operations += sum(op.size for op in batch)
        try:
            return await self._transaction(batch)
        except _OperationError:
            results: list[_Result] = []
            for op in batch:
                for single in op.split():
                    try:
                        results += await self._transaction([single])
                    except _OperationError as failed:
                        results.append((single, None, failed.error))
                    except Exception as exc:  # noqa: BLE001 - the commit itself failed
                        results.append((single, None, exc))
            return results
        except Exception as exc:  # noqa: BLE001 - the commit itself failed: all fail
            return [(op, None, exc) for op in batch]

    async def _begin(self) -> None:
        """``BEGIN IMMEDIATE``: take the write lock, waiting up to ``busy_timeout`` while
        another connection holds it (an operator's ``cpimgw queue drop``), never on the
        loop. The connection's own busy timeout is 0, so the first try, on the loop,
        takes a free lock at once or fails at once; only then does the wait go to the
        store's thread, and the loop goes on serving meanwhile. Taking a free lock on the
        loop spares a hop whose answer would queue behind every sender the last commit
        woke: the next batch's statements and fsync start at once and overlap with the
        woken senders' work, instead of following it. Once the lock is held, the
        statements wait for no lock."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            await self.committer.run(self._begin_waiting)

    def _begin_waiting(self) -> None:
        """In the store's thread: ``BEGIN IMMEDIATE`` waiting up to ``busy_timeout``."""
        conn = self.conn
        conn.execute(f"PRAGMA busy_timeout = {self.busy_ms}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    async def _transaction(self, batch: list[_Op | _Commits]) -> list[_Result]:
        conn = self.conn
        results: list[_Result] = []
        try:
            await self._begin()
            for op in batch:
                try:
                    results.append((op, op.run(conn), None))
                except Exception as exc:
                    raise _OperationError(exc) from exc
            # COMMIT fsyncs (synchronous = FULL) and runs the WAL auto-checkpoint now and
            # then (either mode): both off the loop.
            await self.committer.run(conn.execute, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


class _Job:
    """A call for the commit thread and, once it ran, its outcome (read on the loop)."""

    __slots__ = ("args", "error", "finished", "fn", "future", "loop", "result")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self) -> None:
        """On the loop: answer whichever future waits now."""
        self.finished = True
        future = self.future
        if future.done():
            return
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.result)


class _Committer:
    """One thread of the store's own that runs each ``COMMIT`` handed to it, in order.

    A thread pool costs its hand-off per batch (locks, a work item, a second future
    chained to the loop's); here a hand-off is one put on a simple queue and one wake-up
    of the loop with the answer."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="cpimgw-store-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread; if the caller is cancelled meanwhile, the thread's
        work is waited for before the cancellation goes on, so nobody touches the
        connection while the thread still uses it (SQLite connections are not
        re-entrant)."""
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), fn, args)
        self._jobs.put(job)
        try:
            result: T = await job.future
        except asyncio.CancelledError:
            if not job.finished:  # the cancelled future is answered no more: wait anew
                job.future = loop.create_future()
                with contextlib.suppress(Exception):
                    await job.future
            raise
        return result

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                job.error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                job.loop.call_soon_threadsafe(job.resolve)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a worker thread; if the caller is cancelled meanwhile, wait for the
    thread to finish before letting the cancellation through, so nobody touches the
    connection while the thread still uses it (SQLite connections are not re-entrant)."""
    running = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise


def _mark_changed(conn: sqlite3.Connection) -> None:
    """Count an operator change (retry, drop), so serving stores know to rescan."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('operator-changes', '1') ON CONFLICT (key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def _changes(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'operator-changes'").fetchone()
    return 0 if row is None else int(row[0])


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """``ids`` as ranges of consecutive ids ``(first, last)``: entries are claimed, and
    so mostly completed, in id order, so a batch's completions are a few long runs, each
    deleted by one statement rather than row by row. Every id of a range is in ``ids``."""
    if not ids:
        return []
    ids.sort()
    runs: list[tuple[int, int]] = []
    first = last = ids[0]
    for entry_id in ids:
        if entry_id > last + 1:
            runs.append((first, last))
            first = entry_id
        last = entry_id
    runs.append((first, last))
    return runs


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logging.getLogger("cpimgw.store").error(
            "a store write failed; the entries concerned will be sent again",
            exc_info=future.exception(),
        )


def _settle(results: list[_Result]) -> None:
    for op, value, error in results:
        op.settle(value, error)


class SqliteStore:
    """The :class:`~gateway.store.Store` protocol on one SQLite file (one gateway node).

    ``serve=False`` opens the file for the operator's commands (``cpimgw queue``): no
    entries are loaded into memory and :meth:`claim` is not available.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "full",
        dedup_window: float = 3600.0,
        id_ttl: float = 7 * 86400.0,
        poll_interval: float = 1.0,
        serve: bool = True,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.synchronous: Synchronous = synchronous
        self.dedup_window = dedup_window
        self.id_ttl = id_ttl
        self.poll_interval = poll_interval
        self.serve = serve
        self._pump: _Pump | None = None
        self._ready: dict[str, Entry] = {}
        self._due: list[tuple[float, int, str]] = []
        self._claimed: set[str] = set()
        self._buckets = Buckets()
        self._last_scan = 0.0
        self._seen_changes: int | None = None  # operator change counter at the last rescan
        self._reader: sqlite3.Connection | None = None  # for stats(), used in one thread at a time
        self._reader_lock = asyncio.Lock()
        self._completed: deque[int] = deque()  # appended on the loop, drained by the writer
        self._flush_queued = False
        self._flush: asyncio.Future[Any] | None = None  # the last deletion of completed rows

    # -- plumbing -------------------------------------------------------------------

    @property
    def batches(self) -> int:
        """Transactions committed so far (group commit: fewer than operations)."""
        return 0 if self._pump is None else self._pump.batches

    @property
    def operations(self) -> int:
        """Operations run so far."""
        return 0 if self._pump is None else self._pump.operations

    def _submit(
        self, fn: Callable[[sqlite3.Connection], Any], after: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        if self._pump is None:
            raise GatewayError(
                f"the store {self.path} is not open", reason=Reason.INTERNAL, hint="call open()"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pump.submit(_Op(fn, future, after))
        return future

    async def open(self) -> None:
        if self._pump is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await asyncio.to_thread(
                connect, self.path, self.synchronous, busy_timeout=self.busy_timeout
            )
        except GatewayError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise GatewayError(
                f"cannot open the store {self.path}: {exc}",
                reason=Reason.INTERNAL,
                hint="check the [store] path and that the directory is writable",
            ) from exc
        self._pump = _Pump(conn, self.synchronous, self.busy_timeout)
        self._pump.start()
        if self.serve:
            rows = await self._submit(
                lambda c: c.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE state = 'pending' ORDER BY id"  # noqa: S608
                ).fetchall()
            )
            for row in rows:
                self._remember(_entry(row))
            self._seen_changes = await self._submit(_changes)

    async def close(self) -> None:
        pump = self._pump
        if pump is None:
            return
        self._pump = None
        await pump.close()
        async with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def check(self) -> None:
        """Raise unless a write transaction can run now (the write lock is free, the file
        writable): the gateway's probe while it waits for a failing store."""
        await self._submit(lambda c: c.execute("SELECT 1").fetchone())

    def _remember(self, entry: Entry) -> None:
        self._ready[entry.id] = entry
        heapq.heappush(self._due, (entry.next_at, int(entry.id), entry.id))

    # -- the queue ------------------------------------------------------------------

    async def commit(self, batch: Commit) -> Accepted:
        if batch.subscriptions or batch.ended or batch.presence is not None:
            return await self._commit_effects(batch)
        pump = self._pump
        if pump is None:
            raise GatewayError(
                f"the store {self.path} is not open", reason=Reason.INTERNAL, hint="call open()"
            )
        # Encoded here, on the caller's turn: an envelope that cannot be stored fails its
        # own call before anything is queued.
        entries = batch.entries
        encoded = (
            [encode_envelope(entries[0].envelope)]
            if len(entries) == 1
            else [encode_envelope(out.envelope) for out in entries]
        )
        # Queued as one more commit of the group queued last, when nothing was queued
        # after that group (the batch keeps the calls' order); inline: once per message.
        future: asyncio.Future[Accepted] = asyncio.Future(loop=pump.loop)
        ops = pump.ops
        group = ops[-1] if ops else None
        if type(group) is _Commits and len(group.commits) < _GROUP:
            group.commits.append(batch)
            group.encoded.append(encoded)
            group.futures.append(future)
        else:
            ops.append(_Commits(self, [batch], [encoded], [future]))
        pump.wake.set()
        return await future

    async def _commit_effects(self, batch: Commit) -> Accepted:
        """A commit that also changes subscriptions or the last presence (presence
        operations: a few per second), one operation of its own in the batch."""
        encoded = [(out, *encode_envelope(out.envelope)) for out in batch.entries]
        window = self.dedup_window

        def write(conn: sqlite3.Connection) -> tuple[Accepted, list[Entry]]:
            if batch.identity:
                # One statement: a new identity is inserted, one seen before the window
                # is refreshed, one seen within the window changes nothing (a duplicate).
                cur = conn.execute(_SEEN, (batch.identity, batch.at, batch.at - window))
                if cur.rowcount == 0:
                    return Accepted(duplicate=True), []
            made: list[Entry] = []
            ids: list[str] = []
            for out, meta, body in encoded:
                cur = conn.execute(
                    "INSERT INTO queue (identity, target, state, attempts, next_at, created_at,"
                    " expires_at, meta, body) VALUES (?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                    (
                        out.envelope.identity,
                        out.target,
                        batch.at,
                        batch.at,
                        out.expires_at,
                        meta,
                        body,
                    ),
                )
                entry_id = str(cur.lastrowid)
                ids.append(entry_id)
                made.append(
                    Entry(
                        id=entry_id,
                        target=out.target,
                        envelope=out.envelope,
                        state=EntryState.PENDING,
                        attempts=0,
                        next_at=batch.at,
                        created_at=batch.at,
                        expires_at=out.expires_at,
                    )
                )
            for sub in batch.subscriptions:
                conn.execute(
                    "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sub.watcher,
                        sub.presentity,
                        sub.state.value,
                        sub.watcher_adapter,
                        sub.presentity_adapter,
                        sub.expires_at,
                        sub.created_at,
                        sub.updated_at,
                    ),
                )
            for watcher, presentity in batch.ended:
                conn.execute(
                    "DELETE FROM subscriptions WHERE watcher = ? AND presentity = ?",
                    (watcher, presentity),
                )
            if batch.presence is not None:
                p = batch.presence
                conn.execute(
                    "INSERT OR REPLACE INTO presence VALUES (?, ?, ?, ?, ?)",
                    (p.presentity, p.payload.content_type, p.payload.body, p.at, p.identity),
                )
            return Accepted(duplicate=False, ids=tuple(ids)), made

        def after(value: tuple[Accepted, list[Entry]]) -> None:
            if self.serve:
                for entry in value[1]:
                    self._remember(entry)

        accepted, _ = await self._submit(write, after)
        return accepted  # type: ignore[no-any-return]

    async def claim(self, now: float, limit: int) -> list[Entry]:
        if not self.serve:
            raise GatewayError("this store was opened for inspection only", reason=Reason.INTERNAL)
        if now - self._last_scan >= self.poll_interval:
            self._last_scan = now
            changed = await self._submit(_changes)
            if changed != self._seen_changes:
                self._seen_changes = changed
                await self._rescan()
        out: list[Entry] = []
        while self._due and self._due[0][0] <= now and len(out) < limit:
            next_at, _, entry_id = heapq.heappop(self._due)
            entry = self._ready.get(entry_id)
            if entry is None or entry.next_at != next_at:
                continue  # dropped, or a stale heap item of a rescheduled entry
            del self._ready[entry_id]
            self._claimed.add(entry_id)
            out.append(entry)
        return out

    async def _rescan(self) -> None:
        """Pick up what another process (``cpimgw queue``) changed in the file."""

        def scan(conn: sqlite3.Connection) -> tuple[dict[str, float], int]:
            rows = conn.execute("SELECT id, next_at FROM queue WHERE state = 'pending'").fetchall()
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
            return {str(i): float(n) for i, n in rows}, int(seq[0]) if seq else 0

        missing: list[str] = []

        def reconcile(found: tuple[dict[str, float], int]) -> None:
            # Runs on the loop in commit order, so memory and the snapshot agree.
            pending, seq = found
            for entry_id in list(self._ready):
                if int(entry_id) <= seq and entry_id not in pending:
                    del self._ready[entry_id]  # dropped or failed by the operator
            for entry_id, next_at in pending.items():
                if entry_id in self._claimed:
                    continue
                known = self._ready.get(entry_id)
                if known is None:
                    missing.append(entry_id)
                elif next_at < known.next_at:
                    self._remember(_with(known, next_at=next_at))

        await self._submit(scan, reconcile)
        if not missing:
            return
        marks = ",".join("?" * len(missing))

        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE state = 'pending'"  # noqa: S608
                f" AND id IN ({marks})",
                [int(i) for i in missing],
            ).fetchall()

        def adopt(rows: list[Any]) -> None:
            for row in rows:
                entry = _entry(row)
                if entry.id not in self._claimed and entry.id not in self._ready:
                    self._remember(entry)

        await self._submit(fetch, adopt)

    async def next_due(self) -> float | None:
        while self._due:
            next_at, _, entry_id = self._due[0]
            entry = self._ready.get(entry_id)
            if entry is None or entry.next_at != next_at:
                heapq.heappop(self._due)
                continue
            return next_at
        return None

    async def complete(self, entry_id: str) -> None:
        """Delivered: the row is deleted with the next commit, without waiting for it.

        A completion lost in a crash only means the entry is sent again, with the same
        identity (at-least-once); waiting for it would cost a round trip per message.
        """
        self._claimed.discard(entry_id)
        self._completed.append(int(entry_id))
        if not self._flush_queued:
            self._flush_queued = True
            future = self._submit(self._delete_completed)
            future.add_done_callback(_log_failure)
            self._flush = future

    async def _completions_committed(self) -> None:
        """Wait for the commit of the completions queued so far. :meth:`complete` does
        not wait for it, but a read on the reader connection right after a delivery (a
        status asked for straight after, the queue depth) must not see the entry still
        queued."""
        flush = self._flush
        if flush is not None and not flush.done():
            await asyncio.wait([flush])

    def _delete_completed(self, conn: sqlite3.Connection) -> int:
        """Delete every completed entry queued so far (runs in the pump's batch)."""
        self._flush_queued = False  # before draining: a later append queues a new flush
        completed = self._completed
        ids: list[int] = []
        while True:
            try:
                ids.append(completed.popleft())
            except IndexError:
                break
        conn.executemany("DELETE FROM queue WHERE id BETWEEN ? AND ?", _runs(ids))
        return len(ids)

    async def reschedule(self, entry_id: str, *, next_at: float, attempts: int, error: str) -> None:
        def write(conn: sqlite3.Connection) -> Entry | None:
            conn.execute(
                "UPDATE queue SET next_at = ?, attempts = ?, last_error = ?"
                " WHERE id = ? AND state = 'pending'",
                (next_at, attempts, error, int(entry_id)),
            )
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE id = ? AND state = 'pending'",  # noqa: S608
                (int(entry_id),),
            ).fetchone()
            return None if row is None else _entry(row)

        def after(entry: Entry | None) -> None:
            self._claimed.discard(entry_id)
            if entry is not None and self.serve:
                self._remember(entry)

        await self._submit(write, after)

    async def fail(
        self, entry_id: str, *, error: str, now: float, report: str | None = None
    ) -> None:
        self._claimed.discard(entry_id)
        await self._submit(
            lambda c: c.execute(
                "UPDATE queue SET state = 'failed', last_error = ?, next_at = ?, report = ?"
                " WHERE id = ?",
                (error, now, report, int(entry_id)),
            )
        )

    async def reports(self, limit: int = 1000) -> list[Entry]:
        rows = await self._submit(
            lambda c: c.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue INDEXED BY queue_owed"  # noqa: S608
                " WHERE state = 'failed' AND report IS NOT NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def take_reports(
        self, limit: int = 1000, *, hold: float = 60.0, failed_before: float | None = None
    ) -> list[Entry]:
        """:meth:`reports` (one node owns this file), given up before ``failed_before``."""
        if failed_before is None:
            return await self.reports(limit)
        rows = await self._submit(
            lambda c: c.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue INDEXED BY queue_owed"  # noqa: S608
                " WHERE state = 'failed' AND next_at < ? AND report IS NOT NULL"
                " ORDER BY id LIMIT ?",
                (failed_before, limit),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def reported(self, entry_id: str) -> None:
        await self._submit(
            lambda c: c.execute("UPDATE queue SET report = NULL WHERE id = ?", (int(entry_id),))
        )

    async def entries(self, state: EntryState | None = None, limit: int = 100) -> list[Entry]:
        def read(conn: sqlite3.Connection) -> list[Any]:
            if state is None:
                return conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM queue ORDER BY id LIMIT ?",  # noqa: S608
                    (limit,),
                ).fetchall()
            return conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE state = ? ORDER BY id LIMIT ?",  # noqa: S608
                (state.value, limit),
            ).fetchall()

        return [_entry(row) for row in await self._submit(read)]

    async def requeue(self, ids: Sequence[str] | None, *, now: float) -> int:
        def write(conn: sqlite3.Connection) -> list[Any]:
            if ids is None:
                where, args = "state = 'failed'", []
            else:
                where = f"id IN ({','.join('?' * len(ids))})"
                args = [int(i) for i in ids]
            chosen = [
                int(row[0])
                for row in conn.execute(f"SELECT id FROM queue WHERE {where}", args)  # noqa: S608
            ]
            marks = ",".join("?" * len(chosen))
            conn.execute(
                f"UPDATE queue SET state = 'pending', next_at = ?, attempts = 0, report = NULL"  # noqa: S608
                f" WHERE id IN ({marks})",
                [now, *chosen],
            )
            _mark_changed(conn)
            return conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE id IN ({marks})",  # noqa: S608
                chosen,
            ).fetchall()

        def after(rows: list[Any]) -> None:
            if self.serve:
                for row in rows:
                    entry = _entry(row)
                    if entry.id not in self._claimed:
                        self._remember(entry)

        rows = await self._submit(write, after)
        return len(rows)

    async def drop(self, ids: Sequence[str] | None, *, state: EntryState | None = None) -> int:
        def write(conn: sqlite3.Connection) -> int:
            _remember_dropped(conn, ids, state)
            if ids is not None:
                cur = conn.execute(
                    f"DELETE FROM queue WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608
                    [int(i) for i in ids],
                )
            elif state is not None:
                cur = conn.execute("DELETE FROM queue WHERE state = ?", (state.value,))
            else:
                cur = conn.execute("DELETE FROM queue")
            _mark_changed(conn)
            return int(cur.rowcount)

        def after(_: int) -> None:
            if ids is not None:
                for entry_id in ids:
                    self._ready.pop(str(entry_id), None)
            elif state in (None, EntryState.PENDING):
                self._ready.clear()

        return int(await self._submit(write, after))

    async def stats(self, now: float) -> QueueStats:
        def read(conn: sqlite3.Connection) -> QueueStats:
            pending = failed = 0
            oldest = now
            by_target: dict[str, int] = {}
            for state, target, count, first in conn.execute(
                "SELECT state, target, count(*), min(created_at) FROM queue GROUP BY state, target"
            ):
                if state == EntryState.PENDING.value:
                    pending += int(count)
                    by_target[str(target)] = int(count)
                    oldest = min(oldest, float(first))
                else:
                    failed += int(count)
            return QueueStats(pending, failed, max(0.0, now - oldest), by_target)

        # A read of the whole queue: on its own connection in a worker thread (WAL readers
        # do not block the writer), so a large backlog never stalls the loop.
        def read_apart() -> QueueStats:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, check_same_thread=False)
            return read(self._reader)

        await self._completions_committed()
        async with self._reader_lock:
            return await _in_thread(read_apart)

    # -- presence, ids, buckets -------------------------------------------------------

    async def subscriptions(self) -> list[Subscription]:
        rows = await self._submit(
            lambda c: c.execute(
                "SELECT watcher, presentity, state, watcher_adapter, presentity_adapter,"
                " expires_at, created_at, updated_at FROM subscriptions"
                " ORDER BY presentity, watcher"
            ).fetchall()
        )
        return [
            Subscription(
                watcher=w,
                presentity=p,
                state=SubscriptionState(s),
                watcher_adapter=wa,
                presentity_adapter=pa,
                expires_at=None if exp is None else float(exp),
                created_at=float(created),
                updated_at=float(updated),
            )
            for w, p, s, wa, pa, exp, created, updated in rows
        ]

    async def presences(self) -> list[LastPresence]:
        rows = await self._submit(
            lambda c: c.execute(
                "SELECT presentity, content_type, body, at, identity FROM presence"
                " ORDER BY presentity"
            ).fetchall()
        )
        return [
            LastPresence(p, Payload(ct, bytes(body)), float(at), ident)
            for p, ct, body, at, ident in rows
        ]

    async def map_id(self, namespace: str, key: str, value: str, *, now: float) -> None:
        await self._submit(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO ids VALUES (?, ?, ?, ?)", (namespace, key, value, now)
            )
        )

    async def lookup_id(self, namespace: str, key: str) -> str | None:
        row = await self._submit(
            lambda c: c.execute(
                "SELECT value FROM ids WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def take_token(self, key: str, *, rate: float, burst: float, now: float) -> float:
        """Buckets live in this node's memory: one SQLite store serves one node."""
        return self._buckets.take(key, rate=rate, burst=burst, now=now)

    async def maintain(self, now: float, *, chunk: int = 5000) -> None:
        """Forget identities past the dedup window and old id mappings, ``chunk`` rows per
        transaction, so a large backlog of old rows never holds up the commits between."""
        seen_horizon = now - self.dedup_window
        id_horizon = now - self.id_ttl

        def write(conn: sqlite3.Connection) -> int:
            gone = conn.execute(
                "DELETE FROM seen WHERE identity IN"
                " (SELECT identity FROM seen WHERE at < ? LIMIT ?)",
                (seen_horizon, chunk),
            ).rowcount
            gone += conn.execute(
                "DELETE FROM ids WHERE (namespace, key) IN"
                " (SELECT namespace, key FROM ids WHERE at < ? LIMIT ?)",
                (id_horizon, chunk),
            ).rowcount
            gone += conn.execute(
                "DELETE FROM dropped WHERE identity IN"
                " (SELECT identity FROM dropped WHERE at < ? LIMIT ?)",
                (seen_horizon, chunk),
            ).rowcount
            return int(gone)

        while await self._submit(write) > 0:
            pass

    async def outcome(self, identity: str) -> Outcome | None:
        """Read on the reader connection in a worker thread, like :meth:`stats` (the
        queue has no index by identity: a status read must not scan it on the loop)."""

        def read(conn: sqlite3.Connection) -> Outcome | None:
            entries = conn.execute(
                "SELECT state, attempts, last_error FROM queue WHERE identity = ?", (identity,)
            ).fetchall()
            dropped = conn.execute("SELECT 1 FROM dropped WHERE identity = ?", (identity,))
            seen = conn.execute("SELECT 1 FROM seen WHERE identity = ?", (identity,))
            return outcome_of(
                [(str(s), int(a), e) for s, a, e in entries],
                dropped=dropped.fetchone() is not None,
                seen=seen.fetchone() is not None,
            )

        def read_apart() -> Outcome | None:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, check_same_thread=False)
            return read(self._reader)

        await self._completions_committed()
        async with self._reader_lock:
            return await _in_thread(read_apart)


def _remember_dropped(
    conn: sqlite3.Connection, ids: Sequence[str] | None, state: EntryState | None
) -> None:
    """Keep the identities of entries the operator drops (for :meth:`SqliteStore.outcome`,
    until :meth:`SqliteStore.maintain` forgets them with the dedup marks)."""
    args: list[int | str] = []
    if ids is not None:
        where, args = f"id IN ({','.join('?' * len(ids))})", [int(i) for i in ids]
    elif state is not None:
        where, args = "state = ?", [state.value]
    else:
        where = "1"
    conn.execute(
        "INSERT OR REPLACE INTO dropped (identity, at) SELECT identity, max(created_at)"  # noqa: S608
        f" FROM queue WHERE {where} AND identity != '' GROUP BY identity",
        args,
    )


def _with(entry: Entry, *, next_at: float) -> Entry:
    return Entry(
        id=entry.id,
        target=entry.target,
        envelope=entry.envelope,
        state=entry.state,
        attempts=entry.attempts,
        next_at=next_at,
        created_at=entry.created_at,
        expires_at=entry.expires_at,
        last_error=entry.last_error,
    )


__all__ = ["SqliteStore", "Synchronous", "decode_envelope", "encode_envelope"]


class _OperationError(Exception):
    """One operation of a batch failed (carries its own exception)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
