"""Long-lived event streams over a client's durable outbox: Server-Sent Events or WebSocket.

``GET /v1/events`` sends every outbox event after the client's cursor, then each new one
as it is committed. The cursor is the event's ``id`` (its outbox sequence number).

- **SSE** (WHATWG HTML "Server-sent events"; ``Accept: text/event-stream``): each event
  is ``id: <cursor>``, ``event: <kind>``, ``data: <JSON>``. A client that reconnects sends
  ``Last-Event-ID`` (browsers do it themselves) or ``?after=<cursor>``; the server then
  drops every event up to that cursor (the client has them) and resumes after it, so
  nothing is lost across a reconnect, a gateway restart or a crash (the outbox is on
  disk; an event is committed before the gateway is told it was delivered).
- **WebSocket** (RFC 6455; ``Upgrade: websocket``): one text frame per event with the
  same JSON; the client acknowledges with ``{"ack": <cursor>}`` frames, and may also
  resume with ``?after=``.

A comment line (SSE) or a ping (WebSocket) every ``heartbeat`` seconds keeps idle
connections open through proxies and detects dead clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from adapters.cpim.ledger import Event, Ledger
from adapters.cpim.mapping import event_of


class Hub:
    """Wakes the streams and webhooks of a client when its outbox grows (in-process)."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self.closing = asyncio.Event()

    def listen(self, principal: str, wake: Callable[[], None]) -> None:
        self._listeners.setdefault(principal, []).append(wake)

    def subscribe(self, principal: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(principal, set()).add(event)
        return event

    def unsubscribe(self, principal: str, event: asyncio.Event) -> None:
        self._events.get(principal, set()).discard(event)

    def wake(self, principal: str) -> None:
        for event in self._events.get(principal, ()):
            event.set()
        for wake in self._listeners.get(principal, ()):
            wake()

    def close(self) -> None:
        self.closing.set()
        for events in self._events.values():
            for event in events:
                event.set()

    def streams(self) -> int:
        return sum(len(v) for v in self._events.values())


def parse_cursor(text: str | None) -> int | None:
    """A cursor from ``Last-Event-ID`` or ``?after=`` (None when absent or not a number)."""
    if text is None:
        return None
    value = text.strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


def sse_frame(event: Event) -> bytes:
    """One SSE event (``id``, ``event``, ``data`` lines and a blank line)."""
    data = json.dumps(
        event_of(event.envelope, seq=event.seq, kind=event.kind), separators=(",", ":")
    )
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


async def _follow(
    ledger: Ledger,
    *,
    hub: Hub,
    principal: str,
    cursor: int,
    emit: Callable[[Event], Awaitable[None]],
    idle: Callable[[], Awaitable[None]],
    heartbeat: float,
) -> None:
    """Emit the events after ``cursor`` and then each new one, until the hub closes."""
    wake = hub.subscribe(principal)
    try:
        while not hub.closing.is_set():
            wake.clear()
            events = await ledger.events(principal, after=cursor, limit=200)
            for event in events:
                await emit(event)
                cursor = event.seq
            if events:
                continue
            try:
                await asyncio.wait_for(wake.wait(), heartbeat)
            except TimeoutError:
                await idle()
    finally:
        hub.unsubscribe(principal, wake)


async def serve_sse(
    request: web.Request,
    *,
    principal: str,
    cursor: int,
    ledger: Ledger,
    hub: Hub,
    heartbeat: float,
) -> web.StreamResponse:
    """The SSE answer to ``GET /v1/events``."""
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")

    async def emit(event: Event) -> None:
        await response.write(sse_frame(event))

    async def idle() -> None:
        await response.write(b": keep-alive\n\n")

    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
        await _follow(
            ledger,
            hub=hub,
            principal=principal,
            cursor=cursor,
            emit=emit,
            idle=idle,
            heartbeat=heartbeat,
        )
    return response


async def serve_websocket(
    request: web.Request,
    *,
    principal: str,
    cursor: int,
    ledger: Ledger,
    hub: Hub,
    heartbeat: float,
    logger: logging.Logger,
) -> web.WebSocketResponse:
    """The WebSocket answer to ``GET /v1/events``: events out, ``{"ack": n}`` in."""
    ws = web.WebSocketResponse(heartbeat=heartbeat)
    await ws.prepare(request)

    async def emit(event: Event) -> None:
        await ws.send_str(
            json.dumps(
                event_of(event.envelope, seq=event.seq, kind=event.kind), separators=(",", ":")
            )
        )

    async def idle() -> None:
        if ws.closed:
            raise ConnectionResetError("the client closed the WebSocket")

    sender = asyncio.create_task(
        _follow(
            ledger,
            hub=hub,
            principal=principal,
            cursor=cursor,
            emit=emit,
            idle=idle,
            heartbeat=heartbeat,
        )
    )
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                through = json.loads(message.data).get("ack")
            except (ValueError, AttributeError):
                through = None
            if isinstance(through, int) and through >= 0:
                await ledger.ack(principal, through=through)
            else:
                await ws.send_str(json.dumps({"error": 'send {"ack": <event id>}'}))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError, RuntimeError):
            await sender
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            logger.info("websocket of %s ended: %s", principal, sender.exception())
        await ws.close()
    return ws


__all__ = ["Hub", "parse_cursor", "serve_sse", "serve_websocket", "sse_frame"]
