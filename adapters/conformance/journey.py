"""A journey through one or more mappers, step by step, with every loss collected.

Each mapper call is a named step (``xmpp.from_canonical``, ``xmpp.encode``, ...). A
:class:`~canonical.errors.GatewayError` raised by a step is a *refusal* (a clear error,
which some cases expect); any other exception is a *crash* (always a failure: bad input
gets a clear error, never a traceback). The laws are checked through the wire: every
native message the kit gets back is encoded and decoded again (``Mapper`` docstring).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.conformance.target import GATEWAY_ID, Target
from adapters.contract import Mapped
from canonical.envelope import Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import GatewayError, Loss

#: The kit's clock: cases are deterministic, so time is a fixed value passed in.
RECEIVED_AT = 1_700_000_000.0


class Refused(Exception):  # noqa: N818 - an event, not an error of the kit
    """A step raised a GatewayError: the adapter refused with a clear error."""

    def __init__(self, step: str, error: GatewayError) -> None:
        super().__init__(f"{step} refused: {error}")
        self.step = step
        self.error = error


class Crashed(Exception):  # noqa: N818 - an event, not an error of the kit
    """A step raised something other than a GatewayError, or returned the wrong type."""

    def __init__(self, step: str, error: BaseException | str) -> None:
        if isinstance(error, BaseException):
            where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
            at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            text = f"{type(error).__name__}: {error}{at}"
        else:
            text = error
        super().__init__(f"{step} crashed: {text}")
        self.step = step
        self.text = text


def envelope_into(
    target: Target,
    payload: Payload | None,
    *,
    operation: Operation = Operation.MESSAGE,
    duration: int | None = None,
    granted: bool | None = None,
    attributes: dict[str, str] | None = None,
    sender: str | None = None,
) -> Envelope:
    """An envelope the gateway hands to ``target``: from its remote user (or ``sender``)
    to its local one."""
    body = payload.body if payload is not None else operation.value.encode("ascii")
    return Envelope(
        operation=operation,
        sender=sender or target.remote,
        recipient=target.local,
        payload=payload,
        identity=identity_of("conformance", target.name, body),
        origin=Origin(adapter=GATEWAY_ID, native_id="conformance-1"),
        received_at=RECEIVED_AT,
        duration=duration,
        granted=granted,
        attributes=attributes or {},
    )


def envelope_from(target: Target, payload: Payload | None) -> Envelope:
    """An envelope as if ``target``'s local user had sent it (for failure reports)."""
    body = payload.body if payload is not None else b""
    return Envelope(
        operation=Operation.MESSAGE,
        sender=target.local,
        recipient=target.remote,
        payload=payload,
        identity=identity_of("conformance-from", target.name, body),
        origin=Origin(
            adapter=target.name,
            native_id="conformance-1",
            reply_to=target.local,
        ),
        received_at=RECEIVED_AT,
    )


@dataclass(slots=True)
class Journey:
    """The steps taken so far and every loss recorded on the way."""

    steps: list[str]
    losses: list[Loss]

    @classmethod
    def start(cls) -> Journey:
        return cls([], [])

    def call(self, step: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one step; a GatewayError becomes :class:`Refused`, anything else :class:`Crashed`."""
        self.steps.append(step)
        try:
            return function(*args, **kwargs)
        except GatewayError as exc:
            raise Refused(step, exc) from exc
        except Exception as exc:
            raise Crashed(step, exc) from exc

    def _collect(self, losses: tuple[Loss, ...]) -> None:
        for loss in losses:
            if loss not in self.losses:
                self.losses.append(loss)

    def mapped(self, step: str, value: object) -> Any:
        if not isinstance(value, Mapped):
            raise Crashed(step, f"returned {type(value).__name__}, not Mapped")
        self._collect(tuple(value.losses))
        return value.value

    def decode(self, target: Target, wire: bytes) -> Any:
        """Wire bytes -> native."""
        return self.call(f"{target.name}.decode", target.mapper.decode, wire)

    def encode(self, target: Target, native: Any) -> bytes:
        """Native -> wire bytes."""
        step = f"{target.name}.encode"
        wire = self.call(step, target.mapper.encode, native)
        if not isinstance(wire, bytes | bytearray):
            raise Crashed(step, f"returned {type(wire).__name__}, not bytes")
        return bytes(wire)

    def out(self, target: Target, envelope: Envelope) -> tuple[Any, bytes]:
        """Envelope -> native -> wire -> native: what the network would deliver."""
        step = f"{target.name}.from_canonical"
        native = self.mapped(step, self.call(step, target.mapper.from_canonical, envelope))
        wire = self.encode(target, native)
        return self.decode(target, wire), wire

    def into(self, target: Target, native: Any) -> Envelope:
        """Native -> envelope, as the adapter's shell would deliver it to the core."""
        step = f"{target.name}.to_canonical"
        result = self.call(
            step,
            target.mapper.to_canonical,
            native,
            origin=Origin(adapter=target.name),
            received_at=RECEIVED_AT,
        )
        envelope = self.mapped(step, result)
        if not isinstance(envelope, Envelope):
            raise Crashed(step, f"returned Mapped[{type(envelope).__name__}], not an Envelope")
        self._collect(envelope.losses)
        return envelope

    def equal(self, target: Target, a: Any, b: Any) -> bool:
        """The protocol's own equality (law L2)."""
        return bool(self.call(f"{target.name}.equal", target.mapper.equal, a, b))
