"""XMPP stanzas <-> canonical envelopes. Pure: no sockets, no clocks (time is passed in).

Messages follow RFC 3922 §4 with the lossless rules of docs/architecture.md:

- XMPP -> canonical: From ``im:`` bare JID (RFC 3922 §3.2), To the recipient's gateway-wide
  address, one Subject per ``<subject/>`` with ``;lang=`` (RFC 3922 §4.1.6), the body as a
  ``text/plain; charset=utf-8`` entity with Content-Language from its ``xml:lang``
  (RFC 7572 §8). Fields XMPP has and CPIM lacks ride as extension headers in
  ``NS: xmpp <urn:cpimgw:xmpp:0>``: ``xmpp.Id``, ``xmpp.Type``, ``xmpp.Lang``,
  ``xmpp.Thread``/``xmpp.Thread-Parent``, ``xmpp.Chat-State`` and ``xmpp.Element`` (any other
  child element, serialised). XEP-0085 chat states without a body become RFC 3994
  isComposing; XEP-0184 receipts and XEP-0333 markers become RFC 5438 IMDN requests and
  notifications. So ``from_canonical(to_canonical(n))`` equals ``n`` (law L2).
- canonical -> XMPP: a readable ``<body/>``/``<subject/>`` plus, whenever the stanza alone
  would not give back the exact payload, ``<cpim xmlns='urn:cpimgw:carriage:0'>`` with the
  payload in base64 (law L1). Content a client cannot show gets a one-line description.
- A stanza with the carriage element, or an RFC 3923 ``<e2e/>`` object, goes to canonical
  as exactly those bytes.

Presence follows RFC 8048 §6 (presence <-> PIDF) and RFC 3922 §6 / RFC 8048 §5
(subscriptions): see :mod:`adapters.xmpp.presence`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from adapters.contract import Mapped
from adapters.xmpp import presence as xpresence
from adapters.xmpp.documents import (
    IMDN_HEADERS_NS,
    Notification,
    build_imdn,
    build_iscomposing,
    read_imdn,
    read_iscomposing,
)
from adapters.xmpp.errors import error_element, read_error
from adapters.xmpp.jid import AddressMap
from adapters.xmpp.stanza import (
    CARRIAGE_NS,
    CHAT_STATES,
    CHATSTATES_NS,
    CLIENT_NS,
    COMPONENT_NS,
    E2E_NS,
    E2E_NS_MISPRINT,
    MARKERS_NS,
    NOT_XML,
    RECEIPTS_NS,
    SID_NS,
    STANZA_NAMESPACES,
    TRACE_NS,
    XML_LANG,
    XMPP_HEADERS_NS,
    is_stanza,
    local,
    namespace,
    serialize,
)
from canonical import cpim, smime
from canonical.address import gateway_jid
from canonical.envelope import (
    CPIM,
    DEFAULT_MAX_FORWARDS,
    IMDN,
    ISCOMPOSING,
    Envelope,
    Operation,
    Origin,
    Payload,
    identity_of,
)
from canonical.errors import GatewayError, Loss, MappingError, ParseError, Reason
from canonical.policy import DEFAULT, Policy
from canonical.xmldoc import parse_xml

#: RFC 3862 §3.3 / RFC 3066 language tag: an xml:lang that is not one (``en_US``) cannot be
#: a Subject ``;lang=`` parameter, so that subject travels as an ``xmpp.Element`` instead.
_LANG_TAG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")

TEXT_PLAIN = "text/plain; charset=utf-8"
_MESSAGE_CONTEXT = MappingProxyType({"stanza": "message"})
XMPP_XML = "application/xmpp+xml"  # RFC 3923 §10: XMPP extension elements as an entity
_TEXT_CHARSETS = ("utf-8", "us-ascii", "")


def rfc3339(timestamp: float) -> str:
    """RFC 3339 §5.6 UTC time with milliseconds (deterministic for a given timestamp)."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _safe_value(text: str | None) -> bool:
    """True when a CPIM header can carry ``text`` unchanged (RFC 3862 §2.2: no leading or
    trailing whitespace; control characters are escaped by the builder, §2.3)."""
    return text is not None and text != "" and text == text.strip() and "\x00" not in text


def _plain(element: ET.Element) -> bool:
    """An element without attributes, children or text (a bare flag like ``<request/>``)."""
    return not element.attrib and len(element) == 0 and not (element.text or "").strip()


@functools.lru_cache(maxsize=4096)
def _im_uri(address: str) -> str:
    """The CPIM From/To form of a gateway-wide address: an ``xmpp:`` JID becomes the ``im:``
    URI of its user, the localpart XEP-0106-unescaped and percent-encoded (RFC 3922 §3.2,
    RFC 7247 §6.4: ``d\\27artagnan@x`` -> ``im:d'artagnan@x``, :func:`presence.user_uri`);
    other URIs lose parameters and resource. Only objects this mapper builds use it."""
    if address.startswith("xmpp:"):
        return xpresence.user_uri(gateway_jid(address), "im")
    return address.split(";", 1)[0].split("?", 1)[0]


_NS_XMPP = b"NS: xmpp <" + XMPP_HEADERS_NS.encode() + b">\r\n"
_NS_IMDN = b"NS: imdn <" + IMDN_HEADERS_NS.encode() + b">\r\n"
#: At most this many extension headers take the direct writer (cpim.build's strict reading
#: limits a block to Policy.max_headers lines; longer ones go through it).
_DIRECT_HEADERS = 100


def _write_cpim(
    sender: str,
    recipient: str,
    *,
    disposition: bool,
    extensions: Sequence[tuple[str, str]],
    content_type: str,
    entity_headers: Sequence[tuple[str, str]],
    body: bytes,
) -> bytes | None:
    """The bytes :func:`cpim.build` writes for a native message without subjects (From, To,
    ``NS: xmpp``, ``NS: imdn`` when notifications are asked, the extension headers with
    values escaped by :func:`cpim.encode_value` (RFC 3862 §2.3), the entity; the From/To
    lines and the entity's headers from :func:`cpim.encode_parties` and
    :func:`cpim.encode_entity_headers`, whose ValueError for a refused URI it lets through), written
    directly: build's strict reading of its own output is most of its cost, and every line
    here is of a shape it accepts. None when the message is not of that shape (the caller
    then uses :func:`cpim.build`); a property test pins the two to the same bytes."""
    if len(extensions) > _DIRECT_HEADERS:
        return None
    entity = cpim.encode_entity_headers(content_type, entity_headers)
    if entity is None:
        return None
    out = [cpim.encode_parties(sender, (recipient,)), _NS_XMPP]
    if disposition:
        out.append(_NS_IMDN)
    encode_value = cpim.encode_value
    out.extend(f"{name}: {encode_value(value)}\r\n".encode() for name, value in extensions)
    out += (b"\r\n", entity, body)
    return b"".join(out)


@dataclass(slots=True)
class Parts:
    """A message stanza split into what the mapping reads."""

    attrs: dict[str, str]
    bodies: list[ET.Element] = field(default_factory=list)
    subjects: list[ET.Element] = field(default_factory=list)
    thread: ET.Element | None = None
    chat_state: ET.Element | None = None
    receipt_request: ET.Element | None = None
    markable: ET.Element | None = None
    received: ET.Element | None = None
    displayed: ET.Element | None = None
    carriage: ET.Element | None = None
    e2e: ET.Element | None = None
    trace: ET.Element | None = None
    hops: ET.Element | None = None
    origin_id: str | None = None
    error: ET.Element | None = None
    others: list[ET.Element] = field(default_factory=list)


def split_message(stanza: ET.Element) -> Parts:
    """Sort the children of ``<message/>`` by role (RFC 6121 §5.2, XEPs 0085/0184/0333)."""
    parts = Parts(attrs=dict(stanza.attrib))
    for child in stanza:
        ns, name = namespace(child.tag), local(child.tag)
        if ns in STANZA_NAMESPACES and name == "body":
            parts.bodies.append(child)
        elif ns in STANZA_NAMESPACES and name == "subject":
            parts.subjects.append(child)
        elif ns in STANZA_NAMESPACES and name == "thread" and parts.thread is None:
            parts.thread = child
        elif ns in STANZA_NAMESPACES and name == "error" and parts.error is None:
            parts.error = child
        elif ns == CHATSTATES_NS and name in CHAT_STATES and parts.chat_state is None:
            parts.chat_state = child
        elif ns == RECEIPTS_NS and name == "request" and parts.receipt_request is None:
            parts.receipt_request = child
        elif ns == RECEIPTS_NS and name == "received" and parts.received is None:
            parts.received = child
        elif ns == MARKERS_NS and name == "markable" and parts.markable is None:
            parts.markable = child
        elif ns == MARKERS_NS and name == "displayed" and parts.displayed is None:
            parts.displayed = child
        elif ns == CARRIAGE_NS and name == "cpim" and parts.carriage is None:
            parts.carriage = child
        elif ns in (E2E_NS, E2E_NS_MISPRINT) and name == "e2e" and parts.e2e is None:
            parts.e2e = child
        elif ns == TRACE_NS and name == "trace" and parts.trace is None:
            parts.trace = child
        elif ns == TRACE_NS and name == "hops" and parts.hops is None:
            parts.hops = child
        else:
            if ns == SID_NS and name == "origin-id" and parts.origin_id is None:
                parts.origin_id = child.get("id")
            parts.others.append(child)
    return parts


def entity_to_payload(entity: bytes) -> tuple[Payload, tuple[Loss, ...]]:
    """A MIME entity (headers, blank line, body; RFC 2045 §3) as a payload: its
    Content-Type value and the exact body bytes. Headers other than Content-Type cannot
    ride in a payload and are reported as losses."""
    head, sep, body = entity.partition(b"\r\n\r\n")
    if not sep:
        raise ParseError(
            "E2E_NOT_MIME",
            "the <e2e/> object has no blank line after its MIME headers (RFC 3923 §3)",
            hint="send a complete MIME entity with CRLF line ends",
        )
    content_type: str | None = None
    losses: list[Loss] = []
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type" and content_type is None:
            content_type = value.strip()
        else:
            losses.append(Loss("e2e/mime-header", f"MIME header {line[:60]!r} not carried"))
    if not content_type:
        raise ParseError(
            "E2E_NO_CONTENT_TYPE", "the <e2e/> object has no Content-Type (RFC 3923 §3)"
        )
    return Payload(content_type, body), tuple(losses)


def payload_to_entity(payload: Payload) -> bytes:
    """The MIME entity for an RFC 3923 ``<e2e/>`` element (RFC 3923 §3)."""
    return b"Content-Type: " + payload.content_type.encode("utf-8") + b"\r\n\r\n" + payload.body


def _xml_text_ok(text: str) -> bool:
    """Characters XML 1.0 §2.2 allows (so the text can be element content)."""
    return NOT_XML.search(text) is None


def _xml_safe(text: str) -> str:
    """Readable text with every character XML cannot carry shown as U+FFFD (the exact
    bytes ride in the carriage element)."""
    if _xml_text_ok(text):
        return text
    return NOT_XML.sub("\ufffd", text)


def describe(content_type: str, size: int) -> str:
    """The readable line for content an ordinary client cannot show."""
    kind = content_type.split(";", 1)[0].strip().lower() or "application/octet-stream"
    amount = f"{size} bytes" if size < 1024 else f"{size / 1024:.1f} KiB"
    return f"[{kind} content, {amount}: sent through cpimgw; this client cannot show it]"


@dataclass(frozen=True, slots=True)
class XmppMapper:
    """The pure mapper of the XMPP adapter (``adapters.contract.Mapper`` and
    ``ErrorMapper`` over ``xml.etree.ElementTree.Element`` stanzas)."""

    addresses: AddressMap
    adapter: str = "xmpp"
    stanza_ns: str = COMPONENT_NS
    policy: Policy = DEFAULT

    # ------------------------------------------------------------------ wire format
    def encode(self, native: ET.Element) -> bytes:
        return serialize(native, self.stanza_ns)

    def decode(self, data: bytes) -> ET.Element:
        """A stanza from its wire bytes (read as in a stream whose default namespace is
        ``stanza_ns``), through the bounded, DTD-free parser."""
        prefix = b"<stream xmlns='" + self.stanza_ns.encode() + b"'>"
        try:
            # bytes in, bytes to expat: invalid UTF-8 is a well-formedness error (RFC 6120
            # §11.6), reported with its offset in ``data``, never a UnicodeDecodeError
            root = parse_xml(prefix + bytes(data) + b"</stream>", policy=self.policy)
        except ParseError as exc:
            offset = None if exc.offset is None else max(0, exc.offset - len(prefix))
            raise ParseError(
                exc.code, exc.message, line=exc.line, offset=offset, hint=exc.hint
            ) from None
        if len(root) != 1:
            raise ParseError(
                "STANZA_COUNT",
                f"expected one stanza, found {len(root)}",
                offset=0,
                hint="send exactly one <message/>, <presence/> or <iq/> element",
            )
        return root[0]

    def equal(self, a: ET.Element, b: ET.Element) -> bool:
        """XML equality (RFC 6120 §4.8.3): same names, namespaces, attributes and text;
        client and component stanza namespaces count as one (a server rewrites them);
        the order of a stanza's children and whitespace between them do not count."""
        return _canonical_form(a, top=True) == _canonical_form(b, top=True)

    # ------------------------------------------------------------------ native -> canonical
    def to_canonical(
        self, native: ET.Element, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        if is_stanza(native, "message"):
            return self._message_to_canonical(native, origin, received_at)
        if is_stanza(native, "presence"):
            return xpresence.to_canonical(self, native, origin=origin, received_at=received_at)
        raise MappingError(
            f"<{local(native.tag)}/> is not a message or presence stanza",
            reason=Reason.UNSUPPORTED_FEATURE,
            hint="only <message/> and <presence/> cross the gateway",
        )

    def _addresses(self, stanza: ET.Element) -> tuple[str, str]:
        sender, recipient = stanza.get("from"), stanza.get("to")
        if not sender or not recipient:
            raise ParseError(
                "STANZA_ADDRESS", "stanza without from or to", hint="the server stamps from"
            )
        return self.addresses.to_uri(sender), self.addresses.to_uri(recipient)

    def _message_to_canonical(
        self, stanza: ET.Element, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        parts = split_message(stanza)
        if parts.attrs.get("type") == "error" or parts.error is not None:
            raise MappingError(
                "an error stanza reports a failure; it is not an operation",
                reason=Reason.BAD_REQUEST,
                hint="read it with error_from_native",
            )
        sender, recipient = self._addresses(stanza)
        losses: list[Loss] = []
        if parts.carriage is not None:
            payload = self._read_carriage(parts.carriage)
        elif parts.e2e is not None:
            payload, e2e_losses = entity_to_payload(
                smime.restore_crlf((parts.e2e.text or "").encode("utf-8"))
            )
            losses.extend(e2e_losses)
            losses.extend(
                Loss(f"message/{local(child.tag)}", "child of an <e2e/> stanza not carried")
                for child in stanza
                if child is not parts.e2e and namespace(child.tag) != TRACE_NS
            )
        else:
            payload, native_losses = self.build_payload(
                stanza, parts, sender, recipient, received_at
            )
            losses.extend(native_losses)
        if len(payload.body) > self.policy.max_message_size:
            raise MappingError(
                f"message of {len(payload.body)} bytes exceeds the limit of "
                f"{self.policy.max_message_size}",
                reason=Reason.TOO_LARGE,
                hint="send a smaller message",
            )
        native_id = parts.origin_id or parts.attrs.get("id")
        identity = identity_of(
            "xmpp", sender, native_id if native_id else None, None if native_id else payload.body
        )
        trace, max_forwards = _read_hops(parts)
        envelope = Envelope(
            operation=Operation.MESSAGE,
            sender=sender,
            recipient=recipient,
            payload=payload,
            identity=identity,
            origin=Origin(
                origin.adapter,
                origin.peer,
                parts.attrs.get("id"),
                stanza.get("from"),
                {**origin.context, "stanza": "message"} if origin.context else _MESSAGE_CONTEXT,
            ),
            max_forwards=max_forwards,
            trace=trace,
            received_at=received_at,
            losses=tuple(losses),
            attributes=_message_attributes(parts),
        )
        return Mapped(envelope, tuple(losses))

    def _read_carriage(self, element: ET.Element) -> Payload:
        content_type = element.get("type")
        if not content_type:
            raise ParseError(
                "CARRIAGE_NO_TYPE",
                "<cpim xmlns='urn:cpimgw:carriage:0'> without a type attribute",
                hint="set type to the payload's Content-Type",
            )
        text = "".join((element.text or "").split())
        if len(text) > (self.policy.max_message_size * 4) // 3 + 4:
            raise MappingError(
                "carried payload exceeds the size limit",
                reason=Reason.TOO_LARGE,
                hint="send a smaller message",
            )
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ParseError(
                "CARRIAGE_BASE64",
                f"carriage element content is not base64 (RFC 4648 §4): {exc}",
                hint="encode the exact payload bytes in base64",
            ) from exc
        return Payload(content_type, body)

    def build_payload(
        self,
        stanza: ET.Element,
        parts: Parts,
        sender: str,
        recipient: str,
        received_at: float,
    ) -> tuple[Payload, list[Loss]]:
        """The deterministic message/cpim body form for a native message stanza."""
        losses: list[Loss] = []
        extensions: list[tuple[str, str]] = []
        others = list(parts.others)
        attrs = parts.attrs
        losses.extend(
            Loss(f"message/@{attr}", "stanza attribute not carried")
            for attr in attrs
            if attr not in ("from", "to", "id", "type", XML_LANG)
        )
        for key, header in (("id", "xmpp.Id"), ("type", "xmpp.Type"), (XML_LANG, "xmpp.Lang")):
            if key in attrs:
                if not _safe_value(attrs[key]):
                    losses.append(
                        Loss(f"message/@{key}", "empty or space-padded value not carried")
                    )
                else:
                    extensions.append((header, attrs[key]))
        if parts.thread is not None:
            thread = parts.thread
            extra = set(thread.attrib) - {"parent"}
            if _safe_value(thread.text) and not extra and len(thread) == 0:
                extensions.append(("xmpp.Thread", thread.text or ""))
                if "parent" in thread.attrib:
                    if _safe_value(thread.get("parent")):
                        extensions.append(("xmpp.Thread-Parent", thread.get("parent", "")))
                    else:
                        others.append(thread)
                        extensions.pop()
            else:
                others.append(thread)
        subjects: list[tuple[str | None, str]] = []
        for subject in parts.subjects:
            if (
                _safe_value(subject.text)
                and set(subject.attrib) <= {XML_LANG}
                and _LANG_TAG.fullmatch(subject.get(XML_LANG, "en")) is not None
                and len(subject) == 0
            ):
                subjects.append((subject.get(XML_LANG), subject.text or ""))
            else:
                others.append(subject)
        disposition: list[str] = []
        for flag, token in (
            (parts.receipt_request, "positive-delivery"),
            (parts.markable, "display"),
        ):
            if flag is not None and _plain(flag) and "id" in attrs and _safe_value(attrs["id"]):
                disposition.append(token)
            elif flag is not None:
                others.append(flag)
        body_el = parts.bodies[0] if parts.bodies else None
        others.extend(parts.bodies[1:])
        entity_headers: list[tuple[str, str]] = []
        state = parts.chat_state
        if body_el is not None and (set(body_el.attrib) - {XML_LANG} or len(body_el)):
            others.append(body_el)
            body_el = None
            losses.append(Loss("message/body", "body with extra markup carried as an element"))
        if body_el is not None:
            content_type, body = TEXT_PLAIN, (body_el.text or "").encode("utf-8")
            if XML_LANG in body_el.attrib:
                lang = body_el.get(XML_LANG, "")
                if _safe_value(lang):
                    entity_headers.append(("Content-Language", lang))
                else:
                    losses.append(Loss("body/@xml:lang", "empty language tag not carried"))
            if state is not None:
                others.append(state)
            if parts.received is not None:
                others.append(parts.received)
            if parts.displayed is not None:
                others.append(parts.displayed)
        elif state is not None and _plain(state):
            content_type = ISCOMPOSING
            mapped = "active" if local(state.tag) == "composing" else "idle"
            body = build_iscomposing(mapped)
            extensions.append(("xmpp.Chat-State", local(state.tag)))
            others.extend(e for e in (parts.received, parts.displayed) if e is not None)
        elif (
            parts.received is not None
            and _safe_value(parts.received.get("id"))
            and set(parts.received.attrib) == {"id"}
            and len(parts.received) == 0
        ):
            content_type = IMDN
            body = build_imdn(
                Notification(
                    parts.received.get("id", ""), "delivery", "delivered", rfc3339(received_at)
                )
            )
            entity_headers.append(("Content-Disposition", "notification"))
            if parts.displayed is not None:
                others.append(parts.displayed)
            if state is not None:
                others.append(state)
        elif (
            parts.displayed is not None
            and _safe_value(parts.displayed.get("id"))
            and set(parts.displayed.attrib) == {"id"}
            and len(parts.displayed) == 0
        ):
            content_type = IMDN
            body = build_imdn(
                Notification(
                    parts.displayed.get("id", ""), "display", "displayed", rfc3339(received_at)
                )
            )
            entity_headers.append(("Content-Disposition", "notification"))
            others.extend(e for e in (parts.received, state) if e is not None)
        else:
            # no body: the extension elements themselves are the content (RFC 3923 §10)
            content_type, body = XMPP_XML, b""
            extensions.append(("xmpp.Body", "none"))
            others.extend(e for e in (parts.received, parts.displayed, state) if e is not None)
        extensions.extend(("xmpp.Element", _element_text(element)) for element in others)
        # always declared: it marks a payload made from a native stanza, which alone comes
        # back as that stanza without carriage (foreign messages get ids from the identity)
        namespaces: list[tuple[str | None, str]] = [("xmpp", XMPP_HEADERS_NS)]
        if disposition:
            namespaces.append(("imdn", IMDN_HEADERS_NS))
            extensions.append(("imdn.Message-ID", attrs["id"]))
            extensions.append(("imdn.Disposition-Notification", ", ".join(disposition)))
        try:
            data = None
            if not subjects:
                data = _write_cpim(
                    _im_uri(sender),
                    _im_uri(recipient),
                    disposition=bool(disposition),
                    extensions=extensions,
                    content_type=content_type,
                    entity_headers=entity_headers,
                    body=body,
                )
            if data is None:
                data = bytes(
                    cpim.build(
                        sender=cpim.Party(None, _im_uri(sender)),
                        to=[cpim.Party(None, _im_uri(recipient))],
                        subjects=subjects,
                        namespaces=namespaces,
                        extensions=extensions,
                        content_type=content_type,
                        entity_headers=entity_headers,
                        body=body,
                        form="body",
                    )
                )
        except ParseError:
            raise
        except ValueError as exc:  # a value message/cpim cannot hold (RFC 3862 §3.6)
            raise ParseError(
                "STANZA_UNMAPPABLE",
                f"the stanza cannot be written as message/cpim: {exc}",
                hint="check the from/to addresses and the xml:lang values",
            ) from None
        return Payload(CPIM, data), losses

    # ------------------------------------------------------------------ canonical -> native
    def from_canonical(self, envelope: Envelope) -> Mapped[ET.Element]:
        if envelope.operation is Operation.MESSAGE:
            return self._message_from_canonical(envelope)
        stanzas = xpresence.from_canonical(self, envelope)
        first, *rest = stanzas.value
        losses = stanzas.losses
        if rest:
            losses = (*losses, Loss("pidf/tuple", f"{len(rest)} more tuple(s): see stanzas()"))
        return Mapped(first, losses)

    def stanzas(self, envelope: Envelope) -> Mapped[list[ET.Element]]:
        """Every stanza an envelope becomes (a PIDF with several tuples gives one presence
        per tuple, RFC 3922 §6.3.1); the shell sends them all."""
        if envelope.operation is Operation.MESSAGE:
            mapped = self._message_from_canonical(envelope)
            return Mapped([mapped.value], mapped.losses)
        return xpresence.from_canonical(self, envelope)

    def _message_from_canonical(self, envelope: Envelope) -> Mapped[ET.Element]:
        """A payload that is exactly what :meth:`to_canonical` makes of some stanza becomes
        that stanza (law L2, no carriage); anything else becomes a readable stanza plus the
        carriage element with the exact payload (law L1)."""
        payload = envelope.payload
        if payload is None:
            raise MappingError("a message without payload", reason=Reason.BAD_REQUEST)
        sender = self.addresses.to_jid(envelope.sender)
        recipient = self.addresses.to_jid(envelope.recipient)
        losses: list[Loss] = []
        stanza = None
        if payload.media_type == CPIM:
            try:
                message: cpim.CpimMessage | None = cpim.parse_body(payload.body, policy=self.policy)
            except ParseError as exc:
                losses.append(Loss("payload", f"message/cpim not readable ({exc}); carried only"))
                message = None
            if message is not None and XMPP_HEADERS_NS in message.namespaces.values():
                try:
                    native = self._rebuild_native(message, sender, recipient)
                    _add_hops(native, envelope)
                    if self._round_trips(native, envelope):
                        return Mapped(native, tuple(losses))
                except GatewayError:
                    pass
            if message is not None:
                stanza = self._readable(message, sender, recipient, envelope)
        elif "xmpp.e2e" in envelope.attributes:
            e2e = self._rebuild_e2e(sender, recipient, envelope)
            if e2e is not None:
                _add_hops(e2e, envelope)
                if self._round_trips(e2e, envelope):
                    return Mapped(e2e, tuple(losses))
        if stanza is None:
            stanza = self._new_stanza(sender, recipient, envelope, None)
            self._readable_secured(stanza, payload)
        _add_hops(stanza, envelope)
        carriage = ET.SubElement(stanza, f"{{{CARRIAGE_NS}}}cpim", {"type": payload.content_type})
        carriage.text = base64.b64encode(payload.body).decode("ascii")
        return Mapped(stanza, tuple(losses))

    def _round_trips(self, stanza: ET.Element, envelope: Envelope) -> bool:
        """Law L1 check: does the stanza alone give back the exact payload? Mapped as it
        is, not serialised and parsed again: :func:`serialize` writes every character so
        that a parser gives it back (CR as ``&#13;``, attribute TAB/LF as references; a
        property test pins this), and refuses the stanzas it cannot write."""
        try:
            self.encode(stanza)
            mapped = self.to_canonical(
                stanza, origin=envelope.origin, received_at=envelope.received_at
            )
        except GatewayError:
            return False
        return mapped.value.payload == envelope.payload

    def _new_stanza(
        self,
        sender: str,
        recipient: str,
        envelope: Envelope,
        imdn_id: str | None,
    ) -> ET.Element:
        """The stanza of a payload carried exactly. Its ``id`` is the native id the envelope
        carries (``attributes["xmpp.id"]``, for a stanza that came from XMPP: law L2), else
        the imdn.Message-ID when notifications are asked (so receipts and markers correlate,
        XEP-0184 §5), else the identity; the XEP-0359 origin-id is the native one, else the
        identity (none for a native stanza that had none). All are the same on every resend
        (docs/architecture.md "Identity")."""
        attributes = envelope.attributes
        stanza_id = attributes.get("xmpp.id")
        if stanza_id is None:
            stanza_id = imdn_id or envelope.identity
        stanza = ET.Element(
            f"{{{self.stanza_ns}}}message",
            {
                "from": sender,
                "to": recipient,
                "type": attributes.get("xmpp.type", "chat"),
                "id": stanza_id,
            },
        )
        origin = attributes.get("xmpp.origin-id")
        if origin is None and "xmpp.id" not in attributes:
            origin = envelope.identity
        if origin is not None:
            ET.SubElement(stanza, f"{{{SID_NS}}}origin-id", {"id": origin})
        return stanza

    def _rebuild_e2e(self, sender: str, recipient: str, envelope: Envelope) -> ET.Element | None:
        """The RFC 3923 stanza a secured payload came in as (``xmpp.e2e`` says which text
        form, RFC 3923 §3 / §6.4), or None when it did not come as one or is not text."""
        payload = envelope.payload
        form = envelope.attributes.get("xmpp.e2e")
        if payload is None or form not in ("crlf", "lf"):
            return None
        try:
            text = payload_to_entity(payload).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not _xml_text_ok(text):
            return None
        stanza = self._new_stanza(sender, recipient, envelope, None)
        ns = envelope.attributes.get("xmpp.e2e-ns", E2E_NS)
        if ns not in (E2E_NS, E2E_NS_MISPRINT):
            ns = E2E_NS
        ET.SubElement(stanza, f"{{{ns}}}e2e").text = (
            text if form == "crlf" else text.replace("\r\n", "\n")
        )
        return stanza

    def _rebuild_native(self, message: cpim.CpimMessage, sender: str, recipient: str) -> ET.Element:
        """The stanza a native XMPP message came from (law L2): every field from the
        ``xmpp.*`` headers, subjects, body and the IMDN/isComposing entity."""

        own: dict[str, list[str]] = {}  # the xmpp.* headers by local name, one pass
        for line in message.headers:
            if line.namespace == XMPP_HEADERS_NS:
                own.setdefault(line.local, []).append(line.value)

        def one(name: str) -> str | None:
            values = own.get(name)
            return values[0] if values else None

        attrs = {"from": sender, "to": recipient}
        for name, attr in (("Id", "id"), ("Type", "type"), ("Lang", XML_LANG)):
            value = one(name)
            if value is not None:
                attrs[attr] = value
        stanza = ET.Element(f"{{{self.stanza_ns}}}message", attrs)
        for subject in message.subjects:
            el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}subject")
            if subject.lang is not None:
                el.set(XML_LANG, subject.lang)
            if not _xml_text_ok(subject.text):
                raise MappingError("subject has characters XML cannot carry")
            el.text = _xml_safe(subject.text)
        thread = one("Thread")
        if thread is not None:
            el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}thread")
            el.text = thread
            parent = one("Thread-Parent")
            if parent is not None:
                el.set("parent", parent)
        media = (message.content_type or "").split(";", 1)[0].strip().lower()
        if one("Body") is None and media == "text/plain":
            el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}body")
            lang = _entity_header(message, "Content-Language")
            if lang is not None:
                el.set(XML_LANG, lang)
            try:
                text = message.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MappingError("body is not UTF-8", reason=Reason.UNSUPPORTED_MEDIA) from exc
            if not _xml_text_ok(text):
                raise MappingError("body has characters XML cannot carry")
            el.text = text
        elif media == ISCOMPOSING:
            state = one("Chat-State") or (
                "composing" if read_iscomposing(message.body, self.policy) == "active" else "paused"
            )
            ET.SubElement(stanza, f"{{{CHATSTATES_NS}}}{state}")
        elif media == IMDN:
            self._notification_element(stanza, read_imdn(message.body, self.policy))
        disposition = message.find("Disposition-Notification", IMDN_HEADERS_NS)
        tokens = {t.strip() for h in disposition for t in h.value.split(",")}
        if "positive-delivery" in tokens:
            ET.SubElement(stanza, f"{{{RECEIPTS_NS}}}request")
        if "display" in tokens:
            ET.SubElement(stanza, f"{{{MARKERS_NS}}}markable")
        for element in own.get("Element", ()):
            stanza.append(self._element_from_text(element))
        return stanza

    def _readable(
        self, message: cpim.CpimMessage, sender: str, recipient: str, envelope: Envelope
    ) -> ET.Element:
        """A foreign CPIM message as an ordinary client shows it (RFC 3922 §4.2)."""
        disposition = message.find("Disposition-Notification", IMDN_HEADERS_NS)
        ids = message.find("Message-ID", IMDN_HEADERS_NS) if disposition else ()
        stanza = self._new_stanza(sender, recipient, envelope, ids[0].value if ids else None)
        for subject in message.subjects:
            el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}subject")
            if subject.lang is not None:
                el.set(XML_LANG, subject.lang)
            el.text = _xml_safe(subject.text)
        self._readable_entity(stanza, message)
        tokens = {t.strip() for h in disposition for t in h.value.split(",")}
        if "positive-delivery" in tokens:
            ET.SubElement(stanza, f"{{{RECEIPTS_NS}}}request")
        if "display" in tokens:
            ET.SubElement(stanza, f"{{{MARKERS_NS}}}markable")
        return stanza

    def _readable_entity(self, stanza: ET.Element, message: cpim.CpimMessage) -> None:
        content_type = message.content_type or "text/plain"
        media = content_type.split(";", 1)[0].strip().lower()
        charset = _charset(content_type)
        if media == "text/plain" and charset in _TEXT_CHARSETS:
            try:
                text = message.body.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            if text and _xml_text_ok(text):
                el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}body")
                lang = _entity_header(message, "Content-Language")
                if lang is not None:
                    el.set(XML_LANG, lang)
                el.text = text.replace("\r\n", "\n")
                return
        if media == ISCOMPOSING:
            try:
                state = read_iscomposing(message.body, self.policy)
            except ParseError:
                state = None
            if state is not None:
                name = "composing" if state == "active" else "paused"
                ET.SubElement(stanza, f"{{{CHATSTATES_NS}}}{name}")
                return
        if media == IMDN:
            try:
                note = read_imdn(message.body, self.policy)
            except ParseError:
                note = None
            if note is not None:
                self._notification_element(stanza, note)
                return
        body = ET.SubElement(stanza, f"{{{self.stanza_ns}}}body")
        body.text = describe(content_type, len(message.body))

    def _notification_element(self, stanza: ET.Element, note: Notification) -> None:
        """IMDN -> XEP-0184 ``<received/>`` / XEP-0333 ``<displayed/>``; other statuses
        (failed, forbidden, error) become a readable line (XMPP has no negative receipt)."""
        if note.kind == "delivery" and note.status == "delivered":
            ET.SubElement(stanza, f"{{{RECEIPTS_NS}}}received", {"id": note.message_id})
        elif note.kind == "display" and note.status == "displayed":
            ET.SubElement(stanza, f"{{{MARKERS_NS}}}displayed", {"id": note.message_id})
        else:
            body = ET.SubElement(stanza, f"{{{self.stanza_ns}}}body")
            body.text = f"[{note.kind} notification for message {note.message_id}: {note.status}]"

    def _readable_secured(self, stanza: ET.Element, payload: Payload) -> None:
        """Signed or encrypted (or any non-CPIM) payload: a readable line, and the object in
        RFC 3923 ``<e2e/>`` when it is text; the carriage element stays the exact copy."""
        shown = False
        if payload.is_signed:
            content = smime.signed_content(payload)
            if content is not None:
                try:
                    inner = cpim.parse(content, policy=self.policy)
                except ParseError:
                    inner = None
                if inner is not None:
                    for subject in inner.subjects:
                        el = ET.SubElement(stanza, f"{{{self.stanza_ns}}}subject")
                        if subject.lang is not None:
                            el.set(XML_LANG, subject.lang)
                        el.text = _xml_safe(subject.text)
                    self._readable_entity(stanza, inner)
                    shown = True
        if not shown:
            body = ET.SubElement(stanza, f"{{{self.stanza_ns}}}body")
            what = "encrypted message" if payload.is_encrypted else payload.content_type
            body.text = describe(what, len(payload.body))
        if payload.is_secured:
            try:
                text = payload_to_entity(payload).decode("utf-8")
            except UnicodeDecodeError:
                return
            if _xml_text_ok(text):
                ET.SubElement(stanza, f"{{{E2E_NS}}}e2e").text = text

    def _element_from_text(self, text: str) -> ET.Element:
        wrapped = f"<w xmlns='{self.stanza_ns}'>{text}</w>".encode()
        root = parse_xml(wrapped, policy=self.policy)
        if len(root) != 1:
            raise ParseError("XMPP_ELEMENT", "xmpp.Element header does not hold one element")
        return root[0]

    # ------------------------------------------------------------------ errors
    def error_to_native(self, envelope: Envelope, error: GatewayError) -> ET.Element:
        """The error stanza for the sender of ``envelope`` (RFC 6120 §8.3: from and to
        swapped, same id; RFC 6120 §8.3.1: never an error about an error)."""
        sender = envelope.origin.reply_to or self.addresses.to_jid(envelope.sender)
        recipient = self.addresses.to_jid(envelope.recipient)
        kind = envelope.origin.context.get("stanza", "message")
        attrs = {"from": recipient, "to": sender, "type": "error"}
        if envelope.origin.native_id:
            attrs["id"] = envelope.origin.native_id
        stanza = ET.Element(f"{{{self.stanza_ns}}}{kind}", attrs)
        condition = "jid-malformed" if getattr(error, "code", "") == "JID_MALFORMED" else None
        stanza.append(error_element(self.stanza_ns, error.reason, str(error), condition=condition))
        return stanza

    def error_from_native(self, native: ET.Element) -> GatewayError | None:
        found = read_error(native) if native.get("type") == "error" else None
        if found is None:
            return None
        reason, kind, condition, text = found
        return GatewayError(
            f"XMPP error {condition} ({kind}){': ' + text if text else ''}",
            reason=reason,
            hint="the XMPP side refused the stanza",
        )


def _message_attributes(parts: Parts) -> dict[str, str]:
    """The stanza's own identifiers and form, so that a payload carried exactly (carriage
    element, ``<e2e/>``) goes back out as the stanza it came in (law L2): ``xmpp.id``,
    ``xmpp.type``, ``xmpp.origin-id`` (XEP-0359), and for an RFC 3923 stanza ``xmpp.e2e``
    (``crlf`` when the text kept its CRs as ``&#13;``, ``lf`` for the CDATA form)."""
    attributes: dict[str, str] = {}
    attrs = parts.attrs
    if "id" in attrs:
        attributes["xmpp.id"] = attrs["id"]
    if "type" in attrs:
        attributes["xmpp.type"] = attrs["type"]
    if parts.origin_id is not None:
        attributes["xmpp.origin-id"] = parts.origin_id
    if parts.receipt_request is not None or parts.markable is not None:
        attributes["imdn.message-id"] = attrs.get("id", "")
    if parts.carriage is None and parts.e2e is not None:
        attributes["xmpp.e2e"] = "crlf" if "\r" in (parts.e2e.text or "") else "lf"
        if parts.e2e.tag != f"{{{E2E_NS}}}e2e":
            attributes["xmpp.e2e-ns"] = namespace(parts.e2e.tag)
    return attributes


def _read_hops(parts: Parts) -> tuple[tuple[str, ...], int]:
    trace: tuple[str, ...] = ()
    if parts.trace is not None:
        trace = tuple(h.get("by", "") for h in parts.trace if local(h.tag) == "hop")
    max_forwards = DEFAULT_MAX_FORWARDS
    if parts.hops is not None:
        try:
            max_forwards = max(0, int(parts.hops.get("left", "")))
        except ValueError as exc:
            raise ParseError(
                "HOPS_NOT_NUMBER", "<hops left='...'> is not a number", hint="write left='N'"
            ) from exc
    return trace, max_forwards


def _add_hops(stanza: ET.Element, envelope: Envelope) -> None:
    """Transport history and hop budget, outside any signed object (docs/architecture.md)."""
    if envelope.trace:
        trace = ET.SubElement(stanza, f"{{{TRACE_NS}}}trace")
        for gateway in envelope.trace:
            ET.SubElement(trace, f"{{{TRACE_NS}}}hop", {"by": gateway})
    if envelope.trace or envelope.max_forwards != DEFAULT_MAX_FORWARDS:
        ET.SubElement(stanza, f"{{{TRACE_NS}}}hops", {"left": str(envelope.max_forwards)})


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return ""


def _entity_header(message: cpim.CpimMessage, name: str) -> str | None:
    for key, value in message.entity_headers:
        if key.lower() == name.lower():
            return value.strip()
    return None


def _element_text(element: ET.Element) -> str:
    """A child element serialised for an ``xmpp.Element`` header (stanza namespace
    implied), without the tail text."""
    tail, element.tail = element.tail, None
    try:
        return serialize(
            element, CLIENT_NS if namespace(element.tag) == CLIENT_NS else COMPONENT_NS
        ).decode("utf-8")
    finally:
        element.tail = tail


def _canonical_form(element: ET.Element, *, top: bool = False) -> tuple[object, ...]:
    """A comparable form: stanza namespaces unified; at the top level the children are
    sorted and whitespace between them dropped; below it everything counts (mixed content)."""
    tag = element.tag
    if namespace(tag) in STANZA_NAMESPACES:
        tag = "{stanza}" + local(tag)
    children = [_canonical_form(c) for c in element]
    if top:
        children = [c[:-1] for c in children]  # the tail is whitespace between children
        return (
            tag,
            tuple(sorted(element.attrib.items())),
            (element.text or "").strip(),
            tuple(sorted(children, key=repr)),
        )
    return (
        tag,
        tuple(sorted(element.attrib.items())),
        element.text or "",
        tuple(children),
        element.tail or "",
    )


def languages(elements: Sequence[ET.Element]) -> list[str | None]:
    """The ``xml:lang`` of each element (None when absent)."""
    return [e.get(XML_LANG) for e in elements]
