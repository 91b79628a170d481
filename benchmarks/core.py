"""Messages per second through the gateway core: durable (SQLite, WAL, group commit)
against the same run with the in-memory store, to show what durability costs.

Two in-memory adapters: ``in`` injects messages as a network's users would (each
``deliver`` returns only once the envelope is committed), ``out`` accepts every send.
A run counts from the first inject to the last delivery. The store variants alternate
so that machine noise hits them alike, and each figure is the median of ``--rounds``.

    python -m benchmarks.core [--messages 20000] [--concurrency 500] [--rounds 3]
                              [--gc run|default]

``--gc run`` (the default) tunes Python's cyclic garbage collector as ``cpimgw run`` does
once started (:func:`gateway.commands.run.collect_less`), for every variant alike, after
the messages to inject are built; ``--gc default`` keeps the interpreter's thresholds.

Targets (issue 5): >= 5,000 msg/s durable on a 2-core machine, and durable >= 0.5x the
in-memory run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adapters.contract import AdapterContext
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of
from gateway.commands.run import collect_less
from gateway.core import DeliveryPolicy, Gateway
from gateway.routing import Route, RoutingTable
from gateway.security import Rules
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore


def envelopes(count: int, run: str) -> list[Envelope]:
    out = []
    for i in range(count):
        sender, recipient = (
            f"xmpp:user{i % 50}@xmpp.example.com/pc",
            f"sip:peer{i % 50}@example.net",
        )
        body = (
            f"From: <im:user{i % 50}@xmpp.example.com>\r\nTo: <im:peer{i % 50}@example.net>\r\n"
            f"DateTime: 2026-01-01T00:00:00Z\r\n\r\nContent-Type: text/plain\r\n\r\nmessage {i}"
        ).encode()
        out.append(
            Envelope(
                operation=Operation.MESSAGE,
                sender=sender,
                recipient=recipient,
                payload=Payload(CPIM, body),
                identity=identity_of(run, str(i)),
                origin=Origin(adapter="in"),
                received_at=time.time(),  # adapters stamp what they receive
            )
        )
    return out


async def one_run(
    store: Store, count: int, concurrency: int, run: str, *, tune_gc: bool = False
) -> tuple[float, dict[str, float]]:
    """Seconds for ``count`` messages in and out, and a few counters."""
    context = AdapterContext(gateway_id="bench")
    inbound = MemoryAdapter("in", MemoryConfig(), context)
    outbound = MemoryAdapter("out", MemoryConfig(), context)
    gateway = Gateway(
        gateway_id="bench",
        adapters={"in": inbound, "out": outbound},
        store=store,
        routing=RoutingTable([Route("xmpp.example.com", "in"), Route("example.net", "out")]),
        rules=Rules(rate=0),
        delivery=DeliveryPolicy(concurrency=512),
    )
    batch = envelopes(count, run)
    await gateway.start()
    await inbound.started()
    queue = iter(batch)
    thresholds = gc.get_threshold()
    if tune_gc:
        collect_less()

    async def sender() -> None:
        # One of ``concurrency`` senders, each waiting for its receipt before the next
        # (a semaphore would add an O(waiters) wake-up to whichever store suspends most).
        for envelope in queue:
            await inbound.inject(envelope)

    start = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    await outbound.wait_sent(count, within=600)
    elapsed = time.perf_counter() - start
    extra: dict[str, float] = {"cpu_us": (time.process_time() - cpu) / count * 1e6}
    if isinstance(store, SqliteStore):
        extra |= {"transactions": store.batches, "operations": store.operations}
    await gateway.stop()
    if tune_gc:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return elapsed, extra


def measure(
    name: str,
    factory: Callable[[Path], Store],
    count: int,
    concurrency: int,
    rnd: int,
    *,
    tune_gc: bool,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        elapsed, extra = asyncio.run(
            one_run(factory(Path(tmp)), count, concurrency, f"{name}-{rnd}", tune_gc=tune_gc)
        )
    gc.collect()  # what this variant left does not fall on the next one's collections
    return {"seconds": elapsed, "rate": count / elapsed, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=500, help="delivers in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gc",
        choices=("run", "default"),
        default="run",
        help="collector thresholds: as `cpimgw run` sets them, or the interpreter's",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    variants: dict[str, Callable[[Path], Store]] = {
        "memory (not durable)": lambda _: MemoryStore(),
        "sqlite synchronous=full": lambda d: SqliteStore(d / "q.db", synchronous="full"),
        "sqlite synchronous=normal": lambda d: SqliteStore(d / "q.db", synchronous="normal"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for rnd in range(args.rounds):
        for name, factory in variants.items():
            results[name].append(
                measure(
                    name,
                    factory,
                    args.messages,
                    args.concurrency,
                    rnd,
                    tune_gc=args.gc == "run",
                )
            )
    summary = {name: statistics.median(r["rate"] for r in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(r["cpu_us"] for r in runs) for name, runs in results.items()}
    baseline = summary["memory (not durable)"]
    durable = summary["sqlite synchronous=full"]
    if args.json:
        print(
            json.dumps(
                {
                    "messages": args.messages,
                    "gc": args.gc,
                    "rates": summary,
                    "cpu_us": cpu,
                    "ratio": durable / baseline,
                    "cpu_ratio": cpu["memory (not durable)"] / cpu["sqlite synchronous=full"],
                }
            )
        )
    else:
        print(
            f"{args.messages} messages, {args.concurrency} in flight, median of {args.rounds},"
            f" collector: {args.gc}"
        )
        for name, rate in summary.items():
            last = results[name][-1]
            txn = (
                f", {last['operations'] / last['transactions']:.1f} store operations per commit"
                if "transactions" in last
                else ""
            )
            print(
                f"  {name:<28} {rate:>9,.0f} msg/s  {cpu[name]:5.0f} µs CPU/msg"
                f"  ({rate / baseline:.2f}x of memory{txn})"
            )
        print(f"durable (full) / in-memory = {durable / baseline:.2f}  (target >= 0.5)")
        print(
            f"  by CPU per message (steadier on a shared machine):"
            f" {cpu['memory (not durable)'] / cpu['sqlite synchronous=full']:.2f}"
        )
        print(f"durable (full) = {durable:,.0f} msg/s  (target >= 5,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
