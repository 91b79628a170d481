"""The whole gateway on loopback for the fault and security tests: a real Prosody (XMPP users
``@xmpp.test``, the gateway as component ``sip.xmpp.test``), a real Kamailio (SIP users
``@sip.test``, routing ``xmpp.test`` to the gateway), and ``cpimgw run`` as its own process
(XMPP, SIP and the HTTP API configured in one TOML file), which a test can kill with
SIGKILL and start again on the same store.

The test's own users: XMPP users are slixmpp clients (``tests.xmpp.users``); SIP users
are :class:`SipUa` — an endpoint of cpimgw's SIP stack on its own UDP port that sends
MESSAGE through Kamailio and answers whatever Kamailio routes to it (Kamailio sends
``sip:sink...@sip.test`` to the sink port given at its start). Every server listens on
127.0.0.1 only, on free ports, and is stopped by PID whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.cpim.token import digest
from adapters.sip.codec import Request
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transaction import Timers
from adapters.sip.transport import Peer
from canonical.envelope import identity_of
from canonical.errors import DeliveryError
from tests.servers.kamailio import Kamailio, kamailio
from tests.servers.process import ServerProcess, free_port
from tests.servers.prosody import ProsodyServer

XMPP_DOMAIN = "xmpp.test"
COMPONENT = "sip.xmpp.test"
SIP_DOMAIN = "sip.test"
API_DOMAIN = "bots.test"
GATEWAY_ID = "gw-faults"
PASSWORD = "pw-faults"
API_TOKEN = "api-token-faults"
API_BOT = f"im:bot@{API_DOMAIN}"


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # nothing listens (yet): status 0
        return 0, str(exc)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in ``text`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@dataclass
class Settings:
    """What a test may change in the gateway's configuration."""

    store: Path
    xmpp_port: int
    sip_port: int
    proxy_port: int
    http_port: int
    metrics_port: int
    secret: str
    signatures: str = "off"
    trust: tuple[Path, ...] = ()
    rate: float = 0.0
    burst: float = 1000.0
    max_size: int = 1024 * 1024
    sip_t1: float = 0.1
    expiry: str = "10m"
    sip_proxy_transport: str = "udp"
    delivery: str = ""
    extra: str = ""
    #: TOML lines added to the [adapters.sip] section (tls_ca_file = ..., ...).
    sip_extra: str = ""
    #: TOML added after the API client: [[adapters.api.clients]], [adapters.api.tls], peers.
    api_clients: str = ""
    #: Routes added after the built-in ones.
    routes: str = ""

    def toml(self) -> str:
        trust = ", ".join(f'"{p}"' for p in self.trust)
        return f"""
[gateway]
id = "{GATEWAY_ID}"

[store]
path = "{self.store}"
synchronous = "full"
poll_interval = "200ms"

[delivery]
initial_backoff = "100ms"
max_backoff = "1s"
concurrency = 64
send_timeout = "10s"
drain_timeout = "5s"
max_attempts = 100
expiry = "{self.expiry}"
{self.delivery}

[adapters.xmpp]
kind = "xmpp"
host = "127.0.0.1"
port = {self.xmpp_port}
component = "{COMPONENT}"
secret = "{self.secret}"
domains = ["{XMPP_DOMAIN}"]
domain_map = {{ "{COMPONENT}" = "sip:{SIP_DOMAIN}" }}
reconnect_initial = 0.2
reconnect_max = 1.0

[adapters.sip]
kind = "sip"
listen = [{{ transport = "udp", host = "127.0.0.1", port = {self.sip_port} }},
          {{ transport = "tcp", host = "127.0.0.1", port = {self.sip_port} }}]
proxy = "sip:127.0.0.1:{self.proxy_port};transport={self.sip_proxy_transport}"
domains = ["{XMPP_DOMAIN}"]
t1 = {self.sip_t1}
t2 = 1.0
t4 = 1.0
{self.sip_extra}

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
match = "{XMPP_DOMAIN}"
adapter = "xmpp"
signatures = "{self.signatures}"

[[routes]]
match = "{SIP_DOMAIN}"
adapter = "sip"
signatures = "{self.signatures}"

[[routes]]
match = "{API_DOMAIN}"
adapter = "api"
{self.routes}

[security]
rate = {self.rate}
burst = {self.burst}
max_size = {self.max_size}
trust = [{trust}]

[metrics]
listen = "127.0.0.1:{self.metrics_port}"

[logging]
level = "info"
format = "json"
{self.extra}
"""


class GatewayProcess:
    """``cpimgw run`` as a child process (its own session), restartable on the same store."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.config = workdir / "cpimgw.toml"
        self.process: ServerProcess | None = None
        self.starts = 0

    def write_config(self) -> None:
        self.config.write_text(self.settings.toml())

    def _ready(self, _proc: ServerProcess) -> bool:
        try:
            return http_get(self.settings.metrics_port, "/readyz", 0.5)[0] == 200
        except OSError:
            return False

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
                self.settings.http_port, self.settings.metrics_port = free_port(), free_port()
                continue
            return

    def kill(self) -> None:
        """SIGKILL, no cleanup at all (a crash)."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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
        """Every JSON log line of every start."""
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
async def sip_ua(proxy_port: int, port: int = 0, *, t1: float = 0.1) -> AsyncIterator[SipUa]:
    ua: SipUa | None = None

    async def handler(incoming: Incoming) -> None:
        assert ua is not None
        await ua.handle(incoming)

    endpoint = Endpoint(
        handler=handler,
        methods=frozenset({"MESSAGE", "NOTIFY", "SUBSCRIBE"}),
        timers=Timers(t1=t1, t2=1.0, t4=1.0),
    )
    await endpoint.listen("UDP", "127.0.0.1", port)
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


@dataclass
class Stack:
    workdir: Path
    prosody: ProsodyServer
    kamailio: Kamailio
    gateway: GatewayProcess
    sink_port: int

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    def users(self, *names: str) -> list[str]:
        return [f"{n}@{XMPP_DOMAIN}" for n in names]


@contextlib.contextmanager
def stack(
    workdir: Path,
    *,
    xmpp_users: tuple[str, ...] = ("alice",),
    gateway_sip_target: Callable[[int], int] | None = None,
    start_gateway: bool = True,
    **settings: Any,
) -> Iterator[Stack]:
    """Prosody, Kamailio and ``cpimgw run``, all on loopback, stopped whatever happens.

    ``gateway_sip_target(port)`` gives the port Kamailio sends the gateway's traffic to
    (default: the gateway's own SIP port), so a test can put a relay in between.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    prosody = ProsodyServer(workdir / "prosody", secret="component-faults")
    for user in xmpp_users:
        prosody.register(user, PASSWORD)
    sip_port = free_port("udp")
    sink_port = free_port("udp")
    target = gateway_sip_target(sip_port) if gateway_sip_target else sip_port
    with contextlib.ExitStack() as stack_:
        prosody.start()
        stack_.callback(prosody.stop)
        k = stack_.enter_context(
            kamailio(
                workdir / "kamailio",
                gateway=f"sip:127.0.0.1:{target};transport=udp",
                sink_port=sink_port,
            )
        )
        values: dict[str, Any] = {
            "store": workdir / "store" / "cpimgw.sqlite3",
            "xmpp_port": prosody.component_port,
            "sip_port": sip_port,
            "proxy_port": k.port,
            "http_port": free_port(),
            "metrics_port": free_port(),
            "secret": prosody.secret,
        }
        values.update(settings)
        Path(values["store"]).parent.mkdir(parents=True, exist_ok=True)
        gateway = GatewayProcess(workdir / "gateway", Settings(**values))
        gateway.workdir.mkdir(parents=True, exist_ok=True)
        stack_.callback(gateway.stop)
        if start_gateway:
            gateway.start()
        yield Stack(workdir, prosody, k, gateway, sink_port)
