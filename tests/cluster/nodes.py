"""Gateway nodes as real ``cpimgw run`` processes sharing one Redis, and the SIP peers the
cluster tests use (a sink that answers every MESSAGE, a sender that counts final answers).

Every node has the same gateway id (one gateway to the outside: the same SIP Call-ID and
XMPP id for an envelope whichever node sends it) and its own ``[cluster] node`` name,
SIP port and metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.contract import Receipt
from adapters.sip.adapter import SipAdapter, SipConfig
from adapters.sip.codec import Request
from adapters.sip.endpoint import Endpoint, Incoming
from adapters.sip.transport import Peer
from canonical.envelope import Envelope
from gateway.demo.servers import gateway
from tests.servers.process import ServerProcess, free_port

GATEWAY_ID = "gw-cluster"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def sip_side(*, sip_port: int, kamailio_port: int, metrics_port: int, xmpp_adapter: str) -> str:
    """The end of every cluster node's config, from ``[adapters.sip]`` on: the SIP adapter
    behind Kamailio on ``sip_port``, the routes (``xmpp.test`` to ``xmpp_adapter`` with
    ``xmpp:`` addresses, ``sip.test`` to SIP), no rate limit, presence at most every 100 ms,
    metrics on ``metrics_port`` and warnings as JSON."""
    return f"""[adapters.sip]
kind = "sip"
listen = [
  {{ transport = "udp", port = {sip_port} }},
  {{ transport = "tcp", port = {sip_port} }},
]
proxy = "sip:127.0.0.1:{kamailio_port};transport=udp"
domains = ["xmpp.test"]
t1 = 0.2
t2 = 1.0
t4 = 1.0

[[routes]]
match = "xmpp.test"
adapter = "{xmpp_adapter}"
scheme = "xmpp"

[[routes]]
match = "sip.test"
adapter = "sip"

[security]
rate = 0

[presence]
min_interval = "100ms"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
level = "warning"
format = "json"
"""


@dataclass
class NodeSpec:
    """What the nodes of one cluster share."""

    redis_url: str
    namespace: str
    xmpp_port: int
    xmpp_secret: str
    kamailio_port: int
    component: str = "sip.xmpp.test"


@dataclass
class Node:
    """One ``cpimgw run`` process (``node`` is its ``[cluster] node`` name)."""

    name: str
    spec: NodeSpec
    workdir: Path
    sip_port: int = field(default_factory=lambda: free_port("udp"))
    metrics_port: int = field(default_factory=free_port)
    process: ServerProcess | None = None

    def config(self) -> str:
        s = self.spec
        return f"""
[gateway]
id = "{GATEWAY_ID}"

[store]
backend = "redis"
url = "{s.redis_url}"
namespace = "{s.namespace}"

[cluster]
node = "{self.name}"
heartbeat = "300ms"
ttl = "1500ms"
claim_idle = "4s"
recover_interval = "500ms"
resync = "30s"
# one XMPP component connection at a time: ejabberd would hand each stanza (and the
# answers to the adapter's write-barrier pings) to a random one of several
exclusive = ["xmpp"]

[delivery]
initial_backoff = "200ms"
max_backoff = "1s"
concurrency = 64
send_timeout = "3s"
drain_timeout = "2s"

[adapters.xmpp]
kind = "xmpp"
port = {s.xmpp_port}
component = "{s.component}"
secret = "{s.xmpp_secret}"
domains = ["xmpp.test"]
domain_map = {{ "{s.component}" = "sip:sip.test" }}
reconnect_initial = 0.2
reconnect_max = 1.0
send_timeout = 2.5

""" + sip_side(
            sip_port=self.sip_port,
            kamailio_port=s.kamailio_port,
            metrics_port=self.metrics_port,
            xmpp_adapter="xmpp",
        )

    def start(self) -> Node:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.name}.toml"
        path.write_text(self.config())
        self.process = gateway(
            self.workdir, path, metrics_port=self.metrics_port, name=self.name
        ).start()
        return self

    def kill(self) -> None:
        """SIGKILL to the node's process group: no drain, no goodbye."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def metrics(self) -> str:
        return metrics_text(self.metrics_port)

    def log(self) -> str:
        return self.process.log(6000) if self.process is not None else ""


@dataclass
class AdapterNode:
    """One gateway node's SIP adapter run in the test's own process (not a ``cpimgw run``),
    listening on ``port`` behind the dispatching Kamailio; the node is the adapter's
    ``deliver`` and records what it is given."""

    port: int
    received: list[Envelope] = field(default_factory=list)
    adapter: SipAdapter | None = None
    task: asyncio.Task[None] | None = None

    async def __call__(self, envelope: Envelope) -> Receipt:
        self.received.append(envelope)
        return Receipt(envelope.identity)

    def sip_config(self, proxy_port: int, **extra: object) -> SipConfig:
        """UDP and TCP on ``port``, every request out through the proxy on
        ``proxy_port``, ``xmpp.test`` the gateway's domain; ``extra`` settings after."""
        return SipConfig.model_validate(
            {
                "listen": [
                    {"transport": "udp", "port": self.port},
                    {"transport": "tcp", "port": self.port},
                ],
                "proxy": f"sip:127.0.0.1:{proxy_port};transport=udp",
                "domains": ["xmpp.test"],
                **extra,
            }
        )

    def run(self, adapter: SipAdapter) -> None:
        """Run ``adapter`` delivering to this node, in a task."""
        self.adapter = adapter
        self.task = asyncio.create_task(adapter.run(self))

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 10)
        self.adapter = self.task = None


TAG = re.compile(rb"[xs]2[xs]-\d{5}")


@dataclass
class SipSink:
    """The SIP network's receiving users: answers 200 to every MESSAGE, records the tag in
    its body and the identity in its Call-ID (``identity@gateway-id``)."""

    endpoint: Endpoint | None = None
    received: list[tuple[str, str]] = field(default_factory=list)  # (tag, identity)
    times: list[float] = field(default_factory=list)  # monotonic arrival times
    other: list[bytes] = field(default_factory=list)

    async def handle(self, incoming: Incoming) -> None:
        request = incoming.request
        if request.method == "MESSAGE":
            found = TAG.search(request.body)
            if found is not None:
                identity = (request.get("Call-ID") or "").partition("@")[0]
                self.received.append((found.group().decode(), identity))
                self.times.append(time.monotonic())
            else:
                self.other.append(request.body)
        incoming.respond(200, "OK")

    async def start(self, port: int) -> SipSink:
        self.endpoint = Endpoint(handler=self.handle, methods=frozenset({"MESSAGE", "NOTIFY"}))
        await self.endpoint.listen("UDP", "127.0.0.1", port)
        await self.endpoint.listen("TCP", "127.0.0.1", port)
        return self

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()

    def tags(self) -> Counter[str]:
        return Counter(tag for tag, _ in self.received)


@dataclass
class SipSender:
    """A SIP user agent sending MESSAGEs through Kamailio; a final 2xx is the gateway's
    acknowledgement (RFC 3428 §7: 202 after the envelope is stored)."""

    kamailio_port: int
    endpoint: Endpoint | None = None
    acked: set[str] = field(default_factory=set)
    answers: Counter[int] = field(default_factory=Counter)
    etag: str | None = None
    publications: int = 0

    async def start(self) -> SipSender:
        async def refuse(incoming: Incoming) -> None:
            incoming.respond(403, "Forbidden")

        self.endpoint = Endpoint(handler=refuse, methods=frozenset())
        await self.endpoint.listen("UDP", "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()

    async def send(self, tag: str, recipient: str, attempt: int = 1) -> int:
        assert self.endpoint is not None
        request = Request.build(
            "MESSAGE",
            recipient,
            [
                ("From", f"<sip:bob@sip.test>;tag={tag}"),
                ("To", f"<{recipient}>"),
                ("Call-ID", f"{tag}@sender.sip.test"),
                ("CSeq", "1 MESSAGE"),  # the same on every resend: the same identity
                ("Max-Forwards", "70"),
                ("Content-Type", "text/plain;charset=utf-8"),
            ],
            f"{tag} attempt {attempt}".encode(),
        )
        try:
            response = await self.endpoint.request(
                request, Peer("UDP", "127.0.0.1", self.kamailio_port)
            )
        except Exception:  # a transaction timeout: not acknowledged
            self.answers[0] += 1
            return 0
        self.answers[response.status] += 1
        if 200 <= response.status < 300:
            self.acked.add(tag)
        return response.status

    async def publish(self, note: str) -> int:
        """PUBLISH ``sip:bob@sip.test``'s presence (RFC 3903) to Kamailio's presence
        server; later calls modify the same publication (SIP-If-Match)."""
        assert self.endpoint is not None
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>\n<presence"
            " xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@sip.test'><tuple id='t1'>"
            f"<status><basic>open</basic></status><note>{note}</note></tuple></presence>\n"
        ).encode()
        self.publications += 1
        headers = [
            ("From", f"<sip:bob@sip.test>;tag=pub{self.publications}"),
            ("To", "<sip:bob@sip.test>"),
            ("Call-ID", f"publish-{self.publications}@sender.sip.test"),
            ("CSeq", "1 PUBLISH"),
            ("Max-Forwards", "70"),
            ("Event", "presence"),
            ("Expires", "3600"),
            ("Content-Type", "application/pidf+xml"),
        ]
        if self.etag is not None:
            headers.append(("SIP-If-Match", self.etag))
        request = Request.build("PUBLISH", "sip:bob@sip.test", headers, body)
        response = await self.endpoint.request(
            request, Peer("UDP", "127.0.0.1", self.kamailio_port)
        )
        self.etag = response.get("SIP-ETag") or self.etag
        return response.status

    async def stream(
        self,
        tags: list[str],
        recipient: Callable[[int], str],
        *,
        window: int,
        rate: float,
    ) -> None:
        """Send ``tags`` at about ``rate`` per second, at most ``window`` in flight."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        slots = asyncio.Semaphore(window)
        tasks = []

        async def one(i: int) -> None:
            try:
                await self.send(tags[i], recipient(i))
            finally:
                slots.release()

        for i in range(len(tags)):
            await slots.acquire()
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
