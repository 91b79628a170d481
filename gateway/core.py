"""The runner: adapters -> loop checks -> security -> routing -> store -> send.

This is the only module of the core that awaits. Everything it decides with is pure
(:mod:`gateway.routing`, :mod:`gateway.security`, :mod:`gateway.presence`); everything
it keeps is in the :class:`~gateway.store.Store`.

Inbound (``deliver``, DESIGN.md "Delivery"): an envelope is checked, routed, and
committed to the store *before* the adapter gets its :class:`Receipt`; a refusal raises
the :class:`~canonical.errors.GatewayError` whose ``reason`` the adapter turns into its
own protocol's error. The store's dedup window drops what arrives twice.

Outbound: a dispatcher claims due entries from the store and sends each with
``envelope.hop(gateway_id)`` (RFC 3860 §3.4.2: MaxForwards spent, our id added to the
transport history). A retryable failure is rescheduled with exponential backoff and
jitter (and never sooner than the peer's ``retry_after``); a final failure — not
retryable, out of attempts, or past the entry's expiry — is kept in the store as failed
and reported to the sender through the adapter it arrived on (RFC 3860 §3.4.1), once,
and never for a report itself (RFC 6120 §8.3.1 rule 8: no error in answer to an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from adapters.contract import Adapter, Capability, Deliver, Receipt
from canonical.envelope import Envelope, Operation
from canonical.errors import (
    DeliveryError,
    GatewayError,
    MappingError,
    Reason,
    RoutingError,
    SecurityError,
)
from gateway.logs import RUNNER, OutcomeLog
from gateway.metrics import Metrics
from gateway.presence import Effects, PresenceBook, SubscriptionState
from gateway.routing import RoutingTable, SeenSet, bare, check_hops
from gateway.security import Rules, judge
from gateway.store import Accepted, Commit, Entry, Outbound, Store

#: Attribute of a report envelope (see adapters.memory) — a report is never reported.
REPORT_REASON = "report.reason"
#: Envelope attribute naming requested IMDN notifications (RFC 5438 §6.3 Disposition-
#: Notification); "negative-delivery" in it asks for a failure notification.
IMDN_REQUEST = "imdn.disposition-notification"
#: Set on the envelope handed to ``Adapter.report`` when the sender asked for a negative
#: delivery notification: the adapter sends an IMDN failure in its own protocol.
REPORT_IMDN = "report.imdn"
#: Set on messages whose route checks signatures: "valid", "invalid" or "none" (unsigned).
SIGNATURE = "signature.verdict"
#: Backoff of a store call that raised (seconds): first wait, cap, and how long the
#: dispatcher must have run before a new error starts again from the first wait.
STORE_BACKOFF_MIN = 0.05
STORE_BACKOFF_MAX = 5.0
STORE_BACKOFF_RESET = 30.0
#: At most one error line per this many seconds while the store keeps failing.
STORE_LOG_INTERVAL = 10.0
#: Seconds between tries of the failure reports an origin adapter refused while running.
REPORT_RETRY_INTERVAL = 5.0
#: Refused reports kept in memory for those tries; more wait in the store for the next start.
REPORT_RETRY_MAX = 10_000
#: Seconds an owed report taken by this node stays its own on a shared store (renewed at
#: every retry round): longer than a start's resend of 1,000 reports and the retry interval.
REPORT_HOLD = 120.0
#: Seconds after which an owed report nobody is sending (its node died between giving the
#: entry up and reporting it, or a start left it for later) is sent by a running node.
REPORT_ORPHAN_AGE = 30.0


class RateLimitedError(SecurityError):
    """A sender's token bucket is empty. ``retry_after`` (seconds) is when the next token
    is there; adapters send it on (SIP and HTTP ``Retry-After``)."""

    default_reason = Reason.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, hint=f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Retries and limits of the delivery loop (``[delivery]`` in the config)."""

    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int = 12
    expiry: float = 86400.0
    presence_expiry: float = 300.0
    concurrency: int = 256
    send_timeout: float = 30.0
    drain_timeout: float = 20.0


#: Exceptions that name a mistake in cpimgw's own code, never a store's outage.
_BUGS = (
    TypeError,
    AttributeError,
    NameError,
    LookupError,
    AssertionError,
    ArithmeticError,
    RecursionError,
)


def is_bug(error: BaseException) -> bool:
    """True for a programming error (a TypeError, a KeyError ...), false for what a store
    or a peer raises on purpose (GatewayError, sqlite3.Error, OSError, Redis's errors)."""
    return isinstance(error, _BUGS) and not isinstance(error, GatewayError)


def backoff(
    attempts: int, policy: DeliveryPolicy, *, draw: float, retry_after: float | None
) -> float:
    """Seconds until attempt ``attempts + 1``: exponential, capped, with ``jitter`` of it
    drawn at random (``draw`` in [0, 1)), and never less than the peer's ``retry_after``.
    Pure, so its law is testable: ``(1 - jitter) * base <= delay <= base``."""
    base = min(
        policy.max_backoff, policy.initial_backoff * policy.multiplier ** max(0, attempts - 1)
    )
    delay = base * (1.0 - policy.jitter * draw)
    return max(delay, retry_after or 0.0)


@dataclass(slots=True)
class Counters:
    """What this process did (tests and the benchmark read it; metrics have the rest)."""

    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    reported: int = 0


class Gateway:
    """One gateway: its adapters, its store, its rules, and the loops that move messages."""

    def __init__(
        self,
        *,
        gateway_id: str,
        adapters: Mapping[str, Adapter],
        store: Store,
        routing: RoutingTable,
        rules: Rules | None = None,
        delivery: DeliveryPolicy | None = None,
        presence: PresenceBook | None = None,
        seen: SeenSet | None = None,
        metrics: Metrics | None = None,
        outcomes: OutcomeLog | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.adapters = dict(adapters)
        self.store = store
        self.routing = routing
        self.rules = rules or Rules()
        self.delivery = delivery or DeliveryPolicy()
        self.book = presence or PresenceBook()
        self.seen = seen or SeenSet(window=30.0)
        self.metrics = metrics or Metrics()
        self.outcomes = outcomes or OutcomeLog()
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logging.getLogger(RUNNER)
        self.counters = Counters()
        self._wake = asyncio.Event()
        self._closing = False
        self._stopping = False
        #: sends in flight and when each must have finished (``send_timeout``)
        self._inflight: dict[asyncio.Task[None], float] = {}
        self._overdue: set[asyncio.Task[None]] = set()
        self._next_watch = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._adapter_tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._store_ok = False
        #: store calls being retried after an error (readiness: ``store`` is false)
        self._store_failing = 0
        self._store_logged = 0.0
        self._bug_logged = 0.0
        #: Owed reports the origin adapter refused (entry id -> envelope, error), tried
        #: again every REPORT_RETRY_INTERVAL s while this node runs.
        self._unreported: dict[str, tuple[Envelope, GatewayError]] = {}
        self.report_retry_interval = REPORT_RETRY_INTERVAL
        self.report_orphan_age = REPORT_ORPHAN_AGE
        #: Owed reports this node is sending now (or has planned to, at start).
        self._reporting: set[str] = set()
        self._handles: dict[str, _Handle] = {}
        self._turns: dict[str, _Turn] = {}
        self._presence_turns: dict[str, _Turn] = {}
        self._housekeeping_wake = asyncio.Event()
        self._housekeeping_at = math.inf  # when the housekeeping loop wakes up next
        self._check_routes()
        for adapter in self.adapters.values():
            # adapters that tell their callers what became of an operation ask the store
            if adapter.context.outcome is None:
                adapter.context.outcome = store.outcome

    # -- configuration ------------------------------------------------------------

    def _check_routes(self) -> None:
        missing = sorted(self.routing.adapters() - set(self.adapters))
        if missing:
            raise RoutingError(
                f"routes name adapters that are not configured: {', '.join(missing)}",
                reason=Reason.INTERNAL,
                hint="add an [adapters.NAME] section or fix the route",
            )

    def reload(self, *, routing: RoutingTable, rules: Rules) -> None:
        """Swap routing and access rules (SIGHUP); connections and the queue stay."""
        old = self.routing
        self.routing = routing
        try:
            self._check_routes()
        except RoutingError:
            self.routing = old
            raise
        self.rules = rules
        self.log.info("routing and access rules reloaded", extra={"routes": len(routing.routes)})

    def capabilities(self, adapter: str) -> frozenset[Capability]:
        found = self.adapters[adapter]
        declared = getattr(found, "declared", None)
        return declared() if callable(declared) else found.capabilities

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, rebuild the presence book, start adapters and loops."""
        if self._started:
            return
        self._started = True
        await self.store.open()
        self._store_ok = True
        self.book.load(await self.store.subscriptions(), await self.store.presences())
        for name, adapter in self.adapters.items():
            self._adapter_tasks[name] = asyncio.create_task(
                self._run_adapter(name, adapter), name=f"adapter:{name}"
            )
        self._tasks.append(asyncio.create_task(self._dispatch(), name="dispatch"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        await self._resubscribe()
        self._tasks.append(asyncio.create_task(self._resend_reports(), name="reports"))
        self._tasks.append(asyncio.create_task(self._retry_reports(), name="report-retries"))

    async def _run_adapter(self, name: str, adapter: Adapter) -> None:
        try:
            await adapter.run(self.deliver_for(name))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("adapter stopped with an error", extra={"adapter": name})
            raise

    def ready(self) -> dict[str, bool]:
        """Readiness per component (``/readyz``)."""
        state = {f"adapter:{n}": a.ready() for n, a in self.adapters.items()}
        for name, task in self._adapter_tasks.items():
            if task.done():
                state[f"adapter:{name}"] = False
        state["store"] = self._store_ok and not self._store_failing
        state["accepting"] = self._started and not self._closing
        return state

    async def stop(self) -> None:
        """Drain (SIGTERM): refuse new work, let in-flight sends finish (bounded by
        ``drain_timeout``), stop the adapters, close the store. Entries not yet sent
        stay in the store for the next start."""
        if not self._started or self._stopping:
            return
        self._closing = True
        self._stopping = True
        self._wake.set()
        if self._inflight:
            _, pending = await asyncio.wait(
                set(self._inflight), timeout=self.delivery.drain_timeout
            )
            for task in pending:
                task.cancel()
            if pending:
                self.log.warning(
                    "drain timed out; unfinished sends stay queued", extra={"count": len(pending)}
                )
                await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for adapter in self.adapters.values():
            try:
                await asyncio.wait_for(adapter.stop(), self.delivery.drain_timeout)
            except Exception:
                self.log.exception("adapter did not stop cleanly", extra={"adapter": adapter.name})
        tasks = list(self._adapter_tasks.values())
        _, pending_runs = (
            await asyncio.wait(tasks, timeout=self.delivery.drain_timeout)
            if tasks
            else (set(), set())
        )
        for task in pending_runs:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()
        self._store_ok = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- inbound ------------------------------------------------------------------

    def deliver_for(self, adapter: str) -> Deliver:
        """The ``deliver`` callable handed to adapter ``adapter``'s ``run``."""
        handle = self._handles.get(adapter)
        if handle is None:
            handle = self._handles[adapter] = _Handle(self, adapter)
        return handle

    async def accept(self, adapter: str, envelope: Envelope) -> Receipt:
        """Check, route and store one inbound envelope; see the module docstring.

        Order: calls are written to the store in the order they were made (nothing
        before the store write suspends but a sender's token bucket and a presentity's
        presence turn, both taken in turns), so an adapter that starts calls in its
        network's order — without waiting for each answer — has them stored, and so sent
        on, in that order. Presence operations of one presentity are planned, stored and
        applied to the presence book one after the other: each sees the book as the
        previous one left it."""
        now = self.clock()
        fixes: dict[str, object] = {}
        if envelope.origin.adapter != adapter:
            fixes["origin"] = replace(envelope.origin, adapter=adapter)
        if not envelope.received_at:
            fixes["received_at"] = now
        if fixes:
            envelope = envelope.replace(**fixes)
        try:
            self._check_open()
            check_hops(envelope, self.gateway_id)
            key = self._presentity_key(envelope)
            if key is None:
                batch, effects, accepted = await self._plan_and_store(envelope, now)
            else:
                # presence operations of one presentity in turns, each one's change to the
                # book applied before the next is planned (an AUTHORIZE and the NOTIFY
                # right behind it: the NOTIFY must see the subscription approved)
                async with _in_turn(self._presence_turns, key):
                    batch, effects, accepted = await self._plan_and_store(envelope, now)
        except GatewayError as exc:
            self.counters.refused += 1
            self.metrics.rejected.labels(adapter, exc.reason.value).inc()
            self.outcomes.outcome(
                "refused", envelope, level=logging.WARNING, reason=exc.reason.value, error=str(exc)
            )
            raise
        except Exception as exc:
            # A bug must still give the sender an answer in its protocol, and a log line.
            self.log.exception(
                "accepting an envelope failed", extra={"identity": envelope.identity}
            )
            self.counters.refused += 1
            self.metrics.rejected.labels(adapter, Reason.INTERNAL.value).inc()
            raise GatewayError(
                f"internal error while accepting {envelope.identity}: {type(exc).__name__}",
                reason=Reason.INTERNAL,
                hint="the gateway's log has the details",
            ) from exc
        if accepted.duplicate:
            self.counters.duplicates += 1
            self.metrics.duplicates.labels(adapter).inc()
            self.outcomes.outcome("duplicate", envelope)
            return Receipt(envelope.identity, duplicate=True)
        if effects is not None and effects.dropped:
            self.metrics.presence_dropped.inc(effects.dropped)
        self.counters.accepted += 1
        self.metrics.child(self.metrics.messages_in, adapter, envelope.operation.value).inc()
        self.outcomes.outcome(
            "accepted",
            envelope,
            entries=len(accepted.ids),
            note=effects.note if effects else None,
            signature=batch.entries[0].envelope.attributes.get(SIGNATURE)
            if batch.entries
            else None,
        )
        if accepted.ids:
            self._wake.set()
        return Receipt(envelope.identity)

    async def _plan_and_store(
        self, envelope: Envelope, now: float
    ) -> tuple[Commit, Effects | None, Accepted]:
        """Plan, write to the store, and apply the presence change to the book once the
        store took it (not for a duplicate)."""
        batch, effects = await self._plan(envelope, now)
        try:
            accepted = await self.store.commit(batch)
        except GatewayError:
            raise
        except Exception as exc:
            self.log.exception("the store refused a write", extra={"identity": batch.identity})
            raise DeliveryError(
                f"the gateway cannot store messages right now: {exc}",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="send again later; the operator is alerted by the log",
                retry_after=5.0,
            ) from exc
        if effects is not None and not accepted.duplicate:
            self.book.apply(effects)
            due = self.book.next_flush()
            if due is not None and due < self._housekeeping_at:
                self._housekeeping_wake.set()  # a NOTIFY held now is due before that
        return batch, effects, accepted

    def _presentity_key(self, envelope: Envelope) -> str | None:
        """The bare presentity a presence operation is about (its turn's key), or None
        for a message. RFC 3859 §3.1: SUBSCRIBE/UNSUBSCRIBE name the presentity as
        recipient, AUTHORIZE and NOTIFY come from it."""
        op = envelope.operation
        if op is Operation.MESSAGE:
            return None
        if op in (Operation.SUBSCRIBE, Operation.UNSUBSCRIBE):
            try:
                return bare(self.routing.resolve(envelope.recipient).recipient)
            except GatewayError:
                return None  # refused by _plan, with the reason
        return bare(envelope.sender)

    def _check_open(self) -> None:
        """Refuse new work while draining (the sender retries; nothing is half-taken)."""
        if self._closing:
            raise DeliveryError(
                "the gateway is shutting down",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="send again in a moment",
                retry_after=5.0,
            )

    async def _plan(self, envelope: Envelope, now: float) -> tuple[Commit, Effects | None]:
        """What storing this envelope means: the queue entries and presence changes."""
        op = envelope.operation
        route = None
        if op is not Operation.NOTIFY:
            resolution = self.routing.resolve(envelope.recipient)
            route = resolution.route
        verdict = judge(
            envelope,
            rules=self.rules,
            routing=self.routing,
            route=route,
            capabilities=self.capabilities(route.adapter) if route else frozenset(),
            now=now,
        )
        if verdict.signature != "unchecked":
            self.metrics.signatures.labels(verdict.signature).inc()
        if not verdict.allowed:
            raise verdict.error()
        if verdict.rate_key is not None and self.rules.rate > 0:
            wait = await self._take_token(verdict.rate_key, now)
            if wait > 0:
                raise RateLimitedError(
                    f"{envelope.sender} sends faster than {self.rules.rate:g}/s",
                    retry_after=wait,
                )
        if op is Operation.MESSAGE:
            self.seen.check(envelope, now)
            changes: dict[str, object] = {}
            if resolution.recipient != envelope.recipient:
                changes["recipient"] = resolution.recipient
            if verdict.signature != "unchecked":
                # "verify" annotates: the result travels with the envelope (and the logs)
                changes["attributes"] = {**envelope.attributes, SIGNATURE: verdict.signature}
            if verdict.attributes:  # [security] author = "off": recorded, not refused
                annotated = {**envelope.attributes, **verdict.attributes}
                if verdict.signature != "unchecked":
                    annotated[SIGNATURE] = verdict.signature
                changes["attributes"] = annotated
                self.metrics.author_mismatches.labels(envelope.origin.adapter).inc()
                self.log.warning(
                    "the CPIM From is not the sender; let through ([security] author = off)",
                    extra={
                        "identity": envelope.identity,
                        "sender": envelope.sender,
                        **verdict.attributes,
                    },
                )
            out = envelope.replace(**changes) if changes else envelope
            entry = Outbound(resolution.adapter, out, now + self.delivery.expiry)
            return Commit(envelope.identity, now, (entry,)), None
        if op is Operation.SUBSCRIBE:
            effects = self.book.subscribe(
                envelope,
                presentity=resolution.recipient,
                presentity_adapter=resolution.adapter,
                now=now,
            )
        elif op is Operation.UNSUBSCRIBE:
            effects = self.book.unsubscribe(envelope, presentity=resolution.recipient, now=now)
        elif op is Operation.AUTHORIZE:
            effects = self.book.authorize(envelope, watcher=resolution.recipient, now=now)
        else:
            effects = self.book.notify(envelope, now=now)
        return self._commit_of(envelope.identity, effects, now), effects

    async def _take_token(self, key: str, now: float) -> float:
        """The store's token bucket, one caller per key at a time in call order. A shared
        store answers over the network; without the turn, a sender's later message could
        get its answer first and be stored first. Handing the turn on wakes the next
        caller only after this one has gone on to its store write (no suspension lies
        between), which keeps the order ``accept`` promises."""
        async with _in_turn(self._turns, key):
            return await self.store.take_token(
                key, rate=self.rules.rate, burst=self.rules.burst, now=now
            )

    def _commit_of(self, identity: str, effects: Effects, now: float) -> Commit:
        entries = []
        for out in effects.send:
            try:
                resolution = self.routing.resolve(out.recipient)
            except RoutingError as exc:
                self.outcomes.outcome("unroutable", out, level=logging.WARNING, error=str(exc))
                continue
            expiry = (
                self.delivery.expiry
                if out.operation is not Operation.NOTIFY
                else (self.delivery.presence_expiry)
            )
            entries.append(
                Outbound(
                    resolution.adapter, out.replace(recipient=resolution.recipient), now + expiry
                )
            )
        return Commit(
            identity,
            now,
            tuple(entries),
            subscriptions=effects.subscriptions,
            ended=effects.ended,
            presence=effects.presence,
        )

    async def _resubscribe(self) -> None:
        """Re-establish live subscriptions on the presentities' networks after a start."""
        now = self.clock()
        entries = tuple(
            Outbound(adapter, env, now + self.delivery.presence_expiry)
            for adapter, env in self.book.resubscribe(now)
            if adapter in self.adapters
        )
        if entries:
            await self.store.commit(Commit("", now, entries))
            self.log.info("re-subscribing after start", extra={"count": len(entries)})
            self._wake.set()
        # what coalescing held died with the last process: watchers get the stored state
        restated = self._commit_of("", self.book.restate(now), now)
        if restated.entries:
            await self.store.commit(restated)
            self.log.info("presence restated to watchers", extra={"count": len(restated.entries)})
            self._wake.set()

    # -- outbound -----------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Run the dispatch loop, and run it again when a store call in it raised (a
        locked or full SQLite file, a dropped Redis connection): the error is logged and
        counted, readiness says ``store`` is failing, the store is checked with a capped
        backoff until it answers, and dispatching resumes. Nothing was claimed by the
        call that raised, so nothing is lost or sent twice by the restart."""
        delay = STORE_BACKOFF_MIN
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._dispatch_loop()
            except Exception as exc:  # noqa: BLE001 - counted, logged, retried
                if time.monotonic() - started > STORE_BACKOFF_RESET:
                    delay = STORE_BACKOFF_MIN  # it ran a while: a new outage
                if is_bug(exc):
                    await self._dispatch_bug(exc, delay)
                else:
                    await self._store_retry("dispatch", self._check_store, exc, delay=delay)
                delay = min(delay * 2, STORE_BACKOFF_MAX)

    async def _dispatch_bug(self, error: Exception, delay: float) -> None:
        """The dispatch loop raised a programming error, not a store's: it is logged with
        its traceback (at most every ``STORE_LOG_INTERVAL`` s) and counted as
        ``cpimgw_internal_errors_total{where="dispatch"}`` — not as a store error, and
        readiness does not blame the store — and the loop restarts after ``delay``."""
        self.metrics.internal_errors.labels("dispatch").inc()
        now = time.monotonic()
        if now - self._bug_logged >= STORE_LOG_INTERVAL:
            self._bug_logged = now
            self.log.error(
                "the dispatch loop raised an internal error; it restarts in %gs",
                delay,
                exc_info=error,
            )
        await asyncio.sleep(delay)

    async def _check_store(self) -> None:
        """Raise while the store cannot serve: its own ``check()`` when it has one (a
        write transaction for SQLite, PING for Redis), then the dispatcher's first call."""
        check = getattr(self.store, "check", None)
        if check is not None:
            await check()
        await self.store.next_due()

    async def _store_retry(
        self,
        operation: str,
        call: Callable[[], Awaitable[object]],
        error: Exception,
        *,
        delay: float = STORE_BACKOFF_MIN,
    ) -> bool:
        """Repeat ``call`` (a store call that raised ``error``) until the store takes it:
        each error is counted (``cpimgw_store_errors_total{operation}``) and logged at
        error level (at most every ``STORE_LOG_INTERVAL`` s), the delay doubles up to
        ``STORE_BACKOFF_MAX``, and readiness reports the store failing meanwhile. An
        entry whose write is retried stays claimed by this node, so it is neither lost
        nor handed out twice here. False when the gateway stops first (what was not
        written stays in the store as it was, for the next start)."""
        self._store_failing += 1
        try:
            while True:
                self._store_trouble(operation, error)
                await asyncio.sleep(delay)
                if self._stopping:
                    return False
                delay = min(delay * 2, STORE_BACKOFF_MAX)
                try:
                    await call()
                except Exception as exc:  # noqa: BLE001 - counted and retried
                    error = exc
                    continue
                self.log.info("the store answers again", extra={"operation": operation})
                return True
        finally:
            self._store_failing -= 1

    def _store_trouble(self, operation: str, error: Exception) -> None:
        self.metrics.store_errors.labels(operation).inc()
        now = time.monotonic()
        if now - self._store_logged >= STORE_LOG_INTERVAL:
            self._store_logged = now
            self.log.error(
                "a store call failed; deliveries wait and it is tried again",
                extra={"operation": operation, "error": f"{type(error).__name__}: {error}"},
            )

    async def _dispatch_loop(self) -> None:
        limit = self.delivery.concurrency
        inflight = self._inflight
        while not self._stopping:
            self._wake.clear()
            free = limit - len(inflight)
            now = time.monotonic()
            if now >= self._next_watch:
                self._watch(now)
            if free > 0:
                entries = await self.store.claim(self.clock(), free)
                deadline = now + self.delivery.send_timeout
                for entry in entries:
                    task = asyncio.create_task(self._attempt(entry))
                    inflight[task] = deadline
                    task.add_done_callback(self._finished)
                if len(entries) == free:
                    await asyncio.sleep(0)
                    continue
            due = await self.store.next_due()
            timeout = 1.0 if due is None else min(1.0, max(0.0, due - self.clock()))
            if free <= 0 or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout if free > 0 else 1.0)

    def _watch(self, now: float) -> None:
        """Cancel the sends past their ``send_timeout`` (checked about once a second by
        the dispatcher, which wakes at least that often: one scan instead of a loop timer
        set and cancelled around every send); :meth:`_attempt` reports them as timeouts."""
        self._next_watch = now + 1.0
        for task, deadline in self._inflight.items():
            if deadline <= now and not task.done() and task not in self._overdue:
                self._overdue.add(task)
                task.cancel()

    def _unwatch(self) -> None:
        """The send is over: ``send_timeout`` bounds it, not the store writes after it. A
        write retried through a store outage (:meth:`_store_retry`) must not be cancelled
        by :meth:`_watch`, which would leave the entry claimed with nobody to finish it."""
        task = asyncio.current_task()
        if task is not None and task in self._inflight:
            self._inflight[task] = math.inf

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._overdue.discard(task)
        if len(self._inflight) == self.delivery.concurrency - 1:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("delivery task crashed", exc_info=task.exception())

    async def _attempt(self, entry: Entry) -> None:
        adapter = self.adapters.get(entry.target)
        envelope = entry.envelope
        if adapter is None:
            missing = DeliveryError(
                f"adapter {entry.target!r} is not configured",
                retryable=False,
                reason=Reason.INTERNAL,
                hint="configure it again, or `cpimgw queue drop` the entry",
            )
            self._unwatch()
            await self._failed(entry, missing, False, None)
            return
        try:
            try:
                await adapter.send(envelope.hop(self.gateway_id))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task not in self._overdue or self._stopping:
                    raise
                task.uncancel()
                raise TimeoutError from None
            finally:
                self._unwatch()
        except asyncio.CancelledError:
            raise
        except DeliveryError as exc:
            await self._failed(entry, exc, exc.retryable, exc.retry_after)
        except TimeoutError:
            error = DeliveryError(
                f"{entry.target} did not answer within {self.delivery.send_timeout:g}s",
                retryable=True,
                reason=Reason.TIMEOUT,
            )
            await self._failed(entry, error, True, None)
        except (MappingError, GatewayError) as exc:
            await self._failed(entry, exc, False, None)
        except Exception as exc:
            self.log.exception("send raised an unexpected error", extra={"adapter": entry.target})
            error = DeliveryError(
                f"internal error: {exc!r}", retryable=True, reason=Reason.INTERNAL
            )
            await self._failed(entry, error, True, None)
        else:
            try:
                await self.store.complete(entry.id)
            except Exception as exc:  # noqa: BLE001 - retried until the store takes it
                await self._store_retry("complete", lambda: self.store.complete(entry.id), exc)
            now = self.clock()
            self.counters.delivered += 1
            metrics = self.metrics
            metrics.child(metrics.messages_out, entry.target, envelope.operation.value).inc()
            metrics.child(metrics.latency, entry.target).observe(
                max(0.0, now - envelope.received_at)
            )
            self.outcomes.outcome(
                "delivered", envelope, target=entry.target, attempts=entry.attempts + 1
            )

    async def _failed(
        self, entry: Entry, error: GatewayError, retryable: bool, retry_after: float | None
    ) -> None:
        now = self.clock()
        attempts = entry.attempts + 1
        policy = self.delivery
        if retryable and attempts < policy.max_attempts and now < entry.expires_at:
            delay = backoff(attempts, policy, draw=self.rng.random(), retry_after=retry_after)
            if now + delay < entry.expires_at or retry_after is None:
                next_at = min(now + delay, entry.expires_at)
                try:
                    await self.store.reschedule(
                        entry.id, next_at=next_at, attempts=attempts, error=str(error)
                    )
                except Exception as exc:  # noqa: BLE001 - retried until the store takes it
                    if not await self._store_retry(
                        "reschedule",
                        lambda: self.store.reschedule(
                            entry.id, next_at=next_at, attempts=attempts, error=str(error)
                        ),
                        exc,
                    ):
                        return
                self._wake.set()  # the dispatcher may be sleeping past the new due time
                self.counters.retried += 1
                self.metrics.retries.labels(entry.target, error.reason.value).inc()
                self.outcomes.outcome(
                    "retry",
                    entry.envelope,
                    target=entry.target,
                    attempts=attempts,
                    delay=round(next_at - now, 3),
                    reason=error.reason.value,
                    error=str(error),
                )
                return
        final = error
        if retryable:
            why = "expired" if now >= entry.expires_at else f"gave up after {attempts} attempts"
            final = DeliveryError(
                f"{why}: {error}",
                retryable=False,
                reason=Reason.EXPIRED,
                hint="the recipient's network did not take it in time",
            )
        # the report owed to the sender is written with the failure: a crash before the
        # origin adapter took it leaves it owed, and the next start sends it
        owed = final.reason.value if self._owes_report(entry.envelope) else None
        # not sent as nobody's report (_adopt_orphans) while this gives it up
        with self._sending(entry.id if owed else None):
            await self._give_up(entry, final, attempts, now, owed)

    async def _give_up(
        self, entry: Entry, final: GatewayError, attempts: int, now: float, owed: str | None
    ) -> None:
        """Record the final failure of ``entry`` (with the report ``owed`` to its sender,
        RFC 3860 §3.4.1), count and log it, and report it."""
        try:
            await self.store.fail(entry.id, error=str(final), now=now, report=owed)
        except Exception as exc:  # noqa: BLE001 - retried until the store takes it
            if not await self._store_retry(
                "fail",
                lambda: self.store.fail(entry.id, error=str(final), now=now, report=owed),
                exc,
            ):
                return
        self.counters.failed += 1
        self.metrics.failed.labels(entry.target, final.reason.value).inc()
        self.outcomes.outcome(
            "failed",
            entry.envelope,
            level=logging.WARNING,
            target=entry.target,
            attempts=attempts,
            reason=final.reason.value,
            error=str(final),
        )
        if entry.envelope.operation is Operation.SUBSCRIBE:
            try:
                await self._abandon_subscription(entry.envelope, now)
            except Exception as exc:  # noqa: BLE001 - counted and logged; the report still goes
                self._store_trouble("abandon", exc)
        await self._report(entry.envelope, final, entry.id if owed else None)

    async def _abandon_subscription(self, envelope: Envelope, now: float) -> None:
        """A SUBSCRIBE that never reached the presentity leaves no pending subscription."""
        sub = self.book.subscription(envelope.sender, envelope.recipient)
        if sub is None or sub.state is not SubscriptionState.PENDING:
            return
        effects = Effects(ended=((sub.watcher, sub.presentity),), note="request undeliverable")
        await self.store.commit(Commit("", now, ended=effects.ended))
        self.book.apply(effects)

    def _owes_report(self, envelope: Envelope) -> bool:
        """Whether a final failure of ``envelope`` is reported to its sender: messages
        and subscriptions from a configured adapter, never a report itself nor what this
        gateway produced (nobody to tell)."""
        return (
            REPORT_REASON not in envelope.attributes
            and envelope.operation in (Operation.MESSAGE, Operation.SUBSCRIBE)
            and envelope.origin.peer != "cpimgw"
            and envelope.origin.adapter in self.adapters
        )

    async def _report(
        self, envelope: Envelope, error: GatewayError, owed: str | None = None
    ) -> None:
        """Tell the sender, through the adapter it came from; never report a report.
        ``owed``: the failed entry keeping the report in the store; it is marked
        reported once the adapter took the report (else it stays owed for the next
        start)."""
        if not self._owes_report(envelope):
            return
        with self._sending(owed):
            await self._send_report(envelope, error, owed)

    @contextlib.contextmanager
    def _sending(self, owed: str | None) -> Iterator[None]:
        """Mark the owed report of entry ``owed`` as being sent by this node while the
        block runs, so :meth:`_adopt_orphans` leaves it alone (None: nothing owed)."""
        if owed is None:
            yield
            return
        self._reporting.add(owed)
        try:
            yield
        finally:
            self._reporting.discard(owed)

    async def _send_report(self, envelope: Envelope, error: GatewayError, owed: str | None) -> None:
        origin = self.adapters[envelope.origin.adapter]
        original = envelope
        if "negative-delivery" in envelope.attributes.get(IMDN_REQUEST, ""):
            envelope = envelope.replace(attributes={**envelope.attributes, REPORT_IMDN: "failed"})
        try:
            await asyncio.wait_for(origin.report(envelope, error), self.delivery.send_timeout)
        except Exception as exc:  # noqa: BLE001 - a failed report is logged, never fatal
            self.metrics.reports.labels(origin.name, "error").inc()
            retried = owed is not None and self._retry_report(owed, original, error)
            self.log.warning(
                "failure report could not be sent",
                extra={
                    "adapter": origin.name,
                    "identity": envelope.identity,
                    "error": repr(exc),
                    "next": f"tried again in {self.report_retry_interval:g}s"
                    if retried
                    else "sent at the next start",
                },
            )
            return
        self.counters.reported += 1
        self.metrics.reports.labels(origin.name, "sent").inc()
        if owed is not None:
            self._unreported.pop(owed, None)
            try:
                await self.store.reported(owed)
            except Exception as exc:  # noqa: BLE001 - it stays owed: sent again at start
                self._store_trouble("reported", exc)

    def _retry_report(self, owed: str, envelope: Envelope, error: GatewayError) -> bool:
        """Keep a refused report (its entry ``owed`` in the store) for
        :meth:`_retry_reports`; False when REPORT_RETRY_MAX are kept already (it stays
        owed in the store, for the next start)."""
        if owed not in self._unreported and len(self._unreported) >= REPORT_RETRY_MAX:
            return False
        self._unreported[owed] = (envelope, error)
        return True

    async def _retry_reports(self) -> None:
        """Every REPORT_RETRY_INTERVAL s: the reports this node's origin adapters refused
        are tried again (:meth:`_retry_refused`), and owed reports nobody is sending are
        sent (:meth:`_adopt_orphans`)."""
        while not self._stopping:
            await asyncio.sleep(self.report_retry_interval)
            await self._retry_refused()
            await self._adopt_orphans()

    async def _retry_refused(self) -> None:
        """The reports an origin adapter refused while running (its link was down, it was
        still connecting at start) are tried again, so the sender hears back once the
        link is up, not only at the next start. Only this node's refusals: another
        node's owed reports are its own to send."""
        if not self._unreported:
            return
        try:  # still owed, and still this node's? (an operator may have requeued or
            # dropped the entry; a node that started meanwhile may have taken it)
            still = {
                e.id for e in await self.store.take_reports(REPORT_RETRY_MAX, hold=REPORT_HOLD)
            }
        except Exception as exc:  # noqa: BLE001 - tried again next round
            self._store_trouble("reports", exc)
            return
        complete = len(still) < REPORT_RETRY_MAX  # else "not listed" proves nothing
        for owed, (envelope, error) in list(self._unreported.items()):
            if self._stopping:
                return
            if owed not in still:
                if complete:
                    self._unreported.pop(owed, None)
                continue
            await self._report(envelope, error, owed)

    async def _adopt_orphans(self) -> None:
        """Owed reports nobody is sending — given up more than ``report_orphan_age`` s
        ago, not being sent or retried by this node, not held by another (on a shared
        store): above all those of a node that died between giving an entry up and
        reporting it, and those a start left for later. This node takes and sends them
        now, instead of waiting for some node's next start (RFC 3860 §3.4.1: the sender
        hears of the failure)."""
        try:
            owed = await self.store.take_reports(
                hold=REPORT_HOLD, failed_before=self.clock() - self.report_orphan_age
            )
        except Exception as exc:  # noqa: BLE001 - tried again next round
            self._store_trouble("reports", exc)
            return
        orphans = [
            e
            for e in owed
            if e.id not in self._unreported
            and e.id not in self._reporting
            and self._owes_report(e.envelope)
        ]
        if orphans:
            self.log.info(
                "sending failure reports nobody was sending", extra={"count": len(orphans)}
            )
        for entry in orphans:
            if self._stopping:
                return
            if entry.id in self._reporting or entry.id in self._unreported:
                continue  # taken up by another path of this node meanwhile
            await self._report(entry.envelope, _owed_error(entry), entry.id)

    async def _resend_reports(self) -> None:
        """At start: the failure reports still owed (a crash or an adapter error came
        between giving up and reporting) go to their senders now, from the stored
        envelope and error, so a resend is the same report (at-least-once). On a shared
        store each is taken by one node: nodes starting together do not each send it."""
        try:
            owed = await self.store.take_reports(hold=REPORT_HOLD)
        except Exception as exc:  # noqa: BLE001 - they stay owed for the next start
            self._store_trouble("reports", exc)
            return
        if owed:
            self.log.info("sending failure reports still owed", extra={"count": len(owed)})
        planned = {e.id for e in owed} - self._reporting
        self._reporting |= planned  # not adopted as orphans while this start sends them
        try:
            for entry in owed:
                if not self._owes_report(entry.envelope):  # its adapter is gone
                    self.log.warning(
                        "a failure report is owed through an adapter no longer configured",
                        extra={
                            "adapter": entry.envelope.origin.adapter,
                            "identity": entry.envelope.identity,
                        },
                    )
                    continue
                if entry.id not in planned:
                    continue  # being sent already
                self._reporting.discard(entry.id)
                await self._report(entry.envelope, _owed_error(entry), entry.id)
        finally:
            self._reporting -= planned

    # -- housekeeping -------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Every 2 s, and when a held NOTIFY is due (woken early by :meth:`_plan_and_store`
        when one is held that is due before the planned wake-up): release held NOTIFYs,
        end expired subscriptions, maintain the store, refresh the gauges."""
        last_maintain = 0.0
        while not self._stopping:
            self._housekeeping_wake.clear()
            now = self.clock()
            try:
                effects = self.book.flush(now)
                if effects.send or effects.ended:
                    await self.store.commit(self._commit_of("", effects, now))
                    self.book.apply(effects)
                    self._wake.set()
                if now - last_maintain >= 60.0:
                    last_maintain = now
                    await self.store.maintain(now)
                self.metrics.observe_queue(await self.store.stats(now))
                self.metrics.observe_subscriptions(self.book.counts())
                for name, ready in self.ready().items():
                    if name.startswith("adapter:"):
                        self.metrics.adapter_ready.labels(name[8:]).set(1 if ready else 0)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.store_errors.labels("housekeeping").inc()
                self.log.exception("housekeeping failed; trying again")
            held = self.book.next_flush()
            now = self.clock()
            pause = 2.0 if held is None else min(2.0, max(0.05, held - now))
            self._housekeeping_at = now + pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._housekeeping_wake.wait(), pause)

    async def settle(self, *, within: float = 10.0) -> None:
        """Wait until no entry is pending or in flight: everything delivered or failed
        (tests, benchmark)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self._inflight and await self.store.next_due() is None:
                return
            self._wake.set()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the gateway did not settle within {within}s")


@dataclass(slots=True)
class _Turn:
    """A FIFO lock and the number of callers holding or waiting for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@contextlib.asynccontextmanager
async def _in_turn(turns: dict[str, _Turn], key: str) -> AsyncIterator[None]:
    """Hold the FIFO turn of ``key`` in ``turns`` (made on first use, dropped when nobody
    holds or waits for it)."""
    turn = turns.get(key)
    if turn is None:
        turn = turns[key] = _Turn()
    turn.users += 1
    try:
        async with turn.lock:
            yield
    finally:
        turn.users -= 1
        if not turn.users:
            del turns[key]


def _owed_error(entry: Entry) -> DeliveryError:
    """The error of a report still owed, from the stored reason and last error, so a
    report sent late is the same report (at-least-once)."""
    try:
        reason = Reason(entry.report or "")
    except ValueError:
        reason = Reason.INTERNAL
    return DeliveryError(entry.last_error or "not delivered", retryable=False, reason=reason)


class _Handle:
    """The ``deliver`` callable of one adapter (a small object, not a closure, so the
    adapter name is visible when debugging)."""

    __slots__ = ("adapter", "gateway")

    def __init__(self, gateway: Gateway, adapter: str) -> None:
        self.gateway = gateway
        self.adapter = adapter

    async def __call__(self, envelope: Envelope) -> Receipt:
        return await self.gateway.accept(self.adapter, envelope)
