"""The small XML documents the XMPP mapping writes and reads itself: RFC 3994 isComposing
and RFC 5438 IMDN. Written deterministically (same arguments, same bytes); read through
``canonical.xmldoc.parse_xml`` (no DTD, no entities, bounded). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from canonical.errors import ParseError
from canonical.policy import Policy
from canonical.xmldoc import parse_xml

ISCOMPOSING_NS = "urn:ietf:params:xml:ns:im-iscomposing"  # RFC 3994 §4
IMDN_NS = "urn:ietf:params:xml:ns:imdn"  # RFC 5438 §9
IMDN_HEADERS_NS = "urn:ietf:params:imdn"  # RFC 5438 §6 (CPIM header namespace)

#: RFC 5438 §7.2.1.1/§7.2.1.2 status values we read and write.
DELIVERY_STATUSES = ("delivered", "failed", "forbidden", "error")
DISPLAY_STATUSES = ("displayed", "forbidden", "error")


def build_iscomposing(state: str, *, refresh: int | None = None) -> bytes:
    """RFC 3994 §4 document; ``state`` is ``active`` or ``idle``."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<isComposing xmlns="{ISCOMPOSING_NS}">',
        f"  <state>{escape(state)}</state>",
        "  <contenttype>text/plain</contenttype>",
    ]
    if refresh is not None:
        lines.append(f"  <refresh>{refresh}</refresh>")
    lines.append("</isComposing>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def read_iscomposing(data: bytes, policy: Policy | None = None) -> str:
    """The ``<state>`` of an RFC 3994 document (``active`` or ``idle``)."""
    root = parse_xml(data, policy=policy)
    if root.tag != f"{{{ISCOMPOSING_NS}}}isComposing":
        raise ParseError("ISCOMPOSING_ROOT", f"root is {root.tag}, not isComposing (RFC 3994 §4)")
    state = (root.findtext(f"{{{ISCOMPOSING_NS}}}state") or "").strip()
    if state not in ("active", "idle"):
        raise ParseError(
            "ISCOMPOSING_STATE", f"state {state!r} is neither active nor idle (RFC 3994 §4)"
        )
    return state


@dataclass(frozen=True, slots=True)
class Notification:
    """One IMDN (RFC 5438 §7.2): which message, which kind, which status."""

    message_id: str
    kind: str  # "delivery" | "display"
    status: str
    datetime: str
    recipient: str | None = None


def build_imdn(note: Notification) -> bytes:
    """RFC 5438 §9 document, deterministic."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<imdn xmlns="{IMDN_NS}">',
        f" <message-id>{escape(note.message_id)}</message-id>",
        f" <datetime>{escape(note.datetime)}</datetime>",
    ]
    if note.recipient:
        parts.append(f" <recipient-uri>{escape(note.recipient)}</recipient-uri>")
    parts.append(
        f" <{note.kind}-notification><status><{note.status}/></status></{note.kind}-notification>"
    )
    parts.append("</imdn>")
    return ("\n".join(parts) + "\n").encode("utf-8")


def read_imdn(data: bytes, policy: Policy | None = None) -> Notification:
    """Read an RFC 5438 §9 document (delivery or display notification)."""
    root = parse_xml(data, policy=policy)
    ns = f"{{{IMDN_NS}}}"
    if root.tag != f"{ns}imdn":
        raise ParseError("IMDN_ROOT", f"root is {root.tag}, not imdn (RFC 5438 §9)")
    message_id = (root.findtext(f"{ns}message-id") or "").strip()
    if not message_id:
        raise ParseError("IMDN_NO_MESSAGE_ID", "IMDN without <message-id> (RFC 5438 §9)")
    for kind, statuses in (("delivery", DELIVERY_STATUSES), ("display", DISPLAY_STATUSES)):
        status_el = root.find(f"{ns}{kind}-notification/{ns}status")
        if status_el is None:
            continue
        for child in status_el:
            name = child.tag.rsplit("}", 1)[-1]
            if name in statuses:
                return Notification(
                    message_id,
                    kind,
                    name,
                    (root.findtext(f"{ns}datetime") or "").strip(),
                    (root.findtext(f"{ns}recipient-uri") or "").strip() or None,
                )
    raise ParseError(
        "IMDN_NO_STATUS", "IMDN without a delivery or display status (RFC 5438 §7.2.1)"
    )
