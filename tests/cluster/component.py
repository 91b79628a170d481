"""A bare XEP-0114 component connection (no slixmpp), to see what a server does when
several connections claim the same component domain: the stream header, the
``<handshake/>`` (XEP-0114 §3: SHA-1 of stream id + secret), and the stanzas or the
stream error that follow."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from dataclasses import dataclass, field

STREAM = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept'"
    " xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
)


@dataclass
class RawComponent:
    """One component connection that records what the server sends it."""

    port: int
    domain: str
    secret: str
    data: bytearray = field(default_factory=bytearray)
    accepted: bool = False
    error: str | None = None
    closed: bool = False
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _task: asyncio.Task[None] | None = None

    async def connect(self, *, wait: float = 5.0) -> RawComponent:
        """Open the stream and hand-shake; ``accepted`` or ``error`` says how it went."""
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(STREAM.format(domain=self.domain).encode())
        await self._writer.drain()
        header = await self._until(rb"<stream:stream[^>]*>", wait)
        found = re.search(rb"id=['\"]([^'\"]+)['\"]", header)
        if found is None:
            raise RuntimeError(f"no stream id from the server: {header!r}")
        digest = hashlib.sha1(found.group(1) + self.secret.encode()).hexdigest()
        self._writer.write(f"<handshake>{digest}</handshake>".encode())
        await self._writer.drain()
        answer = await self._until(
            rb"<handshake\s*/>|<handshake></handshake>|</stream:error>", wait
        )
        if b"stream:error" in answer:
            condition = re.search(
                rb"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams", answer
            )
            self.error = (
                condition.group(1).decode() if condition else answer.decode("utf-8", "replace")
            )
        else:
            self.accepted = True
            self._task = asyncio.create_task(self._read())
        return self

    async def _until(self, pattern: bytes, wait: float) -> bytes:
        assert self._reader is not None
        deadline = asyncio.get_running_loop().time() + wait
        while (match := re.search(pattern, self.data)) is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"waited for {pattern!r}, got {bytes(self.data)!r}")
            chunk = await asyncio.wait_for(self._reader.read(65536), left)
            if not chunk:
                self.closed = True
                return bytes(self.data)
            self.data += chunk
        seen = bytes(self.data[: match.end()])
        del self.data[: match.end()]
        return seen

    async def _read(self) -> None:
        assert self._reader is not None
        while chunk := await self._reader.read(65536):
            self.data += chunk
        self.closed = True

    def messages_to(self) -> list[str]:
        """The ``to`` of every ``<message>`` received so far."""
        return [
            m.decode() for m in re.findall(rb"<message[^>]*\sto=['\"]([^'\"]+)['\"]", self.data)
        ]

    def send(self, xml: str) -> None:
        assert self._writer is not None
        self._writer.write(xml.encode())

    async def close(self, *, wait: float = 5.0) -> None:
        """End the stream and wait (up to ``wait`` s) for the server to close its side:
        by then it has dropped this connection's route, so what is sent next is routed
        to the connections left, not to this one."""
        writer, task = self._writer, self._task
        self._writer = self._task = None
        if writer is not None:
            with contextlib.suppress(ConnectionError):
                writer.write(b"</stream:stream>")
                await writer.drain()
        if task is not None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(task), wait)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        if writer is not None:
            writer.close()
