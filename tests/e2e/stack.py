"""The whole deployment on loopback: an XMPP server, Kamailio, and ``cpimgw run`` between them.

One stack serves the end-to-end, fault-injection and security tests (and the end-to-end
benchmark):

- XMPP: Prosody (``tests/servers/prosody.py``) or ejabberd (``tests/servers/ejabberd.py``),
  users @xmpp.test, the gateway as the XEP-0114 component ``sip.xmpp.test``.
- SIP: Kamailio for sip.test, routing xmpp.test to the gateway's SIP listener, on one of
  two configurations (``proxy``): ``"example"``, the operators' ``examples/kamailio.cfg``
  (registrar, proxy and presence server, what the guide shows), or ``"sink"``, the tests'
  ``tests/servers/kamailio.py`` whose users named ``sink*`` all go to one port (a
  :class:`SipUa` of the test listening there sees every request the gateway sends).
- The gateway: ``cpimgw run -c FILE`` as a restartable process (:class:`GatewayProcess`:
  start, SIGKILL, stop, its logs and store), on a config rendered from the operators'
  example ``examples/gateway.toml`` with only this run's values changed
  (:mod:`gateway.demo.template`; :class:`Settings` lists what a test may change), the
  durable SQLite store on.

Hooks for the fault tests: ``gateway_sip_target`` puts a relay of the test's own in the
SIP path (Kamailio sends the gateway's traffic to the port it returns), ``store=`` puts
the store anywhere (a small tmpfs), :meth:`Stack.swap_proxy_certificate` gives Kamailio
another TLS certificate (and back), and ``start_gateway=False`` lets a test point a leg
at a silent peer (``s.settings.xmpp_port = ...``) before :meth:`GatewayProcess.start`.
:func:`fault_stack` is the setup those tests share (the sink proxy, the HTTP API, fast
retries, JSON logs).

Addresses: XMPP user ``alice@xmpp.test`` writes to SIP user ``bob@sip.test`` as
``bob@sip.xmpp.test``; the SIP user writes to ``sip:alice@xmpp.test``. Every server
listens on 127.0.0.1 only, on free ports, and is stopped by PID whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from adapters.cpim.token import digest
from adapters.sip.codec import Request
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transaction import Timers
from adapters.sip.transport import Peer
from canonical.envelope import identity_of
from canonical.errors import DeliveryError
from gateway.config import parse
from gateway.demo.servers import kamailio_argv
from gateway.demo.template import TomlValue, render_example
from tests import pki
from tests.servers.ejabberd import EjabberdServer
from tests.servers.kamailio import Kamailio, kamailio
from tests.servers.process import ServerProcess, free_port, sip_ping
from tests.servers.prosody import ProsodyServer

XMPP_DOMAIN = "xmpp.test"
COMPONENT = "sip.xmpp.test"
SIP_DOMAIN = "sip.test"
API_DOMAIN = "bots.test"
GATEWAY_ID = "gw-e2e"
SECRET = "component-s3cret"
#: The password of the accounts :func:`accounts` makes.
PASSWORD = "pw-faults"
API_TOKEN = "api-token-faults"
API_BOT = f"im:bot@{API_DOMAIN}"
#: XMPP accounts every stack has unless told otherwise (user -> password).
XMPP_USERS = {f"user{i}": f"pw{i}" for i in range(4)} | {
    "alice": "alicepw",
    "carol": "carolpw",
    "erin": "erinpw",
}
#: What ``fast`` changes in the example: retries and SIP timers short enough for fault
#: tests, no rate limit (the tests send bursts), JSON logs (read by :meth:`log_lines`).
FAST: dict[str, TomlValue] = {
    "store.poll_interval": "200ms",
    "delivery.initial_backoff": "100ms",
    "delivery.max_backoff": "1s",
    "delivery.concurrency": 64,
    "delivery.send_timeout": "10s",
    "delivery.drain_timeout": "5s",
    "delivery.max_attempts": 100,
    "delivery.expiry": "10m",
    "adapters.xmpp.reconnect_initial": 0.2,
    "adapters.xmpp.reconnect_max": 1.0,
    "adapters.sip.t1": 0.1,
    "adapters.sip.t2": 1.0,
    "adapters.sip.t4": 1.0,
    "security.rate": 0,
    "security.burst": 1000,
    "logging.format": "json",
}


def accounts(*names: str) -> dict[str, str]:
    """XMPP accounts ``names``, each with :data:`PASSWORD`."""
    return dict.fromkeys(names, PASSWORD)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:``port````path`` (status 0: nothing listens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples ``name`` in ``text`` that carry ``labels`` (0 when
    there is none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class XmppServer(Protocol):
    component_port: int
    c2s_port: int

    def stop(self) -> None: ...
    def register(self, user: str, password: str) -> str: ...


@dataclass
class Settings:
    """What a test may change in the gateway's configuration: the values this run sets in
    ``examples/gateway.toml``. A field left None keeps the example's value (or ``FAST``'s)."""

    store: Path
    xmpp_port: int
    sip_port: int
    proxy_port: int
    metrics_port: int
    secret: str = SECRET
    #: the HTTP API adapter ``api`` on this port, with the client ``bot`` (None: no adapter)
    http_port: int | None = None
    sip_proxy_transport: str = "udp"
    #: listen for TLS on this port instead of TCP (the proxy then talks TLS to the gateway)
    sip_tls_port: int | None = None
    fast: bool = False
    signatures: str | None = None
    trust: tuple[Path, ...] = ()
    rate: float | None = None
    burst: float | None = None
    max_size: int | None = None
    sip_t1: float | None = None
    expiry: str | None = None
    #: further ``"table.key"`` values (``gateway.demo.template``), applied last
    values: dict[str, TomlValue] = field(default_factory=dict)
    #: TOML added after the API client: [[adapters.api.clients]], [adapters.api.tls], peers
    api_clients: str = ""
    #: TOML routes added after the example's
    routes: str = ""

    def toml(self) -> str:
        second = (
            {"transport": "tls", "host": "127.0.0.1", "port": self.sip_tls_port}
            if self.sip_tls_port is not None
            else {"transport": "tcp", "host": "127.0.0.1", "port": self.sip_port}
        )
        values: dict[str, TomlValue] = {
            "gateway.id": GATEWAY_ID,
            "store.path": str(self.store),
            "delivery.initial_backoff": "200ms",
            "delivery.max_backoff": "2s",
            "adapters.xmpp.port": self.xmpp_port,
            "adapters.xmpp.component": COMPONENT,
            "adapters.xmpp.secret": self.secret,
            "adapters.xmpp.domains": [XMPP_DOMAIN],
            "adapters.xmpp.domain_map": {COMPONENT: f"sip:{SIP_DOMAIN}"},
            "adapters.sip.listen": [
                {"transport": "udp", "host": "127.0.0.1", "port": self.sip_port},
                second,
            ],
            "adapters.sip.proxy": (
                f"sip:127.0.0.1:{self.proxy_port};transport={self.sip_proxy_transport}"
            ),
            "adapters.sip.domains": [XMPP_DOMAIN],
            "routes[0].match": XMPP_DOMAIN,
            "routes[1].match": [SIP_DOMAIN, f"*.{SIP_DOMAIN}"],
            "presence.min_interval": "100ms",
            "metrics.listen": f"127.0.0.1:{self.metrics_port}",
        }
        if self.fast:
            values.update(FAST)
        chosen: dict[str, TomlValue | None] = {
            "routes[0].signatures": self.signatures,
            "routes[1].signatures": self.signatures,
            "security.rate": self.rate,
            "security.burst": self.burst,
            "security.max_size": self.max_size,
            "adapters.sip.t1": self.sip_t1,
            "delivery.expiry": self.expiry,
            "security.trust": [str(p) for p in self.trust] if self.trust else None,
        }
        values.update({k: v for k, v in chosen.items() if v is not None})
        values.update(self.values)
        text = render_example(values)
        if self.http_port is not None:
            text += f"""
[adapters.api]
kind = "cpim"
host = "127.0.0.1"
port = {self.http_port}
database = "{self.store}"
synchronous = "full"
[[adapters.api.clients]]
name = "bot"
token_sha256 = "{digest(API_TOKEN)}"
send_as = ["{API_BOT}"]
watch = ["{API_BOT}"]
{self.api_clients}

[[routes]]
match = "{API_DOMAIN}"
adapter = "api"
"""
        return text + self.routes


class GatewayProcess:
    """``cpimgw run`` as a child process (its own session), restartable on the same store."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.config = workdir / "cpimgw.toml"
        self.process: ServerProcess | None = None
        self.starts = 0

    def write_config(self) -> str:
        text = self.settings.toml()
        parse(text, file=str(self.config))  # a broken config fails here, with its line
        self.config.write_text(text)
        return text

    def _ready(self, _proc: ServerProcess) -> bool:
        return http_get(self.settings.metrics_port, "/readyz", 0.5)[0] == 200

    def start(self, *, wait_ready: bool = True) -> None:
        """Start (again); when another test took the HTTP or metrics port between
        ``free_port`` and the bind, pick new ones and try again (the SIP port is Kamailio's
        route to the gateway and never changes)."""
        for attempt in range(3):
            self.write_config()
            self.starts += 1
            self.process = ServerProcess(
                f"cpimgw-{self.starts}",
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
                workdir=self.workdir,
                ready=self._ready if wait_ready else None,
                ready_timeout=40.0,
            )
            try:
                self.process.start()
            except (RuntimeError, TimeoutError) as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self.settings.metrics_port = free_port()
                if self.settings.http_port is not None:
                    self.settings.http_port = free_port()
                continue
            return

    def kill(self) -> None:
        """SIGKILL, no cleanup at all (a crash)."""
        if self.process is not None:
            self.process.kill()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            self.process.stop(timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of the last start (None while it runs or before any)."""
        proc = None if self.process is None else self.process.proc
        return None if proc is None else proc.returncode

    def rss_kib(self) -> int:
        """Resident set size of the gateway process (VmRSS), KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    def log(self, tail: int = 6000) -> str:
        text = ""
        for n in range(1, self.starts + 1):
            path = self.workdir / f"cpimgw-{n}.log"
            if path.exists():
                text += f"--- start {n} ---\n" + path.read_text(errors="replace")
        return text[-tail:]

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line of every start (``fast`` turns JSON logs on)."""
        out = []
        for n in range(1, self.starts + 1):
            path = self.workdir / f"cpimgw-{n}.log"
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def metrics(self) -> str:
        return http_get(self.settings.metrics_port, "/metrics")[1]

    def pending_identities(self) -> set[str]:
        """Identities still queued (not yet delivered) in the store, read from the file."""
        con = sqlite3.connect(f"file:{self.settings.store}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT identity FROM queue WHERE state = 'pending'")
            return {row[0] for row in rows}
        finally:
            con.close()

    def stored_identities(self) -> set[str]:
        """Identities the store accepted (its dedup table), read from the file."""
        con = sqlite3.connect(f"file:{self.settings.store}?mode=ro", uri=True)
        try:
            return {row[0] for row in con.execute("SELECT identity FROM seen")}
        finally:
            con.close()


@dataclass
class Stack:
    workdir: Path
    xmpp: XmppServer
    kamailio: Kamailio
    gateway: GatewayProcess | None = None
    #: where Kamailio sends the requests for users named sink* (``proxy="sink"``)
    sink_port: int | None = None

    @property
    def settings(self) -> Settings:
        assert self.gateway is not None
        return self.gateway.settings

    @property
    def prosody(self) -> ProsodyServer:
        assert isinstance(self.xmpp, ProsodyServer)
        return self.xmpp

    @property
    def c2s_port(self) -> int:
        return self.xmpp.c2s_port

    @property
    def kamailio_port(self) -> int:
        return self.kamailio.port

    @property
    def proxy(self) -> str:
        """``host:port`` of Kamailio, for SIPp."""
        return f"127.0.0.1:{self.kamailio.port}"

    @property
    def sip_port(self) -> int:
        return self.settings.sip_port

    @property
    def metrics_port(self) -> int:
        return self.settings.metrics_port

    @property
    def config(self) -> Path:
        assert self.gateway is not None
        return self.gateway.config

    def users(self, *names: str) -> list[str]:
        return [f"{n}@{XMPP_DOMAIN}" for n in names]

    def write_config(self, extra: Mapping[str, TomlValue] | None = None) -> str:
        """Write the gateway's config again, with ``extra`` values added for good."""
        self.settings.values.update(extra or {})
        assert self.gateway is not None
        return self.gateway.write_config()

    def start_gateway(self) -> GatewayProcess:
        assert self.gateway is not None
        self.gateway.start()
        return self.gateway

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()

    def metrics(self) -> str:
        assert self.gateway is not None
        return self.gateway.metrics()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics: the sum over the samples with ``labels`` (0 when absent)."""
        return metric(self.metrics(), name, **labels)

    def log(self) -> str:
        return "" if self.gateway is None else self.gateway.log(20000)

    def swap_proxy_certificate(self, credential: pki.Credential | None) -> None:
        """Restart Kamailio with ``credential`` as its TLS certificate, or with the one it
        started with (None)."""
        k = self.kamailio
        crt, key = k.workdir / "kamailio.crt", k.workdir / "kamailio.key"
        original = k.workdir / "kamailio.original"
        if not original.exists():
            original.mkdir()
            shutil.copy(crt, original / crt.name)
            shutil.copy(key, original / key.name)
        if credential is None:
            shutil.copy(original / crt.name, crt)
            shutil.copy(original / key.name, key)
        else:
            crt.write_bytes(credential.cert_pem)
            key.write_bytes(credential.key_pem)
        k.process.stop()
        k.process.start()


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


def _tls_files(folder: Path, values: dict[str, TomlValue]) -> tuple[pki.Credential, Path]:
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
    return ca, config


@contextlib.contextmanager
def _example_proxy(
    workdir: Path,
    *,
    target: str,
    shm_mb: int,
    children: int | None,
    tls: tuple[int, pki.Credential, Path] | None,
) -> Iterator[Kamailio]:
    """Kamailio on the operators' ``examples/kamailio.cfg``, routing xmpp.test to
    ``target``; ``tls`` = (port, CA, tls.cfg) adds its TLS listener."""
    port = free_port("udp")
    argv = kamailio_argv(
        workdir,
        port=port,
        sip_domain=SIP_DOMAIN,
        gateway_domain=XMPP_DOMAIN,
        gateway=target,
        shm_mb=shm_mb,
        children=children,
        tls=None if tls is None else (tls[0], tls[2]),
    )
    process = ServerProcess(
        "kamailio", argv, workdir=workdir, env={"LC_ALL": "C"}, ready=lambda _p: sip_ping(port)
    ).start()
    try:
        yield Kamailio(
            process=process,
            port=port,
            tls_port=0 if tls is None else tls[0],
            ca=None if tls is None else tls[1],
            ca_file=None if tls is None else tls[2].parent / "ca.crt",
            workdir=workdir,
        )
    finally:
        process.stop()


@contextlib.contextmanager
def stack(
    workdir: Path,
    *,
    xmpp: str = "prosody",
    users: Mapping[str, str] | None = None,
    proxy: Literal["example", "sink"] = "example",
    api: bool = False,
    tls: bool = False,
    gateway_sip_target: Callable[[int], int] | None = None,
    start_gateway: bool = True,
    kamailio_shm_mb: int = 256,
    kamailio_children: int | None = None,
    extra: Mapping[str, TomlValue] | None = None,
    sip_transport: Literal["udp", "tcp"] = "udp",
    **settings: Any,
) -> Iterator[Stack]:
    """XMPP server + Kamailio + ``cpimgw run``, all stopped on exit whatever happened.

    ``users`` (user -> password) replaces the default XMPP accounts; ``proxy`` picks
    Kamailio's configuration (module docstring); ``api`` adds the HTTP API adapter.
    ``sip_transport`` (example proxy, without ``tls``): SIP between the gateway and
    Kamailio over UDP (the example's) or TCP, both ways.
    ``tls`` (example proxy): SIP between the gateway and Kamailio runs over TLS both ways
    (operators' guide, "TLS"), with certificates from a CA of this run, verified by the
    gateway. ``gateway_sip_target(port)`` gives the port Kamailio sends the gateway's
    traffic to (default: the gateway's own SIP port), so a test can put a relay in
    between. ``extra`` are ``"table.key"`` values of the gateway's config; ``settings``
    set :class:`Settings` fields (``store``, ``expiry``, ``fast``, ...).
    """
    if tls and proxy != "example":
        raise ValueError("tls=True runs the example proxy; the sink proxy listens for TLS anyway")
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stop:
        server = _xmpp_server(xmpp, workdir / xmpp, XMPP_USERS if users is None else users)
        if isinstance(server, EjabberdServer):  # removed after the server stopped (LIFO)
            stop.callback(shutil.rmtree, server.workdir, ignore_errors=True)
        stop.callback(server.stop)
        sip_port = free_port("udp")
        target = gateway_sip_target(sip_port) if gateway_sip_target else sip_port
        values: dict[str, TomlValue] = {}
        sink_port = None
        proxy_transport, proxy_port, sip_tls_port = "udp", 0, None
        if proxy == "sink":
            sink_port = free_port("udp")
            k = stop.enter_context(
                kamailio(
                    workdir / "kamailio",
                    gateway=f"sip:127.0.0.1:{target};transport=udp",
                    sink_port=sink_port,
                    shm_mb=kamailio_shm_mb,
                    **({} if kamailio_children is None else {"children": kamailio_children}),
                )
            )
            proxy_port = k.port
        elif tls:
            sip_tls_port, kamailio_tls_port = free_port(), free_port()
            ca, tls_cfg = _tls_files(workdir / "pki", values)
            k = stop.enter_context(
                _example_proxy(
                    workdir / "kamailio",
                    target=f"sip:127.0.0.1:{sip_tls_port};transport=tls",
                    shm_mb=kamailio_shm_mb,
                    children=kamailio_children,
                    tls=(kamailio_tls_port, ca, tls_cfg),
                )
            )
            proxy_transport, proxy_port = "tls", kamailio_tls_port
        else:
            k = stop.enter_context(
                _example_proxy(
                    workdir / "kamailio",
                    target=f"sip:127.0.0.1:{target};transport={sip_transport}",
                    shm_mb=kamailio_shm_mb,
                    children=kamailio_children,
                    tls=None,
                )
            )
            proxy_transport, proxy_port = sip_transport, k.port
        chosen: dict[str, Any] = {
            "store": workdir / "store" / "cpimgw.sqlite3",
            "xmpp_port": server.component_port,
            "sip_port": sip_port,
            "proxy_port": proxy_port,
            "metrics_port": free_port(),
            "http_port": free_port() if api else None,
            "sip_proxy_transport": proxy_transport,
            "sip_tls_port": sip_tls_port,
            "values": {**values, **(extra or {})},
        }
        chosen.update(settings)
        Path(chosen["store"]).parent.mkdir(parents=True, exist_ok=True)
        gateway = GatewayProcess(workdir / "gateway", Settings(**chosen))
        gateway.workdir.mkdir(parents=True, exist_ok=True)
        result = Stack(workdir, server, k, gateway, sink_port)
        stop.callback(result.stop_gateway)  # whatever runs as the gateway by then
        if start_gateway:
            gateway.start()
        yield result


def fault_stack(
    workdir: Path, *, xmpp_users: tuple[str, ...] = ("alice",), **options: Any
) -> contextlib.AbstractContextManager[Stack]:
    """The stack of the fault-injection and security tests: the sink proxy, the HTTP API
    adapter, ``fast`` retries and timers, JSON logs, XMPP accounts ``xmpp_users`` with
    :data:`PASSWORD`; ``options`` as :func:`stack` takes them."""
    options.setdefault("fast", True)
    return stack(workdir, users=accounts(*xmpp_users), proxy="sink", api=True, **options)


# -- the tests' SIP user agent -----------------------------------------------------------


@dataclass
class Received:
    request: Request
    at: float


@dataclass
class SipUa:
    """A SIP user agent of the test: sends through Kamailio, records what reaches it."""

    endpoint: Endpoint
    proxy: Peer
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Incoming], Awaitable[None]] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _cseq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def handle(self, incoming: Incoming) -> None:
        self.received.append(Received(incoming.request, time.monotonic()))
        self.arrived.set()
        if self.answer is not None:
            await self.answer(incoming)
        else:
            incoming.respond(200, "OK")

    def message(
        self,
        sender: str,
        recipient: str,
        body: bytes,
        *,
        content_type: str = "text/plain;charset=utf-8",
        call_id: str,
        cseq: int = 1,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Request:
        return Request.build(
            "MESSAGE",
            recipient,
            [
                ("From", f"<{sender}>;tag=t{call_id[-12:]}"),
                ("To", f"<{recipient}>"),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} MESSAGE"),
                ("Max-Forwards", "70"),
                ("Content-Type", content_type),
                *extra,
            ],
            body,
        )

    async def send(self, request: Request) -> int:
        """The final status for ``request`` sent to Kamailio (408 when no answer came)."""
        try:
            response = await self.endpoint.request(request, self.proxy)
        except DeliveryError:
            return 408
        return response.status

    def call_ids(self) -> list[str]:
        return [r.request.call_id for r in self.received if r.request.method == "MESSAGE"]

    async def wait_for(self, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while len(set(self.call_ids())) < count and time.monotonic() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)


@contextlib.asynccontextmanager
async def sip_ua(proxy_port: int, port: int | None = 0, *, t1: float = 0.1) -> AsyncIterator[SipUa]:
    """A :class:`SipUa` on ``port`` (0: any; a stack's ``sink_port`` to receive what the
    gateway sends to sink* users) sending through the proxy on ``proxy_port``."""
    ua: SipUa | None = None

    async def handler(incoming: Incoming) -> None:
        assert ua is not None
        await ua.handle(incoming)

    endpoint = Endpoint(
        handler=handler,
        methods=frozenset({"MESSAGE", "NOTIFY", "SUBSCRIBE"}),
        timers=Timers(t1=t1, t2=1.0, t4=1.0),
    )
    await endpoint.listen("UDP", "127.0.0.1", port or 0)
    ua = SipUa(endpoint, Peer("UDP", "127.0.0.1", proxy_port))
    try:
        yield ua
    finally:
        await endpoint.close(grace=0.5)


def sip_identity(call_id: str, cseq: int = 1) -> str:
    """The gateway identity of a SIP MESSAGE (``adapters.sip.mapping``: Call-ID + CSeq)."""
    return identity_of("sip", call_id, str(cseq))


def xmpp_identity(full_jid: str, stanza_id: str) -> str:
    """The gateway identity of an XMPP message (sender full JID + id/origin-id)."""
    return identity_of("xmpp", f"xmpp:{full_jid}", stanza_id, None)
