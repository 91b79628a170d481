"""Start a server as a child process, wait until it is ready, and always stop it.

Every real peer in the tests goes through :class:`ServerProcess`: it runs in the
foreground (no daemons), logs to a file the failing test can show, listens on loopback
only, and is stopped by PID (SIGTERM, then SIGKILL) when the fixture ends. The code is
the demo's (``gateway/demo/process.py``, part of the installed package), so the demo and
the tests start their servers one way; only a missing program is handled the tests' way
here (the test fails, naming the Debian package).
"""

from __future__ import annotations

import pytest

from gateway.demo.process import (
    ServerProcess,
    ServiceError,
    ServiceTimeoutError,
    free_port,
    running,
    sip_ping,
    wait_for_tcp,
    which,
)


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; fails (never skips) with the Debian package to install."""
    path = which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package {package} (make test does)")
    return path


__all__ = [
    "ServerProcess",
    "ServiceError",
    "ServiceTimeoutError",
    "free_port",
    "require_binary",
    "running",
    "sip_ping",
    "wait_for_tcp",
]
