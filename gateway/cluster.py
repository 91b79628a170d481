"""Several gateway nodes on one shared store: who is alive, whose work is orphaned, and
how each node's presence book follows the others' changes.

The shape (docs/scaling.md): nodes share nothing but the Redis store
(:mod:`gateway.store.redis`). Each node has a *name* (``[cluster] node``, stable across
restarts, so a restarted node takes its own unfinished work back at once) and an
*instance* token (new at every start, so two processes configured with the same name are
told apart). A node proves it is alive by renewing a heartbeat key that expires after
``ttl`` seconds. The delivery queue is a Redis Stream read through one consumer group, one
consumer per node name: an entry a node has read and not yet finished sits in that
consumer's pending list. When a node's heartbeat has expired, the others take its pending
entries that have been idle for at least ``claim_idle`` seconds (``XPENDING`` + ``XCLAIM``,
the per-consumer form of ``XAUTOCLAIM``): at-least-once, with the same identity, so the
receivers drop the duplicate of whatever the dead node was sending at the moment it died.

The first half of this module is pure (decisions over values, time passed in); the
:class:`BookFollower` at the end is the thin I/O shell that keeps a node's presence book
in step with the subscriptions other nodes commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapters.contract import Adapter, Capability, Deliver, Mapper, Sent
from canonical.envelope import Envelope, Payload
from canonical.errors import ConfigError, DeliveryError, GatewayError, Reason
from gateway.presence import Effects, LastPresence, PresenceBook, Subscription, SubscriptionState

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.core import Gateway
    from gateway.store.redis import Change, RedisStore

log = logging.getLogger("cpimgw.cluster")

#: What a node name may hold: it is part of Redis keys and of metric labels.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def node_name(configured: str | None = None) -> str:
    """The node's name: the configured one, else the host name (one node per host)."""
    name = configured if configured else socket.gethostname().split(".")[0]
    if not NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"the node name {name!r} is not usable",
            key="cluster.node",
            hint="set [cluster] node to 1-64 letters, digits, '.', '_' or '-'",
        )
    return name


@dataclass(frozen=True, slots=True)
class Timing:
    """How often a node beats, when it counts as dead, and when its work may be taken.

    ``claim_idle`` must be longer than the core's ``send_timeout`` plus a store round
    trip, so an entry a slow-but-alive node is still sending is never taken from it.
    """

    heartbeat: float = 2.0
    ttl: float = 10.0
    claim_idle: float = 60.0
    recover_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.heartbeat <= 0:
            raise ConfigError("must be positive", key="cluster.heartbeat", hint="e.g. 2.0 seconds")
        if self.ttl < 2 * self.heartbeat:
            raise ConfigError(
                f"{self.ttl:g}s is shorter than two heartbeats"
                f" ({2 * self.heartbeat:g}s): a node would be declared dead between beats",
                key="cluster.ttl",
                hint="make ttl at least 3 x heartbeat",
            )
        if self.claim_idle <= 0 or self.recover_interval <= 0:
            raise ConfigError(
                "claim_idle and recover_interval must be positive",
                key="cluster",
                hint="e.g. claim_idle = 60.0, recover_interval = 5.0",
            )


@dataclass(frozen=True, slots=True)
class Node:
    """One running node process: what its heartbeat key and the roster hold."""

    name: str
    instance: str
    host: str
    pid: int
    started_at: float

    @classmethod
    def here(cls, name: str, *, now: float) -> Node:
        """This process, as node ``name``."""
        return cls(name, uuid.uuid4().hex, socket.gethostname(), os.getpid(), now)

    def encode(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "instance": self.instance,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | bytes) -> Node | None:
        """The node from its encoding; None when the value is not one (never raises)."""
        try:
            data = json.loads(text)
            return cls(
                str(data["name"]),
                str(data["instance"]),
                str(data["host"]),
                int(data["pid"]),
                float(data["started_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def may_take_over(holder: Node | None, me: Node, *, holder_running: bool) -> bool:
    """May ``me`` take the name whose heartbeat ``holder`` still holds?

    Yes when nobody holds it, when it is this very instance, or when the holder ran on
    this host and its process is gone (a restart after ``kill -9``: no need to wait for
    the heartbeat to expire). Otherwise another live process uses the name: wait for its
    heartbeat to expire, or refuse.
    """
    if holder is None or holder.instance == me.instance:
        return True
    return holder.host == me.host and holder.pid != me.pid and not holder_running


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer of the delivery stream's group: a node name, its pending entries (read
    and not finished), and the milliseconds since it last read or claimed anything."""

    name: str
    pending: int
    idle_ms: int


def orphaned(consumers: Iterable[Consumer], alive: set[str], me: str) -> list[Consumer]:
    """Consumers whose node is not alive and who still hold entries: their work is to be
    claimed by a live node (``me`` is alive by definition). Largest backlog first."""
    found = [c for c in consumers if c.name != me and c.name not in alive and c.pending > 0]
    return sorted(found, key=lambda c: (-c.pending, c.name))


def retired(consumers: Iterable[Consumer], alive: set[str], me: str) -> list[str]:
    """Dead consumers holding nothing: removed from the group (their name comes back when
    the node starts again). Never a consumer with pending entries: deleting a consumer
    deletes its pending list, and that would lose work."""
    return sorted(c.name for c in consumers if c.name not in alive | {me} and c.pending == 0)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as ``cpimgw cluster status`` shows it."""

    name: str
    alive: bool
    node: Node | None
    beat_at: float | None
    claimed: int
    idle: float | None
    recovered: int
    stopped_at: float | None = None
    #: SIP subscriptions (the gateway as subscriber) this node holds, adapters/sip/subscribers.py
    sip_subscriptions: int = 0


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The whole cluster at one moment: nodes and the shared queue."""

    namespace: str
    at: float
    nodes: tuple[NodeStatus, ...]
    pending: int
    failed: int
    scheduled: int
    unclaimed: int
    claimed: int
    by_target: dict[str, int]
    oldest_age: float

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "at": self.at,
            "queue": {
                "pending": self.pending,
                "failed": self.failed,
                "scheduled": self.scheduled,
                "unclaimed": self.unclaimed,
                "claimed": self.claimed,
                "by_target": self.by_target,
                "oldest_age": self.oldest_age,
            },
            "nodes": [
                {
                    "name": n.name,
                    "alive": n.alive,
                    "host": n.node.host if n.node else None,
                    "pid": n.node.pid if n.node else None,
                    "started_at": n.node.started_at if n.node else None,
                    "beat_at": n.beat_at,
                    "claimed": n.claimed,
                    "idle": n.idle,
                    "recovered": n.recovered,
                    "stopped_at": n.stopped_at,
                    "sip_subscriptions": n.sip_subscriptions,
                }
                for n in self.nodes
            ],
        }


def node_statuses(
    roster: dict[str, dict[str, Any]],
    alive: set[str],
    consumers: Sequence[Consumer],
) -> tuple[NodeStatus, ...]:
    """Join the roster (what each node last wrote about itself), the live heartbeats and
    the consumer group into one row per node name, sorted by name."""
    by_name = {c.name: c for c in consumers}
    names = sorted(set(roster) | set(by_name) | alive)
    rows = []
    for name in names:
        info = roster.get(name, {})
        consumer = by_name.get(name)
        node = Node.decode(info["node"]) if "node" in info else None
        rows.append(
            NodeStatus(
                name=name,
                alive=name in alive,
                node=node,
                beat_at=_float(info.get("beat_at")),
                claimed=consumer.pending if consumer else 0,
                idle=consumer.idle_ms / 1000.0 if consumer else None,
                recovered=int(info.get("recovered", 0) or 0),
                stopped_at=_float(info.get("stopped_at")),
            )
        )
    return tuple(rows)


def _float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


# -- the presence book across nodes ------------------------------------------------------


def subscription_field(watcher: str, presentity: str) -> str:
    """The key of one subscription in the store (NUL never occurs in a URI)."""
    return f"{watcher}\x00{presentity}"


def encode_subscription(sub: Subscription) -> str:
    return json.dumps(
        [
            sub.state.value,
            sub.watcher_adapter,
            sub.presentity_adapter,
            sub.expires_at,
            sub.created_at,
            sub.updated_at,
        ],
        separators=(",", ":"),
    )


def decode_subscription(field: str, value: str) -> Subscription:
    watcher, _, presentity = field.partition("\x00")
    state, wa, pa, expires, created, updated = json.loads(value)
    return Subscription(
        watcher=watcher,
        presentity=presentity,
        state=SubscriptionState(state),
        watcher_adapter=wa,
        presentity_adapter=pa,
        expires_at=None if expires is None else float(expires),
        created_at=float(created),
        updated_at=float(updated),
    )


def encode_presence(pres: LastPresence) -> bytes:
    """Meta as one JSON line, then the document's bytes unchanged."""
    meta = json.dumps(
        [pres.payload.content_type, pres.at, pres.identity], separators=(",", ":")
    ).encode()
    return meta + b"\n" + pres.payload.body


def decode_presence(presentity: str, value: bytes) -> LastPresence:
    meta, _, body = value.partition(b"\n")
    content_type, at, identity = json.loads(meta)
    return LastPresence(presentity, Payload(content_type, body), float(at), identity)


def effects_of(changes: Iterable[Change]) -> list[Effects]:
    """The book effects of store changes, in order (one per presence, since
    :class:`Effects` holds one last presence)."""
    out: list[Effects] = []
    subs: list[Subscription] = []
    ended: list[tuple[str, str]] = []

    def push() -> None:
        if subs or ended:
            out.append(Effects(subscriptions=tuple(subs), ended=tuple(ended)))
            subs.clear()
            ended.clear()

    for change in changes:
        if change.kind == "put":
            sub = decode_subscription(change.field, change.value.decode())
            # a later "end" of the same pair in this run must win: keep the order
            if (sub.watcher, sub.presentity) in ended:
                push()
            subs.append(sub)
        elif change.kind == "end":
            watcher, _, presentity = change.field.partition("\x00")
            if any((s.watcher, s.presentity) == (watcher, presentity) for s in subs):
                push()
            ended.append((watcher, presentity))
        elif change.kind == "pres":
            push()
            out.append(Effects(presence=decode_presence(change.field, change.value)))
    push()
    return out


def resync_effects(book: Sequence[Subscription], stored: Sequence[Subscription]) -> Effects:
    """What makes a book holding ``book`` hold exactly ``stored`` (after the change log
    was trimmed past this node's position, or at a periodic resync)."""
    keep = {(s.watcher, s.presentity) for s in stored}
    ended = tuple((s.watcher, s.presentity) for s in book if (s.watcher, s.presentity) not in keep)
    changed = set(stored) - set(book)
    return Effects(subscriptions=tuple(sorted(changed, key=_sub_key)), ended=ended)


def _sub_key(sub: Subscription) -> tuple[str, str]:
    return (sub.presentity, sub.watcher)


class BookFollower:
    """Keeps one node's :class:`PresenceBook` in step with what every node commits.

    Each node decides presence from its own in-memory book (the core's design), so a
    subscription approved through node A must reach node B's book before a NOTIFY that
    arrives at B can be fanned out. The Redis store appends every subscription and
    last-presence change to a change log (a capped stream) inside the same atomic commit;
    this task reads it from where it stopped and applies it with :meth:`PresenceBook.apply`
    (idempotent: a node's own changes come back and change nothing). When the log was
    trimmed past its position, or every ``resync`` seconds, it compares the whole book with
    the store instead.
    """

    def __init__(
        self,
        store: RedisStore,
        book: PresenceBook,
        *,
        block: float = 1.0,
        resync: float = 300.0,
    ) -> None:
        self.store = store
        self.book = book
        self.block = block
        self.resync = resync
        self.applied = 0
        self.resyncs = 0
        self._position: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the log's current end as the position (the book was just loaded)."""
        self._position = await self.store.change_position()
        self._task = asyncio.create_task(self._run(), name="cluster:book-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def step(self) -> int:
        """Read and apply one batch of changes; returns how many were applied."""
        assert self._position is not None
        changes, position, trimmed = await self.store.changes(
            self._position, count=1000, block=self.block
        )
        if trimmed:
            await self.resync_now()
            self._position = position
            return 0
        for effects in effects_of(changes):
            self.book.apply(effects)
        self._position = position
        self.applied += len(changes)
        return len(changes)

    async def resync_now(self) -> None:
        """Compare the whole book with the store and apply the difference."""
        stored = await self.store.subscriptions()
        self.book.apply(resync_effects(self.book.subscriptions(), stored))
        for pres in await self.store.presences():
            if self.book.last(pres.presentity) != pres:
                self.book.apply(Effects(presence=pres))
        self.resyncs += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_resync = loop.time()
        while True:
            try:
                await self.step()
                if loop.time() - last_resync >= self.resync:
                    last_resync = loop.time()
                    await self.resync_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the presence changes of other nodes failed")
                await asyncio.sleep(self.block)


# -- the runner's glue (cpimgw run) ------------------------------------------------------


def registry_of(settings: Settings) -> CollectorRegistry | None:
    """A metrics registry whose ``target_info`` names this node (``node`` label), for a
    gateway on the shared store; None (the default registry) otherwise."""
    if settings.store.backend != "redis":
        return None
    return CollectorRegistry(
        target_info={"node": node_name(settings.cluster.node), "gateway": settings.gateway.id}
    )


class NodeCollector:
    """Per-node cluster metrics, read from the store's counters at scrape time:

    - ``cpimgw_cluster_held``: entries this node claimed and has not finished.
    - ``cpimgw_cluster_recovered_total``: entries this node took over from dead nodes.
    - ``cpimgw_cluster_store_round_trips_total`` / ``..._calls_total``: pipelines sent to
      Redis and the calls they carried (group commit: calls per round trip).
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        node = self.store.name
        held = GaugeMetricFamily(
            "cpimgw_cluster_held", "Entries claimed and not finished", labels=["node"]
        )
        held.add_metric([node], self.store.held)
        yield held
        for name, doc, value in (
            ("recovered", "Entries taken over from dead nodes", self.store.recovered),
            ("store_round_trips", "Pipelines sent to Redis", self.store.round_trips),
            ("store_calls", "Store calls sent to Redis", self.store.calls),
        ):
            family = CounterMetricFamily(f"cpimgw_cluster_{name}", doc, labels=["node"])
            family.add_metric([node], value)
            yield family


class Exclusive(Adapter):
    """Runs the wrapped adapter on one node of the cluster at a time.

    For a network that must see one connection from the gateway however many nodes run:
    an XMPP component on ejabberd (it accepts several connections for one component
    domain but hands every stanza, the answers to the adapter's own pings included, to
    one of them at random) or on Prosody (it refuses the second one). Each node wraps the
    adapter; the node that holds the Redis lease ``adapter:NAME`` runs it, the others
    stand by and take over once the holder's lease expires (``[cluster] ttl`` after its
    last renewal). A node that cannot renew the lease for that long stops its instance
    first, so two nodes never run it at once.

    A standby is healthy (:meth:`ready`) but does not serve (:meth:`serving`): the store
    hands this adapter's queue entries only to the node that runs it.
    """

    kind: ClassVar[str] = "exclusive"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, inner: Adapter, store: RedisStore) -> None:
        super().__init__(inner.name, inner.config, inner.context)
        self.inner = inner
        self.store = store
        self.lease_name = f"adapter:{inner.name}"
        self.holding = False
        self.takeovers = 0
        self._stopping = asyncio.Event()

    def declared(self) -> frozenset[Capability]:
        declared = getattr(self.inner, "declared", None)
        found: frozenset[Capability] = declared() if callable(declared) else self.inner.capabilities
        return found

    @property
    def mapper(self) -> Mapper[Any]:
        return self.inner.mapper

    def ready(self) -> bool:
        return self.inner.ready() if self.holding else True

    def not_ready_reason(self) -> str | None:
        """The running instance's reason for being down (a standby has none)."""
        return self.inner.not_ready_reason() if self.holding else None

    def serving(self) -> bool:
        """True while this node runs the adapter and it is connected."""
        return self.holding and self.inner.ready()

    async def run(self, deliver: Deliver) -> None:
        timing = self.store.timing
        while await self._acquire():
            self.holding = True
            self.takeovers += 1
            log.warning("this node now runs adapter %r", self.name, extra={"node": self.store.name})
            task = asyncio.create_task(self.inner.run(deliver), name=f"exclusive:{self.name}")
            lost = await self._hold(task, timing)
            if not lost:  # stopping, or the adapter's run ended by itself
                if not task.done():
                    await asyncio.wait({task})
                self.holding = False
                with contextlib.suppress(GatewayError):
                    await self.store.lease("release", self.lease_name, timing.ttl)
                task.result()
                return
            self.holding = False
            log.error(
                "lost the lease of adapter %r; stopping it here",
                self.name,
                extra={"node": self.store.name},
            )
            await self.inner.stop()
            await asyncio.wait({task}, timeout=timing.ttl)
            inner = self.inner
            self.inner = type(inner)(inner.name, inner.config, inner.context)

    async def _acquire(self) -> bool:
        """Wait for the lease; False when stopping first."""
        timing = self.store.timing
        while not self._stopping.is_set():
            try:
                if await self.store.lease("acquire", self.lease_name, timing.ttl):
                    return True
            except GatewayError as exc:
                log.warning("cannot ask for the lease of %r: %s", self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timing.heartbeat / 2)
        return False

    async def _hold(self, task: asyncio.Task[None], timing: Timing) -> bool:
        """Renew the lease while the adapter runs; True when it was lost (or could not
        be renewed for almost ``ttl``: it may be someone else's by then)."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while not task.done() and not self._stopping.is_set():
            await asyncio.wait({task}, timeout=timing.heartbeat)
            if task.done() or self._stopping.is_set():
                return False
            try:
                if not await self.store.lease("renew", self.lease_name, timing.ttl):
                    return True
                renewed_at = loop.time()
            except GatewayError:
                if loop.time() - renewed_at >= timing.ttl - timing.heartbeat:
                    return True
        return False

    async def send(self, envelope: Envelope) -> Sent:
        if not self.holding:
            raise DeliveryError(
                f"adapter {self.name!r} runs on another node of the cluster",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="the node that holds its lease sends it",
                retry_after=self.store.timing.heartbeat,
            )
        return await self.inner.send(envelope)

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        if not self.holding:
            raise DeliveryError(f"adapter {self.name!r} runs on another node", retryable=True)
        await self.inner.report(envelope, error)

    async def stop(self) -> None:
        self._stopping.set()
        if self.holding:
            await self.inner.stop()


def watch(gateway: Gateway, exclusive: Sequence[str] = ()) -> None:
    """Make a gateway on the shared store a cluster node: the adapters named in
    ``exclusive`` run on one node at a time (:class:`Exclusive`), the store hands this
    node only the entries of adapters it serves now, and the registry gets the node's
    cluster metrics. Nothing changes on another store."""
    from gateway.store.redis import RedisStore  # noqa: PLC0415 - the store imports this module

    store = gateway.store
    if not isinstance(store, RedisStore):
        return
    for adapter in gateway.adapters.values():
        share = getattr(adapter, "share", None)  # state every node must see (SIP dialogs)
        if callable(share):
            share(store)
    for name in exclusive:
        if name not in gateway.adapters:
            raise ConfigError(
                f"no adapter {name!r} to run on one node at a time",
                key="cluster.exclusive",
                hint=f"name one of: {', '.join(sorted(gateway.adapters))}",
            )
        gateway.adapters[name] = Exclusive(gateway.adapters[name], store)
    adapters = gateway.adapters

    def serving() -> set[str]:
        return {
            name
            for name, adapter in adapters.items()
            if not isinstance(adapter, Exclusive) or adapter.serving()
        }

    store.serving = serving
    gateway.metrics.registry.register(NodeCollector(store))


async def follow(gateway: Gateway, settings: Settings) -> BookFollower | None:
    """Start keeping the gateway's presence book in step with the other nodes (after
    :meth:`Gateway.start` loaded it); None when the store is not shared."""
    from gateway.store.redis import RedisStore  # noqa: PLC0415 - the store imports this module

    if not isinstance(gateway.store, RedisStore):
        return None
    follower = BookFollower(gateway.store, gateway.book, resync=settings.cluster.resync)
    await follower.start()
    return follower


__all__ = [
    "NODE_NAME",
    "BookFollower",
    "ClusterStatus",
    "Consumer",
    "Node",
    "NodeCollector",
    "NodeStatus",
    "Timing",
    "decode_presence",
    "decode_subscription",
    "effects_of",
    "encode_presence",
    "encode_subscription",
    "follow",
    "may_take_over",
    "node_name",
    "node_statuses",
    "orphaned",
    "registry_of",
    "resync_effects",
    "retired",
    "subscription_field",
    "watch",
]
