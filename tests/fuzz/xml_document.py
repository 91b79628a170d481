"""Fuzz target: ``canonical.xmldoc.parse_xml`` (the DTD-free, bounded XML parser every
PIDF, isComposing, IMDN and carriage document goes through), under the default policy and
a tight one, then the isComposing and IMDN readers of the XMPP mapping.

Documented errors: :class:`ParseError` with the ``XML_*`` codes of ``xmldoc.CODES``
(``parse_xml`` docstring), and ``ISCOMPOSING_*``/``IMDN_*`` from the readers
(``adapters.xmpp.documents``). Laws: a refused document is refused with one of those
codes; an accepted one has at most ``max_xml_depth`` levels, ``max_xml_elements``
elements and ``max_xml_attributes`` attributes per element.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from xml.etree.ElementTree import Element

from adapters.xmpp import documents
from canonical import xmldoc
from canonical.errors import ParseError
from canonical.policy import Policy
from tests.fuzz import corpus

ALLOWED = (ParseError,)
MAX_LEN = 8192
TIGHT = Policy(
    max_message_size=4096,
    max_xml_depth=6,
    max_xml_elements=40,
    max_xml_attributes=6,
    max_xml_token=512,
)


def _depth(element: Element) -> int:
    return 1 + max((_depth(child) for child in element), default=0)


def _check_bounds(root: Element, policy: Policy) -> None:
    elements = list(root.iter())
    assert len(elements) <= policy.max_xml_elements, f"{len(elements)} elements"
    assert all(len(e.attrib) <= policy.max_xml_attributes for e in elements)
    assert _depth(root) <= policy.max_xml_depth, f"depth {_depth(root)}"


def run(data: bytes) -> None:
    for policy in (TIGHT, Policy()):
        try:
            root = xmldoc.parse_xml(data, policy=policy)
        except ParseError as exc:
            refused = exc.code
        else:
            _check_bounds(root, policy)
            continue
        assert refused in xmldoc.CODES, f"undocumented code {refused}"
    for read in (documents.read_iscomposing, documents.read_imdn):
        with contextlib.suppress(ParseError):
            read(data, TIGHT)


def seeds() -> Iterator[bytes]:
    yield from corpus.pidf_documents()
    yield documents.build_iscomposing("active", refresh=60)
    yield documents.build_imdn(
        documents.Notification("m1", "delivery", "delivered", "2024-05-01T12:00:00Z", "im:a@b")
    )
    yield b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>"
    yield b"<a xmlns='urn:x' xml:lang='en' b='1'><!-- c --><b>&#65;&amp;</b><?pi x?></a>"
