"""Prosody (Debian ``prosody``) as a real XMPP server for the tests.

Foreground (``prosody -F``), config shipped in ``tests/servers/prosody/``, listening on
127.0.0.1 only on free ports, all state (accounts, rosters, pid, log) in a scratch folder,
users created with ``prosodyctl register``. Stopped by PID even when the test fails.
Pitfalls handled here are the ones recorded in the servers notes: ``run_as_root``, no
``mod_tls`` without a certificate, and a busy port that Prosody only logs
("Failed to open server port") while it keeps running.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, require_binary

CONFIG = Path(__file__).resolve().parent / "prosody" / "prosody.cfg.lua"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ProsodyServer:
    """One Prosody instance: a virtual host with c2s users and one XEP-0114 component."""

    workdir: Path
    domain: str = "xmpp.test"
    component: str = "sip.xmpp.test"
    secret: str = "component-s3cret"
    c2s_port: int = field(default_factory=free_port)
    component_port: int = field(default_factory=free_port)
    process: ServerProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "PROSODY_DIR": str(self.workdir),
            "PROSODY_C2S_PORT": str(self.c2s_port),
            "PROSODY_COMPONENT_PORT": str(self.component_port),
            "PROSODY_DOMAIN": self.domain,
            "PROSODY_COMPONENT": self.component,
            "PROSODY_COMPONENT_SECRET": self.secret,
        }

    def _ready(self, proc: ServerProcess) -> bool:
        if "Failed to open server port" in proc.log():
            raise RuntimeError(f"prosody could not bind its ports:\n{proc.log()}")
        return _accepts(self.c2s_port) and _accepts(self.component_port)

    def start(self) -> ProsodyServer:
        """Start (or start again on the same ports and data after :meth:`stop`)."""
        binary = require_binary("prosody", "prosody")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(
            "prosody",
            [binary, "-F", "--config", str(CONFIG)],
            workdir=self.workdir,
            env=self.env,
            ready=self._ready,
        ).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        """Stop and start again: same ports, same accounts and rosters."""
        self.stop()
        self.start()

    def register(self, user: str, password: str) -> str:
        """Create an account with prosodyctl (works with the server running or not)."""
        ctl = require_binary("prosodyctl", "prosody")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [ctl, "--config", str(CONFIG), "register", user, self.domain, password],
            env={**os.environ, **self.env},
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prosodyctl register {user}: {done.stdout!r} {done.stderr!r}")
        return f"{user}@{self.domain}"

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""
