"""SIP transports on asyncio: UDP, TCP and TLS (RFC 3261 §18, RFC 5630 for TLS).

The thin I/O shell under the pure codec: sockets in, :class:`~adapters.sip.codec.Message`
out. UDP datagrams are parsed one by one; TCP/TLS streams go through
:class:`~adapters.sip.codec.StreamFramer`. Connections are reused per remote address in
both directions (a request's response goes back on the connection it came on, §18.2.2).

Malformed input never stops the transport: a datagram or stream that does not parse is
reported to ``on_garbage`` (which logs and counts it; the endpoint may answer 400). On a
stream, a request whose start line and Via, From, To, Call-ID and CSeq can be read gets a
``400`` naming the fault (RFC 3261 §21.4.1) on its connection; the stream then goes on
after the bad message when its Content-Length could be read, and is closed when framing is
lost (§18.3: a stream cannot be resynchronised). Inbound connections are capped
(``max_connections``; more are closed at accept), must deliver their first message within
``incomplete_timeout`` and are closed after ``idle_timeout`` without a message or an
RFC 5626 keep-alive (a CRLFCRLF ping, answered with a CRLF pong, §4.4.1). TLS verifies the
peer certificate by default (trust roots configurable); an unverified peer is a connection
error, not a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from adapters.sip.codec import DEFAULT_LIMITS, Limits, Message, StreamFramer, parse
from canonical.errors import DeliveryError, ParseError, Reason

RELIABLE = frozenset({"TCP", "TLS"})
#: Bytes the kernel may hold for the UDP socket (capped by net.core.rmem_max).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
#: Inbound TCP/TLS connections held at once unless configured (``max_connections``).
MAX_CONNECTIONS = 1024
#: Seconds an inbound connection may go without a message or keep-alive (RFC 5626 §4.4.1
#: clients ping every 95-120 s on connection-oriented transports).
IDLE_TIMEOUT = 300.0
#: Seconds between two log lines about connections refused at the cap.
REFUSAL_LOG_INTERVAL = 60.0
#: Longest reason phrase of a 400 built from a parse error.
MAX_REASON = 120

#: Parse errors raised after the framer cut the message out of the stream (its start line
#: is bad): the stream is still framed, the message is gone.
_START_LINE_CODES = frozenset(
    {
        "BAD_STATUS_LINE",
        "BAD_STATUS_CODE",
        "BAD_REQUEST_LINE",
        "BAD_METHOD",
        "BAD_VERSION",
        "BAD_REQUEST_URI",
    }
)
#: Parse errors about one header line or the number of them: the head ended, so when its
#: Content-Length can be read the stream can go on after the message.
_HEADER_CODES = frozenset(
    {"NO_COLON", "BAD_HEADER_NAME", "FOLD_WITHOUT_HEADER", "LINE_TOO_LONG", "TOO_MANY_HEADERS"}
)
#: Header lines a stateless response copies so the client can match it (§8.2.6.2).
_MATCHING = {
    b"via": b"via",
    b"v": b"via",
    b"from": b"from",
    b"f": b"from",
    b"to": b"to",
    b"t": b"to",
    b"call-id": b"call-id",
    b"i": b"call-id",
    b"cseq": b"cseq",
}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def reason_phrase(error: ParseError) -> str:
    """The parse error's text as a Reason-Phrase (RFC 3261 §21.4.1: "SHOULD identify the
    syntax problem"): control characters become spaces, at most :data:`MAX_REASON`."""
    text = f"{error.message}" + (f" (line {error.line})" if error.line is not None else "")
    text = _UNSAFE.sub(" ", text).strip()
    return text[:MAX_REASON] or "Bad Request"


def bad_request(data: bytes, error: ParseError, *, server: str = "cpimgw") -> bytes | None:
    """A stateless error response to bytes that did not parse (RFC 3261 §21.4.1, §8.2.6).

    Only for a request whose start line (``Method SP URI SP SIP/x.y``) and Via, From, To,
    Call-ID and CSeq lines can be read, copied as written (a To tag is added); None for
    anything else (a response, garbage, a head without those lines), which gets no answer.
    The status is 413 when the fault is a body over the size limit, else 400; the reason
    phrase is the parser's, and ``Warning: 399`` carries its code and position.
    """
    end = data.find(b"\r\n\r\n")
    head = data[: end if end >= 0 else len(data)].lstrip(b"\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if (
        len(parts) != 3
        or not parts[0].isalpha()
        or not parts[0].isascii()
        or not parts[2].startswith(b"SIP/")
    ):
        return None
    keep: list[bytes] = []
    seen: set[bytes] = set()
    copying = False
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the line before
            if copying:
                keep.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        canonical = _MATCHING.get(name)
        copying = canonical is not None and b":" in line
        if copying:
            assert canonical is not None
            tagged = canonical != b"to" or b";tag=" in line.lower()
            keep.append(line if tagged else line + b";tag=" + secrets.token_hex(6).encode())
            seen.add(canonical)
    if len(seen) < 5 or any(b"\r" in k or b"\n" in k or b"\x00" in k for k in keep):
        return None
    status = b"413" if error.code == "TOO_LARGE" else b"400"
    phrase = reason_phrase(error).encode("utf-8", "replace")
    warning = _UNSAFE.sub(" ", str(error)).replace('"', "'").replace("\\", "/")[:200]
    return (
        b"SIP/2.0 "
        + status
        + b" "
        + phrase
        + b"\r\n"
        + b"\r\n".join(keep)
        + b'\r\nWarning: 399 cpimgw "'
        + warning.encode("utf-8", "replace")
        + b'"\r\nServer: '
        + server.encode("utf-8", "replace")
        + b"\r\nContent-Length: 0\r\n\r\n"
    )


def _content_length(head: bytes) -> int | None:
    """The one Content-Length of a head the parser refused for another reason (None: none,
    several, or not a number): where the bad message ends, so the stream can go on."""
    found: list[bytes] = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            found.append(value.strip())
    if len(found) != 1 or not found[0].isdigit() or not found[0].isascii():
        return None
    return int(found[0])


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote (or local) transport address: ``transport`` is UDP, TCP or TLS."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"


class Link:
    """One TCP/TLS connection; messages are written to it whole."""

    def __init__(self, transports: Transports, peer: Peer, *, inbound: bool) -> None:
        self.transports = transports
        self.peer = peer
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ConnectionError(f"connection to {self.peer} is closed")
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, transports: Transports, transport_name: str, *, inbound: bool) -> None:
        self.transports = transports
        self.transport_name = transport_name
        self.inbound = inbound
        self.framer = StreamFramer(transports.limits)
        self.link: Link | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        #: loop time of the last complete message or keep-alive (inbound connections)
        self._active = 0.0
        #: no message or keep-alive yet: the first must come within incomplete_timeout
        self._silent = inbound
        #: body bytes of a refused message still to be dropped from the stream
        self._skip = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        peer = Peer(self.transport_name, host, int(port))
        transports = self.transports
        if self.inbound and not transports._admit(peer):
            self._silent = False
            transport.close()
            return
        link = Link(transports, peer, inbound=self.inbound)
        link.transport = transport
        self.link = link
        transports._register(link)
        if self.inbound:
            loop = asyncio.get_running_loop()
            self._active = loop.time()
            if transports.incomplete_timeout is not None:
                self._deadline = loop.call_later(transports.incomplete_timeout, self._too_slow)
            if transports.idle_timeout is not None:
                self._idle = loop.call_later(transports.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link is None:
            return  # refused at the cap
        keepalives = self.framer.keepalives
        while True:
            if self._skip:
                if len(data) <= self._skip:
                    self._skip -= len(data)
                    if not self._skip:
                        self._watch_partial()
                    return
                data = data[self._skip :]
                self._skip = 0
            try:
                messages = self.framer.feed(data)
                break
            except ParseError as exc:
                for message in self.framer.take_framed():  # the good ones ahead of it, in order
                    self.transports._deliver(message, link.peer, link)
                rest = self._malformed(exc, data)
                if rest is None:
                    return
                data = rest
                keepalives = self.framer.keepalives
        if self.inbound and (messages or self.framer.keepalives != keepalives):
            self._active = asyncio.get_running_loop().time()
            self._silent = False
            if not messages and len(data) >= 4 and not data.strip(b"\r\n"):
                # RFC 5626 §4.4.1: a CRLFCRLF ping is answered with a CRLF pong
                self.transports.count("sip_keepalives_total", transport=self.transport_name)
                with contextlib.suppress(ConnectionError):
                    link.write(b"\r\n")
        for message in messages:
            self.transports._deliver(message, link.peer, link)
        self._watch_partial()

    def _malformed(self, exc: ParseError, data: bytes) -> bytes | None:
        """A message on the stream did not parse (RFC 3261 §18.3, §21.4.1).

        The framer still holds a message whose head failed; a bad start line was already cut
        out. A request gets a 400 on the connection when its head can be read; the stream
        goes on after the message when its end is known (returns the bytes to frame next),
        and is closed otherwise (None; None too while the rest of its body is awaited).
        """
        link = self.link
        assert link is not None
        transports = self.transports
        if exc.code in _START_LINE_CODES:
            # the framer cut the message out: framing holds, the bytes are gone
            transports._garbage(link.peer, exc, data, link)
            transports.count(
                "sip_stream_errors_total", transport=self.transport_name, action="skipped"
            )
            return b""
        # the refused message and whatever follows it
        pending = bytes(self.framer._buffer).lstrip(b"\r\n")
        transports._garbage(link.peer, exc, pending, link)
        answer = bad_request(pending, exc, server=transports.server)
        if answer is not None:
            with contextlib.suppress(ConnectionError):
                link.write(answer)
            transports.count("sip_responses_sent_total", status=answer[8:11].decode())
        head_end = pending.find(b"\r\n\r\n")
        length = _content_length(pending[:head_end]) if exc.code in _HEADER_CODES else None
        if head_end < 0 or length is None or length > transports.limits.max_message:
            transports.count(
                "sip_stream_errors_total", transport=self.transport_name, action="closed"
            )
            transports.logger.info(
                "closed %s: stream framing lost at %s%s",
                link.peer,
                exc.code,
                " after a 400" if answer is not None else "",
            )
            link.close()
            return None
        transports.count("sip_stream_errors_total", transport=self.transport_name, action="skipped")
        end = head_end + 4 + length
        self.framer = StreamFramer(transports.limits)
        if end > len(pending):
            self._skip = end - len(pending)
            self._watch_partial()
            return None
        return pending[end:]

    def _watch_partial(self) -> None:
        """A message begun on an inbound connection must be complete within
        ``incomplete_timeout`` (slow clients, "slowloris"): the deadline starts with its
        first byte (for the first message, with the connection) and is not pushed back by
        a trickle; an idle connection is left to ``idle_timeout``."""
        if not self.inbound or self.transports.incomplete_timeout is None:
            return
        if self.framer.pending == 0 and not self._skip and not self._silent:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.transports.incomplete_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.link is None or (self.framer.pending == 0 and not self._skip and not self._silent):
            return
        self.transports.count("sip_slow_connections_total", transport=self.transport_name)
        self.transports.logger.warning(
            "closed %s: %s after %.0fs",
            self.link.peer,
            f"{self.framer.pending + self._skip} bytes of an incomplete message"
            if self.framer.pending or self._skip
            else "no message",
            self.transports.incomplete_timeout,
        )
        self.link.close()

    def _check_idle(self) -> None:
        """Close an inbound connection without a message or keep-alive for ``idle_timeout``
        (RFC 5626 §4.4.1 pings keep a connection open)."""
        self._idle = None
        timeout = self.transports.idle_timeout
        if self.link is None or self.link.closed or timeout is None:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._active
        if quiet < timeout:
            self._idle = loop.call_later(timeout - quiet, self._check_idle)
            return
        self.transports.count("sip_idle_connections_total", transport=self.transport_name)
        self.transports.logger.info("closed %s: idle for %.0fs", self.link.peer, quiet)
        self.link.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._deadline, self._idle):
            if handle is not None:
                handle.cancel()
        self._deadline = self._idle = None
        if self.link is not None:
            self.link.closed = True
            self.transports._unregister(self.link)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, transports: Transports) -> None:
        self.transports = transports

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        peers = self.transports._udp_peers
        peer = peers.get(addr)
        if peer is None:  # the same few addresses (the proxy) send nearly everything
            if len(peers) >= 1024:
                peers.clear()
            peer = peers[addr] = Peer("UDP", str(addr[0]), int(addr[1]))
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            # RFC 5626 §3.5.1 keep-alive (CRLF CRLF / STUN-less ping); also an empty datagram
            self.transports.count("sip_keepalives_total")
            return
        seen = self.transports.on_datagram
        if seen is not None and seen(data, peer):
            return
        try:
            message = parse(data, limits=self.transports.limits)
        except ParseError as exc:
            self.transports._garbage(peer, exc, data)
            return
        self.transports._deliver(message, peer, None)

    def error_received(self, exc: Exception) -> None:
        self.transports.logger.debug("UDP error: %s", exc)


class Transports:
    """The listening sockets and connections of one SIP endpoint."""

    def __init__(
        self,
        *,
        on_message: Callable[[Message, Peer, Link | None], None],
        on_garbage: Callable[[Peer, ParseError, bytes, Link | None], None],
        on_datagram: Callable[[bytes, Peer], bool] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
        logger: logging.Logger | None = None,
        count: Callable[..., None] | None = None,
        connect_timeout: float = 5.0,
        incomplete_timeout: float | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        server: str = "cpimgw",
    ) -> None:
        self.on_message = on_message
        self.on_garbage = on_garbage
        #: Asked first about every UDP datagram; True when it took the datagram whole
        #: (a byte-identical retransmission of a request in progress): it is not parsed.
        self.on_datagram = on_datagram
        self.limits = limits
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.tls_server_name = tls_server_name
        self.logger = logger or logging.getLogger("cpimgw.sip.transport")
        self.count: Callable[..., None] = count if count is not None else (lambda *_a, **_k: None)
        self.connect_timeout = connect_timeout
        #: Seconds an inbound stream may take to deliver a message it has begun (None: no
        #: limit); the endpoint sets Timer F (64*T1, RFC 3261 §17.1.2.2).
        self.incomplete_timeout = incomplete_timeout
        #: Seconds an inbound connection may go without a message or keep-alive (None: ever).
        self.idle_timeout = idle_timeout
        #: Inbound TCP/TLS connections held at once; more are closed at accept.
        self.max_connections = max_connections
        #: ``Server`` of the stateless responses built here.
        self.server = server
        self.inbound = 0
        self._refused = 0
        self._refusal_logged = -REFUSAL_LOG_INTERVAL
        self.local: dict[str, Peer] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._links: dict[tuple[str, str, int], Link] = {}
        self._udp_peers: dict[tuple[str | Any, int], Peer] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[Link]] = {}

    # -- listening

    async def listen(self, transport: str, host: str, port: int) -> Peer:
        """Listen on ``host:port`` (port 0 picks one); returns the bound address."""
        loop = asyncio.get_running_loop()
        transport = transport.upper()
        if transport == "UDP":
            created, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), local_addr=(host, port)
            )
            # CPython 3.11's selector datagram transport does not subclass
            # asyncio.DatagramTransport (fixed in 3.12), so no isinstance check here.
            udp = created
            self._udp = udp
            sock = udp.get_extra_info("socket")
            if sock is not None:
                # a burst larger than the default buffer (about 300 datagrams) would be
                # dropped by the kernel while the loop is busy; the sender's
                # retransmissions would come late and the proxy give up (408)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            bound = udp.get_extra_info("sockname")
        elif transport in RELIABLE:
            ctx: ssl.SSLContext | None = None
            if transport == "TLS":
                if self.tls_server is None:
                    raise ValueError("TLS listener needs a certificate and key")
                ctx = self.tls_server
            server = await loop.create_server(
                lambda: _StreamProtocol(self, transport, inbound=True), host, port, ssl=ctx
            )
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
        else:
            raise ValueError(f"unknown SIP transport {transport!r} (UDP, TCP or TLS)")
        peer = Peer(transport, str(bound[0]), int(bound[1]))
        self.local[transport] = peer
        return peer

    # -- sending

    async def send(self, message: Message, peer: Peer, link: Link | None = None) -> Link | None:
        """Send ``message`` to ``peer``; over TCP/TLS on ``link`` or a reused/new connection.

        Raises ``DeliveryError`` (retryable) when no connection can be made.
        """
        data = bytes(message)
        if not peer.reliable:
            if self._udp is None:
                raise DeliveryError(
                    "no UDP listener to send from", retryable=False, reason=Reason.INTERNAL
                )
            self._udp.sendto(data, (peer.host, peer.port))
            return None
        if link is None or link.closed:
            link = await self.connect(peer)
        try:
            link.write(data)
        except ConnectionError:
            link = await self.connect(peer)
            link.write(data)
        return link

    async def connect(self, peer: Peer) -> Link:
        """A connection to ``peer``: an open one (in either direction) or a new one."""
        key = (peer.transport, peer.host, peer.port)
        existing = self._links.get(key)
        if existing is not None and not existing.closed:
            return existing
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Link] = loop.create_future()
        self._connecting[key] = future
        try:
            ctx: ssl.SSLContext | None = None
            server_hostname: str | None = None
            if peer.transport == "TLS":
                ctx = self.tls_client or ssl.create_default_context()
                server_hostname = self.tls_server_name or peer.host
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _StreamProtocol(self, peer.transport, inbound=False),
                        peer.host,
                        peer.port,
                        ssl=ctx,
                        server_hostname=server_hostname,
                    ),
                    self.connect_timeout,
                )
            except ssl.SSLCertVerificationError as exc:
                self.count("sip_tls_verify_failures_total")
                raise DeliveryError(
                    f"TLS certificate of {peer} not trusted: {exc.verify_message}",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                    hint="add the proxy's CA to tls_ca_file, or fix tls_server_name",
                ) from exc
            except (OSError, TimeoutError) as exc:
                raise DeliveryError(
                    f"cannot connect to {peer}: {exc}",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                    hint="check that the proxy listens on that transport and port",
                ) from exc
            link = protocol.link
            assert link is not None
            # index under the address we dialled as well (peername may differ in form)
            self._links[key] = link
            future.set_result(link)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._connecting.pop(key, None)
        return link

    # -- callbacks from protocols

    def _admit(self, peer: Peer) -> bool:
        """Whether an inbound connection fits under ``max_connections``; a refusal is
        counted at once and logged at most once per :data:`REFUSAL_LOG_INTERVAL`."""
        if self.inbound < self.max_connections:
            self.inbound += 1
            return True
        self._refused += 1
        self.count("sip_connections_refused_total", transport=peer.transport)
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            self.logger.warning(
                "refused %d inbound SIP connection(s) (last from %s): %d open, the "
                "max_connections limit",
                self._refused,
                peer,
                self.inbound,
            )
            self._refusal_logged = now
            self._refused = 0
        return False

    def _register(self, link: Link) -> None:
        self._links[(link.peer.transport, link.peer.host, link.peer.port)] = link
        self.count("sip_connections_total", transport=link.peer.transport)

    def _unregister(self, link: Link) -> None:
        if link.inbound:
            self.inbound -= 1
        for key, value in list(self._links.items()):
            if value is link:
                del self._links[key]

    def _deliver(self, message: Message, peer: Peer, link: Link | None) -> None:
        try:
            self.on_message(message, peer, link)
        except Exception:  # a handler bug must not stop the transport
            self.logger.exception("SIP message handler failed for a message from %s", peer)
            self.count("sip_handler_errors_total")

    def _garbage(self, peer: Peer, exc: ParseError, data: bytes, link: Link | None = None) -> None:
        self.on_garbage(peer, exc, data, link)

    # -- shutdown

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
