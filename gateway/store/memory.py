"""A store that keeps everything in memory: *not durable*.

For tests, and as the baseline ``benchmarks/core.py`` measures the durable store against
(``[store] backend = "memory"``). A crash loses everything in it, so a gateway running on
it acknowledges messages it may lose; ``cpimgw run`` says so in its log at start.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Sequence

from gateway.presence import LastPresence, Subscription
from gateway.security import Buckets
from gateway.store import Accepted, Commit, Entry, EntryState, Outcome, QueueStats, outcome_of


class MemoryStore:
    """The :class:`~gateway.store.Store` protocol over dicts (single process, not durable)."""

    def __init__(self, *, dedup_window: float = 86400.0, id_ttl: float = 7 * 86400.0) -> None:
        self.dedup_window = dedup_window
        self.id_ttl = id_ttl
        self._seen: dict[str, float] = {}
        self._dropped: dict[str, float] = {}  # identity -> its entry's created_at
        self._entries: dict[str, Entry] = {}
        self._due: list[tuple[float, int, str]] = []
        self._claimed: set[str] = set()
        self._subs: dict[tuple[str, str], Subscription] = {}
        self._presence: dict[str, LastPresence] = {}
        self._ids: dict[tuple[str, str], tuple[str, float]] = {}
        self._buckets = Buckets()
        self._seq = itertools.count(1)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(self, batch: Commit) -> Accepted:
        if batch.identity:
            seen = self._seen.get(batch.identity)
            if seen is not None and batch.at - seen < self.dedup_window:
                return Accepted(duplicate=True)
            self._seen[batch.identity] = batch.at
        ids = []
        for out in batch.entries:
            entry_id = str(next(self._seq))
            self._entries[entry_id] = Entry(
                id=entry_id,
                target=out.target,
                envelope=out.envelope,
                state=EntryState.PENDING,
                attempts=0,
                next_at=batch.at,
                created_at=batch.at,
                expires_at=out.expires_at,
            )
            heapq.heappush(self._due, (batch.at, int(entry_id), entry_id))
            ids.append(entry_id)
        for sub in batch.subscriptions:
            self._subs[(sub.watcher, sub.presentity)] = sub
        for key in batch.ended:
            self._subs.pop(key, None)
        if batch.presence is not None:
            self._presence[batch.presence.presentity] = batch.presence
        return Accepted(duplicate=False, ids=tuple(ids))

    async def claim(self, now: float, limit: int) -> list[Entry]:
        out: list[Entry] = []
        while self._due and self._due[0][0] <= now and len(out) < limit:
            next_at, _, entry_id = heapq.heappop(self._due)
            entry = self._entries.get(entry_id)
            if entry is None or entry.state is not EntryState.PENDING or entry_id in self._claimed:
                continue
            if entry.next_at != next_at:
                continue  # a stale heap item; the entry was rescheduled or requeued
            self._claimed.add(entry_id)
            out.append(entry)
        return out

    async def next_due(self) -> float | None:
        while self._due:
            next_at, _, entry_id = self._due[0]
            entry = self._entries.get(entry_id)
            if (
                entry is None
                or entry.state is not EntryState.PENDING
                or entry_id in self._claimed
                or entry.next_at != next_at
            ):
                heapq.heappop(self._due)
                continue
            return next_at
        return None

    async def complete(self, entry_id: str) -> None:
        self._claimed.discard(entry_id)
        self._entries.pop(entry_id, None)

    async def reschedule(self, entry_id: str, *, next_at: float, attempts: int, error: str) -> None:
        self._claimed.discard(entry_id)
        entry = self._entries.get(entry_id)
        if entry is None:
            return
        self._entries[entry_id] = _replace(entry, next_at=next_at, attempts=attempts, error=error)
        heapq.heappush(self._due, (next_at, int(entry_id), entry_id))

    async def fail(
        self, entry_id: str, *, error: str, now: float, report: str | None = None
    ) -> None:
        self._claimed.discard(entry_id)
        entry = self._entries.get(entry_id)
        if entry is None:
            return
        self._entries[entry_id] = _replace(
            entry,
            next_at=now,
            attempts=entry.attempts,
            error=error,
            state=EntryState.FAILED,
            report=report,
        )

    async def reports(self, limit: int = 1000) -> list[Entry]:
        owed = [e for e in self._entries.values() if e.report is not None]
        owed.sort(key=lambda e: int(e.id))
        return owed[:limit]

    async def take_reports(
        self, limit: int = 1000, *, hold: float = 60.0, failed_before: float | None = None
    ) -> list[Entry]:
        owed = await self.reports(len(self._entries))
        if failed_before is not None:
            owed = [e for e in owed if e.next_at < failed_before]
        return owed[:limit]

    async def reported(self, entry_id: str) -> None:
        entry = self._entries.get(entry_id)
        if entry is not None and entry.report is not None:
            self._entries[entry_id] = dataclasses.replace(entry, report=None)

    async def entries(self, state: EntryState | None = None, limit: int = 100) -> list[Entry]:
        found = [e for e in self._entries.values() if state is None or e.state is state]
        found.sort(key=lambda e: int(e.id))
        return found[:limit]

    async def requeue(self, ids: Sequence[str] | None, *, now: float) -> int:
        chosen = (
            [e for e in self._entries.values() if e.state is EntryState.FAILED]
            if ids is None
            else [self._entries[i] for i in ids if i in self._entries]
        )
        for entry in chosen:
            self._entries[entry.id] = _replace(
                entry, next_at=now, attempts=0, error=entry.last_error, state=EntryState.PENDING
            )
            heapq.heappush(self._due, (now, int(entry.id), entry.id))
        return len(chosen)

    async def drop(self, ids: Sequence[str] | None, *, state: EntryState | None = None) -> int:
        chosen = (
            [e.id for e in self._entries.values() if state is None or e.state is state]
            if ids is None
            else [i for i in ids if i in self._entries]
        )
        for entry_id in chosen:
            entry = self._entries.pop(entry_id)
            if entry.envelope.identity:
                self._dropped[entry.envelope.identity] = entry.created_at
        return len(chosen)

    async def stats(self, now: float) -> QueueStats:
        pending = [e for e in self._entries.values() if e.state is EntryState.PENDING]
        by_target: dict[str, int] = {}
        for entry in pending:
            by_target[entry.target] = by_target.get(entry.target, 0) + 1
        oldest = min((e.created_at for e in pending), default=now)
        return QueueStats(
            pending=len(pending),
            failed=len(self._entries) - len(pending),
            oldest_age=max(0.0, now - oldest),
            by_target=by_target,
        )

    async def subscriptions(self) -> list[Subscription]:
        return sorted(self._subs.values(), key=lambda s: (s.presentity, s.watcher))

    async def presences(self) -> list[LastPresence]:
        return sorted(self._presence.values(), key=lambda p: p.presentity)

    async def map_id(self, namespace: str, key: str, value: str, *, now: float) -> None:
        self._ids[(namespace, key)] = (value, now)

    async def lookup_id(self, namespace: str, key: str) -> str | None:
        found = self._ids.get((namespace, key))
        return None if found is None else found[0]

    async def take_token(self, key: str, *, rate: float, burst: float, now: float) -> float:
        return self._buckets.take(key, rate=rate, burst=burst, now=now)

    async def maintain(self, now: float) -> None:
        horizon = now - self.dedup_window
        self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
        self._dropped = {k: t for k, t in self._dropped.items() if t >= horizon}
        id_horizon = now - self.id_ttl
        self._ids = {k: v for k, v in self._ids.items() if v[1] >= id_horizon}

    async def outcome(self, identity: str) -> Outcome | None:
        found = [
            (e.state, e.attempts, e.last_error)
            for e in self._entries.values()
            if e.envelope.identity == identity
        ]
        return outcome_of(found, dropped=identity in self._dropped, seen=identity in self._seen)


def _replace(
    entry: Entry,
    *,
    next_at: float,
    attempts: int,
    error: str | None,
    state: EntryState = EntryState.PENDING,
    report: str | None = None,
) -> Entry:
    """A copy of ``entry`` in a new state; a report owed is kept only when given (a
    retried or requeued entry owes none)."""
    return Entry(
        id=entry.id,
        target=entry.target,
        envelope=entry.envelope,
        state=state,
        attempts=attempts,
        next_at=next_at,
        created_at=entry.created_at,
        expires_at=entry.expires_at,
        last_error=error,
        report=report,
    )
