"""The whole deployment on loopback: an XMPP server, Kamailio, and ``cpimgw run`` between them.

- XMPP: Prosody (``tests/servers/prosody.py``) or ejabberd (``tests/servers/ejabberd.py``),
  users @xmpp.test, the gateway as the XEP-0114 component ``sip.xmpp.test``.
- SIP: Kamailio on the operators' example ``examples/kamailio.cfg``: registrar, proxy and
  presence server of sip.test, routing xmpp.test to the gateway's SIP listener.
- The gateway: ``cpimgw run -c FILE`` as a process, on a config rendered from the operators'
  example ``examples/gateway.toml`` with only this run's values (ports, domains, paths,
  secret) changed (:mod:`gateway.demo.template`), durable SQLite store on.

Addresses: XMPP user ``alice@xmpp.test`` writes to SIP user ``bob@sip.test`` as
``bob@sip.xmpp.test``; the SIP user writes to ``sip:alice@xmpp.test``.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.config import parse
from gateway.demo.servers import http_status, kamailio_argv, sip_ping
from gateway.demo.template import TomlValue, render_example
from tests import pki
from tests.servers.ejabberd import EjabberdServer
from tests.servers.process import ServerProcess, free_port
from tests.servers.prosody import ProsodyServer

XMPP_DOMAIN = "xmpp.test"
COMPONENT = "sip.xmpp.test"
SIP_DOMAIN = "sip.test"
GATEWAY_ID = "gw-e2e"
SECRET = "component-s3cret"
#: XMPP accounts every stack has (user -> password).
XMPP_USERS = {f"user{i}": f"pw{i}" for i in range(4)} | {
    "alice": "alicepw",
    "carol": "carolpw",
    "erin": "erinpw",
}


class XmppServer(Protocol):
    component_port: int
    c2s_port: int

    def stop(self) -> None: ...
    def register(self, user: str, password: str) -> str: ...


def gateway_values(
    workdir: Path,
    *,
    component_port: int,
    sip_port: int,
    kamailio_port: int,
    metrics_port: int,
    extra: Mapping[str, TomlValue] | None = None,
) -> dict[str, TomlValue]:
    """What differs from ``examples/gateway.toml`` in this deployment."""
    values: dict[str, TomlValue] = {
        "gateway.id": GATEWAY_ID,
        "store.path": str(workdir / "cpimgw.sqlite3"),
        "delivery.initial_backoff": "200ms",
        "delivery.max_backoff": "2s",
        "adapters.xmpp.port": component_port,
        "adapters.xmpp.component": COMPONENT,
        "adapters.xmpp.secret": SECRET,
        "adapters.xmpp.domains": [XMPP_DOMAIN],
        "adapters.xmpp.domain_map": {COMPONENT: f"sip:{SIP_DOMAIN}"},
        "adapters.sip.listen": [
            {"transport": "udp", "host": "127.0.0.1", "port": sip_port},
            {"transport": "tcp", "host": "127.0.0.1", "port": sip_port},
        ],
        "adapters.sip.proxy": f"sip:127.0.0.1:{kamailio_port};transport=udp",
        "adapters.sip.domains": [XMPP_DOMAIN],
        "routes[0].match": XMPP_DOMAIN,
        "routes[1].match": [SIP_DOMAIN, f"*.{SIP_DOMAIN}"],
        "presence.min_interval": "100ms",
        "metrics.listen": f"127.0.0.1:{metrics_port}",
    }
    values.update(extra or {})
    return values


@dataclass
class Stack:
    workdir: Path
    xmpp: XmppServer
    kamailio: ServerProcess
    kamailio_port: int
    sip_port: int
    metrics_port: int
    config: Path
    gateway: ServerProcess | None = None
    extra: dict[str, TomlValue] = field(default_factory=dict)

    @property
    def c2s_port(self) -> int:
        return self.xmpp.c2s_port

    @property
    def proxy(self) -> str:
        """``host:port`` of Kamailio, for SIPp."""
        return f"127.0.0.1:{self.kamailio_port}"

    def write_config(self, extra: Mapping[str, TomlValue] | None = None) -> str:
        text = render_example(
            gateway_values(
                self.workdir,
                component_port=self.xmpp.component_port,
                sip_port=self.sip_port,
                kamailio_port=self.kamailio_port,
                metrics_port=self.metrics_port,
                extra={**self.extra, **(extra or {})},
            )
        )
        parse(text, file=str(self.config))  # a broken template fails here, with its line
        self.config.write_text(text)
        return text

    def start_gateway(self) -> ServerProcess:
        port = self.metrics_port
        self.gateway = ServerProcess(
            "cpimgw",
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
            workdir=self.workdir,
            ready=lambda _p: http_status(port, "/readyz") == 200,
            ready_timeout=30.0,
        ).start()
        return self.gateway

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop(timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return bytes(r.read()).decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{want}}} " if labels else f"{name} "
        for line in self.metrics().splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
            if labels and line.startswith(name + "{") and _same_labels(line, labels):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return "" if self.gateway is None else self.gateway.log(20000)


def _same_labels(line: str, labels: Mapping[str, str]) -> bool:
    inside = line[line.index("{") + 1 : line.index("}")]
    found = dict(part.split("=", 1) for part in inside.split(",") if "=" in part)
    return all(found.get(k) == f'"{v}"' for k, v in labels.items())


def _xmpp_server(kind: str, workdir: Path, users: Mapping[str, str]) -> XmppServer:
    server: Any
    if kind == "prosody":
        server = ProsodyServer(workdir, domain=XMPP_DOMAIN, component=COMPONENT, secret=SECRET)
        for user, password in users.items():
            server.register(user, password)
        return server.start()  # type: ignore[no-any-return]
    # under /tmp itself: pytest's folders are 0700 and ejabberd runs as its own user
    workdir = Path(tempfile.mkdtemp(prefix="cpimgw-e2e-ejabberd-"))
    server = EjabberdServer(workdir, domain=XMPP_DOMAIN, component=COMPONENT, secret=SECRET)
    server.start()
    for user, password in users.items():
        server.register(user, password)
    return server  # type: ignore[no-any-return]


def _tls_files(folder: Path, values: dict[str, TomlValue]) -> Path:
    """A CA, Kamailio's and the gateway's certificates (for 127.0.0.1), Kamailio's
    tls.cfg; the gateway's TLS keys go into ``values``."""
    ca = pki.make_ca("cpimgw e2e TLS CA")
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    k_crt, k_key = pki.make_leaf(ca, "kamailio", ips=("127.0.0.1",), dns=(SIP_DOMAIN,)).write(
        folder, "kamailio"
    )
    g_crt, g_key = pki.make_leaf(ca, "gateway", ips=("127.0.0.1",)).write(folder, "gateway")
    config = folder / "tls.cfg"
    config.write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
        f"require_certificate = no\nprivate_key = {k_key}\ncertificate = {k_crt}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
        f"require_certificate = yes\nca_list = {ca_file}\n"
    )
    values["adapters.sip.tls_ca_file"] = str(ca_file)
    values["adapters.sip.tls_cert_file"] = str(g_crt)
    values["adapters.sip.tls_key_file"] = str(g_key)
    return config


@contextlib.contextmanager
def stack(
    workdir: Path,
    *,
    xmpp: str = "prosody",
    extra: Mapping[str, TomlValue] | None = None,
    users: Mapping[str, str] | None = None,
    kamailio_shm_mb: int = 256,
    kamailio_children: int | None = None,
    tls: bool = False,
) -> Iterator[Stack]:
    """XMPP server + Kamailio + ``cpimgw run``, all stopped on exit whatever happened.
    ``users`` (user -> password) replaces the default XMPP accounts. ``tls``: SIP between
    the gateway and Kamailio runs over TLS both ways (operators' guide, "TLS"), with
    certificates from a CA of this run, verified by the gateway."""
    with contextlib.ExitStack() as stop:
        server = _xmpp_server(xmpp, workdir / xmpp, XMPP_USERS if users is None else users)
        if isinstance(server, EjabberdServer):  # removed after the server stopped (LIFO)
            stop.callback(shutil.rmtree, server.workdir, ignore_errors=True)
        stop.callback(server.stop)
        sip_port, kamailio_port = free_port("udp"), free_port("udp")
        gateway_uri = f"sip:127.0.0.1:{sip_port};transport=udp"
        tls_of_kamailio = None
        tls_values: dict[str, TomlValue] = {}
        if tls:
            tls_port, gateway_tls_port = free_port(), free_port()
            tls_of_kamailio = (tls_port, _tls_files(workdir / "pki", tls_values))
            tls_values["adapters.sip.proxy"] = f"sip:127.0.0.1:{tls_port};transport=tls"
            tls_values["adapters.sip.listen"] = [
                {"transport": "udp", "host": "127.0.0.1", "port": sip_port},
                {"transport": "tls", "host": "127.0.0.1", "port": gateway_tls_port},
            ]
            gateway_uri = f"sip:127.0.0.1:{gateway_tls_port};transport=tls"
        argv = kamailio_argv(
            workdir / "kamailio",
            port=kamailio_port,
            sip_domain=SIP_DOMAIN,
            gateway_domain=XMPP_DOMAIN,
            gateway=gateway_uri,
            shm_mb=kamailio_shm_mb,
            children=kamailio_children,
            tls=tls_of_kamailio,
        )
        proxy = ServerProcess(
            "kamailio",
            argv,
            workdir=workdir / "kamailio",
            env={"LC_ALL": "C"},
            ready=lambda _p: sip_ping(kamailio_port),
        ).start()
        stop.callback(proxy.stop)
        result = Stack(
            workdir=workdir,
            xmpp=server,
            kamailio=proxy,
            kamailio_port=kamailio_port,
            sip_port=sip_port,
            metrics_port=free_port(),
            config=workdir / "gateway.toml",
            extra={**tls_values, **(extra or {})},
        )
        result.write_config()
        result.start_gateway()
        stop.callback(result.stop_gateway)
        yield result
