"""The shell's own steps without a server: how stanzas reach the mapping, the inbound size
check, and what send() refuses before anything is queued. (Against a real Prosody:
test_adapter_e2e.py.)"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from pydantic import SecretStr

from adapters.contract import AdapterContext
from adapters.xmpp.adapter import XmppAdapter, XmppConfig, _Component
from adapters.xmpp.stanza import COMPONENT_NS, serialize, wire_size
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import MappingError

CONFIG = XmppConfig(
    component="sip.xmpp.test",
    secret=SecretStr("s"),
    domain_map={"sip.xmpp.test": "sip:sip.test"},
    domains=["xmpp.test"],
)
NS = COMPONENT_NS


def message(body: str) -> ET.Element:
    stanza = ET.Element(
        f"{{{NS}}}message", {"from": "alice@xmpp.test/r", "to": "bob@sip.xmpp.test", "id": "m1"}
    )
    ET.SubElement(stanza, f"{{{NS}}}body").text = body
    return stanza


def test_component_hands_stanzas_to_the_adapter_as_parsed() -> None:
    got: list[ET.Element] = []
    component = _Component(CONFIG, got.append)
    stanzas = [message("hi"), ET.Element(f"{{{NS}}}presence"), ET.Element(f"{{{NS}}}iq")]
    for stanza in stanzas:
        component._spawn_event(stanza)
    assert [id(s) for s in got] == [id(s) for s in stanzas]


def test_stream_elements_still_take_slixmpps_way() -> None:
    got: list[ET.Element] = []
    component = _Component(CONFIG, got.append)
    component._spawn_event(ET.Element(f"{{{NS}}}handshake"))
    assert got == []


@pytest.mark.parametrize("body", ["hi", "Grüße ✓" * 50, "a & b < c\r\n"])
def test_size_check_counts_no_more_than_the_wire_holds(body: str) -> None:
    stanza = message(body)
    stanza.tail = "\n" * 5000  # whitespace between stanzas in the stream
    size = wire_size(stanza)
    assert len(body) < size <= len(serialize(stanza))


def test_oversized_stanza_is_refused_before_mapping() -> None:
    adapter = XmppAdapter(
        "xmpp", CONFIG.model_copy(update={"max_stanza_size": 1024}), AdapterContext()
    )
    written: list[ET.Element] = []
    adapter._write = written.append  # type: ignore[method-assign,assignment]
    assert adapter._map_inbound(message("x" * 2000)) is None
    assert written[0].get("type") == "error"
    assert (
        written[0].find(
            "{jabber:component:accept}error/{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation"
        )
        is not None
    )
    envelope = adapter._map_inbound(message("x" * 500))
    assert envelope is not None
    assert envelope.sender == "xmpp:alice@xmpp.test/r"


async def test_send_refuses_what_xml_cannot_carry_and_queues_nothing() -> None:
    adapter = XmppAdapter("xmpp", CONFIG, AdapterContext())
    with pytest.raises(MappingError):
        adapter._queue([message("bell \x07")])
    assert adapter._outbound == []
    envelope = Envelope(
        Operation.MESSAGE,
        "sip:ada@sip.test",
        "xmpp:alice@xmpp.test",
        Payload("text/plain", b"fine"),
        "0" * 32,
        Origin("sip"),
    )
    item = adapter._queue(adapter.mapper.stanzas(envelope).value)
    assert item.wire.startswith(b"<message ")
    assert adapter._outbound == [item]
