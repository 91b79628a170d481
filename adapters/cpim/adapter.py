"""The CPIM-over-HTTP adapter's shell: the API server, the outboxes, and the peer client.

One adapter instance serves two kinds of caller (docs/http-api.md):

- **applications** (bots, services) with bearer tokens: they send operations in, and
  receive what is addressed to the addresses they watch through a stream (SSE or
  WebSocket) or a webhook, from a durable outbox;
- **peer gateways** with mutual TLS: another cpimgw delivers operations in over the same
  API, and :meth:`CpimHttpAdapter.send` delivers to it (configured URL, or RFC 3861 SRV
  lookup of the recipient's domain).

:meth:`send` puts an envelope for a watched address into the watchers' outboxes (returns
once committed) and otherwise sends it to the peer gateway serving the recipient's
domain (returns once the peer answered 202, i.e. stored it). :meth:`report` marks the
failed operation in its status resource, tells an application through its outbox, and
tells a peer gateway with a report message (RFC 3860 §3.4.1 failure carried back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from pathlib import Path
from typing import ClassVar, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from adapters.contract import (
    FULL_FIDELITY,
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Sample,
    Sent,
)
from adapters.cpim.api import Api
from adapters.cpim.client import PeerClient, client_context
from adapters.cpim.ledger import Ledger, Synchronous
from adapters.cpim.listener import Gate, GatedSite
from adapters.cpim.mapping import HttpMapper, report_of
from adapters.cpim.resolver import LABEL, Service, SrvResolver
from adapters.cpim.stream import Hub
from adapters.cpim.token import Principal, TokenBook, check_digest, digest, patterns
from adapters.cpim.webhook import Webhook
from canonical.address import Address, domain_matches
from canonical.envelope import Envelope, Operation
from canonical.errors import AdapterError, ConfigError, DeliveryError, GatewayError, Reason
from canonical.policy import MIB


class ClientConfig(BaseModel):
    """One application allowed to use the API (``[[adapters.NAME.clients]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    token_sha256: str | None = Field(default=None, description="sha256(token) in hex")
    token_env: str | None = Field(default=None, description="environment variable with the token")
    send_as: list[str] = Field(default_factory=list)
    watch: list[str] = Field(default_factory=list)
    webhook: str | None = Field(default=None, pattern=r"^https?://")
    webhook_secret: SecretStr | None = None
    webhook_secret_env: str | None = None
    rate: float = Field(default=0.0, ge=0)
    burst: float = Field(default=20.0, ge=1)


class PeerConfig(BaseModel):
    """One peer gateway (``[[adapters.NAME.peers]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="DNS name in the peer's TLS certificate")
    send_as: list[str] = Field(default_factory=list, description="addresses it may carry in")
    domains: list[str] = Field(default_factory=list, description="recipient domains sent to it")
    url: str | None = Field(default=None, pattern=r"^https?://", description="else RFC 3861 SRV")


class TlsConfig(BaseModel):
    """TLS for the listener and for the peer client (mutual TLS between gateways)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: Path
    key: Path
    ca: Path | None = None
    client_certs: Literal["none", "optional", "required"] = "optional"


class CpimHttpConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``kind = "cpim"`` (docs/http-api.md lists every key)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    listen: bool = True
    database: Path = Field(
        default=Path("cpimgw.sqlite"),
        description="the adapter's SQLite file (statuses, outboxes); may be the store's file",
    )
    synchronous: Synchronous = "full"
    tls: TlsConfig | None = None
    clients: list[ClientConfig] = Field(default_factory=list)
    peers: list[PeerConfig] = Field(default_factory=list)
    discover: bool = Field(default=False, description="RFC 3861 SRV lookup for other domains")
    dns: list[str] = Field(default_factory=list, description='DNS servers, "host:port"')
    srv_label: str = Field(default=LABEL, pattern=r"^_[A-Za-z0-9-]+$")
    max_body: int = Field(default=1 * MIB, ge=1024)
    max_connections: int = Field(default=1024, ge=1, description="open at once; more get 503")
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds for a request head (and idle keep-alive)"
    )
    body_timeout: float = Field(default=30.0, gt=0, description="seconds for a request body")
    send_timeout: float = Field(default=10.0, gt=0)
    heartbeat: float = Field(default=15.0, gt=0)
    retention: float = Field(default=7 * 86400.0, gt=0)
    webhook_initial_backoff: float = Field(default=1.0, gt=0)
    webhook_max_backoff: float = Field(default=300.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0)


def _secret(value: SecretStr | None, env: str | None, *, key: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if env is None:
        return None
    found = os.environ.get(env)
    if not found:
        raise ConfigError(f"environment variable {env} is not set", key=key, hint="export it")
    return found


def build_tokens(config: CpimHttpConfig) -> TokenBook:
    """The principals of a config (tokens hashed; the plain token never kept)."""
    clients: list[tuple[str, Principal]] = []
    for i, c in enumerate(config.clients):
        key = f"clients[{i}]"
        if (c.token_sha256 is None) == (c.token_env is None):
            raise ConfigError(
                "give exactly one of token_sha256 and token_env", key=key, hint="see http-api.md"
            )
        hashed = (
            check_digest(c.token_sha256, key=f"{key}.token_sha256")
            if c.token_sha256 is not None
            else digest(_secret(None, c.token_env, key=f"{key}.token_env") or "")
        )
        principal = Principal(
            c.name, "client", patterns(c.send_as), patterns(c.watch), c.rate, c.burst
        )
        clients.append((hashed, principal))
    peers = [(p.name, Principal(p.name, "peer", patterns(p.send_as))) for p in config.peers]
    names = [p.name for _, p in (*clients, *peers)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"names used twice: {', '.join(duplicates)}", key="clients/peers")
    return TokenBook(clients, peers)


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """TLS for the listener; with ``client_certs`` required, every caller must present a
    certificate from ``ca`` (mutual TLS, the gateway-to-gateway link)."""
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca) if tls.ca else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }[tls.client_certs]
    return context


def _nameservers(texts: list[str]) -> list[tuple[str, int]]:
    out = []
    for text in texts:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{text!r} is not host:port", key="dns", hint='e.g. "127.0.0.1:53"')
        out.append((host.strip("[]"), int(port)))
    return out


class CpimHttpAdapter(Adapter):
    """cpimgw's native CPIM side: RFC 3860/3859 operations over HTTP(S)."""

    kind: ClassVar[str] = "cpim"
    capabilities: ClassVar[frozenset[Capability]] = FULL_FIDELITY
    config_model: ClassVar[type[AdapterConfig]] = CpimHttpConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        if not isinstance(config, CpimHttpConfig):
            config = CpimHttpConfig.model_validate(config.model_dump())
        super().__init__(name, config, context)
        self.settings: CpimHttpConfig = config
        self._mapper = HttpMapper(adapter=name, policy=context.policy)
        self.tokens = build_tokens(config)
        self.ledger = Ledger(config.database, synchronous=config.synchronous)
        self.hub = Hub()
        self.gate = Gate(
            name=name,
            max_connections=config.max_connections,
            header_timeout=config.header_timeout,
            count=context.count,
            logger=context.logger,
        )
        self.api = Api(
            name=name,
            mapper=self._mapper,
            tokens=self.tokens,
            ledger=self.ledger,
            hub=self.hub,
            clock=context.clock,
            count=context.count,
            logger=context.logger,
            max_body=config.max_body,
            heartbeat=config.heartbeat,
            body_timeout=config.body_timeout,
            gate=self.gate,
            outcome=context.outcome,
        )
        tls = config.tls
        self._client_tls = (
            client_context(
                cafile=str(tls.ca) if tls.ca else None,
                certfile=str(tls.cert),
                keyfile=str(tls.key),
            )
            if tls is not None
            else None
        )
        self._server_tls = server_context(tls) if tls is not None else None
        servers = _nameservers(config.dns)
        self.srv = SrvResolver(servers, label=config.srv_label) if servers else None
        self.client = PeerClient(
            ssl_context=self._client_tls, srv=self.srv, timeout=config.send_timeout
        )
        self._hook_session: aiohttp.ClientSession | None = None
        self.webhooks: dict[str, Webhook] = {}
        for c in config.clients:
            if c.webhook is None:
                continue
            secret = _secret(c.webhook_secret, c.webhook_secret_env, key=f"{c.name}.webhook")
            if secret is None:
                raise ConfigError(
                    f"client {c.name} has a webhook but no webhook_secret(_env)",
                    key="clients",
                    hint="webhooks are always signed",
                )
            self.webhooks[c.name] = Webhook(
                principal=c.name,
                url=c.webhook,
                secret=secret.encode("utf-8"),
                ledger=self.ledger,
                session=self._hooks,
                clock=context.clock,
                logger=context.logger,
                count=context.count,
                initial_backoff=config.webhook_initial_backoff,
                max_backoff=config.webhook_max_backoff,
                timeout=config.webhook_timeout,
            )
            self.hub.listen(c.name, self.webhooks[c.name].wake)
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self.port: int | None = None

    @classmethod
    def sample(cls) -> Sample:
        return Sample(
            config=CpimHttpConfig(listen=False),
            local="im:charles@bots.example.net",
            remote="xmpp:ada@example.com",
        )

    @property
    def mapper(self) -> HttpMapper:
        return self._mapper

    def ready(self) -> bool:
        return self._ready

    def _hooks(self) -> aiohttp.ClientSession:
        if self._hook_session is None or self._hook_session.closed:
            self._hook_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._client_tls or True)
            )
        return self._hook_session

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        """Open the ledger, serve the API, run the webhooks, until :meth:`stop`."""
        await self.ledger.open()
        self.api.deliver = deliver
        self.api.outcome = self.context.outcome  # the gateway may set it after __init__
        try:
            if self.settings.listen:
                runner = web.AppRunner(self.api.app(), shutdown_timeout=2.0, access_log=None)
                await runner.setup()
                self._runner = runner
                site = GatedSite(
                    runner,
                    self.settings.host,
                    self.settings.port,
                    gate=self.gate,
                    ssl_context=self._server_tls,
                    reuse_address=True,
                )
                try:
                    await site.start()
                except OSError as exc:
                    raise AdapterError(
                        f"cannot listen on {self.settings.host}:{self.settings.port}: {exc}",
                        hint="choose a free port for the HTTP adapter",
                    ) from exc
                self.port = _bound_port(runner)
            for hook in self.webhooks.values():
                self._tasks.append(
                    asyncio.create_task(hook.run(), name=f"webhook:{hook.principal}")
                )
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="http-prune"))
            self._ready = True
            self.context.logger.info("http %s: serving on port %s", self.name, self.port)
            await self._stop.wait()
        finally:
            self._ready = False
            await self._shutdown()

    async def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        self.hub.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()
        if self._hook_session is not None:
            await self._hook_session.close()
        await self.ledger.close()

    async def _housekeeping(self) -> None:
        while True:
            try:
                dropped = await self.ledger.prune(
                    now=self.context.clock(), retention=self.settings.retention
                )
                for principal, count in dropped.items():
                    self.context.logger.warning(
                        "http %s: %d events for %s were never taken and are dropped after %gs",
                        self.name,
                        count,
                        principal,
                        self.settings.retention,
                    )
                    self.context.count("http_events_expired", adapter=self.name, client=principal)
            except GatewayError:
                self.context.logger.exception("http %s: pruning failed", self.name)
            await asyncio.sleep(min(3600.0, self.settings.retention / 10))

    # -- outbound --------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> Sent:
        """To the watchers' outboxes, else to the peer gateway serving the recipient."""
        watchers = self.tokens.watchers(envelope.recipient)
        if watchers:
            await self._to_outboxes(
                [(p.name, envelope.operation.value, envelope) for p in watchers]
            )
            return Sent(native_id=envelope.identity, detail=f"{len(watchers)} outbox(es)")
        request = self._mapper.from_canonical(envelope).value
        bases = await self._peer_urls(envelope.recipient, envelope.operation)
        return await self.client.send(bases, request)

    async def _to_outboxes(self, items: list[tuple[str, str, Envelope]]) -> None:
        try:
            await self.ledger.append(items, at=self.context.clock())
        except GatewayError as exc:
            raise DeliveryError(
                f"outbox write failed: {exc}", retryable=True, reason=Reason.UNAVAILABLE
            ) from exc
        for principal in {p for p, _, _ in items}:
            self.hub.wake(principal)

    async def _peer_urls(self, recipient: str, operation: Operation) -> list[str]:
        try:
            domain = Address.from_gateway(recipient).domain  # xmpp: as a JID (docs/addresses.md)
        except GatewayError as exc:
            raise DeliveryError(
                f"cannot route {recipient}: {exc}", retryable=False, reason=Reason.BAD_REQUEST
            ) from exc
        for peer in self.settings.peers:
            if any(domain_matches(domain, p) for p in peer.domains):
                if peer.url is not None:
                    return [peer.url]
                return await self._discover(domain, operation)
        if self.settings.discover:
            return await self._discover(domain, operation)
        raise DeliveryError(
            f"nobody watches {recipient} and no peer gateway serves {domain}",
            retryable=False,
            reason=Reason.UNKNOWN_DESTINATION,
            hint="add a watch pattern to a client, or a peer with this domain",
        )

    async def _discover(self, domain: str, operation: Operation) -> list[str]:
        if self.srv is None:
            raise DeliveryError(
                f"no DNS servers configured to look up a peer for {domain}",
                retryable=False,
                reason=Reason.UNKNOWN_DESTINATION,
                hint='set dns = ["host:port"] in the adapter\'s config',
            )
        service: Service = "_im" if operation is Operation.MESSAGE else "_pres"
        targets = await self.srv.targets(service, domain)
        scheme = "https" if self._client_tls is not None else "http"
        return [f"{scheme}://{t.host}:{t.port}" for t in targets]

    # -- failures --------------------------------------------------------------------

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        """The final failure of an operation that arrived here (RFC 3860 §3.4.1)."""
        now = self.context.clock()
        await self.ledger.failed(
            envelope.identity, reason=error.reason.value, detail=str(error), at=now
        )
        principal = self.tokens.principals.get(envelope.origin.peer or "")
        if principal is None:
            return
        report = report_of(envelope, error)
        if principal.kind == "client":
            await self._to_outboxes([(principal.name, "report", report)])
            return
        try:
            bases = await self._peer_urls(
                envelope.origin.reply_to or envelope.sender, Operation.MESSAGE
            )
            await self.client.send(bases, self._mapper.from_canonical(report).value)
        except DeliveryError as exc:
            self.context.logger.warning(
                "http %s: the failure report for %s could not reach peer %s: %s",
                self.name,
                envelope.identity,
                principal.name,
                exc,
            )


def _bound_port(runner: web.AppRunner) -> int | None:
    with contextlib.suppress(IndexError, TypeError):
        return int(runner.addresses[0][1])
    return None


__all__ = ["ClientConfig", "CpimHttpAdapter", "CpimHttpConfig", "PeerConfig", "TlsConfig"]
