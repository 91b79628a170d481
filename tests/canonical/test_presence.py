"""canonical.presence: PIDF views over kept bytes, deterministic building, tuple ids and
priority scaling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.errors import MappingError, ParseError
from canonical.policy import STRICT
from canonical.presence import (
    RPID_ACTIVITIES,
    SHOW_VALUES,
    Note,
    PresenceTuple,
    build_pidf,
    is_ncname,
    parse_pidf,
    pick_note,
    pidf_priority,
    resource_of,
    tuple_id_for,
    xmpp_priority,
)
from tests.servers.kamailio import kamailio
from tests.servers.process import free_port
from tests.servers.sipp import run_sipp, sipp_uas

# What peers sent, byte for byte (/work/shared/servers/configs/sipp/pidf.xml and the captures
# in /work/shared/servers/evidence/presence_publish_vs_notify.txt and pua_xmpp_publish.txt).
SIPP_PUBLISH = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:carol@sip.test">\n'
    b'<tuple id="t1"><status><basic>open</basic></status>'
    b"<note>Gr\xc3\xbc\xc3\x9fe \xe2\x9c\x93 away-ish</note></tuple>\n"
    b"</presence>\r\n"
)
# Kamailio 5.6.3 presence_xml: the NOTIFY body for that PUBLISH (re-serialised: CRLF -> LF)
KAMAILIO_NOTIFY = SIPP_PUBLISH[:-2] + b"\n"
# Kamailio pua_xmpp: the PUBLISH it builds from <presence><show>away</show>...
KAMAILIO_PUA_XMPP = (
    (
        b'<?xml version="1.0"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        b' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        b' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
        b' xmlns:c="urn:ietf:params:xml:ns:pidf:cipid" entity="pres:bob@xmpp.test">\n'
    )
    + b"""  <tuple id="0x7fffedf9dae0">
    <status>
      <basic>open</basic>
    </status>
    <note>away</note>
  </tuple>
  <person id="0x7fffedf9dae0"/>
</presence>
"""
)


def _vector_017(vectors_dir: Path) -> bytes:
    data = (vectors_dir / "cpim" / "valid" / "017-pidf-body.cpim").read_bytes()
    # entity form: MIME headers, blank line, CPIM headers, blank line, entity headers, blank line
    return data.split(b"\r\n\r\n", 3)[3]


def test_vector_017_pidf_views(vectors_dir: Path) -> None:
    body = _vector_017(vectors_dir)
    doc = parse_pidf(body)
    assert doc.raw == body
    assert doc.entity == "pres:ada@example.com"
    assert doc.basic == "open"
    (t,) = doc.tuples
    assert t.id == "ID-laptop"
    assert resource_of(t.id) == "laptop"
    assert (t.basic, t.contact, t.priority) == ("open", "im:ada@example.com", 0.8)
    assert t.notes == (Note("Computing Bernoulli numbers", "en"),)
    assert t.timestamp == "2024-03-05T14:10:00Z"
    assert t.show is None
    assert doc.activities == ("busy",)
    assert doc.defects == ()


def test_sipp_publish_keeps_utf8_note() -> None:
    doc = parse_pidf(SIPP_PUBLISH)
    assert doc.raw == SIPP_PUBLISH
    assert doc.entity == "sip:carol@sip.test"
    assert doc.tuples == (PresenceTuple("t1", "open", notes=(Note("Grüße ✓ away-ish"),)),)


def test_kamailio_reserialised_notify_has_the_same_views_but_not_the_same_bytes() -> None:
    published, notified = parse_pidf(SIPP_PUBLISH), parse_pidf(KAMAILIO_NOTIFY)
    assert published.raw != notified.raw
    assert (published.entity, published.tuples, published.notes) == (
        notified.entity,
        notified.tuples,
        notified.notes,
    )


def test_kamailio_pua_xmpp_document_is_read_leniently() -> None:
    doc = parse_pidf(KAMAILIO_PUA_XMPP)
    (t,) = doc.tuples
    assert (t.id, t.basic, t.notes) == ("0x7fffedf9dae0", "open", (Note("away"),))
    assert resource_of(t.id) == "0x7fffedf9dae0"  # not ours: the id is the resource (RFC 3922)
    assert doc.activities == ()
    assert [d.code for d in doc.defects] == ["PIDF_BAD_TUPLE_ID"]
    with pytest.raises(ParseError) as info:
        parse_pidf(KAMAILIO_PUA_XMPP, policy=STRICT)
    assert info.value.code == "PIDF_BAD_TUPLE_ID"


RICH = b"""<?xml version='1.0' encoding='UTF-8'?>
<p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' xmlns:x='urn:example:ext'
    xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'
    xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid'
    xmlns:c='urn:ietf:params:xml:ns:pidf:cipid'
    entity='pres:juliet@example.com' xml:lang='en'>
  <p:tuple id='ID-balcony'>
    <p:status>
      <p:basic>open</p:basic>
      <show xmlns='jabber:client'>away</show>
      <x:mood p:mustUnderstand='true'><x:deep/></x:mood>
    </p:status>
    <x:unknown>ignored <x:child/></x:unknown>
    <dm:deviceID>urn:uuid:1</dm:deviceID>
    <p:contact priority='1'>xmpp:juliet@example.com/balcony</p:contact>
    <p:note>Wherefore</p:note>
    <p:note xml:lang='fr'>Pourquoi</p:note>
    <p:timestamp>2024-03-05T14:10:00.123+01:00</p:timestamp>
  </p:tuple>
  <p:tuple id='ID-garden'>
    <p:status><p:basic>closed</p:basic></p:status>
  </p:tuple>
  <p:note xml:lang='de'>Warum</p:note>
  <dm:person id='x1'>
    <rpid:activities><rpid:meeting/><rpid:on-the-phone/><x:custom/></rpid:activities>
    <c:display-name>Juliet</c:display-name>
  </dm:person>
  <dm:device id='d1'><dm:deviceID>urn:uuid:1</dm:deviceID></dm:device>
</p:presence>
"""


def test_views_read_prefixed_pidf_and_ignore_unknown_extensions() -> None:
    doc = parse_pidf(RICH)
    balcony, garden = doc.tuples
    assert balcony.basic == "open"
    assert balcony.show == "away"
    assert (balcony.contact, balcony.priority) == ("xmpp:juliet@example.com/balcony", 1.0)
    assert balcony.notes == (Note("Wherefore", "en"), Note("Pourquoi", "fr"))  # lang inherited
    assert balcony.timestamp == "2024-03-05T14:10:00.123+01:00"
    assert garden.basic == "closed"
    assert doc.basic == "open"
    assert doc.notes == (Note("Warum", "de"),)
    assert doc.activities == ("meeting", "on-the-phone")
    assert [d.code for d in doc.defects] == ["PIDF_NOT_UNDERSTOOD"]
    assert doc.tuple_by_id("ID-garden") is garden


def test_must_understand_inside_show_sets_show_aside() -> None:
    data = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'><tuple id='t'>"
        b"<status><basic>open</basic><show xmlns='jabber:client'>dnd"
        b"<x xmlns='urn:x' mustUnderstand='1'/></show></status></tuple></presence>"
    )
    doc = parse_pidf(data)
    assert doc.tuples[0].show is None
    assert doc.tuples[0].basic == "open"
    assert [d.code for d in doc.defects] == ["PIDF_NOT_UNDERSTOOD"]


@pytest.mark.parametrize(
    ("fragment", "code"),
    [
        (b"<status><basic>busy</basic></status>", "PIDF_BAD_BASIC"),
        (
            b"<status><basic>open</basic><show xmlns='jabber:client'>online</show></status>",
            "PIDF_BAD_SHOW",
        ),
        (
            b"<status><basic>open</basic></status><contact priority='1.5'>im:a@b</contact>",
            "PIDF_BAD_PRIORITY",
        ),
        (
            b"<status><basic>open</basic></status><contact priority='0.1234'>im:a@b</contact>",
            "PIDF_BAD_PRIORITY",
        ),
        (
            b"<status><basic>open</basic></status><timestamp>yesterday</timestamp>",
            "PIDF_BAD_TIMESTAMP",
        ),
        (b"<note>no status</note>", "PIDF_NO_STATUS"),
    ],
)
def test_lenient_defects_and_strict_refusals(fragment: bytes, code: str) -> None:
    data = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'><tuple id='t'>"
        + fragment
        + b"</tuple></presence>"
    )
    doc = parse_pidf(data)
    assert [d.code for d in doc.defects] == [code]
    assert doc.raw == data
    with pytest.raises(ParseError) as info:
        parse_pidf(data, policy=STRICT)
    assert info.value.code == code


def test_bad_priority_is_ignored_not_guessed() -> None:
    data = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'><tuple id='t'>"
        b"<status><basic>open</basic></status><contact priority='2'>im:a@b</contact>"
        b"</tuple></presence>"
    )
    t = parse_pidf(data).tuples[0]
    assert (t.contact, t.priority) == ("im:a@b", None)


def test_duplicate_tuple_ids_are_a_defect() -> None:
    tup = b"<tuple id='t'><status><basic>open</basic></status></tuple>"
    data = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'>"
        + tup * 2
        + b"</presence>"
    )
    assert [d.code for d in parse_pidf(data).defects] == ["PIDF_DUPLICATE_TUPLE_ID"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"<presence entity='pres:a@b'/>", "PIDF_NOT_PRESENCE"),
        (b"<x xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'/>", "PIDF_NOT_PRESENCE"),
        (b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/>", "PIDF_NO_ENTITY"),
        (
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'>"
            b"<tuple><status><basic>open</basic></status></tuple></presence>",
            "PIDF_NO_TUPLE_ID",
        ),
        (
            b"<!DOCTYPE presence [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='&x;'/>",
            "XML_DTD",
        ),
        (b"<presence", "XML_MALFORMED"),
    ],
)
def test_structural_faults_raise(data: bytes, code: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_pidf(data)
    assert info.value.code == code
    assert info.value.hint


def test_zero_tuples_is_a_document_without_basic() -> None:
    doc = parse_pidf(b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:a@b'/>")
    assert doc.tuples == ()
    assert doc.basic is None


def test_pick_note_by_language() -> None:
    notes = (Note("Wherefore", "en"), Note("Pourquoi", "fr-CA"), Note("plain"))
    assert pick_note(notes, "fr-CA") == notes[1]
    assert pick_note(notes, "fr") == notes[1]
    assert pick_note(notes, "EN-gb") == notes[0]
    assert pick_note(notes, "de") == notes[2]
    assert pick_note(notes) == notes[2]
    assert pick_note(notes[:2], "de") == notes[0]
    assert pick_note(()) is None


# --- building --------------------------------------------------------------------------------


def _sample() -> dict[str, object]:
    return {
        "entity": "pres:juliet@example.com",
        "tuples": [
            PresenceTuple(
                tuple_id_for("balcony"),
                "open",
                "xmpp:juliet@example.com/balcony",
                pidf_priority(5),
                (Note("a & b < c\r\n", "en"),),
                "2024-03-05T14:10:00Z",
                "chat",
            )
        ],
        "notes": [Note("ça va ✓", "fr")],
        "activities": ["away", "busy"],
    }


def test_build_is_deterministic_utf8_with_fixed_namespaces() -> None:
    one = build_pidf(**_sample())  # type: ignore[arg-type]
    two = build_pidf(**_sample())  # type: ignore[arg-type]
    assert one.raw == two.raw
    assert one.raw.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<presence xmlns=")
    head = one.raw.split(b">", 2)[1]
    for ns in (b"urn:ietf:params:xml:ns:pidf'", b"pidf:data-model'", b"pidf:rpid'"):
        assert ns in head
    assert "ça va ✓".encode() in one.raw
    parsed = parse_pidf(one.raw)
    assert parsed.tuples == one.tuples
    assert parsed.notes == one.notes
    assert parsed.activities == one.activities
    assert parsed.defects == ()


def test_build_output_is_valid_for_the_strict_parser() -> None:
    doc = build_pidf(**_sample())  # type: ignore[arg-type]
    assert parse_pidf(doc.raw, policy=STRICT).tuples == doc.tuples


@pytest.mark.parametrize(
    "tup",
    [
        PresenceTuple("1bad", "open"),
        PresenceTuple("ok", "busy"),
        PresenceTuple("ok", None),
        PresenceTuple("ok", "open", show="online"),
        PresenceTuple("ok", "open", "im:a@b", 0.1234),
        PresenceTuple("ok", "open", "im:a@b", 1.5),
        PresenceTuple("ok", "open", None, 0.5),
        PresenceTuple("ok", "open", notes=(Note("bell\x07"),)),
        PresenceTuple("ok", "open", timestamp="now"),
    ],
)
def test_build_refuses_what_pidf_cannot_say(tup: PresenceTuple) -> None:
    with pytest.raises(MappingError):
        build_pidf(entity="pres:a@b", tuples=[tup])


def test_build_refuses_duplicate_ids() -> None:
    with pytest.raises(MappingError):
        build_pidf(entity="pres:a@b", tuples=[PresenceTuple("t", "open")] * 2)


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00").filter(
        lambda c: c in "\t\n\r" or (c >= " " and c not in "\ufffe\uffff")
    ),
    max_size=20,
)
_LANG = st.one_of(st.none(), st.sampled_from(["en", "fr-CA", "de", "zh-Hant"]))
_NOTES = st.lists(st.builds(Note, _TEXT, _LANG), max_size=3).map(tuple)
_URI = st.from_regex(r"(im|pres|sip|xmpp):[a-z0-9._-]{1,8}@[a-z0-9.-]{1,8}", fullmatch=True)
_RESOURCE = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
_STAMP = st.from_regex(
    r"20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\.[0-9]{1,3})?(Z|[+-][01][0-9]:[0-5][0-9])",
    fullmatch=True,
)


@st.composite
def _tuples(draw: st.DrawFn) -> list[PresenceTuple]:
    resources = draw(st.lists(_RESOURCE, max_size=3, unique=True))
    out = []
    for resource in resources:
        basic = draw(st.sampled_from(["open", "closed", None]))
        show = draw(st.one_of(st.none(), st.sampled_from(SHOW_VALUES)))
        if basic is None and show is None:
            basic = "closed"
        contact = draw(st.one_of(st.none(), _URI))
        priority = None
        if contact is not None:
            priority = draw(st.one_of(st.none(), st.integers(-128, 127).map(pidf_priority)))
        out.append(
            PresenceTuple(
                tuple_id_for(resource),
                basic,
                contact,
                priority,
                draw(_NOTES),
                draw(st.one_of(st.none(), _STAMP)),
                show,
            )
        )
    return out


@given(
    _URI,
    _tuples(),
    _NOTES,
    st.lists(st.sampled_from(RPID_ACTIVITIES), max_size=3),
)
def test_parse_of_build_gives_back_the_fields(
    entity: str, tuples: list[PresenceTuple], notes: tuple[Note, ...], activities: list[str]
) -> None:
    built = build_pidf(entity=entity, tuples=tuples, notes=notes, activities=activities)
    parsed = parse_pidf(built.raw, policy=STRICT)
    assert parsed.raw == built.raw
    assert parsed.entity == entity
    assert parsed.tuples == tuple(tuples)
    assert parsed.notes == notes
    assert parsed.activities == tuple(activities)
    assert build_pidf(entity=entity, tuples=tuples, notes=notes, activities=activities) == built


# --- tuple ids and priorities ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "tuple_id"),
    [
        ("balcony", "ID-balcony"),
        ("42", "ID-42"),
        ("laptop_1.x-y", "ID-laptop_1.x-y"),
        ("Gäste", "ID-Gäste"),
        ("a b", "IDx-a_20_b"),
        ("x_y z", "IDx-x_5f_y_20_z"),
        ("phone/1@home", "IDx-phone_2f_1_40_home"),
        ("ns:res", "IDx-ns_3a_res"),
    ],
)
def test_tuple_id_for_resource(resource: str, tuple_id: str) -> None:
    assert tuple_id_for(resource) == tuple_id
    assert is_ncname(tuple_id)
    assert resource_of(tuple_id) == resource


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))
def test_tuple_ids_are_xs_ids_and_reversible(resource: str) -> None:
    tuple_id = tuple_id_for(resource)
    assert is_ncname(tuple_id)
    assert resource_of(tuple_id) == resource


def test_foreign_tuple_ids_are_their_own_resource() -> None:
    for tuple_id in ("t1", "0x7fffedf9dae0", "laptop", "IDx-", "IDx-a_zz_", "ID-"):
        assert resource_of(tuple_id) == tuple_id


def test_priority_scaling_examples() -> None:
    # RFC 3922 §5.1.9: 0 -> 0, 127 -> 1, negative not mapped
    assert pidf_priority(0) == 0.0
    assert pidf_priority(127) == 1.0
    assert pidf_priority(1) == 0.007
    assert pidf_priority(126) == 0.992
    assert pidf_priority(-1) is None
    assert pidf_priority(-128) is None
    assert xmpp_priority(None) == 0
    assert xmpp_priority(0.8) == 102
    with pytest.raises(ValueError, match="outside"):
        pidf_priority(128)
    with pytest.raises(ValueError, match="outside"):
        xmpp_priority(1.5)


@given(st.integers(0, 127))
def test_priority_scaling_round_trips_for_non_negative(priority: int) -> None:
    scaled = pidf_priority(priority)
    assert scaled is not None
    assert 0.0 <= scaled <= 1.0
    assert round(scaled, 3) == scaled
    assert xmpp_priority(scaled) == priority


@given(st.integers(0, 1000))
def test_priority_scaling_is_monotonic_from_pidf(milli: int) -> None:
    q = milli / 1000
    assert 0 <= xmpp_priority(q) <= 127
    if milli:
        assert xmpp_priority((milli - 1) / 1000) <= xmpp_priority(q)


# --- through a real presence server ----------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.e2e
def test_built_pidf_keeps_its_views_through_kamailio_presence(tmp_path: Path) -> None:
    """PUBLISH what build_pidf writes to Kamailio (presence + presence_xml), SUBSCRIBE as a
    watcher, and read the NOTIFY bodies Kamailio re-serialised: the views must be unchanged."""
    entity = "pres:carol@sip.test"
    open_doc = build_pidf(
        entity=entity,
        tuples=[
            PresenceTuple(
                tuple_id_for("desk phone"),
                "open",
                "sip:carol@sip.test",
                pidf_priority(64),
                (Note("Grüße ✓ & <tea>", "de"), Note("tea", "en")),
                "2024-03-05T14:10:00Z",
                "away",
            )
        ],
        notes=[Note("back soon", "en")],
        activities=["meeting"],
    )
    # a second publication (no SIP-If-Match): Kamailio aggregates it with the first (RFC 3903)
    closed_doc = build_pidf(
        entity=entity,
        tuples=[PresenceTuple(tuple_id_for("mobile"), "closed", "sip:carol@sip.test")],
    )
    files = []
    for i, doc in enumerate((open_doc, closed_doc)):
        path = tmp_path / f"pidf{i}.xml"
        path.write_bytes(doc.raw)
        files.append(path)
    with kamailio(
        tmp_path / "kamailio", gateway=f"sip:127.0.0.1:{free_port('udp')};transport=udp"
    ) as server:
        remote = f"127.0.0.1:{server.port}"
        with sipp_uas(
            "subscribe_watcher.xml",
            tmp_path / "watcher",
            name="watcher",
            remote=remote,
            keys={"dest_domain": "sip.test"},
            calls=1,
            extra=["-s", "carol"],
        ) as watcher:

            def notifies() -> list[bytes]:
                return [m for m in watcher.received() if m.startswith(b"NOTIFY ")]

            assert _wait_for(lambda: len(notifies()) >= 1, 15), server.log
            for i, path in enumerate(files):
                run = run_sipp(
                    "publish_presence.xml",
                    tmp_path / f"publisher{i}",
                    remote=remote,
                    service="carol",
                    keys={"body_file": str(path)},
                )
                assert run.returncode == 0, run.output
                assert _wait_for(lambda n=i + 2: len(notifies()) >= n, 15), server.log
            bodies = [m.split(b"\r\n\r\n", 1)[1] for m in notifies()[1:3]]
    first, both = parse_pidf(bodies[0]), parse_pidf(bodies[1])
    assert first.raw != open_doc.raw  # Kamailio re-serialises (double quotes, ...)
    assert first.entity == open_doc.entity
    assert first.tuples == open_doc.tuples
    assert first.notes == open_doc.notes
    assert first.activities == open_doc.activities
    assert first.defects == ()
    assert both.entity == entity
    assert sorted(both.tuples, key=repr) == sorted(open_doc.tuples + closed_doc.tuples, key=repr)
    assert both.basic == "open"
    assert both.defects == ()
