"""Stanza errors <-> ``canonical.errors.Reason`` (RFC 6120 §8.3, RFC 7247 §7, RFC 3923 §7,
RFC 3922 §6.1; tables in docs/mapping/xmpp.md and research/mapping/errors.md). Pure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from adapters.xmpp.stanza import E2E_NS, NOT_XML, STANZA_ERROR_NS, local, namespace
from canonical.errors import Reason

#: Reason -> (error type, defined condition, RFC 3923 §7 application condition or None).
TO_CONDITION: dict[Reason, tuple[str, str, str | None]] = {
    Reason.BAD_REQUEST: ("modify", "bad-request", None),
    Reason.UNKNOWN_DESTINATION: ("cancel", "item-not-found", None),
    Reason.FORBIDDEN: ("auth", "forbidden", None),
    Reason.UNAUTHENTICATED: ("auth", "not-authorized", None),
    Reason.TOO_LARGE: ("modify", "policy-violation", None),
    Reason.UNSUPPORTED_MEDIA: ("modify", "not-acceptable", None),
    Reason.UNSUPPORTED_FEATURE: ("cancel", "feature-not-implemented", None),
    Reason.RATE_LIMITED: ("wait", "resource-constraint", None),
    Reason.LOOP: ("modify", "not-acceptable", None),
    Reason.SIGNATURE_INVALID: ("modify", "not-acceptable", "unverified-signature"),
    Reason.STALE: ("modify", "not-acceptable", "bad-timestamp"),
    Reason.TIMEOUT: ("wait", "remote-server-timeout", None),
    Reason.UNAVAILABLE: ("wait", "recipient-unavailable", None),
    Reason.EXPIRED: ("wait", "remote-server-timeout", None),
    Reason.CONFLICT: ("cancel", "conflict", None),
    Reason.INTERNAL: ("cancel", "internal-server-error", None),
}

#: Defined condition -> Reason (RFC 7247 §7.1 read through the reason list).
FROM_CONDITION: dict[str, Reason] = {
    "bad-request": Reason.BAD_REQUEST,
    "jid-malformed": Reason.BAD_REQUEST,
    "unexpected-request": Reason.BAD_REQUEST,
    "undefined-condition": Reason.BAD_REQUEST,
    "item-not-found": Reason.UNKNOWN_DESTINATION,
    "remote-server-not-found": Reason.UNKNOWN_DESTINATION,
    "gone": Reason.UNKNOWN_DESTINATION,
    "redirect": Reason.UNKNOWN_DESTINATION,
    "forbidden": Reason.FORBIDDEN,
    "not-allowed": Reason.FORBIDDEN,
    "policy-violation": Reason.FORBIDDEN,
    "not-authorized": Reason.UNAUTHENTICATED,
    "registration-required": Reason.UNAUTHENTICATED,
    "subscription-required": Reason.UNAUTHENTICATED,
    "not-acceptable": Reason.UNSUPPORTED_MEDIA,
    "feature-not-implemented": Reason.UNSUPPORTED_FEATURE,
    "service-unavailable": Reason.UNAVAILABLE,
    "recipient-unavailable": Reason.UNAVAILABLE,
    "remote-server-timeout": Reason.TIMEOUT,
    "resource-constraint": Reason.RATE_LIMITED,
    "internal-server-error": Reason.INTERNAL,
    "conflict": Reason.CONFLICT,
}

#: RFC 3923 §7 application conditions refine not-acceptable.
FROM_E2E_CONDITION = {
    "unverified-signature": Reason.SIGNATURE_INVALID,
    "bad-timestamp": Reason.STALE,
    "decryption-failed": Reason.BAD_REQUEST,
}
#: RFC 3923 §7 prints the namespace without ``ns:``; read both.
E2E_ERROR_NAMESPACES = frozenset({E2E_NS, "urn:ietf:params:xml:xmpp-e2e"})


def error_element(
    stanza_ns: str, reason: Reason, text: str, *, condition: str | None = None
) -> ET.Element:
    """``<error type='...'><condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <text>...</text></error>`` (RFC 6120 §8.3.2) for ``reason``."""
    kind, defined, app = TO_CONDITION[reason]
    error = ET.Element(f"{{{stanza_ns}}}error", {"type": kind})
    ET.SubElement(error, f"{{{STANZA_ERROR_NS}}}{condition or defined}")
    if text:
        # shown to a person; a character XML cannot carry would make the stanza unwritable
        ET.SubElement(error, f"{{{STANZA_ERROR_NS}}}text").text = NOT_XML.sub("\ufffd", text)
    if app is not None:
        ET.SubElement(error, f"{{{E2E_NS}}}{app}")
    return error


def read_error(stanza: ET.Element) -> tuple[Reason, str, str, str] | None:
    """(reason, error type, condition, text) of an error stanza, None when it has none."""
    error = next((c for c in stanza if local(c.tag) == "error"), None)
    if error is None:
        return None
    kind = error.get("type", "cancel")
    condition, text, reason = "undefined-condition", "", Reason.BAD_REQUEST
    for child in error:
        name, ns = local(child.tag), namespace(child.tag)
        if ns == STANZA_ERROR_NS and name == "text":
            text = child.text or ""
        elif ns == STANZA_ERROR_NS:
            condition = name
            reason = FROM_CONDITION.get(name, Reason.BAD_REQUEST)
    for child in error:
        if namespace(child.tag) in E2E_ERROR_NAMESPACES and local(child.tag) in FROM_E2E_CONDITION:
            reason = FROM_E2E_CONDITION[local(child.tag)]
    return reason, kind, condition, text
