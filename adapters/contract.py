"""The adapter contract: a pure mapper, a thin I/O shell, declared capabilities.

DESIGN.md rule 5 ("small contracts, declared capabilities") and rule 6 ("one discovery
route"): every adapter, built-in or third-party, is a class registered under the
``cpimgw.adapters`` entry-point group. It declares what it can carry
(:class:`Capability`), gives a typed config section (a pydantic model), a pure
:class:`Mapper` between its native messages and canonical envelopes, and a shell with
:meth:`Adapter.run` (receive, hand each envelope to ``deliver``) and :meth:`Adapter.send`.

The laws every mapper obeys (DESIGN.md "Lossless mapping"), checked by the shipped
conformance kit (``adapters.conformance``):

- L1: ``to_canonical(decode(encode(from_canonical(c)))).payload == c.payload`` byte for byte.
- L2: ``equal(from_canonical(to_canonical(n)), n)`` under the protocol's own equality,
  with every field that could not be carried reported as a :class:`~canonical.errors.Loss`.
- L3: a signed payload verifies after crossing (it is carried untouched).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from canonical.envelope import Envelope, Origin
from canonical.errors import AdapterError, GatewayError, Loss
from canonical.policy import DEFAULT, Policy

ENTRY_POINT_GROUP = "cpimgw.adapters"

N = TypeVar("N")
T = TypeVar("T")


class Capability(StrEnum):
    """What an adapter can carry. The conformance kit grades cases needing an undeclared
    capability UNSUPPORTED (reported, not failed)."""

    MESSAGE = "message"  # RFC 3860 message operation
    PRESENCE = "presence"  # RFC 3859 notify (PIDF)
    SUBSCRIPTIONS = "subscriptions"  # RFC 3859 subscribe / unsubscribe, authorization
    RECEIPTS = "receipts"  # IMDN delivered <-> XEP-0184
    DISPLAYED = "displayed"  # IMDN displayed <-> XEP-0333
    CHAT_STATES = "chat-states"  # RFC 3994 isComposing <-> XEP-0085
    SUBJECT = "subject"  # RFC 3862 §4.5 Subject
    SUBJECT_LANGUAGES = "subject-languages"  # several Subjects by ;lang=
    NON_ASCII = "non-ascii"  # UTF-8 text beyond US-ASCII
    CPIM_BODY = "cpim-body"  # message/cpim bytes carried exactly (L1)
    SIGNED_BODY = "signed-body"  # multipart/signed, pkcs7-mime signed-data (L3)
    ENCRYPTED_BODY = "encrypted-body"  # pkcs7-mime enveloped-data
    BINARY_BODY = "binary-body"  # non-text entities (images, ...)
    ERRORS = "errors"  # failures reported back in the adapter's own protocol


#: Every capability above, listed one by one (a capability added later is not claimed by
#: accident): what a full-fidelity adapter carries, declared as its ``capabilities`` by the
#: XMPP, SIP and native CPIM adapters, which map all of them.
FULL_FIDELITY: frozenset[Capability] = frozenset(
    {
        Capability.MESSAGE,
        Capability.PRESENCE,
        Capability.SUBSCRIPTIONS,
        Capability.RECEIPTS,
        Capability.DISPLAYED,
        Capability.CHAT_STATES,
        Capability.SUBJECT,
        Capability.SUBJECT_LANGUAGES,
        Capability.NON_ASCII,
        Capability.CPIM_BODY,
        Capability.SIGNED_BODY,
        Capability.ENCRYPTED_BODY,
        Capability.BINARY_BODY,
        Capability.ERRORS,
    }
)


@dataclass(frozen=True, slots=True)
class Mapped(Generic[T]):
    """A mapping result: the value plus every loss recorded on the way (never silent)."""

    value: T
    losses: tuple[Loss, ...] = ()


class Mapper(Protocol[N]):
    """Pure translation between native messages of type ``N`` and envelopes. No I/O.

    ``encode``/``decode`` are the adapter's wire format (a SIP request's bytes, a stanza's
    XML), so the laws are checked *through* the wire, not just between objects.
    """

    def to_canonical(self, native: N, *, origin: Origin, received_at: float) -> Mapped[Envelope]:
        """Native -> envelope. Raises ParseError/MappingError for input it cannot take."""
        ...

    def from_canonical(self, envelope: Envelope) -> Mapped[N]:
        """Envelope -> native. Raises MappingError when nothing sensible can be produced."""
        ...

    def encode(self, native: N) -> bytes:
        """Native message -> wire bytes."""
        ...

    def decode(self, data: bytes) -> N:
        """Wire bytes -> native message (ParseError on malformed input)."""
        ...

    def equal(self, a: N, b: N) -> bool:
        """The protocol's own equality, used by law L2."""
        ...


@runtime_checkable
class ErrorMapper(Protocol[N]):
    """Optional, for adapters declaring :attr:`Capability.ERRORS`: failures in native form.

    RFC 3860 §3.4.1 knows only success and failure; each protocol says *why* in its own
    terms (SIP status, XMPP stanza error condition, ...; RFC 7247 §7). A mapper that also
    implements these two pure methods lets the conformance kit check that a failure
    reported in the adapter's protocol reads back as the same failure.
    """

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> N:
        """The native message telling the sender of ``envelope`` that it failed."""
        ...

    def error_from_native(self, native: N) -> GatewayError | None:
        """The failure a native message reports (``reason`` and text), None if it is none."""
        ...


@dataclass(frozen=True, slots=True)
class Receipt:
    """The gateway's answer to ``deliver``: the envelope is stored (or was a duplicate).

    Only after this may the adapter acknowledge the sender (SIP 202, HTTP 202): the store
    write happened first (DESIGN.md "Delivery").
    """

    identity: str
    duplicate: bool = False


class OutcomeState(StrEnum):
    """Where an operation the gateway stored stands (:class:`Outcome`)."""

    PENDING = "pending"  # queued: not sent yet, or being retried
    DELIVERED = "delivered"  # every target adapter took it (or nothing was left to send)
    FAILED = "failed"  # given up (RFC 3860 §3.4.1 failure), or dropped by the operator


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an operation stored under an identity, as far as the store still
    remembers it (the gateway store's ``outcome``; DESIGN.md "Delivery").

    ``attempts`` is the most delivery attempts any of its queue entries made; ``error`` is
    the last error while pending, or why it failed.
    """

    state: OutcomeState
    attempts: int = 0
    error: str | None = None


#: ``outcome(identity)``: the :class:`Outcome` of an operation, None when the store does
#: not remember the identity (never stored, or finished longer ago than it keeps records).
OutcomeLookup = Callable[[str], Awaitable[Outcome | None]]


@dataclass(frozen=True, slots=True)
class Sent:
    """What :meth:`Adapter.send` reports on success: the peer accepted the operation."""

    native_id: str | None = None
    detail: str = ""


class Deliver(Protocol):
    """Hand an inbound envelope to the gateway core.

    Returns a :class:`Receipt` once the envelope is durably stored; raises a
    :class:`~canonical.errors.GatewayError` (with a ``reason``) when the gateway refuses
    it, which the adapter turns into its own protocol's error for the sender.
    """

    async def __call__(self, envelope: Envelope) -> Receipt: ...


class AdapterConfig(BaseModel):
    """Base of every adapter's typed config section (``[adapters.NAME]`` in the TOML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class AdapterContext:
    """What the gateway gives an adapter: its identity, a logger, a clock, the policy."""

    gateway_id: str = "cpimgw"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("cpimgw.adapter"))
    clock: Callable[[], float] = time.time
    policy: Policy = DEFAULT
    #: Optional hook for metrics: ``count(name, **labels)``; a no-op by default.
    count: Callable[..., None] = field(default=lambda *_a, **_k: None)
    #: What became of an operation this adapter handed in (:data:`OutcomeLookup`); the
    #: gateway sets it from its store, None when there is no store to ask.
    outcome: OutcomeLookup | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """An offline setup of an adapter for tests and the conformance kit.

    ``config`` builds the adapter (and so its mapper) without I/O; ``local`` is a user on
    the adapter's own network and ``remote`` one elsewhere, both gateway-wide addresses
    (DESIGN.md "Addresses in envelopes"): envelopes the kit sends *into* the network go
    from ``remote`` to ``local``.
    """

    config: AdapterConfig
    local: str = "im:charles@example.net"
    remote: str = "im:ada@example.com"


class Adapter(ABC):
    """An adapter instance: one configured connection to one network.

    Subclasses set ``kind``, ``capabilities`` and ``config_model``, and implement the
    abstract methods. The constructor does no I/O; :meth:`run` does all of it.
    """

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    config_model: ClassVar[type[AdapterConfig]] = AdapterConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @property
    @abstractmethod
    def mapper(self) -> Mapper[Any]:
        """The pure mapper this adapter's shell uses."""

    @abstractmethod
    async def run(self, deliver: Deliver) -> None:
        """Connect and serve: hand every inbound operation to ``deliver`` until :meth:`stop`."""

    @abstractmethod
    async def send(self, envelope: Envelope) -> Sent:
        """Send one envelope to this adapter's network.

        Raises :class:`~canonical.errors.DeliveryError` (``retryable`` set) on failure, or
        :class:`~canonical.errors.MappingError` when the envelope cannot be expressed.
        Sending the same envelope twice must carry the same native identity (derived
        from ``envelope.identity``) so the receiver can drop the duplicate.
        """

    @abstractmethod
    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        """Tell the original sender of ``envelope`` (which arrived on this adapter) that it
        finally failed, in this adapter's own protocol (XMPP error stanza, SIP MESSAGE with
        an IMDN failure, HTTP status resource)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop serving; pending inbound work is either delivered or refused, never dropped."""

    @classmethod
    def sample(cls) -> Sample:
        """A config and addresses good for offline tests (the conformance kit uses them).

        Override when the config model has required fields or the network needs
        particular addresses.
        """
        return Sample(config=cls.config_model())

    def ready(self) -> bool:
        """True while connected and able to send (``/readyz``)."""
        return True

    def not_ready_reason(self) -> str | None:
        """Why :meth:`ready` is False, with the likely fix, for ``/readyz`` (e.g. "the
        XMPP server refused component ...; check the component secret ..."); None when
        ready or when there is nothing more to say. Optional: the default says nothing."""
        return None


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """One entry of the ``cpimgw.adapters`` group, loaded or not."""

    name: str
    target: str
    distribution: str | None
    version: str | None
    adapter: type[Adapter] | None
    error: str | None

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.adapter.capabilities if self.adapter is not None else frozenset()


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _describe(ep: metadata.EntryPoint) -> AdapterInfo:
    dist = ep.dist
    name, version = (dist.metadata["Name"], dist.version) if dist is not None else (None, None)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised
        return AdapterInfo(ep.name, ep.value, name, version, None, f"{type(exc).__name__}: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        return AdapterInfo(ep.name, ep.value, name, version, None, "not an Adapter subclass")
    return AdapterInfo(ep.name, ep.value, name, version, cls, None)


def available() -> list[AdapterInfo]:
    """Every installed adapter, each loaded; a broken plugin carries its import error."""
    return [_describe(ep) for ep in _entry_points()]


def load(kind: str) -> type[Adapter]:
    """The adapter class registered as ``kind``; AdapterError names the cause and the fix."""
    for ep in _entry_points():
        if ep.name == kind:
            info = _describe(ep)
            if info.adapter is None:
                raise AdapterError(
                    f"adapter {kind!r} ({info.target}) cannot be loaded: {info.error}",
                    hint="reinstall the package that provides it, or remove it from the config",
                )
            return info.adapter
    known = ", ".join(ep.name for ep in _entry_points()) or "none"
    raise AdapterError(
        f"no adapter named {kind!r} is installed (installed: {known})",
        hint="install the plugin package into the gateway's environment",
    )
