"""``kind = "testnet"``: envelopes as length-prefixed JSON over loopback TCP (tests only).

``listen = "127.0.0.1:PORT"`` serves clients that send envelopes in; ``connect =
"127.0.0.1:PORT"`` is where ``send`` and ``report`` go. See README.md for the frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any, ClassVar

from adapters.contract import (
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Mapped,
    Sent,
)
from canonical.envelope import Envelope, Origin, from_record, to_record
from canonical.errors import DeliveryError, GatewayError, Reason

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """One frame, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is larger than {MAX_FRAME}")
    data: dict[str, Any] = json.loads(await reader.readexactly(size))
    return data


def frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class TestnetConfig(AdapterConfig):
    listen: str | None = None
    connect: str | None = None
    send_timeout: float = 10.0


class TestnetMapper:
    """Native form = the JSON record of the envelope."""

    def to_canonical(
        self, native: dict[str, Any], *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        return Mapped(from_record(native).replace(origin=origin, received_at=received_at))

    def from_canonical(self, envelope: Envelope) -> Mapped[dict[str, Any]]:
        return Mapped(to_record(envelope))

    def encode(self, native: dict[str, Any]) -> bytes:
        return json.dumps(native, sort_keys=True).encode()

    def decode(self, data: bytes) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(data)
        return decoded

    def equal(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a == b


class TestnetAdapter(Adapter):
    kind: ClassVar[str] = "testnet"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_model: ClassVar[type[AdapterConfig]] = TestnetConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        assert isinstance(config, TestnetConfig)
        self.settings = config
        self._mapper = TestnetMapper()
        self._server: asyncio.AbstractServer | None = None
        self._stopped = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._lock = asyncio.Lock()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def mapper(self) -> TestnetMapper:
        return self._mapper

    def ready(self) -> bool:
        return self.settings.listen is None or self._server is not None

    # -- inbound ----------------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        if self.settings.listen is not None:
            host, port = split(self.settings.listen)

            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._serve(deliver, reader, writer)

            self._server = await asyncio.start_server(serve, host, port)
        await self._stopped.wait()

    async def _serve(
        self, deliver: Deliver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (request := await read_frame(reader)) is not None:
                task = asyncio.create_task(self._answer(deliver, request, peer, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, ValueError):
            pass
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _answer(
        self,
        deliver: Deliver,
        request: dict[str, Any],
        peer: str,
        writer: asyncio.StreamWriter,
    ) -> None:
        seq = request.get("seq")
        try:
            origin = Origin(adapter=self.name, peer=peer)
            envelope = self._mapper.to_canonical(
                request["envelope"], origin=origin, received_at=self.context.clock()
            ).value
            receipt = await deliver(envelope)
            answer = {
                "seq": seq,
                "ok": True,
                "identity": receipt.identity,
                "duplicate": receipt.duplicate,
            }
        except GatewayError as exc:
            answer = {"seq": seq, "ok": False, "reason": exc.reason.value, "message": str(exc)}
        with contextlib.suppress(ConnectionError):
            writer.write(frame(answer))
            await writer.drain()

    # -- outbound ---------------------------------------------------------------------

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self.settings.connect is None:
                raise DeliveryError(f"{self.name} has no connect address", retryable=False)
            host, port = split(self.settings.connect)
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise DeliveryError(
                    f"cannot connect to {self.settings.connect}: {exc}",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                ) from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_answers(reader))
            return writer

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while (answer := await read_frame(reader)) is not None:
                future = self._waiting.pop(int(answer.get("seq", -1)), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (ConnectionError, ValueError):
            pass
        finally:
            self._writer = None
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(
                        DeliveryError("connection lost", retryable=True, reason=Reason.UNAVAILABLE)
                    )
            self._waiting.clear()

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        writer = await self._connection()
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        try:
            writer.write(frame({"seq": seq, **message}))
            await writer.drain()
            return await asyncio.wait_for(future, self.settings.send_timeout)
        except (ConnectionError, TimeoutError) as exc:
            raise DeliveryError(
                f"no answer from {self.settings.connect}: {exc!r}",
                retryable=True,
                reason=Reason.TIMEOUT,
            ) from exc
        finally:
            self._waiting.pop(seq, None)

    async def send(self, envelope: Envelope) -> Sent:
        answer = await self._request({"envelope": self._mapper.from_canonical(envelope).value})
        if not answer.get("ok"):
            raise DeliveryError(
                str(answer.get("message", "refused")),
                retryable=bool(answer.get("retryable", False)),
                reason=Reason(answer.get("reason", Reason.INTERNAL.value)),
            )
        return Sent(native_id=envelope.identity)

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        self.context.logger.warning(
            "report", extra={"identity": envelope.identity, "reason": error.reason.value}
        )
        if self.settings.connect is not None:
            await self._request(
                {
                    "report": {
                        "identity": envelope.identity,
                        "reason": error.reason.value,
                        "message": str(error),
                    }
                }
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._stopped.set()
