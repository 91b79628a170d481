"""Through Prosody and ``cpimgw run``: an XMPP user writing to a malformed address gets
``jid-malformed`` back, and a presence probe is answered with the contact's last known
presence, never with ``unsubscribed``.

- Malformed addresses: a JID that breaks RFC 7622 (a space in the local part) is refused
  by Prosody itself before the component sees it; a JID that is valid XMPP but whose
  XEP-0106 escaped local part is no foreign address (``a\\40@...``: no host, ``\\40x@...``:
  no user) reaches the gateway, which answers ``jid-malformed`` (RFC 6120 §8.3.3.8) with
  its own text, the stanza id kept.
- Probes (RFC 6121 §4.3): the gateway holds a SIP user's presence (published to
  Kamailio by SIPp, subscribed by the XMPP user); a probe becomes a one-time fetch the
  core answers from that state, and the component never answers a probe on its own
  (slixmpp's automatic ``unsubscribed`` is turned off in the adapter).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.peers import sip_publish
from tests.e2e.stack import COMPONENT, XMPP_DOMAIN, Stack
from tests.e2e.test_presence import pidf, presence_from, subscription_answer
from tests.xmpp.test_adapter_e2e import condition
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

#: XEP-0106 escaped local parts that unescape to no foreign address (no host, no user).
NOT_FOREIGN = ("a\\40", "\\40x")


def error_with_id(stanza_id: str):  # type: ignore[no-untyped-def]
    return lambda s: s.name == "message" and s["type"] == "error" and s["id"] == stanza_id


async def test_message_to_a_malformed_address_comes_back_jid_malformed(
    prosody_stack: Stack,
) -> None:
    stack = prosody_stack
    async with logged_in(f"alice@{XMPP_DOMAIN}/jid", "alicepw", stack.c2s_port) as alice:
        for n, local in enumerate(NOT_FOREIGN):
            alice.send_raw(
                f"<message to='{local}@{COMPONENT}' id='bad-{n}' type='chat'>"
                "<body>to nobody</body></message>"
            )
            error = await alice.wait_for(error_with_id(f"bad-{n}"))
            assert condition(error) == "jid-malformed", str(error)
            text = error.xml.findtext(
                "{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}text"
            )
            assert text is not None, str(error)
            assert "JID_MALFORMED" in text  # the gateway's answer, naming what is wrong
            assert "no user or no host" in text, text
            assert str(error["from"]) == f"{local}@{COMPONENT}"

        # a JID RFC 7622 forbids: Prosody answers before the component sees it
        alice.send_raw(
            f"<message to='a b@{COMPONENT}' id='bad-space' type='chat'><body>x</body></message>"
        )
        error = await alice.wait_for(error_with_id("bad-space"))
        assert condition(error) == "jid-malformed", str(error)


async def test_probe_is_answered_with_the_last_known_presence_never_unsubscribed(
    prosody_stack: Stack,
) -> None:
    stack = prosody_stack
    contact = f"bob30@{COMPONENT}"
    publisher = await sip_publish(
        stack,
        "bob30",
        pidf("bob30", "Probe me ✓"),
        pidf("bob30", "Still here ✓"),
        wait_ms=12000,
    )
    await asyncio.sleep(0.5)  # the first PUBLISH is in
    async with logged_in(f"erin@{XMPP_DOMAIN}/probe", "erinpw", stack.c2s_port) as erin:
        erin.send_raw(f"<presence to='{contact}' type='subscribe'/>")
        await erin.wait_for(subscription_answer(contact, "subscribed"))
        await erin.wait_for(presence_from(contact, "Probe me ✓"))
        await asyncio.sleep(1.0)  # what the subscription brought has arrived
        before = len(erin.received)

        erin.send_raw(f"<presence to='{contact}' type='probe' id='probe-1'/>")
        answered = await erin.wait_for(
            lambda s: (
                any(s is r for r in erin.received[before:])
                and presence_from(contact, "Probe me ✓")(s)
            )
        )
        assert answered["from"].resource == "desk"
        await asyncio.sleep(1.0)  # room for a wrong answer to arrive too
        answers = [
            s
            for s in erin.received
            if s.name == "presence" and str(s["from"]).split("/")[0] == contact
        ]
        assert not [s for s in answers if s.xml.get("type") == "unsubscribed"], answers
        erin.send_raw(f"<presence to='{contact}' type='unsubscribe'/>")
    assert "fetch answered from the last known presence" in stack.log(), stack.log()[-3000:]
    run = await publisher
    assert run.returncode == 0, run.output
