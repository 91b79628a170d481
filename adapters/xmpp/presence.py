"""XMPP presence <-> PIDF and the subscription operations. Pure.

- Available/unavailable presence <-> NOTIFY with a PIDF document (RFC 8048 §6.2-6.3,
  RFC 3863): one tuple per resource with id ``ID-<resource>`` (RFC 8048 §6.2: a tuple id
  is an xs:ID and cannot start with a digit; resources that are not NCName-safe are
  hex-encoded as ``IDx-<hex>``), ``<basic>`` open/closed, ``<show>`` inside ``<status>``
  (RFC 8048 §6.2 note 7), ``<status/>`` as ``<note xml:lang>``, ``<priority>`` 0..127 as
  ``<contact priority>`` 0..1 with three decimals (negative priorities are not mapped,
  RFC 3922 §5.1.10; recorded as a loss).
- ``subscribe`` -> SUBSCRIBE (no duration: XMPP subscriptions last until cancelled),
  ``probe`` -> SUBSCRIBE with duration 0 (a one-time fetch, RFC 8048 §7.1),
  ``unsubscribe`` -> UNSUBSCRIBE, ``subscribed``/``unsubscribed`` -> AUTHORIZE granted
  True/False (RFC 3922 §6, RFC 6121 §3), and back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from urllib.parse import quote

from adapters.contract import Mapped
from adapters.xmpp.jid import Jid
from adapters.xmpp.stanza import STANZA_NAMESPACES, XML_LANG, local, namespace
from canonical import presence as pidf
from canonical import smime
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import Loss, MappingError, ParseError, Reason

if TYPE_CHECKING:
    from adapters.xmpp.mapping import XmppMapper

SUBSCRIPTION_TYPES = {
    "subscribe": Operation.SUBSCRIBE,
    "probe": Operation.SUBSCRIBE,
    "unsubscribe": Operation.UNSUBSCRIBE,
    "subscribed": Operation.AUTHORIZE,
    "unsubscribed": Operation.AUTHORIZE,
}
SHOWS = ("away", "chat", "dnd", "xa")
_NCNAME_SAFE = re.compile(r"[A-Za-z0-9._-]+\Z")


def tuple_id(resource: str | None) -> str:
    """A reversible xs:ID for a resource (RFC 8048 §6.2 recommends an ``ID-`` prefix)."""
    if resource is None:
        return "ID-"
    if _NCNAME_SAFE.match(resource):
        return f"ID-{resource}"
    return "IDx-" + resource.encode("utf-8").hex()


def resource_of(tuple_id_: str) -> str | None:
    """Reverse :func:`tuple_id`; a foreign tuple id is used as the resource as it is."""
    if tuple_id_ == "ID-":
        return None
    if tuple_id_.startswith("IDx-"):
        try:
            return bytes.fromhex(tuple_id_[4:]).decode("utf-8")
        except ValueError:
            return tuple_id_
    if tuple_id_.startswith("ID-"):
        return tuple_id_[3:]
    return tuple_id_


def priority_to_pidf(priority: int) -> float:
    """RFC 3922 §5.1.10 / RFC 8048 §6.2 note 6: 0..127 -> 0..1, three decimals."""
    return round(priority / 127, 3)


def priority_from_pidf(value: float) -> int:
    return max(0, min(127, round(value * 127)))


def _pres_uri(address: str) -> str:
    if address.startswith("xmpp:"):
        jid = Jid.parse(address[5:])
        user = quote(jid.local, safe="!$&'()*+,;=-._~") + "@" if jid.local else ""
        return f"pres:{user}{jid.domain}"
    return address.split(";", 1)[0]


def _bare_uri(address: str) -> str:
    return address.split("/", 1)[0] if address.startswith("xmpp:") else address


def to_canonical(
    mapper: XmppMapper, stanza: ET.Element, *, origin: Origin, received_at: float
) -> Mapped[Envelope]:
    """A presence stanza -> NOTIFY, SUBSCRIBE, UNSUBSCRIBE or AUTHORIZE."""
    kind = stanza.get("type", "available")
    sender_jid, recipient_jid = stanza.get("from"), stanza.get("to")
    if not sender_jid or not recipient_jid:
        raise ParseError("STANZA_ADDRESS", "presence without from or to")
    sender = mapper.addresses.to_uri(sender_jid)
    recipient = mapper.addresses.to_uri(recipient_jid)
    stanza_id = stanza.get("id")
    context = {**origin.context, "stanza": "presence", "presence.type": kind}
    new_origin = Origin(
        adapter=origin.adapter,
        peer=origin.peer,
        native_id=stanza_id,
        reply_to=sender_jid,
        context=context,
    )
    if kind == "error":
        raise MappingError(
            "a presence error reports a failure; it is not an operation",
            reason=Reason.BAD_REQUEST,
        )
    if kind in SUBSCRIPTION_TYPES:
        watcher, target = _bare_uri(sender), _bare_uri(recipient)
        dropped = tuple(
            Loss(f"presence/{local(c.tag)}", "child of a subscription stanza not carried")
            for c in stanza
        )
        envelope = Envelope(
            operation=SUBSCRIPTION_TYPES[kind],
            sender=watcher,
            recipient=target,
            payload=None,
            identity=identity_of(
                "xmpp-presence", kind, watcher, target, stanza_id or repr(received_at)
            ),
            origin=new_origin,
            received_at=received_at,
            duration=0 if kind == "probe" else None,
            granted={"subscribed": True, "unsubscribed": False}.get(kind),
            losses=dropped,
        )
        return Mapped(envelope, dropped)
    if kind not in ("available", "unavailable"):
        raise ParseError("PRESENCE_TYPE", f"unknown presence type {kind!r} (RFC 6121 §4.7.1)")
    losses: list[Loss] = []
    show: str | None = None
    notes: list[pidf.Note] = []
    priority: float | None = None
    for child in stanza:
        name = local(child.tag)
        if namespace(child.tag) in STANZA_NAMESPACES and name == "show":
            text = (child.text or "").strip()
            if text in SHOWS:
                show = text
            else:
                losses.append(Loss("presence/show", f"unknown show {text!r}"))
        elif namespace(child.tag) in STANZA_NAMESPACES and name == "status":
            notes.append(pidf.Note(child.text or "", child.get(XML_LANG)))
        elif namespace(child.tag) in STANZA_NAMESPACES and name == "priority":
            try:
                value = int((child.text or "").strip())
            except ValueError:
                losses.append(Loss("presence/priority", "not a number"))
                continue
            if value >= 0:
                priority = priority_to_pidf(min(value, 127))
            else:
                losses.append(Loss("presence/priority", "negative priority is not mapped"))
        else:
            losses.append(Loss(f"presence/{name}", f"extension {namespace(child.tag)} not carried"))
    resource = Jid.parse(sender_jid).resource
    document = pidf.build_pidf(
        entity=_pres_uri(sender),
        tuples=[
            pidf.PresenceTuple(
                id=tuple_id(resource),
                basic="closed" if kind == "unavailable" else "open",
                contact=sender if priority is not None else None,
                priority=priority,
                notes=tuple(notes),
                show=show,
            )
        ],
    )
    payload = Payload(PIDF, document.raw)
    envelope = Envelope(
        operation=Operation.NOTIFY,
        sender=sender,
        recipient=recipient,
        payload=payload,
        identity=identity_of("xmpp-presence", sender, recipient, document.raw, repr(received_at)),
        origin=new_origin,
        received_at=received_at,
        losses=tuple(losses),
        attributes={"subscription.state": "active"},
    )
    return Mapped(envelope, tuple(losses))


def from_canonical(mapper: XmppMapper, envelope: Envelope) -> Mapped[list[ET.Element]]:
    """An envelope -> presence stanzas (one per PIDF tuple for NOTIFY)."""
    ns = mapper.stanza_ns
    sender = Jid.parse(mapper.addresses.to_jid(envelope.sender))
    recipient = Jid.parse(mapper.addresses.to_jid(envelope.recipient))
    own = envelope.origin.context.get("stanza") == "presence" and envelope.origin.native_id
    stanza_id = envelope.origin.native_id if own else envelope.identity

    def presence(kind: str | None, resource: str | None) -> ET.Element:
        frm = Jid(sender.local, sender.domain, resource)
        attrs = {"from": str(frm), "to": str(recipient)}
        if kind:
            attrs["type"] = kind
        if stanza_id:
            attrs["id"] = stanza_id
        return ET.Element(f"{{{ns}}}presence", attrs)

    op = envelope.operation
    if op is Operation.SUBSCRIBE:
        return Mapped([presence("probe" if envelope.duration == 0 else "subscribe", None)])
    if op is Operation.UNSUBSCRIBE:
        return Mapped([presence("unsubscribe", None)])
    if op is Operation.AUTHORIZE:
        return Mapped([presence("subscribed" if envelope.granted else "unsubscribed", None)])
    if op is not Operation.NOTIFY:
        raise MappingError(
            f"operation {op} has no presence form", reason=Reason.UNSUPPORTED_FEATURE
        )
    payload = envelope.payload
    losses: list[Loss] = []
    terminated = envelope.attributes.get("subscription.state", "").startswith("terminated")
    if payload is None or terminated:
        return Mapped([presence("unavailable", None)])
    body = payload.body
    if payload.is_signed:
        content = smime.signed_content(payload)
        if content is None:
            raise MappingError("signed presence that cannot be read", reason=Reason.BAD_REQUEST)
        body = content.partition(b"\r\n\r\n")[2]
        losses.append(Loss("pidf/signature", "XMPP presence cannot carry the PIDF signature"))
    elif payload.media_type != PIDF:
        raise MappingError(
            f"presence of type {payload.media_type} is not PIDF",
            reason=Reason.UNSUPPORTED_MEDIA,
            hint="send application/pidf+xml (RFC 3863)",
        )
    document = pidf.parse_pidf(body, policy=mapper.policy)
    if not document.tuples:
        return Mapped([presence("unavailable", None)], tuple(losses))
    stanzas: list[ET.Element] = []
    fallback_show = (
        "dnd"
        if "busy" in document.activities
        else "away"
        if "away" in document.activities
        else None
    )
    for item in document.tuples:
        el = presence("unavailable" if item.basic == "closed" else None, resource_of(item.id))
        if not own:
            el.attrib.pop("id", None)
            el.set(
                "id",
                f"{envelope.identity}-{len(stanzas)}"
                if len(document.tuples) > 1
                else envelope.identity,
            )
        show = item.show or fallback_show
        if show in SHOWS and item.basic != "closed":
            ET.SubElement(el, f"{{{ns}}}show").text = show
        for note in item.notes or document.notes:
            status = ET.SubElement(el, f"{{{ns}}}status")
            if note.lang is not None:
                status.set(XML_LANG, note.lang)
            status.text = note.text
        if item.priority is not None and item.basic != "closed":
            ET.SubElement(el, f"{{{ns}}}priority").text = str(priority_from_pidf(item.priority))
        stanzas.append(el)
    return Mapped(stanzas, tuple(losses))
