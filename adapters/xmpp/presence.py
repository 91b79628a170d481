"""XMPP presence <-> PIDF and the subscription operations. Pure.

- Available/unavailable presence <-> NOTIFY with a PIDF document (RFC 8048 §6.2-6.3,
  RFC 3863), one tuple per resource:

  - tuple id <-> resource. For an XMPP user's JID the tuple id is ``ID-<resource>``
    (RFC 8048 §6.2: a tuple id is an xs:ID and cannot start with a digit; other resources
    are escaped as ``IDx-...``, :func:`canonical.presence.tuple_id_for`). For a foreign
    entity's JID (one the component serves) the resource *is* the foreign tuple id, as
    RFC 3922 §5.2.3 appends it, so the same tuple id comes back.
  - ``<basic>`` open/closed <-> no type / ``unavailable``; ``<show>`` inside ``<status>``
    (RFC 8048 §6.2 note 7); ``<status xml:lang>`` <-> ``<note xml:lang>``; ``<priority>``
    0..127 <-> ``<contact priority>`` 0..1 (RFC 3922 §5.1.9: negative priorities are not
    mapped, recorded as a loss); XEP-0203 ``<delay stamp>`` <-> ``<timestamp>``.
  - What XMPP presence has no element for is recorded as a :class:`Loss`, never dropped
    silently: RPID activities (busy/away still shown as ``dnd``/``away`` when a tuple has
    no show), presence-level notes, a contact URI other than the entity, precision of a
    priority, PIDF extensions, a signature.

- ``subscribe`` -> SUBSCRIBE (no duration: XMPP subscriptions last until cancelled, so a
  duration from another network is a recorded loss), ``probe`` -> SUBSCRIBE with duration 0
  (a one-time fetch, RFC 8048 §7.1), ``unsubscribe`` -> UNSUBSCRIBE,
  ``subscribed``/``unsubscribed`` -> AUTHORIZE granted True/False (RFC 3922 §6, RFC 6121 §3),
  and back.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from adapters.contract import Mapped
from adapters.xmpp.jid import Jid
from adapters.xmpp.stanza import STANZA_NAMESPACES, XML_LANG, local, namespace
from canonical import presence as pidf
from canonical import smime
from canonical.address import Address, gateway_jid
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import GatewayError, Loss, MappingError, ParseError, Reason
from canonical.xmldoc import parse_xml

if TYPE_CHECKING:
    from adapters.xmpp.mapping import XmppMapper

SUBSCRIPTION_TYPES = {
    "subscribe": Operation.SUBSCRIBE,
    "probe": Operation.SUBSCRIBE,
    "unsubscribe": Operation.UNSUBSCRIBE,
    "subscribed": Operation.AUTHORIZE,
    "unsubscribed": Operation.AUTHORIZE,
}
SHOWS = pidf.SHOW_VALUES
DELAY_NS = "urn:xmpp:delay"  # XEP-0203
#: XEP-0082 DateTime in UTC, as XEP-0203 §4 requires for ``stamp`` (also RFC 3339).
_UTC_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z")

#: The PIDF elements the mapping reads (RFC 3863 §4.1, RFC 8048 §6.2, RFC 4480 §3.2).
_P = f"{{{pidf.PIDF_NS}}}"
_KNOWN = frozenset(
    {
        f"{_P}presence",
        f"{_P}tuple",
        f"{_P}status",
        f"{_P}basic",
        f"{_P}contact",
        f"{_P}note",
        f"{_P}timestamp",
        f"{{{pidf.JABBER_CLIENT_NS}}}show",
    }
)
_ACTIVITY_PARTS = frozenset(
    {f"{{{pidf.DM_NS}}}person", f"{_P}person", f"{{{pidf.RPID_NS}}}activities"}
)
#: A bare JID's presence (no resource) as a tuple id, and back.
_NO_RESOURCE = "ID-"


def tuple_id(resource: str | None, *, foreign: bool) -> str:
    """The tuple id of a resource: the resource itself for a foreign entity's JID when it is
    an xs:ID (it came from a tuple id, RFC 3922 §5.2.3), else RFC 8048 §6.2 ``ID-...``."""
    if resource is None:
        return _NO_RESOURCE
    if foreign and pidf.is_ncname(resource):
        return resource
    return pidf.tuple_id_for(resource)


def resource_of(tuple_id_: str, *, foreign: bool) -> str | None:
    """Reverse :func:`tuple_id` (a tuple id not of the ``ID-`` forms is its own resource)."""
    if tuple_id_ == _NO_RESOURCE:
        return None
    return tuple_id_ if foreign else pidf.resource_of(tuple_id_)


@functools.lru_cache(maxsize=4096)
def user_uri(jid: str, scheme: Literal["im", "pres"]) -> str:
    """The ``im:``/``pres:`` URI of the user a JID names (RFC 3922 §3.2 and §5.1, RFC 7247
    §6.4; docs/addresses.md "Conversion between schemes"): the XEP-0106-unescaped localpart,
    percent-encoded where the scheme requires (``d\\27artagnan@x`` -> ``im:d'artagnan@x``,
    ``jürgen@x`` -> ``im:j%C3%BCrgen@x``), the domain in lower case and A-labels, no resource
    (these schemes name a user, not a device). :meth:`AddressMap.to_jid` escapes it back
    (XEP-0106 §4.2) into the same bare JID.

    A JID without such a URI is refused with ``JID_MALFORMED``: a localpart that is not
    canonically escaped (``foo\\5cbar`` unescapes to ``foo\\bar``, the user of
    ``foo\\5c5cbar`` too: XEP-0106 §7) or holds a character RFC 7622 §3.3 forbids.
    """
    try:
        address = Address.from_jid(jid).bare.with_scheme(scheme)
    except ParseError as exc:
        raise ParseError(
            "JID_MALFORMED",
            f"the XMPP address {jid[:80]!r} has no {scheme}: URI: {exc.message} [{exc.code}]",
            hint=exc.hint
            or "XMPP localparts are letters, digits and ASCII punctuation (RFC 7622 §3.3)",
        ) from None
    return str(replace(address, host=address.host.lower()))


@functools.lru_cache(maxsize=4096)
def _pres_uri(address: str) -> str:
    """The PIDF entity of a gateway-wide address (RFC 3922 §5.1: ``pres:user@host``)."""
    if address.startswith("xmpp:"):
        return user_uri(gateway_jid(address), "pres")
    if address.startswith("im:"):
        return "pres:" + address[3:].split(";", 1)[0]
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
    timestamp: str | None = None
    for child in stanza:
        name, ns = local(child.tag), namespace(child.tag)
        if ns in STANZA_NAMESPACES and name == "show":
            text = (child.text or "").strip()
            if text in SHOWS:
                show = text
            else:
                losses.append(Loss("presence/show", f"unknown show {text!r}"))
        elif ns in STANZA_NAMESPACES and name == "status":
            notes.append(pidf.Note(child.text or "", child.get(XML_LANG)))
        elif ns in STANZA_NAMESPACES and name == "priority":
            priority = _read_priority(child, losses)
        elif ns == DELAY_NS and name == "delay" and timestamp is None:
            timestamp = _read_delay(child, losses)
        else:
            losses.append(Loss(f"presence/{name}", f"extension {ns} not carried"))
    jid = Jid.parse(sender_jid)
    foreign = mapper.addresses.owns(jid)
    document = pidf.build_pidf(
        entity=_pres_uri(sender),
        tuples=[
            pidf.PresenceTuple(
                id=tuple_id(jid.resource, foreign=foreign),
                basic="closed" if kind == "unavailable" else "open",
                contact=sender if priority is not None else None,
                priority=priority,
                notes=tuple(notes),
                timestamp=timestamp,
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


def _read_priority(element: ET.Element, losses: list[Loss]) -> float | None:
    """RFC 6121 §4.7.2.3 ``<priority>`` -> PIDF contact priority (RFC 3922 §5.1.9)."""
    try:
        value = int((element.text or "").strip())
        scaled = pidf.pidf_priority(value)
    except ValueError:
        losses.append(Loss("presence/priority", "not a number in -128..127"))
        return None
    if scaled is None:
        losses.append(Loss("presence/priority", "negative priority is not mapped"))
    return scaled


def _read_delay(element: ET.Element, losses: list[Loss]) -> str | None:
    """XEP-0203 ``<delay stamp>`` -> PIDF ``<timestamp>`` (RFC 3863 §4.1.7)."""
    stamp = element.get("stamp", "")
    if not _UTC_STAMP.fullmatch(stamp):
        losses.append(Loss("presence/delay", f"stamp {stamp[:40]!r} is not a UTC DateTime"))
        return None
    if set(element.attrib) - {"stamp"} or len(element) or (element.text or "").strip():
        losses.append(Loss("presence/delay", "only the stamp of <delay/> is carried"))
    return stamp


def from_canonical(mapper: XmppMapper, envelope: Envelope) -> Mapped[list[ET.Element]]:
    """An envelope -> presence stanzas (one per PIDF tuple for NOTIFY)."""
    ns = mapper.stanza_ns
    sender = Jid.parse(mapper.addresses.to_jid(envelope.sender))
    recipient = Jid.parse(mapper.addresses.to_jid(envelope.recipient))
    # a presence that came from XMPP keeps its own id (or none, law L2); any other gets
    # one from the identity, the same on every resend
    own = envelope.origin.context.get("stanza") == "presence"
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
        losses: tuple[Loss, ...] = ()
        if envelope.duration not in (None, 0):
            losses = (
                Loss(
                    "subscription/duration",
                    f"XMPP subscriptions have no duration (RFC 6121 §3.1); {envelope.duration} s "
                    "not carried, the subscription lasts until cancelled",
                ),
            )
        return Mapped([presence("probe" if envelope.duration == 0 else "subscribe", None)], losses)
    if op is Operation.UNSUBSCRIBE:
        return Mapped([presence("unsubscribe", None)])
    if op is Operation.AUTHORIZE:
        return Mapped([presence("subscribed" if envelope.granted else "unsubscribed", None)])
    if op is not Operation.NOTIFY:
        raise MappingError(
            f"operation {op} has no presence form", reason=Reason.UNSUPPORTED_FEATURE
        )
    payload = envelope.payload
    notes: list[Loss] = []
    terminated = envelope.attributes.get("subscription.state", "").startswith("terminated")
    if payload is None or terminated:
        return Mapped([presence("unavailable", None)])
    body = payload.body
    if payload.is_signed:
        content = smime.signed_content(payload)
        if content is None:
            raise MappingError("signed presence that cannot be read", reason=Reason.BAD_REQUEST)
        body = content.partition(b"\r\n\r\n")[2]
        notes.append(Loss("pidf/signature", "XMPP presence cannot carry the PIDF signature"))
    elif payload.media_type != PIDF:
        raise MappingError(
            f"presence of type {payload.media_type} is not PIDF",
            reason=Reason.UNSUPPORTED_MEDIA,
            hint="send application/pidf+xml (RFC 3863)",
        )
    document = pidf.parse_pidf(body, policy=mapper.policy)
    notes.extend(_unmapped(body, mapper))
    if not document.tuples:
        return Mapped([presence("unavailable", None)], tuple(notes))
    foreign = mapper.addresses.owns(sender)
    notes.extend(_document_losses(document, mapper, sender))
    stanzas: list[ET.Element] = []
    fallback_show = (
        "dnd"
        if "busy" in document.activities
        else "away"
        if "away" in document.activities
        else None
    )
    for item in document.tuples:
        resource = resource_of(item.id, foreign=foreign)
        if resource is not None:
            try:
                Jid.parse(f"{sender.bare}/{resource}")
            except ParseError:
                notes.append(Loss("pidf/tuple/@id", f"tuple id {item.id!r} is no JID resource"))
                resource = None
        el = presence("unavailable" if item.basic == "closed" else None, resource)
        if tuple_id(resource, foreign=foreign) != item.id:
            notes.append(Loss("pidf/tuple/@id", f"tuple id {item.id!r} comes back as another id"))
        if not own:
            el.set(
                "id",
                f"{envelope.identity}-{len(stanzas)}"
                if len(document.tuples) > 1
                else envelope.identity,
            )
        show = item.show or (fallback_show if item.basic != "closed" else None)
        if show in SHOWS:
            ET.SubElement(el, f"{{{ns}}}show").text = show
        for note in item.notes or document.notes:
            status = ET.SubElement(el, f"{{{ns}}}status")
            if note.lang is not None:
                status.set(XML_LANG, note.lang)
            status.text = note.text
        notes.extend(_contact(el, item, mapper, sender, resource))
        if item.timestamp is not None:
            if _UTC_STAMP.fullmatch(item.timestamp):
                ET.SubElement(el, f"{{{DELAY_NS}}}delay", {"stamp": item.timestamp})
            else:
                notes.append(
                    Loss("pidf/timestamp", f"{item.timestamp!r} is not UTC as XEP-0203 needs")
                )
        stanzas.append(el)
    return Mapped(stanzas, tuple(notes))


def _contact(
    el: ET.Element, item: pidf.PresenceTuple, mapper: XmppMapper, sender: Jid, resource: str | None
) -> Iterator[Loss]:
    """``<contact priority>`` -> ``<priority>`` (RFC 3922 §5.2.12: the contact URI itself is
    not passed; the sender's address stands for it)."""
    if item.priority is not None:
        value = pidf.xmpp_priority(item.priority)
        ET.SubElement(el, f"{{{mapper.stanza_ns}}}priority").text = str(value)
        if pidf.pidf_priority(value) != item.priority:
            yield Loss(
                "pidf/contact/@priority",
                f"priority {item.priority} is XMPP priority {value}, which reads back as "
                f"{pidf.pidf_priority(value)} (RFC 3922 §5.1.9: 128 steps)",
            )
    if item.contact is not None:
        back = mapper.addresses.to_uri(str(Jid(sender.local, sender.domain, resource)))
        if item.priority is None or item.contact != back:
            yield Loss("pidf/contact", "XMPP presence has no contact URI (RFC 3922 §5.2.12)")


def _document_losses(
    document: pidf.PresenceDocument, mapper: XmppMapper, sender: Jid
) -> Iterator[Loss]:
    """Document-level PIDF fields XMPP presence has no element for."""
    if document.activities:
        yield Loss(
            "pidf/activities",
            f"RPID activities {', '.join(document.activities)} have no XMPP presence element "
            "(RFC 6121 §4.7.2); busy and away show as dnd and away when a tuple has no show",
        )
    if document.notes:
        yield Loss(
            "pidf/note",
            "XMPP has no presence-level note: shown as the <status/> of tuples without notes, "
            "it comes back as a tuple note (RFC 6121 §4.7.2.2)",
        )
    try:
        back = _pres_uri(mapper.addresses.to_uri(sender.bare))
    except ParseError as exc:  # a JID without a pres: URI (user_uri)
        yield Loss("pidf/@entity", f"entity {document.entity!r} does not come back: {exc}")
        return
    if document.entity.partition(":")[2].lower() != back.partition(":")[2].lower():
        yield Loss("pidf/@entity", f"entity {document.entity!r} comes back as {back!r}")


def _unmapped(body: bytes, mapper: XmppMapper) -> Iterator[Loss]:
    """PIDF elements with no XMPP form (RFC 3863 §4.2 extensions, RPID beyond activities):
    each reported once, by name."""
    try:
        root = parse_xml(body, policy=mapper.policy)
    except GatewayError:
        return
    activities = {
        id(child) for group in root.iter(f"{{{pidf.RPID_NS}}}activities") for child in group
    }  # reported as pidf/activities
    seen: set[str] = set()
    for element in root.iter():
        tag = element.tag
        if tag in _KNOWN or tag in _ACTIVITY_PARTS or id(element) in activities or tag in seen:
            continue
        seen.add(tag)
        yield Loss("pidf/extension", f"<{tag}> has no XMPP presence form; not carried")
