"""HTTP requests <-> envelopes, and the status tables (pure: no sockets, no clocks).

The native form of this adapter is one HTTP/1.1 request per abstract operation (RFC 3860
§3 message, RFC 3859 §3 subscribe/unsubscribe/notify, plus the presentity's answer):

==============  ==========================  ======================================
operation       request                     body
==============  ==========================  ======================================
MESSAGE         ``POST /v1/messages``       the CPIM object, with its Content-Type
SUBSCRIBE       ``POST /v1/subscriptions``  none; ``Cpimgw-Duration`` (RFC 3859 §3.2)
UNSUBSCRIBE     ``DELETE /v1/subscriptions`` none
NOTIFY          ``POST /v1/presence``       PIDF (RFC 3863), or the signed object
AUTHORIZE       ``POST /v1/authorizations`` none; ``Cpimgw-Granted: true|false``
==============  ==========================  ======================================

Transport facts ride in headers, outside the object (RFC 3862 §2.2: the CPIM object is
never rewritten): ``Cpimgw-From`` / ``Cpimgw-To`` (gateway-wide transport addresses),
``Cpimgw-Id`` (the identity, stable across resends), ``Max-Forwards`` and
``Cpimgw-Trace`` (RFC 3860 §3.4.2 hop budget and transport history), and one
``Cpimgw-Attribute: name=value`` per envelope attribute. Bodies pass byte for byte, so
law L1 holds trivially through this wire format.

A value that is not visible US-ASCII travels in the RFC 8187 §3.2 ext-value form
(``UTF-8''`` then percent-encoded UTF-8); no URI starts with ``UTF-8''``, so the form is
unambiguous.

Statuses (RFC 3860 §3.4.1: success, failure, indeterminant) map to HTTP through one
table keyed by :class:`~canonical.errors.Reason`, :data:`HTTP_STATUS`; the way back,
for a peer gateway's answers, is :func:`error_from_status`.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.contract import Mapped
from canonical import cpim, smime
from canonical.address import Address
from canonical.envelope import (
    CPIM,
    DEFAULT_MAX_FORWARDS,
    MULTIPART_SIGNED,
    PIDF,
    PKCS7_MIME,
    Envelope,
    Operation,
    Origin,
    Payload,
    identity_of,
)
from canonical.errors import (
    DeliveryError,
    GatewayError,
    Loss,
    MappingError,
    ParseError,
    Reason,
)
from canonical.policy import DEFAULT, Policy
from canonical.presence import parse_pidf

# -- names on the wire ----------------------------------------------------------------

FROM = "Cpimgw-From"
TO = "Cpimgw-To"
ID = "Cpimgw-Id"
TRACE = "Cpimgw-Trace"
MAX_FORWARDS = "Max-Forwards"
DURATION = "Cpimgw-Duration"
GRANTED = "Cpimgw-Granted"
ATTRIBUTE = "Cpimgw-Attribute"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"

#: The headers this mapping reads; the shell copies only these from a request.
CARRIED = (FROM, TO, ID, TRACE, MAX_FORWARDS, DURATION, GRANTED, ATTRIBUTE, CONTENT_TYPE)

#: Operation -> (method, path).
ROUTES: dict[Operation, tuple[str, str]] = {
    Operation.MESSAGE: ("POST", "/v1/messages"),
    Operation.SUBSCRIBE: ("POST", "/v1/subscriptions"),
    Operation.UNSUBSCRIBE: ("DELETE", "/v1/subscriptions"),
    Operation.NOTIFY: ("POST", "/v1/presence"),
    Operation.AUTHORIZE: ("POST", "/v1/authorizations"),
}
OPERATIONS: dict[tuple[str, str], Operation] = {v: k for k, v in ROUTES.items()}

#: Media types each operation carries (RFC 3860 §3.3, RFC 3859 §3.3): the object itself
#: or the S/MIME object that wraps it (RFC 3862 §5, RFC 3923 §4).
MEDIA: dict[Operation, frozenset[str]] = {
    Operation.MESSAGE: frozenset({CPIM, MULTIPART_SIGNED, PKCS7_MIME}),
    Operation.NOTIFY: frozenset({PIDF, MULTIPART_SIGNED, PKCS7_MIME}),
}

#: Envelope attributes of a failure report (the convention of adapters.memory).
REPORT_REASON = "report.reason"
REPORT_IDENTITY = "report.identity"
REPORT_MESSAGE = "report.message"

_EXT = "UTF-8''"
_VISIBLE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
_IDENTITY = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_GATEWAY_ID = re.compile(r"[A-Za-z0-9._~:-]{1,128}")
_ATTR_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_TEXT = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
_MAX_HOPS = 255


# -- the native form --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request as this adapter sends or receives it: the method, the path, the
    headers this mapping reads (in order, names as written) and the exact body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` in order."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


@dataclass(frozen=True, slots=True)
class Authors:
    """Who the object itself names (RFC 3862 §4.1-4.2 From and To, RFC 3863 §4.1.1
    entity), read from inside the signature when the object is signed. None/empty when
    the object is encrypted or carries no such header."""

    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reading:
    """What :meth:`HttpMapper.read` found: the envelope, its losses, and the authors."""

    envelope: Envelope
    authors: Authors = field(default_factory=Authors)


# -- header values --------------------------------------------------------------------


def encode_value(text: str) -> str:
    """A header value for ``text``: as is when it is visible US-ASCII, else the RFC 8187
    §3.2 ext-value ``UTF-8''...``."""
    if _VISIBLE.fullmatch(text) and not text.startswith(_EXT):
        return text
    return _EXT + urllib.parse.quote(text, safe="", encoding="utf-8")


def decode_value(value: str, *, header: str) -> str:
    """Reverse :func:`encode_value`; ParseError names the header for a bad escape."""
    if not value.startswith(_EXT):
        return value
    try:
        return urllib.parse.unquote(value[len(_EXT) :], encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ParseError(
            "HTTP_BAD_EXT_VALUE",
            f"{header}: the RFC 8187 value is not percent-encoded UTF-8",
            hint="percent-encode the UTF-8 bytes after UTF-8''",
        ) from exc


def _address(request: HttpRequest, name: str) -> str | None:
    raw = request.get(name)
    if raw is None:
        return None
    text = decode_value(raw.strip(), header=name)
    try:
        # an xmpp: address is a JID as stamped (docs/addresses.md), so what
        # from_canonical writes in Cpimgw-From/To is read back by the next gateway
        Address.from_gateway(text)
    except ParseError as exc:
        raise ParseError(
            exc.code,
            f"{name}: {exc.message}",
            offset=exc.offset,
            hint=exc.hint or "give a URI such as im:user@example.com",
        ) from exc
    return text


def _digits(text: str) -> bool:
    """ASCII decimal digits only (RFC 9110 §5.6.1 DIGIT): ``str.isdigit`` also accepts
    ``³`` and other Unicode digits, which ``int()`` then refuses with a ValueError."""
    return text.isascii() and text.isdigit()


def _int_header(request: HttpRequest, name: str, *, low: int, high: int) -> int | None:
    raw = request.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not _digits(text) or not low <= int(text) <= high:
        raise ParseError(
            "HTTP_BAD_NUMBER",
            f"{name}: {text[:40]!r} is not a whole number from {low} to {high}",
            hint=f"send {name} as decimal digits",
        )
    return int(text)


def read_trace(value: str | None) -> tuple[str, ...]:
    """``Cpimgw-Trace: gw-a, gw-b`` -> ``("gw-a", "gw-b")``."""
    if value is None or not value.strip():
        return ()
    hops = tuple(part.strip() for part in value.split(","))
    for hop in hops:
        if not _GATEWAY_ID.fullmatch(hop):
            raise ParseError(
                "HTTP_BAD_TRACE",
                f"{TRACE}: {hop[:40]!r} is not a gateway id",
                hint="a comma-separated list of gateway ids",
            )
    return hops


def read_attributes(values: Iterable[str]) -> dict[str, str]:
    """``Cpimgw-Attribute: name=percent-encoded-value`` headers -> a dict."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, raw = value.strip().partition("=")
        if not sep or not _ATTR_NAME.fullmatch(name):
            raise ParseError(
                "HTTP_BAD_ATTRIBUTE",
                f"{ATTRIBUTE}: {value[:40]!r} is not name=value",
                hint="send one name=percent-encoded-value per header",
            )
        try:
            out[name] = urllib.parse.unquote(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise ParseError(
                "HTTP_BAD_ATTRIBUTE",
                f"{ATTRIBUTE}: the value of {name} is not percent-encoded UTF-8",
                hint="percent-encode the UTF-8 bytes of the value",
            ) from exc
    return out


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# -- who may set what --------------------------------------------------------------

#: Envelope attributes an application may set: IMDN requests and ids (RFC 5438) and a
#: presentity's subscription state (RFC 6665 §4.1.3). The rest belong to the core and
#: to the other adapters (``sip.*``, ``xmpp.*``, ``report.*``, ``signature.*``): only a
#: peer gateway, which carries them from its own adapters, may send those.
APPLICATION_ATTRIBUTES = frozenset(
    {
        "imdn.message-id",
        "imdn.disposition-notification",
        "subscription.state",
        "subscription.reason",
    }
)
#: ``Origin.context["kind"]`` of a peer gateway (set by the shell after mutual TLS).
PEER = "peer"


def trusted(origin: Origin) -> bool:
    """Whether the request came from a peer gateway (all attributes carried)."""
    return origin.context.get("kind") == PEER


def application_attributes(
    attributes: Mapping[str, str],
) -> tuple[dict[str, str], tuple[Loss, ...]]:
    """The attributes an application may set, and a Loss for each one it may not."""
    kept = {k: v for k, v in attributes.items() if k in APPLICATION_ATTRIBUTES}
    dropped = tuple(
        Loss(f"{ATTRIBUTE}: {name}", "only peer gateways set this attribute")
        for name in sorted(attributes)
        if name not in APPLICATION_ATTRIBUTES
    )
    return kept, dropped


# -- reading the object -------------------------------------------------------------


def read_authors(payload: Payload | None, policy: Policy = DEFAULT) -> Authors:
    """The From/To the object names (RFC 3862 §4), or a PIDF's entity (RFC 3863 §4.1.1).

    An unsigned ``message/cpim`` body is parsed with :func:`canonical.cpim.parse_body` in
    the policy's mode, so bad input raises :class:`ParseError` with its code and offset;
    a signed object is read inside its signature (``canonical.smime.signed_content``);
    an encrypted object names nobody the gateway can see.
    """
    if payload is None:
        return Authors()
    media = payload.media_type
    if media == CPIM:
        return _cpim_authors(cpim.parse_body(payload.body, policy=policy))
    if media == PIDF:
        return Authors(sender=parse_pidf(payload.body, policy=policy).entity)
    if payload.is_signed:
        content = smime.signed_content(payload)
        if content is None:
            raise ParseError(
                "HTTP_SIGNED_UNREADABLE",
                f"the {media} body cannot be read (MIME framing or CMS structure)",
                hint="send the signed object exactly as the signer produced it",
            )
        head = content[:200].lower()
        if head.startswith(b"content-type: message/cpim"):
            return _cpim_authors(cpim.parse(content, policy=policy))
        if head.startswith(b"content-type: application/pidf+xml"):
            end = content.find(b"\r\n\r\n")
            if end > 0:
                return Authors(sender=parse_pidf(content[end + 4 :], policy=policy).entity)
    return Authors()


def _cpim_authors(message: cpim.CpimMessage) -> Authors:
    sender = message.sender.uri if message.sender is not None else None
    return Authors(sender=sender, recipients=tuple(p.uri for p in message.to))


# -- the mapper ------------------------------------------------------------------------


class HttpMapper:
    """Envelope <-> :class:`HttpRequest` (the :class:`~adapters.contract.Mapper` of the
    CPIM-over-HTTP adapter), plus the failure report form (ErrorMapper)."""

    def __init__(self, *, adapter: str = "cpim", policy: Policy = DEFAULT) -> None:
        self.adapter = adapter
        self.policy = policy

    # -- wire format (HTTP/1.1 request bytes, RFC 9112 §2-§6) ------------------------

    def encode(self, native: HttpRequest) -> bytes:
        """The request as HTTP/1.1 bytes with a Content-Length."""
        lines = [f"{native.method} {native.path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in native.headers]
        lines.append(f"{CONTENT_LENGTH}: {len(native.body)}")
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        return head + native.body

    def decode(self, data: bytes) -> HttpRequest:
        """HTTP/1.1 request bytes -> :class:`HttpRequest` (ParseError with the offset)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ParseError(
                "HTTP_NO_HEAD_END",
                "no empty line ends the request head",
                offset=len(data),
                hint="end the header block with CRLF CRLF (RFC 9112 §2.1)",
            )
        head = data[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ParseError(
                "HTTP_BAD_REQUEST_LINE",
                f"{lines[0][:60]!r} is not METHOD PATH HTTP/1.x",
                offset=0,
                line=1,
                hint="RFC 9112 §3",
            )
        headers: list[tuple[str, str]] = []
        length: int | None = None
        offset = len(lines[0]) + 2
        for number, line in enumerate(lines[1:], start=2):
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise ParseError(
                    "HTTP_BAD_HEADER",
                    f"{line[:60]!r} is not a header field",
                    offset=offset,
                    line=number,
                    hint="name: value (RFC 9112 §5)",
                )
            if name.lower() == CONTENT_LENGTH.lower():
                length = int(value.strip()) if _digits(value.strip()) else -1
            else:
                headers.append((name, value.strip(" \t")))
            offset += len(line) + 2
        body = data[end + 4 :]
        if length is not None and length != len(body):
            raise ParseError(
                "HTTP_BAD_LENGTH",
                f"Content-Length says {length}, the body has {len(body)} bytes",
                offset=end + 4,
                hint="send the exact body length",
            )
        return HttpRequest(parts[0], parts[1], tuple(headers), body)

    def equal(self, a: HttpRequest, b: HttpRequest) -> bool:
        """Same operation, same carried headers (names case-insensitive, values exact and
        in order per name), same body bytes."""
        return (
            a.method.upper() == b.method.upper()
            and a.path == b.path
            and _carried(a.headers) == _carried(b.headers)
            and a.body == b.body
        )

    # -- native -> canonical ---------------------------------------------------------

    def to_canonical(
        self, native: HttpRequest, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        envelope = self.read(native, origin=origin, received_at=received_at).envelope
        return Mapped(envelope, envelope.losses)

    def read(self, native: HttpRequest, *, origin: Origin, received_at: float) -> Reading:
        """The envelope of a request, and the authors its object names.

        When ``Cpimgw-From``/``Cpimgw-To`` are absent they default to the object's own
        From and (single) To. ``Cpimgw-Id`` is the identity as sent; without one the
        identity is derived from the request and the time it arrived.
        """
        operation = OPERATIONS.get((native.method.upper(), native.path))
        if operation is None:
            raise ParseError(
                "HTTP_UNKNOWN_OPERATION",
                f"{native.method} {native.path} is not a CPIM operation",
                hint="see docs/http-api.md for the operations",
            )
        payload = self._payload(native, operation)
        authors = read_authors(payload, self.policy)
        sender = _address(native, FROM) or authors.sender
        if sender is None:
            raise ParseError(
                "HTTP_NO_SENDER",
                f"no {FROM} header and the object names no sender",
                hint=f"send {FROM}: <URI>, or a CPIM From header in the object",
            )
        recipient = _address(native, TO)
        if recipient is None:
            if len(authors.recipients) != 1:
                raise ParseError(
                    "HTTP_NO_RECIPIENT",
                    f"no {TO} header and the object names "
                    f"{len(authors.recipients) or 'no'} recipients",
                    hint=f"send {TO}: <URI> (one request per recipient)",
                )
            recipient = authors.recipients[0]
        duration = _int_header(native, DURATION, low=0, high=2**31 - 1)
        granted_text = native.get(GRANTED)
        granted: bool | None = None
        if operation is Operation.AUTHORIZE:
            if granted_text is None or granted_text.strip().lower() not in ("true", "false"):
                raise ParseError(
                    "HTTP_BAD_GRANTED",
                    f"{GRANTED} must be true or false for an authorization",
                    hint=f"send {GRANTED}: true (approve) or false (refuse)",
                )
            granted = granted_text.strip().lower() == "true"
        hops = _int_header(native, MAX_FORWARDS, low=0, high=_MAX_HOPS)
        trace = read_trace(native.get(TRACE))
        attributes = read_attributes(native.get_all(ATTRIBUTE))
        losses: tuple[Loss, ...] = ()
        if not trusted(origin):
            attributes, losses = application_attributes(attributes)
        native_id = native.get(ID)
        if native_id is not None:
            native_id = native_id.strip()
            if not _IDENTITY.fullmatch(native_id):
                raise ParseError(
                    "HTTP_BAD_ID",
                    f"{ID}: {native_id[:40]!r} is not 1-128 of A-Z a-z 0-9 . _ ~ -",
                    hint="use a UUID or the hex identity of the object",
                )
        identity = native_id or identity_of(
            "cpim-http",
            origin.peer,
            operation.value,
            sender,
            recipient,
            payload.content_type if payload else None,
            payload.body if payload else None,
            repr(received_at),
        )
        envelope = Envelope(
            operation=operation,
            sender=sender,
            recipient=recipient,
            payload=payload,
            identity=identity,
            origin=Origin(
                adapter=origin.adapter,
                peer=origin.peer,
                native_id=native_id,
                reply_to=origin.reply_to or sender,
                context=dict(origin.context),
            ),
            max_forwards=DEFAULT_MAX_FORWARDS if hops is None else hops,
            trace=trace,
            received_at=received_at,
            duration=duration if operation is Operation.SUBSCRIBE else None,
            granted=granted,
            losses=losses,
            attributes=attributes,
        )
        return Reading(envelope, authors)

    def _payload(self, native: HttpRequest, operation: Operation) -> Payload | None:
        content_type = native.get(CONTENT_TYPE)
        allowed = MEDIA.get(operation)
        if allowed is None or (
            operation is Operation.MESSAGE
            and not native.body
            and any(v.startswith(REPORT_REASON + "=") for v in native.get_all(ATTRIBUTE))
        ):
            if native.body:
                raise ParseError(
                    "HTTP_UNEXPECTED_BODY",
                    f"a {operation.value} request carries no body ({len(native.body)} sent)",
                    hint="send the request without a body",
                )
            return None
        if content_type is None or not native.body:
            raise ParseError(
                "HTTP_NO_BODY",
                f"a {operation.value} request needs a body with its Content-Type",
                hint="send the CPIM object (message/cpim, multipart/signed, ...) as the body",
            )
        media = _media_type(content_type)
        if media not in allowed:
            raise MappingError(
                f"{media} is not carried as a {operation.value}"
                f" (carried: {', '.join(sorted(allowed))})",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="wrap the content in message/cpim (RFC 3862) or sign it (RFC 8551)",
            )
        if media == MULTIPART_SIGNED and "boundary=" not in content_type.lower():
            raise ParseError(
                "HTTP_NO_BOUNDARY",
                "multipart/signed without a boundary parameter",
                hint="send the Content-Type exactly as the signer produced it",
            )
        return Payload(content_type.strip(), native.body)

    # -- canonical -> native ---------------------------------------------------------

    def from_canonical(self, envelope: Envelope) -> Mapped[HttpRequest]:
        """The request for ``envelope``. MappingError when a value cannot be an HTTP
        header (a Content-Type or gateway id outside visible US-ASCII, RFC 9110 §5.5)."""
        method, path = ROUTES[envelope.operation]
        for hop in envelope.trace:
            if not _GATEWAY_ID.fullmatch(hop):
                raise MappingError(
                    f"gateway id {hop[:40]!r} in the transport history cannot be a {TRACE} entry",
                    reason=Reason.BAD_REQUEST,
                    hint="gateway ids are letters, digits and . _ ~ : -",
                )
        if envelope.payload is not None and not _HEADER_TEXT.fullmatch(
            envelope.payload.content_type
        ):
            raise MappingError(
                f"the content type {envelope.payload.content_type[:60]!r} cannot be an HTTP"
                " header value (visible US-ASCII only)",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="RFC 2231 encodes non-ASCII parameter values",
            )
        headers: list[tuple[str, str]] = [
            (FROM, encode_value(envelope.sender)),
            (TO, encode_value(envelope.recipient)),
            (ID, _wire_identity(envelope.identity)),
            (MAX_FORWARDS, str(max(0, min(_MAX_HOPS, envelope.max_forwards)))),
        ]
        if envelope.trace:
            headers.append((TRACE, ", ".join(envelope.trace)))
        if envelope.operation is Operation.SUBSCRIBE and envelope.duration is not None:
            headers.append((DURATION, str(envelope.duration)))
        if envelope.operation is Operation.AUTHORIZE:
            headers.append((GRANTED, "true" if envelope.granted else "false"))
        lost: list[Loss] = []
        for name, value in sorted(envelope.attributes.items()):
            if _ATTR_NAME.fullmatch(name):
                headers.append((ATTRIBUTE, f"{name}={urllib.parse.quote(value, safe='')}"))
            else:
                lost.append(Loss(f"attribute {name[:40]!r}", "the name cannot be a header value"))
        body = b""
        if envelope.payload is not None and envelope.operation in MEDIA:
            headers.append((CONTENT_TYPE, envelope.payload.content_type))
            body = envelope.payload.body
        return Mapped(HttpRequest(method, path, tuple(headers), body), tuple(lost))

    # -- failures (ErrorMapper) ------------------------------------------------------

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> HttpRequest:
        """The report telling the sender of ``envelope`` it failed (:func:`report_of`)."""
        return self.from_canonical(report_of(envelope, error)).value

    def error_from_native(self, native: HttpRequest) -> GatewayError | None:
        attributes = read_attributes(native.get_all(ATTRIBUTE))
        reason = attributes.get(REPORT_REASON)
        if reason is None:
            return None
        try:
            cause = Reason(reason)
        except ValueError:
            cause = Reason.INTERNAL
        return GatewayError(attributes.get(REPORT_MESSAGE, ""), reason=cause)


def report_of(envelope: Envelope, error: GatewayError) -> Envelope:
    """A failure report: a MESSAGE without body from the failed recipient back to the
    sender, with ``report.*`` attributes (RFC 3860 §3.4.1 failure carried back; the
    convention of ``adapters.memory``), identity derived from the failed one."""
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


def _wire_identity(identity: str) -> str:
    return identity if _IDENTITY.fullmatch(identity) else identity_of(identity)


def _carried(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


# -- events for clients (stream, webhook) ---------------------------------------------


def event_of(envelope: Envelope, *, seq: int, kind: str = "") -> dict[str, Any]:
    """The JSON event a client receives for ``envelope`` (SSE data, WebSocket frame,
    webhook body). The payload body is base64, so its bytes arrive exactly."""
    payload = envelope.payload
    return {
        "id": str(seq),
        "kind": kind or envelope.operation.value,
        "operation": envelope.operation.value,
        "from": envelope.sender,
        "to": envelope.recipient,
        "identity": envelope.identity,
        "content_type": payload.content_type if payload else None,
        "body": base64.b64encode(payload.body).decode("ascii") if payload else None,
        "max_forwards": envelope.max_forwards,
        "trace": list(envelope.trace),
        "duration": envelope.duration,
        "granted": envelope.granted,
        "attributes": dict(envelope.attributes),
    }


# -- statuses ----------------------------------------------------------------------------

#: Reason -> HTTP status (RFC 9110 §15; 508 is RFC 5842 §7.2). One table for the API's
#: answers and the status resource; docs/http-api.md and docs/mapping/errors.md list it.
HTTP_STATUS: dict[Reason, int] = {
    Reason.BAD_REQUEST: 400,
    Reason.UNAUTHENTICATED: 401,
    Reason.FORBIDDEN: 403,
    Reason.UNKNOWN_DESTINATION: 404,
    Reason.CONFLICT: 409,
    Reason.TOO_LARGE: 413,
    Reason.UNSUPPORTED_MEDIA: 415,
    Reason.UNSUPPORTED_FEATURE: 422,
    Reason.RATE_LIMITED: 429,
    Reason.SIGNATURE_INVALID: 403,
    Reason.STALE: 400,
    Reason.INTERNAL: 500,
    Reason.UNAVAILABLE: 503,
    Reason.TIMEOUT: 504,
    Reason.EXPIRED: 504,
    Reason.LOOP: 508,
}

#: HTTP status -> (Reason, retryable) for a peer's answer when its body names no reason.
FROM_STATUS: dict[int, tuple[Reason, bool]] = {
    400: (Reason.BAD_REQUEST, False),
    401: (Reason.UNAUTHENTICATED, False),
    403: (Reason.FORBIDDEN, False),
    404: (Reason.UNKNOWN_DESTINATION, False),
    408: (Reason.TIMEOUT, True),
    409: (Reason.CONFLICT, False),
    413: (Reason.TOO_LARGE, False),
    415: (Reason.UNSUPPORTED_MEDIA, False),
    422: (Reason.UNSUPPORTED_FEATURE, False),
    429: (Reason.RATE_LIMITED, True),
    500: (Reason.INTERNAL, True),
    502: (Reason.UNAVAILABLE, True),
    503: (Reason.UNAVAILABLE, True),
    504: (Reason.TIMEOUT, True),
    508: (Reason.LOOP, False),
}

#: Reasons worth another attempt when a peer names them (the rest are final; an
#: ``expired`` peer has given up already). docs/mapping/errors.md, "Retry?".
RETRYABLE = frozenset({Reason.RATE_LIMITED, Reason.TIMEOUT, Reason.UNAVAILABLE, Reason.INTERNAL})

#: RFC 3860 §3.4.1 status of each state of the status resource.
CPIM_STATUS = {"accepted": None, "delivered": "success", "failed": "failure"}


def status_of(reason: Reason) -> int:
    """The HTTP status for a failure ``reason``."""
    return HTTP_STATUS[reason]


def problem(
    error: GatewayError, *, status: int | None = None, instance: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem object for ``error``, with cpimgw's members: ``reason``,
    ``hint``, and for a ParseError its ``code``, ``line`` and ``offset``."""
    code = status if status is not None else status_of(error.reason)
    body: dict[str, Any] = {
        "type": f"urn:cpimgw:reason:{error.reason.value}",
        "title": error.reason.value,
        "status": code,
        "detail": error.message,
        "reason": error.reason.value,
    }
    if error.hint:
        body["hint"] = error.hint
    if isinstance(error, ParseError):
        body["code"] = error.code
        if error.line is not None:
            body["line"] = error.line
        if error.offset is not None:
            body["offset"] = error.offset
    if isinstance(error, DeliveryError) and error.retry_after is not None:
        body["retry_after"] = error.retry_after
    if instance is not None:
        body["instance"] = instance
    return body


def error_from_status(
    status: int, body: Mapping[str, Any] | None, *, retry_after: float | None, where: str
) -> DeliveryError:
    """A peer's failure answer as a :class:`DeliveryError` (retryable by its reason)."""
    named = body.get("reason") if body else None
    if isinstance(named, str) and named in Reason._value2member_map_:
        reason = Reason(named)
        retryable = reason in RETRYABLE
    else:
        reason, retryable = FROM_STATUS.get(
            status,
            (Reason.INTERNAL, True) if status >= 500 else (Reason.BAD_REQUEST, False),
        )
    detail = body.get("detail") if body else None
    text = f"{where} answered {status}" + (f": {detail}" if isinstance(detail, str) else "")
    hint = body.get("hint") if body else None
    return DeliveryError(
        text,
        retryable=retryable,
        reason=reason,
        hint=hint if isinstance(hint, str) else "",
        retry_after=retry_after,
        status=str(status),
    )


def retry_after_of(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` delay-seconds value (RFC 9110 §10.2.3); the
    HTTP-date form needs a clock, so it is read as absent."""
    if value is None:
        return None
    text = value.strip()
    return float(text) if _digits(text) else None


__all__ = [
    "CARRIED",
    "HTTP_STATUS",
    "ROUTES",
    "Authors",
    "HttpMapper",
    "HttpRequest",
    "Reading",
    "decode_value",
    "encode_value",
    "error_from_status",
    "event_of",
    "problem",
    "read_authors",
    "report_of",
    "status_of",
]
