"""Safe XML for the documents cpimgw parses itself (PIDF, isComposing, IMDN, carriage).

The parser drives ``xml.parsers.expat`` directly and builds an ``xml.etree.ElementTree``
tree, refusing everything a presence or notification document never needs and an attacker
loves: any document type declaration (and with it every entity declaration, so no "billion
laughs", no quadratic blow-up, no external entity: RFC 3470 §4.14 / XML 1.0 §4), entity
references other than the five predefined ones and character references, and processing
instructions. Size, depth, element and attribute counts are bounded by the
:class:`~canonical.policy.Policy` limits and checked as the parser goes, so refused input
costs time and memory in proportion to the bytes read before the limit, never more.

Tags are ``{namespace}local`` (Clark notation, as ElementTree writes them); ``xml:lang``
becomes ``{http://www.w3.org/XML/1998/namespace}lang``. Comments are dropped, as
ElementTree's own parser drops them. Errors are :class:`~canonical.errors.ParseError` with
the codes below, the line, and the byte offset of the fault.
"""

from __future__ import annotations

import xml.parsers.expat
from xml.etree.ElementTree import Element
from xml.parsers.expat import errors as expat_errors

from canonical.errors import ParseError, Reason
from canonical.policy import DEFAULT, Policy

#: Namespace of ``xml:lang`` and ``xml:space`` (Namespaces in XML 1.0 §3).
XML_NS = "http://www.w3.org/XML/1998/namespace"
#: Clark-notation name of ``xml:lang``.
XML_LANG = f"{{{XML_NS}}}lang"

#: Every code :func:`parse_xml` raises.
CODES = (
    "XML_DTD",
    "XML_ENTITY",
    "XML_PI",
    "XML_TOO_DEEP",
    "XML_TOO_MANY_ELEMENTS",
    "XML_TOO_MANY_ATTRIBUTES",
    "XML_TOO_LARGE",
    "XML_MALFORMED",
)

_CHUNK = 16 * 1024  # bytes handed to expat at a time
_SEP = " "  # expat's namespace separator: a space cannot occur in a name or a namespace URI

# expat errors that mean "an entity was referenced that nobody declared"
_ENTITY_ERRORS = frozenset(
    (
        expat_errors.XML_ERROR_UNDEFINED_ENTITY,
        expat_errors.XML_ERROR_RECURSIVE_ENTITY_REF,
        expat_errors.XML_ERROR_BINARY_ENTITY_REF,
        expat_errors.XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF,
        expat_errors.XML_ERROR_EXTERNAL_ENTITY_HANDLING,
        expat_errors.XML_ERROR_ENTITY_DECLARED_IN_PE,
    )
)


def _clark(name: str) -> str:
    """``"uri local"`` (expat with a namespace separator) -> ``"{uri}local"``."""
    uri, sep, local = name.rpartition(_SEP)
    return f"{{{uri}}}{local}" if sep else name


class _Builder:
    """Expat handlers that build the tree and enforce the limits (one use per document)."""

    def __init__(self, parser: xml.parsers.expat.XMLParserType, policy: Policy) -> None:
        self.parser = parser
        self.policy = policy
        self.root: Element | None = None
        self.stack: list[Element] = []
        self.text: list[str] = []
        self.elements = 0
        self.pending_ns = 0
        self.mark = 0  # byte index of the last event: what follows is not parsed yet

    def fail(self, code: str, message: str, hint: str) -> ParseError:
        return ParseError(
            code,
            message,
            line=self.parser.CurrentLineNumber,
            offset=self.parser.CurrentByteIndex,
            hint=hint,
        )

    def _flush(self) -> None:
        if not self.text:
            return
        data = "".join(self.text)
        self.text.clear()
        if not self.stack:
            return  # whitespace around the root element is not part of the tree
        parent = self.stack[-1]
        if len(parent):
            last = parent[-1]
            last.tail = data if last.tail is None else last.tail + data
        else:
            parent.text = data if parent.text is None else parent.text + data

    # --- element structure ------------------------------------------------------------------

    def start_ns(self, prefix: str | None, uri: str) -> None:
        del prefix, uri
        self.mark = self.parser.CurrentByteIndex
        self.pending_ns += 1  # namespace declarations count as attributes of their element

    def start(self, name: str, attributes: dict[str, str]) -> None:
        self.mark = self.parser.CurrentByteIndex
        self._flush()
        self.elements += 1
        if self.elements > self.policy.max_xml_elements:
            raise self.fail(
                "XML_TOO_MANY_ELEMENTS",
                f"more than {self.policy.max_xml_elements} elements",
                "the document is larger than any cpimgw accepts (Policy.max_xml_elements)",
            )
        if len(self.stack) >= self.policy.max_xml_depth:
            raise self.fail(
                "XML_TOO_DEEP",
                f"elements nested deeper than {self.policy.max_xml_depth} levels",
                "flatten the document (Policy.max_xml_depth)",
            )
        count = len(attributes) + self.pending_ns
        self.pending_ns = 0
        if count > self.policy.max_xml_attributes:
            raise self.fail(
                "XML_TOO_MANY_ATTRIBUTES",
                f"{count} attributes and namespace declarations on one element "
                f"(limit {self.policy.max_xml_attributes})",
                "use fewer attributes (Policy.max_xml_attributes)",
            )
        attrib = {_clark(k): v for k, v in attributes.items()} if attributes else {}
        element = Element(_clark(name), attrib)
        if self.stack:
            self.stack[-1].append(element)
        else:
            self.root = element
        self.stack.append(element)

    def end(self, name: str) -> None:
        del name
        self.mark = self.parser.CurrentByteIndex
        self._flush()
        self.stack.pop()

    def data(self, text: str) -> None:
        self.mark = self.parser.CurrentByteIndex
        self.text.append(text)

    def comment(self, text: str) -> None:
        del text
        self.mark = self.parser.CurrentByteIndex

    def token_too_large(self, data: bytes, fed: int) -> ParseError:
        """The bytes after the last event hold one token longer than ``max_xml_token``."""
        limit = self.policy.max_xml_token
        start = data.find(b"<", self.mark + 1, fed)
        start = self.mark if start < 0 else start
        head = data[start : start + limit]
        line = self.parser.CurrentLineNumber + data.count(b"\n", max(self.mark, 0), start)
        if head.startswith((b"<!--", b"<?", b"<!")) or not head.startswith(b"<"):
            what, code = "markup token", "XML_TOO_LARGE"
        elif head.count(b"=") > self.policy.max_xml_attributes:
            what, code = "start tag with too many attributes", "XML_TOO_MANY_ATTRIBUTES"
        else:
            what, code = "tag", "XML_TOO_LARGE"
        return ParseError(
            code,
            f"a {what} longer than {limit} bytes",
            line=line,
            offset=start,
            hint="no document cpimgw reads needs such a token (Policy.max_xml_token)",
        )

    # --- what is refused ---------------------------------------------------------------------

    def doctype(self, *args: object) -> None:
        del args
        raise self.fail(
            "XML_DTD",
            "document type declaration (DOCTYPE) refused",
            "send the document without <!DOCTYPE ...>: cpimgw never reads DTDs",
        )

    def entity_decl(self, *args: object) -> None:
        del args
        raise self.fail(
            "XML_ENTITY", "entity declaration refused", "declare no entities; use characters"
        )

    def external_entity(self, *args: object) -> int:
        del args
        raise self.fail(
            "XML_ENTITY",
            "external entity reference refused",
            "cpimgw never loads external entities; inline the content",
        )

    def skipped_entity(self, name: str, is_parameter: bool) -> None:
        del is_parameter
        raise self.fail(
            "XML_ENTITY",
            f"reference to undeclared entity &{name};",
            "use one of &lt; &gt; &amp; &apos; &quot; or a character reference",
        )

    def processing_instruction(self, target: str, data: str) -> None:
        del data
        raise self.fail(
            "XML_PI",
            f"processing instruction <?{target} ...?> refused",
            "send the document without processing instructions (the <?xml ...?> "
            "declaration is fine)",
        )


def parse_xml(data: bytes, *, policy: Policy | None = None) -> Element:
    """Parse ``data`` into an ElementTree element (``{ns}local`` tags). Raises ParseError
    (codes XML_DTD, XML_ENTITY, XML_PI, XML_TOO_DEEP, XML_TOO_MANY_ELEMENTS,
    XML_TOO_MANY_ATTRIBUTES, XML_TOO_LARGE, XML_MALFORMED) with the byte offset."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"parse_xml() takes bytes, not {type(data).__name__}")
    policy = policy if policy is not None else DEFAULT
    if len(data) > policy.max_message_size:
        raise ParseError(
            "XML_TOO_LARGE",
            f"XML document of {len(data)} bytes exceeds the limit of "
            f"{policy.max_message_size} bytes",
            offset=policy.max_message_size,
            hint="send a smaller document (Policy.max_message_size)",
            reason=Reason.TOO_LARGE,
        )
    parser = xml.parsers.expat.ParserCreate(namespace_separator=_SEP)
    builder = _Builder(parser, policy)
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    parser.StartNamespaceDeclHandler = builder.start_ns
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = builder.doctype
    parser.EntityDeclHandler = builder.entity_decl
    parser.UnparsedEntityDeclHandler = builder.entity_decl
    parser.NotationDeclHandler = builder.doctype
    parser.ElementDeclHandler = builder.doctype
    parser.AttlistDeclHandler = builder.doctype
    parser.ExternalEntityRefHandler = builder.external_entity
    parser.SkippedEntityHandler = builder.skipped_entity
    parser.ProcessingInstructionHandler = builder.processing_instruction
    parser.CommentHandler = builder.comment
    data = bytes(data)
    try:
        # Fed in chunks, so expat never holds more than one chunk plus one token: a token
        # longer than max_xml_token is refused before expat has read all of it.
        for start in range(0, len(data), _CHUNK):
            fed = min(start + _CHUNK, len(data))
            parser.Parse(data[start:fed], False)
            if fed - builder.mark > policy.max_xml_token:
                raise builder.token_too_large(data, fed)
        parser.Parse(b"", True)
    except xml.parsers.expat.ExpatError as exc:
        message = expat_errors.messages[exc.code] if exc.code is not None else str(exc)
        code = "XML_ENTITY" if message in _ENTITY_ERRORS else "XML_MALFORMED"
        raise ParseError(
            code,
            f"not well-formed XML: {message}",
            line=exc.lineno,
            offset=max(parser.ErrorByteIndex, 0),
            hint="fix the XML at this place"
            if code == "XML_MALFORMED"
            else "use one of &lt; &gt; &amp; &apos; &quot; or a character reference",
        ) from None
    except ParseError:
        raise
    except (LookupError, ValueError) as exc:  # unknown or multi-byte encoding declared
        raise ParseError(
            "XML_MALFORMED",
            f"unsupported document encoding ({exc})",
            line=1,
            offset=0,
            hint="send the document in UTF-8",
        ) from None
    finally:
        # break the parser <-> builder reference cycle at once
        parser.StartElementHandler = None
        parser.EndElementHandler = None
        parser.CharacterDataHandler = None
        parser.CommentHandler = None
    if builder.root is None:  # pragma: no cover - expat reports "no element found" first
        raise ParseError("XML_MALFORMED", "no root element", offset=0, hint="send a document")
    return builder.root
