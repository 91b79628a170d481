"""The error tree of cpimgw, and the records that are not errors (Defect, Loss).

DESIGN.md "Errors": ``GatewayError`` is the root; every error that reaches a user says
what was wrong, where, and what to do. Parsing records *defects*, mapping records
*losses*; a policy decides which are fatal (DESIGN.md rule 3: no silent loss).

Every error carries a :class:`Reason`, a protocol-neutral cause that each adapter maps
to its own wire signal (SIP status, XMPP stanza error, HTTP status) through the tables
in ``docs/mapping/errors.md`` (RFC 7247 §7, RFC 3860 §3.4.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why an operation failed, independent of any protocol (RFC 3860 §3.4.1 "failure").

    Adapters translate a reason into their own signal; the gateway core decides retries
    from :attr:`DeliveryError.retryable`, not from the reason.
    """

    BAD_REQUEST = "bad-request"  # malformed input (SIP 400, XMPP bad-request, HTTP 400)
    UNKNOWN_DESTINATION = "unknown-destination"  # no route / no such user (404, item-not-found)
    FORBIDDEN = "forbidden"  # access control, spoofing (403, forbidden)
    UNAUTHENTICATED = "unauthenticated"  # credentials missing or wrong (401, not-authorized)
    TOO_LARGE = "too-large"  # size policy (413, policy-violation)
    UNSUPPORTED_MEDIA = "unsupported-media"  # content type not carried (415, not-acceptable)
    UNSUPPORTED_FEATURE = "unsupported-feature"  # Require not honoured (420)
    RATE_LIMITED = "rate-limited"  # token bucket empty (429 + Retry-After)
    LOOP = "loop"  # hop budget exhausted or own trace seen (483/482, not-acceptable)
    SIGNATURE_INVALID = "signature-invalid"  # signature policy "require" failed
    STALE = "stale"  # DateTime outside freshness window (RFC 3923 §6.9; 400, not-acceptable)
    TIMEOUT = "timeout"  # peer did not answer in time (408, remote-server-timeout)
    UNAVAILABLE = "unavailable"  # peer or recipient away for now (480)
    EXPIRED = "expired"  # queued too long, gave up (408/504, remote-server-timeout)
    CONFLICT = "conflict"  # subscription already exists (RFC 3922 §6.1)
    INTERNAL = "internal"  # our own fault (500, internal-server-error)


class GatewayError(Exception):
    """Root of every error cpimgw raises on purpose.

    ``reason`` is the protocol-neutral cause; ``hint`` tells the user what to do.
    ``str(err)`` gives the message followed by the hint.
    """

    default_reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason if reason is not None else self.default_reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ParseError(GatewayError, ValueError):
    """Input that does not follow its grammar (RFC 3862 §3.6 for message/cpim).

    ``code`` is a stable identifier (``BARE_LF``, ``NO_COLON`` ...; the list is in the
    vectors README and ``docs/cpim.md``); ``line`` is 1-based and ``offset`` is the
    byte offset of the fault in the parsed data (``None`` when not applicable).
    """

    default_reason = Reason.BAD_REQUEST

    def __init__(
        self,
        code: str,
        message: str,
        *,
        line: int | None = None,
        offset: int | None = None,
        hint: str = "",
        reason: Reason | None = None,
    ) -> None:
        super().__init__(message, reason=reason, hint=hint)
        self.code = code
        self.line = line
        self.offset = offset

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        text = f"{self.code}: {self.message}"
        if where:
            text += f" ({', '.join(where)})"
        if self.hint:
            text += f"; {self.hint}"
        return text


class MappingError(GatewayError, ValueError):
    """A message cannot be expressed in the target protocol at all (not merely with a loss)."""

    default_reason = Reason.UNSUPPORTED_MEDIA


class SecurityError(GatewayError, PermissionError):
    """Refused by security policy: spoofing, deny list, signature policy, freshness."""

    default_reason = Reason.FORBIDDEN


class RoutingError(GatewayError, LookupError):
    """No route to the destination, or a loop was detected."""

    default_reason = Reason.UNKNOWN_DESTINATION


class DeliveryError(GatewayError):
    """Sending to a peer failed. ``retryable`` says whether the store should try again.

    ``retry_after`` (seconds) is honoured when the peer named one (SIP Retry-After,
    HTTP Retry-After). ``status`` keeps the peer's own status text for the failure report.
    """

    default_reason = Reason.UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        reason: Reason | None = None,
        hint: str = "",
        retry_after: float | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, hint=hint)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class AdapterError(GatewayError):
    """An adapter cannot start or run: bad plugin, connection refused, authentication failed."""


class ConfigError(GatewayError, ValueError):
    """Invalid configuration. ``key`` is the dotted key, ``line`` the line in the file."""

    default_reason = Reason.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        line: int | None = None,
        file: str | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.key = key
        self.line = line
        self.file = file

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        prefix = f"{where}: " if where else ""
        key = f"{self.key}: " if self.key else ""
        tail = f" ({self.hint})" if self.hint else ""
        return f"{prefix}{key}{self.message}{tail}"


@dataclass(frozen=True, slots=True)
class Defect:
    """A grammar violation that lenient parsing accepted (``code`` as in :class:`ParseError`)."""

    code: str
    detail: str
    offset: int | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Loss:
    """A field that a mapping could not carry. ``field`` names it in the source protocol."""

    field: str
    detail: str
