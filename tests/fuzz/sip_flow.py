"""What the SIP shell does with one parsed message before any I/O, as pure calls: the
endpoint's Via handling and transaction key, the UAS checks, the response checks, and
the mapping of MESSAGE/SUBSCRIBE/NOTIFY into envelopes (``adapters.sip.endpoint``
``_on_request``/``_on_response``, ``adapters.sip.adapter`` ``_handle``).

The shells catch :class:`~canonical.errors.GatewayError` around these steps and answer
with a status; any other exception would become a 500 (or a failed callback), so the SIP
harnesses allow ``GatewayError`` (``ParseError``, ``MappingError`` ...) and nothing else.
"""

from __future__ import annotations

import contextlib

from adapters.contract import AdapterContext
from adapters.sip.adapter import SipAdapter
from adapters.sip.codec import Message, Request, Response
from adapters.sip.endpoint import response_destination, stamp_via
from adapters.sip.mapping import SipMapper, delivery_error
from adapters.sip.transaction import client_key, server_key
from adapters.sip.transport import Peer
from adapters.sip.validation import KNOWN_METHODS, check_request, check_response
from canonical.envelope import Origin
from canonical.errors import ParseError

_ADAPTER = SipAdapter("sip", SipAdapter.sample().config, AdapterContext(gateway_id="gw-fuzz"))
MAPPER: SipMapper = _ADAPTER.mapper
PEER = Peer("UDP", "127.0.0.1", 5060)
ORIGIN = Origin(adapter="sip", peer=str(PEER))


def views(message: Message) -> None:
    """Every header view the shell and the mapping read."""
    for read in (
        lambda: message.call_id,
        lambda: message.cseq,
        lambda: message.from_,
        lambda: message.to,
        lambda: message.vias,
        lambda: message.content_type,
        lambda: message.max_forwards,
        lambda: message.expires,
        lambda: message.event,
        lambda: message.subscription_state,
        lambda: message.contact,
        lambda: message.record_routes,
    ):
        with contextlib.suppress(ParseError):
            read()


def handle(message: Message) -> None:
    """The shell's pure steps for one message (raises only GatewayError)."""
    views(message)
    if isinstance(message, Response):
        if check_response(message) is None:
            client_key(message)
            if message.status >= 300:
                delivery_error(message, target="sip:fuzz@example.net")
        return
    assert isinstance(message, Request)
    via = message.top_via
    request = stamp_via(message, via, PEER)
    server_key(request)
    response_destination(request, PEER)
    if check_request(request, methods=frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY"})) is not None:
        return
    if request.method in ("MESSAGE", "SUBSCRIBE", "NOTIFY"):
        mapped = MAPPER.to_canonical(request, origin=ORIGIN, received_at=1.7e9)
        assert mapped.value.identity
    elif request.method not in KNOWN_METHODS:
        return
