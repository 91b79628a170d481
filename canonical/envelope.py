"""What flows through the gateway: an operation, its transport addresses, and its payload.

DESIGN.md "What travels": the *payload* is exactly what a transport body would carry — a
content type plus body bytes (``message/cpim`` in body form, ``multipart/signed; ...``,
``application/pkcs7-mime; ...``, ``application/pidf+xml``). The envelope around it holds
only transport facts (RFC 3862 §2.2: the CPIM object itself is never rewritten; only
transport addresses are): who sent it on which adapter, where it goes, its identity for
deduplication, the hop budget (RFC 3860 §3.4.2 MaxForwards) and the transport history
used for loop detection.

The four abstract operations are RFC 3860 §3 (message) and RFC 3859 §3 (subscribe,
unsubscribe, notify); ``AUTHORIZE`` carries a presentity's answer to a watcher (XMPP
``subscribed``/``unsubscribed``, SIP ``Subscription-State: active``/``terminated``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from canonical.errors import Loss

#: RFC 3860 §3.4.2 recommends an initial MaxForwards above 100; SIP uses 70 (RFC 3261
#: §8.1.1.6). cpimgw starts new objects at 70 and carries whatever a peer sent.
DEFAULT_MAX_FORWARDS = 70


class Operation(StrEnum):
    """The abstract CPIM/CPP operations (RFC 3860 §3, RFC 3859 §3), plus authorization."""

    MESSAGE = "message"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    NOTIFY = "notify"
    AUTHORIZE = "authorize"


#: Media types of the objects the gateway relays untouched.
CPIM = "message/cpim"
MULTIPART_SIGNED = "multipart/signed"
PKCS7_MIME = "application/pkcs7-mime"
PIDF = "application/pidf+xml"
ISCOMPOSING = "application/im-iscomposing+xml"
IMDN = "message/imdn+xml"


@dataclass(frozen=True, slots=True)
class Payload:
    """A content type (the full header value, parameters included) and the exact body bytes."""

    content_type: str
    body: bytes

    @property
    def media_type(self) -> str:
        """``type/subtype`` in lower case, without parameters (RFC 2045 §5.1)."""
        return self.content_type.split(";", 1)[0].strip().lower()

    @property
    def is_signed(self) -> bool:
        """A multipart/signed object or a pkcs7-mime signed-data object (RFC 8551 §3.5)."""
        if self.media_type == MULTIPART_SIGNED:
            return True
        return self.media_type == PKCS7_MIME and "signed-data" in self.content_type.lower()

    @property
    def is_encrypted(self) -> bool:
        """An application/pkcs7-mime enveloped-data object (RFC 8551 §3.3)."""
        return self.media_type == PKCS7_MIME and "enveloped-data" in self.content_type.lower()

    @property
    def is_secured(self) -> bool:
        """Signed or encrypted: relayed untouched, never re-mapped into native fields."""
        return self.is_signed or self.is_encrypted or self.media_type == PKCS7_MIME


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an envelope came from, as far as the transport can tell.

    - ``adapter``: the configured adapter instance name it arrived on.
    - ``peer``: the authenticated peer (XMPP component domain, SIP digest user or source,
      HTTP token id, mutual-TLS subject); anti-spoofing checks the sender against it.
    - ``native_id``: the sender's own message identity (XMPP ``id``, SIP Call-ID, ...).
    - ``reply_to``: the transport address failures go back to (a full JID, a SIP URI).
    - ``context``: native fields the origin adapter needs to answer in its own protocol.
    """

    adapter: str
    peer: str | None = None
    native_id: str | None = None
    reply_to: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One operation in flight. Immutable; derive changed copies with :meth:`replace`.

    ``sender``/``recipient`` are transport addresses as URIs (``im:``, ``pres:``, ``sip:``,
    ``xmpp:``); they may differ from the CPIM From/To inside the payload, which the gateway
    never rewrites. ``identity`` is stable across resends and hops, so every receiver can
    drop duplicates. ``trace`` lists the gateway ids this object already passed through
    (transport history, carried outside any signed object). ``attributes`` holds
    protocol-neutral extras such as ``imdn.message-id`` or ``subscription.state``.
    """

    operation: Operation
    sender: str
    recipient: str
    payload: Payload | None
    identity: str
    origin: Origin
    max_forwards: int = DEFAULT_MAX_FORWARDS
    trace: tuple[str, ...] = ()
    received_at: float = 0.0
    duration: int | None = None
    granted: bool | None = None
    losses: tuple[Loss, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Envelope:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)

    def hop(self, gateway_id: str) -> Envelope:
        """The envelope as it leaves gateway ``gateway_id``: budget spent, history extended.

        RFC 3860 §3.4.2: each relay decrements MaxForwards; the caller checks for zero
        before sending (see ``gateway.routing``).
        """
        return replace(self, max_forwards=self.max_forwards - 1, trace=(*self.trace, gateway_id))


def identity_of(*parts: str | bytes | None) -> str:
    """A stable identity from native identifiers (or the payload bytes when there are none).

    The same parts always give the same identity, so a resend after a crash, or the same
    object arriving twice, is recognised. 32 hex digits of SHA-256.
    """
    digest = hashlib.sha256()
    for part in parts:
        data = b"" if part is None else part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:32]


def to_record(envelope: Envelope) -> dict[str, Any]:
    """A JSON-ready dict for stores and the HTTP API; :func:`from_record` reverses it exactly."""
    payload = envelope.payload
    return {
        "operation": envelope.operation.value,
        "sender": envelope.sender,
        "recipient": envelope.recipient,
        "payload": None
        if payload is None
        else {
            "content_type": payload.content_type,
            "body": base64.b64encode(payload.body).decode("ascii"),
        },
        "identity": envelope.identity,
        "origin": {
            "adapter": envelope.origin.adapter,
            "peer": envelope.origin.peer,
            "native_id": envelope.origin.native_id,
            "reply_to": envelope.origin.reply_to,
            "context": dict(envelope.origin.context),
        },
        "max_forwards": envelope.max_forwards,
        "trace": list(envelope.trace),
        "received_at": envelope.received_at,
        "duration": envelope.duration,
        "granted": envelope.granted,
        "losses": [[loss.field, loss.detail] for loss in envelope.losses],
        "attributes": dict(envelope.attributes),
    }


def from_record(record: Mapping[str, Any]) -> Envelope:
    """Rebuild an :class:`Envelope` from :func:`to_record` output."""
    raw_payload = record.get("payload")
    payload = (
        None
        if raw_payload is None
        else Payload(
            content_type=str(raw_payload["content_type"]),
            body=base64.b64decode(raw_payload["body"]),
        )
    )
    origin = record["origin"]
    return Envelope(
        operation=Operation(record["operation"]),
        sender=str(record["sender"]),
        recipient=str(record["recipient"]),
        payload=payload,
        identity=str(record["identity"]),
        origin=Origin(
            adapter=str(origin["adapter"]),
            peer=origin.get("peer"),
            native_id=origin.get("native_id"),
            reply_to=origin.get("reply_to"),
            context=dict(origin.get("context") or {}),
        ),
        max_forwards=int(record.get("max_forwards", DEFAULT_MAX_FORWARDS)),
        trace=tuple(record.get("trace") or ()),
        received_at=float(record.get("received_at", 0.0)),
        duration=record.get("duration"),
        granted=record.get("granted"),
        losses=tuple(Loss(f, d) for f, d in record.get("losses") or ()),
        attributes=dict(record.get("attributes") or {}),
    )
