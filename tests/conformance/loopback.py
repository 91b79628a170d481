"""A small lossless adapter of the tests' own, and deliberately broken variants of it.

The conformance kit is tested against these before (and besides) the real adapters: the
lossless one must pass every case; each broken one has one known fault the kit must find
and name (a silent CRLF loss, reordered headers, a crash on bad input, a re-cased MIME
header that breaks a signature, a recorded loss for an undeclared capability).

The native message is a :class:`Parcel`; its wire format is a small header block and a
length-delimited body::

    LOOPBACK/1 message\r\n
    Sender: im:ada@example.com\r\n
    Content-Type: message/cpim\r\n
    Length: 123\r\n
    \r\n
    <123 body bytes>
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from adapters.contract import (
    Adapter,
    Capability,
    Deliver,
    Mapped,
    Sent,
)
from canonical.envelope import Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import GatewayError, Loss, MappingError, ParseError, Reason

MAGIC = b"LOOPBACK/1 "


@dataclass(frozen=True)
class Parcel:
    """One native loopback message."""

    operation: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class LoopbackMapper:
    """Lossless: every envelope field travels as a header, the body as exact bytes."""

    name = "loopback"

    def to_canonical(
        self, native: Parcel, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        if native.operation == "failure":
            raise MappingError("a failure report is not an operation", reason=Reason.BAD_REQUEST)
        try:
            operation = Operation(native.operation)
        except ValueError as exc:
            raise ParseError("BAD_OPERATION", f"unknown operation {native.operation!r}") from exc
        content_type = native.get("Content-Type")
        payload = None if content_type is None else Payload(content_type, native.body)
        duration = native.get("Duration")
        granted = native.get("Granted")
        attributes = {k[5:]: v for k, v in native.headers if k.startswith("Attr-")}
        envelope = Envelope(
            operation=operation,
            sender=native.get("Sender") or "",
            recipient=native.get("Recipient") or "",
            payload=payload,
            identity=native.get("Identity") or identity_of(native.body),
            origin=origin,
            received_at=received_at,
            duration=None if duration is None else int(duration),
            granted=None if granted is None else granted == "true",
            attributes=attributes,
        )
        return Mapped(envelope)

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        headers = [
            ("Sender", envelope.sender),
            ("Recipient", envelope.recipient),
            ("Identity", envelope.identity),
        ]
        if envelope.payload is not None:
            headers.append(("Content-Type", envelope.payload.content_type))
        if envelope.duration is not None:
            headers.append(("Duration", str(envelope.duration)))
        if envelope.granted is not None:
            headers.append(("Granted", "true" if envelope.granted else "false"))
        headers += [(f"Attr-{k}", v) for k, v in sorted(envelope.attributes.items())]
        body = envelope.payload.body if envelope.payload is not None else b""
        return Mapped(Parcel(envelope.operation.value, tuple(headers), body))

    def encode(self, native: Parcel) -> bytes:
        lines = [MAGIC + native.operation.encode("utf-8")]
        lines += [f"{k}: {v}".encode() for k, v in native.headers]
        lines.append(f"Length: {len(native.body)}".encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + native.body

    def decode(self, data: bytes) -> Parcel:
        if not data.startswith(MAGIC):
            raise ParseError(
                "NO_MAGIC", "not a loopback parcel", offset=0, hint="start with LOOPBACK/1"
            )
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ParseError("NO_BLANK_LINE", "no blank line after the headers", offset=len(data))
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError("BAD_UTF8", "headers are not UTF-8", offset=exc.start) from exc
        first, *rest = text.split("\r\n")
        headers = []
        length = None
        for line in rest:
            name, colon, value = line.partition(": ")
            if not colon:
                raise ParseError("NO_COLON", f"header line without ': ': {line!r}")
            if name == "Length":
                length = int(value) if value.isdigit() else -1
            else:
                headers.append((name, value))
        if length != len(body):
            raise ParseError("BAD_LENGTH", f"Length {length} but {len(body)} body bytes")
        operation = first[len(MAGIC) :]
        if not operation or "\x00" in text:
            raise ParseError("BAD_OPERATION", "empty operation or NUL in the headers")
        return Parcel(operation, tuple(headers), body)

    def equal(self, a: Parcel, b: Parcel) -> bool:
        return a == b

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> Parcel:
        return Parcel(
            "failure",
            (
                ("Recipient", envelope.sender),
                ("Reason", error.reason.value),
                ("Text", error.message),
            ),
        )

    def error_from_native(self, native: Parcel) -> GatewayError | None:
        if native.operation != "failure":
            return None
        return GatewayError(native.get("Text") or "", reason=Reason(native.get("Reason")))


class SilentCrlfLoss(LoopbackMapper):
    """Turns every CRLF of a payload into LF on the way out, and says nothing."""

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        parcel = super().from_canonical(envelope).value
        return Mapped(replace(parcel, body=parcel.body.replace(b"\r\n", b"\n")))


class RecordedCrlfLoss(LoopbackMapper):
    """Same change as :class:`SilentCrlfLoss`, but recorded as a loss."""

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        parcel = super().from_canonical(envelope).value
        changed = parcel.body.replace(b"\r\n", b"\n")
        losses = (Loss("body", "line ends sent as LF"),) if changed != parcel.body else ()
        return Mapped(replace(parcel, body=changed), losses)


class HeaderSorter(LoopbackMapper):
    """Sorts the CPIM header lines of a message/cpim payload (RFC 3862 §2.2 forbids it)."""

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        parcel = super().from_canonical(envelope).value
        if parcel.get("Content-Type") != "message/cpim":
            return Mapped(parcel)
        head, sep, rest = parcel.body.partition(b"\r\n\r\n")
        lines = sorted(head.split(b"\r\n"))
        return Mapped(replace(parcel, body=b"\r\n".join(lines) + sep + rest))


class Crasher(LoopbackMapper):
    """Indexes into its input without looking: crashes on empty or short input."""

    def decode(self, data: bytes) -> Parcel:
        if data[11] == 0:  # IndexError on short input: the fault the kit must find
            raise ParseError("NUL", "NUL operation")
        return super().decode(data)


class Recaser(LoopbackMapper):
    """Rewrites 'Content-type: Message/CPIM' as 'Content-Type: message/cpim' in any body."""

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        parcel = super().from_canonical(envelope).value
        body = parcel.body.replace(b"Content-type: Message/CPIM", b"Content-Type: message/cpim")
        return Mapped(replace(parcel, body=body))


class TabEater(LoopbackMapper):
    """Drops TAB bytes from payload bodies silently (found only by generated examples)."""

    def from_canonical(self, envelope: Envelope) -> Mapped[Parcel]:
        parcel = super().from_canonical(envelope).value
        return Mapped(replace(parcel, body=parcel.body.replace(b"\t", b"")))


class ReasonFlattener(LoopbackMapper):
    """Reports every failure as 'internal' (a many-to-one error table)."""

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> Parcel:
        return super().error_to_native(
            envelope, GatewayError(error.message, reason=Reason.INTERNAL)
        )


ALL = frozenset(Capability)


class LoopbackAdapter(Adapter):
    """The loopback adapter as a real Adapter subclass (no network: run() returns)."""

    kind: ClassVar[str] = "loopback"
    capabilities: ClassVar[frozenset[Capability]] = ALL
    mapper_class: ClassVar[type[LoopbackMapper]] = LoopbackMapper

    def __init__(self, name: str, config: Any, context: Any) -> None:
        super().__init__(name, config, context)
        self._mapper = self.mapper_class()
        self.sent: list[Envelope] = []

    @property
    def mapper(self) -> LoopbackMapper:
        return self._mapper

    async def run(self, deliver: Deliver) -> None:
        return None

    async def send(self, envelope: Envelope) -> Sent:
        self.sent.append(envelope)
        return Sent(native_id=envelope.identity)

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        return None

    async def stop(self) -> None:
        return None


class CrlfLossAdapter(LoopbackAdapter):
    """The loopback adapter with the silent CRLF loss: a plugin that must fail the suite."""

    mapper_class: ClassVar[type[LoopbackMapper]] = SilentCrlfLoss
