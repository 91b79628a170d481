"""Through Prosody, Kamailio, SIPp and ``cpimgw run``: XMPP users whose JID holds an XEP-0106
escape or whose resource holds a space write to SIP users and hear back (docs/addresses.md
"The XMPP component's address map", docs/mapping/sip.md "Envelope -> MESSAGE").

- ``d\\27artagnan@xmpp.test`` (Prosody's account for the user ``d'artagnan``) writes to a SIP
  user, who receives From ``sip:d'artagnan@xmpp.test`` with the resource as ``gr`` (RFC 7247
  §6.3) and a CPIM From ``im:d'artagnan@xmpp.test``. The SIP user's answer to
  ``sip:d'artagnan@xmpp.test`` reaches the JID: the route's scheme rewrite escapes the
  user into ``xmpp:d\\27artagnan@xmpp.test`` (XEP-0106 §4.2, gateway/routing.py).
- ``alice@xmpp.test/my phone`` writes to a SIP user, who receives ``;gr=my%20phone``, and
  the answer comes back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canonical import cpim
from canonical.address import Address
from tests.e2e.peers import is_message, sip_send, sip_user, statuses
from tests.e2e.stack import COMPONENT, SIP_DOMAIN, XMPP_DOMAIN, XMPP_USERS, Stack, stack
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

DARTAGNAN = f"d\\27artagnan@{XMPP_DOMAIN}"


@pytest.fixture(scope="module")
def escaped_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prosody (with an account whose localpart is escaped) + Kamailio + cpimgw."""
    users = {**XMPP_USERS, "d\\27artagnan": "musketeer-pw"}
    with stack(tmp_path_factory.mktemp("e2e-escaped"), xmpp="prosody", users=users) as running:
        yield running


async def test_escaped_jid_writes_to_sip_as_its_unescaped_user(
    escaped_stack: Stack,
) -> None:
    stack_ = escaped_stack
    async with logged_in(f"{DARTAGNAN}/musket", "musketeer-pw", stack_.c2s_port) as dart:
        async with sip_user(stack_, "planchet") as peer:
            dart.send_raw(
                f"<message to='planchet@{COMPONENT}' type='chat' id='esc-1'>"
                "<body>En garde, Planchet</body></message>"
            )
            got = await peer.messages()
        assert len(got) == 1, (
            f"{DARTAGNAN} did not reach sip:planchet@{SIP_DOMAIN}: {stack_.log()[-3000:]}"
        )
        request = got[0]
        sender = Address.parse(request.from_.uri.text)
        assert str(sender.bare) == f"sip:d'artagnan@{XMPP_DOMAIN}"
        assert sender.gruu == "musket"
        assert sender.jid == f"{DARTAGNAN}/musket"  # the way back gives the same JID
        body = cpim.parse_body(request.body)
        assert body.sender is not None
        assert body.sender.uri == f"im:d'artagnan@{XMPP_DOMAIN}"
        assert body.body.decode() == "En garde, Planchet"


async def test_sip_answer_to_the_unescaped_user_reaches_the_escaped_jid(
    escaped_stack: Stack,
) -> None:
    stack_ = escaped_stack
    async with logged_in(f"{DARTAGNAN}/musket", "musketeer-pw", stack_.c2s_port) as dart:
        run = await sip_send(
            stack_,
            sender="planchet",
            to="d'artagnan",
            content_type="text/plain;charset=UTF-8",
            body=b"A vos ordres\r\n",
            name="planchet-to-dartagnan",
        )
        assert statuses(run) == [202], run.output
        try:
            stanza = await dart.wait_for(
                lambda s: is_message(s, sender=f"planchet@{COMPONENT}"), wait=5.0
            )
        except TimeoutError as exc:
            raise AssertionError(f"no answer: {exc}\n{stack_.log()[-3000:]}") from None
    assert stanza["body"] == "A vos ordres\n"
    assert str(stanza["to"]).split("/", 1)[0] == DARTAGNAN


async def test_resource_with_a_space_becomes_the_percent_encoded_gruu_and_hears_back(
    escaped_stack: Stack,
) -> None:
    stack_ = escaped_stack
    async with logged_in(f"alice@{XMPP_DOMAIN}/my phone", "alicepw", stack_.c2s_port) as alice:
        async with sip_user(stack_, "porthos") as peer:
            alice.send_raw(
                f"<message to='porthos@{COMPONENT}' type='chat' id='space-1'>"
                "<body>from my phone</body></message>"
            )
            got = await peer.messages()
        assert len(got) == 1, f"alice@{XMPP_DOMAIN}/my phone did not reach porthos"
        request = got[0]
        assert request.from_.uri.text == f"sip:alice@{XMPP_DOMAIN};gr=my%20phone"
        assert Address.parse(request.from_.uri.text).jid == f"alice@{XMPP_DOMAIN}/my phone"
        body = cpim.parse_body(request.body)
        assert body.sender is not None
        assert body.sender.uri == f"im:alice@{XMPP_DOMAIN}"

        run = await sip_send(
            stack_,
            sender="porthos",
            to="alice",
            content_type="text/plain;charset=UTF-8",
            body=b"got it\r\n",
            name="porthos-to-alice",
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"porthos@{COMPONENT}"))
    assert stanza["body"] == "got it\n"
