"""Real servers as child processes: started in the foreground, ready when a probe says so,
always stopped by PID.

The demo (``cpimgw demo``, from the installed package) and the test suite
(``tests/servers/process.py`` re-exports this) run Prosody, Kamailio, SIPp, Redis and
``cpimgw run`` the same way: each in its own session (so its whole process group can be
signalled), logging to a file the caller can show, listening on 127.0.0.1 only, and
stopped with SIGTERM, then SIGKILL for the group, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A server could not be started; the message ends with the end of its log."""


class ServiceTimeoutError(ServiceError, TimeoutError):
    """A server did not become ready in time."""


def which(name: str) -> str | None:
    """The path of the program ``name`` (also looked for in /usr/sbin and /usr/bin)."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


def find_binary(name: str, package: str) -> str:
    """The path of ``name``, or a ServiceError naming the Debian package to install."""
    found = which(name)
    if found is None:
        raise ServiceError(f"{name} is not installed: apt-get install {package} (make demo does)")
    return found


#: Ports already handed out by :func:`free_port` in this process (never twice).
_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (outgoing connections, bind to 0)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        return (32768, 60999)
    return (low, high)


def _bindable(port: int, kind: str) -> bool:
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if kind == "udp" else [])
    for sock_type in kinds:
        try:
            with socket.socket(socket.AF_INET, sock_type) as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(kind: str = "tcp") -> int:
    """A port on 127.0.0.1 free for TCP (and for UDP too when ``kind`` is "udp") just now.

    Picked at random *below* the kernel's ephemeral range when there is room: a port
    the kernel hands out itself (bind to 0) is the next outgoing connection's local port
    too, so a server started on it a moment later may find it taken. A port is handed
    out at most once per process.
    """
    low, _high = _ephemeral_range()
    if low > 12_000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if port not in _HANDED_OUT and _bindable(port, kind):
                _HANDED_OUT.add(port)
                return port
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        if port not in _HANDED_OUT and _bindable(port, kind):
            _HANDED_OUT.add(port)
            return port
    raise ServiceError("no free port on 127.0.0.1")


def accepts(port: int, *, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_for_tcp(port: int, *, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until ``host:port`` accepts TCP connections (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not accepts(port, host=host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def sip_ping(port: int, *, timeout: float = 0.3) -> bool:
    """True when something answers a SIP OPTIONS on 127.0.0.1:``port`` over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        data = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKping{local}\r\n"
            "From: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: ping-{local}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(4096).startswith(b"SIP/2.0 ")
        except OSError:
            return False


def http_status(port: int, path: str) -> int | None:
    """The status of GET http://127.0.0.1:``port````path``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def http_text(port: int, path: str) -> str:
    """The body of GET http://127.0.0.1:``port````path`` ("" when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bytes(response.read()).decode("utf-8", "replace")
    except OSError:
        return ""


class ServerProcess:
    """One server process with a log file; a context manager that stops it on exit.

    ``ready(process)`` is polled after the start until it holds (none: started is ready);
    ``failed(log)`` may name a reason to give up early (a port taken, ...).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        ready: Callable[[ServerProcess], bool] | None = None,
        ready_timeout: float = 20.0,
        stop_signal: int = signal.SIGTERM,
        failed: Callable[[str], str | None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.failed = failed
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built from fixed binaries
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
        while self.ready is not None and not self.ready(self):
            reason = self.failed(self.log()) if self.failed is not None else None
            if reason is not None:
                self.stop()
                raise ServiceError(f"{self.name}: {reason}\n{self.log()}")
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ServiceError(f"{self.name} exited with {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceTimeoutError(
                    f"{self.name} not ready after {self.ready_timeout:g}s:\n{self.log()}"
                )
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError(f"{self.name} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        """The end of the process's log, for error messages."""
        try:
            return self.log_path.read_bytes()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop politely (``stop_signal``), then by force, and the group's stragglers too;
        the exit status (None when it never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, self.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """``with running(ServerProcess(...)) as s:`` — started, and stopped whatever happens."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "ServerProcess",
    "ServiceError",
    "ServiceTimeoutError",
    "accepts",
    "find_binary",
    "free_port",
    "http_status",
    "http_text",
    "running",
    "sip_ping",
    "wait_for_tcp",
    "which",
]
