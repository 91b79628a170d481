"""``cpimgw cluster status -c FILE [--json]``: the nodes sharing the Redis store, their
claimed work, and the shared queue.

Reads the store the way every node does (``[store] url`` and ``namespace``) without
joining the cluster. Exit status: 0; 1 when a dead node still holds claimed entries
(they wait until they have been idle ``[cluster] claim_idle`` seconds, then a live node
takes them); 2 for a config or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from typing import Any

from adapters.sip.subscribers import held_counts
from canonical.errors import ConfigError
from gateway.cluster import ClusterStatus, node_statuses
from gateway.config import load_file
from gateway.store.redis import RedisStore, redis_store_of


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cluster", help="nodes sharing a Redis store", description=__doc__
    )
    commands = parser.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    status = commands.add_parser(
        "status", help="nodes, their claimed work, the shared queue", description=__doc__
    )
    status.add_argument("-c", "--config", required=True, help="the TOML config file")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=handle_status)


async def read_status(store: RedisStore, *, now: float) -> ClusterStatus:
    """One consistent-enough snapshot (several reads; counts may move between them)."""
    consumers = await store.consumers()
    roster = await store.roster()
    alive = await store.alive(sorted(set(roster) | {c.name for c in consumers}))
    stats = await store.stats(now)
    nodes = node_statuses(roster, alive, consumers)
    held = await held_counts(store.client, store.prefix, [n.name for n in nodes])
    return ClusterStatus(
        namespace=store.namespace,
        at=now,
        nodes=tuple(dataclasses.replace(n, sip_subscriptions=held[n.name]) for n in nodes),
        pending=stats.pending,
        failed=stats.failed,
        scheduled=await store.scheduled(),
        unclaimed=await store.unclaimed(),
        claimed=sum(c.pending for c in consumers),
        by_target=stats.by_target,
        oldest_age=stats.oldest_age,
    )


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{max(0.0, now - at):.1f}s ago"


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def render(status: ClusterStatus, url: str) -> str:
    """The text table an operator reads."""
    now = status.at
    lines = [
        f"cluster {status.namespace!r} on {url} at {_clock(now)} UTC",
        f"queue: {status.pending} pending ({status.unclaimed} not yet claimed,"
        f" {status.claimed} claimed by nodes, {status.scheduled} waiting for a retry),"
        f" {status.failed} failed, oldest pending {status.oldest_age:.1f}s",
    ]
    if status.by_target:
        targets = ", ".join(f"{k} {v}" for k, v in sorted(status.by_target.items()))
        lines.append(f"pending by adapter: {targets}")
    rows = [("NODE", "STATE", "HOST/PID", "STARTED (UTC)", "LAST BEAT", "CLAIMED", "IDLE",
             "RECOVERED", "SIP SUBS")]  # fmt: skip
    for n in status.nodes:
        if n.alive:
            state = "alive"
        elif n.stopped_at is not None:
            state = "stopped"
        else:
            state = "dead"
        rows.append(
            (
                n.name,
                state,
                f"{n.node.host}/{n.node.pid}" if n.node else "-",
                _clock(n.node.started_at) if n.node else "-",
                _ago(n.beat_at, now),
                str(n.claimed),
                "-" if n.idle is None else f"{n.idle:.1f}s",
                str(n.recovered),
                str(n.sip_subscriptions),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for what, count, then in (
        ("claimed", "claimed", "once they have been idle [cluster] claim_idle seconds"),
        ("SIP subscriptions held", "sip_subscriptions", "at the next recover_interval check"),
    ):
        dead = [(n.name, getattr(n, count)) for n in status.nodes if not n.alive]
        names = ", ".join(f"{name} ({held})" for name, held in dead if held)
        if names:
            lines.append(
                f"{what} by nodes that are not running: {names} - a live node takes them {then}"
            )
    if not status.nodes:
        lines.append("no node has joined this cluster yet")
    return "\n".join(lines)


async def _status(store: RedisStore) -> ClusterStatus:
    await store.open()
    try:
        return await read_status(store, now=time.time())
    finally:
        await store.close()


def handle_status(args: argparse.Namespace) -> int:
    config = load_file(args.config)
    if config.settings.store.backend != "redis":
        raise ConfigError(
            f"the store is {config.settings.store.backend!r}, not shared by several nodes",
            key="store.backend",
            file=str(config.file),
            hint='cluster status needs backend = "redis"',
        )
    store = redis_store_of(config.settings, serve=False)
    status = asyncio.run(_status(store))
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render(status, store.url))
    return 1 if any(not n.alive and n.claimed for n in status.nodes) else 0
