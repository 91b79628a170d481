"""The real servers of the demo — Prosody, Kamailio and ``cpimgw run`` — as child processes.

Each runs in the foreground in its own session, logs to a file in the demo's scratch
folder, listens on 127.0.0.1 only, and is stopped by its PID (SIGTERM, then SIGKILL for the
whole process group). The server configurations are the operators' examples in
``examples/`` (``prosody.cfg.lua``, ``kamailio.cfg``, ``gateway.toml``) with the values of
this run passed in, so the demo proves what docs/operators-guide.md shows.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.demo.process import (
    ServerProcess,
    ServiceError,
    accepts,
    find_binary,
    free_port,
    http_status,
    http_text,
    sip_ping,
)

#: The demo's name for a server process (``gateway.demo.process.ServerProcess``).
Service = ServerProcess

#: Re-exported for the demo's conversation (``servers.free_port`` and the others).
__all__ = [
    "Service",
    "ServiceError",
    "find_binary",
    "free_port",
    "gateway",
    "http_status",
    "http_text",
    "kamailio",
    "kamailio_argv",
    "prosody",
    "prosody_env",
    "prosody_register",
    "sip_ping",
]

#: The operators' example configurations.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KAMAILIO_CFG = EXAMPLES / "kamailio.cfg"
PROSODY_CFG = EXAMPLES / "prosody.cfg.lua"
#: Where Debian's kamailio-sqlite-modules puts the table definitions.
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")


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
        ready=lambda _p: accepts(c2s) and accepts(component),
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
        "kamailio", argv, workdir=workdir, env={"LC_ALL": "C"}, ready=lambda _p: sip_ping(port)
    )


# ------------------------------------------------------------------------------ cpimgw


def gateway(
    workdir: Path,
    config: Path,
    *,
    metrics_port: int,
    name: str = "cpimgw",
    ready_timeout: float = 30.0,
) -> Service:
    """``cpimgw run -c CONFIG`` with this Python (not started yet); ready on /readyz within
    ``ready_timeout`` seconds."""
    return Service(
        name,
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        workdir=workdir,
        ready=lambda _p: http_status(metrics_port, "/readyz") == 200,
        ready_timeout=ready_timeout,
    )
