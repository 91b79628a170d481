"""The Redis store with several nodes on one real redis-server: one claim per entry, a
dead node's work taken by the others, a restarted node taking its own back, commits
atomic and deduplicated across nodes, buckets shared, the store surviving a Redis
restart without its functions, and Redis's own crash with ``appendfsync always``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.contract import AdapterContext, Receipt
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, GatewayError, Reason
from gateway.cluster import BookFollower, Exclusive, Timing
from gateway.presence import LastPresence, PresenceBook, Subscription, SubscriptionState
from gateway.store import Commit, EntryState, Outbound
from gateway.store.redis import LIBRARY, REFRESH, RedisStore
from tests.gateway.network import build, memory, until, until_no_report_owed
from tests.gateway.samples import message
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e

# ttl: a live node's beats must survive a stall of the test's event loop on a loaded
# machine (0.4 s was seen to come within 150 ms of a false death)
FAST = Timing(heartbeat=0.1, ttl=1.0, claim_idle=0.3, recover_interval=0.05)

Make = Callable[..., RedisStore]


@pytest.fixture
async def make(redis_server: RedisServer, redis_namespace: str) -> AsyncIterator[Make]:
    """Open stores (nodes) on one namespace; closed at the end unless a test killed them."""
    opened: list[RedisStore] = []

    def build(name: str, **kw: object) -> RedisStore:
        kw.setdefault("timing", FAST)
        kw.setdefault("url", redis_server.url)
        store = RedisStore(namespace=redis_namespace, node=name, **kw)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield build
    for store in opened:
        with contextlib.suppress(Exception):
            await store.close()


async def kill(store: RedisStore) -> None:
    """What ``kill -9`` leaves behind: no more heartbeats, no goodbye, claims unfinished."""
    assert store._beat_task is not None
    store._beat_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await store._beat_task
    store._beat_task = None
    store._open = False
    await store.client.aclose()


class Recorder:
    """A ``deliver`` that keeps what it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> Receipt:
        self.envelopes.append(envelope)
        return Receipt(envelope.identity)


def commit_of(text: str, at: float = 1000.0, target: str = "sip") -> Commit:
    env = message(text=text)
    return Commit(identity=env.identity, at=at, entries=(Outbound(target, env, at + 600),))


async def claim_all(store: RedisStore, now: float = 1000.0) -> list[str]:
    return [e.id for e in await store.claim(now, 1000)]


async def test_each_entry_is_handed_to_one_node_only(make: Make) -> None:
    a, b, c = make("a"), make("b"), make("c")
    for store in (a, b, c):
        await store.open()
    ids = [(await a.commit(commit_of(str(i)))).ids[0] for i in range(300)]
    got = await asyncio.gather(*(s.claim(1000.0, 40) for s in (a, b, c) for _ in range(4)))
    handed = [e.id for batch in got for e in batch]
    handed += await claim_all(b)
    assert sorted(handed, key=int) == ids
    assert len(set(handed)) == len(handed)


async def test_a_dead_nodes_entries_are_taken_after_its_heartbeat_expires(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    ids = [(await a.commit(commit_of(str(i)))).ids[0] for i in range(5)]
    held = await claim_all(a)
    assert sorted(held) == sorted(ids)
    await a.complete(held[0])
    await kill(a)
    assert await claim_all(b) == []  # a's heartbeat still counts: nothing taken yet
    taken: list[str] = []
    for _ in range(200):
        await asyncio.sleep(0.05)
        taken += await claim_all(b)
        if len(taken) == 4:
            break
    assert sorted(taken) == sorted(held[1:])
    assert b.recovered == 4
    roster = await b.roster()
    assert roster["b"]["recovered"] == "4"
    [entry] = [e for e in await b.entries() if e.id == taken[0]]
    assert entry.state is EntryState.PENDING
    for entry_id in taken:
        await b.complete(entry_id)
    assert await b.entries() == []
    assert (await b.stats(1000.0)).pending == 0


async def test_a_live_node_keeps_its_claims_however_long_they_take(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    await a.commit(commit_of("slow"))
    [entry] = await a.claim(1000.0, 10)
    await asyncio.sleep(FAST.claim_idle * 3)  # idle past claim_idle, but a beats
    assert await claim_all(b) == []
    await a.complete(entry.id)
    assert await b.entries() == []


async def test_a_restarted_node_takes_its_own_work_back_at_once(make: Make) -> None:
    slow = Timing(heartbeat=0.5, ttl=30.0, claim_idle=60.0, recover_interval=60.0)
    a = make("a", timing=slow)
    await a.open()
    ids = [(await a.commit(commit_of(str(i)))).ids[0] for i in range(3)]
    assert sorted(await claim_all(a)) == sorted(ids)
    await kill(a)
    again = make("a", timing=slow)  # same name, same host, the old process is "gone"
    # same pid in this test: the old instance looks alive, so clear its heartbeat as a
    # restart after kill -9 would find it (another pid, not running)
    await again.client.delete(again.prefix + "node:a")
    await again.open()
    assert sorted(await claim_all(again)) == sorted(ids)


async def test_a_name_in_use_by_a_live_process_is_refused(make: Make) -> None:
    a = make("a")
    await a.open()
    twin = make("a")
    with pytest.raises(GatewayError, match="in use by another running gateway"):
        await twin.open()


async def test_a_rescheduled_entry_is_due_for_every_node(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    await a.commit(commit_of("r"))
    [entry] = await a.claim(1000.0, 10)
    await a.reschedule(entry.id, next_at=1010.0, attempts=1, error="busy")
    assert await b.next_due() == 1010.0
    assert await claim_all(b, 1009.0) == []
    [again] = await b.claim(1010.0, 10)
    assert (again.id, again.attempts, again.last_error) == (entry.id, 1, "busy")
    assert await claim_all(a, 1011.0) == []


async def test_next_due_sees_entries_no_node_has_read(make: Make) -> None:
    a = make("a")
    await a.open()
    assert await a.next_due() is None
    await a.commit(commit_of("x", at=1234.5))
    assert await a.next_due() == 1234.5
    await a.claim(1234.5, 10)
    assert await a.next_due() is None


async def test_one_identity_is_accepted_once_across_nodes(make: Make) -> None:
    nodes = [make(f"n{i}") for i in range(4)]
    for store in nodes:
        await store.open()
    results = await asyncio.gather(*(s.commit(commit_of("same")) for s in nodes for _ in range(5)))
    assert sum(not r.duplicate for r in results) == 1
    assert len(await nodes[0].entries()) == 1


async def test_a_commit_writes_entries_subscriptions_and_presence_together(make: Make) -> None:
    a = make("a")
    await a.open()
    sub = Subscription(
        "xmpp:al@x.test", "sip:bo@s.test", SubscriptionState.ACTIVE, "xmpp", "sip", None, 1.0, 2.0
    )
    pres = LastPresence("sip:bo@s.test", Payload(PIDF, b"<presence>\r\n\x00</presence>"), 3.0, "p1")
    env = message(text="n")
    accepted = await a.commit(
        Commit("ev", 5.0, (Outbound("xmpp", env, 99.0),), subscriptions=(sub,), presence=pres)
    )
    assert len(accepted.ids) == 1
    assert await a.subscriptions() == [sub]
    assert await a.presences() == [pres]
    [entry] = await a.entries()
    assert entry.envelope == env


async def test_rate_limit_buckets_are_shared_by_the_nodes(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    takes = [await s.take_token("alice", rate=1.0, burst=3, now=50.0) for s in (a, b, a, b)]
    assert takes[:3] == [0.0, 0.0, 0.0]
    assert takes[3] == pytest.approx(1.0)


async def test_concurrent_calls_share_round_trips(make: Make) -> None:
    a = make("a")
    await a.open()
    before = a.round_trips
    results = await asyncio.gather(*(a.commit(commit_of(str(i))) for i in range(500)))
    trips = a.round_trips - before
    assert all(not r.duplicate for r in results)
    assert trips < 500 / 4, f"{trips} round trips for 500 concurrent commits"


async def test_the_store_reloads_its_functions_when_redis_lost_them(make: Make) -> None:
    a = make("a")
    await a.open()
    await a.client.function_delete(LIBRARY)
    accepted = await a.commit(commit_of("after flush"))
    assert not accepted.duplicate
    assert await claim_all(a) == list(accepted.ids)


async def test_the_change_log_brings_other_nodes_subscriptions_into_a_book(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    book = PresenceBook()
    follower = BookFollower(b, book, block=0.05)
    await follower.start()
    try:
        sub = Subscription(
            "xmpp:w@x.test", "sip:p@s.test", SubscriptionState.ACTIVE, "xmpp", "sip", None, 1, 2
        )
        pres = LastPresence("sip:p@s.test", Payload(PIDF, b"<presence/>"), 3.0, "p")
        await a.commit(Commit("e1", 5.0, subscriptions=(sub,), presence=pres))
        for _ in range(100):
            if book.subscriptions() == [sub] and book.last("sip:p@s.test") == pres:
                break
            await asyncio.sleep(0.02)
        assert book.subscriptions() == [sub]
        assert book.last("sip:p@s.test") == pres
        await a.commit(Commit("e2", 6.0, ended=(("xmpp:w@x.test", "sip:p@s.test"),)))
        for _ in range(100):
            if not book.subscriptions():
                break
            await asyncio.sleep(0.02)
        assert book.subscriptions() == []
    finally:
        await follower.stop()


async def test_a_trimmed_change_log_makes_the_follower_compare_the_whole_book(make: Make) -> None:
    a = make("a", change_log=2)
    await a.open()
    book = PresenceBook()
    stale = Subscription(
        "xmpp:gone@x.test", "sip:p@s.test", SubscriptionState.ACTIVE, "xmpp", "sip", None, 1, 2
    )
    book.load([stale], [])
    follower = BookFollower(a, book, block=0.05)
    await follower.start()
    await follower.stop()  # step by hand from here
    subs = [
        Subscription(
            f"xmpp:w{i}@x.test", "sip:p@s.test", SubscriptionState.ACTIVE, "xmpp", "sip", None, 1, 2
        )
        for i in range(300)
    ]
    for i, sub in enumerate(subs):
        await a.commit(Commit(f"s{i}", 5.0, subscriptions=(sub,)))
    await follower.step()
    assert follower.resyncs == 1
    assert book.subscriptions() == sorted(subs, key=lambda s: (s.presentity, s.watcher))


async def test_resubscriptions_after_starts_go_out_once_per_cluster(make: Make) -> None:
    nodes = [make(f"n{i}") for i in range(3)]
    for store in nodes:
        await store.open()

    def resub(now: float) -> Commit:
        env = Envelope(
            operation=Operation.SUBSCRIBE,
            sender="xmpp:w@x.test",
            recipient="sip:p@s.test",
            payload=None,
            identity=f"resubscribe-{now}",
            origin=Origin(adapter="xmpp", peer="cpimgw"),
            received_at=now,
            duration=3600,
            attributes={REFRESH: "restart"},
        )
        return Commit("", now, (Outbound("sip", env, now + 300),))

    results = [await s.commit(resub(100.0 + i)) for i, s in enumerate(nodes)]
    assert [len(r.ids) for r in results] == [1, 0, 0]
    assert len(await nodes[0].entries()) == 1


async def test_an_unreachable_redis_refuses_commits_claims_and_due_reads(
    make: Make, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        a = make("a", url=server.url)
        await a.open()
        await a.commit(commit_of("before"))
        server.kill()
        with pytest.raises(DeliveryError) as refused:
            await a.commit(commit_of("during"))
        assert refused.value.retryable
        assert refused.value.reason is Reason.UNAVAILABLE
        # the dispatcher sees the outage (readiness, cpimgw_store_errors_total): it raises
        for read in (a.claim(1000.0, 10), a.next_due()):
            with pytest.raises(DeliveryError) as unreachable:
                await read
            assert unreachable.value.reason is Reason.UNAVAILABLE
        server.start()
        claimed = await a.claim(1000.0, 10)
        assert [e.envelope.identity for e in claimed] == [message(text="before").identity]
    finally:
        server.stop()


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
async def test_acknowledged_entries_survive_a_killed_redis_process(
    make: Make, tmp_path: Path, appendfsync: str
) -> None:
    """Redis writes the AOF to the kernel before it answers, so a killed Redis *process*
    loses nothing acknowledged with either policy; only ``always`` also covers a crash of
    the machine (the OS page cache is fsynced before the answer)."""
    server = RedisServer(tmp_path / "redis", appendfsync=appendfsync).start()
    try:
        a = make("a", url=server.url)
        await a.open()
        acked = await asyncio.gather(*(a.commit(commit_of(str(i))) for i in range(200)))
        ids = sorted((r.ids[0] for r in acked), key=int)
        server.kill()  # SIGKILL: no shutdown, no final fsync
        server.start()
        kept = await a.entries(EntryState.PENDING, 1000)
        assert [e.id for e in kept] == ids
    finally:
        server.stop()


async def test_a_commit_waits_for_the_replica_it_was_asked_to(make: Make, tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary", extra=("--repl-diskless-sync-delay", "0")).start()
    replica = RedisServer(
        tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port))
    )
    try:
        replica.start()
        # the replica's confirmation must come within the timeout on a loaded machine too
        a = make("a", url=primary.url, replicas=1, replica_timeout=2.0)
        await a.open()
        online = False
        for _ in range(400):  # the replica's first sync
            info = await a.client.info("replication")
            online = info.get("slave0", {}).get("state") == "online"
            if online:
                break
            await asyncio.sleep(0.05)
        assert online, f"the replica never synced: {info}"
        accepted = await a.commit(commit_of("replicated"))
        assert not accepted.duplicate
        replica.kill()
        with pytest.raises(DeliveryError, match="0 of 1 Redis replicas"):
            await a.commit(commit_of("alone"))
        # on the primary all the same, but not acknowledged while no replica has it
        stored = [e.envelope.identity for e in await a.entries()]
        assert stored == [message(text="replicated").identity, message(text="alone").identity]
        with pytest.raises(DeliveryError, match="0 of 1 Redis replicas"):
            await a.commit(commit_of("alone"))
    finally:
        replica.stop()
        primary.stop()


# -- property: across nodes and node deaths, nothing acknowledged is lost ---------------

steps = st.lists(
    st.tuples(
        st.sampled_from(["commit", "claim", "complete", "retry", "fail", "kill"]),
        st.integers(0, 2),
        st.integers(0, 7),
    ),
    min_size=1,
    max_size=30,
)
QUICK = Timing(heartbeat=0.05, ttl=0.6, claim_idle=0.1, recover_interval=0.02)


@settings(max_examples=15, deadline=None)
@given(ops=steps)
def test_no_acknowledged_entry_is_lost_whichever_nodes_die(
    redis_server: RedisServer, ops: list[tuple[str, int, int]]
) -> None:
    """Model check: three nodes commit, claim, finish and die in any order; at the end the
    pending entries are exactly those committed and not finished, and a surviving node
    gets every one of them (the dead nodes' claims included)."""

    async def scenario(namespace: str) -> None:
        generation = [0, 0, 0]

        async def start(k: int) -> RedisStore:
            generation[k] += 1
            store = RedisStore(
                redis_server.url, namespace=namespace, node=f"n{k}g{generation[k]}", timing=QUICK
            )
            await store.open()
            return store

        nodes = [await start(k) for k in range(3)]
        held: list[list[str]] = [[], [], []]
        expected: set[str] = set()
        failed: set[str] = set()
        now = 1000.0
        for op, k, n in ops:
            now += 1.0
            node = nodes[k]
            if op == "commit":
                env = message(text=f"m{n}", received_at=now)
                acc = await node.commit(
                    Commit(env.identity, now, (Outbound("sip", env, now + 99),))
                )
                expected.update(acc.ids)
            elif op == "claim":
                held[k] += [e.id for e in await node.claim(now, n + 1)]
            elif op in ("complete", "retry", "fail") and held[k]:
                entry_id = held[k].pop(n % len(held[k]))
                if op == "complete":
                    await node.complete(entry_id)
                    expected.discard(entry_id)
                elif op == "retry":
                    await node.reschedule(entry_id, next_at=now, attempts=1, error="e")
                else:
                    await node.fail(entry_id, error="e", now=now)
                    expected.discard(entry_id)
                    failed.add(entry_id)
            elif op == "kill":
                await kill(node)
                held[k] = []
                nodes[k] = await start(k)  # a new node; the old name's work is orphaned
        survivor = nodes[0]
        pending = {e.id for e in await survivor.entries(EntryState.PENDING, 10_000)}
        kept_failed = {e.id for e in await survivor.entries(EntryState.FAILED, 10_000)}
        assert pending == expected
        assert kept_failed == failed
        for store in nodes[1:]:
            await store.close()
        still_held = {i for h in held[1:] for i in h} | set(held[0])
        got = set(held[0])
        for _ in range(500):
            got |= {e.id for e in await survivor.claim(now + 1, 10_000)}
            if got >= expected:
                break
            await asyncio.sleep(0.02)
        assert got >= expected, f"never handed out again: {expected - got}"
        assert got <= expected | still_held
        await survivor.close()

    asyncio.run(scenario(f"prop-{uuid.uuid4().hex[:12]}"))


# -- nodes serve some targets; some adapters run on one node at a time ------------------


async def test_a_node_claims_only_the_targets_it_serves(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    a.serving = lambda: {"sip"}
    b.serving = lambda: {"xmpp"}
    for i in range(6):
        await a.commit(commit_of(str(i), target="sip" if i % 2 else "xmpp"))
    assert {e.target for e in await a.claim(1000.0, 100)} == {"sip"}
    assert {e.target for e in await b.claim(1000.0, 100)} == {"xmpp"}
    assert len(a._held) == len(b._held) == 3


async def test_a_dead_nodes_entries_go_to_nodes_that_serve_their_targets(make: Make) -> None:
    a, b, c = make("a"), make("b"), make("c")
    for store in (a, b, c):
        await store.open()
    for i in range(6):
        await a.commit(commit_of(str(i), target="sip" if i % 2 else "xmpp"))
    assert len(await a.claim(1000.0, 100)) == 6
    await kill(a)
    b.serving = lambda: {"sip"}
    c.serving = lambda: {"xmpp"}
    got: dict[str, list[str]] = {"b": [], "c": []}
    for _ in range(60):
        await asyncio.sleep(0.05)
        got["b"] += [e.target for e in await b.claim(1000.0, 100)]
        got["c"] += [e.target for e in await c.claim(1000.0, 100)]
        if len(got["b"]) + len(got["c"]) == 6:
            break
    assert got == {"b": ["sip"] * 3, "c": ["xmpp"] * 3}
    assert b.recovered + c.recovered == 6


def memory_adapter() -> MemoryAdapter:
    return MemoryAdapter("mem", MemoryConfig(), AdapterContext(gateway_id="gw"))


async def until_true(check: Callable[[], bool], within: float = 5.0) -> bool:
    for _ in range(int(within / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


async def test_an_exclusive_adapter_runs_on_one_node_and_moves_when_it_dies(make: Make) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    on_a, on_b = Exclusive(memory_adapter(), a), Exclusive(memory_adapter(), b)
    deliver = Recorder()
    run_a = asyncio.create_task(on_a.run(deliver))
    await until_true(lambda: on_a.holding)
    run_b = asyncio.create_task(on_b.run(deliver))
    await asyncio.sleep(FAST.ttl * 2)
    assert (on_a.holding, on_b.holding) == (True, False)
    assert on_b.ready()
    assert not on_b.serving()
    with pytest.raises(DeliveryError, match="runs on another node"):
        await on_b.send(message(text="x"))
    holder = await b.lease_holder("adapter:mem")
    assert holder is not None
    assert holder.name == "a"
    # a dies: no release, no renewal; b takes over once the lease has expired
    run_a.cancel()
    await kill(a)
    with contextlib.suppress(asyncio.CancelledError):
        await run_a
    assert await until_true(lambda: on_b.holding, within=FAST.ttl * 10)
    assert on_b.serving()
    await on_b.stop()
    await asyncio.wait_for(run_b, 5)
    assert await b.lease_holder("adapter:mem") is None, "a clean stop gives the lease back"


async def test_a_node_that_cannot_renew_its_lease_stops_the_adapter(
    make: Make, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        a = make("a", url=server.url)
        await a.open()
        on_a = Exclusive(memory_adapter(), a)
        run = asyncio.create_task(on_a.run(Recorder()))
        assert await until_true(lambda: on_a.holding)
        first = on_a.inner
        server.kill()  # no renewals from here: another node could have the lease soon
        assert await until_true(lambda: not on_a.holding, within=FAST.ttl * 10)
        # the adapter is stopped, then replaced by a fresh instance that waits for the lease
        assert await until_true(lambda: on_a.inner is not first, within=FAST.ttl * 10)
        server.start()
        assert await until_true(lambda: on_a.holding, within=FAST.ttl * 15)
        await on_a.stop()
        await asyncio.wait_for(run, 5)
    finally:
        server.stop()


async def test_one_presence_event_is_fanned_out_once_however_many_nodes_see_it(
    make: Make,
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()

    def notify(identity: str, watcher: str, document: bytes) -> Commit:
        env = Envelope(
            operation=Operation.NOTIFY,
            sender="sip:bob@sip.test",
            recipient=watcher,
            payload=Payload(PIDF, document),
            identity=f"{identity}-{watcher}",
            origin=Origin(adapter="sip"),
            attributes={"subscription.state": "active"},
        )
        return Commit(identity, 5.0, (Outbound("xmpp", env, 300.0),))

    # the presentity's server notifies two dialogs (held by two nodes) of one change
    first = await a.commit(notify("dialog-1", "xmpp:al@x.test", b"<presence>on</presence>"))
    second = await b.commit(notify("dialog-2", "xmpp:al@x.test", b"<presence>on</presence>"))
    assert (len(first.ids), len(second.ids)) == (1, 0)
    assert not second.duplicate, "the NOTIFY itself is stored; only its copy is not queued"
    other_watcher = await b.commit(notify("dialog-3", "xmpp:cy@x.test", b"<presence>on</presence>"))
    new_state = await b.commit(notify("dialog-4", "xmpp:al@x.test", b"<presence>off</presence>"))
    assert (len(other_watcher.ids), len(new_state.ids)) == (1, 1)


class DownAdapter(MemoryAdapter):
    """A memory adapter that says why it is down, as a refused XMPP handshake does."""

    def not_ready_reason(self) -> str | None:
        return "the server refused the component: check the secret"


async def test_an_exclusive_adapter_passes_on_why_it_is_down_only_where_it_runs(
    make: Make,
) -> None:
    a, b = make("a"), make("b")
    await a.open()
    await b.open()
    context = AdapterContext(gateway_id="gw")
    on_a = Exclusive(DownAdapter("mem", MemoryConfig(), context), a)
    on_b = Exclusive(DownAdapter("mem", MemoryConfig(), context), b)
    run_a = asyncio.create_task(on_a.run(Recorder()))
    assert await until_true(lambda: on_a.holding)
    run_b = asyncio.create_task(on_b.run(Recorder()))
    await asyncio.sleep(FAST.ttl * 2)
    assert on_a.not_ready_reason() == "the server refused the component: check the secret"
    assert on_b.not_ready_reason() is None, "a standby is not down"
    await on_a.stop()
    await on_b.stop()
    await asyncio.wait_for(asyncio.gather(run_a, run_b), 5)


HOLD = 2.0


async def owed_report(store: RedisStore, text: str, now: float = 1001.0) -> str:
    """An entry given up at ``now`` with a failure report owed to its sender (RFC 3860
    §3.4.1)."""
    [entry_id] = (await store.commit(commit_of(text))).ids
    assert entry_id in await claim_all(store)
    await store.fail(entry_id, error="no such user", now=now, report="unknown-destination")
    return entry_id


async def test_an_owed_report_is_taken_by_one_node_at_a_time(make: Make) -> None:
    # HOLD: long enough that a stalled test machine does not let it run out between calls
    a, b, operator = make("a"), make("b"), make("ops", serve=False)
    for store in (a, b, operator):
        await store.open()
    owed = await owed_report(a, "to nobody")
    assert [e.id for e in await a.take_reports(hold=HOLD)] == [owed]
    assert await b.take_reports(hold=HOLD) == [], "a holds it"
    assert [e.id for e in await a.take_reports(hold=HOLD)] == [owed], "renewed, still a's"
    assert [e.id for e in await operator.take_reports()] == [owed], "the operator only looks"
    assert [e.id for e in await b.reports()] == [owed], "still owed for everyone to see"
    for _ in range(400):  # a stops renewing (it died, or stopped trying): b may take it
        if await b.take_reports(hold=HOLD):
            break
        await asyncio.sleep(0.05)
    assert await a.take_reports(hold=HOLD) == [], "now b's"
    await b.reported(owed)
    assert await a.take_reports() == []
    assert await a.client.exists(f"{a.prefix}guard:report:{owed}") == 0, "the hold goes with it"


async def test_an_owed_report_is_taken_only_where_its_origin_adapter_runs(make: Make) -> None:
    """A standby of an exclusive XMPP adapter does not take (and so hold back) a report
    owed through it; the node running the adapter does."""
    standby, runner = make("standby"), make("runner")
    for store in (standby, runner):
        await store.open()
    standby.serving = lambda: {"sip"}
    runner.serving = lambda: {"sip", "xmpp"}
    owed = await owed_report(standby, "owed through xmpp")  # message() comes from xmpp
    assert await standby.take_reports() == []
    assert [e.id for e in await runner.take_reports()] == [owed]
    assert [e.id for e in await standby.reports()] == [owed], "owed all the same"


async def test_nodes_starting_together_send_an_owed_report_once(make: Make) -> None:
    """Two gateways start at once on a store that owes a report: the sender gets it once,
    from one of them (not once per node), and it is no longer owed."""
    seed = make("seed")
    await seed.open()
    owed = await owed_report(seed, "crashed before reporting")
    await seed.close()
    gateways = [
        build(store=make(name), adapters={n: memory(n) for n in ("xmpp", "sip")})
        for name in ("a", "b")
    ]
    senders = [g.adapters["xmpp"] for g in gateways]
    assert all(isinstance(s, MemoryAdapter) for s in senders)
    await asyncio.gather(*(g.start() for g in gateways))
    try:

        def reports() -> int:
            return sum(len(s.reports) for s in senders if isinstance(s, MemoryAdapter))

        await until(lambda: reports() >= 1)
        await until_no_report_owed(gateways[0].store)
        await asyncio.sleep(0.3)  # no late second copy
        assert reports() == 1, "one copy per cluster, not one per node"
        [(envelope, error)] = [
            r for s in senders if isinstance(s, MemoryAdapter) for r in s.reports
        ]
        assert error.reason is Reason.UNKNOWN_DESTINATION
        assert envelope.identity == message(text="crashed before reporting").identity
        assert [e.id for e in await gateways[1].store.entries()] == [owed]
    finally:
        await asyncio.gather(*(g.stop() for g in gateways))


async def test_a_report_its_node_died_owing_is_sent_by_a_running_node_once(make: Make) -> None:
    """A node gave an entry up and died before reporting it: a running gateway sends the
    report once it is ``report_orphan_age`` old (not at some node's next start), once."""
    gateway = build(store=make("b"), adapters={n: memory(n) for n in ("xmpp", "sip")})
    gateway.report_retry_interval = 0.05
    gateway.report_orphan_age = 1.0
    sender = gateway.adapters["xmpp"]
    assert isinstance(sender, MemoryAdapter)
    async with gateway:
        dead = make("a")
        await dead.open()
        owed = await owed_report(dead, "given up by a node that died", now=gateway.clock())
        await kill(dead)
        await asyncio.sleep(0.2)
        assert sender.reports == [], "too young: its node may still be reporting it"
        await until(lambda: len(sender.reports) >= 1)
        await until_no_report_owed(gateway.store)
        await asyncio.sleep(0.3)
        [(envelope, error)] = sender.reports
        assert envelope.identity == message(text="given up by a node that died").identity
        assert error.reason is Reason.UNKNOWN_DESTINATION
        assert [e.id for e in await gateway.store.entries()] == [owed]
