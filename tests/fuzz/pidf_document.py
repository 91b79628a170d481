"""Fuzz target: ``canonical.presence.parse_pidf`` (RFC 3863 with the RPID subset), lenient
and strict, and what the XMPP side does with a PIDF a SIP NOTIFY or the HTTP API brings:
``XmppMapper.from_canonical`` of a NOTIFY envelope (presence stanzas, one per tuple), plus
the tuple-id/resource mapping (RFC 8048 §6.2).

Documented errors: :class:`ParseError` (``parse_pidf`` docstring: ``PIDF_*`` and
``XML_*`` codes) and, from the mapping, ``GatewayError`` subclasses (``Mapper``
contract: MappingError when nothing sensible can be produced). Laws: ``doc.raw == data``;
``resource_of(tuple_id_for(r)) == r`` for every tuple's non-empty resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from adapters.contract import AdapterContext
from adapters.xmpp.adapter import XmppAdapter
from canonical import presence
from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload
from canonical.errors import GatewayError, ParseError
from canonical.policy import Policy
from tests.fuzz import corpus

ALLOWED = (GatewayError,)
MAX_LEN = 8192
STRICT = Policy(strict=True)
_SAMPLE = XmppAdapter.sample()
MAPPER = XmppAdapter("xmpp", _SAMPLE.config, AdapterContext()).mapper


def run(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        presence.parse_pidf(data, policy=STRICT)
    doc = presence.parse_pidf(data)
    assert doc.raw == data
    doc.basic  # noqa: B018
    presence.pick_note(doc.notes, "en")
    for item in doc.tuples:
        resource = presence.resource_of(item.id)
        if resource:  # tuple_id_for refuses an empty resource (XMPP has none)
            assert presence.resource_of(presence.tuple_id_for(resource)) == resource
        doc.tuple_by_id(item.id)
    envelope = Envelope(
        Operation.NOTIFY,
        _SAMPLE.remote,
        _SAMPLE.local,
        Payload(PIDF, data),
        "fuzz",
        Origin(adapter="sip"),
        attributes={"subscription.state": "active"},
    )
    for stanza in MAPPER.stanzas(envelope).value:
        MAPPER.encode(stanza)


def seeds() -> Iterator[bytes]:
    yield from corpus.pidf_documents()
