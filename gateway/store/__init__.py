"""The store: where every accepted envelope waits until it is delivered, and where the
presence book, the dedup window, the id map and the rate-limit buckets live.

DESIGN.md "Delivery": an envelope is written to the store before the sender is
acknowledged, and delivery runs *from* the store, so a crash loses nothing that was
acknowledged (at-least-once, RFC 3860 §3.4.1: the gateway answers only once it has taken
responsibility). The protocol below is all the core knows; no SQL leaks out of it, so a
second implementation on a shared Redis (several gateway nodes: streams with consumer
groups, claims of a dead node's pending entries) plugs in behind the same calls.

Semantics every implementation keeps:

- :meth:`Store.commit` is atomic: the dedup check on ``Commit.identity``, the queue
  entries, the subscription changes and the last presence are written together, or not
  at all. When the identity was seen within the dedup window, nothing is written and the
  result says ``duplicate``.
- :meth:`Store.claim` hands out due pending entries; an entry is claimed by one node at a
  time until it is completed, rescheduled or failed, or until that node dies (then it is
  handed out again: at-least-once, with the same identity).
- A failure report owed to a sender is kept with the failed entry (``fail(report=)``)
  until :meth:`Store.reported`, so a crash between giving up and reporting leaves it
  owed, and the next start sends it (at-least-once: a crash after the adapter took it
  and before ``reported`` sends it again, from the same stored envelope). A requeue or
  a drop by the operator cancels it.
- Entries are never silently removed: they are completed (delivered), failed (kept for
  the operator, ``cpimgw queue``), or dropped by the operator.
- :meth:`Store.outcome` tells what became of an identity (:func:`outcome_of` decides
  from what the store holds): *failed* while one of its entries is failed, or when the
  operator dropped one; *pending* while one is queued; *delivered* once none is left of
  an identity committed within the dedup window. So the store remembers a finished
  identity as long as its dedup mark lives (``dedup_window``), plus the identities of
  dropped entries for as long (a compact record, expiring with the marks); after that
  the answer is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from adapters.contract import Outcome, OutcomeState
from canonical.envelope import Envelope
from gateway.presence import LastPresence, Subscription


class EntryState(StrEnum):
    """Where a queue entry stands: waiting for (another) attempt, or given up."""

    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outbound:
    """One envelope to send to adapter ``target``; given up at ``expires_at`` (POSIX s)."""

    target: str
    envelope: Envelope
    expires_at: float


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything one inbound operation changes, written atomically.

    ``identity`` is the dedup key (``Envelope.identity``); an empty identity skips the
    dedup check (effects the core produces itself, e.g. re-subscriptions after a restart).
    ``ended`` lists ``(watcher, presentity)`` subscriptions to remove.
    """

    identity: str
    at: float
    entries: tuple[Outbound, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    ended: tuple[tuple[str, str], ...] = ()
    presence: LastPresence | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to :meth:`Store.commit`: the new entries' ids, or ``duplicate``."""

    duplicate: bool
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued envelope and its delivery bookkeeping."""

    id: str
    target: str
    envelope: Envelope
    state: EntryState
    attempts: int
    next_at: float
    created_at: float
    expires_at: float
    last_error: str | None = None
    #: A failed entry whose failure report the sender has not been handed yet: the
    #: reason (``Reason`` value) to report; None when no report is owed.
    report: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue depth (pending entries), failed entries kept, and the oldest pending age (s)."""

    pending: int
    failed: int
    oldest_age: float
    by_target: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """The durable state of one gateway (or of a cluster of gateway nodes)."""

    async def open(self) -> None:
        """Create or open the store and load what the running node needs."""
        ...

    async def close(self) -> None:
        """Flush every pending write and release the store."""
        ...

    async def commit(self, batch: Commit) -> Accepted:
        """Write ``batch`` atomically and durably; return once it is on disk."""
        ...

    async def claim(self, now: float, limit: int) -> list[Entry]:
        """Up to ``limit`` pending entries due at ``now``, claimed by this node."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest unclaimed pending entry falls due (None: nothing pending)."""
        ...

    async def complete(self, entry_id: str) -> None:
        """The entry was delivered: remove it."""
        ...

    async def reschedule(self, entry_id: str, *, next_at: float, attempts: int, error: str) -> None:
        """Try the entry again at ``next_at`` (backoff decided by the core)."""
        ...

    async def fail(
        self, entry_id: str, *, error: str, now: float, report: str | None = None
    ) -> None:
        """Give the entry up; it stays visible to the operator as failed. With
        ``report`` (the failure's ``Reason`` value) a failure report to the sender is
        owed, written in the same step, until :meth:`reported` (RFC 3860 §3.4.1)."""
        ...

    async def reports(self, limit: int = 1000) -> list[Entry]:
        """Failed entries whose failure report is still owed (oldest first)."""
        ...

    async def take_reports(
        self, limit: int = 1000, *, hold: float = 60.0, failed_before: float | None = None
    ) -> list[Entry]:
        """The owed reports (:meth:`reports`) this node may send now. On a store several
        nodes share, only those whose origin adapter this node serves now, less those
        another node took within its ``hold``; the ones returned are this node's for
        ``hold`` seconds (renewed by calling again), so nodes starting together send each
        report once, not once per node. A store of one node returns :meth:`reports`.
        With ``failed_before``, only the reports of entries given up before that time
        (the ``now`` of :meth:`fail`)."""
        ...

    async def reported(self, entry_id: str) -> None:
        """The failure report of the entry was handed to its origin adapter."""
        ...

    async def entries(self, state: EntryState | None = None, limit: int = 100) -> list[Entry]:
        """Queue entries for the operator (oldest first)."""
        ...

    async def requeue(self, ids: Sequence[str] | None, *, now: float) -> int:
        """Make entries (all failed ones when ``ids`` is None) pending and due now."""
        ...

    async def drop(self, ids: Sequence[str] | None, *, state: EntryState | None = None) -> int:
        """Remove entries for good (all in ``state`` when ``ids`` is None)."""
        ...

    async def stats(self, now: float) -> QueueStats:
        """Counts for metrics and ``/readyz``."""
        ...

    async def subscriptions(self) -> list[Subscription]:
        """Every stored subscription (the presence book is rebuilt from these)."""
        ...

    async def presences(self) -> list[LastPresence]:
        """The last known presence of every presentity."""
        ...

    async def map_id(self, namespace: str, key: str, value: str, *, now: float) -> None:
        """Remember ``key -> value`` in ``namespace`` (native id <-> identity)."""
        ...

    async def lookup_id(self, namespace: str, key: str) -> str | None:
        """The value stored by :meth:`map_id`, or None."""
        ...

    async def take_token(self, key: str, *, rate: float, burst: float, now: float) -> float:
        """Take one token from the bucket ``key``: 0.0 when granted, else seconds to wait."""
        ...

    async def maintain(self, now: float) -> None:
        """Housekeeping: forget identities older than the dedup window, old id mappings."""
        ...

    async def outcome(self, identity: str) -> Outcome | None:
        """What became of the envelopes stored under ``identity`` (see the module
        docstring); None when the store no longer remembers it."""
        ...


#: What an operator's drop leaves in an outcome.
DROPPED = "dropped by the operator"


def outcome_of(
    entries: Iterable[tuple[EntryState | str, int, str | None]], *, dropped: bool, seen: bool
) -> Outcome | None:
    """The outcome of an identity from its queue entries' ``(state, attempts, last
    error)``, whether an entry of it was dropped by the operator, and whether it was
    committed within the dedup window (pure; every store answers through this)."""
    found = list(entries)
    failed = [e for e in found if e[0] == EntryState.FAILED]
    if failed:
        return Outcome(OutcomeState.FAILED, max(e[1] for e in failed), failed[0][2])
    if found:
        last = next((e[2] for e in found if e[2]), None)
        return Outcome(OutcomeState.PENDING, max(e[1] for e in found), last)
    if dropped:
        return Outcome(OutcomeState.FAILED, 0, DROPPED)
    if seen:
        return Outcome(OutcomeState.DELIVERED)
    return None


__all__ = [
    "DROPPED",
    "Accepted",
    "Commit",
    "Entry",
    "EntryState",
    "Outbound",
    "Outcome",
    "OutcomeState",
    "QueueStats",
    "Store",
    "outcome_of",
]
