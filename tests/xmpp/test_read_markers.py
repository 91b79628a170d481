"""XEP-0333 chat markers ``<displayed/>`` <-> RFC 5438 IMDN "displayed" notifications.

Pure mapping both ways and the laws of docs/architecture.md for them: L2 (a native stanza
carrying a marker comes back equal; the generator is test_mapping's ``native_messages``
with a ``<displayed/>`` added), L1 (an IMDN displayed object survives the trip through the
XMPP wire byte for byte), L3 (a signed IMDN displayed object still verifies after it).
Then both directions through a real Prosody with slixmpp clients (``prosody`` fixture)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.xmpp.documents import Notification, build_imdn, read_imdn
from adapters.xmpp.stanza import CARRIAGE_NS
from canonical import cpim, smime
from canonical.envelope import Payload
from tests.pki import make_ca, make_leaf
from tests.servers.prosody import ProsodyServer
from tests.xmpp.test_adapter_e2e import is_message_from, outbound, running
from tests.xmpp.test_mapping import (
    MAPPER,
    NS,
    ORIGIN,
    foreign,
    native_messages,
    stanza,
    through_wire,
    token,
)
from tests.xmpp.users import logged_in

MARKERS = "urn:xmpp:chat-markers:0"
IMDN_TYPE = "message/imdn+xml"


def imdn_object(
    message_id: str, *, status: str = "displayed", form: Literal["body", "entity"] = "body"
) -> bytes:
    """A CPIM object (RFC 3862) carrying an RFC 5438 §7.2.1.2 display notification."""
    note = Notification(message_id, "display", status, "2024-03-05T14:06:00Z")
    return bytes(
        cpim.build(
            sender="sip:ada@sip.test",
            to=["im:alice@xmpp.test"],
            namespaces=[("imdn", "urn:ietf:params:imdn")],
            extensions=[("imdn.Message-ID", "n0tE1d")],
            content_type=IMDN_TYPE,
            entity_headers=[("Content-Disposition", "notification")],
            body=build_imdn(note),
            form=form,
        )
    )


# ---------------------------------------------------------------- XMPP -> canonical
def test_displayed_marker_becomes_imdn_displayed_notification() -> None:
    env = MAPPER.to_canonical(
        stanza(
            "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='d1'>"
            f"<displayed xmlns='{MARKERS}' id='orig-42'/></message>"
        ),
        origin=ORIGIN,
        received_at=1_700_000_000.5,
    ).value
    inner = cpim.parse_body(env.payload.body, strict=True)  # type: ignore[union-attr]
    assert inner.content_type == IMDN_TYPE
    assert [v.strip() for n, v in inner.entity_headers if n.lower() == "content-disposition"] == [
        "notification"
    ]
    note = read_imdn(inner.body)
    assert (note.message_id, note.kind, note.status) == ("orig-42", "display", "displayed")
    assert note.datetime == "2023-11-14T22:13:20.500Z"  # the time it was received, passed in


def test_displayed_marker_next_to_a_receipt_keeps_both() -> None:
    message = stanza(
        "<message from='alice@xmpp.test/r' to='carol@sip.xmpp.test' id='d2'>"
        "<received xmlns='urn:xmpp:receipts' id='orig-1'/>"
        f"<displayed xmlns='{MARKERS}' id='orig-1'/></message>"
    )
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    inner = cpim.parse_body(env.payload.body)  # type: ignore[union-attr]
    assert read_imdn(inner.body).kind == "delivery"  # one IMDN per object: the receipt
    assert b"xmpp.Element: <displayed" in env.payload.body  # type: ignore[union-attr]
    assert MAPPER.equal(through_wire(MAPPER.from_canonical(env).value), message)


# ---------------------------------------------------------------- canonical -> XMPP
@pytest.mark.parametrize("form", ["body", "entity"])
def test_imdn_displayed_becomes_displayed_marker_without_body(
    form: Literal["body", "entity"],
) -> None:
    data = imdn_object("Qz7pLw2xV9kR", form=form)
    payload = (
        Payload("message/cpim", data)
        if form == "body"
        else Payload("message/cpim", cpim.parse(data).to_body())
    )
    out = MAPPER.from_canonical(foreign(payload)).value
    marker = out.find(f"{{{MARKERS}}}displayed")
    assert marker is not None
    assert marker.attrib == {"id": "Qz7pLw2xV9kR"}
    assert out.find(f"{{{NS}}}body") is None  # a marker, not a line of text
    assert out.find("{urn:xmpp:receipts}received") is None


def test_imdn_display_status_other_than_displayed_is_a_readable_line() -> None:
    payload = Payload("message/cpim", imdn_object("Qz7pLw2xV9kR", status="forbidden"))
    out = MAPPER.from_canonical(foreign(payload)).value
    assert out.find(f"{{{MARKERS}}}displayed") is None
    body = out.findtext(f"{{{NS}}}body") or ""
    assert "Qz7pLw2xV9kR" in body
    assert "forbidden" in body


# ---------------------------------------------------------------- L2: native survives
@st.composite
def marked_messages(draw: st.DrawFn) -> ET.Element:
    """test_mapping's native messages, each with a XEP-0333 ``<displayed/>`` marker."""
    message = draw(native_messages())
    ET.SubElement(message, f"{{{MARKERS}}}displayed", {"id": draw(token)})
    return through_wire(message)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(marked_messages())
def test_message_with_displayed_marker_survives_round_trip(message: ET.Element) -> None:
    mapped = MAPPER.to_canonical(message, origin=ORIGIN, received_at=1_700_000_000.25)
    back = MAPPER.from_canonical(mapped.value).value
    assert MAPPER.equal(through_wire(back), message), (MAPPER.encode(message), MAPPER.encode(back))
    assert back.find(f"{{{CARRIAGE_NS}}}cpim") is None  # L2 needs no carriage


@settings(max_examples=100, deadline=None)
@given(token, st.sampled_from(["chat", "normal", None]))
def test_lone_displayed_marker_survives_round_trip_as_imdn(marked: str, kind: str | None) -> None:
    attrs = {"from": "alice@xmpp.test/phone", "to": "carol@sip.xmpp.test", "id": "m-" + marked}
    if kind is not None:
        attrs["type"] = kind
    message = ET.Element(f"{{{NS}}}message", attrs)
    ET.SubElement(message, f"{{{MARKERS}}}displayed", {"id": marked})
    message = through_wire(message)
    env = MAPPER.to_canonical(message, origin=ORIGIN, received_at=0).value
    inner = cpim.parse_body(env.payload.body)  # type: ignore[union-attr]
    assert read_imdn(inner.body).message_id == marked  # it really took the IMDN path
    back = MAPPER.from_canonical(env).value
    assert MAPPER.equal(through_wire(back), message), (MAPPER.encode(message), MAPPER.encode(back))


# ---------------------------------------------------------------- L1 and L3: canonical survives
@settings(max_examples=100, deadline=None)
@given(token)
def test_imdn_displayed_object_survives_trip_through_the_wire(marked: str) -> None:
    payload = Payload("message/cpim", imdn_object(marked))
    out = MAPPER.from_canonical(foreign(payload).hop("gw-a")).value
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload == payload
    assert back.trace == ("gw-a",)


def test_signed_imdn_displayed_still_verifies_after_crossing() -> None:
    ca = make_ca()
    signer = make_leaf(ca, "ada", uris=("sip:ada@sip.test",))
    payload = smime.sign(imdn_object("Qz7pLw2xV9kR", form="entity"), signer.cert, signer.key)
    out = MAPPER.from_canonical(foreign(payload)).value
    back = MAPPER.to_canonical(through_wire(out), origin=ORIGIN, received_at=0).value
    assert back.payload == payload
    result = smime.verify(back.payload, [ca.cert], now=dt.datetime.now(dt.UTC))
    assert result.valid, result.error


# ---------------------------------------------------------------- through a real Prosody
@pytest.mark.e2e
async def test_marker_from_client_reaches_canonical_as_imdn_displayed(
    prosody: ProsodyServer,
) -> None:
    async with (
        running(prosody) as (_adapter, recorder),
        logged_in("alice@xmpp.test/read", "alicepw", prosody.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob@{prosody.component}' id='mk-1' type='chat'>"
            f"<displayed xmlns='{MARKERS}' id='seen-77'/></message>"
        )
        (env,) = await recorder.wait()
    assert env.sender == "xmpp:alice@xmpp.test/read"
    assert env.recipient == "sip:bob@sip.test"
    inner = cpim.parse_body(env.payload.body, strict=True)  # type: ignore[union-attr]
    assert inner.content_type == IMDN_TYPE
    note = read_imdn(inner.body)
    assert (note.message_id, note.kind, note.status) == ("seen-77", "display", "displayed")


@pytest.mark.e2e
async def test_imdn_displayed_reaches_client_as_marker(prosody: ProsodyServer) -> None:
    payload = Payload("message/cpim", imdn_object("Qz7pLw2xV9kR"))
    async with (
        running(prosody) as (adapter, _),
        logged_in("alice@xmpp.test/marks", "alicepw", prosody.c2s_port) as alice,
    ):
        await adapter.send(outbound(payload, n=33))
        got = await alice.wait_for(is_message_from(prosody.component))
    marker = got.xml.find(f"{{{MARKERS}}}displayed")
    assert marker is not None, str(got)
    assert marker.get("id") == "Qz7pLw2xV9kR"
    assert got.xml.find("{jabber:client}body") is None, str(got)
