"""The SIP adapter's I/O shell: cpimgw as a SIP node behind an outbound proxy.

Inbound (RFC 3428 §7, RFC 3856, RFC 6665): MESSAGE, SUBSCRIBE and NOTIFY for the domains
the gateway fronts arrive from the proxy; each is checked (RFC 3261 §8.2, size), mapped
(:mod:`adapters.sip.mapping`) and handed to ``deliver``. Only after ``deliver`` returned its
Receipt (the envelope is stored) does a MESSAGE get **202 Accepted** — the gateway relays
into another network, so it never claims delivery (RFC 3428 §7); a refusal becomes the SIP
status of ``docs/mapping/sip.md``. Bad input is answered (400, 405, 413, 415, 416, 420,
483, 501, 505) or dropped with a log line and a counter, and the adapter keeps serving.

Outbound: :meth:`SipAdapter.send` sends MESSAGE through the proxy with the Call-ID derived
from the envelope identity (the same on every resend), at most one outstanding MESSAGE
per destination URI (RFC 3428 §8) while many destinations proceed in parallel, over TCP
when the request is too large for UDP (never truncated), answering digest challenges
(RFC 8760), retrying once as text/plain after a 415 for unsigned objects. Presence: the
gateway is the presence agent for its domains (SIP watchers' SUBSCRIBEs are answered and
NOTIFYed with PIDF) and subscribes through the proxy for its users watching SIP users.

Failure reports (:meth:`SipAdapter.report`) go back to the SIP sender as an IMDN
``failed`` when the sender asked for negative delivery notifications (RFC 5438), else as
a text/plain MESSAGE from the gateway explaining the failure; both carry an RFC 3326
``Reason`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from adapters.contract import (
    FULL_FIDELITY,
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Receipt,
    Sample,
    Sent,
)
from adapters.sip import header as hdr
from adapters.sip import mapping
from adapters.sip.admission import Admission
from adapters.sip.codec import Limits, Request, Response
from adapters.sip.digest import Credential, DigestClient, DigestServer
from adapters.sip.endpoint import Endpoint, Incoming, new_tag
from adapters.sip.mapping import BodyRoute, SipMapper, delivery_error, error_response
from adapters.sip.subscribers import ClusterStore, Intent, SharedSubscriptions, Subscriptions
from adapters.sip.subscription import (
    Authorized,
    Dialog,
    Ended,
    Notifier,
    Presence,
    Subscriber,
    SubscriberEvent,
)
from adapters.sip.transaction import Timers
from adapters.sip.transport import Peer
from adapters.sip.watchers import SharedWatchers, Watchers
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import (
    AdapterError,
    ConfigError,
    DeliveryError,
    GatewayError,
    MappingError,
    ParseError,
    Reason,
)
from canonical.policy import KIB
from canonical.presence import parse_pidf

#: Seconds before a failed re-subscription of a recorded subscription is tried again.
KEEP_RETRY = 30.0
#: Initial SUBSCRIBEs per second for subscriptions taken over (or made again after a start).
TAKEOVER_RATE = 200.0

#: Methods the adapter serves (everything else: 405 or 501 from the endpoint).
METHODS = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "OPTIONS"})


class SipListen(BaseModel):
    """One listening socket: ``transport`` (udp, tcp, tls), ``host``, ``port`` (0: any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    transport: Literal["udp", "tcp", "tls"] = "udp"
    host: str = "127.0.0.1"
    port: int = Field(default=5060, ge=0, le=65535)


class SipCredential(BaseModel):
    """Digest credentials for challenges from ``realm`` (None: any realm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str = Field(min_length=1)
    password: SecretStr
    realm: str | None = None


class SipRoute(BaseModel):
    """Body type toward recipients matching ``pattern`` (domain glob or SIP URI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pattern: str = Field(min_length=1)
    body_type: Literal["message/cpim", "text/plain"]


class SipServerAuth(BaseModel):
    """Optional digest challenge of inbound requests (RFC 3261 §22.1, RFC 8760)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    realm: str = Field(min_length=1)
    users: dict[str, SecretStr]
    algorithms: list[Literal["SHA-256", "SHA-512-256", "MD5"]] = ["SHA-256", "MD5"]


class SipConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``kind = "sip"`` (docs/sip.md lists every key)."""

    listen: list[SipListen] = Field(
        default_factory=lambda: [SipListen(transport="udp"), SipListen(transport="tcp")]
    )
    proxy: str = Field(
        min_length=5,
        description="outbound proxy: sip:host:port;transport=udp|tcp|tls (or sips:)",
    )
    domains: list[str] = Field(min_length=1, description="the domains this gateway fronts")
    contact_user: str = "cpimgw"
    contact_host: str | None = None
    credentials: list[SipCredential] = Field(default_factory=list)
    server_auth: SipServerAuth | None = None
    tls_ca_file: str | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    t1: float = Field(default=0.5, gt=0, le=10)
    t2: float = Field(default=4.0, gt=0, le=60)
    t4: float = Field(default=5.0, gt=0, le=60)
    body_types: list[SipRoute] = Field(default_factory=list)
    default_body_type: Literal["message/cpim", "text/plain"] = "message/cpim"
    max_message_size: int = Field(default=64 * KIB, ge=1300, le=16 * 1024 * KIB)
    udp_max_size: int = Field(default=1300, ge=500, le=65000)
    tcp_fallback: bool = True
    subscription_expires: int = Field(default=3600, ge=60)
    max_subscription_expires: int = Field(default=3600, ge=60)
    max_headers: int = Field(default=256, ge=16)
    max_connections: int = Field(default=1024, ge=1, description="inbound TCP/TLS connections")
    idle_timeout: float = Field(default=300.0, gt=0, description="close quiet inbound streams")
    overload_delay: float = Field(
        default=1.0, ge=0, le=60, description="503 to new requests past this answer delay (0: off)"
    )
    overload_pending: int = Field(
        default=1000, ge=0, description="503 to new requests past this many in the core (0: off)"
    )
    overload_retry_after: int = Field(default=5, ge=1, le=3600, description="Retry-After of 503s")
    notice_from: str | None = None
    user_agent: str = "cpimgw"

    @field_validator("proxy")
    @classmethod
    def _proxy_is_sip(cls, value: str) -> str:
        proxy_peer(value)
        return value

    @field_validator("domains")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [d.lower().rstrip(".") for d in value]


def proxy_peer(uri: str) -> Peer:
    """The transport address of a proxy URI (RFC 3263 without DNS: host, port, transport)."""
    try:
        parsed = hdr.parse_uri(uri)
    except ParseError as exc:
        raise ConfigError(f"proxy {uri!r} is not a SIP URI: {exc}", key="proxy") from exc
    if not parsed.is_sip:
        raise ConfigError(f"proxy {uri!r} is not a sip: or sips: URI", key="proxy")
    transport = (parsed.param("transport") or ("tls" if parsed.scheme == "sips" else "udp")).upper()
    if transport not in ("UDP", "TCP", "TLS"):
        raise ConfigError(f"proxy transport {transport} is not udp, tcp or tls", key="proxy")
    default = 5061 if transport == "TLS" else 5060
    return Peer(transport, parsed.host, parsed.port or default)


@dataclass(slots=True)
class _Destination:
    """RFC 3428 §8: one outstanding MESSAGE per destination URI."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SipAdapter(Adapter):
    """cpimgw's SIP side: a SIP node behind an outbound proxy, fronting ``domains``."""

    kind: ClassVar[str] = "sip"
    capabilities: ClassVar[frozenset[Capability]] = FULL_FIDELITY
    config_model: ClassVar[type[AdapterConfig]] = SipConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        if not isinstance(config, SipConfig):
            config = SipConfig.model_validate(config.model_dump())
        super().__init__(name, config, context)
        self.settings: SipConfig = config
        self.proxy = proxy_peer(config.proxy)
        self.log = context.logger
        self.count = context.count
        policy = context.policy.replace(
            max_message_size=min(context.policy.max_message_size, config.max_message_size)
        )
        self._mapper = SipMapper(
            gateway_id=context.gateway_id,
            policy=policy,
            routes=[BodyRoute(r.pattern, r.body_type) for r in config.body_types],
            default_body_type=config.default_body_type,
            limits=self._limits(),
            notice_from=config.notice_from or f"sip:postmaster@{config.domains[0]}",
        )
        self._digest = DigestClient(
            [
                Credential(c.username, c.password.get_secret_value(), c.realm)
                for c in config.credentials
            ]
        )
        self._server_auth: DigestServer | None = None
        if config.server_auth is not None:
            self._server_auth = DigestServer(
                realm=config.server_auth.realm,
                secret=secrets.token_bytes(32),
                users={u: p.get_secret_value() for u, p in config.server_auth.users.items()},
                algorithms=tuple(config.server_auth.algorithms),
            )
        self.endpoint: Endpoint | None = None
        self._deliver: Deliver | None = None
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._destinations: dict[str, _Destination] = {}
        self._subscribers: dict[tuple[str, str], Subscriber] = {}
        #: SIP watchers' subscriptions (we are the notifier); shared by a cluster's nodes
        #: once :meth:`share` gave it the store. Their times are wall-clock seconds.
        self._watchers: Watchers = Watchers()
        #: the subscriptions we hold, recorded in the cluster's store once :meth:`share`
        #: gave it, so a surviving node takes them over (adapters/sip/subscribers.py)
        self._intents: Subscriptions = Subscriptions()
        self._adopted = False  # this node's recorded subscriptions made again after start
        self._housekeeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._chains: dict[tuple[str, str], asyncio.Task[Response]] = {}
        self._fronted_hosts: dict[str, bool] = {}  # host -> one of our domains?
        self._admission = Admission(
            max_pending=config.overload_pending, max_delay=config.overload_delay
        )

    @classmethod
    def sample(cls) -> Sample:
        return Sample(
            config=SipConfig(proxy="sip:127.0.0.1:5060;transport=udp", domains=["example.com"]),
            local="sip:charles@example.net",
            remote="xmpp:ada@example.com",
        )

    @property
    def mapper(self) -> SipMapper:
        return self._mapper

    def ready(self) -> bool:
        return self._started.is_set() and not self._stopped.is_set()

    def _limits(self) -> Limits:
        return Limits(
            max_message=self.settings.max_message_size + 16 * KIB,
            max_headers=self.settings.max_headers,
        )

    def _timers(self) -> Timers:
        return Timers(t1=self.settings.t1, t2=self.settings.t2, t4=self.settings.t4)

    def _tls_contexts(self) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
        cfg = self.settings
        client = ssl.create_default_context(cafile=cfg.tls_ca_file)
        if not cfg.tls_verify:
            self.log.warning("SIP TLS certificate verification is OFF (tls_verify = false)")
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
        server: ssl.SSLContext | None = None
        if cfg.tls_cert_file and cfg.tls_key_file:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        return server, client

    # ------------------------------------------------------------------ lifecycle

    async def run(self, deliver: Deliver) -> None:
        """Listen, serve until :meth:`stop`."""
        self._deliver = self._measured(deliver)
        try:
            tls_server, tls_client = self._tls_contexts()
        except (OSError, ssl.SSLError) as exc:
            raise AdapterError(
                f"SIP TLS setup failed: {exc}",
                hint="check tls_ca_file, tls_cert_file and tls_key_file",
            ) from exc
        endpoint = Endpoint(
            handler=self._handle,
            methods=METHODS,
            timers=self._timers(),
            limits=self._limits(),
            tls_server=tls_server,
            tls_client=tls_client,
            tls_server_name=self.settings.tls_server_name,
            user_agent=self.settings.user_agent,
            logger=self.log,
            count=self.count,
            udp_limit=self.settings.udp_max_size
            if self.settings.tcp_fallback
            else 10**9,  # no fallback: refused in send() instead
        )
        self.endpoint = endpoint
        endpoint.transports.max_connections = self.settings.max_connections
        endpoint.transports.idle_timeout = self.settings.idle_timeout
        try:
            for item in self.settings.listen:
                bound = await endpoint.listen(item.transport, item.host, item.port)
                self.log.info("SIP listening on %s", bound)
        except OSError as exc:
            await endpoint.close()
            raise AdapterError(
                f"cannot listen for SIP: {exc}", hint="pick free ports in [adapters.*].listen"
            ) from exc
        self._housekeeper = asyncio.create_task(self._housekeeping())
        self._started.set()
        await self._stopped.wait()

    async def started(self) -> None:
        """Wait until every listener is bound."""
        await self._started.wait()

    def local(self, transport: str = "UDP") -> Peer:
        if self.endpoint is None:
            raise AdapterError("the SIP adapter is not running")
        return self.endpoint.local(transport)

    async def stop(self) -> None:
        """Tell SIP watchers to come back later (``deactivated``), finish in-flight
        requests (their handlers answer), close the sockets."""
        if self._stopped.is_set():
            return
        endpoint = self.endpoint
        held = self._watchers.held()
        if endpoint is not None and held and not self._watchers.shared:
            # one node: tell watchers to come back later; in a cluster the others serve them
            now = time.time()
            notices = [
                self._in_dialog(n.dialog, n.notify(now, state="terminated", reason="deactivated"))
                for n in held
            ]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*notices, return_exceptions=True), 1.0)
        if endpoint is not None and self._intents.shared and self._subscribers:
            # a cluster: end our dialogs, keep their records; once this node's heartbeat is
            # gone a surviving node takes them and subscribes again (docs/scaling.md)
            ends = [
                self._in_dialog(s.dialog, request)
                for s in list(self._subscribers.values())
                if s.dialog is not None and (request := s.unsubscribe_request()) is not None
            ]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*ends, return_exceptions=True), 1.0)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        if endpoint is not None:
            await endpoint.close()
        for task in list(self._tasks):
            task.cancel()
        self._stopped.set()

    def _measured(self, deliver: Deliver) -> Deliver:
        """``deliver`` timed for admission control (:mod:`adapters.sip.admission`): every
        call the core answers, refused or not, tells how long it takes the core to answer."""
        admission = self._admission
        loop = asyncio.get_running_loop()

        async def measured(envelope: Envelope) -> Receipt:
            began = admission.begin(loop.time())
            try:
                return await deliver(envelope)
            finally:
                admission.end(began, loop.time())

        return measured

    def _shed(self, incoming: Incoming, now: float) -> None:
        """Refuse a new request while overloaded: 503 with Retry-After (RFC 3261 §21.5.4,
        RFC 6357 §3), counted, logged at most every ``LOG_INTERVAL`` seconds."""
        admission = self._admission
        method = incoming.request.method
        self.count("sip_overload_rejections_total", method=method)
        incoming.respond(
            503,
            "Service Unavailable",
            extra=(
                ("Retry-After", str(self.settings.overload_retry_after)),
                ("Warning", '399 cpimgw "overloaded: the gateway cannot take it in time"'),
            ),
        )
        refused = admission.refuse(now)
        if refused:
            self.log.warning(
                "SIP overload: %d new request(s) refused with 503 since the last such line "
                "(%d in the core, the last answered after %.0f ms; overload_pending = %d, "
                "overload_delay = %g s); requests already taken are answered",
                refused,
                admission.pending,
                admission.delay * 1000,
                admission.max_pending,
                admission.max_delay,
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ inbound

    def _origin(self, incoming: Incoming) -> Origin:
        return Origin(adapter=self.name, peer=str(incoming.peer))

    def _fronted(self, uri: hdr.Uri) -> bool:
        found = self._fronted_hosts.get(uri.host)
        if found is None:
            host = uri.host.lower().rstrip(".")
            found = any(
                host == d or (d.startswith("*.") and host.endswith(d[1:]))
                for d in self.settings.domains
            )
            if len(self._fronted_hosts) >= 1024:
                self._fronted_hosts.clear()
            self._fronted_hosts[uri.host] = found
        return found

    def _refuse(self, incoming: Incoming, error: GatewayError) -> None:
        max_forwards = None
        with contextlib.suppress(ParseError):
            max_forwards = incoming.request.max_forwards
        status, phrase, extra = error_response(error, max_forwards=max_forwards)
        self.count("sip_refused_total", status=str(status), reason=error.reason.value)
        self.log.info(
            "refused %s from %s: %d %s (%s)",
            incoming.request.method,
            incoming.peer,
            status,
            phrase,
            error,
        )
        incoming.respond(status, phrase, extra=extra)

    async def _handle(self, incoming: Incoming) -> None:
        request = incoming.request
        if request.method == "OPTIONS":
            incoming.respond(
                200,
                "OK",
                extra=(
                    ("Allow", ", ".join(sorted(METHODS | {"ACK", "CANCEL"}))),
                    ("Accept", mapping.ACCEPTED_TYPES),
                    ("Allow-Events", "presence"),
                ),
            )
            return
        if request.method == "MESSAGE" or (request.method == "SUBSCRIBE" and not request.to.tag):
            # new work (not in a dialog): refused at once while the core cannot take it in
            # time; responses, NOTIFYs and refreshes keep flowing (docs/sip.md "Overload")
            now = asyncio.get_running_loop().time()
            if self._admission.overloaded(now):
                self._shed(incoming, now)
                return
        if self._server_auth is not None and not self._authenticated(incoming):
            return
        try:
            if request.method == "MESSAGE":
                await self._on_message(incoming)
            elif request.method == "SUBSCRIBE":
                await self._on_subscribe(incoming)
            elif request.method == "NOTIFY":
                await self._on_notify(incoming)
        except GatewayError as exc:
            if not incoming.answered:
                self._refuse(incoming, exc)

    def _authenticated(self, incoming: Incoming) -> bool:
        auth = self._server_auth
        assert auth is not None
        now = asyncio.get_running_loop().time()
        verdict = auth.verify(incoming.request, now)
        if verdict.ok:
            return True
        self.count("sip_auth_challenges_total")
        incoming.respond(401, "Unauthorized", extra=auth.challenge(now, stale=verdict.stale))
        return False

    async def _on_message(self, incoming: Incoming) -> None:
        request = incoming.request
        if not self._fronted(request.request_uri):
            raise GatewayError(
                f"{request.request_uri.host} is not a domain this gateway fronts",
                reason=Reason.UNKNOWN_DESTINATION,
                hint="route only the gateway's domains to it",
            )
        if len(request.body) > self.settings.max_message_size:
            raise GatewayError(
                f"MESSAGE body of {len(request.body)} bytes exceeds the gateway's limit of "
                f"{self.settings.max_message_size}",
                reason=Reason.TOO_LARGE,
                hint="send a smaller message",
            )
        mapped = self._mapper.to_canonical(
            request, origin=self._origin(incoming), received_at=self.context.clock()
        )
        for loss in mapped.losses:
            self.count("sip_losses_total", field=loss.field)
        assert self._deliver is not None
        receipt = await self._deliver(mapped.value)
        self.count("sip_messages_in_total", duplicate=str(receipt.duplicate).lower())
        incoming.respond(202, "Accepted")

    # -- presence, SIP watchers of our users (we are the notifier)

    def _contact(self, transport: str = "UDP") -> str:
        assert self.endpoint is not None
        local = self.endpoint.local(transport)
        host = self.settings.contact_host or local.host
        suffix = "" if transport.upper() == "UDP" else f";transport={transport.lower()}"
        return f"<sip:{self.settings.contact_user}@{host}:{local.port}{suffix}>"

    async def _on_subscribe(self, incoming: Incoming) -> None:
        request = incoming.request
        now = time.time()
        to_tag = request.to.tag
        assert self._deliver is not None
        if to_tag is not None:
            key = (request.call_id, to_tag, request.from_.tag or "")
            notifier = await self._watchers.get(key)  # any node's, in a cluster
            if notifier is None:
                incoming.respond(481, "Subscription Does Not Exist")
                return
            if not notifier.dialog.accept_remote(request):
                incoming.respond(500, "Server Internal Error", extra=(("Retry-After", "1"),))
                return
            mapped = self._mapper.subscribe_to_canonical(
                request, origin=self._origin(incoming), received_at=self.context.clock()
            )
            await self._deliver(mapped.value)
            granted = notifier.refresh(request, now, max_expires=self._max_expires())
            incoming.to_tag = to_tag
            incoming.respond(
                200,
                "OK",
                extra=(
                    ("Expires", str(granted)),
                    ("Contact", self._contact(incoming.peer.transport)),
                ),
            )
            if not await self._reserve(notifier):
                return  # ended meanwhile (through another node)
            if granted == 0:
                notice = notifier.notify(now, state="terminated", reason="timeout")
                await self._watchers.remove(notifier)
            else:
                notice = notifier.notify(now)
                await self._watchers.save(notifier)
            self._in_dialog(notifier.dialog, notice)
            return
        if not self._fronted(request.request_uri):
            raise GatewayError(
                f"{request.request_uri.host} is not a domain this gateway fronts",
                reason=Reason.UNKNOWN_DESTINATION,
            )
        event = request.event
        if event is None or event.package != "presence":
            incoming.respond(489, "Bad Event", extra=(("Allow-Events", "presence"),))
            return
        mapped = self._mapper.subscribe_to_canonical(
            request, origin=self._origin(incoming), received_at=self.context.clock()
        )
        await self._deliver(mapped.value)
        notifier, granted = Notifier.accept(
            request,
            local_tag=incoming.to_tag,
            contact=self._contact(incoming.peer.transport),
            now=now,
            max_expires=self._max_expires(),
        )
        incoming.respond(
            200,
            "OK",
            extra=(("Expires", str(granted)), ("Contact", self._contact(incoming.peer.transport))),
        )
        self.count("sip_watchers_total", fetch=str(notifier.fetch).lower())
        if notifier.fetch:
            # RFC 6665 §4.4.3: one NOTIFY, then the subscription ends; wait briefly for the
            # core's answer (the last known state) before sending it without one.
            notifier.expires_at = now + 2.0
            await self._watchers.save(notifier)
            return
        await self._watchers.save(notifier)
        if await self._reserve(notifier):
            self._in_dialog(notifier.dialog, notifier.notify(now))  # pending

    def _max_expires(self) -> int:
        return self.settings.max_subscription_expires

    async def _reserve(self, notifier: Notifier) -> bool:
        """Ready ``notifier`` for its next in-dialog request from this node: a CSeq no other
        node takes (RFC 3261 §12.2.1.1) and this node's Contact (RFC 6665 §4.2.2: a NOTIFY
        refreshes the remote target, so the watcher's refreshes follow a live node).
        False when the subscription is gone."""
        if not await self._watchers.reserve(notifier):
            return False
        self._own_contact(notifier)
        return True

    def _own_contact(self, notifier: Notifier) -> None:
        """In a cluster (without a shared ``contact_host``), put this node's Contact on
        ``notifier``'s dialog, on the transport the dialog's Contact names."""
        if self._watchers.shared and not self.settings.contact_host:
            contact = hdr.parse_name_addr(notifier.dialog.contact).uri
            notifier.dialog.contact = self._contact(contact.param("transport") or "UDP")

    def share(self, store: ClusterStore) -> None:
        """Keep SIP watchers' subscriptions in the cluster's shared store (called by
        ``gateway.cluster.watch`` before :meth:`run`): any node can then notify a watcher
        and answer its refresh, whichever node accepted the SUBSCRIBE (RFC 6665 §4.2).
        Record our own subscriptions there too, so a surviving node takes over a dead
        node's (RFC 6665 §4.1: a new dialog for the same watcher and presentity)."""
        self._watchers = SharedWatchers(store)
        self._intents = SharedSubscriptions(store)

    # -- presence, our users watching SIP users (we are the subscriber)

    async def _on_notify(self, incoming: Incoming) -> None:
        request = incoming.request
        now = asyncio.get_running_loop().time()
        subscriber = next((s for s in self._subscribers.values() if s.matches(request)), None)
        if subscriber is None:
            incoming.respond(481, "Subscription Does Not Exist")
            return
        media = request.content_type
        if request.body and media is not None and media.essence == PIDF:
            # Read before accepting (RFC 3863 via canonical.xmldoc: no DTD, bounded): a
            # document no watcher could be given is refused here with 400 and its XML_*
            # code, not answered 200 and dropped later.
            parse_pidf(request.body, policy=self.context.policy)
        status, events = subscriber.on_notify(request, now)
        if status != 200:
            incoming.respond(status, "Bad Request" if status == 400 else "Server Internal Error")
            return
        envelopes = self._subscriber_envelopes(subscriber, request, events)
        assert self._deliver is not None
        for envelope in envelopes:
            await self._deliver(envelope)
        incoming.to_tag = request.to.tag or incoming.to_tag
        incoming.respond(200, "OK")
        self._after_events(subscriber, events, now)

    def _subscriber_envelopes(
        self, subscriber: Subscriber, request: Request, events: list[SubscriberEvent]
    ) -> list[Envelope]:
        out: list[Envelope] = []
        origin = Origin(
            adapter=self.name,
            native_id=subscriber.call_id,
            reply_to=subscriber.presentity,
            context={"method": "NOTIFY"},
        )
        base = self._mapper.notify_to_canonical(
            request, origin=origin, received_at=self.context.clock()
        ).value
        presentity = hdr.parse_uri(subscriber.presentity).address_of_record
        for event in events:
            if isinstance(event, Authorized):
                out.append(
                    Envelope(
                        operation=Operation.AUTHORIZE,
                        sender=presentity,
                        recipient=subscriber.owner or subscriber.watcher,
                        payload=None,
                        identity=identity_of(base.identity, "authorize", str(event.granted)),
                        origin=origin,
                        received_at=base.received_at,
                        granted=event.granted,
                    )
                )
            elif isinstance(event, Presence) and not subscriber.unsubscribing:
                payload = None
                if event.body is not None:
                    payload = Payload(event.content_type or PIDF, event.body)
                out.append(
                    base.replace(
                        operation=Operation.NOTIFY,
                        granted=None,
                        sender=presentity,
                        recipient=subscriber.owner or subscriber.watcher,
                        payload=payload,
                    )
                )
        return out

    def _after_events(
        self, subscriber: Subscriber, events: list[SubscriberEvent], now: float
    ) -> None:
        for event in events:
            if isinstance(event, Ended):
                key = (subscriber.watcher, subscriber.presentity)
                if self._subscribers.get(key) is subscriber:
                    del self._subscribers[key]
                if subscriber.unsubscribing:
                    continue
                if event.retry_at is not None:
                    self.count("sip_resubscribes_total", reason=str(event.reason))
                    self._spawn(self._resubscribe(subscriber, event.retry_at - now))
                elif self._intents.shared:  # over for good (§4.1.3): its record too
                    self._spawn(self._forget(key))

    async def _resubscribe(self, old: Subscriber, delay: float) -> None:
        await self._keep(Intent(old.watcher, old.presentity, old.owner, old.expires), delay)

    async def _keep(self, intent: Intent, delay: float = 0.0) -> None:
        """Subscribe for ``intent`` again after ``delay`` seconds (RFC 6665 §4.1.3), if this
        node still holds it (in a cluster another node may have ended or taken it); a
        retryable failure is tried again later, a final one ends the record."""
        await asyncio.sleep(max(0.0, delay))
        key = intent.key
        if key in self._subscribers or self._stopped.is_set():
            return
        try:
            await self._subscribe(
                intent.watcher,
                intent.presentity,
                intent.expires,
                identity=None,
                owner=intent.owner,
                kept=True,
            )
        except GatewayError as exc:
            self.log.warning(
                "re-subscribing %s to %s failed: %s", intent.watcher, intent.presentity, exc
            )
            retryable = isinstance(exc, DeliveryError) and exc.retryable
            if retryable and self._intents.shared and not self._stopped.is_set():
                after = exc.retry_after if isinstance(exc, DeliveryError) else None
                wait = max(KEEP_RETRY, after or 0.0)
                self._spawn(self._keep(intent, wait))

    async def _forget(self, key: tuple[str, str]) -> None:
        try:
            await self._intents.forget(key, only_mine=True)
        except GatewayError as exc:
            self.log.warning("the record of the ended subscription %s stays: %s", key, exc)

    async def _end(self, subscriber: Subscriber) -> None:
        """End our dialog with ``Expires: 0`` (RFC 6665 §4.1.2.3), without re-subscribing."""
        request = subscriber.unsubscribe_request()
        if request is None or subscriber.dialog is None:
            key = (subscriber.watcher, subscriber.presentity)
            if self._subscribers.get(key) is subscriber:
                del self._subscribers[key]
            return
        with contextlib.suppress(GatewayError):
            response = await self._in_dialog(subscriber.dialog, request)
            subscriber.on_response(response, asyncio.get_running_loop().time())

    async def _check_subscriptions(self) -> None:
        """A cluster's subscriptions (adapters/sip/subscribers.py): after a start, subscribe
        again for what this node's name still holds; end the dialogs whose subscription
        another node ended or took; take over dead nodes' subscriptions with new dialogs."""
        if not self._adopted:
            for i, intent in enumerate(await self._intents.mine()):
                if intent.key not in self._subscribers:
                    self._spawn(self._keep(intent, i / TAKEOVER_RATE))
            self._adopted = True
        for key in await self._intents.taken_from_me():
            subscriber = self._subscribers.get(key)
            if subscriber is not None:
                self._spawn(self._end(subscriber))
        taken = await self._intents.take_orphans()
        if taken:
            self.log.warning("taking over %d SIP subscriptions of a dead node", len(taken))
        for i, intent in enumerate(taken):
            self.count("sip_subscriptions_taken_over_total")
            if intent.key not in self._subscribers:  # paced: no SUBSCRIBE storm at the server
                self._spawn(self._keep(intent, i / TAKEOVER_RATE))

    async def _subscribe(
        self,
        watcher: str,
        presentity: str,
        expires: int,
        *,
        identity: str | None,
        owner: str = "",
        kept: bool = False,
    ) -> Sent:
        """An initial SUBSCRIBE (RFC 6665 §4.1.2.1), recorded in a cluster's store first;
        a failure ends the record, unless ``kept`` (a re-subscription of a recorded one)
        and retryable: then the caller tries again."""
        assert self.endpoint is not None
        word = mapping.call_id_word
        call_id = (
            f"{word(identity or secrets.token_hex(12))}-{new_tag()}@{word(self.context.gateway_id)}"
        )
        subscriber = Subscriber(
            watcher=watcher,
            presentity=presentity,
            call_id=call_id,
            owner=owner,
            local_tag=new_tag(),
            contact=self._contact(self.proxy.transport),
            expires=expires,
        )
        key = (watcher, presentity)
        if not await self._intents.record(Intent(watcher, presentity, owner, expires), kept=kept):
            return Sent(detail="the SIP subscription was ended or taken by another node")
        self._subscribers[key] = subscriber
        request = subscriber.initial_request()
        try:
            response = await self.endpoint.request(request, self.proxy, digest=self._digest)
        except GatewayError:
            if self._subscribers.get(key) is subscriber:
                del self._subscribers[key]
            raise
        now = asyncio.get_running_loop().time()
        events = subscriber.on_response(response, now)
        if response.status >= 300:
            if self._subscribers.get(key) is subscriber:
                del self._subscribers[key]
            error = delivery_error(response, target=presentity)
            if not (kept and error.retryable):
                await self._forget(key)
            raise error
        self._after_events(subscriber, events, now)
        return Sent(native_id=subscriber.call_id, detail=f"{response.status} {response.reason}")

    async def _housekeeping(self) -> None:
        """Refresh our subscriptions before they expire, end watchers' that expired."""
        interval = max(0.05, min(1.0, self.settings.t1 * 2))
        while True:
            await asyncio.sleep(interval)
            now = asyncio.get_running_loop().time()
            for subscriber in list(self._subscribers.values()):
                if subscriber.refresh_at is not None and now >= subscriber.refresh_at:
                    self._spawn(self._refresh(subscriber))
                elif subscriber.expires_at is not None and now >= subscriber.expires_at:
                    events = subscriber.expire(now)
                    self._after_events(subscriber, events, now)
            try:
                await self._expire_watchers(time.time())
            except Exception:  # the shared store unreachable: try again next round
                self.log.exception("expiring SIP watchers' subscriptions failed")
            if self._intents.due(now):
                try:
                    await self._check_subscriptions()
                except Exception:  # the shared store unreachable: try again next round
                    self.log.exception("checking the cluster's SIP subscriptions failed")

    async def _expire_watchers(self, now: float) -> None:
        """End SIP watchers' subscriptions that ran out (RFC 6665 §4.2.2); in a cluster,
        only those not refreshed through another node meanwhile, and by one node."""
        for held in self._watchers.held():
            if now < held.expires_at:
                continue
            notifier = await self._watchers.expire(held, now)
            if notifier is None:
                continue
            self._own_contact(notifier)  # the CSeq was reserved by expire()
            notice = notifier.notify(now, state="terminated", reason="timeout")
            self._in_dialog(notifier.dialog, notice)
            if not notifier.fetch:
                self._spawn(self._deliver_unsubscribe(notifier))

    async def _deliver_unsubscribe(self, notifier: Notifier) -> None:
        assert self._deliver is not None
        envelope = Envelope(
            operation=Operation.UNSUBSCRIBE,
            sender=notifier.watcher,
            recipient=notifier.presentity,
            payload=None,
            identity=identity_of("sip", notifier.dialog.call_id, "expired"),
            origin=Origin(adapter=self.name, native_id=notifier.dialog.call_id),
            received_at=self.context.clock(),
        )
        try:
            await self._deliver(envelope)
        except GatewayError as exc:
            self.log.warning("expired subscription of %s not reported: %s", notifier.watcher, exc)

    async def _refresh(self, subscriber: Subscriber) -> None:
        assert self.endpoint is not None
        request = subscriber.refresh_request()
        if request is None or subscriber.dialog is None:
            return
        try:
            response = await self._in_dialog(subscriber.dialog, request)
        except DeliveryError as exc:
            self.log.warning("refresh of %s failed: %s", subscriber.presentity, exc)
            subscriber.refresh_at = asyncio.get_running_loop().time() + 5.0
            return
        now = asyncio.get_running_loop().time()
        events = subscriber.on_response(response, now)
        if any(isinstance(e, Authorized) for e in events):
            assert self._deliver is not None
            try:
                await self._deliver(
                    Envelope(
                        operation=Operation.AUTHORIZE,
                        sender=subscriber.presentity,
                        recipient=subscriber.owner or subscriber.watcher,
                        payload=None,
                        identity=identity_of("sip", subscriber.call_id, "refused"),
                        origin=Origin(adapter=self.name, native_id=subscriber.call_id),
                        received_at=self.context.clock(),
                        granted=False,
                    )
                )
            except GatewayError as exc:  # the watcher keeps its last state; say why
                self.log.warning(
                    "sip %s: the refusal of %s's presence to %s on refresh was not taken: %s",
                    self.name,
                    subscriber.presentity,
                    subscriber.owner or subscriber.watcher,
                    exc,
                )
                self.count("sip_refusals_dropped_total", adapter=self.name)
        self._after_events(subscriber, events, now)

    def _in_dialog(self, dialog: Dialog, request: Request) -> asyncio.Task[Response]:
        """Send an in-dialog request after the dialog's previous one completed, in the order
        of the calls (CSeq order; RFC 6665 §4.2.2: one NOTIFY outstanding per dialog)."""
        key = (dialog.call_id, dialog.local_tag)
        previous = self._chains.get(key)

        async def run() -> Response:
            if previous is not None:
                await asyncio.wait([previous])
            return await self._send_in_dialog(dialog, request)

        task = asyncio.ensure_future(run())
        self._chains[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[Response]) -> None:
            self._tasks.discard(finished)
            if self._chains.get(key) is finished:
                del self._chains[key]
            if not finished.cancelled() and finished.exception() is not None:
                self.log.info("in-dialog %s failed: %s", request.method, finished.exception())

        task.add_done_callback(done)
        return task

    async def _send_in_dialog(self, dialog: Dialog, request: Request) -> Response:
        """An in-dialog request to its next hop (top Route or remote target, §12.2.1.1)."""
        assert self.endpoint is not None
        hop = dialog.next_hop()
        transport = (hop.param("transport") or self.proxy.transport).upper()
        peer = Peer(transport, hop.host, hop.port or (5061 if transport == "TLS" else 5060))
        response = await self.endpoint.request(request, peer, digest=self._digest)
        if response.status >= 300:
            self.count("sip_in_dialog_failures_total", status=str(response.status))
            self.log.info("%s in dialog answered %d", request.method, response.status)
        return response

    # ------------------------------------------------------------------ outbound

    async def send(self, envelope: Envelope) -> Sent:
        if self.endpoint is None or not self._started.is_set():
            raise DeliveryError(
                "the SIP adapter is not running", retryable=True, reason=Reason.UNAVAILABLE
            )
        op = envelope.operation
        if op is Operation.MESSAGE:
            return await self._send_message(envelope)
        if op is Operation.SUBSCRIBE:
            return await self._subscribe_for(envelope)
        if op is Operation.UNSUBSCRIBE:
            return await self._unsubscribe(envelope)
        if op in (Operation.NOTIFY, Operation.AUTHORIZE):
            return await self._notify_watchers(envelope)
        raise MappingError(f"operation {op} has no SIP form", reason=Reason.UNSUPPORTED_FEATURE)

    async def _subscribe_for(self, envelope: Envelope) -> Sent:
        watcher = self._watcher(envelope)
        presentity = mapping.sip_address(envelope.recipient)
        if envelope.attributes.get("subscription.refresh") == "restart":
            # the core's re-subscription after a start: a node of the cluster that holds
            # it already (or takes it over from a dead one) keeps its dialog
            holder = await self._intents.holder((watcher, presentity))
            if holder is not None:
                return Sent(detail=f"the SIP subscription is held by node {holder}")
        duration = envelope.duration
        expires = self.settings.subscription_expires if duration is None else duration
        return await self._subscribe(
            watcher, presentity, expires, identity=envelope.identity, owner=envelope.sender
        )

    def _watcher(self, envelope: Envelope) -> str:
        return str(hdr.parse_uri(mapping.sip_address(envelope.sender)).address_of_record)

    async def _unsubscribe(self, envelope: Envelope) -> Sent:
        key = (self._watcher(envelope), mapping.sip_address(envelope.recipient))
        holder = await self._intents.forget(key)  # in a cluster: whichever node holds it
        subscriber = self._subscribers.get(key)
        if subscriber is None:
            if holder is not None:
                return Sent(detail=f"the SIP subscription held by node {holder} ends there")
            return Sent(detail="no SIP subscription to end")
        request = subscriber.unsubscribe_request()
        if request is None or subscriber.dialog is None:
            del self._subscribers[key]
            return Sent(detail="subscription ended before a dialog existed")
        response = await self._in_dialog(subscriber.dialog, request)
        now = asyncio.get_running_loop().time()
        subscriber.on_response(response, now)
        if response.status >= 300 and response.status != 481:
            raise delivery_error(response, target=subscriber.presentity)
        return Sent(native_id=subscriber.call_id, detail=f"{response.status} {response.reason}")

    async def _notify_watchers(self, envelope: Envelope) -> Sent:
        presentity = hdr.parse_uri(mapping.sip_address(envelope.sender)).address_of_record
        watcher = hdr.parse_uri(mapping.sip_address(envelope.recipient)).address_of_record
        targets = [
            n
            for n in await self._watchers.of_presentity(presentity)  # any node's, in a cluster
            if watcher in (n.watcher, presentity)
        ]
        if not targets:
            return Sent(detail="no SIP watcher subscription: nothing to notify")
        now = time.time()
        sent = 0
        for notifier in targets:
            if not await self._reserve(notifier):
                continue  # ended meanwhile
            if envelope.operation is Operation.AUTHORIZE:
                if envelope.granted:
                    request = notifier.notify(now, state="active")
                else:
                    request = notifier.notify(now, state="terminated", reason="rejected")
            else:
                payload = envelope.payload
                state = envelope.attributes.get("subscription.state", "active")
                terminated = state.startswith("terminated") or notifier.fetch
                request = notifier.notify(
                    now,
                    state="terminated" if terminated else "active",
                    reason=envelope.attributes.get("subscription.reason")
                    or ("timeout" if notifier.fetch else None),
                    content_type=None if payload is None else payload.content_type,
                    body=None if payload is None else payload.body,
                )
            if notifier.terminated:
                await self._watchers.remove(notifier)
            else:
                await self._watchers.save(notifier)  # state and last document, for refreshes
            response = await self._in_dialog(notifier.dialog, request)
            if response.status == 481 or response.status >= 300:
                await self._watchers.remove(notifier)
                if response.status != 481:
                    raise delivery_error(response, target=notifier.watcher)
            sent += 1
        return Sent(detail=f"NOTIFY to {sent} watcher(s)")

    async def _send_message(self, envelope: Envelope) -> Sent:
        mapped = self._mapper.from_canonical(envelope)
        request = mapped.value
        for loss in mapped.losses:
            self.count("sip_losses_total", field=loss.field)
        size = len(request) + 200
        if (
            not self.settings.tcp_fallback
            and not self.proxy.reliable
            and size > self.settings.udp_max_size
        ):
            raise DeliveryError(
                f"MESSAGE of about {size} bytes is over the {self.settings.udp_max_size}-byte "
                "UDP limit and tcp_fallback is off",
                retryable=False,
                reason=Reason.TOO_LARGE,
                hint="enable tcp_fallback or use a TCP/TLS proxy (RFC 3428 §8)",
                status="413 Request Entity Too Large",
            )
        destination = request.uri
        slot = self._destinations.get(destination)
        if slot is None:
            slot = self._destinations[destination] = _Destination()
        slot.users += 1
        try:
            async with slot.lock:  # RFC 3428 §8: one outstanding MESSAGE per destination
                return await self._transact_message(envelope, request)
        finally:
            slot.users -= 1
            if slot.users == 0:
                self._destinations.pop(destination, None)

    async def _transact_message(self, envelope: Envelope, request: Request) -> Sent:
        assert self.endpoint is not None
        response = await self.endpoint.request(request, self.proxy, digest=self._digest)
        if response.status == 415 and request.get("Content-Type") != mapping.TEXT_PLAIN:
            self.count("sip_text_fallbacks_total")
            try:
                fallback = self._mapper.text_fallback(envelope)
            except MappingError as exc:
                raise DeliveryError(
                    f"{request.uri} answered 415 Unsupported Media Type: {exc.message}",
                    retryable=False,
                    reason=Reason.UNSUPPORTED_MEDIA,
                    hint=exc.hint,
                    status="415 Unsupported Media Type",
                ) from exc
            for loss in fallback.losses:
                self.count("sip_losses_total", field=loss.field)
            retry = fallback.value
            cseq = response.cseq.number + 1  # same Call-ID, next CSeq (RFC 3261 §8.1.3.5)
            retry = retry.with_replaced("CSeq", f"{cseq} MESSAGE")
            response = await self.endpoint.request(retry, self.proxy, digest=self._digest)
        if response.status >= 300:
            raise delivery_error(response, target=request.uri)
        self.count("sip_messages_out_total", status=str(response.status))
        return Sent(native_id=request.call_id, detail=f"{response.status} {response.reason}")

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        """A failure notice to the SIP sender (IMDN failed or text; see module docstring)."""
        if self.endpoint is None:
            raise DeliveryError("the SIP adapter is not running", retryable=True)
        request = self.error_to_native(envelope, error)
        response = await self.endpoint.request(request, self.proxy, digest=self._digest)
        self.count("sip_reports_total", status=str(response.status))
        if response.status >= 300:
            raise delivery_error(response, target=request.uri)

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> Request:
        return self._mapper.error_to_native(envelope, error)
