"""Fuzz target: the HTTP API's requests (the native form of the CPIM-over-HTTP adapter):
HTTP/1.1 request bytes through ``HttpMapper.decode`` and ``HttpMapper.read`` (operation,
transport headers, the object's authors read from a message/cpim, PIDF or signed body),
then the core's security verdict on the envelope (``gateway.security.judge``, which
parses the object again under a ``require`` and a ``verify`` route) and the mappings into
XMPP and SIP.

Documented errors: ``decode`` and ``read`` raise :class:`ParseError`/``MappingError``
(``adapters.cpim.mapping``: "ParseError with the offset"; the shell answers 400/415 with a
problem object); ``judge`` returns a verdict and raises nothing; ``from_canonical`` raises
``GatewayError`` subclasses. So: ``GatewayError`` only, and never from ``judge``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from adapters.contract import AdapterContext, Capability
from adapters.cpim.adapter import CpimHttpAdapter
from canonical.envelope import Origin
from canonical.errors import GatewayError
from gateway.routing import Route, RoutingTable
from gateway.security import Rules, judge
from tests.fuzz import corpus, sip_flow, xmpp_stanza

ALLOWED = (GatewayError,)
MAX_LEN = 8192
MAPPER = CpimHttpAdapter("cpim", CpimHttpAdapter.sample().config, AdapterContext()).mapper
ORIGIN = Origin(adapter="cpim", peer="token:fuzz")
TABLE = RoutingTable(
    [Route("*", "cpim", signatures="require"), Route("example.com", "xmpp", signatures="verify")]
)
RULES = Rules()


def run(data: bytes) -> None:
    request = MAPPER.decode(data)
    MAPPER.error_from_native(request)
    envelope = MAPPER.read(request, origin=ORIGIN, received_at=1.7e9).envelope
    resolution = None
    with contextlib.suppress(GatewayError):
        resolution = TABLE.resolve(envelope.recipient)
    for route in (TABLE.match("example.com"), resolution.route if resolution else None):
        judge(
            envelope,
            rules=RULES,
            routing=TABLE,
            route=route,
            capabilities=frozenset({Capability.MESSAGE}),
            now=1.7e9,
        )
    for mapper in (xmpp_stanza.MAPPER, sip_flow.MAPPER):
        with contextlib.suppress(GatewayError):
            mapper.encode(mapper.from_canonical(envelope).value)  # type: ignore[arg-type]


def seeds() -> Iterator[bytes]:
    for envelope in corpus.envelopes("im:ada@example.com", "im:charles@bots.example.net"):
        yield MAPPER.encode(MAPPER.from_canonical(envelope).value)
    for signed in corpus.signed_objects():
        if not signed.startswith(b"<"):
            head, _, body = signed.partition(b"\r\n\r\n")
            yield (
                b"POST /v1/messages HTTP/1.1\r\nCpimgw-From: im:ada@example.com\r\n"
                b"Cpimgw-To: im:charles@bots.example.net\r\n"
                + head.replace(b"Content-type", b"Content-Type")
                + b"\r\n\r\n"
                + body
            )
