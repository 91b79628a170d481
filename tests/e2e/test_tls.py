"""SIP between cpimgw and Kamailio over TLS both ways, as the operators' guide sets it up:
Kamailio on examples/kamailio.cfg with WITH_TLS, the gateway verifying Kamailio's
certificate (tls_ca_file) and serving its own TLS listener, which Kamailio verifies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canonical import cpim
from tests.e2e.peers import is_message, sip_send, sip_user, statuses, xml_text
from tests.e2e.stack import COMPONENT, XMPP_DOMAIN, Stack, stack
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("e2e-tls"), tls=True) as running:
        yield running


async def test_messages_cross_both_ways_with_tls_between_the_gateway_and_kamailio(
    tls_stack: Stack,
) -> None:
    text = "über TLS ✓"
    async with (
        sip_user(tls_stack, "bob30") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", tls_stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob30@{COMPONENT}' type='chat' id='tls-1'>"
            f"<body>{xml_text(text)}</body></message>"
        )
        got = await bob.messages()
        run = await sip_send(
            tls_stack,
            sender="bob30",
            to="alice",
            content_type="text/plain;charset=UTF-8",
            body="back over TLS ✓\r\n".encode(),
        )
        assert statuses(run) == [202], run.output  # Kamailio reached the TLS listener
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob30@{COMPONENT}"))
    assert len(got) == 1
    assert cpim.parse_body(got[0].body).body.decode() == text
    # Kamailio's Via on top, the gateway's below it: the gateway sent over TLS
    assert [v.transport for v in got[0].vias][1] == "TLS"
    assert stanza["body"] == "back over TLS ✓\n"
