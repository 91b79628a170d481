"""Start a server as a child process, wait until it is ready, and always stop it.

Every real peer in the tests goes through :class:`ServerProcess`: it runs in the
foreground (no daemons), logs to a file the failing test can show, listens on loopback
only, and is stopped by PID (SIGTERM, then SIGKILL) when the fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; fails (never skips) with the Debian package to install."""
    sbin = f"/usr/sbin/{name}"
    path = shutil.which(name) or (sbin if os.path.exists(sbin) else None)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package {package} (make test does)")
    return path


def free_port(kind: str = "tcp") -> int:
    """A port on 127.0.0.1 free for TCP and UDP at the moment of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        if kind == "tcp":
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def wait_for_tcp(port: int, *, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Wait until ``host:port`` accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class ServerProcess:
    """A child process with a log file; a context manager that stops it on exit."""

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
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.ready_timeout
        while self.ready is not None and not self.ready(self):
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"{self.name} not ready after {self.ready_timeout}s:\n{self.log()}"
                )
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        """The end of the process's log, for failure messages."""
        try:
            return self.log_path.read_bytes()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group at once (crash simulation)."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop politely, then by force; also kills the process group's stragglers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

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
