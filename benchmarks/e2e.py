"""End-to-end benchmark: messages per second between XMPP and SIP users through cpimgw.

The deployment is the end-to-end tests' (``tests/e2e/stack.py``): Prosody, Kamailio on
``examples/kamailio.cfg`` and ``cpimgw run`` on a config rendered from
``examples/gateway.toml``, all on 127.0.0.1, with the durable SQLite store on
(``synchronous = "full"``, the default). Only the per-sender rate limit is off
(``[security] rate = 0``): the load comes from few senders.

Four paths, each measured in the same run so the ratios compare like with like:

- **XMPP -> SIP through cpimgw**: raw XMPP clients on Prosody write to ``sinkN@<component>``;
  the gateway sends each as a SIP MESSAGE through Kamailio to a SIPp UAS registered as
  every ``sinkN@sip.test``.
- **SIP -> XMPP through cpimgw**: a SIPp UAC sends text/plain MESSAGEs from many SIP users
  to ``userN@xmpp.test`` through Kamailio and the gateway to raw XMPP clients.
- **Prosody c2s -> c2s** (ceiling of the XMPP side): the same raw clients, no gateway.
- **SIPp -> Kamailio -> SIPp** (ceiling of the SIP side): the same UAC and UAS, no gateway.

Each message carries ``r=RUN seq=N t=SENT`` in its text; the receivers count every
arrival, so loss and duplicates are counted at the receivers, and latency is arrival time
minus the send time written in the message. A rate is *sustained* when, offered for
``--seconds``, every message arrives exactly once, the last one within ``--lag`` seconds
of the end of sending and at 90% of the offered rate or more (no backlog building up).
A step that fails is tried once more (the machine is shared). Rates are stepped up
until one is not sustained; then latency p50/p99 is measured at half the highest
sustained rate.

Run: ``python -m benchmarks.e2e [--seconds 5] [--paths all] [--profile FILE]``. It takes a
few minutes and loads both cores; it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import cpu
from gateway.demo.phone import SipPhone
from gateway.demo.servers import http_status
from tests.e2e.stack import COMPONENT, SIP_DOMAIN, XMPP_DOMAIN, Stack, stack
from tests.servers.process import ServerProcess, free_port, require_binary

SINKS = 100  # SIP users receiving (one SIPp UAS registered under each name)
SENDERS = 16  # XMPP users sending
RECEIVERS = 16  # XMPP users receiving
SIP_SENDERS = 100  # SIP users sending (From only; the UAC is one SIPp)
RATES = (
    100,
    200,
    300,
    400,
    500,
    750,
    1000,
    1500,
    2000,
    2500,
    3000,
    4000,
    5000,
    6000,
    8000,
    10000,
    12000,
    16000,
    20000,
)
MARK = re.compile(rb"r=(\d+) seq=(\d+) t=(\d+)\.0+\.(\d+)\.0+")
ENTRY = re.compile(
    rb"-{40,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(UDP|TCP) message (received|sent) "
    rb"[\[(](\d+)[\])] bytes ?:\n\n"
)


def stamp(now: float) -> str:
    """The send time as SIPp writes its ``gettimeofday`` doubles (seconds, microseconds)."""
    seconds = int(now)
    return f"{seconds}.000000.{int((now - seconds) * 1e6)}.000000"


# --------------------------------------------------------------------------- receivers


@dataclass
class Tally:
    """What the receivers of one run saw."""

    run: int
    counts: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    last_arrival: float = 0.0

    def add(self, seq: int, sent: float, arrived: float) -> None:
        self.counts[seq] += 1
        if self.counts[seq] == 1:
            self.latencies.append(arrived - sent)
        self.last_arrival = max(self.last_arrival, arrived)

    def feed(self, data: bytes, arrived: float) -> None:
        for match in MARK.finditer(data):
            if int(match.group(1)) == self.run:
                sent = int(match.group(3)) + int(match.group(4)) / 1e6
                self.add(int(match.group(2)), sent, arrived)

    @property
    def unique(self) -> int:
        return len(self.counts)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


class RawXmpp:
    """A minimal XMPP c2s client (RFC 6120 §4-7, SASL PLAIN over the loopback-only
    cleartext stream): far cheaper per stanza than a full library, so the load generator
    and the receivers leave the cores to the servers being measured."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.tally: Tally | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def _until(self, marker: bytes, buffer: bytearray) -> bytes:
        assert self.reader is not None
        while marker not in buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"{self.user}: stream closed during login: {bytes(buffer)!r}")
            buffer += chunk
        end = buffer.index(marker) + len(marker)
        head = bytes(buffer[:end])
        del buffer[:end]
        return head

    async def login(self, port: int) -> RawXmpp:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        header = (
            f"<?xml version='1.0'?><stream:stream to='{XMPP_DOMAIN}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ).encode()
        buffer = bytearray()
        self.writer.write(header)
        await self._until(b"</stream:features>", buffer)
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.writer.write(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            f"{token}</auth>".encode()
        )
        answer = await self._until(b"/>", buffer)
        if b"<success" not in answer:
            answer += await self._until(b">", buffer)
            if b"<success" not in answer:
                raise ConnectionError(f"{self.user}: login refused: {answer!r}")
        self.writer.write(header)
        await self._until(b"</stream:features>", buffer)
        self.writer.write(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>bench</resource></bind></iq>"
        )
        await self._until(b"</iq>", buffer)
        self.writer.write(b"<presence/>")
        await self.writer.drain()
        self._task = asyncio.create_task(self._read(bytes(buffer)))
        return self

    async def _read(self, pending: bytes) -> None:
        assert self.reader is not None
        buffer = pending
        while True:
            chunk = await self.reader.read(262144)
            if not chunk:
                return
            arrived = time.time()
            buffer += chunk
            cut = buffer.rfind(b"</message>")
            if cut < 0:
                continue
            cut += len(b"</message>")
            if self.tally is not None:
                self.tally.feed(buffer[:cut], arrived)
            buffer = buffer[cut:]

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(b"</stream:stream>")
                self.writer.close()


class SippTrace:
    """Reads a SIPp ``-trace_msg`` file as it grows: each received MESSAGE's arrival time
    (from the entry's timestamp) and body."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0

    def skip(self) -> None:
        self.position = self.path.stat().st_size if self.path.exists() else 0

    def read(self, tally: Tally) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.position)
            data = handle.read()
        done = 0
        for match in ENTRY.finditer(data):
            end = match.end() + int(match.group(4))
            if end > len(data):
                break
            if match.group(3) == b"received":
                body = data[match.end() : end]
                if body.startswith(b"MESSAGE "):
                    arrived = time.mktime(
                        time.strptime(match.group(1)[:19].decode(), "%Y-%m-%d %H:%M:%S")
                    ) + float(b"0" + match.group(1)[19:])
                    tally.feed(body, arrived)
            done = end
        self.position += done


# --------------------------------------------------------------------------- SIP side


UAC = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="bench uac">
  <nop><action><gettimeofday assign_to="s,us"/></action></nop>
  <send retrans="500"><![CDATA[
MESSAGE sip:[field0]@[dest_domain] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[field1]@sip.test>;tag=[pid]b[call_number]
To: <sip:[field0]@[dest_domain]>
Call-ID: [call_id]
CSeq: 1 MESSAGE
Max-Forwards: 70
Content-Type: text/plain;charset=UTF-8
Content-Length: [len]

r=[run] seq=[call_number] t=[$s].[$us] Grüße ✓
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" optional="true" next="done"/>
  <recv response="202"/>
  <label id="done"/>
</scenario>
"""

UAS = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="bench uas">
  <recv request="MESSAGE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]s[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

  ]]></send>
</scenario>
"""


@dataclass
class Bench:
    stack: Stack
    folder: Path
    seconds: float
    lag: float
    senders: list[RawXmpp] = field(default_factory=list)
    receivers: list[RawXmpp] = field(default_factory=list)
    uas: ServerProcess | None = None
    uas_trace: SippTrace | None = None
    run_number: int = 0

    async def setup(self) -> None:
        port = free_port("udp")
        trace = self.folder / "uas.msg.log"
        (self.folder / "uas.xml").write_text(UAS)
        (self.folder / "uac.xml").write_text(UAC)
        self.uas = ServerProcess(
            "uas",
            [
                require_binary("sipp", "sip-tester"),
                "-sf", str(self.folder / "uas.xml"), "-i", "127.0.0.1", "-p", str(port),
                "-ci", "127.0.0.1", "-mi", "127.0.0.1",
                "-t", "u1", "-nostdin", "-trace_msg", "-message_file", str(trace),
                "-max_recv_loops", "10000", "-max_sched_loops", "10000",
            ],
            workdir=self.folder,
            ready=lambda _p: _udp_taken(port),
        ).start()  # fmt: skip
        self.uas_trace = SippTrace(trace)
        # every sink name is registered at the one UAS (Kamailio's location table)
        async with SipPhone("registrar", SIP_DOMAIN, ("127.0.0.1", self.stack.kamailio_port)) as ua:
            for i in range(SINKS):
                answer = await ua.bind(f"sink{i}", f"<sip:sink{i}@127.0.0.1:{port}>", expires=3600)
                if answer.status != 200:
                    raise RuntimeError(f"REGISTER sink{i}: {answer.status}")
        for i in range(SENDERS):
            self.senders.append(await RawXmpp(f"sender{i}", "pw").login(self.stack.c2s_port))
        for i in range(RECEIVERS):
            self.receivers.append(await RawXmpp(f"user{i}", "pw").login(self.stack.c2s_port))

    async def close(self) -> None:
        for client in self.senders + self.receivers:
            await client.close()
        if self.uas is not None:
            self.uas.stop()

    # ------------------------------------------------------------------ one run

    async def _pace(self, rate: float, count: int, emit: Callable[[int, float], None]) -> float:
        """Call ``emit(seq, now)`` ``count`` times at ``rate``/s; returns when the last
        was emitted."""
        start = time.monotonic()
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            now = time.time()
            while sent < due:
                sent += 1
                emit(sent, now)
            await asyncio.sleep(0.002)
        return time.time()

    async def _await(self, tally: Tally, count: int, poll: Callable[[], None]) -> None:
        """Wait until every message arrived, or nothing new came for a while."""
        last, quiet = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while tally.unique < count and time.monotonic() < deadline:
            poll()
            if tally.unique != last:
                last, quiet = tally.unique, time.monotonic()
            elif time.monotonic() - quiet > max(5.0, self.lag * 2):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5 if tally.unique >= count else 0)
        poll()  # late duplicates

    async def xmpp_to_sip(self, rate: float, *, direct: bool = False) -> Outcome:
        """Raw XMPP senders -> (cpimgw ->) SIP sinks; ``direct``: XMPP receivers instead
        (Prosody c2s -> c2s, the XMPP ceiling)."""
        self.run_number += 1
        run, count = self.run_number, max(1, int(rate * self.seconds))
        tally = Tally(run)
        writers = self.senders
        if direct:
            for r in self.receivers:
                r.tally = tally
        else:
            assert self.uas_trace is not None
            self.uas_trace.skip()

        def emit(seq: int, now: float) -> None:
            if direct:
                to = f"user{seq % RECEIVERS}@{XMPP_DOMAIN}"
            else:
                to = f"sink{seq % SINKS}@{COMPONENT}"
            writers[seq % len(writers)].send(
                f"<message to='{to}' type='chat' id='b{run}-{seq}'><body>r={run} seq={seq} "
                f"t={stamp(now)} Grüße ✓</body></message>".encode()
            )

        began = time.time()
        ended = await self._pace(rate, count, emit)
        trace = self.uas_trace

        def poll() -> None:
            if not direct and trace is not None:
                trace.read(tally)

        await self._await(tally, count, poll)
        for r in self.receivers:
            r.tally = None
        return Outcome(rate, count, tally, began, ended, self.lag)

    async def sip_to_xmpp(self, rate: float, *, direct: bool = False) -> Outcome:
        """SIPp UAC -> Kamailio -> (cpimgw -> XMPP receivers); ``direct``: SIP sinks
        instead (SIPp -> Kamailio -> SIPp, the SIP ceiling)."""
        self.run_number += 1
        run, count = self.run_number, max(1, int(rate * self.seconds))
        tally = Tally(run)
        users = self.folder / f"users-{run}.csv"
        if direct:
            rows = [f"sink{i % SINKS};bob{i % SIP_SENDERS}" for i in range(SINKS * 4)]
            domain = SIP_DOMAIN
            assert self.uas_trace is not None
            self.uas_trace.skip()
        else:
            rows = [f"user{i % RECEIVERS};bob{i % SIP_SENDERS}" for i in range(RECEIVERS * 25)]
            domain = XMPP_DOMAIN
            for r in self.receivers:
                r.tally = tally
        users.write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n")
        argv = [
            require_binary("sipp", "sip-tester"),
            f"127.0.0.1:{self.stack.kamailio_port}",
            "-sf", str(self.folder / "uac.xml"), "-inf", str(users),
            "-i", "127.0.0.1", "-ci", "127.0.0.1", "-mi", "127.0.0.1",
            "-p", str(free_port("udp")), "-t", "u1", "-nostdin",
            "-key", "dest_domain", domain, "-key", "run", str(run),
            "-r", str(int(rate)), "-rp", "1000", "-m", str(count), "-l", str(max(200, int(rate))),
            "-timeout", f"{self.seconds + 60}s", "-timeout_error",
            "-max_recv_loops", "10000", "-max_sched_loops", "10000",
            "-trace_stat", "-stf", str(self.folder / f"uac-{run}.csv"),
            "-trace_err", "-error_file", str(self.folder / f"uac-{run}.errors.log"),
        ]  # fmt: skip
        began = time.time()
        uac = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.folder,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        # the UAC ends when every MESSAGE got its final response; sending took `seconds`
        ended = began + count / rate
        trace = self.uas_trace

        def poll() -> None:
            if direct and trace is not None:
                trace.read(tally)

        await self._await(tally, count, poll)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(uac.wait(), 30)
        if uac.returncode is None:
            uac.kill()
            await uac.wait()
        for r in self.receivers:
            r.tally = None
        outcome = Outcome(rate, count, tally, began, ended, self.lag)
        outcome.sender_failures = _failed_calls(self.folder / f"uac-{run}.csv")
        return outcome


def _udp_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _failed_calls(stats: Path) -> int:
    """FailedCall(C) from the last line of a SIPp ``-trace_stat`` file (0 if unreadable)."""
    try:
        lines = [line for line in stats.read_text().splitlines() if line.strip()]
        head, last = lines[0].split(";"), lines[-1].split(";")
        return int(last[head.index("FailedCall(C)")])
    except (OSError, ValueError, IndexError):
        return -1


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time so far of the process's main thread, the event loop's;
    the rest of :func:`cpu_seconds` is the other threads' (above all the SQLite store's
    commit thread: the WAL write and its fsync)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Outcome:
    rate: float
    count: int
    tally: Tally
    began: float
    ended: float
    lag_allowed: float
    sender_failures: int = 0
    gateway_cpu: float = 0.0  # CPU seconds the gateway used during the run
    loop_cpu: float = 0.0  # of which its event loop's thread
    #: µs of CPU per delivered message of each part of the deployment (benchmarks.cpu)
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.count - self.tally.unique

    @property
    def lag(self) -> float:
        """How long after the end of sending the last message arrived."""
        return max(0.0, self.tally.last_arrival - self.ended)

    @property
    def sustained(self) -> bool:
        """Every message exactly once, delivered at (nearly) the offered rate: the last
        one within ``--lag`` of the end of sending and at least 90% of the rate overall."""
        return (
            self.lost == 0
            and self.tally.duplicates == 0
            and self.lag <= self.lag_allowed
            and self.delivered_rate >= 0.9 * self.rate
        )

    @property
    def delivered_rate(self) -> float:
        span = max(self.tally.last_arrival, self.ended) - self.began
        return self.tally.unique / span if span > 0 else 0.0

    def percentile(self, q: float) -> float:
        values = sorted(self.tally.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def line(self) -> str:
        return (
            f"offered {self.rate:>7,.0f}/s  sent {self.count:>7,}  received {self.tally.unique:>7,}"
            f"  lost {self.lost:>6,}  dup {self.tally.duplicates:>4}  lag {self.lag:5.1f}s  "
            f"delivered {self.delivered_rate:>7,.0f}/s  p50 {self.percentile(0.5) * 1000:7.1f}ms"
            f"  p99 {self.percentile(0.99) * 1000:7.1f}ms"
            + (f"  sender failures {self.sender_failures}" if self.sender_failures else "")
            + (
                f"  gateway CPU {self.gateway_cpu / max(self.tally.unique, 1) * 1e6:.0f} µs/msg"
                f" (loop {self.loop_cpu / max(self.tally.unique, 1) * 1e6:.0f})"
                if self.gateway_cpu
                else ""
            )
            + ("  ok" if self.sustained else "  NOT SUSTAINED")
            + (f"\n      {cpu.line(self.costs, os.cpu_count() or 1)}" if self.costs else "")
        )


@dataclass
class PathResult:
    name: str
    best: Outcome | None
    half: Outcome | None
    steps: list[Outcome]


async def timed(run: Callable[[float], Awaitable[Outcome]], rate: float) -> Outcome:
    """One step of ``run`` at ``rate`` with the CPU it cost: the gateway's (all threads,
    and its loop thread's) and each part's of the deployment per message."""
    groups = parts()
    before = cpu_seconds(gateway_pid())
    before_loop = loop_cpu_seconds(gateway_pid())
    before_parts = cpu.snapshot(groups)
    outcome = await run(rate)
    outcome.costs = cpu.per_message(before_parts, cpu.snapshot(groups), outcome.tally.unique)
    outcome.gateway_cpu = cpu_seconds(gateway_pid()) - before if gateway_pid() else 0.0
    outcome.loop_cpu = loop_cpu_seconds(gateway_pid()) - before_loop
    return outcome


async def measure(
    name: str, run: Callable[[float], Awaitable[Outcome]], rates: Sequence[int], *, retries: int = 1
) -> PathResult:
    """Step the offered rate up until it is not sustained (a failing step is tried again
    ``retries`` times: the machine is shared); then latency at half the best rate."""
    print(f"\n{name}", flush=True)
    steps: list[Outcome] = []
    best: Outcome | None = None
    for rate in rates:
        outcome: Outcome | None = None
        for _ in range(retries + 1):
            outcome = await timed(run, rate)
            steps.append(outcome)
            print("  " + outcome.line(), flush=True)
            if outcome.sustained:
                break
        assert outcome is not None
        if not outcome.sustained:
            break
        best = outcome
    half = None
    if best is not None:
        half = await timed(run, best.rate / 2)
        print("  at half the best rate: " + half.line(), flush=True)
    return PathResult(name, best, half, steps)


#: ``cpimgw run`` under cProfile timed by the main thread's CPU clock (time.thread_time),
#: so a shared, loaded machine does not bill waiting to the function that waited; the
#: store's commit thread is not in this profile (its CPU is the process total minus it).
PROFILED = """
import cProfile, signal, sys, time
from gateway.cli import main
out, config = sys.argv[1], sys.argv[2]
profile = cProfile.Profile(time.thread_time)
profile.enable()
try:
    main(["run", "-c", config])
finally:
    profile.disable()
    profile.dump_stats(out)
"""

_GATEWAY: list[int] = []
#: Process groups of each part of the deployment but the gateway (set up by main_async).
_PARTS: dict[str, frozenset[int]] = {}


def parts() -> dict[str, frozenset[int]]:
    """Process groups per part for :mod:`benchmarks.cpu` (every server runs in a session
    of its own): the gateway while a path through it is measured, and the others."""
    pid = gateway_pid()
    return {**({"cpimgw": frozenset({pid})} if pid else {}), **_PARTS}


def gateway_pid() -> int | None:
    """The gateway's PID while a path through it is measured (None for the ceilings)."""
    return _GATEWAY[0] if _GATEWAY else None


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load[0]:.1f} at the start"
    )


def report(results: list[PathResult]) -> None:
    by_name = {r.name: r for r in results}
    print(
        "\n| path | sustained, 0 loss | delivered | p50 / p99 at half rate | ratio to ceiling "
        "| CPU per message of the whole deployment at that rate, and what the cores carry |"
    )
    print("|---|---|---|---|---|---|")
    ceilings = {
        "XMPP -> SIP through cpimgw": "SIPp -> Kamailio -> SIPp",
        "SIP -> XMPP through cpimgw": "Prosody c2s -> c2s",
    }
    for result in results:
        best = result.best
        sustained = f"{best.rate:,.0f} msg/s" if best else "below the first step"
        delivered = f"{best.delivered_rate:,.0f} msg/s" if best else "-"
        half = result.half
        latency = (
            f"{half.percentile(0.5) * 1000:.1f} / {half.percentile(0.99) * 1000:.1f} ms"
            if half
            else "-"
        )
        ratio = "-"
        ceiling_name = ceilings.get(result.name)
        if ceiling_name and best:
            ratios = []
            for other in (ceiling_name, *(c for c in ceilings.values() if c != ceiling_name)):
                ceiling = by_name.get(other)
                if ceiling and ceiling.best:
                    ratios.append(f"{best.rate / ceiling.best.rate:.2f} of {other}")
            ratio = "; ".join(ratios) or "-"
        budget = "-"
        if best and best.costs:
            cores = os.cpu_count() or 1
            budget = (
                f"{sum(best.costs.values()):.0f} µs -> {cpu.capacity(best.costs, cores):,.0f}/s"
            )
        print(f"| {result.name} | {sustained} | {delivered} | {latency} | {ratio} | {budget} |")


async def main_async(options: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C: the servers are stopped on the way out
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="cpimgw-bench-e2e-"))
    users = {f"sender{i}": "pw" for i in range(SENDERS)} | {
        f"user{i}": "pw" for i in range(RECEIVERS)
    }
    extra = {"security.rate": 0, "logging.level": options.log_level}
    if options.synchronous:
        extra["store.synchronous"] = options.synchronous
    if options.event_loop:
        extra["gateway.event_loop"] = options.event_loop
    extra.update(options.set)
    rates = (
        [int(r) for r in options.rates.split(",")]
        if options.rates
        else [r for r in RATES if r >= options.start]
    )
    with stack(
        folder,
        extra=extra,
        users=users,
        kamailio_shm_mb=1024,
        kamailio_children=options.children,
        sip_transport=options.sip_transport,
    ) as running:
        if options.profile:
            running.stop_gateway()
            assert running.gateway is not None
            running.gateway.process = ServerProcess(
                "cpimgw",
                [
                    sys.executable, "-c", PROFILED, options.profile, str(running.config),
                ],
                workdir=running.workdir,
                ready=lambda _p: _ready(running.metrics_port),
                ready_timeout=30,
            ).start()  # fmt: skip
        bench = Bench(running, folder, options.seconds, options.lag)
        await bench.setup()
        assert bench.uas is not None
        assert running.prosody.process is not None
        _PARTS.update(
            {
                "Prosody": frozenset({running.prosody.process.pid}),
                "Kamailio": frozenset({running.kamailio.process.pid}),
                "SIPp UAS": frozenset({bench.uas.pid}),
            }
        )
        results = []
        try:
            paths = options.paths.split(",")
            if "xmpp-direct" in paths or "all" in paths:
                results.append(
                    await measure(
                        "Prosody c2s -> c2s", lambda r: bench.xmpp_to_sip(r, direct=True), rates
                    )
                )
            if "sip-direct" in paths or "all" in paths:
                results.append(
                    await measure(
                        "SIPp -> Kamailio -> SIPp",
                        lambda r: bench.sip_to_xmpp(r, direct=True),
                        rates,
                    )
                )
            assert running.gateway is not None
            _GATEWAY.append(running.gateway.pid)
            if "xmpp-sip" in paths or "all" in paths:
                with sampled(options.py_spy, "xmpp-sip", running.gateway.pid, gil=options.gil):
                    results.append(
                        await measure("XMPP -> SIP through cpimgw", bench.xmpp_to_sip, rates)
                    )
            if "sip-xmpp" in paths or "all" in paths:
                with sampled(options.py_spy, "sip-xmpp", running.gateway.pid, gil=options.gil):
                    results.append(
                        await measure("SIP -> XMPP through cpimgw", bench.sip_to_xmpp, rates)
                    )
        finally:
            await bench.close()
            if options.profile:
                running.stop_gateway()  # SIGTERM: cProfile writes its file on exit
    report(results)
    print(f"\nscratch folder (logs, traces): {folder}")
    return 0


@contextlib.contextmanager
def sampled(prefix: str | None, name: str, pid: int, *, gil: bool = False) -> Iterator[None]:
    """py-spy samples the gateway (CPU only, idle excluded; with ``gil`` only the thread
    holding the interpreter lock, i.e. Python's own CPU) while the block runs; the
    collapsed stacks go to ``PREFIX-NAME.txt``."""
    if prefix is None:
        yield
        return
    out = f"{prefix}-{name}.txt"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
            "--format", "raw", "--rate", "250", "--nonblocking", "-o", out,
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
        print(f"  py-spy samples of the gateway: {out}", flush=True)


def _ready(port: int) -> bool:
    return http_status(port, "/readyz") == 200


def config_value(text: str) -> tuple[str, str | int | float | bool]:
    """``TABLE.KEY=VALUE`` of ``--set``: the dotted key and the TOML scalar it names."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{text!r}: give TABLE.KEY=VALUE")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not a TOML value ({exc})") from exc
    if not isinstance(parsed, str | int | float | bool):
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a string, number or boolean")
    return key.strip(), parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="sending time per step")
    parser.add_argument("--lag", type=float, default=1.0, help="allowed backlog, seconds")
    parser.add_argument("--start", type=int, default=100, help="first offered rate")
    parser.add_argument(
        "--rates", default=None, help="comma list of offered rates instead of the steps"
    )
    parser.add_argument(
        "--paths",
        default="all",
        help="comma list of xmpp-direct, sip-direct, xmpp-sip, sip-xmpp (default all)",
    )
    parser.add_argument("--log-level", default="info", help="the gateway's [logging] level")
    parser.add_argument("--synchronous", choices=("full", "normal"), default=None)
    parser.add_argument(
        "--event-loop", choices=("auto", "asyncio", "uvloop"), default=None, help="the gateway's"
    )
    parser.add_argument("--children", type=int, default=None, help="Kamailio UDP workers")
    parser.add_argument("--profile", default=None, help="run the gateway under cProfile")
    parser.add_argument(
        "--py-spy", default=None, metavar="PREFIX", help="sample the gateway with py-spy"
    )
    parser.add_argument(
        "--sip-transport",
        choices=["udp", "tcp"],
        default="udp",
        help="SIP between the gateway and Kamailio (the example's is UDP)",
    )
    parser.add_argument("--gil", action="store_true", help="py-spy: only samples holding the GIL")
    parser.add_argument(
        "--set",
        action="append",
        type=config_value,
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="a gateway config value, VALUE in TOML (e.g. adapters.sip.overload_delay=0.3)",
    )
    options = parser.parse_args(argv)
    try:
        return asyncio.run(main_async(options))
    except asyncio.CancelledError:  # SIGTERM: the servers were stopped on the way out
        print("stopped by SIGTERM; every server it started is stopped", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
