"""A SIP endpoint on asyncio: the pure transactions bound to transports and a clock.

This is the shell around :mod:`adapters.sip.transaction`: it owns the transaction tables
(§17.1.3, §17.2.3 matching), schedules each transaction's next deadline with
``loop.call_at``, adds our Via (``z9hG4bK`` branch, ``rport``, RFC 3581) to requests we
send, stamps ``received``/``rport`` on requests we receive, routes responses back per
§18.2.2, answers digest challenges (§22.2) and keeps UDP requests that would exceed the
congestion-safe size off UDP (RFC 3261 §18.1.1, RFC 3428 §8).

Inbound requests that pass :func:`~adapters.sip.validation.check_request` reach the
handler as :class:`Incoming`; everything else is answered here (400, 405, 416, 420, 483,
501, 505) or dropped (malformed responses, strays), each with a log line and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from adapters.sip import header as hdr
from adapters.sip.codec import DEFAULT_LIMITS, Limits, Message, Request, Response, reply
from adapters.sip.digest import DigestClient
from adapters.sip.transaction import (
    DEFAULT_TIMERS,
    Action,
    ClientKey,
    ClientTransaction,
    InviteServerTransaction,
    PassUp,
    ServerKey,
    ServerTransaction,
    Terminated,
    Timeout,
    Timers,
    Transmit,
    client_key,
    server_key,
)
from adapters.sip.transport import Link, Peer, Transports, bad_request
from adapters.sip.validation import check_request, check_response
from canonical.errors import DeliveryError, ParseError, Reason

#: RFC 3261 §18.1.1 / RFC 3428 §8: above this a request leaves UDP.
UDP_LIMIT = 1300


class _RandomHex:
    """Hex strings of cryptographically random bytes, cut from a pool drawn 4 KiB at a
    time (one system call for hundreds of branches and tags instead of one each)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self, size: int) -> str:
        at = self._at
        if at + size > len(self._pool):
            self._pool, at = secrets.token_bytes(4096), 0
        self._at = at + size
        return self._pool[at : at + size].hex()


_random_hex = _RandomHex().take


def new_branch() -> str:
    """A fresh RFC 3261 branch: magic cookie plus 64 random bits (§8.1.1.7)."""
    return hdr.MAGIC_COOKIE + _random_hex(8)


def new_tag() -> str:
    """A tag: globally unique, 48 cryptographically random bits (RFC 3261 §19.3)."""
    return _random_hex(6)


class TooLargeForUdpError(DeliveryError):
    """The request exceeds the UDP limit and no congestion-controlled transport is usable."""


@dataclass(slots=True)
class _Client:
    tx: ClientTransaction
    destination: Peer
    future: asyncio.Future[Response]
    link: Link | None = None
    when: float | None = None  # the transaction's next deadline, as filed in the wheel


@dataclass(slots=True)
class _Server:
    tx: ServerTransaction | InviteServerTransaction
    peer: Peer
    link: Link | None
    reply_to: Peer
    when: float | None = None  # the transaction's next deadline, as filed in the wheel
    datagram: bytes | None = None  # the request as received over UDP (retransmissions match it)


@dataclass(slots=True)
class Incoming:
    """An inbound request for the application, with the means to answer it once."""

    request: Request
    peer: Peer
    endpoint: Endpoint
    _server: _Server
    to_tag: str = field(default_factory=new_tag)
    answered: bool = False

    def respond(
        self,
        status: int,
        reason: str,
        *,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        """Answer through the server transaction (a To tag is added to the response)."""
        response = reply(
            self.request,
            status,
            reason,
            to_tag=self.to_tag if status > 100 else None,
            extra=(*extra, *self.endpoint.response_headers),
            body=body,
            content_type=content_type,
        )
        self.send(response)
        return response

    def send(self, response: Response) -> None:
        if response.status >= 200:
            self.answered = True
        self.endpoint._server_respond(self._server, response)


Handler = Callable[[Incoming], Awaitable[None]]


class Endpoint:
    """Transactions, transports and timers of one SIP node."""

    def __init__(
        self,
        *,
        handler: Handler,
        methods: frozenset[str],
        timers: Timers = DEFAULT_TIMERS,
        limits: Limits = DEFAULT_LIMITS,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
        user_agent: str = "cpimgw",
        logger: logging.Logger | None = None,
        count: Callable[..., None] | None = None,
        udp_limit: int = UDP_LIMIT,
        max_handlers: int = 10_000,
    ) -> None:
        self.handler = handler
        self.methods = methods
        self.timers = timers
        self.limits = limits
        self.user_agent = user_agent
        self.logger = logger or logging.getLogger("cpimgw.sip")
        self.count: Callable[..., None] = count if count is not None else (lambda *_a, **_k: None)
        self.udp_limit = udp_limit
        self.max_handlers = max_handlers
        self.transports = Transports(
            on_message=self._on_message,
            on_garbage=self._on_garbage,
            on_datagram=self._on_datagram,
            limits=limits,
            tls_server=tls_server,
            tls_client=tls_client,
            tls_server_name=tls_server_name,
            logger=self.logger,
            count=self.count,
            incomplete_timeout=64 * timers.t1,
            server=user_agent,
        )
        self._clients: dict[ClientKey, _Client] = {}
        self._servers: dict[ServerKey, _Server] = {}
        #: non-INVITE server transactions over UDP by their request's bytes as received
        self._datagrams: dict[bytes, _Server] = {}
        self._tick = min(0.05, timers.t1 / 10)
        self._wheel: dict[int, list[_Client | _Server]] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._ticker_slot = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        return (("Server", self.user_agent),)

    async def listen(self, transport: str, host: str, port: int) -> Peer:
        return await self.transports.listen(transport, host, port)

    def local(self, transport: str) -> Peer:
        """Our address for ``transport`` (for Via and Contact)."""
        found = self.transports.local.get(transport.upper())
        if found is not None:
            return found
        any_local = next(iter(self.transports.local.values()), None)
        if any_local is None:
            raise RuntimeError("the endpoint listens nowhere yet")
        return Peer(transport.upper(), any_local.host, any_local.port)

    # ------------------------------------------------------------------ client side

    async def request(
        self,
        request: Request,
        destination: Peer,
        *,
        digest: DigestClient | None = None,
        max_auth: int = 2,
    ) -> Response:
        """Send ``request`` (without our Via: it is added here) and return the final
        response. Answers 401/407 with ``digest`` (new branch, CSeq + 1, §22.2).

        Raises :class:`DeliveryError` on timeout (Timer F, retryable) or transport failure.
        """
        attempt = request
        previous: Request | None = None
        response = await self._transact(attempt, destination)
        for _ in range(max_auth):
            if response.status not in (401, 407) or digest is None:
                break
            lines = digest.answer(attempt, response, cnonce=secrets.token_hex(8), previous=previous)
            if lines is None:
                break
            self.count("sip_auth_answers_total", status=str(response.status))
            previous = attempt
            cseq = attempt.cseq
            attempt = attempt.without("Authorization").without("Proxy-Authorization")
            attempt = attempt.with_replaced("CSeq", f"{cseq.number + 1} {cseq.method}")
            for name, value in lines:
                attempt = attempt.with_header(name, value)
            response = await self._transact(attempt, destination)
        return response

    def _choose(self, request: Request, destination: Peer) -> Peer:
        if destination.reliable:
            return destination
        size = len(request) + 120  # our Via line
        if size <= self.udp_limit:
            return destination
        self.count("sip_udp_oversize_total")
        return Peer("TCP", destination.host, destination.port)

    async def _transact(self, request: Request, destination: Peer) -> Response:
        if self._closing:
            raise DeliveryError("the SIP endpoint is stopping", retryable=True)
        target = self._choose(request, destination)
        local = self.local(target.transport)
        branch = new_branch()
        via = f"SIP/2.0/{target.transport} {local.host}:{local.port};branch={branch};rport"
        outgoing = request.with_top_via(via)
        loop = asyncio.get_running_loop()
        tx = ClientTransaction(
            outgoing,
            reliable=target.reliable,
            timers=self.timers,
            key=(branch, request.cseq.method),
        )
        record = _Client(tx, target, loop.create_future())
        self._clients[tx.key] = record
        self.count("sip_requests_sent_total", method=request.method)
        try:
            if target.reliable:
                try:
                    record.link = await self.transports.connect(target)
                except DeliveryError as exc:
                    if target is not destination:
                        raise TooLargeForUdpError(
                            f"request of {len(request)} bytes is too large for UDP and TCP "
                            f"to {target.host}:{target.port} failed: {exc.message}",
                            retryable=False,
                            reason=Reason.TOO_LARGE,
                            hint="let the proxy listen on TCP, or lower the message size",
                        ) from exc
                    raise
            self._client_actions(record, tx.start(loop.time()))
            return await record.future
        finally:
            if record.tx.state == "terminated" or not record.future.done():
                self._drop_client(record)

    def _drop_client(self, record: _Client) -> None:
        if self._clients.get(record.tx.key) is record:
            del self._clients[record.tx.key]
        record.when = None  # its entries in the wheel are stale now

    def _client_actions(self, record: _Client, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action.message, record.destination, record.link, record)
            elif isinstance(action, PassUp):
                if action.response.status >= 200 and not record.future.done():
                    record.future.set_result(action.response)
            elif isinstance(action, Timeout):
                self.count("sip_client_timeouts_total", timer=action.timer)
                if not record.future.done():
                    record.future.set_exception(
                        DeliveryError(
                            f"no final response from {record.destination} "
                            f"(Timer {action.timer}) to {record.tx.request.method}",
                            retryable=True,
                            reason=Reason.TIMEOUT,
                            status="408 Request Timeout",
                        )
                    )
            elif isinstance(action, Terminated):
                self._drop_client(record)
                return
        self._schedule(record, record.tx.deadline)

    def _transmit(
        self, message: Message, peer: Peer, link: Link | None, record: _Client | None
    ) -> None:
        if not peer.reliable:
            try:
                self.transports._udp.sendto(bytes(message), (peer.host, peer.port))  # type: ignore[union-attr]
            except (OSError, AttributeError) as exc:
                self.logger.warning("UDP send to %s failed: %s", peer, exc)
            return
        if link is not None and not link.closed:
            try:
                link.write(bytes(message))
            except ConnectionError:
                pass
            else:
                return
        task = asyncio.ensure_future(self._send_stream(message, peer, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_stream(self, message: Message, peer: Peer, record: _Client | None) -> None:
        try:
            link = await self.transports.send(message, peer)
        except DeliveryError as exc:
            self.logger.warning("send to %s failed: %s", peer, exc)
            if record is not None:
                if not record.future.done():
                    record.future.set_exception(exc)
                self._client_actions(record, record.tx.transport_error())
            return
        if record is not None:
            record.link = link

    def _schedule(self, record: _Client | _Server, deadline: float | None) -> None:
        """File the transaction's next deadline in the timer wheel: a list per tick (a
        tenth of T1, at most 50 ms), one loop timer for the whole wheel instead of one
        per transaction (each MESSAGE over UDP would otherwise set and cancel Timer E
        and set Timer K or J). A deadline fires within one tick after it is due, never
        before. Entries whose record moved on are skipped when their tick comes."""
        if deadline == record.when:
            return
        record.when = deadline
        if deadline is None:
            return
        slot = -int(-deadline // self._tick)  # the first tick at or after the deadline
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [record]
        else:
            bucket.append(record)
        if self._ticker is None or slot < self._ticker_slot:
            if self._ticker is not None:
                self._ticker.cancel()
            self._ticker_slot = slot
            self._ticker = asyncio.get_running_loop().call_at(slot * self._tick, self._on_tick)

    def _on_tick(self) -> None:
        self._ticker = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        tick = self._tick
        current = int(now // tick)
        wheel = self._wheel
        for slot in sorted(s for s in wheel if s <= current):
            for record in wheel.pop(slot):
                when = record.when
                if when is None:
                    continue  # dropped
                if when > now:  # moved to a later tick (filed there too), or rounding
                    if -int(-when // tick) <= current:
                        wheel.setdefault(current + 1, []).append(record)
                    continue
                record.when = None
                if isinstance(record, _Client):
                    self._client_actions(record, record.tx.expire(now))
                else:
                    self._server_actions(record, record.tx.expire(now))
        if wheel and self._ticker is None:
            self._ticker_slot = min(wheel)
            self._ticker = loop.call_at(max(self._ticker_slot, current + 1) * tick, self._on_tick)

    # ------------------------------------------------------------------ server side

    def _server_respond(self, record: _Server, response: Response) -> None:
        now = asyncio.get_running_loop().time()
        self.count("sip_responses_sent_total", status=str(response.status))
        self._server_actions(record, record.tx.respond(response, now))

    def _server_actions(self, record: _Server, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._send_response(action.message, record)
            elif isinstance(action, Terminated):
                if self._servers.get(record.tx.key) is record:
                    del self._servers[record.tx.key]
                if record.datagram is not None:
                    if self._datagrams.get(record.datagram) is record:
                        del self._datagrams[record.datagram]
                    record.datagram = None
                record.when = None
                return
            elif isinstance(action, Timeout):
                self.count("sip_server_timeouts_total", timer=action.timer)
        self._schedule(record, record.tx.deadline)

    def _send_response(self, response: Message, record: _Server) -> None:
        if record.link is not None and not record.link.closed:
            try:
                record.link.write(bytes(response))
            except ConnectionError:
                pass
            else:
                return
        self._transmit(response, record.reply_to, None, None)

    def _on_garbage(self, peer: Peer, exc: ParseError, data: bytes, link: Link | None) -> None:
        self.count("sip_malformed_total", code=exc.code, transport=peer.transport)
        self.logger.warning("dropped malformed SIP data from %s: %s", peer, exc)
        # A datagram whose head parsed far enough to look like a request gets a 400
        # (RFC 3261 §21.4.1); anything else is dropped.
        if peer.reliable or not data[:3].isalpha() or data.startswith(b"SIP/"):
            return
        self._stateless_400(data, peer, exc)

    def _stateless_400(
        self, data: bytes, peer: Peer, error: ParseError, link: Link | None = None
    ) -> None:
        """A 400 naming the fault to a request that could not be read whole (RFC 3261
        §21.4.1): over UDP to its source, on a stream on its connection; only when its head
        has the lines a client matches a response by (:func:`bad_request`)."""
        answer = bad_request(data, error, server=self.user_agent)
        if answer is None:
            return
        self.count("sip_responses_sent_total", status=answer[8:11].decode())
        if link is not None and not link.closed:
            with contextlib.suppress(ConnectionError):
                link.write(answer)
        elif not peer.reliable and self.transports._udp is not None:
            self.transports._udp.sendto(answer, (peer.host, peer.port))

    def _on_message(self, message: Message, peer: Peer, link: Link | None) -> None:
        for defect in message.defects:
            # e.g. EXCESS_BYTES: bytes after Content-Length in a datagram, discarded (§18.3)
            self.count("sip_defects_total", code=defect.code)
            self.logger.info("SIP message from %s: %s (%s)", peer, defect.detail, defect.code)
        if isinstance(message, Response):
            self._on_response(message, peer)
        elif isinstance(message, Request):
            self._on_request(message, peer, link)

    def _on_response(self, response: Response, peer: Peer) -> None:
        problem = check_response(response)
        if problem is not None:
            self.count("sip_malformed_total", code="BAD_RESPONSE", transport=peer.transport)
            self.logger.warning("dropped malformed response from %s: %s", peer, problem)
            return
        record = self._clients.get(client_key(response))
        if record is None:
            self.count("sip_stray_responses_total")
            self.logger.debug("stray response %s from %s", response.status, peer)
            return
        now = asyncio.get_running_loop().time()
        self._client_actions(record, record.tx.receive(response, now))

    def _on_datagram(self, data: bytes, peer: Peer) -> bool:
        """A datagram byte for byte the same as the request of a non-INVITE server
        transaction still held, from the same address, is that request retransmitted
        (RFC 3261 §17.2.3 would match it to that transaction): it is answered as such
        without being parsed again. A proxy retransmits while our answer waits for the
        store; parsing each copy again cost the most exactly when the gateway was
        busiest. Anything else (False) is parsed and matched as usual."""
        record = self._datagrams.get(data)
        if record is None or record.peer != peer:
            return False
        self.count("sip_retransmissions_absorbed_total", method=record.tx.key[-1])
        if isinstance(record.tx, ServerTransaction):
            self._server_actions(record, record.tx.retransmitted())
        return True

    def _on_request(self, request: Request, peer: Peer, link: Link | None) -> None:
        datagram = bytes(request) if link is None and not peer.reliable else None
        try:
            via = request.top_via
            request = stamp_via(request, via, peer)
            key = server_key(request)
        except ParseError as exc:
            self.count("sip_malformed_total", code=exc.code, transport=peer.transport)
            self.logger.warning("request from %s without a usable Via/From/CSeq: %s", peer, exc)
            self._stateless_400(bytes(request), peer, exc, link)
            return
        now = asyncio.get_running_loop().time()
        existing = self._servers.get(key)
        if existing is not None:
            self.count("sip_retransmissions_absorbed_total", method=request.method)
            self._server_actions(existing, existing.tx.receive(request, now))
            return
        if request.method == "ACK":
            return  # an ACK for a transaction we no longer hold (or a 2xx): nothing to do
        reliable = peer.reliable
        tx: ServerTransaction | InviteServerTransaction
        if request.method == "INVITE":
            tx = InviteServerTransaction(request, reliable=reliable, timers=self.timers)
        else:
            tx = ServerTransaction(request, reliable=reliable, timers=self.timers)
        record = _Server(tx, peer, link, response_destination(request, peer))
        self._servers[key] = record
        if datagram is not None and request.method != "INVITE":
            record.datagram = datagram
            self._datagrams[datagram] = record
        self.count("sip_requests_received_total", method=request.method)
        incoming = Incoming(request, peer, self, record)
        if request.method == "CANCEL":
            self._on_cancel(incoming, key)
            return
        refusal = check_request(request, methods=self.methods)
        if refusal is not None:
            self.count("sip_refused_total", status=str(refusal.status))
            self.logger.info(
                "refused %s from %s: %d %s (%s)",
                request.method,
                peer,
                refusal.status,
                refusal.reason,
                refusal.detail,
            )
            extra = (*refusal.headers, ("Warning", f'399 cpimgw "{_warn(refusal.detail)}"'))
            incoming.respond(refusal.status, refusal.reason, extra=extra)
            return
        if self._closing or len(self._tasks) >= self.max_handlers:
            incoming.respond(503, "Service Unavailable", extra=(("Retry-After", "5"),))
            return
        task = asyncio.ensure_future(self._handle(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_cancel(self, incoming: Incoming, key: ServerKey) -> None:
        # §9.2: CANCEL matches the transaction with the same key but the cancelled method.
        for method in ("INVITE", *self.methods):
            target = self._servers.get((*key[:-1], method))
            if target is not None and target.tx.key[-1] != "CANCEL":
                incoming.respond(200, "OK")
                return
        incoming.respond(481, "Call/Transaction Does Not Exist")

    async def _handle(self, incoming: Incoming) -> None:
        try:
            await self.handler(incoming)
        except Exception:
            self.logger.exception("SIP handler failed on %s", incoming.request.method)
            self.count("sip_handler_errors_total")
            if not incoming.answered:
                incoming.respond(500, "Server Internal Error")
            return
        if not incoming.answered:
            self.logger.error("SIP handler left %s unanswered", incoming.request.method)
            incoming.respond(500, "Server Internal Error")

    # ------------------------------------------------------------------------ stop

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop taking requests, let handlers finish (they answer), then close sockets."""
        self._closing = True
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for record in list(self._clients.values()):
            if not record.future.done():
                record.future.set_exception(
                    DeliveryError("the SIP endpoint stopped", retryable=True)
                )
            self._drop_client(record)
        for server in list(self._servers.values()):
            server.when = None
        self._servers.clear()
        self._datagrams.clear()
        self._wheel.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.transports.close()


def _warn(detail: str) -> str:
    return detail.replace('"', "'").replace("\\", "/")[:200]


def stamp_via(request: Request, via: hdr.Via, peer: Peer) -> Request:
    """Add ``received`` when the source differs from sent-by, fill ``rport`` when asked
    (RFC 3261 §18.2.1, RFC 3581 §4). Only the top Via line changes."""
    changed = via
    if via.host != peer.host:
        changed = changed.with_param("received", peer.host)
    if via.wants_rport and via.rport is None:
        changed = changed.with_param("rport", str(peer.port))
    if changed is via:
        return request
    return request.without_top_via().with_top_via(str(changed))


def response_destination(request: Request, peer: Peer) -> Peer:
    """Where a response goes when no connection is open (RFC 3261 §18.2.2, RFC 3581 §4)."""
    via = request.top_via
    host = via.received or via.host
    if via.rport is not None:
        return Peer(peer.transport, host, via.rport)
    default = 5061 if via.transport == "TLS" else 5060
    return Peer(peer.transport, host, via.port or default)
