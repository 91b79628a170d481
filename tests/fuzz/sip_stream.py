"""Fuzz target: a SIP byte stream (TCP/TLS, RFC 3261 §18.3) cut into messages by
``adapters.sip.codec.StreamFramer``, delivered in chunks the fuzzer chooses, then each
message through the shell's pure steps (:mod:`tests.fuzz.sip_flow`).

Documented errors: the framer raises :class:`ParseError` (fatal for the connection, the
shell closes it); the rest as for ``sip_datagram``. Laws: each framed message keeps its
bytes, and the framer never holds more than ``max_head`` + ``max_message`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import atheris

from adapters.sip.codec import Limits, StreamFramer
from canonical.errors import GatewayError
from tests.fuzz import sip_datagram, sip_flow

ALLOWED = (GatewayError,)
MAX_LEN = 16384
LIMITS = Limits(max_message=4096, max_headers=32, max_line=1024, max_head=2048)


def run(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    sizes = [provider.ConsumeIntInRange(1, 512) for _ in range(provider.ConsumeIntInRange(1, 8))]
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    framer = StreamFramer(LIMITS)
    at = 0
    k = 0
    while at < len(stream):
        chunk = stream[at : at + sizes[k % len(sizes)]]
        at += len(chunk)
        k += 1
        for message in framer.feed(chunk):
            assert bytes(message) in stream, "a framed message changed its bytes"
            sip_flow.handle(message)
        assert framer.pending <= LIMITS.max_head + LIMITS.max_message + 512, (
            f"framer holds {framer.pending} bytes"
        )


def seeds() -> Iterator[bytes]:
    for message in sip_datagram.seeds():
        yield b"\x40\x00\x01" + message + b"\r\n\r\n" + message
