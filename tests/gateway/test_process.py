"""``cpimgw run`` as a real process, with the testnet plugin (tests/plugins/cpimgw-testnet)
on loopback: health and metrics, SIGHUP reload, SIGTERM drain, and kill -9 mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of, to_record
from gateway.demo.servers import gateway
from gateway.store import EntryState
from gateway.store.sqlite import SqliteStore
from tests.gateway.samples import cpim_body
from tests.servers.process import ServerProcess, free_port

pytest.importorskip("cpimgw_testnet", reason="pip install -e tests/plugins/cpimgw-testnet")
from cpimgw_testnet import frame, read_frame


def config_text(*, store: Path, inbound: int, sink: int, metrics: int, extra: str = "") -> str:
    return f"""
[gateway]
id = "gw-proc"

[store]
path = "{store}"
poll_interval = "200ms"

[delivery]
initial_backoff = "50ms"
max_backoff = "500ms"
concurrency = 32
drain_timeout = "5s"

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
level = "warning"
format = "json"
{extra}"""


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Sink:
    """The receiving network: acks every envelope, counts what arrives and when."""

    port: int
    received: list[str] = field(default_factory=list)
    phase: dict[str, int] = field(default_factory=dict)  # identity -> phase first seen
    current: int = 1
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while (request := await read_frame(reader)) is not None:
                    identity = request["envelope"]["identity"]
                    self.received.append(identity)
                    self.phase.setdefault(identity, self.current)
                    self.arrived.set()
                    writer.write(frame({"seq": request["seq"], "ok": True}))
                    await writer.drain()
            writer.close()
        finally:
            self.connections -= 1

    async def drained(self) -> None:
        """Wait until every connection ended (what a dead sender wrote has been read)."""
        for _ in range(1000):
            if self.connections == 0:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("the sink's connections did not end")


@contextlib.asynccontextmanager
async def sink_server() -> AsyncIterator[Sink]:
    sink = Sink(port=free_port())
    server = await asyncio.start_server(sink.handle, "127.0.0.1", sink.port)
    try:
        yield sink
    finally:
        server.close()


@dataclass
class Running:
    """A ready ``cpimgw run`` on :func:`config_text`: clients send to ``inbound``, it
    delivers to ``sink``; ``config`` is its file, holding ``text``."""

    proc: ServerProcess
    sink: Sink
    inbound: int
    metrics: int
    config: Path
    text: str


@contextlib.asynccontextmanager
async def running_gateway(workdir: Path) -> AsyncIterator[Running]:
    """``cpimgw run`` with :func:`config_text` in ``workdir`` (``gw.toml``, store ``q.db``)
    and its sink, started and ready; stopped at the end whatever happened."""
    inbound, metrics = free_port(), free_port()
    async with sink_server() as sink:
        config = workdir / "gw.toml"
        text = config_text(store=workdir / "q.db", inbound=inbound, sink=sink.port, metrics=metrics)
        config.write_text(text)
        proc = gateway(workdir, config, metrics_port=metrics)
        await asyncio.to_thread(proc.start)
        try:
            yield Running(proc, sink, inbound, metrics, config, text)
        finally:
            await asyncio.to_thread(proc.stop)


def envelope(i: int) -> Envelope:
    sender, recipient = f"im:user{i % 7}@src.test", f"im:peer{i % 5}@dst.test"
    return Envelope(
        operation=Operation.MESSAGE,
        sender=sender,
        recipient=recipient,
        payload=Payload(CPIM, cpim_body(sender, recipient, f"message {i}")),
        identity=identity_of("kill-test", str(i)),
        origin=Origin(adapter="client"),
    )


class Client:
    """Streams envelopes into the gateway with a window of unanswered requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: set[str] = set()
        self.refused: dict[str, str] = {}

    async def stream(
        self, indexes: list[int], *, window: int, stop_after: int | None = None
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        pending: dict[int, str] = {}
        sent = 0
        try:
            while sent < len(indexes) or pending:
                while sent < len(indexes) and len(pending) < window:
                    i = indexes[sent]
                    pending[i] = envelope(i).identity
                    writer.write(frame({"seq": i, "envelope": to_record(envelope(i))}))
                    sent += 1
                await writer.drain()
                answer = await read_frame(reader)
                if answer is None:
                    return
                identity = pending.pop(int(answer["seq"]))
                if answer["ok"]:
                    self.acked.add(identity)
                else:
                    self.refused[identity] = answer["message"]
                if stop_after is not None and len(self.acked) >= stop_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the gateway died under us: what was not acked is resent
        finally:
            writer.close()


async def test_run_serves_health_metrics_reloads_on_sighup_and_drains_on_sigterm(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path) as gw:
        proc, sink, inbound, metrics = gw.proc, gw.sink, gw.inbound, gw.metrics
        assert await asyncio.to_thread(get, metrics, "/healthz") == (200, "ok\n")
        status, body = await asyncio.to_thread(get, metrics, "/readyz")
        assert status == 200
        assert json.loads(body)["components"]["store"] is True
        client = Client(inbound)
        await client.stream(list(range(10)), window=5)
        assert len(client.acked) == 10
        for _ in range(500):
            if len(set(sink.received)) == 10:
                break
            await asyncio.sleep(0.01)
        wanted = 'cpimgw_messages_out_total{adapter="out",operation="message"} 10.0'
        for _ in range(500):  # counted once the sink's ack is read, after it has the 10th
            status, text_metrics = await asyncio.to_thread(get, metrics, "/metrics")
            if wanted in text_metrics:
                break
            await asyncio.sleep(0.01)
        assert 'cpimgw_messages_in_total{adapter="in",operation="message"} 10.0' in text_metrics
        assert wanted in text_metrics
        assert "cpimgw_delivery_latency_seconds_bucket" in text_metrics
        # an unknown domain is refused, then routed after SIGHUP, on the same connection
        env = envelope(99).replace(recipient="im:x@new.test")
        reader, writer = await asyncio.open_connection("127.0.0.1", inbound)
        writer.write(frame({"seq": 1, "envelope": to_record(env)}))
        refused = await read_frame(reader)
        assert refused is not None
        assert refused["reason"] == "unknown-destination"
        gw.config.write_text(gw.text + '\n[[routes]]\nmatch = "new.test"\nadapter = "out"\n')
        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        for attempt in range(100):
            writer.write(frame({"seq": 2 + attempt, "envelope": to_record(env)}))
            answer = await read_frame(reader)
            if answer is not None and answer["ok"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"SIGHUP did not add the route:\n{proc.log()}")
        writer.close()
        proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await asyncio.to_thread(proc.proc.wait, 15)  # type: ignore[union-attr]
        assert code == 0, proc.log()


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_no_acknowledged_message(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    total, kill_at = 1000, 400
    async with running_gateway(tmp_path) as gw:
        proc, sink = gw.proc, gw.sink
        client = Client(gw.inbound)
        await client.stream(list(range(total)), window=50, stop_after=kill_at)
        proc.kill()  # SIGKILL to the whole process group, mid-stream
        acked_before_kill = set(client.acked)
        await sink.drained()
        sink.current = 2
        # what the store still held as undelivered at the kill: the messages in flight
        held = SqliteStore(tmp_path / "q.db", serve=False)
        await held.open()
        in_flight = {e.envelope.identity for e in await held.entries(EntryState.PENDING, 10_000)}
        await held.close()
        await asyncio.to_thread(proc.start)
        unacked = [i for i in range(total) if envelope(i).identity not in client.acked]
        await client.stream(unacked, window=50)
        wanted = {envelope(i).identity for i in range(total)}
        deadline = time.monotonic() + 60
        while not wanted <= set(sink.received) and time.monotonic() < deadline:
            sink.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.arrived.wait(), 1.0)
    counts = Counter(sink.received)
    duplicates = {i: n for i, n in counts.items() if n > 1}
    record_property("acked_before_kill", len(acked_before_kill))
    record_property("received", len(sink.received))
    record_property("duplicates", len(duplicates))
    record_property("in_flight_at_kill", len(in_flight))
    print(
        f"kill -9 after {len(acked_before_kill)} acks: {len(in_flight)} stored but not yet"
        f" recorded as delivered; {len(set(sink.received))} unique of {total} at the"
        f" receiver, {len(duplicates)} duplicated"
    )
    assert client.refused == {}
    assert client.acked == wanted, "every message was acknowledged in the end"
    missing = wanted - set(sink.received)
    assert not missing, f"{len(missing)} acknowledged messages lost:\n{proc.log()}"
    # a duplicate is a message the receiver had before the kill and the gateway sent
    # again because its delivery was not yet recorded on disk: in flight at the kill.
    # Everything the store had recorded as delivered arrived exactly once.
    assert all(sink.phase[i] == 1 for i in duplicates)
    assert set(duplicates) <= in_flight, "only messages in flight at the kill repeat"
    assert all(n == 2 for n in duplicates.values())


def test_run_refuses_a_busy_metrics_port_with_the_key_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.toml"
        config.write_text(
            config_text(
                store=tmp_path / "q.db", inbound=free_port(), sink=free_port(), metrics=port
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in done.stderr
