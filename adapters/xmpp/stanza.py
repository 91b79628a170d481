"""The XML vocabulary of the XMPP adapter: namespaces, cpimgw's own elements, and the
slixmpp stanza plugins for them.

cpimgw's elements (docs/xmpp.md "Carriage element"):

- ``<cpim xmlns='urn:cpimgw:carriage:0' type='CONTENT-TYPE'>BASE64</cpim>`` inside a
  ``<message/>``: the exact payload of the envelope (RFC 4648 §4 base64, no line breaks).
  Text carriage is not lossless: a real server delivers CR as LF even when it is written
  as ``&#13;`` (XML 1.0 §2.11 end-of-line handling), hence base64.
- ``<trace xmlns='urn:cpimgw:trace:0'><hop by='gateway-id'/>...</trace>`` and
  ``<hops xmlns='urn:cpimgw:trace:0' left='N'/>``: transport history and hop budget
  (RFC 3860 §3.4.2 MaxForwards), outside any signed object.
- RFC 3923 §3 ``<e2e xmlns='urn:ietf:params:xml:ns:xmpp-e2e'>`` carries an S/MIME object
  as character data.

Everything here is pure (no I/O); the plugins only let slixmpp code read and write the
elements as stanza interfaces (``msg['cpim']['type']``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from slixmpp import Message, Presence
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from canonical.errors import MappingError, Reason

#: Stanza namespaces: a client stream (RFC 6120 §4.8.3) and a component stream (XEP-0114).
CLIENT_NS = "jabber:client"
COMPONENT_NS = "jabber:component:accept"
STANZA_NAMESPACES = frozenset({CLIENT_NS, COMPONENT_NS})
XML_NS = "http://www.w3.org/XML/1998/namespace"
XML_LANG = f"{{{XML_NS}}}lang"

CARRIAGE_NS = "urn:cpimgw:carriage:0"
TRACE_NS = "urn:cpimgw:trace:0"
#: CPIM extension-header namespace for XMPP-only fields (``NS: xmpp <urn:cpimgw:xmpp:0>``).
XMPP_HEADERS_NS = "urn:cpimgw:xmpp:0"

E2E_NS = "urn:ietf:params:xml:ns:xmpp-e2e"  # RFC 3923 §12.1 (registered)
E2E_NS_MISPRINT = "urn:ietf:params:xml:xmpp-e2e"  # RFC 3923 §7 as printed; read, never written
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"  # XEP-0085
RECEIPTS_NS = "urn:xmpp:receipts"  # XEP-0184
MARKERS_NS = "urn:xmpp:chat-markers:0"  # XEP-0333
SID_NS = "urn:xmpp:sid:0"  # XEP-0359
STANZA_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"  # RFC 6120 §8.3
PING_NS = "urn:xmpp:ping"  # XEP-0199

CHAT_STATES = ("active", "composing", "paused", "inactive", "gone")


def local(tag: str) -> str:
    """``{ns}name`` -> ``name``."""
    return tag.rsplit("}", 1)[-1]


def namespace(tag: str) -> str:
    """``{ns}name`` -> ``ns`` (``''`` without one)."""
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def is_stanza(element: ET.Element, name: str) -> bool:
    """True for ``<name/>`` in a client or component stream namespace."""
    return local(element.tag) == name and namespace(element.tag) in STANZA_NAMESPACES


#: Characters XML 1.0 §2.2 does not allow in a document (not even as references).
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_SPECIAL = re.compile("[&<>\r]")
_ATTR_SPECIAL = re.compile('[&<>"\t\n\r]')


def _text(text: str) -> str:
    """Character data (XML 1.0 §2.4). CR is written ``&#13;`` so a parser's end-of-line
    handling (§2.11) does not turn it into LF; ``>`` is escaped for ``]]>``."""
    if _TEXT_SEARCH(text) is None:
        return text
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _attr(value: str) -> str:
    """An attribute value in double quotes; TAB, LF and CR as references so attribute-value
    normalisation (XML 1.0 §3.3.3) gives them back."""
    if _ATTR_SEARCH(value) is None:
        return value
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


_TEXT_SEARCH = _TEXT_SPECIAL.search
_ATTR_SEARCH = _ATTR_SPECIAL.search


def _write(element: ET.Element, parent_ns: str, out: list[str], *, top: bool) -> None:
    tag = element.tag
    if tag[:1] == "{":
        ns, _, name = tag[1:].partition("}")
    else:
        ns, name = "", tag
    out.append(f'<{name} xmlns="{_attr(ns)}"' if ns != parent_ns else "<" + name)
    attrib = element.attrib
    if attrib:
        prefixes = 0
        for key, value in attrib.items():
            text = value if _ATTR_SEARCH(value) is None else _attr(value)
            if key[:1] != "{":
                out.append(f' {key}="{text}"')
                continue
            key_ns, _, key_name = key[1:].partition("}")
            if key_ns == XML_NS:
                out.append(f' xml:{key_name}="{text}"')
            else:  # a namespaced attribute gets a prefix of its own (Namespaces in XML §6.3)
                prefixes += 1
                out.append(f' xmlns:a{prefixes}="{_attr(key_ns)}" a{prefixes}:{key_name}="{text}"')
    content = element.text
    if len(element):
        out.append(">" if not content else ">" + _text(content))
        for child in element:
            _write(child, ns, out, top=False)
        out.append(f"</{name}>")
    elif content:
        out.append(f">{content if _TEXT_SEARCH(content) is None else _text(content)}</{name}>")
    else:
        out.append("/>")
    if not top and element.tail:
        out.append(_text(element.tail))


def wire_size(element: ET.Element) -> int:
    """A lower bound of the element's size on the wire, counted without writing it: the
    characters of its element names (without namespaces), attribute names and values and
    text. For an ordinary stanza it is a few dozen characters short of the length of
    :func:`serialize` (markup, namespace declarations and escapes are not counted)."""
    size = -len(element.tail or "")  # what follows the stanza in the stream is not its own
    for item in element.iter():
        tag = item.tag
        size += len(tag) - tag.rfind("}") - 1 + len(item.text or "") + len(item.tail or "")
        for key, value in item.attrib.items():
            size += len(key) - key.rfind("}") - 1 + len(value)
    return size


def serialize(element: ET.Element, stanza_ns: str = COMPONENT_NS) -> bytes:
    """The element as it goes on the wire of a stream whose default namespace is
    ``stanza_ns`` (RFC 6120 §4.8.2): namespaces declared only where they change, ``xml:lang``
    with its reserved prefix, text escaped so the parser at the other end gets the same
    characters back (CR included), the element's own tail left out.

    cpimgw writes stanzas itself instead of through slixmpp's ``tostring`` (which escapes
    character by character, writes CR raw and drops namespaced attributes): it is several
    times faster and exact. A character XML cannot carry at all (§2.2) raises
    :class:`MappingError` rather than break the stream for every other stanza.
    """
    out: list[str] = []
    _write(element, stanza_ns, out, top=True)
    text = "".join(out)
    bad = NOT_XML.search(text)
    if bad is not None:
        raise MappingError(
            f"U+{ord(bad.group()):04X} at character {bad.start()} of the stanza cannot be "
            "written in XML (XML 1.0 §2.2)",
            reason=Reason.BAD_REQUEST,
            hint="remove control characters; exact bytes travel in the carriage element",
        )
    return text.encode("utf-8")


class Carriage(ElementBase):
    """``<cpim xmlns='urn:cpimgw:carriage:0' type='...'>BASE64</cpim>``."""

    name = "cpim"
    namespace = CARRIAGE_NS
    plugin_attrib = "cpim"
    interfaces = {"type", "data"}  # noqa: RUF012 - slixmpp reads a set

    def get_data(self) -> str:
        return str(self.xml.text or "")

    def set_data(self, value: str) -> None:
        self.xml.text = value

    def del_data(self) -> None:
        self.xml.text = None


class Trace(ElementBase):
    """``<trace xmlns='urn:cpimgw:trace:0'>`` with one ``<hop/>`` per gateway passed."""

    name = "trace"
    namespace = TRACE_NS
    plugin_attrib = "trace"
    interfaces = {"by"}  # noqa: RUF012 - slixmpp reads a set

    def get_by(self) -> tuple[str, ...]:
        return tuple(str(h.get("by", "")) for h in self.xml.findall(f"{{{TRACE_NS}}}hop"))

    def set_by(self, values: Any) -> None:
        self.del_by()
        for value in values:
            ET.SubElement(self.xml, f"{{{TRACE_NS}}}hop", {"by": str(value)})

    def del_by(self) -> None:
        for hop in self.xml.findall(f"{{{TRACE_NS}}}hop"):
            self.xml.remove(hop)


class Hops(ElementBase):
    """``<hops xmlns='urn:cpimgw:trace:0' left='N'/>``: the remaining hop budget."""

    name = "hops"
    namespace = TRACE_NS
    plugin_attrib = "hops_left"
    interfaces = {"left"}  # noqa: RUF012 - slixmpp reads a set


class E2e(ElementBase):
    """RFC 3923 ``<e2e xmlns='urn:ietf:params:xml:ns:xmpp-e2e'>`` with the S/MIME object."""

    name = "e2e"
    namespace = E2E_NS
    plugin_attrib = "e2e"
    interfaces = {"data"}  # noqa: RUF012 - slixmpp reads a set

    def get_data(self) -> str:
        return str(self.xml.text or "")

    def set_data(self, value: str) -> None:
        self.xml.text = value


def register_plugins() -> None:
    """Make the elements above stanza interfaces of slixmpp's Message and Presence."""
    register_stanza_plugin(Message, Carriage)
    for stanza in (Message, Presence):
        register_stanza_plugin(stanza, Trace)
        register_stanza_plugin(stanza, Hops)
        register_stanza_plugin(stanza, E2e)
