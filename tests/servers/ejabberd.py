"""ejabberd (Debian ``ejabberd``) as the second real XMPP server for the tests.

Foreground (``ejabberdctl foreground``), config from ``tests/servers/ejabberd/`` with free
ports filled in, every listener on 127.0.0.1 (c2s, the XEP-0114 service, and the Erlang
distribution port through ``vm.args``); ``ERL_DIST_PORT`` keeps epmd from starting. As root,
ejabberdctl re-runs itself as user ``ejabberd``, so the scratch folder is handed to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, require_binary

CONFIGS = Path(__file__).resolve().parent / "ejabberd"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class EjabberdServer:
    workdir: Path
    domain: str = "xmpp.test"
    component: str = "sip.xmpp.test"
    secret: str = "component-s3cret"
    c2s_port: int = field(default_factory=free_port)
    component_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    process: ServerProcess | None = None

    def _ctl(self) -> list[str]:
        ctl = require_binary("ejabberdctl", "ejabberd")
        w = str(self.workdir)
        return [
            ctl,
            "--config-dir",
            w,
            "--config",
            f"{w}/ejabberd.yml",
            "--logs",
            f"{w}/logs",
            "--spool",
            f"{w}/spool",
            "--node",
            f"cpimgw{self.dist_port}@localhost",
        ]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ERL_DIST_PORT": str(self.dist_port), "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def start(self) -> EjabberdServer:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "spool").mkdir(parents=True, exist_ok=True)
        text = (CONFIGS / "ejabberd.yml.in").read_text()
        for key, value in {
            "@C2S_PORT@": str(self.c2s_port),
            "@COMPONENT_PORT@": str(self.component_port),
            "@COMPONENT@": self.component,
            "@SECRET@": self.secret,
        }.items():
            text = text.replace(key, value)
        (self.workdir / "ejabberd.yml").write_text(text)
        for name in ("vm.args", "inetrc"):
            shutil.copy(CONFIGS / name, self.workdir / name)
        self.workdir.chmod(0o755)
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", "ejabberd:ejabberd", str(self.workdir)], check=True)
        self.process = ServerProcess(
            "ejabberd",
            [*self._ctl(), "foreground"],
            workdir=self.workdir,
            env=self.env,
            ready=lambda _p: _accepts(self.c2s_port) and _accepts(self.component_port),
            ready_timeout=60,
        ).start()
        return self

    def register(self, user: str, password: str) -> str:
        done = subprocess.run(
            [*self._ctl(), "register", user, self.domain, password],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ejabberdctl register {user}: {done.stdout!r} {done.stderr!r}")
        return f"{user}@{self.domain}"

    def stop(self) -> None:
        if self.process is None or not self.process.alive():
            return
        subprocess.run(
            [*self._ctl(), "stop"], env=self.env, capture_output=True, timeout=30, check=False
        )
        self.process.stop(timeout=15)
        # the Erlang VM runs as user ejabberd (via su), outside our process group: wait for
        # it by its node name, and end it by PID if it is still there
        node = f"cpimgw{self.dist_port}@localhost".encode()
        deadline = time.monotonic() + 15
        while (pids := self._vm_pids(node)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _vm_pids(node: bytes) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if node in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids
