"""The API's listening socket: a cap on open connections and a deadline for each request head.

aiohttp's server waits for a request head for as long as its keep-alive timer allows
(3630 s by default) and accepts every connection the kernel hands it, so a few hundred
clients that send a head one byte a second hold a descriptor each for an hour (a
"slowloris" attack). The :class:`Gate` closes that gap without touching aiohttp's
request handling: it wraps each connection's protocol object, and

- **refuses connections over** ``max_connections`` as soon as they are accepted: a
  short ``503 Service Unavailable`` with ``Retry-After: 1`` and ``Connection: close``
  (RFC 9110 §15.6.4), its body a problem object (reason ``unavailable``), and the socket
  closed, so descriptors stay bounded whatever the clients do;
- **gives every request head** ``header_timeout`` seconds, counted from the connection's
  start or from the end of the previous request on it (an idle keep-alive connection is
  closed then too). A connection that sent part of a head gets ``408 Request Timeout``
  with ``Connection: close`` first (RFC 9110 §15.5.9; a problem object, reason
  ``timeout``); an idle one is closed silently,
  so a client that reuses it at that moment does not read a 408 as its answer.

The gate learns that a head is complete from a middleware (:meth:`Gate.track`): aiohttp
calls the application only once the head has been read. The request *body* has its own
deadline in the handler that reads it (``body_timeout``, :mod:`adapters.cpim.api`).
Each refusal and timeout is counted (``http_connections_refused``,
``http_header_timeouts``) and logged, at most one line per kind every ten seconds with
the number since the last line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from adapters.cpim.mapping import problem
from canonical.errors import GatewayError, Reason


def _answer(status: int, phrase: str, error: GatewayError, headers: str = "") -> bytes:
    """A whole HTTP/1.1 response with ``error`` as its RFC 9457 problem object, like
    every other refusal of the API (docs/openapi.yaml), and ``Connection: close``."""
    body = json.dumps(problem(error, status=status), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\n{headers}"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


#: The answers the gate writes itself (the application never sees these connections).
BUSY = _answer(
    503,
    "Service Unavailable",
    GatewayError(
        "the gateway has as many connections open as max_connections allows",
        reason=Reason.UNAVAILABLE,
        hint="retry after 1 s, or reuse an open connection",
    ),
    headers="Retry-After: 1\r\n",
)
LATE = _answer(
    408,
    "Request Timeout",
    GatewayError(
        "the request head did not arrive within header_timeout",
        reason=Reason.TIMEOUT,
        hint="send the whole request head at once",
    ),
)
#: How long a closing connection may take to flush and shut down (TLS waits for the
#: peer's close_notify) before it is aborted.
CLOSE_GRACE = 1.0
#: At most one log line per kind of event in this many seconds.
LOG_INTERVAL = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Count = Callable[..., None]


class _Tally:
    """Log lines for repeated events, one per interval with the number since the last."""

    def __init__(self, logger: logging.Logger | Any, interval: float = LOG_INTERVAL) -> None:
        self.log = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def note(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        self._since[kind] = self._since.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return
        self._last[kind] = now
        times = self._since.pop(kind)
        self.log.warning(message + " (%d time(s) since the last such line)", *args, times)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol object behind a head deadline."""

    def __init__(self, gate: Gate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.refused = False
        self.busy = 0
        self.heard = False  # bytes arrived since the connection last went idle
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports do not derive from asyncio's
        self.transport = cast(asyncio.Transport, transport)
        gate = self.gate
        gate.open += 1
        if gate.open > gate.max_connections:
            self.refused = True
            gate.refuse(self)
            return
        gate.connections[self.transport] = self
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy:
            self.heard = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.gate.open -= 1
        if self.refused:
            return
        if self.transport is not None:
            self.gate.connections.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    # -- the head deadline ---------------------------------------------------------

    def started(self) -> None:
        """A request head is complete: no deadline while the application handles it."""
        self.busy += 1
        self._disarm()

    def finished(self) -> None:
        """The application is done with a request: the next head is due."""
        self.busy = max(0, self.busy - 1)
        if not self.busy:
            self.heard = False
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.gate.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        transport = self.transport
        if self.busy or transport is None or transport.is_closing():
            return
        self.gate.expired(self, partial=self.heard)
        if self.heard:
            transport.write(LATE)
        self.gate.close(transport)


class Gate:
    """Connection cap and head deadline for one listener (see the module docstring).

    ``wrap(server)`` gives the protocol factory to listen with; :meth:`track` is the
    middleware that tells the gate when the application has a request.
    """

    def __init__(
        self,
        *,
        name: str,
        max_connections: int,
        header_timeout: float,
        count: Count,
        logger: logging.Logger | Any,
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.count = count
        self.tally = _Tally(logger)
        self.open = 0
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server``: aiohttp's, behind the gate."""

        def make() -> asyncio.Protocol:
            return _Connection(self, factory())

        return make

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self.connections.get(request.transport) if request.transport else None
        if connection is None:
            return await handler(request)
        connection.started()
        try:
            return await handler(request)
        finally:
            connection.finished()

    # -- what the connections report -----------------------------------------------

    def refuse(self, connection: _Connection) -> None:
        self.count("http_connections_refused", adapter=self.name)
        self.tally.note(
            "refused",
            "http %s: %d connections are open, the most max_connections allows; refused one",
            self.name,
            self.max_connections,
        )
        transport = connection.transport
        assert transport is not None
        transport.write(BUSY)
        self.close(transport)

    def expired(self, connection: _Connection, *, partial: bool) -> None:
        self.count("http_header_timeouts", adapter=self.name)
        peer = connection.transport.get_extra_info("peername") if connection.transport else None
        self.tally.note(
            "header",
            "http %s: closed a connection from %s that sent %s within %gs (header_timeout)",
            self.name,
            _peer_text(peer),
            "no complete request head" if partial else "no request",
            self.header_timeout,
        )

    def close(self, transport: asyncio.Transport) -> None:
        """Close after the answer is flushed; abort if that takes longer than the grace."""
        transport.close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "an unknown peer"


class GatedSite(web.TCPSite):
    """aiohttp's TCP site with each accepted connection behind a :class:`Gate`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, gate: Gate, **kw: Any):
        super().__init__(runner, host, port, **kw)
        self.gate = gate

    async def start(self) -> None:
        # BaseSite.start registers the site with its runner (so cleanup() stops it);
        # TCPSite.start would then listen with the bare server, so listen here instead.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.gate.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port


__all__ = ["Gate", "GatedSite"]
