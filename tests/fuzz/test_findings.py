"""What the fuzzers found, each pinned as the behaviour it has since the fix (the inputs
themselves are replayed from ``tests/fuzz/regressions/`` by ``test_fuzz.py``)."""

from __future__ import annotations

import pytest

from adapters.contract import AdapterContext
from adapters.xmpp.adapter import XmppAdapter
from canonical.envelope import Origin
from canonical.errors import ParseError, Reason

XMPP = XmppAdapter("xmpp", XmppAdapter.sample().config, AdapterContext()).mapper


def test_xmpp_subject_whose_lang_is_not_a_language_tag_travels_as_an_element() -> None:
    # xmpp_stanza: <subject xml:lang='en_US'> made cpim.build raise ValueError, which the
    # component only logged ("inbound stanza failed"): the sender got no answer at all.
    stanza = XMPP.decode(
        b"<message from='ada@xmpp.example.com/pc' to='bob@sip.example.com' type='chat' "
        b"id='m1'><subject xml:lang='en_US'>hello</subject><body>x</body></message>"
    )
    mapped = XMPP.to_canonical(stanza, origin=Origin(adapter="xmpp"), received_at=0.0)
    assert mapped.value.payload is not None
    assert b"xmpp.Element" in mapped.value.payload.body
    assert b";lang=" not in mapped.value.payload.body
    back = XMPP.from_canonical(mapped.value).value
    assert XMPP.equal(back, stanza)  # law L2 holds for it


def test_xmpp_stanza_whose_address_cannot_be_a_cpim_uri_is_refused_as_bad_request() -> None:
    # xmpp_stanza: a JID domain with '|' made cpim.build raise ValueError (not a URI), which
    # the component only logged; it is now a ParseError the sender gets as an error stanza.
    stanza = XMPP.decode(
        b"<message from='ada@xmpp.example.com/pc' to='bob@sip.e|xample.com' type='chat' "
        b"id='m2'><body>hi</body></message>"
    )
    with pytest.raises(ParseError) as caught:
        XMPP.to_canonical(stanza, origin=Origin(adapter="xmpp"), received_at=0.0)
    assert caught.value.code == "STANZA_UNMAPPABLE"
    assert caught.value.reason is Reason.BAD_REQUEST
