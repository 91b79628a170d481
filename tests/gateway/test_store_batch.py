"""SQLite's group of message commits: many concurrent commits written by one batch of
statements give each caller the same answer a commit of its own would (ids, duplicates,
order), and completions deleted by ranges delete exactly the completed entries."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.store import Commit, EntryState, Outbound
from gateway.store.sqlite import SqliteStore
from tests.gateway.samples import message


def commit_of(text: str, *, at: float = 1000.0, fan_out: int = 1) -> Commit:
    env = message(text=text)
    return Commit(
        identity=env.identity,
        at=at,
        entries=tuple(Outbound(f"t{n}", env, at + 60) for n in range(fan_out)),
    )


async def test_concurrent_commits_get_the_ids_of_their_own_rows(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path)
    await store.open()
    commits = [commit_of(f"m{i}", fan_out=1 + i % 3) for i in range(700)]
    results = await asyncio.gather(*(store.commit(c) for c in commits))
    batches = store.batches
    await store.close()
    assert batches < 700 / 4  # they were grouped
    with sqlite3.connect(path) as conn:
        rows = {
            str(i): (identity, target)
            for i, identity, target in conn.execute("SELECT id, identity, target FROM queue")
        }
    assert len(rows) == sum(len(c.entries) for c in commits)
    for commit, accepted in zip(commits, results, strict=True):
        assert not accepted.duplicate
        assert [rows[i] for i in accepted.ids] == [
            (commit.identity, out.target) for out in commit.entries
        ]
    ordered = [int(i) for accepted in results for i in accepted.ids]
    assert ordered == sorted(ordered)  # stored in the order of the calls


async def test_a_duplicate_within_one_group_is_found_and_the_rest_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3", dedup_window=100.0)
    await store.open()
    earlier = commit_of("earlier")
    await store.commit(earlier)
    fresh = [commit_of(f"m{i}") for i in range(50)]
    calls = [*fresh[:20], earlier, fresh[5], *fresh[20:], fresh[49]]
    results = await asyncio.gather(*(store.commit(c) for c in calls))
    claimed = await store.claim(2000.0, 1000)
    await store.close()
    duplicates = [i for i, r in enumerate(results) if r.duplicate]
    assert duplicates == [20, 21, len(calls) - 1]  # seen before, then twice in the group
    assert all(len(r.ids) == 1 for r in results if not r.duplicate)
    assert sorted(e.envelope.identity for e in claimed) == sorted(
        [earlier.identity, *(c.identity for c in fresh)]
    )


async def test_an_identity_past_the_window_is_accepted_again_in_a_group(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3", dedup_window=10.0)
    await store.open()
    old = commit_of("old", at=100.0)
    await store.commit(old)
    again = Commit(old.identity, 110.0, old.entries)  # exactly one window later
    within = commit_of("x", at=110.0)
    results = await asyncio.gather(
        store.commit(within), store.commit(again), store.commit(Commit(old.identity, 110.0))
    )
    await store.close()
    assert [r.duplicate for r in results] == [False, False, True]


async def test_a_cancelled_commit_is_still_written_and_the_others_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path)
    await store.open()
    tasks = [asyncio.create_task(store.commit(commit_of(f"m{i}"))) for i in range(30)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(not r.duplicate for i, r in enumerate(results) if i != 3)  # type: ignore[union-attr]
    again = SqliteStore(path)
    await again.open()
    assert len(await again.entries(EntryState.PENDING, 100)) == 30  # queued: it is written
    await again.close()


async def test_completions_delete_exactly_the_completed_entries(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await asyncio.gather(*(store.commit(commit_of(f"m{i}")) for i in range(40)))
    claimed = await store.claim(2000.0, 100)
    done = {e.id for n, e in enumerate(claimed) if n % 7 not in (2, 3, 5)}  # gaps of 1 and 2
    for entry_id in sorted(done, key=lambda i: -int(i)):  # out of order
        await store.complete(entry_id)
    await store.close()
    again = SqliteStore(path)
    await again.open()
    left = {e.id for e in await again.entries(EntryState.PENDING, 100)}
    await again.close()
    assert left == {e.id for e in claimed} - done


async def test_every_write_waits_for_a_held_lock_not_only_the_first(tmp_path: Path) -> None:
    """A free write lock is taken on the loop without waiting; a held one is waited for in
    the store's thread, each time it is held (the wait is not used up by the first)."""
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path, busy_timeout=5.0)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for n in range(2):
            other.execute("BEGIN IMMEDIATE")
            writing = asyncio.ensure_future(store.commit(commit_of(f"held-{n}")))
            await asyncio.sleep(0.1)
            assert not writing.done(), "the write went through while the lock was held"
            other.execute("ROLLBACK")
            assert not (await writing).duplicate
            assert not (await store.commit(commit_of(f"free-{n}"))).duplicate
        assert len(await store.claim(2000.0, 10)) == 4
    finally:
        other.close()
        await store.close()
