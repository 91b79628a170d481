"""Presence crosses both ways through ``cpimgw run``: an XMPP user on Prosody subscribes to
a SIP user whose presence Kamailio's presence server holds (SIPp publishes it), and a SIP
user (SIPp) subscribes to an XMPP user; each side sees the other's state and its updates."""

from __future__ import annotations

import asyncio

import pytest

from adapters.sip.codec import Request
from canonical.presence import parse_pidf
from tests.e2e.peers import requests, sip_publish, sip_watch
from tests.e2e.stack import COMPONENT, SIP_DOMAIN, XMPP_DOMAIN, Stack
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


def pidf(user: str, note: str, basic: str = "open") -> bytes:
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<presence xmlns='urn:ietf:params:xml:ns:pidf' "
        f"entity='sip:{user}@{SIP_DOMAIN}'><tuple id='desk'><status><basic>{basic}</basic>"
        f"</status><note xml:lang='en'>{note}</note></tuple></presence>"
    ).encode()


def presence_from(user: str, status: str | None = None):  # type: ignore[no-untyped-def]
    def match(stanza) -> bool:  # type: ignore[no-untyped-def]
        if stanza.name != "presence" or str(stanza["from"]).split("/")[0] != user:
            return False
        if stanza.xml.get("type") not in (None, "available"):
            return False
        return status is None or stanza["status"] == status

    return match


def subscription_answer(user: str, kind: str):  # type: ignore[no-untyped-def]
    def match(stanza) -> bool:  # type: ignore[no-untyped-def]
        return (
            stanza.name == "presence"
            and str(stanza["from"]).split("/")[0] == user
            and stanza.xml.get("type") == kind
        )

    return match


async def test_xmpp_user_sees_a_sip_users_presence_and_its_update(prosody_stack: Stack) -> None:
    stack = prosody_stack
    contact = f"bob20@{COMPONENT}"
    publisher = await sip_publish(
        stack,
        "bob20",
        pidf("bob20", "In the office ✓"),
        pidf("bob20", "Gone fishing 🎣"),
        wait_ms=8000,  # the first presence must cross before the update, on a loaded machine too
    )
    await asyncio.sleep(0.5)  # the first PUBLISH is in
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        alice.send_raw(f"<presence to='{contact}' type='subscribe'/>")
        await alice.wait_for(subscription_answer(contact, "subscribed"))
        first = await alice.wait_for(presence_from(contact, "In the office ✓"))
        update = await alice.wait_for(presence_from(contact, "Gone fishing 🎣"), wait=15)
        alice.send_raw(f"<presence to='{contact}' type='unsubscribe'/>")
    run = await publisher
    assert run.returncode == 0, run.output
    assert first["from"].resource == update["from"].resource == "desk"


async def test_sip_user_sees_an_xmpp_users_presence_and_its_update(prosody_stack: Stack) -> None:
    stack = prosody_stack
    watcher = f"dave@{COMPONENT}"
    async with logged_in(f"carol@{XMPP_DOMAIN}", "carolpw", stack.c2s_port) as carol:
        carol.send_raw("<presence><status>At my desk ✓</status></presence>")
        watching = sip_watch(stack, "dave", "carol")
        await carol.wait_for(subscription_answer(watcher, "subscribe"), wait=15)
        carol.send_raw(f"<presence to='{watcher}' type='subscribed'/>")
        await asyncio.sleep(1.0)
        carol.send_raw("<presence><show>away</show><status>Out to lunch ☕</status></presence>")
        run = await watching
    assert run.returncode == 0, run.output
    notifies: list[Request] = requests(run.received(), "NOTIFY")
    states = [(n.get("Subscription-State") or "").split(";")[0] for n in notifies]
    assert states[0] == "pending"  # RFC 6665 §4.2.1: at once, before carol answered
    assert "active" in states
    assert states[-1] == "terminated"  # after the watcher's unsubscribe
    notes = []
    for notify in notifies:
        if notify.body:
            document = parse_pidf(notify.body)
            assert document.entity.endswith(f"carol@{XMPP_DOMAIN}")
            notes.append([n.text for t in document.tuples for n in t.notes])
    assert ["At my desk ✓"] in notes
    assert ["Out to lunch ☕"] in notes
    assert notes.index(["At my desk ✓"]) < notes.index(["Out to lunch ☕"])
