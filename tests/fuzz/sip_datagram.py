"""Fuzz target: a SIP datagram (RFC 3261 §18.3) through ``adapters.sip.codec.parse`` and
the shell's pure steps (:mod:`tests.fuzz.sip_flow`).

Documented errors: ``codec.parse`` raises :class:`ParseError` (module docstring); the
views and the mapping raise ``GatewayError`` subclasses, which the shell answers with a
status. Law: ``bytes(parse(data)) == data`` for every accepted datagram without bytes
past its Content-Length (``adapters.sip.codec`` docstring), less the CRLFs before the
start line, which RFC 3261 §7.5 says to ignore.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from adapters.sip.codec import Limits, parse
from canonical.errors import GatewayError
from tests.fuzz import corpus, sip_flow

ALLOWED = (GatewayError,)
MAX_LEN = 8192
TIGHT = Limits(max_message=4096, max_headers=24, max_line=512, max_head=2048)


def run(data: bytes) -> None:
    with contextlib.suppress(GatewayError):
        parse(data, limits=TIGHT)
    message = parse(data)
    if not any(d.code == "EXCESS_BYTES" for d in message.defects):
        start = 0
        while data.startswith(b"\r\n", start):  # CRLFs before the start line are ignored
            start += 2  # (RFC 3261 §7.5), everything else is kept
        assert bytes(message) == data[start:], "an accepted datagram changed its bytes"
    sip_flow.handle(message)


def seeds() -> Iterator[bytes]:
    for envelope in corpus.envelopes("xmpp:alice@xmpp.example.com", "sip:bob@example.net"):
        try:
            request = sip_flow.MAPPER.from_canonical(envelope).value
        except GatewayError:
            continue
        yield bytes(request)
    yield (
        b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.net>;tag=1\r\nTo: <sip:b@example.net>;tag=2\r\n"
        b"Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n"
    )
    yield (
        b"NOTIFY sip:gw@127.0.0.1:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK2\r\n"
        b"From: <sip:b@example.net>;tag=9\r\nTo: <sip:a@xmpp.example.com>;tag=8\r\n"
        b"Call-ID: n1\r\nCSeq: 3 NOTIFY\r\nEvent: presence\r\n"
        b"Subscription-State: terminated;reason=rejected\r\nMax-Forwards: 70\r\n"
        b"Contact: <sip:b@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    )
