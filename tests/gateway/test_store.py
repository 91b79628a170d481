"""The store protocol, on both implementations, and SQLite's durability across reopen."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canonical.envelope import PIDF, Payload
from gateway.presence import LastPresence, Subscription, SubscriptionState
from gateway.store import DROPPED, Commit, EntryState, Outbound, Outcome, OutcomeState, Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore, decode_envelope, encode_envelope
from tests.gateway.samples import message
from tests.servers.redis import redis_namespace, redis_server  # noqa: F401 (fixtures)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.e2e)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store
    if request.param == "redis":  # a real redis-server (tests/servers/redis.py)
        server = request.getfixturevalue("redis_server")
        namespace = request.getfixturevalue("redis_namespace")
        made = RedisStore(server.url, namespace=namespace, node="suite", dedup_window=100.0)
    elif request.param == "memory":
        made = MemoryStore(dedup_window=100.0)
    else:
        made = SqliteStore(tmp_path / "q.sqlite3", dedup_window=100.0, synchronous="normal")
    await made.open()
    yield made
    await made.close()


def commit_of(text: str, at: float = 1000.0, target: str = "sip") -> Commit:
    env = message(text=text)
    return Commit(identity=env.identity, at=at, entries=(Outbound(target, env, at + 60),))


async def test_failure_reports_owed_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    await store.commit(commit_of("crash"))
    [entry] = await store.claim(1000.0, 10)
    await store.fail(entry.id, error="gone", now=1001.0, report="not-found")
    await store.close()
    again = SqliteStore(path, synchronous="normal")
    await again.open()
    try:
        [owed] = await again.reports()
        assert (owed.id, owed.report) == (entry.id, "not-found")
    finally:
        await again.close()


async def test_a_store_file_without_the_report_column_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    await store.commit(commit_of("old"))
    await store.close()
    conn = sqlite3.connect(path)  # as a file of an older cpimgw: no column, no index on it
    conn.execute("DROP INDEX queue_owed")
    conn.execute("ALTER TABLE queue DROP COLUMN report")
    conn.commit()
    conn.close()
    again = SqliteStore(path, synchronous="normal")
    await again.open()
    try:
        [entry] = await again.claim(1000.0, 10)
        await again.fail(entry.id, error="gone", now=1001.0, report="expired")
        assert [e.id for e in await again.reports()] == [entry.id]
    finally:
        await again.close()


def test_envelope_encoding_keeps_payload_bytes_exactly() -> None:
    env = message(text="bin")
    env = env.replace(payload=Payload("application/octet-stream", bytes(range(256))))
    assert decode_envelope(*encode_envelope(env)) == env


async def test_committed_entry_is_claimed_once(store: Store) -> None:
    accepted = await store.commit(commit_of("one"))
    assert not accepted.duplicate
    assert len(accepted.ids) == 1
    claimed = await store.claim(1000.0, 10)
    assert [e.id for e in claimed] == list(accepted.ids)
    assert claimed[0].envelope == message(text="one")
    assert await store.claim(1000.0, 10) == []
    await store.complete(claimed[0].id)
    assert await store.entries() == []


async def test_same_identity_within_window_is_a_duplicate(store: Store) -> None:
    assert not (await store.commit(commit_of("x", at=1000.0))).duplicate
    again = await store.commit(commit_of("x", at=1050.0))
    assert again.duplicate
    assert again.ids == ()
    assert len(await store.entries()) == 1
    later = await store.commit(commit_of("x", at=1200.0))
    assert not later.duplicate


async def test_maintain_forgets_identities_past_the_window(store: Store) -> None:
    await store.commit(commit_of("x", at=1000.0))
    await store.maintain(1200.0)
    assert not (await store.commit(commit_of("x", at=1201.0))).duplicate


async def test_rescheduled_entry_waits_until_due(store: Store) -> None:
    await store.commit(commit_of("r"))
    [entry] = await store.claim(1000.0, 10)
    await store.reschedule(entry.id, next_at=1010.0, attempts=1, error="busy")
    assert await store.next_due() == 1010.0
    assert await store.claim(1005.0, 10) == []
    [again] = await store.claim(1010.0, 10)
    assert again.attempts == 1
    assert again.last_error == "busy"


async def test_failed_entry_is_kept_and_can_be_requeued(store: Store) -> None:
    await store.commit(commit_of("f"))
    [entry] = await store.claim(1000.0, 10)
    await store.fail(entry.id, error="gone", now=1001.0)
    [kept] = await store.entries(EntryState.FAILED)
    assert kept.last_error == "gone"
    stats = await store.stats(1002.0)
    assert (stats.pending, stats.failed) == (0, 1)
    assert await store.requeue(None, now=1003.0) == 1
    [back] = await store.claim(1003.0, 10)
    assert back.id == entry.id
    assert back.attempts == 0


async def test_failure_report_is_owed_until_reported(store: Store) -> None:
    await store.commit(commit_of("owed"))
    await store.commit(commit_of("silent"))
    first, second = await store.claim(1000.0, 10)
    await store.fail(first.id, error="gone", now=1001.0, report="unavailable")
    await store.fail(second.id, error="gone too", now=1001.0)
    [owed] = await store.reports()
    assert (owed.id, owed.report, owed.last_error) == (first.id, "unavailable", "gone")
    assert owed.envelope == first.envelope
    # one node: what it may send is what is owed, as often as it asks
    for _ in range(2):
        [taken] = await store.take_reports(hold=30.0)
        assert (taken.id, taken.report, taken.envelope) == (owed.id, owed.report, owed.envelope)
    await store.reported(first.id)
    await store.reported(first.id)  # twice is harmless
    assert await store.reports() == []
    assert await store.take_reports() == []
    [kept, _] = await store.entries(EntryState.FAILED)
    assert kept.report is None


async def test_reports_can_be_taken_by_when_their_entry_was_given_up(store: Store) -> None:
    for text in ("early", "late"):
        await store.commit(commit_of(text))
    early, late = await store.claim(1000.0, 10)
    await store.fail(early.id, error="gone", now=1001.0, report="expired")
    await store.fail(late.id, error="gone", now=1050.0, report="expired")
    assert [e.id for e in await store.take_reports(failed_before=1001.0)] == []
    assert [e.id for e in await store.take_reports(failed_before=1001.5)] == [early.id]
    assert [e.id for e in await store.take_reports(failed_before=2000.0)] == [early.id, late.id]
    assert [e.id for e in await store.take_reports(1, failed_before=2000.0)] == [early.id]
    assert [e.id for e in await store.take_reports()] == [early.id, late.id]


async def test_requeue_or_drop_cancels_an_owed_report(store: Store) -> None:
    for text in ("a", "b"):
        await store.commit(commit_of(text))
    first, second = await store.claim(1000.0, 10)
    for entry in (first, second):
        await store.fail(entry.id, error="gone", now=1001.0, report="expired")
    assert await store.requeue([first.id], now=1002.0) == 1
    assert await store.drop([second.id]) == 1
    assert await store.reports() == []


async def test_drop_removes_entries_for_good(store: Store) -> None:
    ids = [(await store.commit(commit_of(str(i)))).ids[0] for i in range(3)]
    assert await store.drop([ids[1]]) == 1
    claimed = await store.claim(1000.0, 10)
    assert sorted(e.id for e in claimed) == sorted([ids[0], ids[2]])


async def test_stats_count_pending_by_target_and_oldest_age(store: Store) -> None:
    await store.commit(commit_of("a", at=1000.0, target="sip"))
    await store.commit(commit_of("b", at=1010.0, target="xmpp"))
    stats = await store.stats(1020.0)
    assert stats.pending == 2
    assert stats.by_target == {"sip": 1, "xmpp": 1}
    assert stats.oldest_age == 20.0


async def settled(store: Store) -> None:
    """Let a store finish what it writes behind the caller (SQLite deletes completed entries
    with its next batch): one operation that queues behind it."""
    await store.entries(limit=1)


async def test_outcome_follows_an_identity_from_pending_to_delivered(store: Store) -> None:
    commit = commit_of("o")
    await store.commit(commit)
    assert await store.outcome(commit.identity) == Outcome(OutcomeState.PENDING)
    [entry] = await store.claim(1000.0, 10)
    await store.reschedule(entry.id, next_at=1010.0, attempts=1, error="busy")
    assert await store.outcome(commit.identity) == Outcome(OutcomeState.PENDING, 1, "busy")
    [again] = await store.claim(1010.0, 10)
    await store.complete(again.id)
    await settled(store)
    assert await store.outcome(commit.identity) == Outcome(OutcomeState.DELIVERED)


async def test_outcome_right_after_complete_is_delivered(store: Store) -> None:
    """A status read straight after a delivery (the HTTP API's GET of a status) sees it
    delivered, though SQLite commits the completion behind the caller."""
    for n in range(20):
        commit = commit_of(f"quick-{n}")
        await store.commit(commit)
        [entry] = await store.claim(1000.0 + n, 10)
        await store.complete(entry.id)
        assert await store.outcome(commit.identity) == Outcome(OutcomeState.DELIVERED)


async def test_outcome_of_a_failed_entry_says_why_until_it_is_requeued(store: Store) -> None:
    commit = commit_of("f")
    await store.commit(commit)
    [entry] = await store.claim(1000.0, 10)
    await store.reschedule(entry.id, next_at=1000.0, attempts=3, error="busy")
    [entry] = await store.claim(1000.0, 10)
    await store.fail(entry.id, error="expired: busy", now=1001.0)
    assert await store.outcome(commit.identity) == Outcome(OutcomeState.FAILED, 3, "expired: busy")
    await store.requeue([entry.id], now=1002.0)
    found = await store.outcome(commit.identity)
    assert found is not None
    assert found.state is OutcomeState.PENDING


@pytest.mark.parametrize("how", ["by id", "all failed"])
async def test_outcome_of_a_dropped_entry_is_failed(store: Store, how: str) -> None:
    commit = commit_of(f"d {how}")
    [entry_id] = (await store.commit(commit)).ids
    if how == "by id":
        assert await store.drop([entry_id]) == 1
    else:
        [entry] = await store.claim(1000.0, 10)
        await store.fail(entry.id, error="gone", now=1001.0)
        assert await store.drop(None, state=EntryState.FAILED) == 1
    assert await store.outcome(commit.identity) == Outcome(OutcomeState.FAILED, 0, DROPPED)


async def test_outcome_of_a_fan_out_waits_for_every_entry(store: Store) -> None:
    env = message(text="fan")
    commit = Commit(
        env.identity, 1000.0, (Outbound("sip", env, 1060.0), Outbound("xmpp", env, 1060.0))
    )
    await store.commit(commit)
    first, second = await store.claim(1000.0, 10)
    await store.complete(first.id)
    await settled(store)
    assert (await store.outcome(env.identity)) == Outcome(OutcomeState.PENDING)
    await store.fail(second.id, error="no such user", now=1001.0)
    assert await store.outcome(env.identity) == Outcome(OutcomeState.FAILED, 0, "no such user")


async def test_outcome_of_an_operation_with_nothing_to_send_is_delivered(store: Store) -> None:
    await store.commit(Commit("subscribe-1", 1000.0))
    assert await store.outcome("subscribe-1") == Outcome(OutcomeState.DELIVERED)


async def test_outcome_of_an_unknown_identity_is_none(store: Store) -> None:
    await store.commit(commit_of("known"))
    assert await store.outcome("never-stored") is None
    assert await store.outcome("") is None


async def test_outcome_is_forgotten_with_the_dedup_window(store: Store) -> None:
    if isinstance(store, RedisStore):
        pytest.skip("Redis forgets by TTL in its own real time, not by maintain(now)")
    delivered, dropped = commit_of("gone"), commit_of("dropped")
    await store.commit(delivered)
    [dropped_id] = (await store.commit(dropped)).ids
    await store.drop([dropped_id])
    [entry] = await store.claim(1000.0, 10)
    await store.complete(entry.id)
    await settled(store)
    await store.maintain(1050.0)
    assert await store.outcome(delivered.identity) == Outcome(OutcomeState.DELIVERED)
    assert await store.outcome(dropped.identity) == Outcome(OutcomeState.FAILED, 0, DROPPED)
    await store.maintain(1200.0)
    assert await store.outcome(delivered.identity) is None
    assert await store.outcome(dropped.identity) is None


async def test_subscriptions_and_presence_are_committed_with_the_operation(store: Store) -> None:
    sub = Subscription(
        "xmpp:alice@x.example",
        "sip:bob@s.example",
        SubscriptionState.ACTIVE,
        "xmpp",
        "sip",
        None,
        1.0,
        2.0,
    )
    pres = LastPresence("sip:bob@s.example", Payload(PIDF, b"<presence/>"), 3.0, "id1")
    await store.commit(Commit(identity="i1", at=5.0, subscriptions=(sub,), presence=pres))
    assert await store.subscriptions() == [sub]
    assert await store.presences() == [pres]
    await store.commit(Commit(identity="i2", at=6.0, ended=((sub.watcher, sub.presentity),)))
    assert await store.subscriptions() == []


async def test_id_map_round_trips(store: Store) -> None:
    await store.map_id("sip", "call-1", "identity-1", now=1.0)
    assert await store.lookup_id("sip", "call-1") == "identity-1"
    assert await store.lookup_id("sip", "call-2") is None


async def test_token_bucket_refuses_past_burst_and_refills(store: Store) -> None:
    takes = [await store.take_token("k", rate=1.0, burst=2, now=100.0) for _ in range(3)]
    assert takes[:2] == [0.0, 0.0]
    assert takes[2] == pytest.approx(1.0)
    assert await store.take_token("k", rate=1.0, burst=2, now=101.0) == 0.0


async def test_sqlite_pending_entries_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    first = SqliteStore(path)
    await first.open()
    ids = [(await first.commit(commit_of(str(i)))).ids[0] for i in range(5)]
    [claimed, *_] = await first.claim(1000.0, 1)
    await first.complete(claimed.id)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    again = await second.claim(1000.0, 10)
    await second.close()
    assert sorted(e.id for e in again) == sorted(ids[1:])


async def test_sqlite_group_commit_shares_transactions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3")
    await store.open()
    before = store.batches
    results = await asyncio.gather(*(store.commit(commit_of(str(i))) for i in range(500)))
    batches = store.batches - before
    await store.close()
    assert all(not r.duplicate for r in results)
    assert batches < 500 / 4, f"{batches} transactions for 500 concurrent commits"


async def test_sqlite_notices_operator_changes_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    serving = SqliteStore(path, poll_interval=0.0)
    await serving.open()
    await serving.commit(commit_of("a"))
    await serving.commit(commit_of("b"))
    [first] = await serving.claim(1000.0, 1)
    await serving.fail(first.id, error="x", now=1000.0)
    operator = SqliteStore(path, serve=False)
    await operator.open()
    [other] = list(await operator.entries(EntryState.PENDING))
    assert await operator.drop([other.id]) == 1
    assert await operator.requeue([first.id], now=1001.0) == 1
    await operator.close()
    claimed = await serving.claim(1001.0, 10)
    await serving.close()
    assert [e.id for e in claimed] == [first.id]


async def test_sqlite_refuses_a_store_of_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(Exception, match="schema 99"):
        await SqliteStore(path).open()


# -- property: nothing acknowledged is lost across reopen -------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["commit", "claim", "complete", "retry", "fail", "reopen"]),
        st.integers(0, 7),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_store_never_loses_an_acknowledged_envelope_across_reopen(
    ops: list[tuple[str, int]],
) -> None:
    """Model check: after any sequence of operations and restarts, the pending entries in
    the file are exactly those committed (acknowledged) and not completed or failed."""

    async def scenario(path: Path) -> None:
        store = SqliteStore(path, synchronous="normal")
        await store.open()
        expected: dict[str, str] = {}  # entry id -> identity, pending
        failed: set[str] = set()
        claimed: list[str] = []
        now = 1000.0
        for op, n in ops:
            now += 1.0
            if op == "commit":
                env = message(text=f"m{n}", received_at=now)
                acc = await store.commit(
                    Commit(env.identity, now, (Outbound("sip", env, now + 99),))
                )
                for entry_id in acc.ids:
                    expected[entry_id] = env.identity
            elif op == "claim":
                claimed += [e.id for e in await store.claim(now, n + 1)]
            elif op in ("complete", "retry", "fail") and claimed:
                entry_id = claimed.pop(n % len(claimed))
                if op == "complete":
                    await store.complete(entry_id)
                    expected.pop(entry_id)
                elif op == "retry":
                    await store.reschedule(entry_id, next_at=now, attempts=1, error="e")
                else:
                    await store.fail(entry_id, error="e", now=now)
                    failed.add(entry_id)
                    expected.pop(entry_id)
            elif op == "reopen":
                await store.close()
                store = SqliteStore(path, synchronous="normal")
                await store.open()
                claimed = []
        await store.close()
        check = SqliteStore(path)
        await check.open()
        pending = {
            e.id: e.envelope.identity for e in await check.entries(EntryState.PENDING, 10_000)
        }
        kept_failed = {e.id for e in await check.entries(EntryState.FAILED, 10_000)}
        everything = await check.claim(now + 1, 10_000)
        await check.close()
        assert pending == expected
        assert kept_failed == failed
        assert {e.id for e in everything} == set(expected)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "q.sqlite3"))


async def test_sqlite_one_failing_operation_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3")
    await store.open()
    bad = store._submit(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
    good = [store.commit(commit_of(str(i))) for i in range(3)]
    results = await asyncio.gather(bad, *good, return_exceptions=True)
    await store.close()
    assert isinstance(results[0], sqlite3.OperationalError)
    assert all(not r.duplicate for r in results[1:])  # type: ignore[union-attr]
    again = SqliteStore(tmp_path / "q.sqlite3")
    await again.open()
    assert len(await again.entries()) == 3
    await again.close()


async def test_sqlite_maintain_forgets_in_chunks(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3", dedup_window=10.0)
    await store.open()
    for i in range(25):
        await store.commit(Commit(f"id-{i}", 100.0 + i))
    await store.maintain(130.0, chunk=4)  # forgets identities seen before 120
    fresh = [not (await store.commit(Commit(f"id-{i}", 130.0))).duplicate for i in range(25)]
    await store.close()
    assert fresh == [True] * 21 + [False] * 4  # seen exactly one window ago counts as new


async def test_sqlite_cancelled_reads_and_commits_never_overlap_close(tmp_path: Path) -> None:
    """Cancelling a caller while its worker thread still uses a connection must not let
    close() (or the next statement) touch that connection concurrently."""
    for round_ in range(20):
        store = SqliteStore(tmp_path / f"q{round_}.sqlite3")
        await store.open()
        busy = [asyncio.create_task(store.stats(1.0)) for _ in range(3)]
        busy += [asyncio.create_task(store.commit(commit_of(str(i)))) for i in range(50)]
        await asyncio.sleep(0.001 * (round_ % 5))
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        await store.close()
        check = SqliteStore(tmp_path / f"q{round_}.sqlite3")
        await check.open()
        assert (await check.stats(1.0)).failed == 0
        await check.close()
