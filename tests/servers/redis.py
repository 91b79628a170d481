"""Redis (Debian ``redis-server`` 7) as the shared store of a gateway cluster in the tests.

Foreground, loopback only, a free port, all state in a scratch folder, no RDB snapshots
and the append-only file on (``--appendonly yes``): what a node acknowledged is in the AOF
of a Redis that keeps running. ``appendfsync`` is ``everysec`` by default (a killed
*gateway node* loses nothing; a killed *Redis* may lose up to a second of writes) and can
be ``always`` for the tests that kill Redis itself (docs/scaling.md, "Durability").
Stopped by PID even when the test fails.

The session fixture :func:`redis_server` serves every test; each test gets its own key
namespace (:func:`redis_namespace`), so tests never see each other's keys.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers.process import ServerProcess, free_port, require_binary


def redis_ping(port: int, *, timeout: float = 0.3) -> bool:
    """True when a Redis on 127.0.0.1:``port`` answers PING with PONG (RESP inline)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process; :meth:`kill` and :meth:`start` again keep its data."""

    workdir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "everysec"
    extra: tuple[str, ...] = ()
    process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = require_binary("redis-server", "redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.workdir),
            "--logfile",
            "",
            "--databases",
            "1",
            *self.extra,
        ]
        self.process = ServerProcess(
            "redis",
            argv,
            workdir=self.workdir,
            ready=lambda _p: redis_ping(self.port),
            ready_timeout=20.0,
        ).start()
        return self

    def kill(self) -> None:
        """SIGKILL (a crash: whatever was not yet in the AOF on disk is gone)."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the whole test session (tests keep to their own namespaces)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


_namespaces = itertools.count(1)


@pytest.fixture
def redis_namespace() -> str:
    """A key namespace no other test (or parallel test run) uses."""
    return f"t{os.getpid()}-{next(_namespaces)}"
