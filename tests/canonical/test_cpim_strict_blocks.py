"""Strict mode's one-pattern test of a remembered CPIM block agrees with the detailed checks.

Strict mode reads a CPIM header block whose heads were seen before by matching the whole
block against one pattern made for those heads (each line: its head as written, SP, the
valid shape of its kind of value; RFC 3862 §2.2, §3.4-§3.6, §4). A block that does not
match is checked value by value, which finds the first fault and says where. These tests
pin that the pattern never changes an outcome:

- over near-valid blocks (values one edit away from valid, for every kind of header), the
  lean front with the pattern remembered reads exactly as the general reader: the same
  error (code, line, byte, detail) or the same message, views, headers and defects;
- a block the pattern accepts is one the general reader accepts without a defect;
- the date part of the DateTime shape accepts exactly the calendar dates RFC 3339 §5.7
  allows (leap years included), over every month and day of many years;
- every invalid vector still fails in strict mode as the manifest says once the patterns
  of every vector's heads are remembered, and every valid vector is read by the pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from canonical import cpim, vectorset
from canonical.errors import ParseError
from canonical.policy import Policy
from tests.canonical.test_cpim_fast_paths import DATETIMES, DEADLINE_MS, PARTIES, _observe

STRICT = Policy(strict=True)
POLICIES = [STRICT, Policy(strict=True, profile="msrp"), Policy()]

# Values one edit away from valid: escapes defined and not, control characters, trailing
# and leading whitespace, quotes, non-ASCII, the empty value.
PIECES = [
    *"ab é∫\"'<>;:=,.",
    *("\\", "\\n", "\\t", "\\\\", "\\q", "\\u00e9", "\\u00", "\t"),
    *("\x01", "\x7f", "\u0085", "\u00a0", " ", "  "),
]
TEXT = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
REQUIRES = st.lists(
    st.sampled_from(
        ["Feat.Confirm", "Subject", "Feat.a", "Other.x", "Feat", "Feat.", ".x", "a.b.c", "é"]
    ),
    min_size=1,
    max_size=3,
).flatmap(lambda names: st.sampled_from([",", ", ", " ,", ";"]).map(lambda sep: sep.join(names)))
NS_FEAT = "Feat <http://ns.example.org/feat/>"
NS_VALUES = st.sampled_from(
    [
        NS_FEAT,
        "Feat<http://ns.example.org/feat/>",
        "Other <urn:other>",
        "<urn:ietf:params:cpim-headers:>",
        "<urn:x>",
        "Feat <urn:x#f>",
        "Feat <x>",
    ]
)
# (head, the valid value a template block gives it, values to try)
KINDS: list[tuple[str, str, st.SearchStrategy[str]]] = [
    ("From:", "Ada <im:ada@example.com>", PARTIES),
    ("To:", "<im:charles@example.net>", PARTIES),
    ("cc:", '"Dr. B"<im:b@example.net>', PARTIES),
    ("DateTime:", "2024-02-29T08:15:30.5-00:00", DATETIMES | TEXT),
    ("Subject:", "hello", TEXT),
    ("Subject:;lang=en", "hello", TEXT),
    ("Require:", "Feat.Confirm", REQUIRES | TEXT),
    ("Feat.Label:", "x", TEXT),
    ('Feat.Label:;name="a b"', "x", TEXT),
    ("Extension:", "x", TEXT),
]
# Heads that make any block invalid in strict mode (their pattern matches nothing).
FAULTY_KINDS: list[tuple[str, str, st.SearchStrategy[str]]] = [
    ("To:;x=1", "<im:c@example.net>", PARTIES),
    ("Subject:;lang=e_n", "hello", TEXT),
    ("Subject:;lang=en;x=1", "hello", TEXT),
    ('Feat.Label:;name="a\\qb"', "x", TEXT),
    ("Feat.Label:;lang=e_n", "x", TEXT),
    ("Other.Key:", "x", TEXT),
    ("Undeclared.Key:", "x", TEXT),
]


@st.composite
def near_valid_blocks(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Header lines of a template block (valid values, mostly valid heads, mostly with
    ``Feat`` declared first) and of a block with the same heads in which up to two values
    (NS values too: they are part of what is remembered) are drawn near valid."""
    kinds: list[tuple[str, str, st.SearchStrategy[str]] | None] = [
        draw(st.sampled_from(KINDS if draw(st.integers(0, 5)) else [None, *FAULTY_KINDS]))
        for _ in range(draw(st.integers(1, 6)))
    ]
    if draw(st.integers(0, 3)):
        kinds.insert(0, None)
    edited = draw(st.sets(st.integers(0, len(kinds) - 1), max_size=2))
    template: list[str] = []
    lines: list[str] = []
    for k, kind in enumerate(kinds):
        if kind is None:
            ns = NS_FEAT if k == 0 else draw(NS_VALUES)
            template.append("NS: " + ns)
            lines.append("NS: " + (draw(NS_VALUES) if k in edited else ns))
            continue
        head, valid, values = kind
        template.append(f"{head} {valid}")
        lines.append(f"{head} {draw(values) if k in edited else valid}")
    return template, lines


def _entity(lines: list[str]) -> bytes:
    return (
        cpim.MIME_HEADER
        + b"\r\n"
        + "\r\n".join(lines).encode()
        + b"\r\n\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi"
    )


@pytest.fixture(autouse=True)
def _own_memory() -> Iterator[None]:
    """The remembered skeletons and patterns as they were before each test (the many
    blocks these tests make would fill them for the other tests)."""
    skeletons, patterns = dict(cpim._SKELETONS), dict(cpim._STRICT_BLOCKS)
    yield
    cpim._SKELETONS.clear()
    cpim._SKELETONS.update(skeletons)
    cpim._STRICT_BLOCKS.clear()
    cpim._STRICT_BLOCKS.update(patterns)


def _warm(data: bytes, policy: Policy) -> None:
    """Read ``data`` twice (its skeleton, then its strict pattern, are remembered), with
    room made first when the memory is nearly full (a full one remembers nothing new)."""
    if len(cpim._SKELETONS) > cpim._SKELETONS_MAX // 2:
        cpim._SKELETONS.clear()
        cpim._STRICT_BLOCKS.clear()
    for _ in range(2):
        try:
            cpim._parse(data, "entity", policy)
        except ParseError:
            return


@settings(deadline=DEADLINE_MS, max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_blocks(), st.sampled_from(POLICIES), st.booleans())
def test_a_block_read_by_its_strict_pattern_reads_as_the_general_reader(
    block: tuple[list[str], list[str]], policy: Policy, body: bool
) -> None:
    template, lines = block
    _warm(_entity(template), STRICT)
    data = _entity(lines)
    form: cpim.Form = "entity"
    if body:
        form, data = "body", data[30:]
    fast = _observe(cpim._parse, data, form, policy)
    if isinstance(fast, tuple) and fast[0] == "error":
        event("rejected")
    elif policy.strict:
        read = cpim._parse(data, form, policy)._recs is None
        event("accepted by the pattern" if read else "accepted after the value checks")
    assert fast == _observe(cpim._parse_general, data, form, policy)


@settings(deadline=DEADLINE_MS, max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_blocks())
def test_a_block_its_strict_pattern_accepts_has_nothing_to_report(
    block: tuple[list[str], list[str]],
) -> None:
    template, lines = block
    data = _entity(lines)
    head = "\r\n".join(lines)
    _warm(_entity(template), Policy())
    parts = [line.partition(" ") for line in head.split("\r\n")]
    key = tuple(p[0] for p in parts)
    _records, skeleton = cpim._read_parts([line.partition(" ") for line in template], template, key)
    if skeleton is None:
        return
    matched = cpim._strict_block(key, skeleton)(head) is not None
    event("matched" if matched else "not matched")
    if matched:
        msg = cpim._parse_general(data, "entity", STRICT)
        assert msg.defects == ()
        assert bytes(msg) == data


LEAP_YEARS = [0, 4, 96, 400, 1600, 2000, 2024, 2400, 9996]
COMMON_YEARS = [1, 100, 1700, 1800, 1900, 2023, 2100, 2200, 2300, 9999]


def test_the_datetime_shape_accepts_exactly_the_calendar_dates() -> None:
    shape = cpim._VALID_SHAPES["DateTime"]
    for year in LEAP_YEARS + COMMON_YEARS:
        for month in range(14):
            for day in range(33):
                for time in ("T08:15:30Z", "T23:59:59.25-00:00"):
                    value = f"{year:04d}-{month:02d}-{day:02d}{time}"
                    valid = cpim.parse_datetime(value) is not None
                    assert (shape(value) is not None) == valid, value


def test_leap_years_of_the_test_are_leap_years() -> None:
    assert all(cpim.parse_datetime(f"{y:04d}-02-29T00:00:00Z") for y in LEAP_YEARS)
    assert not any(cpim.parse_datetime(f"{y:04d}-02-29T00:00:00Z") for y in COMMON_YEARS)


VALID = vectorset.valid_vectors()
INVALID = vectorset.invalid_vectors()


def test_every_valid_vector_is_read_by_its_strict_pattern() -> None:
    for vector in VALID:
        data = vector.read_bytes()
        _warm(data, STRICT)
        msg = cpim.parse(data, strict=True)
        assert bytes(msg) == data
        assert msg.defects == ()
        if msg.headers:  # records not made while reading: the pattern accepted the block
            again = cpim.parse(data, strict=True)
            assert again._recs is None, vector.name


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_an_invalid_vector_fails_as_before_once_every_pattern_is_remembered(
    vector: vectorset.Vector,
) -> None:
    for other in VALID:
        _warm(other.read_bytes(), STRICT)
    data = vector.read_bytes()
    policy = Policy(strict=True, profile=vector.profile)  # type: ignore[arg-type]
    for warm in (Policy(), STRICT, policy):
        _warm(data, warm)
    with pytest.raises(ParseError) as caught:
        cpim.parse(data, strict=True, profile=vector.profile)  # type: ignore[arg-type]
    error = caught.value
    assert error.code in vector.accepted_codes
    assert error.line == data.count(b"\n", 0, error.offset) + 1
    general = _observe(cpim._parse_general, data, "entity", policy)
    assert general == (
        "error",
        error.code,
        str(error),
        error.line,
        error.offset,
        error.hint,
        error.reason,
    )


def test_remembered_strict_patterns_are_bounded() -> None:
    saved = dict(cpim._STRICT_BLOCKS)
    saved_skeletons = dict(cpim._SKELETONS)
    try:
        cpim._SKELETONS.clear()
        cpim._STRICT_BLOCKS.clear()
        for n in range(cpim._SKELETONS_MAX + 50):
            _warm(_entity(["From: <im:x@y>", f"K{n}: v"]), STRICT)
        assert len(cpim._STRICT_BLOCKS) <= cpim._SKELETONS_MAX
        # beyond the bound a block is still checked in full
        with pytest.raises(ParseError) as caught:
            cpim.parse(_entity(["From: <im:x@y>", "K0: a\\qb"]), strict=True)
        assert caught.value.code == "UNESCAPED_BACKSLASH"
        msg = cpim.parse(_entity(["From: <im:x@y>", "Beyond: v"]), strict=True)
        assert msg.headers[1].value == "v"
    finally:
        cpim._STRICT_BLOCKS.clear()
        cpim._STRICT_BLOCKS.update(saved)
        cpim._SKELETONS.clear()
        cpim._SKELETONS.update(saved_skeletons)


# The URI text as RFC 3986 writes it (one character or one %HH at a time), against which
# the pattern cpimgw uses (runs of characters between %HH, faster in sre) is checked.
URI_REFERENCE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
)


@settings(deadline=DEADLINE_MS, max_examples=3000)
@given(st.text(st.sampled_from(list("aZ9+.-:%4Ffg/?#[]@!$&'()*,;=_~ é|<>\\")), max_size=16))
def test_the_uri_pattern_accepts_what_rfc_3986_absolute_uri_does(text: str) -> None:
    assert (cpim._URI.fullmatch(text) is None) == (URI_REFERENCE.fullmatch(text) is None)


def test_the_token_character_class_is_tokenchar() -> None:
    """RFC 3862 §3.6 TOKENCHAR (NAMECHAR, '.', UCS-high) over every code point."""
    every = "".join(map(chr, range(0x110000)))
    tokenchar = re.compile(rf"[{cpim._NC}.\u0080-\U0010ffff]")
    assert re.findall(cpim._TC_CLASS, every) == tokenchar.findall(every)


def test_a_pattern_follows_the_ns_values_its_heads_are_now_sent_with() -> None:
    """After the NS values of a layout change, the layout's pattern is made again for the
    new ones (and stays exact for the old: a block with those is checked value by value)."""
    old = _entity(["NS: p <urn:a>", "From: <im:x@y>", "p.Key: 1"])
    new = _entity(["NS: p <urn:b>", "From: <im:x@y>", "p.Key: 1"])
    _warm(old, STRICT)
    assert cpim.parse(old, strict=True)._recs is None
    _warm(new, STRICT)
    msg = cpim.parse(new, strict=True)
    assert msg._recs is None
    assert msg.headers[2].namespace == "urn:b"
    assert cpim.parse(old, strict=True).headers[2].namespace == "urn:a"
