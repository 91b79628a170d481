"""Laws of canonical.cpim, checked with hypothesis.

- generated valid objects re-serialise byte for byte and read back equal (both forms);
- the views give back what was built (names, URIs, subjects, values, body);
- edits touch only their header;
- random mutations of valid vectors either parse (keeping their bytes) or raise
  ParseError: never another exception, never a hang (deadline);
- strict accepts exactly what lenient accepts without defects, and lenient records the
  code strict raises;
- escaping and unescaping are inverse.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from canonical import cpim, vectorset
from canonical.errors import ParseError

VECTORS = [v.read_bytes() for v in vectorset.valid_vectors()]
# The machine is shared: the deadline catches hangs and blow-ups, not jitter.
DEADLINE_MS = 2000

NAMECHARS = "!#$%&'*+-^_`|~" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
names = st.text(NAMECHARS, min_size=1, max_size=12)
hosts = st.sampled_from(["example.com", "example.net", "example.org"])
users = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=10).map(
    lambda user: user.replace("_", "%5F")
)
schemes = st.sampled_from(["im", "pres", "sip", "sips", "xmpp", "mailto"])
uris = st.builds(lambda s, u, h: f"{s}:{u}@{h}", schemes, users, hosts)
# Any text at all: controls, quotes, backslashes, separators, non-BMP, line separators.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
formal_names = st.none() | any_text
langs = st.sampled_from([None, "en", "fr", "zh-Hant", "x-piglatin", "i-default", "de-CH-1996"])
values = any_text.filter(bool)


@st.composite
def built_messages(draw: st.DrawFn) -> tuple[cpim.CpimMessage, dict[str, object]]:
    """A message made by cpim.build from arbitrary (writable) content, with its inputs."""
    prefixes = draw(st.lists(names, max_size=3, unique=True))
    namespaces = [(p, f"urn:example:{i}") for i, p in enumerate(prefixes)]
    extensions = [
        (f"{p}.{draw(names)}", draw(values))
        for p in prefixes
        for _ in range(draw(st.integers(0, 2)))
    ]
    kwargs: dict[str, object] = {
        "sender": draw(st.none() | st.builds(cpim.Party, formal_names, uris)),
        "to": draw(st.lists(st.builds(cpim.Party, formal_names, uris), max_size=3)),
        "cc": draw(st.lists(uris, max_size=2)),
        "datetime": draw(
            st.none()
            | st.datetimes(
                min_value=datetime(1970, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ).map(cpim.format_datetime)
        ),
        "subjects": draw(st.lists(st.tuples(langs, values), max_size=3)),
        "namespaces": namespaces,
        "extensions": extensions,
        "require": [name for name, _ in extensions[:2]],
        "content_type": draw(st.sampled_from(["text/plain; charset=utf-8", "image/png"])),
        "entity_headers": draw(
            st.lists(st.tuples(st.just("Content-ID"), st.just("<a@b>")), max_size=1)
        ),
        "body": draw(st.binary(max_size=64)),
        "form": draw(st.sampled_from(["body", "entity"])),
    }
    return cpim.build(**kwargs), kwargs  # type: ignore[arg-type]


def _reread(msg: cpim.CpimMessage, strict: bool) -> cpim.CpimMessage:
    reader = cpim.parse if msg.form == "entity" else cpim.parse_body
    return reader(bytes(msg), strict=strict)


@settings(deadline=DEADLINE_MS, max_examples=150)
@given(built_messages())
def test_built_message_round_trips_byte_for_byte(
    case: tuple[cpim.CpimMessage, dict[str, object]],
) -> None:
    msg, _ = case
    for strict in (True, False):
        again = _reread(msg, strict)
        assert again == msg
        assert bytes(again) == bytes(msg)
        assert again.defects == ()
    assert cpim.parse_body(msg.to_body(), strict=True).to_body() == msg.to_body()
    assert cpim.parse(msg.to_entity(), strict=True).to_entity() == msg.to_entity()


@settings(deadline=DEADLINE_MS, max_examples=150)
@given(built_messages())
def test_views_give_back_what_was_built(case: tuple[cpim.CpimMessage, dict[str, object]]) -> None:
    msg, kwargs = case
    sender = kwargs["sender"]
    expected_sender = None if sender is None else sender
    if isinstance(expected_sender, cpim.Party) and not expected_sender.formal_name:
        expected_sender = cpim.Party(None, expected_sender.uri)
    assert msg.sender == expected_sender
    assert [p.uri for p in msg.to] == [p.uri for p in kwargs["to"]]  # type: ignore[attr-defined]
    assert [p.formal_name or None for p in msg.to] == [
        p.formal_name or None
        for p in kwargs["to"]  # type: ignore[attr-defined]
    ]
    assert [p.uri for p in msg.cc] == kwargs["cc"]
    assert [(s.lang, s.text) for s in msg.subjects] == kwargs["subjects"]
    stamp = kwargs["datetime"]
    assert (msg.datetime.text if msg.datetime else None) == stamp
    for name, value in kwargs["extensions"]:  # type: ignore[attr-defined]
        prefix, _, local = name.partition(".")
        found = msg.find(local, msg.namespaces[prefix])
        assert value in [h.value for h in found]
    assert list(msg.require) == kwargs["require"]
    assert msg.body == kwargs["body"]


@settings(deadline=DEADLINE_MS, max_examples=100)
@given(built_messages(), st.data())
def test_edits_touch_only_their_header(
    case: tuple[cpim.CpimMessage, dict[str, object]], data: st.DataObject
) -> None:
    # Edits are read again with the message's policy: read leniently, so that removing
    # an NS line (which leaves its prefix undefined) is a defect, not an error.
    msg = _reread(case[0], strict=False)
    count = len(msg.headers)
    index = data.draw(st.integers(0, count))
    value = data.draw(values)
    edited = msg.with_header("X-Edit", value, index=index)
    at = (
        msg.headers[index].offset
        if index < count
        else (msg.headers[-1].offset + len(msg.headers[-1].raw) if count else msg.headers_offset)
    )
    line = edited.headers[index].raw
    assert edited.raw == msg.raw[:at] + line + msg.raw[at:]
    assert edited.headers[index].value == value
    assert edited.without_header("X-Edit") == msg
    if count:
        victim = msg.headers[data.draw(st.integers(0, count - 1))]
        same_name = [h for h in msg.headers if h.name == victim.name]
        occurrence = same_name.index(victim)
        removed = msg.without_header(victim.name, occurrence=occurrence)
        start = victim.offset
        assert removed.raw == msg.raw[:start] + msg.raw[start + len(victim.raw) :]


SPICE = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b";",
    b"=",
    b'"',
    b"\\",
    b"<",
    b">",
    b".",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xc3",
    b"\xff",
    b"\xe2\x80\xa8",
    b"NS: ",
    b"From: ",
    b"lang=",
]


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    """A valid vector with a few mutations, most of them inside its header blocks and made
    of bytes that matter to the grammar (CR, LF, ':', SP, quotes, backslash, non-UTF-8...)."""
    original = draw(st.sampled_from(VECTORS))
    data = bytearray(original)
    headers_end = original.find(b"\r\n\r\n", original.find(b"\r\n\r\n", 30) + 4) + 4
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "spice", "spice"]))
        if draw(st.integers(0, 9)) < 8:
            at = draw(st.integers(min(30, len(data)), max(30, min(headers_end, len(data)))))
        else:
            at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.sampled_from(b' :;=.<>"\\\t\r\nAz0\x00\x7f\xc3\xff'))
        elif kind == "insert":
            data[at:at] = draw(st.text(max_size=6).map(lambda t: t.encode("utf-8", "replace")))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 12))]
        else:
            data[at:at] = draw(st.sampled_from(SPICE))
    return bytes(data)


def _exercise(msg: cpim.CpimMessage, data: bytes) -> None:
    """Every view of an accepted object works and the bytes are kept."""
    assert bytes(msg) == data
    for header in msg.headers:
        assert data[header.offset : header.offset + len(header.raw)] == header.raw
        assert header.line == data.count(b"\n", 0, header.offset) + 1
        _ = (header.value, header.params, header.lang)
    for defect in msg.defects:
        assert defect.offset is not None
        assert 0 <= defect.offset <= len(data)
        assert defect.code in cpim.ERROR_CODES
    _ = (msg.sender, msg.to, msg.cc, msg.datetime, msg.subjects, msg.subject("en"))
    _ = (msg.namespaces, msg.requirements, msg.content_type, msg.dispositions, msg.body)
    json.dumps(cpim.describe(msg), ensure_ascii=False)


@settings(deadline=DEADLINE_MS, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vectors(), st.booleans(), st.sampled_from([None, "msrp"]), st.booleans())
def test_mutated_vector_parses_or_raises_parse_error(
    data: bytes, strict: bool, profile: str | None, body_form: bool
) -> None:
    reader = cpim.parse_body if body_form else cpim.parse
    error: ParseError | None = None
    try:
        msg = reader(data, strict=strict, profile=profile)  # type: ignore[arg-type]
    except ParseError as exc:
        error = exc
    if error is None:
        _exercise(msg, data)
        return
    assert error.code in cpim.ERROR_CODES
    assert error.offset is not None
    assert 0 <= error.offset <= len(data)
    assert error.line == data.count(b"\n", 0, error.offset) + 1


@settings(deadline=DEADLINE_MS, max_examples=300)
@given(mutated_vectors())
def test_strict_accepts_exactly_what_lenient_accepts_without_defects(data: bytes) -> None:
    try:
        strict = cpim.parse(data, strict=True)
    except ParseError as exc:
        strict_error: ParseError | None = exc
    else:
        strict_error = None
    lenient_error: ParseError | None = None
    try:
        lenient = cpim.parse(data)
    except ParseError as exc:
        lenient_error = exc
    if lenient_error is not None:
        assert strict_error is not None
        assert lenient_error.code in cpim.FATAL_CODES
        return
    problems = [d.code for d in lenient.defects if d.code not in cpim.WARNING_CODES]
    if strict_error is None:
        assert problems == []
        assert strict.defects == lenient.defects
    else:
        assert strict_error.code in problems


@settings(deadline=DEADLINE_MS, max_examples=300)
@given(any_text)
def test_fast_party_reading_equals_the_general_one(value: str) -> None:
    assume(value)
    assert cpim._party_of(value) == cpim._read_party(value)


@settings(deadline=DEADLINE_MS, max_examples=300)
@given(values)
def test_escaping_then_decoding_gives_the_text_back(text: str) -> None:
    written = cpim.encode_value(text)
    assert cpim.decode_escapes(written) == text
    assert not written.endswith((" ", "\t"))
    assert all(ch >= " " and ch != "\x7f" for ch in written)
    quoted = cpim.encode_string(text)
    assert cpim.decode_escapes(quoted[1:-1]) == text


@settings(deadline=DEADLINE_MS, max_examples=200)
@given(st.text(max_size=30))
def test_decoding_any_text_never_fails(text: str) -> None:
    assert isinstance(cpim.decode_escapes(text), str)
    cpim.decode_escapes(text).encode("utf-8")  # never a lone surrogate
