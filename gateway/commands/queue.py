"""``cpimgw queue list|retry|drop -c FILE``: the operator's view of the durable queue.

These open the store file next to a running gateway (SQLite WAL allows it); the gateway
notices retried and dropped entries within ``[store] poll_interval``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from canonical.errors import ConfigError
from gateway.config import load_file
from gateway.store import Entry, EntryState, Store
from gateway.store.redis import redis_store_of
from gateway.store.sqlite import SqliteStore


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("queue", help="list, retry or drop queued messages")
    sub = parser.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list queue entries (oldest first)")
    listing.add_argument("-c", "--config", required=True)
    listing.add_argument("--state", choices=[s.value for s in EntryState])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=handle_list)
    for action, text in (("retry", "make entries due now"), ("drop", "remove entries for good")):
        cmd = sub.add_parser(action, help=text)
        cmd.add_argument("-c", "--config", required=True)
        cmd.add_argument("ids", nargs="*", help="entry ids (from `queue list`)")
        cmd.add_argument(
            "--all-failed", action="store_true", help="every failed entry instead of ids"
        )
        cmd.set_defaults(handler=handle_change, action=action)


def _store(path: str) -> Store:
    config = load_file(path)
    if config.settings.store.backend == "redis":  # the shared store of several nodes
        return redis_store_of(config.settings, serve=False)
    if config.settings.store.backend != "sqlite":
        raise ConfigError(
            "the queue commands need the durable store",
            key="store.backend",
            file=path,
            hint='set [store] backend = "sqlite" (or "redis")',
        )
    if not config.store_path.exists():
        raise ConfigError(
            f"no store at {config.store_path} yet",
            key="store.path",
            file=path,
            hint="start the gateway once, or fix [store] path",
        )
    return SqliteStore(config.store_path, serve=False)


def describe(entry: Entry, now: float) -> dict[str, Any]:
    env = entry.envelope
    return {
        "id": entry.id,
        "state": entry.state.value,
        "target": entry.target,
        "identity": env.identity,
        "operation": env.operation.value,
        "sender": env.sender,
        "recipient": env.recipient,
        "attempts": entry.attempts,
        "age": round(now - entry.created_at, 1),
        "next_in": round(entry.next_at - now, 1),
        "expires_in": round(entry.expires_at - now, 1),
        "error": entry.last_error,
    }


async def _list(args: argparse.Namespace) -> int:
    store = _store(args.config)
    await store.open()
    try:
        state = EntryState(args.state) if args.state else None
        entries = await store.entries(state, args.limit)
        stats = await store.stats(time.time())
    finally:
        await store.close()
    now = time.time()
    rows = [describe(e, now) for e in entries]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    print(f"{stats.pending} pending, {stats.failed} failed, oldest {stats.oldest_age:.0f}s")
    for row in rows:
        print(
            f"{row['id']:>8} {row['state']:<8} {row['target']:<10} {row['attempts']:>3}x"
            f" {row['sender']} -> {row['recipient']} {row['identity']}"
            + (f"  ({row['error']})" if row["error"] else "")
        )
    return 0


async def _change(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_failed):
        print("cpimgw: give entry ids or --all-failed (not both)", file=sys.stderr)
        return 2
    store = _store(args.config)
    await store.open()
    try:
        ids = list(args.ids) if args.ids else None
        if args.action == "retry":
            count = await store.requeue(ids, now=time.time())
        else:
            count = await store.drop(ids, state=EntryState.FAILED if ids is None else None)
    finally:
        await store.close()
    done = "retried" if args.action == "retry" else "dropped"
    print(f"{done} {count} entr{'y' if count == 1 else 'ies'}")
    return 0 if count or not ids else 1


def handle_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


def handle_change(args: argparse.Namespace) -> int:
    return asyncio.run(_change(args))
