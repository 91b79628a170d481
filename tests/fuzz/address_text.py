"""Fuzz target: addresses as they arrive in headers and stanzas: ``Address.parse`` (im:,
pres:, sip:, sips:, xmpp: URIs and bare or full JIDs), ``Address.from_jid``, the XMPP
adapter's ``Jid.parse`` and ``AddressMap.to_uri``, the SIP name-addr reader, and the
gateway's ``split_address`` and routing.

Documented errors (``canonical.address`` docstring): :class:`ParseError` (``ADDRESS_*``,
``JID_*``); the XMPP address map also raises ``RoutingError`` for the component itself;
so ``GatewayError``. Laws (docs/addresses.md): ``Address.parse(str(a)) == a``;
``with_scheme`` gives an address that parses back to itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from adapters.sip import header as hdr
from adapters.xmpp.jid import Jid
from canonical.address import SCHEMES, Address
from canonical.errors import GatewayError
from gateway.routing import Route, RoutingTable, split_address
from tests.fuzz import xmpp_stanza

ALLOWED = (GatewayError,)
MAX_LEN = 2048
TABLE = RoutingTable([Route("example.com", "xmpp"), Route("*.example.net", "sip")])


def _check(address: Address) -> None:
    assert Address.parse(str(address)) == address, f"parse(str(a)) != a for {address!s}"
    for scheme in SCHEMES:
        try:
            other = address.with_scheme(scheme)  # type: ignore[arg-type]
        except GatewayError:
            continue
        assert Address.parse(str(other)) == other, f"{scheme} form {other!s} does not re-parse"
    address.bare  # noqa: B018
    address.domain  # noqa: B018
    address.matches("*.example.com")


def run(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for read in (Address.parse, Address.from_jid):
        with contextlib.suppress(GatewayError):
            _check(read(text))
    for step in (
        lambda: Jid.parse(text),
        lambda: xmpp_stanza.MAPPER.addresses.to_uri(text),
        lambda: hdr.parse_name_addr(text),
        lambda: TABLE.owner(text),
    ):
        with contextlib.suppress(GatewayError):
            step()
    split_address(text)


def seeds() -> Iterator[bytes]:
    for text in (
        "im:alice@example.com",
        "pres:o%27neil@example.com",
        "sip:bob@example.net:5060;transport=tcp;gr=urn:uuid:1?subject=hi",
        "sips:[2001:db8::1]:5061",
        "xmpp:d\\27artagnan@musketeers.lit/phone?message;subject=x",
        "juliet@capulet.lit/balcony",
        "Alice <sip:alice@example.com>;tag=1",
        '"Bob, B." <sip:bob@b\u00fccher.example>',
        "xmpp:b\u00fccher.example",
        "bob\\40example.net@sip.example.com",
    ):
        yield text.encode()
