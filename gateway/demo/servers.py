"""The real servers of the demo — Prosody, Kamailio and ``cpimgw run`` — as child processes.

Each runs in the foreground in its own session, logs to a file in the demo's scratch
folder, listens on 127.0.0.1 only, and is stopped by its PID (SIGTERM, then SIGKILL for the
whole process group). The server configurations are the operators' examples in
``examples/`` (``prosody.cfg.lua``, ``kamailio.cfg``, ``gateway.toml``) with the values of
this run passed in, so the demo proves what docs/operators-guide.md shows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The operators' example configurations.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KAMAILIO_CFG = EXAMPLES / "kamailio.cfg"
PROSODY_CFG = EXAMPLES / "prosody.cfg.lua"
#: Where Debian's kamailio-sqlite-modules puts the table definitions.
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")


class ServiceError(RuntimeError):
    """A server could not be started; the message ends with the end of its log."""


def find_binary(name: str, package: str) -> str:
    """The path of ``name`` (also in /usr/sbin), or a ServiceError naming the package."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        raise ServiceError(f"{name} is not installed: apt-get install {package} (make demo does)")
    return found


def free_port(kind: str = "tcp") -> int:
    """A port on 127.0.0.1 free for TCP (and for UDP when ``kind`` is "udp") just now."""
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
    raise ServiceError("no free port on 127.0.0.1")


def accepts(port: int) -> bool:
    """True when 127.0.0.1:``port`` accepts a TCP connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


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


class Service:
    """One server process: started in its own session, ready when ``ready()`` says so,
    stopped by PID (and its process group) whatever happened."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: Path,
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        failed: Callable[[str], str | None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.ready = ready
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.failed = failed
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
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
        deadline = time.monotonic() + self.timeout
        while not self.ready():
            reason = self.failed(self.log()) if self.failed is not None else None
            if reason is not None:
                self.stop()
                raise ServiceError(f"{self.name}: {reason}\n{self.log()}")
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ServiceError(f"{self.name} exited with status {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"{self.name} not ready after {self.timeout:.0f}s:\n{self.log()}"
                )
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL to the process group; the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        return proc.returncode


# ------------------------------------------------------------------------------ Prosody


def prosody_env(
    workdir: Path,
    *,
    domain: str,
    component: str,
    secret: str,
    c2s_port: int,
    component_port: int,
) -> dict[str, str]:
    """The environment ``examples/prosody.cfg.lua`` reads."""
    return {
        "PROSODY_DIR": str(workdir),
        "PROSODY_DOMAIN": domain,
        "PROSODY_COMPONENT": component,
        "PROSODY_COMPONENT_SECRET": secret,
        "PROSODY_C2S_PORT": str(c2s_port),
        "PROSODY_COMPONENT_PORT": str(component_port),
    }


def prosody_register(env: Mapping[str, str], user: str, domain: str, password: str) -> None:
    """Create an XMPP account with prosodyctl (the server may be running or not)."""
    ctl = find_binary("prosodyctl", "prosody")
    Path(env["PROSODY_DIR"], "data").mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # noqa: S603 - fixed binary, our arguments
        [ctl, "--config", str(PROSODY_CFG), "register", user, domain, password],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
        raise ServiceError(f"prosodyctl register {user}@{domain} failed: {detail}")


def prosody(workdir: Path, env: Mapping[str, str]) -> Service:
    """Prosody on ``examples/prosody.cfg.lua`` (not started yet)."""
    binary = find_binary("prosody", "prosody")
    (workdir / "certs").mkdir(parents=True, exist_ok=True)  # c2s stays cleartext on loopback
    c2s, component = int(env["PROSODY_C2S_PORT"]), int(env["PROSODY_COMPONENT_PORT"])
    return Service(
        "prosody",
        [binary, "-F", "--config", str(PROSODY_CFG)],
        workdir=workdir,
        env=env,
        ready=lambda: accepts(c2s) and accepts(component),
        failed=lambda log: "a port is taken" if "Failed to open server port" in log else None,
    )


# ----------------------------------------------------------------------------- Kamailio


def kamailio_database(path: Path) -> None:
    """An SQLite file with the tables ``examples/kamailio.cfg`` uses (what ``kamdbctl
    create`` makes): versions, presence and auth_db."""
    names = ("standard-create.sql", "presence-create.sql", "auth_db-create.sql")
    missing = [n for n in names if not (KAMAILIO_SQL / n).exists()]
    if missing:
        raise ServiceError(
            f"{', '.join(missing)} not found in {KAMAILIO_SQL}: "
            "apt-get install kamailio-sqlite-modules (make demo does)"
        )
    con = sqlite3.connect(path)
    try:
        for name in names:
            con.executescript((KAMAILIO_SQL / name).read_text())
        con.commit()
    finally:
        con.close()


def kamailio_argv(
    workdir: Path,
    *,
    port: int,
    sip_domain: str,
    gateway_domain: str,
    gateway: str,
    shm_mb: int = 256,
    children: int | None = None,
    config: Path = KAMAILIO_CFG,
    tls: tuple[int, Path] | None = None,
) -> list[str]:
    """The command line of Kamailio on ``examples/kamailio.cfg`` for ``sip_domain``, routing
    ``gateway_domain`` to ``gateway`` (a SIP URI such as ``sip:127.0.0.1:5070;transport=udp``).
    ``tls`` = (port, tls.cfg) adds a TLS listener (``WITH_TLS``). Makes the run folder and
    the SQLite file in ``workdir``."""
    binary = find_binary("kamailio", "kamailio")
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    db = workdir / "kamailio.sqlite"
    if not db.exists():
        kamailio_database(db)
    defines = {
        "LISTEN_IP": "127.0.0.1",
        "SIP_PORT": str(port),
        "SIP_DOMAIN": f'"{sip_domain}"',
        "GW_DOMAIN": f'"{gateway_domain}"',
        "GW_DST": f'"{gateway}"',
        "SELF_URI": f'"sip:127.0.0.1:{port}"',
        "RUNDIR": f'"{workdir / "run"}"',
        "DBURL": f'"sqlite:///{db}"',
    }
    if tls is not None:
        defines |= {"WITH_TLS": "", "TLS_PORT": str(tls[0]), "TLS_CFG": f'"{tls[1]}"'}
    argv = [binary, "-DD", "-E", "-m", str(shm_mb), "-w", str(workdir), "-f", str(config)]
    for key, value in defines.items():
        argv += ["-A", f"{key}={value}" if value else key]
    if children is not None:
        argv += ["-n", str(children)]
    return argv


def kamailio(workdir: Path, *, port: int, **options: Any) -> Service:
    """Kamailio (see :func:`kamailio_argv` for ``options``), not started; ready when it
    answers OPTIONS."""
    argv = kamailio_argv(workdir, port=port, **options)
    return Service(
        "kamailio", argv, workdir=workdir, env={"LC_ALL": "C"}, ready=lambda: sip_ping(port)
    )


# ------------------------------------------------------------------------------ cpimgw


def gateway(workdir: Path, config: Path, *, metrics_port: int, name: str = "cpimgw") -> Service:
    """``cpimgw run -c CONFIG`` with this Python (not started yet); ready on /readyz."""
    return Service(
        name,
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        workdir=workdir,
        ready=lambda: http_status(metrics_port, "/readyz") == 200,
        timeout=30.0,
    )
