"""SIP transports on asyncio: UDP, TCP and TLS (RFC 3261 §18, RFC 5630 for TLS).

The thin I/O shell under the pure codec: sockets in, :class:`~adapters.sip.codec.Message`
out. UDP datagrams are parsed one by one; TCP/TLS streams go through
:class:`~adapters.sip.codec.StreamFramer`. Connections are reused per remote address in
both directions (a request's response goes back on the connection it came on, §18.2.2).

Malformed input never stops the transport: a datagram or stream that does not parse is
reported to ``on_garbage`` (which logs and counts it; the endpoint may answer 400) and a
broken stream is closed. TLS verifies the peer certificate by default (trust roots
configurable); an unverified peer is a connection error, not a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        peer = Peer(self.transport_name, host, int(port))
        link = Link(self.transports, peer, inbound=self.inbound)
        link.transport = transport
        self.link = link
        self.transports._register(link)

    def data_received(self, data: bytes) -> None:
        assert self.link is not None
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            self.transports._garbage(self.link.peer, exc, data)
            self.link.close()
            return
        for message in messages:
            self.transports._deliver(message, self.link.peer, self.link)
        self._watch_partial()

    def _watch_partial(self) -> None:
        """A message begun on an inbound connection must be complete within
        ``incomplete_timeout`` (slow clients, "slowloris"): the deadline starts with its
        first byte and is not pushed back by a trickle; an idle connection is left alone."""
        if not self.inbound or self.transports.incomplete_timeout is None:
            return
        if self.framer.pending == 0:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.transports.incomplete_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.link is None or self.framer.pending == 0:
            return
        self.transports.count("sip_slow_connections_total", transport=self.transport_name)
        self.transports.logger.warning(
            "closed %s: %d bytes of an incomplete message after %.0fs",
            self.link.peer,
            self.framer.pending,
            self.transports.incomplete_timeout,
        )
        self.link.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
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
        limits: Limits = DEFAULT_LIMITS,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
        logger: logging.Logger | None = None,
        count: Callable[..., None] | None = None,
        connect_timeout: float = 5.0,
        incomplete_timeout: float | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_garbage = on_garbage
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

    def _register(self, link: Link) -> None:
        self._links[(link.peer.transport, link.peer.host, link.peer.port)] = link
        self.count("sip_connections_total", transport=link.peer.transport)

    def _unregister(self, link: Link) -> None:
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
