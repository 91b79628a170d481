"""Safe XML for the documents cpimgw parses itself (PIDF, isComposing, IMDN, carriage).
No DTD, no entity declarations, bounded depth/elements/attributes/size (Policy limits).
INTERFACE STUB — being implemented."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from canonical.policy import Policy


def parse_xml(data: bytes, *, policy: Policy | None = None) -> Element:
    """Parse ``data`` into an ElementTree element (``{ns}local`` tags). Raises ParseError
    (codes XML_DTD, XML_ENTITY, XML_TOO_DEEP, XML_TOO_MANY_ELEMENTS, XML_TOO_MANY_ATTRIBUTES,
    XML_TOO_LARGE, XML_MALFORMED) with the byte offset."""
    raise NotImplementedError
