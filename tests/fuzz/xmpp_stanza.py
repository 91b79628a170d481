"""Fuzz target: XMPP stanza intake. Stanza XML as it arrives on the component stream goes
through the mapper's wire decoding (``XmppMapper.decode``: the bounded, DTD-free parser,
read in a stream whose default namespace is the component's) and ``to_canonical``; an
accepted message then goes on as the core would send it: to SIP and to the HTTP API
(``from_canonical`` of both), and back into XMPP for law L1.

Documented errors: ``decode`` raises :class:`ParseError` (``Mapper`` contract: "ParseError
on malformed input"); ``to_canonical``/``from_canonical`` raise ``GatewayError``
subclasses (ParseError, MappingError, RoutingError), which the component answers with an
error stanza (``XmppAdapter._handle_inbound``). Law L1 (docs/architecture.md): the
payload of an accepted message survives XMPP carriage byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter
from adapters.xmpp.adapter import XmppAdapter
from canonical.envelope import Operation, Origin
from canonical.errors import GatewayError, ParseError
from tests.fuzz import corpus, sip_flow

ALLOWED = (GatewayError,)
MAX_LEN = 8192
_SAMPLE = XmppAdapter.sample()
MAPPER = XmppAdapter("xmpp", _SAMPLE.config, AdapterContext()).mapper
HTTP = CpimHttpAdapter("cpim", CpimHttpAdapter.sample().config, AdapterContext()).mapper
ORIGIN = Origin(adapter="xmpp", peer="sip.example.com")


def run(data: bytes) -> None:
    stanza = MAPPER.decode(data)
    MAPPER.error_from_native(stanza)
    envelope = MAPPER.to_canonical(stanza, origin=ORIGIN, received_at=1.7e9).value
    for mapper in (sip_flow.MAPPER, HTTP):
        try:
            native = mapper.from_canonical(envelope).value
            mapper.encode(native)  # type: ignore[arg-type]
        except GatewayError:
            pass
    if envelope.operation is not Operation.MESSAGE or envelope.payload is None:
        return
    inbound = envelope.replace(sender=_SAMPLE.remote, recipient=_SAMPLE.local)
    try:
        out = MAPPER.from_canonical(inbound).value
    except GatewayError:
        return
    wire = MAPPER.encode(out)
    again = MAPPER.to_canonical(MAPPER.decode(wire), origin=ORIGIN, received_at=1.7e9)
    assert again.value.payload == envelope.payload, "L1: the payload changed through XMPP"


def seeds() -> Iterator[bytes]:
    for envelope in corpus.envelopes(_SAMPLE.remote, _SAMPLE.local):
        try:
            stanzas = MAPPER.stanzas(envelope).value
        except (GatewayError, ParseError):
            continue
        for stanza in stanzas:
            yield MAPPER.encode(stanza)
    yield (
        b"<message from='charles@xmpp.example.com/phone' to='ada@sip.example.com' "
        b"type='chat' id='m1'><body>hi</body><subject xml:lang='fr'>s</subject>"
        b"<thread>t</thread><composing xmlns='http://jabber.org/protocol/chatstates'/>"
        b"<request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='o1'/>"
        b"<trace xmlns='urn:cpimgw:trace:0'><hop by='gw1'/></trace>"
        b"<hops xmlns='urn:cpimgw:trace:0' left='5'/></message>"
    )
    yield (
        b"<presence from='charles@xmpp.example.com/phone' to='ada@sip.example.com'>"
        b"<show>away</show><status xml:lang='en'>out</status><priority>5</priority></presence>"
    )
    yield b"<presence from='charles@xmpp.example.com' to='ada@sip.example.com' type='subscribe'/>"
    yield b"<presence from='charles@xmpp.example.com' to='ada@sip.example.com' type='probe'/>"
    yield (
        b"<message from='charles@xmpp.example.com/x' to='ada@sip.example.com' type='error' id='e'>"
        b"<error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"</error></message>"
    )
    for signed in corpus.signed_objects():
        if signed.startswith(b"<"):
            yield signed
