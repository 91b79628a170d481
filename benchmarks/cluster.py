"""Messages per second through 1, 2 and 3 ``cpimgw run`` nodes sharing one Redis, on
this machine, in the same run; ratios against one node.

Each node is a real process with two adapters of the testnet plugin
(``tests/plugins/cpimgw-testnet``: envelopes as length-prefixed JSON over loopback TCP):
``in`` listens for clients, ``out`` sends to one sink that acknowledges everything. The
load is spread evenly over the nodes' ``in`` ports (``--window`` unanswered envelopes per
connection, two connections per node); a run counts from the first envelope sent to the
last one delivered. A node acknowledges an envelope only after Redis has it (store
before ack), and delivers from Redis. Variants alternate so machine noise hits them alike;
each figure is the median of ``--rounds``. One node on the embedded SQLite store
(``synchronous = "full"``) runs in the same rounds as a reference.

    python -m benchmarks.cluster [--messages 6000] [--window 64] [--rounds 3]
    python -m benchmarks.cluster --costs      # Redis time and memory per message


Everything (Redis, the nodes, this load generator and the sink) shares the machine's
cores: the ratios say how far this machine scales, not how far a cluster of machines does
(docs/scaling.md has that model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of, to_record
from gateway.demo.servers import gateway
from tests.servers.process import ServerProcess, free_port
from tests.servers.redis import RedisServer

try:
    from cpimgw_testnet import frame, read_frame
except ImportError:  # pragma: no cover - said plainly below
    frame = read_frame = None  # type: ignore[assignment]


def node_config(
    *, name: str, store: str, inbound: int, sink: int, metrics: int, workdir: Path
) -> str:
    return f"""
[gateway]
id = "bench-cluster"

[store]
{store}

[cluster]
node = "{name}"

[delivery]
concurrency = 256

[adapters.in]
kind = "testnet"
listen = "127.0.0.1:{inbound}"

[adapters.out]
kind = "testnet"
connect = "127.0.0.1:{sink}"

[[routes]]
match = "src.test"
adapter = "in"

[[routes]]
match = "dst.test"
adapter = "out"

[security]
rate = 0

[metrics]
listen = "127.0.0.1:{metrics}"

[logging]
level = "error"
"""


@dataclass
class Sink:
    """The receiving network: acknowledges every envelope, counts unique identities."""

    expected: int = 0
    seen: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (request := await read_frame(reader)) is not None:
                self.seen.add(request["envelope"]["identity"])
                writer.write(frame({"seq": request["seq"], "ok": True}))
                if len(self.seen) >= self.expected and not self.done.is_set():
                    self.finished_at = time.perf_counter()
                    self.done.set()
        writer.close()


def requests(count: int, run: str) -> list[bytes]:
    """Pre-encoded frames, so the load generator spends its time sending."""
    out = []
    for i in range(count):
        sender, recipient = f"im:user{i % 50}@src.test", f"im:peer{i % 50}@dst.test"
        body = (
            f"From: <{sender}>\r\nTo: <{recipient}>\r\nDateTime: 2026-01-01T00:00:00Z\r\n\r\n"
            f"Content-Type: text/plain\r\n\r\nmessage {i}"
        ).encode()
        envelope = Envelope(
            operation=Operation.MESSAGE,
            sender=sender,
            recipient=recipient,
            payload=Payload(CPIM, body),
            identity=identity_of(run, str(i)),
            origin=Origin(adapter="client"),
        )
        out.append(frame({"seq": i, "envelope": to_record(envelope)}))
    return out


async def client(port: int, frames: list[bytes], window: int) -> int:
    """Send ``frames`` keeping ``window`` unanswered; returns how many were refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = 0
    sent = answered = 0
    while answered < len(frames):
        while sent < len(frames) and sent - answered < window:
            writer.write(frames[sent])
            sent += 1
        await writer.drain()
        answer = await read_frame(reader)
        if answer is None:
            raise RuntimeError(f"node on port {port} closed the connection")
        answered += 1
        refused += 0 if answer.get("ok") else 1
    writer.close()
    return refused


@contextlib.asynccontextmanager
async def nodes_running(
    workdir: Path, count: int, store: str, sink: int
) -> AsyncIterator[list[int]]:
    """``count`` nodes; yields their inbound ports."""
    procs: list[ServerProcess] = []
    ports: list[int] = []
    try:
        for i in range(count):
            inbound, metrics = free_port(), free_port()
            path = workdir / f"n{i}.toml"
            path.write_text(
                node_config(
                    name=f"n{i}",
                    store=store.replace("@DIR@", str(workdir)),
                    inbound=inbound,
                    sink=sink,
                    metrics=metrics,
                    workdir=workdir,
                )
            )
            procs.append(
                gateway(workdir, path, metrics_port=metrics, name=f"node{i}", ready_timeout=60)
            )
            ports.append(inbound)
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        yield ports
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))


async def one_run(
    redis: RedisServer | None, count: int, messages: int, window: int, run: str
) -> float:
    """Messages per second through ``count`` nodes (SQLite when ``redis`` is None)."""
    workdir = Path(tempfile.mkdtemp(prefix="cpimgw-bench-cluster-"))
    sink = Sink(expected=messages)
    sink_port = free_port()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", sink_port)
    store = (
        f'backend = "redis"\nurl = "{redis.url}"\nnamespace = "{run}"'
        if redis is not None
        else 'backend = "sqlite"\npath = "@DIR@/q.sqlite3"'
    )
    try:
        async with nodes_running(workdir, count, store, sink_port) as ports:
            frames = requests(messages, run)
            connections = [p for p in ports for _ in range(2)]
            shares = [frames[i :: len(connections)] for i in range(len(connections))]
            start = time.perf_counter()
            refused = await asyncio.gather(
                *(client(p, s, window) for p, s in zip(connections, shares, strict=True))
            )
            await asyncio.wait_for(sink.done.wait(), 300)
            elapsed = sink.finished_at - start
            if sum(refused):
                raise RuntimeError(f"{sum(refused)} envelopes refused in run {run}")
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return messages / elapsed


async def costs(redis: RedisServer, messages: int) -> dict[str, float]:
    """What Redis spends per store call and keeps per message and per subscription:
    the function calls of ``messages`` envelopes committed, claimed and completed by one
    store (INFO commandstats), and used memory before and after."""
    from redis.asyncio import Redis  # noqa: PLC0415

    from gateway.presence import Subscription, SubscriptionState  # noqa: PLC0415
    from gateway.store import Commit, Outbound  # noqa: PLC0415
    from gateway.store.redis import RedisStore  # noqa: PLC0415

    admin = Redis.from_url(redis.url)
    store = RedisStore(redis.url, namespace=f"costs-{os.getpid()}", node="costs")
    await store.open()
    envelopes = [
        Envelope(
            operation=Operation.MESSAGE,
            sender=f"im:user{i % 50}@src.test",
            recipient=f"im:peer{i % 50}@dst.test",
            payload=Payload(CPIM, f"From: <im:a@src.test>\r\n\r\nmessage {i:06d}".encode()),
            identity=identity_of("costs", str(i)),
            origin=Origin(adapter="in"),
        )
        for i in range(messages)
    ]

    async def used() -> int:
        return int((await admin.info("memory"))["used_memory"])

    await admin.config_resetstat()
    base = await used()
    await asyncio.gather(
        *(store.commit(Commit(e.identity, 1000.0, (Outbound("out", e, 9e9),))) for e in envelopes)
    )
    queued = await used()
    claimed = []
    while len(claimed) < messages:
        claimed += await store.claim(1000.0, 1000)
    await asyncio.gather(*(store.complete(e.id) for e in claimed))
    marks = await used()
    stats = await admin.info("commandstats")
    subs = [
        Subscription(
            f"xmpp:watcher{i}@xmpp.example.com",
            f"sip:presentity{i % 5000}@example.net",
            SubscriptionState.ACTIVE,
            "xmpp",
            "sip",
            None,
            1.0,
            2.0,
        )
        for i in range(messages)
    ]
    before_subs = await used()
    await asyncio.gather(
        *(
            store.commit(Commit("", 1000.0, subscriptions=subs[i : i + 100]))
            for i in range(0, len(subs), 100)
        )
    )
    after_subs = await used()
    await store.close()
    await admin.aclose()

    def per_call(name: str) -> float:
        found = stats.get(f"cmdstat_{name}")
        return float(found["usec_per_call"]) if found else 0.0

    fcall = stats.get("cmdstat_fcall", {})
    return {
        "fcall_usec_per_call": per_call("fcall"),
        "fcalls": float(fcall.get("calls", 0)),
        "redis_usec_per_message": float(fcall.get("usec", 0)) / messages,
        "bytes_per_queued_message": (queued - base) / messages,
        "bytes_per_dedup_mark": (marks - base) / messages,
        "bytes_per_subscription": (after_subs - before_subs) / messages,
        "calls_per_round_trip": store.calls / max(1, store.round_trips),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--window", type=int, default=64, help="unanswered per connection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="measure Redis time and memory per message and per subscription instead",
    )
    args = parser.parse_args(argv)
    if args.costs:
        redis_dir = Path(tempfile.mkdtemp(prefix="cpimgw-bench-redis-"))
        redis = RedisServer(redis_dir).start()
        try:
            found = asyncio.run(costs(redis, max(args.messages, 20_000)))
        finally:
            redis.stop()
            shutil.rmtree(redis_dir, ignore_errors=True)
        if args.json:
            print(json.dumps(found))
        else:
            for key, value in found.items():
                print(f"  {key:<28} {value:>10,.1f}")
        return 0
    if frame is None:
        print("install the testnet plugin: pip install -e tests/plugins/cpimgw-testnet")
        return 2
    variants = {"1 node": 1, "2 nodes": 2, "3 nodes": 3, "1 node, SQLite": 0}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    redis_dir = Path(tempfile.mkdtemp(prefix="cpimgw-bench-redis-"))
    redis = RedisServer(redis_dir).start()
    try:
        for rnd in range(args.rounds):
            for name, count in variants.items():
                run = f"r{rnd}-{count}-{os.getpid()}"
                rate = asyncio.run(
                    one_run(redis if count else None, count or 1, args.messages, args.window, run)
                )
                rates[name].append(rate)
    finally:
        redis.stop()
        shutil.rmtree(redis_dir, ignore_errors=True)
    summary = {name: statistics.median(r) for name, r in rates.items()}
    base = summary["1 node"]
    if args.json:
        print(json.dumps({"messages": args.messages, "rates": summary, "cores": os.cpu_count()}))
        return 0
    print(
        f"{args.messages} messages per run, {args.window} unanswered per connection,"
        f" median of {args.rounds} rounds, {os.cpu_count()} cores"
    )
    for name, rate in summary.items():
        print(f"  {name:<16} {rate:>8,.0f} msg/s  ({rate / base:.2f}x of 1 node on Redis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
