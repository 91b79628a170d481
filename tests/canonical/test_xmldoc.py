"""canonical.xmldoc: the safe XML parser refuses DTDs, entities, PIs and oversized input,
quickly and with bounded memory, and builds the same tree as ElementTree otherwise."""

from __future__ import annotations

import sys
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.errors import ParseError
from canonical.policy import DEFAULT, MIB, Policy
from canonical.xmldoc import XML_LANG, parse_xml

PIDF_NS = "urn:ietf:params:xml:ns:pidf"


def _peak(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` and return (its result or raised error, peak traced bytes during the run)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            result: object = fn()
        except ParseError as err:
            result = err
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _refused(data: bytes, code: str, *, bound: int, policy: Policy | None = None) -> ParseError:
    result, peak = _peak(lambda: parse_xml(data, policy=policy))
    assert isinstance(result, ParseError), f"accepted: {result!r}"
    assert result.code == code, str(result)
    assert result.offset is not None
    assert peak < bound, f"peak {peak} bytes >= bound {bound}"
    return result


# --- the tree --------------------------------------------------------------------------------


def test_tree_uses_clark_names_and_xml_lang() -> None:
    root = parse_xml(
        b"<?xml version='1.0' encoding='UTF-8'?>"
        b"<p xmlns='urn:ietf:params:xml:ns:pidf' xmlns:x='urn:x' entity='pres:a@b'>"
        b"<note xml:lang='en'>hi</note><x:e x:a='1'/>tail</p>"
    )
    assert root.tag == f"{{{PIDF_NS}}}p"
    assert root.attrib == {"entity": "pres:a@b"}
    note, ext = list(root)
    assert note.tag == f"{{{PIDF_NS}}}note"
    assert note.attrib == {XML_LANG: "en"}
    assert note.text == "hi"
    assert ext.tag == "{urn:x}e"
    assert ext.attrib == {"{urn:x}a": "1"}
    assert ext.tail == "tail"


@pytest.mark.parametrize(
    "data",
    [
        b"<a>text &amp; &lt;x&gt; &#233; &#x2713; <b>in</b> tail <![CDATA[<raw>]]> end</a>",
        b"<a xmlns='u'><b xmlns=''>x</b><!-- c --><c>y</c></a>",
        "<a>Grüße ✓</a>".encode(),
        "<?xml version='1.0' encoding='ISO-8859-1'?><a>\xe9</a>".encode("latin-1"),
        "<?xml version='1.0' encoding='UTF-16'?><a>x</a>".encode("utf-16"),
        b"\n<a>\r\n line\r</a>\n",
    ],
)
def test_tree_equals_what_elementtree_builds(data: bytes) -> None:
    ours = parse_xml(data)
    theirs = ET.fromstring(data)  # the reference parser, on trusted test data
    assert ET.tostring(ours) == ET.tostring(theirs)


def test_pidf_of_vector_017_parses(vectors_dir: Path) -> None:
    data = (vectors_dir / "cpim" / "valid" / "017-pidf-body.cpim").read_bytes()
    root = parse_xml(data.split(b"\r\n\r\n", 3)[3])  # the entity body after its blank line
    assert root.tag == f"{{{PIDF_NS}}}presence"
    assert root.attrib == {"entity": "pres:ada@example.com"}
    note = root.find(f"{{{PIDF_NS}}}tuple/{{{PIDF_NS}}}note")
    assert note is not None
    assert note.attrib == {XML_LANG: "en"}


# --- refused constructs ----------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""


def test_billion_laughs_is_refused_with_bounded_memory() -> None:
    err = _refused(BILLION_LAUGHS, "XML_DTD", bound=256 * 1024)
    assert err.line == 2


def test_quadratic_blowup_is_refused_with_bounded_memory() -> None:
    entity = b"x" * 50_000
    data = (
        b'<?xml version="1.0"?><!DOCTYPE kaboom [<!ENTITY a "'
        + entity
        + b'">]><kaboom>'
        + b"&a;" * 15_000
        + b"</kaboom>"
    )
    assert len(data) < DEFAULT.max_message_size
    # the expansion would be 750 MB; the refusal costs a fraction of the input size
    _refused(data, "XML_DTD", bound=len(data))


@pytest.fixture
def opened_paths() -> Iterator[list[str]]:
    """Every path the interpreter opens while the test runs (PEP 578 audit hook)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event == "open" and args:
            seen.append(str(args[0]))

    sys.addaudithook(hook)
    yield seen
    active[0] = False  # audit hooks cannot be removed; switch this one off


@pytest.mark.parametrize(
    "data",
    [
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file://{path}">]><r>&x;</r>',
        b'<!DOCTYPE r SYSTEM "file://{path}"><r/>',
        b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file://{path}"> %p;]><r/>',
        b'<r xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file://{path}"/></r>',
    ],
)
def test_external_entities_are_never_read(
    data: bytes, tmp_path: Path, opened_paths: list[str]
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = data.replace(b"{path}", str(secret).encode())
    opened_paths.clear()  # from here on, nothing may open the file
    if doc.startswith(b"<!DOCTYPE"):
        with pytest.raises(ParseError) as info:
            parse_xml(doc)
        assert info.value.code == "XML_DTD"
    else:  # XInclude is only an element to us: nothing is fetched
        assert b"TOP-SECRET" not in ET.tostring(parse_xml(doc))
    assert not any(str(secret) in p or "passwd" in p for p in opened_paths)


def test_etc_passwd_is_never_read(opened_paths: list[str]) -> None:
    doc = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    with pytest.raises(ParseError) as info:
        parse_xml(doc)
    assert info.value.code == "XML_DTD"
    assert "root:" not in str(info.value)
    assert not any("passwd" in p for p in opened_paths)


def test_undeclared_entity_is_refused() -> None:
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a>x &nbsp; y</a>")
    assert info.value.code == "XML_ENTITY"
    assert info.value.offset == 5


def test_processing_instruction_is_refused() -> None:
    with pytest.raises(ParseError) as info:
        parse_xml(b"<?xml version='1.0'?><?xml-stylesheet href='x.xsl'?><a/>")
    assert info.value.code == "XML_PI"
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a><?php system('id'); ?></a>")
    assert info.value.code == "XML_PI"
    assert info.value.offset == 3


def test_deep_nesting_of_100k_is_refused_with_bounded_memory() -> None:
    data = b"<a>" * 100_000 + b"</a>" * 100_000
    err = _refused(data, "XML_TOO_DEEP", bound=256 * 1024)
    assert err.offset == 3 * DEFAULT.max_xml_depth


def test_depth_limit_is_exact() -> None:
    depth = DEFAULT.max_xml_depth
    parse_xml(b"<a>" * depth + b"</a>" * depth)
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a>" * (depth + 1) + b"</a>" * (depth + 1))
    assert info.value.code == "XML_TOO_DEEP"


def test_100k_attributes_are_refused_with_bounded_memory() -> None:
    data = b"<a " + b" ".join(b'a%d=""' % i for i in range(100_000)) + b"/>"
    assert len(data) < DEFAULT.max_message_size
    _refused(data, "XML_TOO_MANY_ATTRIBUTES", bound=1 * MIB)  # input is 0.95 MiB


def test_namespace_declarations_count_as_attributes() -> None:
    data = b"<a " + b" ".join(b'xmlns:p%d="u%d"' % (i, i) for i in range(100)) + b"/>"
    with pytest.raises(ParseError) as info:
        parse_xml(data)
    assert info.value.code == "XML_TOO_MANY_ATTRIBUTES"


def test_too_many_elements_are_refused_with_bounded_memory() -> None:
    data = b"<a>" + b"<b/>" * 100_000 + b"</a>"
    _refused(data, "XML_TOO_MANY_ELEMENTS", bound=2 * MIB)


def test_huge_document_is_refused_before_parsing() -> None:
    data = b"<a>" + b"x" * (DEFAULT.max_message_size + 1) + b"</a>"
    err = _refused(data, "XML_TOO_LARGE", bound=64 * 1024)
    assert err.offset == DEFAULT.max_message_size


def test_huge_text_within_the_limit_costs_memory_in_proportion() -> None:
    text = b"x" * (DEFAULT.max_message_size - 100)
    result, peak = _peak(lambda: parse_xml(b"<a>" + text + b"</a>"))
    assert isinstance(result, ET.Element)
    assert len(result.text or "") == len(text)
    assert peak < 4 * len(text)


def test_limits_come_from_the_policy() -> None:
    small = Policy(max_message_size=100, max_xml_depth=2, max_xml_elements=3, max_xml_attributes=1)
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a>" + b" " * 100 + b"</a>", policy=small)
    assert info.value.code == "XML_TOO_LARGE"
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a><b><c/></b></a>", policy=small)
    assert info.value.code == "XML_TOO_DEEP"
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a><b/><b/><b/></a>", policy=small)
    assert info.value.code == "XML_TOO_MANY_ELEMENTS"
    with pytest.raises(ParseError) as info:
        parse_xml(b"<a x='1' y='2'/>", policy=small)
    assert info.value.code == "XML_TOO_MANY_ATTRIBUTES"


@pytest.mark.parametrize(
    ("data", "line", "offset"),
    [
        (b"", 1, 0),
        (b"<a>", 1, 3),
        (b"<a></b>", 1, 5),
        (b"<a>\n<b x='1' x='2'/></a>", 2, 13),
        (b"<a/><b/>", 1, 4),
        (b"<p:a/>", 1, 0),
        (b"<a>\xff</a>", 1, 3),
    ],
)
def test_malformed_xml_reports_line_and_byte(data: bytes, line: int, offset: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_xml(data)
    assert info.value.code == "XML_MALFORMED"
    assert (info.value.line, info.value.offset) == (line, offset)
    assert info.value.hint


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_xml("<a/>")  # type: ignore[arg-type]


_VALID = [
    b"<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' "
    b"entity='pres:a@b'><tuple id='t'><status><basic>open</basic></status>"
    b"<note xml:lang='en'>x &amp; y</note></tuple></presence>",
    b"<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><state>active</state>"
    b"<refresh>60</refresh></isComposing>",
]


@given(st.sampled_from(_VALID), st.integers(0, 400), st.binary(min_size=0, max_size=4))
def test_mutated_documents_parse_or_raise_parse_error(data: bytes, at: int, junk: bytes) -> None:
    mutated = data[:at] + junk + data[at + len(junk) :]
    code = "accepted"
    try:
        parse_xml(mutated)
    except ParseError as err:
        code = err.code
    assert code in ("accepted", "XML_DTD", "XML_ENTITY", "XML_PI", "XML_MALFORMED")
