"""The fast paths of canonical.cpim give what the general reader and the detailed checks give.

- the lean front of the parser (``_parse``) and the general reader (``_parse_general``)
  agree on every input: the same error (code, line, byte, detail) or the same message,
  views, headers and defects, in both forms, both modes, with and without the MSRP
  profile, for small objects (read by one split) and large ones (read by searches);
- a lenient object read without its line-level checks reports, on first access of
  ``defects``, exactly what the diagnosing path reports at once;
- a core header value matching its common valid shape (the strict fast check) is one the
  detailed checker has nothing to say about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canonical import cpim, vectorset
from canonical.errors import ParseError
from canonical.policy import Policy

VECTORS = [v.read_bytes() for v in vectorset.valid_vectors()] + [
    v.read_bytes() for v in vectorset.invalid_vectors()
]
# The machine is shared: the deadline catches hangs and blow-ups, not jitter.
DEADLINE_MS = 4000

SPICE = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b"  ",
    b";",
    b"=",
    b'"',
    b'"a b"',
    b"\\",
    b"<",
    b">",
    b".",
    b"\t",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xc3\xa9",
    b"\xff",
    b"NS: ",
    b"NS: <urn:x>\r\n",
    b"p.",
    b"core.",
    b"From: ",
    b"To: ",
    b"Require: ",
    b";lang=",
    b"\\u00e9",
    b"t",
    b"z",
    b"60",
    b"\r\n ",
]


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    """A vector (valid or not) with a few grammar-relevant mutations, mostly inside its
    header blocks; sometimes with a body large enough for the search-based reading."""
    original = draw(st.sampled_from(VECTORS))
    data = bytearray(original)
    end = max(30, min(len(data), original.find(b"\r\n\r\n", 30) + 60))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(min(30, len(data)), max(30, min(end, len(data)))))
        kind = draw(
            st.sampled_from(["spice", "spice", "delete", "repeat", "squeeze", "cut", "pad"])
        )
        lines = bytes(data).split(b"\r\n")
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "spice":
            data[at:at] = draw(st.sampled_from(SPICE))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif kind == "repeat":  # a line again (a header, a blank line, a body line)
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
            data = bytearray(b"\r\n".join(lines))
        elif kind == "squeeze":  # no SP after the head ("From:<im:...>")
            lines[i] = lines[i].replace(b" ", b"", 1)
            data = bytearray(b"\r\n".join(lines))
        elif kind == "cut":  # the head alone, or the head and its SP
            lines[i] = lines[i].partition(b" ")[0] + draw(st.sampled_from([b"", b" "]))
            data = bytearray(b"\r\n".join(lines))
        else:  # whitespace ending a line
            lines[i] += draw(st.sampled_from([b" ", b"\t", b"  "]))
            data = bytearray(b"\r\n".join(lines))
    if draw(st.integers(0, 4)) == 0:
        data += b"x" * 9000
    return bytes(data)


def _observe(read: Any, data: bytes, form: cpim.Form, policy: Policy) -> object:
    """Everything observable about reading ``data``, views first (before the lazy parts)."""
    try:
        msg = read(data, form, policy)
    except ParseError as exc:
        return ("error", exc.code, str(exc), exc.line, exc.offset, exc.hint, exc.reason)
    headers = [
        (h.name, h.prefix, h.local, h.namespace, h.params, h.value_raw, h.raw, h.line, h.offset)
        for h in msg.headers
    ]
    return (
        msg.sender,
        msg.to,
        msg.cc,
        msg.datetime,
        msg.subjects,
        msg.namespaces,
        msg.requirements,
        msg.content_type,
        bytes(msg) == data,
        msg.form,
        msg.headers_offset,
        msg.body_offset,
        msg.mime_headers,
        msg.entity_headers,
        headers,
        msg.defects,
        cpim.describe(msg),
    )


POLICIES = [
    Policy(),
    Policy(strict=True),
    Policy(profile="msrp"),
    Policy(strict=True, profile="msrp"),
    Policy(max_headers=5),
    Policy(strict=True, max_line_length=120),
]


@settings(deadline=DEADLINE_MS, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vectors(), st.sampled_from(POLICIES), st.booleans())
def test_fast_front_reads_as_the_general_reader(data: bytes, policy: Policy, body: bool) -> None:
    form: cpim.Form = "entity"
    if body:
        form = "body"
        data = data[data.find(b"\r\n\r\n") + 4 :]
    fast = _observe(cpim._parse, data, form, policy)
    general = _observe(cpim._parse_general, data, form, policy)
    assert fast == general


# What the diagnosing path says about a line itself (RFC 3862 §2.2, §3.6), as opposed to
# its value.
LINE_CODES = frozenset(
    {
        "LEADING_WHITESPACE",
        "SPACE_BEFORE_COLON",
        "CTL_IN_HEADER",
        "NO_SP_AFTER_COLON",
        "TRAILING_WHITESPACE",
    }
)


@settings(deadline=DEADLINE_MS, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vectors(), st.booleans())
def test_lines_read_without_their_checks_report_what_the_diagnosing_path_reports(
    data: bytes, general: bool
) -> None:
    read = cpim._parse_general if general else cpim._parse
    try:
        msg = read(data, "entity", Policy())
    except ParseError:
        return
    h0, h_end = msg._frame[1], msg._frame[2]
    if not msg._frame[6] or h_end == h0:  # read by the diagnosing path itself, or no lines
        return
    faults = cpim._Faults(data, strict=False)
    records = cpim._read_lines(data, h0, data[h0:h_end].decode().split("\r\n"), faults)
    assert [r[:3] for r in records] == [r[:3] for r in msg._records]
    in_block = [d for d in msg.defects if h0 <= (d.offset or 0) <= h_end + 2]
    assert [d for d in in_block if d.code in LINE_CODES] == sorted(
        faults.items, key=lambda d: d.offset or 0
    )


def _two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


DATETIMES = st.builds(
    lambda y, mo, d, h, mi, s, frac, zone: f"{y:04d}-{mo}-{d}T{h}:{mi}:{s}{frac}{zone}",
    st.sampled_from([1900, 2000, 2023, 2024]) | st.integers(0, 9999),
    _two_digits(0, 13),
    _two_digits(0, 32),
    _two_digits(0, 24),
    _two_digits(0, 60),
    _two_digits(0, 61),
    st.sampled_from(["", ".5", ".123456", "."]),
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-24:00", "+05:60", "+5:00"]),
)
PARTY_TEXT = st.text(st.sampled_from(list('ab é.<>" \\\t:%4F@_;=/#')), max_size=24)
PARTIES = PARTY_TEXT | st.builds(
    lambda name, uri: name + uri,
    st.sampled_from(["", "Ada ", "Ada  ", '"Ada"', '"A\\"b"', '"A" ', "é ", " ", "A\\b "]),
    st.sampled_from(["<im:a@b>", "<im:a b>", "<a>", "<im:%41>", "<im:%4>", "<x:y#z>", "<>"]),
)
NS_VALUES = st.builds(
    lambda prefix, uri: prefix + uri,
    st.sampled_from(["", "p ", "p  ", "p", " ", "p.q ", "é "]),
    st.sampled_from(["<urn:x>", "<urn:x#f>", "<x>", "<urn:a b>", "<>", "<urn:%zz>"]),
)


def _findings(local: str, value: str, params: str = "") -> list[Any]:
    record = ((local, None, local, params, local == "NS"), cpim.CPIM_NS, value, None)
    return cpim._value_findings(record, {None: cpim.CPIM_NS})


@settings(deadline=DEADLINE_MS, max_examples=2000)
@given(DATETIMES | st.text(st.sampled_from(list("0123456789-:TtZz.+ ٣")), max_size=28))
def test_a_datetime_of_the_common_shape_has_nothing_to_report(value: str) -> None:
    if cpim._VALID_SHAPES["DateTime"](value):
        assert _findings("DateTime", value) == []


@settings(deadline=DEADLINE_MS, max_examples=2000)
@given(PARTIES, st.sampled_from(["From", "To", "cc"]))
def test_a_party_of_the_common_shape_has_nothing_to_report(value: str, local: str) -> None:
    if cpim._VALID_SHAPES[local](value):
        assert _findings(local, value) == []


@settings(deadline=DEADLINE_MS, max_examples=1000)
@given(NS_VALUES)
def test_an_ns_value_of_the_common_shape_has_nothing_to_report(value: str) -> None:
    if cpim._VALID_SHAPES["NS"](value):
        assert _findings("NS", value) == []


@settings(deadline=DEADLINE_MS, max_examples=1000)
@given(st.text(st.sampled_from(list(';lang=enFR-x1é_"')), max_size=20))
def test_a_subject_lang_parameter_of_the_common_shape_has_nothing_to_report(params: str) -> None:
    if cpim._LANG_PARAM(params):
        assert _findings("Subject", "hello", params) == []


LINE_EDITS: list[Callable[[bytes], bytes]] = [
    lambda line: line.partition(b" ")[0],  # the head alone: no SP
    lambda line: line.partition(b" ")[0] + b" ",  # the head and its SP: an empty value
    lambda line: line.replace(b" ", b"", 1),  # no SP after the head
    lambda line: line + b" ",
    lambda line: line + b"\t",
    lambda line: b" " + line,
    lambda line: line.replace(b" ", b"\t", 1),
    lambda line: line[:-1] + b"\x01" + line[-1:],
    lambda line: line.replace(b":", b" :", 1),
    lambda line: line.replace(b":", b':;q="a b"', 1),
    lambda line: line.replace(b":", b";", 1),
    lambda line: b"p." + line,
]


def test_every_simple_line_edit_reads_as_the_general_reader() -> None:
    """Each edit of each header line of each valid vector, in both forms and under every
    policy: the fast front and the general reader agree."""
    for original in (v.read_bytes() for v in vectorset.valid_vectors()):
        lines = original.split(b"\r\n")
        blank = lines.index(b"", 1)
        end = lines.index(b"", blank + 1)
        for i in range(blank + 1, end + 2):
            for edit in LINE_EDITS:
                data = b"\r\n".join([*lines[:i], edit(lines[i]), *lines[i + 1 :]])
                forms: tuple[tuple[cpim.Form, bytes], ...] = (("entity", data), ("body", data[30:]))
                for policy in POLICIES:
                    for form, text in forms:
                        fast = _observe(cpim._parse, text, form, policy)
                        general = _observe(cpim._parse_general, text, form, policy)
                        assert fast == general, (data, policy, form)
