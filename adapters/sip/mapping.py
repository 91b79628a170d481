"""SIP requests <-> canonical envelopes. Pure: no sockets, no clocks (time is passed in).

Messages (RFC 3428 MESSAGE) follow docs/architecture.md and ``docs/mapping/sip.md``:

- **Opaque bodies** — ``message/cpim``, ``multipart/signed``, ``application/pkcs7-mime`` —
  are the payload, byte for byte, with the SIP Content-Type value as written (RFC 3862
  §2.2: the body is never rewritten; RFC 8591 §4 for S/MIME). The SIP-level fields around
  them that have no place in the object (display names, end-to-end headers) ride in
  ``Envelope.attributes`` under ``sip.*``.
- **Native bodies** — ``text/plain`` (charset absent: UTF-8; bytes that are not UTF-8:
  read as Latin-1 with a recorded Loss), RFC 3994 isComposing, RFC 5438 IMDN, any other
  MIME type — are built into a deterministic canonical object (:func:`canonical.cpim.build`):
  CPIM From/To from the SIP From/To (display name as Formal-name), Subject from SIP
  Subject, ``Content-*`` headers as entity headers, and every other end-to-end SIP header
  as an extension header in ``NS: sip <urn:cpimgw:sip:0>``. Back toward SIP such an object
  becomes the native request again (law L2) — but only when rebuilding it gives the same
  bytes, so law L1 always holds.

Toward SIP the body type is a per-route choice: ``message/cpim`` (default) or
``text/plain;charset=UTF-8`` for user agents that only take text; a 415 to message/cpim
gets one text/plain retry for unsigned objects (:meth:`SipMapper.text_fallback`), never
for signed or encrypted ones.

Presence: SUBSCRIBE -> SUBSCRIBE/UNSUBSCRIBE envelopes (RFC 3856, RFC 6665 §4.1-4.2),
NOTIFY -> NOTIFY envelopes with the PIDF bytes untouched and ``subscription.state``.
Errors: :func:`error_response` (Reason -> SIP status) and :func:`delivery_error` (SIP final
response -> DeliveryError with ``retryable`` and ``retry_after``), per
``research/mapping/errors.md`` (RFC 7247 §7, RFC 3261 §21, RFC 3428 §7).
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adapters.contract import Mapped
from adapters.sip import header as hdr
from adapters.sip.codec import DEFAULT_LIMITS, Limits, Request, Response, canonical_name, parse
from canonical import cpim
from canonical.address import Address
from canonical.envelope import (
    CPIM,
    DEFAULT_MAX_FORWARDS,
    IMDN,
    ISCOMPOSING,
    PIDF,
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

#: Namespace of the SIP-only fields in canonical objects cpimgw builds (docs/architecture.md).
SIP_NS = "urn:cpimgw:sip:0"
#: RFC 5438 §6 CPIM header namespace.
IMDN_HEADERS_NS = "urn:ietf:params:imdn"
TEXT_PLAIN = "text/plain;charset=UTF-8"
CANONICAL_TEXT = "text/plain; charset=utf-8"
TRACE_HEADER = "Cpimgw-Trace"
#: Body types a route may ask for (``body_type`` config).
BODY_TYPES = ("message/cpim", "text/plain")

#: Transport and transaction headers: never end-to-end content (RFC 3261 §16.6, §20).
TRANSPORT_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "max-forwards",
        "cseq",
        "call-id",
        "content-length",
        "content-type",
        "contact",
        "from",
        "to",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "user-agent",
        "server",
        "allow",
        "allow-events",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "timestamp",
        "path",
        "cpimgw-trace",
        "event",
        "subscription-state",
        "expires",
        "min-expires",
        "retry-after",
        "warning",
        "p-asserted-identity",
        "p-preferred-identity",
        "p-charging-vector",
        "p-visited-network-id",
    }
)
#: ``Content-*`` headers describe the body: they become entity headers of a built object.
ENTITY_HEADERS = frozenset(
    {
        "content-language",
        "content-disposition",
        "content-id",
        "content-description",
        "content-transfer-encoding",
    }
)
_TEXT_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
_CALL_ID_SAFE = re.compile(r"[^A-Za-z0-9\-.!%*_+`'~]")
_EXT_NAME = re.compile(r"[!#$%&'*+\-0-9A-Za-z^_`|~]+")


@dataclass(frozen=True, slots=True)
class BodyRoute:
    """``pattern`` (domain glob as in routing: ``*``, ``example.com``, ``*.example.com``, or
    a full ``sip:user@host``) -> ``body_type`` (``message/cpim`` or ``text/plain``)."""

    pattern: str
    body_type: str


@functools.lru_cache(maxsize=8192)
def sip_address(address: str) -> str:
    """A gateway-wide address as a SIP URI (RFC 7247 §6): any scheme is accepted.

    An ``xmpp:`` JID's localpart is XEP-0106-unescaped and percent-encoded as RFC 3261
    §25.1 requires (``xmpp:d\\27artagnan@x`` -> ``sip:d'artagnan@x``), and its resource
    becomes the ``gr`` parameter (RFC 7247 §6.3: ``/my phone`` -> ``;gr=my%20phone``)."""
    try:
        return Address.from_gateway(address).sip_uri
    except ParseError as exc:
        raise MappingError(
            f"address {address!r} cannot be written as a SIP URI: {exc}",
            reason=Reason.BAD_REQUEST,
            hint="give a sip:, im:, pres: or xmpp: address with a user part",
        ) from exc


_NS_SIP = f"NS: sip <{SIP_NS}>\r\n".encode()
_SIP_NS_BYTES = SIP_NS.encode()
_PLAIN_EXTENSION = re.compile(r"sip\.[A-Za-z0-9-]{1,64}")


def write_cpim(
    sender: str,
    recipient: str,
    *,
    extensions: Sequence[tuple[str, str]],
    content_type: str,
    entity_headers: Sequence[tuple[str, str]],
    body: bytes,
) -> bytes | None:
    """The bytes ``cpim.build`` writes for a MESSAGE without subjects or display names
    (From, To, ``NS: sip``, the ``sip.*`` extension headers with values escaped by
    :func:`cpim.encode_value`, RFC 3862 §2.3, then the entity; the From/To lines and the
    entity's headers come from :func:`cpim.encode_parties` and
    :func:`cpim.encode_entity_headers`), written directly: build's
    strict reading of its own output is most of its cost, and every line here is of a
    shape it accepts. None for anything else (the caller then uses ``cpim.build``); a
    property test pins the two to the same bytes."""
    parties = cpim.encode_parties(sender, (recipient,), refused="none")
    entity = cpim.encode_entity_headers(content_type, entity_headers)
    if parties is None or entity is None:
        return None
    encode_value = cpim.encode_value
    lines = [parties, _NS_SIP]
    try:
        for name, value in extensions:
            if not value or not _PLAIN_EXTENSION.fullmatch(name):
                return None
            lines.append(f"{name}: {encode_value(value)}\r\n".encode())
    except UnicodeEncodeError:
        return None  # bytes that were not UTF-8 (kept as surrogates): build refuses them
    lines += (b"\r\n", entity, body)
    return b"".join(lines)


def _aor(uri: hdr.Uri) -> str:
    if not uri.is_sip:
        return uri.text
    return uri.address_of_record


def call_id_word(text: str) -> str:
    return _CALL_ID_SAFE.sub("-", text) or "cpimgw"


def _charset_of(media: hdr.MediaType) -> str | None:
    value = media.param("charset")
    return value.lower() if value else None


def _display(addr: hdr.NameAddr) -> str | None:
    return addr.display_name or None


@dataclass(slots=True)
class SipMapper:
    """The pure mapper of the SIP adapter (``adapters.contract.Mapper[Request]``)."""

    gateway_id: str = "cpimgw"
    policy: Policy = DEFAULT
    routes: Sequence[BodyRoute] = ()
    default_body_type: str = "message/cpim"
    limits: Limits = DEFAULT_LIMITS
    #: The gateway's own SIP address for failure notices (``report``).
    notice_from: str = "sip:cpimgw@invalid"

    # ---------------------------------------------------------------- wire (Mapper)

    def encode(self, native: Request) -> bytes:
        return bytes(native)

    def decode(self, data: bytes) -> Request:
        msg = parse(data, limits=self.limits)
        if not isinstance(msg, Request):
            raise ParseError("NOT_A_REQUEST", "a SIP response is not a native message")
        return msg

    def equal(self, a: Request, b: Request) -> bool:
        """SIP equality for law L2: method, Request-URI (AoR), From and To (AoR and display
        name, tags excluded), body type and bytes, and the end-to-end headers — in order
        within one name, any order across names (RFC 3261 §7.3.1)."""
        return _semantic(a) == _semantic(b)

    # ----------------------------------------------------------- native -> canonical

    def to_canonical(
        self, native: Request, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        """A MESSAGE, SUBSCRIBE or NOTIFY as an envelope (other methods: MappingError)."""
        if native.method == "MESSAGE":
            return self._message_to_canonical(native, origin, received_at)
        if native.method == "SUBSCRIBE":
            return self.subscribe_to_canonical(native, origin=origin, received_at=received_at)
        if native.method == "NOTIFY":
            return self.notify_to_canonical(native, origin=origin, received_at=received_at)
        raise MappingError(
            f"{native.method} does not cross the gateway",
            reason=Reason.UNSUPPORTED_FEATURE,
            hint="MESSAGE, SUBSCRIBE and NOTIFY are mapped",
        )

    def _hops(self, native: Request) -> tuple[int, tuple[str, ...]]:
        max_forwards = native.max_forwards
        trace: tuple[str, ...] = ()
        value = ", ".join(native.get_all(TRACE_HEADER))
        if value:
            trace = tuple(t.strip() for t in value.split(",") if t.strip())
        return (DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards), trace

    def _message_to_canonical(
        self, native: Request, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        from_ = native.from_
        to = native.to
        sender = _aor(from_.uri)
        recipient = _aor(native.request_uri)
        media = native.content_type
        if media is None:
            if native.body:
                raise MappingError(
                    "MESSAGE body without Content-Type",
                    reason=Reason.UNSUPPORTED_MEDIA,
                    hint="send Content-Type: text/plain or message/cpim (RFC 3428 §4)",
                )
            media = hdr.MediaType("text", "plain")
        content_type = native.get("Content-Type") or "text/plain"
        losses: list[Loss] = []
        attributes: dict[str, str] = {}
        payload: Payload
        if media.essence in (CPIM, "multipart/signed", "application/pkcs7-mime"):
            payload = Payload(content_type, native.body)
            attributes.update(self._envelope_attributes(native, from_, to))
            if media.essence == CPIM:
                attributes.update(_imdn_attributes(payload.body, self.policy))
        else:
            payload, built_losses = self._build(native, from_, to, media, content_type)
            losses.extend(built_losses)
        if len(payload.body) > self.policy.max_message_size:
            raise MappingError(
                f"message of {len(payload.body)} bytes exceeds the limit of "
                f"{self.policy.max_message_size}",
                reason=Reason.TOO_LARGE,
                hint="send a smaller message",
            )
        max_forwards, trace = self._hops(native)
        identity = identity_of("sip", native.call_id, str(native.cseq.number))
        envelope = Envelope(
            operation=Operation.MESSAGE,
            sender=sender,
            recipient=recipient,
            payload=payload,
            identity=identity,
            origin=Origin(
                adapter=origin.adapter,
                peer=origin.peer,
                native_id=native.call_id,
                reply_to=sender,
                context={**origin.context, "method": "MESSAGE"},
            ),
            max_forwards=max_forwards,
            trace=trace,
            received_at=received_at,
            losses=tuple(losses),
            attributes=attributes,
        )
        return Mapped(envelope, tuple(losses))

    def _envelope_attributes(
        self, native: Request, from_: hdr.NameAddr, to: hdr.NameAddr
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        if from_.display_name:
            out["sip.from-display"] = from_.display_name
        if to.display_name:
            out["sip.to-display"] = to.display_name
        if _aor(to.uri) != _aor(native.request_uri):
            out["sip.to"] = _aor(to.uri)
        extra = [[h.name, h.value] for h in native.headers if h.key not in TRANSPORT_HEADERS]
        if extra:
            out["sip.headers"] = json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
        return out

    def _build(
        self,
        native: Request,
        from_: hdr.NameAddr,
        to: hdr.NameAddr,
        media: hdr.MediaType,
        content_type: str,
    ) -> tuple[Payload, list[Loss]]:
        """A native body as a deterministic canonical object (RFC 3862 §3, §4)."""
        losses: list[Loss] = []
        body = native.body
        entity_type = content_type
        extensions: list[tuple[str, str]] = []
        if media.essence == "text/plain":
            charset = _charset_of(media)
            text: str | None = None
            if charset in (None, *_TEXT_CHARSETS):
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    text = body.decode("latin-1")
                    losses.append(
                        Loss(
                            "body",
                            "text is not UTF-8: read as Latin-1 and re-encoded as UTF-8 "
                            f"(charset {charset or 'absent'})",
                        )
                    )
            else:
                try:
                    codecs.lookup(charset)
                    text = body.decode(charset)
                    losses.append(
                        Loss("body/charset", f"{charset} text re-encoded as UTF-8 (RFC 7572 §8)")
                    )
                except (LookupError, UnicodeDecodeError):
                    text = None  # unknown charset: the bytes travel as they are
            if text is not None:
                body = text.encode("utf-8")
                entity_type = CANONICAL_TEXT
                if content_type != CANONICAL_TEXT:
                    extensions.append(("sip.Content-Type", content_type))
        elif media.essence in (ISCOMPOSING, IMDN):
            entity_type = content_type
        subjects: list[tuple[str | None, str]] = []
        entity_headers: list[tuple[str, str]] = []
        subject_fields = native.fields("Subject")
        for h in native.headers:
            if h.key in TRANSPORT_HEADERS:
                continue
            if h.key == "subject" and len(subject_fields) == 1 and h.value:
                subjects.append((None, h.value))
                continue
            if h.key in ENTITY_HEADERS and h.value:
                entity_headers.append((_title(h.key), h.value))
                continue
            name = f"sip.{h.name}"
            if not _EXT_NAME.fullmatch(h.name) or not h.value:
                losses.append(
                    Loss(f"header/{h.name}", "header name or empty value not writable in CPIM")
                )
                continue
            extensions.append((name, h.value))
        if from_.uri.params or to.uri.params:
            losses.append(Loss("From/To", "URI parameters of From/To are not carried"))
        if not subjects and not from_.display_name and not to.display_name:
            direct = write_cpim(
                _aor(from_.uri),
                _aor(to.uri),
                extensions=extensions,
                content_type=entity_type,
                entity_headers=entity_headers,
                body=body,
            )
            if direct is not None:
                return Payload(CPIM, direct), losses
        try:
            message = cpim.build(
                sender=cpim.Party(_display(from_), _aor(from_.uri)),
                to=[cpim.Party(_display(to), _aor(to.uri))],
                subjects=subjects,
                namespaces=[("sip", SIP_NS)],
                extensions=extensions,
                content_type=entity_type,
                entity_headers=entity_headers,
                body=body,
                form="body",
            )
        except ValueError as exc:
            raise MappingError(
                f"cannot build a canonical message from this MESSAGE: {exc}",
                reason=Reason.BAD_REQUEST,
                hint="check From/To URIs and header values",
            ) from exc
        return Payload(CPIM, bytes(message)), losses

    # ----------------------------------------------------------- canonical -> native

    def body_type_for(self, recipient: str) -> str:
        """The configured body type for ``recipient`` (first matching route wins)."""
        if not self.routes:
            return self.default_body_type
        try:
            address = Address.from_gateway(recipient)
            aor = address.bare.sip_uri
        except ParseError:  # refused by from_canonical with the reason
            return self.default_body_type
        for route in self.routes:
            if route.pattern.startswith(("sip:", "sips:", "im:", "xmpp:")):
                if sip_address(route.pattern) == aor:
                    return route.body_type
            elif address.matches(route.pattern):
                return route.body_type
        return self.default_body_type

    def call_id(self, envelope: Envelope) -> str:
        """``identity@gateway-id`` (docs/architecture.md "Identity"): same on every resend."""
        return f"{envelope.identity}@{call_id_word(self.gateway_id)}"

    def from_canonical(self, envelope: Envelope) -> Mapped[Request]:
        """The request for an envelope: MESSAGE fully; SUBSCRIBE/NOTIFY out of dialog (the
        subscription layer fills the dialog's Call-ID, tags, CSeq and route)."""
        if envelope.operation is Operation.MESSAGE:
            return self._message_from_canonical(envelope, self.body_type_for(envelope.recipient))
        if envelope.operation in (Operation.SUBSCRIBE, Operation.UNSUBSCRIBE):
            losses: tuple[Loss, ...] = ()
            if envelope.operation is Operation.SUBSCRIBE and envelope.duration is None:
                losses = (
                    Loss(
                        "duration",
                        "SIP subscriptions expire (RFC 6665 §4.1.2): sent with Expires 3600, "
                        "refreshed by the gateway until cancelled",
                    ),
                )
            return Mapped(self.subscribe_request(envelope), losses)
        if envelope.operation in (Operation.NOTIFY, Operation.AUTHORIZE):
            return Mapped(self.notify_request(envelope))
        raise MappingError(
            f"operation {envelope.operation} has no SIP request",
            reason=Reason.UNSUPPORTED_FEATURE,
        )

    def text_fallback(self, envelope: Envelope) -> Mapped[Request]:
        """The text/plain retry after a 415 (RFC 3261 §21.4.13): unsigned objects only."""
        payload = envelope.payload
        if payload is not None and payload.is_secured:
            raise MappingError(
                "the recipient does not accept this signed or encrypted message, and turning "
                "it into text/plain would break its signature",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="the recipient's client must accept message/cpim or S/MIME bodies",
            )
        mapped = self._message_from_canonical(envelope, "text/plain")
        losses = (*mapped.losses, Loss("Content-Type", "message/cpim refused (415): text/plain"))
        return Mapped(mapped.value, losses)

    def _base_headers(
        self,
        envelope: Envelope,
        method: str,
        *,
        to_uri: str,
        from_display: str | None,
        to_display: str | None,
    ) -> list[tuple[str, str]]:
        sender = sip_address(envelope.sender)
        tag = envelope.identity[:12] or "cpimgw"
        from_addr = hdr.NameAddr(hdr.parse_uri(sender), from_display, (("tag", tag),))
        to_addr = hdr.NameAddr(hdr.parse_uri(to_uri), to_display)
        headers = [
            ("From", str(from_addr)),
            ("To", str(to_addr)),
            ("Call-ID", self.call_id(envelope)),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", str(max(0, min(255, envelope.max_forwards)))),
        ]
        if envelope.trace:
            headers.append((TRACE_HEADER, ", ".join(envelope.trace)))
        return headers

    def _message_from_canonical(self, envelope: Envelope, body_type: str) -> Mapped[Request]:
        payload = envelope.payload
        if payload is None:
            raise MappingError("a MESSAGE needs a payload", reason=Reason.BAD_REQUEST)
        recipient = sip_address(envelope.recipient)
        attrs = envelope.attributes
        # The object is read only to give back a native request this mapper built (it
        # declares the sip namespace) or to write text; for anything else its bytes go
        # as they are, unread.
        if (
            payload.media_type == CPIM
            and not payload.is_secured
            and (body_type == "text/plain" or _SIP_NS_BYTES in payload.body)
        ):
            try:
                message: cpim.CpimMessage | None = cpim.parse_body(payload.body, policy=self.policy)
            except ParseError as exc:
                if body_type == "text/plain":
                    raise MappingError(
                        f"payload is not a readable message/cpim object: {exc}",
                        reason=Reason.BAD_REQUEST,
                        hint="a text-only route needs a readable object",
                    ) from exc
                message = None  # relayed as it is: the bytes are the truth
            if message is not None:
                native = self._restore(envelope, message, recipient)
                if native is not None:
                    return Mapped(native)
                if body_type == "text/plain":
                    return self._as_text(envelope, message, recipient)
        headers = self._base_headers(
            envelope,
            "MESSAGE",
            to_uri=attrs.get("sip.to", recipient),
            from_display=attrs.get("sip.from-display"),
            to_display=attrs.get("sip.to-display"),
        )
        headers.extend(_carried_headers(attrs.get("sip.headers")))
        headers.append(("Content-Type", payload.content_type))
        try:
            return Mapped(Request.build("MESSAGE", recipient, headers, payload.body))
        except ValueError as exc:  # CR/LF in a value the payload or attributes brought
            raise MappingError(
                f"the message cannot be written as a SIP request: {exc}",
                reason=Reason.BAD_REQUEST,
                hint="header values (Content-Type, display names) may not hold line breaks",
            ) from None

    def _restore(
        self, envelope: Envelope, message: cpim.CpimMessage, recipient: str
    ) -> Request | None:
        """The native SIP request of an object this mapper built, when rebuilding that request
        gives back the same bytes (so L1 holds); None otherwise."""
        if message.namespaces.get("sip") != SIP_NS or message.sender is None:
            return None
        if len(message.to) != 1 or message.cc or message.require or message.datetime:
            return None
        entity_type = message.content_type or "text/plain"
        original_type = entity_type
        extra: list[tuple[str, str]] = []
        for h in message.headers:
            if h.namespace == SIP_NS:
                if h.local == "Content-Type":
                    original_type = h.value
                else:
                    extra.append((h.local, h.value))
            elif h.namespace == cpim.CPIM_NS and h.local in ("From", "To", "NS"):
                continue
            elif h.namespace == cpim.CPIM_NS and h.local == "Subject" and h.lang is None:
                extra.append(("Subject", h.value))
            else:
                return None  # a header SIP has no place for
        entity = [(n, v.strip()) for n, v in message.entity_headers]
        for name, value in entity:
            if name.lower() != "content-type":
                extra.append((name, value))
        body = message.body
        if original_type != entity_type:
            try:
                media = hdr.parse_media_type(original_type)
            except ParseError:
                return None
            charset = _charset_of(media)
            if media.essence == "text/plain" and charset not in (None, *_TEXT_CHARSETS):
                return None  # transcoded text: not the native bytes any more
        to = message.to[0]
        headers = self._base_headers(
            envelope,
            "MESSAGE",
            to_uri=to.uri,
            from_display=message.sender.formal_name,
            to_display=to.formal_name,
        )
        headers[0] = (
            "From",
            str(
                hdr.NameAddr(
                    hdr.parse_uri(message.sender.uri),
                    message.sender.formal_name,
                    (("tag", envelope.identity[:12] or "cpimgw"),),
                )
            ),
        )
        headers += extra
        headers.append(("Content-Type", original_type))
        try:
            native = Request.build("MESSAGE", recipient, headers, body)
            rebuilt, _ = self._build(
                native, native.from_, native.to, hdr.parse_media_type(original_type), original_type
            )
        except (ParseError, MappingError, ValueError):
            return None
        return native if rebuilt.body == envelope.payload.body else None  # type: ignore[union-attr]

    def _as_text(
        self, envelope: Envelope, message: cpim.CpimMessage, recipient: str
    ) -> Mapped[Request]:
        """message/cpim -> text/plain for user agents that only take text (losses listed)."""
        losses: list[Loss] = []
        entity_type = message.content_type or "text/plain"
        media = hdr.parse_media_type(entity_type)
        headers = self._base_headers(
            envelope,
            "MESSAGE",
            to_uri=recipient,
            from_display=message.sender.formal_name if message.sender else None,
            to_display=None,
        )
        for h in message.headers:
            if (
                h.namespace == cpim.CPIM_NS
                and h.local == "Subject"
                and not any(n == "Subject" for n, _ in headers)
            ):
                headers.append(("Subject", h.value))
            elif not (h.namespace == cpim.CPIM_NS and h.local in ("From", "To", "NS")):
                losses.append(Loss(f"cpim/{h.name}", "not carried in a text/plain MESSAGE"))
        if media.essence == "text/plain":
            charset = _charset_of(media) or "utf-8"
            try:
                text = message.body.decode(charset)
            except (LookupError, UnicodeDecodeError) as exc:
                raise MappingError(
                    f"text in charset {charset} cannot be decoded",
                    reason=Reason.UNSUPPORTED_MEDIA,
                ) from exc
            for name, value in message.entity_headers:
                if name.lower() == "content-language":
                    headers.append(("Content-Language", value.strip()))
            headers.append(("Content-Type", TEXT_PLAIN))
            body = text.encode("utf-8")
        elif media.essence in (ISCOMPOSING, IMDN):
            headers.append(("Content-Type", entity_type))
            body = message.body
            losses.append(Loss("Content-Type", f"{media.essence} sent without its CPIM wrapper"))
        else:
            raise MappingError(
                f"{media.essence} content cannot be sent to a text-only user agent",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="route this recipient with body_type = message/cpim",
            )
        return Mapped(_request("MESSAGE", recipient, headers, body), tuple(losses))

    # ----------------------------------------------------------- failures (ErrorMapper)

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> Request:
        """The failure notice for the SIP sender of ``envelope`` (see :func:`error_to_native`)."""
        return error_to_native(self, envelope, error)

    def error_from_native(self, native: Request) -> GatewayError | None:
        """The failure a notice reports, None when it reports none."""
        return error_from_native(native)

    # --------------------------------------------------------------------- presence

    def subscribe_to_canonical(
        self, native: Request, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        """SUBSCRIBE (Event: presence, RFC 3856 §6) -> SUBSCRIBE with ``duration`` = Expires
        (default 3600, §6.4); Expires 0 in a dialog -> UNSUBSCRIBE; Expires 0 out of dialog
        -> a one-time fetch (duration 0, RFC 6665 §4.4.3)."""
        event = native.event
        if event is None or event.package != "presence":
            raise MappingError(
                f"event package {event.package if event else '(none)'} is not served",
                reason=Reason.UNSUPPORTED_FEATURE,
                hint="cpimgw serves Event: presence (RFC 3856)",
            )
        expires = native.expires
        duration = 3600 if expires is None else expires
        in_dialog = native.to.tag is not None
        operation = Operation.UNSUBSCRIBE if duration == 0 and in_dialog else Operation.SUBSCRIBE
        max_forwards, trace = self._hops(native)
        envelope = Envelope(
            operation=operation,
            sender=_aor(native.from_.uri),
            recipient=_aor(native.request_uri if not in_dialog else native.to.uri),
            payload=None,
            identity=identity_of("sip", native.call_id, str(native.cseq.number), "SUBSCRIBE"),
            origin=Origin(
                adapter=origin.adapter,
                peer=origin.peer,
                native_id=native.call_id,
                reply_to=_aor(native.from_.uri),
                context={**origin.context, "method": "SUBSCRIBE"},
            ),
            max_forwards=max_forwards,
            trace=trace,
            received_at=received_at,
            duration=None if operation is Operation.UNSUBSCRIBE else duration,
            attributes={"sip.dialog": native.call_id},
        )
        return Mapped(envelope)

    def notify_to_canonical(
        self, native: Request, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        """NOTIFY -> NOTIFY: PIDF (or signed PIDF) bytes untouched, ``subscription.state`` and
        ``subscription.reason``/``expires`` attributes (RFC 6665 §8.2.3). Without a body,
        ``active`` is an AUTHORIZE granted and ``terminated;reason=rejected`` one refused
        (RFC 8048 §5.2-5.3); any other bodyless NOTIFY is state unknown (§5.2.1)."""
        state = native.subscription_state
        attributes: dict[str, str] = {"sip.dialog": native.call_id}
        if state is not None:
            attributes["subscription.state"] = state.state
            if state.reason:
                attributes["subscription.reason"] = state.reason
            if state.expires is not None:
                attributes["subscription.expires"] = str(state.expires)
        payload = None
        if native.body:
            payload = Payload(native.get("Content-Type") or PIDF, native.body)
        max_forwards, trace = self._hops(native)
        # RFC 8048 §5.2: a NOTIFY without state that says active is the presentity's
        # approval; terminated;reason=rejected its refusal (§5.3). Both carry no presence.
        operation = Operation.NOTIFY
        granted: bool | None = None
        if payload is None and state is not None:
            if state.state == "active":
                operation, granted = Operation.AUTHORIZE, True
            elif state.state == "terminated" and state.reason == "rejected":
                operation, granted = Operation.AUTHORIZE, False
        envelope = Envelope(
            operation=operation,
            granted=granted,
            sender=_aor(native.from_.uri),
            recipient=_aor(native.to.uri),
            payload=payload,
            identity=identity_of("sip", native.call_id, str(native.cseq.number), "NOTIFY"),
            origin=Origin(
                adapter=origin.adapter,
                peer=origin.peer,
                native_id=native.call_id,
                reply_to=_aor(native.from_.uri),
                context={**origin.context, "method": "NOTIFY"},
            ),
            max_forwards=max_forwards,
            trace=trace,
            received_at=received_at,
            attributes=attributes,
        )
        return Mapped(envelope)

    def subscribe_request(self, envelope: Envelope) -> Request:
        """An initial SUBSCRIBE (Event: presence, Accept PIDF) for a gateway watcher."""
        recipient = sip_address(envelope.recipient)
        expires = 0 if envelope.operation is Operation.UNSUBSCRIBE else envelope.duration
        headers = self._base_headers(
            envelope, "SUBSCRIBE", to_uri=recipient, from_display=None, to_display=None
        )
        if envelope.operation is Operation.UNSUBSCRIBE:
            # an unsubscribe lives in a dialog (RFC 6665 §4.1.2.3): the subscription layer
            # puts the dialog's tags, Call-ID and CSeq here
            headers[1] = ("To", f"{headers[1][1]};tag=dialog")
        headers += [
            ("Event", "presence"),
            ("Accept", PIDF),
            ("Expires", str(3600 if expires is None else expires)),
        ]
        return _request("SUBSCRIBE", recipient, headers)

    def notify_request(self, envelope: Envelope) -> Request:
        """A NOTIFY body and state for an envelope (the dialog fields are placeholders)."""
        recipient = sip_address(envelope.recipient)
        headers = self._base_headers(
            envelope, "NOTIFY", to_uri=recipient, from_display=None, to_display=None
        )
        state = notify_state(envelope)
        headers += [("Event", "presence"), ("Subscription-State", state)]
        body = b""
        payload = envelope.payload
        if envelope.operation is Operation.NOTIFY and payload is not None:
            headers.append(("Content-Type", payload.content_type))
            body = payload.body
        return _request("NOTIFY", recipient, headers, body)


def notify_state(envelope: Envelope, *, expires: int | None = None) -> str:
    """The Subscription-State value for a NOTIFY or AUTHORIZE envelope (RFC 6665 §4.1.3,
    RFC 8048 §5.3: a refusal is ``terminated;reason=rejected``)."""
    if envelope.operation is Operation.AUTHORIZE:
        if envelope.granted is False:
            return "terminated;reason=rejected"
        return "active" if expires is None else f"active;expires={expires}"
    state = envelope.attributes.get("subscription.state", "active")
    if state == "terminated":
        reason = envelope.attributes.get("subscription.reason")
        return "terminated" + (f";reason={reason}" if reason else "")
    return state if expires is None else f"{state};expires={expires}"


def _one_line(text: str) -> str:
    """Text safe inside a quoted header value: no CR/LF, backslash or double quote."""
    return " ".join(text.replace("\\", "/").replace('"', "'").split())


def _title(key: str) -> str:
    return "-".join(part.capitalize() for part in key.split("-"))


def _request(method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"") -> Request:
    """``Request.build``, with a value no SIP header can hold (a line break that an
    envelope attribute or a payload's type brought) as a MappingError (bad-request), not a
    ValueError that ``send()`` would leak to the core as an internal error."""
    try:
        return Request.build(method, uri, headers, body)
    except ValueError as exc:
        raise MappingError(
            f"the {method} cannot be written as a SIP request: {exc}",
            reason=Reason.BAD_REQUEST,
            hint="header values (types, states, display names) may not hold line breaks",
        ) from None


def _carried_headers(value: str | None) -> list[tuple[str, str]]:
    """The end-to-end headers an envelope's ``sip.headers`` attribute carries (written by
    :meth:`SipMapper._envelope_attributes` for law L2). Attributes can come from other
    adapters too (the HTTP API passes ``Cpimgw-Attribute`` through), so only what the
    inbound side itself would have kept is written: never a transport, routing or identity
    header (Via, Route, P-Asserted-Identity ... RFC 3261 §16.6, RFC 3325 §9), never a name
    that is not a token; an unreadable attribute is a MappingError."""
    if not value:
        return []
    try:
        items = json.loads(value)
        pairs = [(str(name), str(text)) for name, text in items]
    except (ValueError, TypeError) as exc:
        raise MappingError(
            f"the sip.headers attribute is not a list of [name, value] pairs: {exc}",
            reason=Reason.BAD_REQUEST,
            hint="only the SIP adapter writes sip.headers",
        ) from None
    return [
        (name, text)
        for name, text in pairs
        if _EXT_NAME.fullmatch(name) and canonical_name(name) not in TRANSPORT_HEADERS
    ]


def _imdn_attributes(body: bytes, policy: Policy) -> dict[str, str]:
    """``imdn.message-id`` when the object asks for notifications (RFC 5438 §6)."""
    try:
        message = cpim.parse_body(body, policy=policy)
    except ParseError:
        return {}
    ids = message.find("Message-ID", IMDN_HEADERS_NS)
    wanted = message.find("Disposition-Notification", IMDN_HEADERS_NS)
    out: dict[str, str] = {}
    if ids:
        out["imdn.message-id"] = ids[0].value
    if wanted:
        out["imdn.disposition-notification"] = wanted[0].value
    return out


def _semantic(request: Request) -> tuple[object, ...]:
    media = request.content_type
    by_name: dict[str, list[str]] = {}
    for h in request.headers:
        if h.key not in TRANSPORT_HEADERS:
            by_name.setdefault(h.key, []).append(h.value)
    from_, to = request.from_, request.to
    return (
        request.method,
        _aor(request.request_uri),
        (_aor(from_.uri), _display(from_)),
        (_aor(to.uri), _display(to)),
        None
        if media is None
        else (media.essence, tuple(sorted((k.lower(), v) for k, v in media.params))),
        request.body,
        tuple(sorted((k, tuple(v)) for k, v in by_name.items())),
    )


# ------------------------------------------------------------------------------- errors

#: Reason -> (SIP status, reason phrase) for refusing an inbound request
#: (docs/mapping/sip.md "Errors toward SIP").
TO_STATUS: Mapping[Reason, tuple[int, str]] = {
    Reason.BAD_REQUEST: (400, "Bad Request"),
    Reason.UNKNOWN_DESTINATION: (404, "Not Found"),
    Reason.FORBIDDEN: (403, "Forbidden"),
    Reason.UNAUTHENTICATED: (403, "Forbidden"),
    Reason.TOO_LARGE: (413, "Request Entity Too Large"),
    Reason.UNSUPPORTED_MEDIA: (415, "Unsupported Media Type"),
    Reason.UNSUPPORTED_FEATURE: (501, "Not Implemented"),
    Reason.RATE_LIMITED: (480, "Temporarily Unavailable"),
    Reason.LOOP: (482, "Loop Detected"),
    Reason.SIGNATURE_INVALID: (403, "Forbidden"),
    Reason.STALE: (400, "Incorrect Date or Time"),
    Reason.TIMEOUT: (408, "Request Timeout"),
    Reason.UNAVAILABLE: (480, "Temporarily Unavailable"),
    Reason.EXPIRED: (504, "Server Time-out"),
    Reason.CONFLICT: (400, "Bad Request"),
    Reason.INTERNAL: (500, "Server Internal Error"),
}

#: Media types the gateway takes in a MESSAGE (the Accept of a 415).
ACCEPTED_TYPES = "message/cpim, multipart/signed, application/pkcs7-mime, text/plain, */*"


def error_response(
    error: GatewayError, *, max_forwards: int | None = None, retry_after: float | None = None
) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, reason phrase, extra headers) for refusing a request with ``error``.

    A loop with the hop budget spent is 483 (RFC 3261 §16.3), otherwise 482; rate limits and
    unavailability carry Retry-After (RFC 3261 §20.33); 415 carries Accept (§21.4.13); every
    refusal carries a Warning with the error text (§20.43, code 399).
    """
    status, phrase = TO_STATUS.get(error.reason, (500, "Server Internal Error"))
    if error.reason is Reason.LOOP and max_forwards is not None and max_forwards <= 1:
        status, phrase = 483, "Too Many Hops"
    extra: list[tuple[str, str]] = []
    wait = retry_after if retry_after is not None else getattr(error, "retry_after", None)
    if error.reason in (Reason.RATE_LIMITED, Reason.UNAVAILABLE) and wait is not None:
        extra.append(("Retry-After", str(max(1, round(wait)))))
    if status == 415:
        extra.append(("Accept", ACCEPTED_TYPES))
    text = _one_line(str(error))[:300]
    extra.append(("Warning", f'399 cpimgw "{text}"'))
    return status, phrase, extra


#: SIP final status -> (reason, retryable) for our outbound requests (RFC 3261 §21,
#: RFC 3428 §7, research/mapping/errors.md §4 read through the reason list).
FROM_STATUS: Mapping[int, tuple[Reason, bool]] = {
    400: (Reason.BAD_REQUEST, False),
    401: (Reason.UNAUTHENTICATED, False),
    403: (Reason.FORBIDDEN, False),
    404: (Reason.UNKNOWN_DESTINATION, False),
    405: (Reason.UNSUPPORTED_FEATURE, False),
    406: (Reason.UNSUPPORTED_MEDIA, False),
    407: (Reason.UNAUTHENTICATED, False),
    408: (Reason.TIMEOUT, True),
    410: (Reason.UNKNOWN_DESTINATION, False),
    413: (Reason.TOO_LARGE, False),
    414: (Reason.BAD_REQUEST, False),
    415: (Reason.UNSUPPORTED_MEDIA, False),
    416: (Reason.BAD_REQUEST, False),
    420: (Reason.UNSUPPORTED_FEATURE, False),
    423: (Reason.BAD_REQUEST, False),
    480: (Reason.UNAVAILABLE, True),
    481: (Reason.UNKNOWN_DESTINATION, False),
    482: (Reason.LOOP, False),
    483: (Reason.LOOP, False),
    484: (Reason.UNKNOWN_DESTINATION, False),
    485: (Reason.UNKNOWN_DESTINATION, False),
    486: (Reason.UNAVAILABLE, True),
    488: (Reason.UNSUPPORTED_MEDIA, False),
    489: (Reason.UNSUPPORTED_FEATURE, False),
    491: (Reason.CONFLICT, True),
    493: (Reason.BAD_REQUEST, False),
    500: (Reason.INTERNAL, True),
    501: (Reason.UNSUPPORTED_FEATURE, False),
    502: (Reason.UNAVAILABLE, True),
    503: (Reason.UNAVAILABLE, True),
    504: (Reason.TIMEOUT, True),
    505: (Reason.UNSUPPORTED_FEATURE, False),
    513: (Reason.TOO_LARGE, False),
    600: (Reason.UNAVAILABLE, False),
    603: (Reason.FORBIDDEN, False),
    604: (Reason.UNKNOWN_DESTINATION, False),
    606: (Reason.UNSUPPORTED_MEDIA, False),
}


def delivery_error(response: Response, *, target: str) -> DeliveryError:
    """The DeliveryError for a non-2xx final response to our request to ``target``.

    Temporary failures (408, 480, 486, 491, 5xx except 501/505/513) are retryable and keep
    the peer's Retry-After; 3xx (not followed), other 4xx and 6xx are permanent.
    """
    status = response.status
    found = FROM_STATUS.get(status)
    if found is None:
        klass = status // 100
        found = {
            3: (Reason.UNKNOWN_DESTINATION, False),
            4: (Reason.BAD_REQUEST, False),
            5: (Reason.INTERNAL, True),
            6: (Reason.UNAVAILABLE, False),
        }.get(klass, (Reason.INTERNAL, False))
    reason, retryable = found
    retry_after = response.retry_after
    text = f"{status} {response.reason}".strip()
    hints = {
        Reason.UNKNOWN_DESTINATION: "check the address; the SIP side does not know it",
        Reason.UNAVAILABLE: "the recipient is away or the proxy is busy; the gateway retries",
        Reason.TIMEOUT: "no answer in time; the gateway retries",
        Reason.UNSUPPORTED_MEDIA: "the recipient's client does not take this content",
        Reason.FORBIDDEN: "the SIP side refused the request",
        Reason.UNAUTHENTICATED: "check the credentials configured for the proxy",
    }
    return DeliveryError(
        f"{target} answered {text}",
        retryable=retryable,
        reason=reason,
        hint=hints.get(reason, ""),
        retry_after=None if retry_after is None else float(retry_after),
        status=text,
    )


# ------------------------------------------------------------------ failure notices

IMDN_XML_NS = "urn:ietf:params:xml:ns:imdn"
#: RFC 3326 Reason header parameter carrying cpimgw's reason, so a notice reads back exactly.
REASON_PARAM = "cpimgw"


def _reason_header(error: GatewayError) -> str:
    status, _phrase, _ = error_response(error)
    text = _one_line(str(error))[:200]
    return f'SIP;cause={status};text="{text}";{REASON_PARAM}={error.reason.value}'


def failure_imdn(envelope: Envelope, *, datetime: str) -> bytes:
    """RFC 5438 §9 delivery notification with status ``failed`` for ``envelope``."""
    message_id = envelope.attributes.get("imdn.message-id", envelope.identity)
    escaped = message_id.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<imdn xmlns="{IMDN_XML_NS}">\n'
        f" <message-id>{escaped}</message-id>\n"
        f" <datetime>{datetime}</datetime>\n"
        " <delivery-notification><status><failed/></status></delivery-notification>\n"
        "</imdn>\n"
    ).encode()


def _wants_negative_delivery(envelope: Envelope) -> bool:
    wanted = envelope.attributes.get("imdn.disposition-notification", "")
    return "negative-delivery" in wanted.replace(" ", "").split(",") and bool(
        envelope.attributes.get("imdn.message-id")
    )


def _rfc3339(timestamp: float) -> str:
    import datetime as dt  # noqa: PLC0415 - only failure notices need it

    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_to_native(mapper: SipMapper, envelope: Envelope, error: GatewayError) -> Request:
    """The MESSAGE telling the SIP sender of ``envelope`` that it finally failed.

    An IMDN ``failed`` notification (RFC 5438 §7.2.1.1, message/cpim, From the intended
    recipient) when the sender asked for negative delivery notifications; otherwise a
    text/plain notice from the gateway's own address explaining the failure and the fix.
    Both carry an RFC 3326 ``Reason`` header (``SIP;cause=...;cpimgw=<reason>``).
    """
    target = sip_address(envelope.origin.reply_to or envelope.sender)
    notice = envelope.replace(
        identity=identity_of("failure", envelope.identity),
        max_forwards=DEFAULT_MAX_FORWARDS,
        trace=(),
    )
    if _wants_negative_delivery(envelope):
        when = _rfc3339(envelope.received_at)
        body = failure_imdn(envelope, datetime=when)
        message = cpim.build(
            sender=cpim.Party(None, sip_address(envelope.recipient)),
            to=[cpim.Party(None, target)],
            datetime=when,
            namespaces=[("imdn", IMDN_HEADERS_NS)],
            extensions=[("imdn.Message-ID", notice.identity[:24])],
            content_type=IMDN,
            entity_headers=[("Content-Disposition", "notification")],
            body=body,
        )
        headers = mapper._base_headers(
            notice.replace(sender=envelope.recipient),
            "MESSAGE",
            to_uri=target,
            from_display=None,
            to_display=None,
        )
        headers += [("Reason", _reason_header(error)), ("Content-Type", CPIM)]
        return _request("MESSAGE", target, headers, bytes(message))
    headers = mapper._base_headers(
        notice.replace(sender=mapper.notice_from),
        "MESSAGE",
        to_uri=target,
        from_display="cpimgw",
        to_display=None,
    )
    hint = f" {error.hint}." if error.hint else ""
    text = f"Your message to {envelope.recipient} could not be delivered: {error.message}.{hint}"
    headers += [
        ("Subject", "Undeliverable message"),
        ("Reason", _reason_header(error)),
        ("Content-Type", TEXT_PLAIN),
    ]
    return _request("MESSAGE", target, headers, text.encode("utf-8"))


def error_from_native(native: Request) -> GatewayError | None:
    """The failure a notice reports (its Reason header, or an IMDN ``failed``), else None."""
    for value in native.values("Reason"):
        try:
            found = hdr.parse_reason(value)
        except ParseError:
            continue
        reason_text = hdr.param(found.params, REASON_PARAM)
        if reason_text:
            try:
                reason = Reason(reason_text)
            except ValueError:
                reason = Reason.INTERNAL
        elif found.cause is not None:
            reason = FROM_STATUS.get(found.cause, (Reason.INTERNAL, False))[0]
        else:
            continue
        return GatewayError(found.text or f"SIP failure {found.cause}", reason=reason)
    media = native.content_type
    if media is not None and media.essence == CPIM:
        try:
            message = cpim.parse_body(native.body)
        except ParseError:
            return None
        if (message.content_type or "").startswith(IMDN) and b"<failed/>" in message.body:
            return GatewayError("delivery failed (IMDN)", reason=Reason.UNAVAILABLE)
    return None
