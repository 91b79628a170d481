"""SIPp (Debian ``sip-tester``) as real SIP user agents in the tests.

A UAC runs to completion (:func:`run_sipp`); a UAS runs in the background as a
:class:`ServerProcess` (:func:`sipp_uas`), ready once its UDP port is bound. Every run
writes SIPp's message trace (``-trace_msg``), which :func:`trace_messages` reads back
into exact bytes (SIPp prints each message's length, so bodies are cut by count, not by
guessing line ends). Scenarios live in ``tests/servers/sipp/``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, require_binary

SCENARIOS = Path(__file__).resolve().parent / "sipp"
_ENTRY = re.compile(
    rb"-{40,} [^\n]*\n(UDP|TCP|TLS) message (received|sent) [\[(](\d+)[\])] bytes ?:\n\n"
)


@dataclass(frozen=True)
class TracedMessage:
    direction: str  # "received" or "sent"
    transport: str
    data: bytes


def trace_messages(path: Path) -> list[TracedMessage]:
    """Every message in a SIPp ``-message_file`` trace, with its exact bytes."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    out: list[TracedMessage] = []
    for match in _ENTRY.finditer(raw):
        length = int(match.group(3))
        start = match.end()
        out.append(
            TracedMessage(
                match.group(2).decode(), match.group(1).decode(), raw[start : start + length]
            )
        )
    return out


@dataclass
class SippRun:
    returncode: int
    output: str
    trace: Path

    @property
    def messages(self) -> list[TracedMessage]:
        return trace_messages(self.trace)

    def received(self) -> list[bytes]:
        return [m.data for m in self.messages if m.direction == "received"]


def _argv(
    scenario: str,
    workdir: Path,
    name: str,
    *,
    remote: str | None,
    port: int,
    transport: str,
    service: str | None,
    keys: Mapping[str, str],
    calls: int | None,
    rate: float | None,
    timeout: float,
    extra: Sequence[str],
) -> list[str]:
    binary = require_binary("sipp", "sip-tester")
    argv = [binary]
    if remote is not None:
        argv.append(remote)
    argv += [
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        "127.0.0.1",
        # SIPp's control socket binds 0.0.0.0 and its media socket the host's primary
        # address unless told otherwise: loopback only
        "-ci",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        {"UDP": "u1", "TCP": "t1", "TLS": "l1"}[transport.upper()],
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(workdir / f"{name}.msg.log"),
        "-trace_err",
        "-error_file",
        str(workdir / f"{name}.err.log"),
        "-timeout",
        f"{timeout}s",
        "-timeout_error",
    ]
    if service is not None:
        argv += ["-s", service]
    for key, value in keys.items():
        argv += ["-key", key, value]
    if calls is not None:
        argv += ["-m", str(calls)]
    if rate is not None:
        argv += ["-r", str(rate)]
    return argv + list(extra)


def run_sipp(
    scenario: str,
    workdir: Path,
    *,
    remote: str,
    name: str = "uac",
    port: int | None = None,
    transport: str = "UDP",
    service: str | None = None,
    keys: Mapping[str, str] | None = None,
    calls: int = 1,
    rate: float | None = None,
    timeout: float = 15.0,
    extra: Sequence[str] = (),
) -> SippRun:
    """Run a UAC scenario to completion against ``remote`` (``host:port``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = _argv(
        scenario,
        workdir,
        name,
        remote=remote,
        port=port or free_port("udp"),
        transport=transport,
        service=service,
        keys=keys or {},
        calls=calls,
        rate=rate,
        timeout=timeout,
        extra=extra,
    )
    done = subprocess.run(argv, cwd=workdir, capture_output=True, timeout=timeout + 30, check=False)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    err = workdir / f"{name}.err.log"
    if err.exists():
        output += "\n" + err.read_text("utf-8", "replace")[-4000:]
    return SippRun(done.returncode, output, workdir / f"{name}.msg.log")


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class SippUas:
    process: ServerProcess
    port: int
    trace: Path

    @property
    def messages(self) -> list[TracedMessage]:
        return trace_messages(self.trace)

    def received(self) -> list[bytes]:
        return [m.data for m in self.messages if m.direction == "received"]


@contextlib.contextmanager
def sipp_uas(
    scenario: str,
    workdir: Path,
    *,
    name: str = "uas",
    port: int | None = None,
    remote: str | None = None,
    keys: Mapping[str, str] | None = None,
    calls: int | None = None,
    timeout: float = 60.0,
    extra: Sequence[str] = (),
) -> Iterator[SippUas]:
    """A background SIPp UAS on 127.0.0.1:``port`` (UDP), stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port("udp")
    argv = _argv(
        scenario,
        workdir,
        name,
        remote=remote,
        port=port,
        transport="UDP",
        service=None,
        keys=keys or {},
        calls=calls,
        rate=None,
        timeout=timeout,
        extra=extra,
    )
    process = ServerProcess(name, argv, workdir=workdir, ready=lambda _p: udp_port_taken(port))
    process.start()
    try:
        yield SippUas(process, port, workdir / f"{name}.msg.log")
    finally:
        process.stop()
