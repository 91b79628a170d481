"""A real Kamailio for the SIP tests: registrar, proxy and presence server for ``sip.test``
on 127.0.0.1 (UDP and TCP on one port, TLS on another), routing the gateway's domain
(``xmpp.test``) to the gateway's SIP listener.

Started in the foreground (``-DD -E -m 256``) through :class:`ServerProcess`, with its
state (sqlite file, TLS certificate, control socket, core files) in a scratch folder,
and stopped by PID. Readiness: any SIP response to an OPTIONS over UDP.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import pki
from tests.servers.process import ServerProcess, free_port, require_binary, sip_ping

CONFIG = Path(__file__).resolve().parent / "kamailio" / "kamailio.cfg"
SQL_DIR = Path("/usr/share/kamailio/db_sqlite")
SIP_DOMAIN = "sip.test"
GW_DOMAIN = "xmpp.test"
#: Digest account the gateway uses when Kamailio challenges it (``WITH_AUTH``).
GW_USER, GW_PASSWORD = "gateway", "gw-secret"


@dataclass
class Kamailio:
    process: ServerProcess
    port: int
    tls_port: int  # 0: no TLS listener
    ca: pki.Credential | None  # the CA of its TLS certificate (None: no TLS)
    ca_file: Path | None
    workdir: Path

    @property
    def log(self) -> str:
        return self.process.log(20000)

    def peer(self, transport: str = "UDP") -> tuple[str, str, int]:
        port = self.tls_port if transport.upper() == "TLS" else self.port
        return (transport.upper(), "127.0.0.1", port)


def _database(path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        for name in ("standard-create.sql", "presence-create.sql", "auth_db-create.sql"):
            con.executescript((SQL_DIR / name).read_text())
        con.execute(
            "INSERT INTO subscriber (username, domain, password) VALUES (?, ?, ?)",
            (GW_USER, GW_DOMAIN, GW_PASSWORD),
        )
        con.commit()
    finally:
        con.close()


def _tls_config(directory: Path, ca: pki.Credential) -> Path:
    crt, key = pki.make_leaf(ca, "127.0.0.1", ips=("127.0.0.1",), dns=(SIP_DOMAIN,)).write(
        directory, "kamailio"
    )
    cfg = directory / "tls.cfg"
    cfg.write_text(
        "[server:default]\n"
        "method = TLSv1.2+\n"
        "verify_certificate = no\n"
        "require_certificate = no\n"
        f"private_key = {key}\n"
        f"certificate = {crt}\n\n"
        "[client:default]\n"
        "method = TLSv1.2+\n"
        "verify_certificate = no\n"
        "require_certificate = no\n"
    )
    return cfg


@contextlib.contextmanager
def kamailio(
    workdir: Path,
    *,
    gateway: str,
    sink_port: int | None = None,
    auth_algorithm: str | None = None,
    shm_mb: int = 256,
    children: int = 2,
) -> Iterator[Kamailio]:
    """Run Kamailio routing ``xmpp.test`` to ``gateway`` (a SIP URI such as
    ``sip:127.0.0.1:5070;transport=udp``); ``auth_algorithm`` turns on digest challenges
    (407) for requests from the gateway's domain."""
    binary = require_binary("kamailio", "kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run").mkdir(exist_ok=True)
    db = workdir / "kamailio.sqlite"
    _database(db)
    ca = pki.make_ca("cpimgw kamailio test CA")
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    tls_cfg = _tls_config(workdir, ca)
    port = free_port("udp")
    tls_port = free_port("tcp")
    sink = sink_port if sink_port is not None else free_port("udp")
    argv = [
        binary,
        "-DD",
        "-E",
        "-m",
        str(shm_mb),
        "-w",
        str(workdir),
        "-f",
        str(CONFIG),
        "-A",
        f"SIP_PORT={port}",
        "-A",
        f"TLS_PORT={tls_port}",
        "-A",
        f'RUNDIR="{workdir / "run"}"',
        "-A",
        f'DBURL="sqlite:///{db}"',
        "-A",
        f'TLS_CFG="{tls_cfg}"',
        "-A",
        f'GW_DST="{gateway}"',
        "-A",
        f'GW_DOMAIN="{GW_DOMAIN}"',
        "-A",
        f'SINK_DST="sip:127.0.0.1:{sink};transport=udp"',
        "-A",
        f'SELF_URI="sip:127.0.0.1:{port}"',
    ]
    if auth_algorithm is not None:
        argv += ["-A", "WITH_AUTH", "-A", f'AUTH_ALGO="{auth_algorithm}"']
    if children != 2:
        # the config's children=2 is overridden on the command line
        argv += ["-n", str(children)]
    process = ServerProcess(
        "kamailio",
        argv,
        workdir=workdir,
        env={"LC_ALL": "C"},
        ready=lambda _p: sip_ping(port),
        ready_timeout=20.0,
    )
    with contextlib.ExitStack() as stack:
        process.start()
        stack.callback(process.stop)
        yield Kamailio(process, port, tls_port, ca, ca_file, workdir)
