"""PIDF presence documents (RFC 3863) with the RPID subset (RFC 4480) cpimgw maps, keeping
their bytes.

DESIGN.md rule 1: bytes are the truth. :func:`parse_pidf` keeps the exact input in ``raw`` and
exposes *views* of what the gateway maps between XMPP and SIP (RFC 3922 §5, RFC 8048 §6):
basic status, notes by ``xml:lang`` (presence and tuple level), contact with priority,
timestamp, the XMPP ``<show xmlns='jabber:client'>`` inside ``<status>`` (RFC 8048 §6.2) and
RPID activities in ``<dm:person>`` (RFC 4479 §3, RFC 4480 §3.2). Everything else is ignored by
the views (RFC 3863 §4.2: unknown extensions are ignored) but stays in ``raw``. Parsing goes
through :mod:`canonical.xmldoc`: no DTD, no entities, bounded size.

:func:`build_pidf` writes deterministic bytes (same arguments, same bytes: UTF-8, single
quotes, fixed namespace declarations, fixed element order per the RFC 3863 schema).

Also here, as pure functions: the reversible tuple-id transformation for XMPP resources
(RFC 8048 §6.2: ``ID-`` + resource, as a tuple id must be an ``xs:ID``) and the XMPP
priority <-> PIDF contact priority scaling (RFC 3922 §5.1.9, RFC 8048 §6.2 note 6).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from canonical.errors import Defect, MappingError, ParseError
from canonical.policy import DEFAULT, Policy
from canonical.xmldoc import XML_LANG, parse_xml

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DM_NS = "urn:ietf:params:xml:ns:pidf:data-model"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
JABBER_CLIENT_NS = "jabber:client"

#: RFC 6121 §4.7.2.1 ``<show>`` values.
SHOW_VALUES = ("away", "chat", "dnd", "xa")
#: RFC 4480 §3.2 activity values.
RPID_ACTIVITIES = (
    "appointment",
    "away",
    "breakfast",
    "busy",
    "dinner",
    "holiday",
    "in-transit",
    "looking-for-work",
    "lunch",
    "meal",
    "meeting",
    "on-the-phone",
    "other",
    "performance",
    "permanent-absence",
    "playing",
    "presentation",
    "shopping",
    "sleeping",
    "spectator",
    "steering",
    "travel",
    "tv",
    "unknown",
    "vacation",
    "working",
    "worship",
)

_P = f"{{{PIDF_NS}}}"
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
# RFC 3863 §4.1.5: qvalue-like decimal 0..1 with at most three decimals
_PRIORITY = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


@dataclass(frozen=True, slots=True)
class Note:
    """RFC 3863 §4.1.6 ``<note>``: free text and its language (``xml:lang``, inherited)."""

    text: str
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceTuple:
    """RFC 3863 §4.1.2 tuple: id, basic status, contact (+priority), notes, timestamp,
    and the XMPP ``<show>`` carried inside ``<status>`` (RFC 8048 §6.2)."""

    id: str
    basic: str | None  # "open" | "closed" | None
    contact: str | None = None
    priority: float | None = None
    notes: tuple[Note, ...] = ()
    timestamp: str | None = None
    show: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceDocument:
    """A parsed PIDF document; ``raw`` is the exact input, the rest are views.

    ``defects`` records what lenient parsing set aside (a bad ``<basic>``, an out-of-range
    priority, an ignored ``mustUnderstand`` extension ...), with the codes of docs/presence.md.
    """

    raw: bytes
    entity: str
    tuples: tuple[PresenceTuple, ...]
    notes: tuple[Note, ...] = ()  # presence-level notes
    activities: tuple[str, ...] = ()  # RPID activities (person), e.g. "away", "busy"
    defects: tuple[Defect, ...] = ()

    @property
    def basic(self) -> str | None:
        """ "open" if any tuple is open, else "closed" if any closed, else None."""
        states = {t.basic for t in self.tuples}
        if "open" in states:
            return "open"
        return "closed" if "closed" in states else None

    def tuple_by_id(self, tuple_id: str) -> PresenceTuple | None:
        """The tuple with this id, or None."""
        return next((t for t in self.tuples if t.id == tuple_id), None)


def pick_note(notes: Sequence[Note], lang: str | None = None) -> Note | None:
    """The note to show a reader of ``lang`` (RFC 4647 lookup, simplified): the same tag,
    then the same primary language, then a note without language, then the first note."""
    if not notes:
        return None
    if lang:
        wanted = lang.lower()
        for note in notes:
            if note.lang and note.lang.lower() == wanted:
                return note
        primary = wanted.split("-", 1)[0]
        for note in notes:
            if note.lang and note.lang.lower().split("-", 1)[0] == primary:
                return note
    for note in notes:
        if note.lang is None:
            return note
    return notes[0]


# --- tuple ids (RFC 8048 §6.2) ---------------------------------------------------------------


def _is_name_start(ch: str) -> bool:
    """XML 1.0 (5th ed.) §2.3 NameStartChar, without ':' (Namespaces in XML §3 NCName)."""
    o = ord(ch)
    return (
        ch == "_"
        or "A" <= ch <= "Z"
        or "a" <= ch <= "z"
        or 0xC0 <= o <= 0xD6
        or 0xD8 <= o <= 0xF6
        or 0xF8 <= o <= 0x2FF
        or 0x370 <= o <= 0x37D
        or 0x37F <= o <= 0x1FFF
        or 0x200C <= o <= 0x200D
        or 0x2070 <= o <= 0x218F
        or 0x2C00 <= o <= 0x2FEF
        or 0x3001 <= o <= 0xD7FF
        or 0xF900 <= o <= 0xFDCF
        or 0xFDF0 <= o <= 0xFFFD
        or 0x10000 <= o <= 0xEFFFF
    )


def _is_name_char(ch: str) -> bool:
    o = ord(ch)
    return (
        _is_name_start(ch)
        or ch in "-.0123456789\u00b7"
        or 0x300 <= o <= 0x36F
        or 0x203F <= o <= 0x2040
    )


def is_ncname(text: str) -> bool:
    """True when ``text`` is an NCName, the lexical space of ``xs:ID``."""
    return bool(text) and _is_name_start(text[0]) and all(_is_name_char(c) for c in text)


def tuple_id_for(resource: str) -> str:
    """The tuple id for an XMPP resource (RFC 8048 §6.2: ``ID-`` + resource).

    A resource whose characters are all NCName characters becomes ``ID-<resource>``. Any
    other resource (``a b``, ``phone/1``, ``x:y``) becomes ``IDx-`` followed by the resource
    with every non-NCName character and every ``_`` written as ``_<hex code point>_``, so the
    id is always an ``xs:ID`` and :func:`resource_of` gives the resource back exactly.
    """
    if not resource:
        raise ValueError("an XMPP resource is never empty")
    if all(_is_name_char(c) for c in resource):
        return "ID-" + resource
    return "IDx-" + "".join(
        c if c != "_" and _is_name_char(c) else f"_{ord(c):x}_" for c in resource
    )


def resource_of(tuple_id: str) -> str:
    """The XMPP resource for a tuple id: inverts :func:`tuple_id_for`; an id of another form
    (``t1``, ``0x7fff...``) is used as the resource itself, as RFC 3922 §5.1.3 maps it."""
    if tuple_id.startswith("ID-") and len(tuple_id) > 3:
        return tuple_id[3:]
    if tuple_id.startswith("IDx-"):
        out: list[str] = []
        body = tuple_id[4:]
        i = 0
        while i < len(body):
            if body[i] == "_":
                end = body.find("_", i + 1)
                code = body[i + 1 : end] if end > 0 else ""
                if not code or not all(c in "0123456789abcdef" for c in code):
                    return tuple_id  # not our encoding: the id itself
                out.append(chr(int(code, 16)))
                i = end + 1
            else:
                out.append(body[i])
                i += 1
        if out:
            return "".join(out)
    return tuple_id


# --- priorities (RFC 3922 §5.1.9 / RFC 8048 §6.2 note 6) ---------------------------------------


def pidf_priority(xmpp_priority: int) -> float | None:
    """XMPP ``<priority>`` (-128..127) -> PIDF contact priority (0..1, three decimals).

    0 -> 0, 127 -> 1, linearly, truncated to three decimals (1 -> 0.007, 126 -> 0.992).
    A negative priority MUST NOT be mapped: None (RFC 3922 §5.1.9)."""
    if not -128 <= xmpp_priority <= 127:
        raise ValueError(f"XMPP priority {xmpp_priority} is outside -128..127 (RFC 6121 §4.7.2.3)")
    if xmpp_priority < 0:
        return None
    return (xmpp_priority * 1000 // 127) / 1000


def xmpp_priority(pidf_priority: float | None) -> int:
    """PIDF contact priority (0..1) -> XMPP ``<priority>`` (0..127), the inverse of
    :func:`pidf_priority` on 0..127; a missing priority is XMPP's default, 0."""
    if pidf_priority is None:
        return 0
    if not 0.0 <= pidf_priority <= 1.0:
        raise ValueError(f"PIDF priority {pidf_priority} is outside 0..1 (RFC 3863 §4.1.5)")
    milli = round(pidf_priority * 1000)
    return (milli * 127 + 500) // 1000


# --- parsing ---------------------------------------------------------------------------------


def _true(value: str | None) -> bool:
    return value is not None and value.strip() in ("true", "1")


def _must_understand(element: Element) -> bool:
    """RFC 3863 §4.2.3: does ``element`` or anything inside it carry mustUnderstand=true?"""
    return any(
        _true(e.get("mustUnderstand")) or _true(e.get(f"{_P}mustUnderstand"))
        for e in element.iter()
    )


class _Reader:
    def __init__(self) -> None:
        self.defects: list[Defect] = []

    def defect(self, code: str, detail: str) -> None:
        self.defects.append(Defect(code, detail))

    def notes(self, parent: Element, inherited: str | None) -> tuple[Note, ...]:
        return tuple(
            Note(n.text or "", n.get(XML_LANG, inherited)) for n in parent.findall(f"{_P}note")
        )

    def read_tuple(self, element: Element, inherited: str | None) -> PresenceTuple | None:
        tuple_id = element.get("id")
        if tuple_id is None:
            raise ParseError(
                "PIDF_NO_TUPLE_ID",
                "<tuple> without the id attribute",
                hint="RFC 3863 §4.1.2: every tuple has an id unique in the document",
            )
        if not is_ncname(tuple_id):
            self.defect("PIDF_BAD_TUPLE_ID", f"tuple id {tuple_id!r} is not an xs:ID")
        lang = element.get(XML_LANG, inherited)
        basic: str | None = None
        show: str | None = None
        status = element.find(f"{_P}status")
        if status is None:
            self.defect("PIDF_NO_STATUS", f"tuple {tuple_id!r} has no <status>")
        else:
            for child in status:
                if child.tag == f"{_P}basic":
                    value = (child.text or "").strip()
                    if value in ("open", "closed"):
                        basic = value
                    else:
                        self.defect("PIDF_BAD_BASIC", f"<basic>{value}</basic> is not open/closed")
                elif child.tag == f"{{{JABBER_CLIENT_NS}}}show":
                    value = (child.text or "").strip()
                    if len(child) and _must_understand(child):
                        self.defect(
                            "PIDF_NOT_UNDERSTOOD",
                            "<show> holds an extension marked mustUnderstand; ignored",
                        )
                    elif value in SHOW_VALUES:
                        show = value
                    else:
                        self.defect("PIDF_BAD_SHOW", f"<show>{value}</show> is not an XMPP show")
                elif _must_understand(child):
                    self.defect(
                        "PIDF_NOT_UNDERSTOOD",
                        f"status extension {child.tag} is marked mustUnderstand; ignored",
                    )
        contact: str | None = None
        priority: float | None = None
        contact_el = element.find(f"{_P}contact")
        if contact_el is not None:
            contact = (contact_el.text or "").strip() or None
            raw_priority = contact_el.get("priority")
            if raw_priority is not None:
                if _PRIORITY.fullmatch(raw_priority.strip()):
                    priority = float(raw_priority)
                else:
                    self.defect(
                        "PIDF_BAD_PRIORITY",
                        f"contact priority {raw_priority!r} is not 0..1; ignored (RFC 3863 §4.1.5)",
                    )
        timestamp: str | None = None
        stamp_el = element.find(f"{_P}timestamp")
        if stamp_el is not None:
            timestamp = (stamp_el.text or "").strip()
            if not _TIMESTAMP.fullmatch(timestamp):
                self.defect("PIDF_BAD_TIMESTAMP", f"timestamp {timestamp!r} is not RFC 3339")
        return PresenceTuple(
            id=tuple_id,
            basic=basic,
            contact=contact,
            priority=priority,
            notes=self.notes(element, lang),
            timestamp=timestamp,
            show=show,
        )

    def activities(self, root: Element) -> tuple[str, ...]:
        found: list[str] = []
        # <dm:person> per RFC 4479; Kamailio's pua writes <person> in the PIDF namespace
        for person in [*root.findall(f"{{{DM_NS}}}person"), *root.findall(f"{_P}person")]:
            for activities in person.findall(f"{{{RPID_NS}}}activities"):
                if _must_understand(activities):
                    self.defect(
                        "PIDF_NOT_UNDERSTOOD", "<activities> marked mustUnderstand; ignored"
                    )
                    continue
                found.extend(
                    child.tag[len(RPID_NS) + 2 :]
                    for child in activities
                    if child.tag.startswith(f"{{{RPID_NS}}}")
                )
        return tuple(found)


def parse_pidf(data: bytes, *, policy: Policy | None = None) -> PresenceDocument:
    """Parse with canonical.xmldoc (no DTD, no entities, bounded); ParseError with code.

    Structural faults raise (``PIDF_NOT_PRESENCE``, ``PIDF_NO_ENTITY``, ``PIDF_NO_TUPLE_ID``
    and the ``XML_*`` codes); the rest are recorded in ``defects`` (lenient, the relaying
    default) or raised with the defect's code when ``policy.strict``.
    """
    policy = policy if policy is not None else DEFAULT
    raw = bytes(data)
    root = parse_xml(raw, policy=policy)
    if root.tag != f"{_P}presence":
        raise ParseError(
            "PIDF_NOT_PRESENCE",
            f"root element is {root.tag}, not <presence> in {PIDF_NS}",
            offset=0,
            hint="send an RFC 3863 PIDF document (application/pidf+xml)",
        )
    entity = root.get("entity")
    if entity is None:
        raise ParseError(
            "PIDF_NO_ENTITY",
            "<presence> without the entity attribute",
            offset=0,
            hint="RFC 3863 §4.1.1: entity names the presentity (pres: URI)",
        )
    reader = _Reader()
    lang = root.get(XML_LANG)
    tuples: list[PresenceTuple] = []
    for element in root.findall(f"{_P}tuple"):
        parsed = reader.read_tuple(element, lang)
        if parsed is not None:
            tuples.append(parsed)
    ids = [t.id for t in tuples]
    if len(set(ids)) != len(ids):
        reader.defect("PIDF_DUPLICATE_TUPLE_ID", "two tuples share an id (RFC 3863 §4.1.2)")
    if policy.strict and reader.defects:
        first = reader.defects[0]
        raise ParseError(first.code, first.detail, hint="strict mode refuses this PIDF")
    return PresenceDocument(
        raw=raw,
        entity=entity,
        tuples=tuple(tuples),
        notes=reader.notes(root, lang),
        activities=reader.activities(root),
        defects=tuple(reader.defects),
    )


# --- building --------------------------------------------------------------------------------


def _check_chars(text: str, what: str) -> None:
    for ch in text:
        o = ord(ch)
        if not (
            ch in "\t\n\r"
            or 0x20 <= o <= 0xD7FF
            or 0xE000 <= o <= 0xFFFD
            or 0x10000 <= o <= 0x10FFFF
        ):
            raise MappingError(
                f"{what} contains U+{o:04X}, which XML 1.0 cannot carry (§2.2)",
                hint="remove control characters from the text",
            )


def _text(value: str, what: str) -> str:
    _check_chars(value, what)
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _attr(value: str, what: str) -> str:
    _check_chars(value, what)
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace("'", "&apos;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _priority_text(priority: float) -> str:
    if not 0.0 <= priority <= 1.0 or round(priority, 3) != priority:
        raise MappingError(
            f"contact priority {priority} is not a decimal 0..1 with at most three digits",
            hint="use pidf_priority() to scale an XMPP priority (RFC 3863 §4.1.5)",
        )
    text = f"{priority:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _notes_xml(notes: Sequence[Note], indent: str) -> list[str]:
    out = []
    for note in notes:
        lang = "" if note.lang is None else f" xml:lang='{_attr(note.lang, 'note language')}'"
        out.append(f"{indent}<note{lang}>{_text(note.text, 'note')}</note>\n")
    return out


def build_pidf(
    *,
    entity: str,
    tuples: Sequence[PresenceTuple],
    notes: Sequence[Note] = (),
    activities: Sequence[str] = (),
) -> PresenceDocument:
    """Deterministic PIDF bytes (same arguments, same bytes).

    Layout (RFC 3863 §4.1, RFC 4479/4480): XML declaration; ``<presence>`` declaring the pidf
    (default), ``dm`` and ``rpid`` namespaces; each tuple as ``status`` (``basic``, then
    ``<show xmlns='jabber:client'>``), ``contact``, ``note``s, ``timestamp``; then the
    presence-level notes; then ``<dm:person id='p'>`` with ``<rpid:activities>`` when
    activities are given. Tuple ids must be ``xs:ID`` (use :func:`tuple_id_for`). Anything
    XML cannot carry raises :class:`MappingError`.
    """
    seen: set[str] = set()
    out = [
        "<?xml version='1.0' encoding='UTF-8'?>\n",
        f"<presence xmlns='{PIDF_NS}' xmlns:dm='{DM_NS}' xmlns:rpid='{RPID_NS}'"
        f" entity='{_attr(entity, 'entity')}'>\n",
    ]
    for t in tuples:
        if not is_ncname(t.id):
            raise MappingError(
                f"tuple id {t.id!r} is not an xs:ID",
                hint="build tuple ids with tuple_id_for(resource) (RFC 8048 §6.2)",
            )
        if t.id in seen:
            raise MappingError(f"two tuples with id {t.id!r}", hint="tuple ids are unique")
        seen.add(t.id)
        if t.basic not in (None, "open", "closed"):
            raise MappingError(f"basic status {t.basic!r}", hint="use 'open', 'closed' or None")
        if t.show is not None and t.show not in SHOW_VALUES:
            raise MappingError(f"show {t.show!r}", hint="use one of " + ", ".join(SHOW_VALUES))
        if t.basic is None and t.show is None:
            raise MappingError(
                f"tuple {t.id!r} has neither basic status nor show",
                hint="RFC 3863 §4.1.3: <status> needs at least one child",
            )
        out.append(f"  <tuple id='{t.id}'>\n    <status>")
        if t.basic is not None:
            out.append(f"<basic>{t.basic}</basic>")
        if t.show is not None:
            out.append(f"<show xmlns='{JABBER_CLIENT_NS}'>{t.show}</show>")
        out.append("</status>\n")
        if t.contact is not None:
            priority = "" if t.priority is None else f" priority='{_priority_text(t.priority)}'"
            out.append(f"    <contact{priority}>{_text(t.contact, 'contact')}</contact>\n")
        elif t.priority is not None:
            raise MappingError("a priority without a contact", hint="give the contact URI too")
        out += _notes_xml(t.notes, "    ")
        if t.timestamp is not None:
            if not _TIMESTAMP.fullmatch(t.timestamp):
                raise MappingError(
                    f"timestamp {t.timestamp!r} is not RFC 3339",
                    hint="write e.g. 2024-03-05T14:10:00Z (RFC 3863 §4.1.7)",
                )
            out.append(f"    <timestamp>{t.timestamp}</timestamp>\n")
        out.append("  </tuple>\n")
    out += _notes_xml(notes, "  ")
    if activities:
        out.append("  <dm:person id='p'>\n    <rpid:activities>")
        for activity in activities:
            if not is_ncname(activity):
                raise MappingError(
                    f"activity {activity!r} is not an element name",
                    hint="use the RFC 4480 §3.2 values",
                )
            out.append(f"<rpid:{activity}/>")
        out.append("</rpid:activities>\n  </dm:person>\n")
    out.append("</presence>\n")
    return PresenceDocument(
        raw="".join(out).encode("utf-8"),
        entity=entity,
        tuples=tuple(tuples),
        notes=tuple(notes),
        activities=tuple(activities),
    )
