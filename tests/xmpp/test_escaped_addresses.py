"""XEP-0106 §4 escaped local parts on the component: the unescaped text is a whole foreign
address ``user@host``; one without a user or without a host is a malformed JID for the
gateway (answered ``jid-malformed``, RFC 6120 §8.3.3.8), never an address like ``im:a@``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.xmpp.jid import AddressMap
from canonical.address import escape_localpart
from canonical.errors import ParseError

MAP = AddressMap("sip.xmpp.test", {"sip.xmpp.test": "sip:sip.test"}, frozenset({"xmpp.test"}))


@pytest.mark.parametrize("local", ["a\\40", "\\40x", "\\40", "a\\40b\\40"])
def test_escaped_address_without_user_or_host_is_a_malformed_jid(local: str) -> None:
    with pytest.raises(ParseError) as info:
        MAP.to_uri(f"{local}@sip.xmpp.test")
    assert info.value.code == "JID_MALFORMED"
    assert "no user or no host" in str(info.value)
    assert "XEP-0106" in (info.value.hint or "")


part = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)
# RFC 3261 §25.1 hostname: the escaped foreign address is refused when its host is not one
host_name = st.from_regex(
    r"([a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?\.){0,2}[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True
)


@given(part, host_name)
def test_escaped_foreign_address_maps_to_its_im_uri_and_back(user: str, host: str) -> None:
    jid = f"{escape_localpart(f'{user}@{host}')}@sip.xmpp.test"
    assert MAP.to_uri(jid) == f"im:{user}@{host}"
    assert MAP.to_jid(f"im:{user}@{host}") == jid
