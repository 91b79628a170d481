"""Kamailio with the ``dispatcher`` module in front of several gateway nodes, and the
presence server of ``sip.test`` (config: ``tests/servers/kamailio-cluster/kamailio.cfg``).

Foreground, loopback, a free port; the gateway nodes are dispatcher set 1, probed with
OPTIONS every second. :meth:`DispatchingKamailio.states` reads the nodes' states through
the control socket (``kamcmd dispatcher.list``).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers.kamailio import sip_ping
from tests.servers.process import ServerProcess, free_port, require_binary

CONFIG = Path(__file__).resolve().parents[1] / "servers" / "kamailio-cluster" / "kamailio.cfg"
SQL_DIR = Path("/usr/share/kamailio/db_sqlite")


@dataclass
class DispatchingKamailio:
    process: ServerProcess
    port: int
    workdir: Path

    @property
    def log(self) -> str:
        return self.process.log(40000)

    def states(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags (``AP`` active+probing, ``IP`` inactive...)."""
        kamcmd = require_binary("kamcmd", "kamailio")
        done = subprocess.run(
            [kamcmd, "-s", f"unixs:{self.workdir / 'run' / 'kamailio_ctl'}", "dispatcher.list"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        uris = re.findall(r"URI: (\S+)", done.stdout)
        flags = re.findall(r"FLAGS: (\S+)", done.stdout)
        return dict(zip(uris, flags, strict=True))


def database(path: Path) -> None:
    """The sqlite tables the presence server keeps its state in."""
    con = sqlite3.connect(path)
    try:
        for name in ("standard-create.sql", "presence-create.sql"):
            con.executescript((SQL_DIR / name).read_text())
        con.commit()
    finally:
        con.close()


def node_uri(port: int, transport: str = "tcp") -> str:
    return f"sip:127.0.0.1:{port};transport={transport}"


@contextlib.contextmanager
def dispatching_kamailio(
    workdir: Path,
    *,
    nodes: Sequence[str],
    sink_port: int | None = None,
    fr_timer_ms: int = 2000,
) -> Iterator[DispatchingKamailio]:
    """Kamailio spreading requests for ``xmpp.test`` over ``nodes`` (SIP URIs)."""
    binary = require_binary("kamailio", "kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run").mkdir(exist_ok=True)
    db = workdir / "kamailio.sqlite"
    database(db)
    ds_list = workdir / "dispatcher.list"
    ds_list.write_text("".join(f"1 {uri} 0 0\n" for uri in nodes))
    port = free_port("udp")
    sink = sink_port if sink_port is not None else free_port("udp")
    argv = [
        binary,
        "-DD",
        "-E",
        "-m",
        "64",
        "-w",
        str(workdir),
        "-f",
        str(CONFIG),
        "-A",
        f"SIP_PORT={port}",
        "-A",
        f'RUNDIR="{workdir / "run"}"',
        "-A",
        f'DS_LIST="{ds_list}"',
        "-A",
        f'SINK_DST="sip:127.0.0.1:{sink};transport=udp"',
        "-A",
        f'SELF_URI="sip:127.0.0.1:{port}"',
        "-A",
        f"FR_TIMER={fr_timer_ms}",
        "-A",
        f'DBURL="sqlite:///{db}"',
    ]
    process = ServerProcess(
        "kamailio",
        argv,
        workdir=workdir,
        env={"LC_ALL": "C"},
        ready=lambda _p: sip_ping(port),
        ready_timeout=20.0,
    )
    process.start()
    try:
        yield DispatchingKamailio(process, port, workdir)
    finally:
        process.stop()
