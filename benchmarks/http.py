"""HTTP adapter benchmark: messages per second through the API on loopback, against a
minimal aiohttp endpoint measured in the same run as the ceiling.

- **ceiling**: an aiohttp app whose handler reads the body and answers 202 with a small
  JSON object — the framework's own cost per request, nothing else;
- **API**: ``POST /v1/messages`` with a message/cpim body and a bearer token into a real
  gateway (core, SQLite store in WAL mode, the HTTP adapter), the other network being the
  in-memory adapter; each 202 comes only after the store write. The same run also
  reports how fast the messages were *delivered* (the core sent them on);
- **mapping only**: the pure request -> envelope mapping, to show where the time goes.

The load comes from a separate process (keep-alive connections, a fixed pool of
senders), so the server under test has the event loop to itself; both endpoints get the
same load. Run: ``python -m benchmarks.http [--messages N] [--senders N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from adapters.contract import AdapterContext
from adapters.cpim.adapter import ClientConfig, CpimHttpAdapter, CpimHttpConfig
from adapters.cpim.mapping import HttpMapper, HttpRequest
from adapters.cpim.token import digest
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import Origin
from gateway.core import DeliveryPolicy, Gateway
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store.sqlite import SqliteStore, Synchronous

TOKEN = "benchmark-token"
BODY = (
    b"From: Bench Bot <im:bot@bots.test>\r\nTo: <sip:carol@example.net>\r\n"
    b"DateTime: 2024-03-05T17:00:00Z\r\nSubject: benchmark\r\n\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, a message of ordinary length for the benchmark \xe2\x9c\x93"
)


# -- the load (runs in a child process) -------------------------------------------------


async def _load(url: str, messages: int, senders: int, api: bool) -> tuple[float, float]:
    headers = {"Content-Type": "message/cpim", "Authorization": f"Bearer {TOKEN}"}
    counter = iter(range(messages))
    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for n in counter:
                extra = {"Cpimgw-Id": f"bench-{time.time_ns()}-{n}"} if api else {}
                async with session.post(url, data=BODY, headers={**headers, **extra}) as r:
                    await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")

        began, start = time.time(), time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        return began, messages / (time.perf_counter() - start)


def load(url: str, messages: int, senders: int, *, api: bool) -> tuple[float, float]:
    """(wall-clock start, requests per second), measured by a child process."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.http", "--load", url, str(messages), str(senders),
         "api" if api else "echo"],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    began, rate = out.stdout.split()
    return float(began), float(rate)


# -- the servers -----------------------------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"id": str(len(body)), "state": "accepted"}, status=202)


async def ceiling(messages: int, senders: int) -> float:
    app = web.Application()
    app.router.add_post("/v1/messages", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        _, rate = await asyncio.to_thread(
            load, f"http://127.0.0.1:{port}/v1/messages", messages, senders, api=False
        )
        return rate
    finally:
        await runner.cleanup()


async def through_api(
    messages: int, senders: int, directory: Path, synchronous: Synchronous = "full"
) -> tuple[float, float]:
    """(accepted/s as the load saw it, delivered/s from the first request to the last send)."""
    path = directory / f"bench-{time.time_ns()}.db"
    context = AdapterContext(gateway_id="bench", logger=logging.getLogger("bench"))
    api = CpimHttpAdapter(
        "api",
        CpimHttpConfig(
            port=0,
            database=path,
            synchronous=synchronous,
            clients=[ClientConfig(name="bot", token_sha256=digest(TOKEN), send_as=["*@bots.test"])],
        ),
        context,
    )
    net = MemoryAdapter("net", MemoryConfig(), context)
    gateway = Gateway(
        gateway_id="bench",
        adapters={"api": api, "net": net},
        store=SqliteStore(path, synchronous=synchronous),
        routing=RoutingTable([Route("bots.test", "api"), Route("example.net", "net")]),
        rules=Rules(rate=0),
        delivery=DeliveryPolicy(concurrency=256),
        seen=SeenSet(window=0),
    )
    await gateway.start()
    try:
        for _ in range(1000):
            if api.ready():
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{api.port}/v1/messages"
        began, accepted = await asyncio.to_thread(load, url, messages, senders, api=True)
        await net.wait_sent(messages, within=120)
        delivered = messages / (time.time() - began)
        return accepted, delivered
    finally:
        await gateway.stop()


def mapping_rate(seconds: float = 1.0) -> float:
    mapper = HttpMapper(adapter="api")
    request = HttpRequest(
        "POST", "/v1/messages", (("Content-Type", "message/cpim"), ("Cpimgw-Id", "m-1")), BODY
    )
    origin = Origin("api", peer="bot")
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            mapper.read(request, origin=origin, received_at=1.0)
        n += 100
    return n / elapsed


async def main(messages: int, senders: int, rounds: int, synchronous: Synchronous) -> None:
    echo, accepted, delivered = [], [], []
    with tempfile.TemporaryDirectory(prefix="cpimgw-bench-") as tmp:
        for _ in range(rounds):
            echo.append(await ceiling(messages, senders))
            got, done = await through_api(messages, senders, Path(tmp), synchronous)
            accepted.append(got)
            delivered.append(done)
    mapped = mapping_rate()
    e, a, d = (statistics.median(x) for x in (echo, accepted, delivered))
    print(
        f"{messages} messages, {senders} senders, {rounds} rounds, synchronous={synchronous}"
        " (medians; the load comes from a child process)"
    )
    print(f"  aiohttp echo endpoint (ceiling)       {e:10,.0f} req/s   1.00")
    print(f"  API: 202 after the durable store write {a:10,.0f} msg/s   {a / e:.2f}")
    print(f"  API: delivered on by the core          {d:10,.0f} msg/s   {d / e:.2f}")
    print(f"  mapping only (request -> envelope)     {mapped:10,.0f} /s")
    print(json.dumps({"echo": echo, "accepted": accepted, "delivered": delivered}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _, _, target, count, pool, kind = sys.argv
        print(*asyncio.run(_load(target, int(count), int(pool), kind == "api")))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.senders, args.rounds, args.synchronous))
