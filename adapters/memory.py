"""The in-memory reference adapter: the smallest complete adapter, and the test double.

It has no wire: a "network" is a list of what was sent, and ``inject`` stands for a user
sending something in. Two memory adapters joined by the same ``link`` name (in one
process) behave like two gateways' adapters facing each other: what one sends, the
other delivers into its own gateway, refusals come back as send failures, and failure
reports travel back as report envelopes. That is how the loop tests chain gateways.

Report envelopes (what :meth:`MemoryAdapter.report` sends over a link, and what the
mapper's :meth:`MemoryMapper.error_to_native` builds) are MESSAGE envelopes from the
failed recipient back to the original sender, without payload, with the attributes
``report.reason``, ``report.identity`` and ``report.message``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import replace
from typing import ClassVar

from adapters.contract import (
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Mapped,
    Receipt,
    Sent,
)
from canonical.envelope import Envelope, Operation, Origin, from_record, identity_of, to_record
from canonical.errors import AdapterError, DeliveryError, GatewayError, ParseError, Reason

#: Memory adapters currently running, by link name.
_LINKS: dict[str, list[MemoryAdapter]] = {}

REPORT_REASON = "report.reason"
REPORT_IDENTITY = "report.identity"
REPORT_MESSAGE = "report.message"


class MemoryConfig(AdapterConfig):
    """``[adapters.NAME]`` for ``kind = "memory"``.

    - ``link``: join the other memory adapter running with the same link name.
    - ``capabilities``: declare fewer capabilities than all (to test the core's checks).
    - ``forget_trace`` / ``renew_identity``: the link behaves like a foreign hop that
      carries neither the transport history nor the identity (to test loop prevention
      when only MaxForwards and payload bytes survive).
    """

    link: str | None = None
    capabilities: frozenset[Capability] | None = None
    forget_trace: bool = False
    renew_identity: bool = False


class MemoryMapper:
    """The identity mapping: the native form of an envelope is the envelope itself; on the
    "wire" it is the JSON of :func:`canonical.envelope.to_record`."""

    def to_canonical(
        self, native: Envelope, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        return Mapped(native.replace(origin=origin, received_at=received_at))

    def from_canonical(self, envelope: Envelope) -> Mapped[Envelope]:
        return Mapped(envelope)

    def encode(self, native: Envelope) -> bytes:
        return json.dumps(to_record(native), sort_keys=True).encode()

    def decode(self, data: bytes) -> Envelope:
        """The envelope a record's bytes hold; ParseError (with the byte offset when the
        JSON itself is broken) for anything else."""
        try:
            record = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ParseError(
                "MEMORY_BAD_JSON",
                f"not a JSON envelope record: {exc.msg}",
                line=exc.lineno,
                offset=exc.pos,
                hint="the memory adapter's wire form is canonical.envelope.to_record as JSON",
            ) from exc
        except UnicodeDecodeError as exc:
            raise ParseError(
                "MEMORY_BAD_UTF8", f"not UTF-8: {exc.reason}", offset=exc.start
            ) from exc
        if not isinstance(record, dict):
            raise ParseError("MEMORY_NOT_A_RECORD", "the JSON is not an object", offset=0)
        try:
            return from_record(record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParseError(
                "MEMORY_NOT_A_RECORD",
                f"not an envelope record: {type(exc).__name__}: {exc}",
                offset=0,
                hint="every field of canonical.envelope.to_record is needed",
            ) from exc

    def equal(self, a: Envelope, b: Envelope) -> bool:
        """Equal but for ``origin`` and ``received_at``, which the receiving side assigns
        (they describe the arrival, not the message)."""
        return a.replace(origin=b.origin, received_at=b.received_at) == b

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> Envelope:
        """The report telling the sender of ``envelope`` that it failed."""
        return Envelope(
            operation=Operation.MESSAGE,
            sender=envelope.recipient,
            recipient=envelope.origin.reply_to or envelope.sender,
            payload=None,
            identity=identity_of("report", envelope.identity),
            origin=envelope.origin,
            attributes={
                REPORT_REASON: error.reason.value,
                REPORT_IDENTITY: envelope.identity,
                REPORT_MESSAGE: str(error),
            },
        )

    def error_from_native(self, native: Envelope) -> GatewayError | None:
        reason = native.attributes.get(REPORT_REASON)
        if reason is None:
            return None
        return GatewayError(native.attributes.get(REPORT_MESSAGE, ""), reason=Reason(reason))


class MemoryAdapter(Adapter):
    """An adapter whose network is this process's memory.

    Test-double API: ``sent`` (every envelope ``send`` accepted, in order), ``reports``
    (``(envelope, error)`` pairs), :meth:`inject` (a user sends something in),
    :meth:`fail_next` (script send failures), :meth:`wait_sent`.
    """

    kind: ClassVar[str] = "memory"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_model: ClassVar[type[AdapterConfig]] = MemoryConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self._mapper = MemoryMapper()
        self.sent: list[Envelope] = []
        self.reports: list[tuple[Envelope, GatewayError]] = []
        self.attempts = 0
        self._failures: deque[BaseException] = deque()
        self._deliver: Deliver | None = None
        self._stopped: asyncio.Event | None = None
        self._running: asyncio.Event | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def settings(self) -> MemoryConfig:
        assert isinstance(self.config, MemoryConfig)
        return self.config

    @property
    def mapper(self) -> MemoryMapper:
        return self._mapper

    def declared(self) -> frozenset[Capability]:
        """The capabilities this instance declares (its config may narrow them)."""
        return self.settings.capabilities or self.capabilities

    # -- lifecycle ------------------------------------------------------------------

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._stopped is None or self._running is None:
            self._stopped, self._running = asyncio.Event(), asyncio.Event()
        return self._stopped, self._running

    async def run(self, deliver: Deliver) -> None:
        stopped, running = self._events()
        self._deliver = deliver
        link = self.settings.link
        if link is not None:
            _LINKS.setdefault(link, []).append(self)
        running.set()
        try:
            await stopped.wait()
        finally:
            running.clear()
            if link is not None and self in _LINKS.get(link, []):
                _LINKS[link].remove(self)

    async def stop(self) -> None:
        stopped, _ = self._events()
        stopped.set()

    def ready(self) -> bool:
        return self._running is not None and self._running.is_set()

    async def started(self) -> None:
        """Wait until :meth:`run` is serving."""
        _, running = self._events()
        await running.wait()

    # -- inbound --------------------------------------------------------------------

    async def inject(self, envelope: Envelope) -> Receipt:
        """A user of this network sends ``envelope`` in (origin set to this adapter)."""
        await self.started()
        assert self._deliver is not None
        if envelope.origin.adapter != self.name:
            envelope = envelope.replace(origin=replace(envelope.origin, adapter=self.name))
        return await self._deliver(envelope)

    # -- outbound -------------------------------------------------------------------

    def fail_next(self, *errors: BaseException) -> None:
        """The next ``len(errors)`` sends raise these, in order."""
        self._failures.extend(errors)

    def _peer(self) -> MemoryAdapter | None:
        link = self.settings.link
        if link is None:
            return None
        return next((a for a in _LINKS.get(link, []) if a is not self), None)

    async def send(self, envelope: Envelope) -> Sent:
        self.attempts += 1
        if self._failures:
            raise self._failures.popleft()
        if self.settings.link is not None:
            peer = self._peer()
            if peer is None:
                raise DeliveryError(
                    f"link {self.settings.link!r} has no other end",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                )
            crossing = envelope.replace(
                origin=Origin(adapter=peer.name, peer=self.context.gateway_id)
            )
            if self.settings.forget_trace:
                crossing = crossing.replace(trace=())
            if self.settings.renew_identity:
                crossing = crossing.replace(
                    identity=identity_of(self.context.gateway_id, envelope.identity)
                )
            try:
                await peer.inject(crossing)
            except GatewayError as exc:
                raise DeliveryError(
                    f"refused by the other end: {exc}",
                    retryable=isinstance(exc, DeliveryError) and exc.retryable,
                    reason=exc.reason,
                ) from exc
        self.sent.append(envelope)
        self._wake()
        return Sent(native_id=envelope.identity)

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        self.reports.append((envelope, error))
        peer = self._peer()
        if peer is not None:
            await peer.inject(self._mapper.error_to_native(envelope, error))
        self._wake()

    def _wake(self) -> None:
        done = len(self.sent) + len(self.reports)
        for count, future in list(self._waiters):
            if done >= count and not future.done():
                future.set_result(None)
                self._waiters.remove((count, future))

    async def wait_sent(self, count: int, within: float = 10.0) -> None:
        """Wait until ``sent`` plus ``reports`` hold at least ``count`` items."""
        if len(self.sent) + len(self.reports) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        try:
            await asyncio.wait_for(future, within)
        except TimeoutError:
            raise AdapterError(
                f"{self.name}: {len(self.sent)} sent and {len(self.reports)} reports after"
                f" {within}s, expected {count}"
            ) from None
