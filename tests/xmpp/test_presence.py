"""Pure presence and subscription mapping tests (RFC 8048 §5-7, RFC 3922 §5-6): tuple ids
and resources, what comes back, and a recorded loss for everything XMPP cannot carry."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.xmpp.jid import AddressMap
from adapters.xmpp.mapping import XmppMapper
from adapters.xmpp.presence import DELAY_NS
from adapters.xmpp.stanza import COMPONENT_NS, XML_LANG
from canonical import presence as pidf
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload
from canonical.errors import Loss

MAPPER = XmppMapper(
    AddressMap("sip.xmpp.test", {"sip.xmpp.test": "sip:sip.test"}, frozenset({"xmpp.test"}))
)
NS = COMPONENT_NS
ORIGIN = Origin("xmpp")


def through_wire(element: ET.Element) -> ET.Element:
    return MAPPER.decode(MAPPER.encode(element))


def notify(document: bytes, sender: str = "sip:dave@sip.test") -> Envelope:
    return Envelope(
        Operation.NOTIFY,
        sender,
        "xmpp:alice@xmpp.test",
        Payload(PIDF, document),
        "0123456789abcdef0123456789abcdef",
        Origin("sip"),
        attributes={"subscription.state": "active"},
    )


def pidf_doc(*tuples: str, extra: str = "", entity: str = "pres:dave@sip.test") -> bytes:
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        "<presence xmlns='urn:ietf:params:xml:ns:pidf'"
        " xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model'"
        f" xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='{entity}'>"
        + "".join(tuples)
        + extra
        + "</presence>"
    ).encode()


def tuple_xml(tuple_id: str, inner: str = "<status><basic>open</basic></status>") -> str:
    return f"<tuple id='{tuple_id}'>{inner}</tuple>"


def trip(envelope: Envelope) -> tuple[list[ET.Element], tuple[Loss, ...], pidf.PresenceDocument]:
    """NOTIFY -> stanzas -> wire -> canonical: the stanzas, the losses, the first PIDF back."""
    mapped = MAPPER.stanzas(envelope)
    stanzas = [through_wire(s) for s in mapped.value]
    back = MAPPER.to_canonical(stanzas[0], origin=ORIGIN, received_at=0).value
    assert back.payload is not None
    return stanzas, mapped.losses, pidf.parse_pidf(back.payload.body)


# ---------------------------------------------------------------- tuple ids and resources
@pytest.mark.parametrize("tuple_id", ["phone", "ID-phone", "IDx-desk_20_phone", "t1", "a.b-c"])
def test_foreign_tuple_id_becomes_the_resource_and_comes_back(tuple_id: str) -> None:
    stanzas, losses, back = trip(notify(pidf_doc(tuple_xml(tuple_id))))
    assert stanzas[0].get("from") == f"dave@sip.xmpp.test/{tuple_id}"
    assert back.tuples[0].id == tuple_id
    assert losses == ()


@pytest.mark.parametrize(
    ("resource", "tuple_id"),
    [
        ("phone", "ID-phone"),
        ("x y", "IDx-x_20_y"),
        ("42", "ID-42"),
        ("a_b", "ID-a_b"),
        ("a b_c", "IDx-a_20_b_5f_c"),
    ],
)
def test_xmpp_user_resource_becomes_an_id_tuple_and_comes_back(
    resource: str, tuple_id: str
) -> None:
    stanza = MAPPER.decode(
        f"<presence from='alice@xmpp.test/{resource}' to='dave@sip.xmpp.test'/>".encode()
    )
    env = MAPPER.to_canonical(stanza, origin=ORIGIN, received_at=0).value
    assert env.payload is not None
    assert pidf.parse_pidf(env.payload.body).tuples[0].id == tuple_id
    again = through_wire(MAPPER.from_canonical(env).value)
    assert again.get("from") == f"alice@xmpp.test/{resource}"


def test_presence_without_resource_comes_back_without_one() -> None:
    stanza = MAPPER.decode(b"<presence from='dave@sip.xmpp.test' to='alice@xmpp.test'/>")
    env = MAPPER.to_canonical(stanza, origin=ORIGIN, received_at=0).value
    again = through_wire(MAPPER.from_canonical(env).value)
    assert again.get("from") == "dave@sip.xmpp.test"


# ---------------------------------------------------------------- L2 for presence
status_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=30,
)


@st.composite
def native_presences(draw: st.DrawFn) -> ET.Element:
    resource = draw(st.sampled_from(["phone", "x y", "42", "a_b", "ID-x"]))
    attrs = {"from": f"alice@xmpp.test/{resource}", "to": "dave@sip.xmpp.test"}
    if draw(st.booleans()):
        attrs["id"] = draw(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True))
    if draw(st.booleans()):
        attrs["type"] = "unavailable"
    el = ET.Element(f"{{{NS}}}presence", attrs)
    if draw(st.booleans()):
        ET.SubElement(el, f"{{{NS}}}show").text = draw(st.sampled_from(pidf.SHOW_VALUES))
    for lang in draw(st.lists(st.sampled_from([None, "en", "fr"]), max_size=3, unique=True)):
        status = ET.SubElement(el, f"{{{NS}}}status")
        if lang:
            status.set(XML_LANG, lang)
        status.text = draw(status_text)
    if draw(st.booleans()):
        ET.SubElement(el, f"{{{NS}}}priority").text = str(draw(st.integers(0, 127)))
    if draw(st.booleans()):
        ET.SubElement(el, f"{{{DELAY_NS}}}delay", {"stamp": "2024-03-05T17:00:00.123Z"})
    return through_wire(el)


@settings(max_examples=100, deadline=None)
@given(native_presences())
def test_native_presence_survives_round_trip(stanza: ET.Element) -> None:
    mapped = MAPPER.to_canonical(stanza, origin=ORIGIN, received_at=0)
    assert mapped.losses == ()
    back = MAPPER.from_canonical(mapped.value)
    assert back.losses == ()
    assert MAPPER.equal(through_wire(back.value), stanza)


# ---------------------------------------------------------------- fields and their losses
def test_show_notes_priority_and_timestamp_come_back() -> None:
    inner = (
        "<status><basic>open</basic><show xmlns='jabber:client'>away</show></status>"
        "<contact priority='0.503'>sip:dave@sip.test</contact>"
        "<note xml:lang='en'>In the lab</note><note xml:lang='fr'>Au labo</note>"
        "<timestamp>2024-03-05T17:00:00Z</timestamp>"
    )
    stanzas, losses, back = trip(notify(pidf_doc(tuple_xml("desk", inner))))
    assert losses == ()
    assert stanzas[0].findtext(f"{{{NS}}}priority") == "64"
    assert stanzas[0].find(f"{{{DELAY_NS}}}delay").get("stamp") == "2024-03-05T17:00:00Z"  # type: ignore[union-attr]
    item = back.tuples[0]
    assert (item.show, item.priority, item.timestamp) == ("away", 0.503, "2024-03-05T17:00:00Z")
    assert item.contact == "sip:dave@sip.test"
    assert item.notes == (pidf.Note("In the lab", "en"), pidf.Note("Au labo", "fr"))


def test_priority_xmpp_cannot_express_is_a_recorded_loss() -> None:
    inner = (
        "<status><basic>open</basic></status><contact priority='0.5'>sip:dave@sip.test</contact>"
    )
    _, losses, back = trip(notify(pidf_doc(tuple_xml("desk", inner))))
    assert back.tuples[0].priority == 0.503
    assert [loss.field for loss in losses] == ["pidf/contact/@priority"]


def test_rpid_busy_shows_as_dnd_and_its_loss_is_recorded() -> None:
    person = "<dm:person id='p'><rpid:activities><rpid:busy/></rpid:activities></dm:person>"
    stanzas, losses, back = trip(notify(pidf_doc(tuple_xml("desk"), extra=person)))
    assert stanzas[0].findtext(f"{{{NS}}}show") == "dnd"
    assert back.activities == ()
    assert [loss.field for loss in losses] == ["pidf/activities"]


def test_presence_level_note_is_shown_and_its_loss_recorded() -> None:
    doc = pidf_doc(tuple_xml("desk"), extra="<note>Working from home</note>")
    stanzas, losses, back = trip(notify(doc))
    assert stanzas[0].findtext(f"{{{NS}}}status") == "Working from home"
    assert back.tuples[0].notes == (pidf.Note("Working from home"),)
    assert [loss.field for loss in losses] == ["pidf/note"]


def test_unknown_pidf_extension_is_a_recorded_loss() -> None:
    inner = (
        "<status><basic>open</basic><ex:mood xmlns:ex='urn:example:mood'>calm</ex:mood></status>"
    )
    _, losses, _ = trip(notify(pidf_doc(tuple_xml("desk", inner))))
    assert losses == (
        Loss("pidf/extension", "<{urn:example:mood}mood> has no XMPP presence form; not carried"),
    )


def test_every_tuple_becomes_a_stanza_of_its_own() -> None:
    closed = "<status><basic>closed</basic></status>"
    mapped = MAPPER.stanzas(notify(pidf_doc(tuple_xml("phone"), tuple_xml("laptop", closed))))
    assert [(s.get("from"), s.get("type")) for s in mapped.value] == [
        ("dave@sip.xmpp.test/phone", None),
        ("dave@sip.xmpp.test/laptop", "unavailable"),
    ]
    assert len({s.get("id") for s in mapped.value}) == 2
    assert mapped.losses == ()


# ---------------------------------------------------------------- subscriptions
def subscription(operation: Operation, **fields: object) -> Envelope:
    return Envelope(
        operation,
        "sip:dave@sip.test",
        "xmpp:alice@xmpp.test",
        None,
        "0123456789abcdef0123456789abcdef",
        Origin("sip"),
        **fields,  # type: ignore[arg-type]
    )


def test_subscription_duration_xmpp_has_no_place_for_is_a_recorded_loss() -> None:
    mapped = MAPPER.from_canonical(subscription(Operation.SUBSCRIBE, duration=3600))
    assert mapped.value.get("type") == "subscribe"
    assert [loss.field for loss in mapped.losses] == ["subscription/duration"]
    back = MAPPER.to_canonical(through_wire(mapped.value), origin=ORIGIN, received_at=0).value
    assert (back.operation, back.duration) == (Operation.SUBSCRIBE, None)


@pytest.mark.parametrize(
    ("fields", "kind", "duration"),
    [({"duration": None}, "subscribe", None), ({"duration": 0}, "probe", 0)],
)
def test_until_cancelled_and_probe_subscriptions_lose_nothing(
    fields: dict[str, object], kind: str, duration: int | None
) -> None:
    mapped = MAPPER.from_canonical(subscription(Operation.SUBSCRIBE, **fields))
    assert (mapped.value.get("type"), mapped.losses) == (kind, ())
    back = MAPPER.to_canonical(through_wire(mapped.value), origin=ORIGIN, received_at=0).value
    assert back.duration == duration
