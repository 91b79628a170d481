"""Nobody sends as someone else, through ``cpimgw run`` with a real Prosody and Kamailio and
the HTTP API (``fault_stack`` of ``tests/e2e/stack.py``).

- a SIP user writing with a From in the XMPP domain (``sip:mallory@xmpp.test``) is refused
  by the gateway's anti-spoofing (the routing table says ``xmpp.test`` belongs to the XMPP
  adapter): 403 at the SIP sender, nothing reaches the XMPP user;
- an XMPP user cannot claim a SIP user's address: a stanza with a forged ``from`` never
  reaches the gateway (Prosody stamps or refuses ``from``, RFC 6120 §8.1.2.1); and a CPIM
  object inside the carriage element naming a SIP user as its From is refused (the CPIM
  From must name the sender the network authenticated); the same for a SIP user's object;
- an HTTP client sends only as the addresses its token covers, in the ``Cpimgw-From``
  header and in the object's own From.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from adapters.contract import Capability
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import Reason
from gateway.routing import Route, RoutingTable
from gateway.security import Rules, judge
from tests.e2e.stack import (
    API_BOT,
    API_TOKEN,
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    Stack,
    fault_stack,
    sip_ua,
)
from tests.xmpp.users import User, logged_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fault_stack(tmp_path_factory.mktemp("spoofing"), xmpp_users=("alice", "mallory")) as s:
        yield s


def cpim_body(sender: str, recipient: str, text: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


def bodies(user: User) -> list[str]:
    return [str(s["body"]) for s in user.received if s.name == "message" and s["body"]]


async def test_sip_user_claiming_an_xmpp_address_is_refused(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice,
        sip_ua(gw.kamailio.port) as ua,
    ):
        forged = await ua.send(
            ua.message(
                f"sip:mallory@{XMPP_DOMAIN}",
                f"sip:alice@{XMPP_DOMAIN}",
                f"forged {run}".encode(),
                call_id=f"spoof-{run}",
            )
        )
        honest = await ua.send(
            ua.message(
                f"sip:bob@{SIP_DOMAIN}",
                f"sip:alice@{XMPP_DOMAIN}",
                f"honest {run}".encode(),
                call_id=f"honest-{run}",
            )
        )
        assert forged == 403
        assert honest == 202
        assert await until(lambda: f"honest {run}" in bodies(alice), 10)
        assert f"forged {run}" not in bodies(alice)


async def test_xmpp_user_cannot_forge_the_stanza_from(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    async with (
        logged_in(f"mallory@{XMPP_DOMAIN}/x", PASSWORD, gw.prosody.c2s_port) as mallory,
        sip_ua(gw.kamailio.port, gw.sink_port) as ua,
    ):
        msg = mallory.make_message(
            mto=f"sink-bob@{COMPONENT}", mbody=f"forged from {run}", mtype="chat"
        )
        msg["from"] = f"carol@{COMPONENT}"  # a SIP user's address on the XMPP side
        msg["id"] = f"forged-{run}"
        msg.send()
        await asyncio.sleep(3)
        arrived = [
            r.request for r in ua.received if f"forged from {run}".encode() in r.request.body
        ]
        # either Prosody refused it, or it stamped mallory's own address over the forgery
        for request in arrived:
            assert request.from_.uri.address_of_record != f"sip:carol@{SIP_DOMAIN}"
            assert b"carol" not in request.body.split(b"\r\n\r\n", 1)[0]


async def test_xmpp_user_claiming_a_sip_address_inside_the_cpim_object_is_refused(
    gw: Stack,
) -> None:
    run = uuid.uuid4().hex[:8]
    errors: list[str] = []
    async with (
        logged_in(f"mallory@{XMPP_DOMAIN}/x", PASSWORD, gw.prosody.c2s_port) as mallory,
        sip_ua(gw.kamailio.port, gw.sink_port) as ua,
    ):
        mallory.add_event_handler("message_error", lambda m: errors.append(m["id"]))
        body = cpim_body(
            f"sip:carol@{SIP_DOMAIN}", f"sip:sink-bob@{SIP_DOMAIN}", f"I am carol {run}"
        )
        msg = mallory.make_message(mto=f"sink-bob@{COMPONENT}", mbody="I am carol", mtype="chat")
        msg["id"] = f"inner-{run}"
        carriage = msg.xml.makeelement("{urn:cpimgw:carriage:0}cpim", {"type": "message/cpim"})
        carriage.text = base64.b64encode(body).decode()
        msg.xml.append(carriage)
        msg.send()
        refused = await until(lambda: msg["id"] in errors, 10)
        arrived = [r for r in ua.received if f"I am carol {run}".encode() in r.request.body]
        assert not arrived, "a CPIM From naming a SIP user reached SIP from an XMPP user"
        assert refused


async def test_http_client_sends_only_as_the_addresses_its_token_covers(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    url = f"http://127.0.0.1:{gw.settings.http_port}/v1/messages"
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    recipient = f"sip:sink-bob@{SIP_DOMAIN}"
    other = "im:other@bots.test"
    cases = {
        "covered": ({"Cpimgw-From": API_BOT}, cpim_body(API_BOT, recipient, f"ok {run}")),
        "header": ({"Cpimgw-From": other}, cpim_body(other, recipient, f"hdr {run}")),
        "object": ({"Cpimgw-From": API_BOT}, cpim_body(other, recipient, f"obj {run}")),
        "xmpp": ({"Cpimgw-From": f"xmpp:alice@{XMPP_DOMAIN}"}, cpim_body(API_BOT, recipient, "x")),
        "no token": ({}, cpim_body(API_BOT, recipient, f"anon {run}")),
    }
    statuses = {}
    async with sip_ua(gw.kamailio.port, gw.sink_port) as ua, aiohttp.ClientSession() as session:
        for name, (headers, body) in cases.items():
            sent = {
                **(auth if name != "no token" else {}),
                **headers,
                "Cpimgw-To": recipient,
                "Content-Type": "message/cpim",
            }
            async with session.post(url, data=body, headers=sent) as response:
                statuses[name] = response.status
        assert await until(
            lambda: any(f"ok {run}".encode() in r.request.body for r in ua.received), 10
        )
        leaked = [r for r in ua.received if f"obj {run}".encode() in r.request.body]
    assert statuses == {"covered": 202, "header": 403, "object": 403, "xmpp": 403, "no token": 401}
    assert not leaked


async def test_sip_user_claiming_an_xmpp_address_inside_the_cpim_object_is_refused(
    gw: Stack,
) -> None:
    run = uuid.uuid4().hex[:8]
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice,
        sip_ua(gw.kamailio.port) as ua,
    ):
        body = cpim_body(f"im:carol@{XMPP_DOMAIN}", f"im:alice@{XMPP_DOMAIN}", f"carol {run}")
        status = await ua.send(
            ua.message(
                f"sip:bob@{SIP_DOMAIN}",
                f"sip:alice@{XMPP_DOMAIN}",
                body,
                content_type="message/cpim",
                call_id=f"inner-{run}",
            )
        )
        await asyncio.sleep(2)
        assert status == 403
        assert not any(f"carol {run}" in b for b in bodies(alice))


@pytest.mark.parametrize(
    ("sender", "author", "allowed"),
    [
        ("xmpp:mallory@xmpp.test/x", "sip:carol@sip.test", False),
        ("xmpp:mallory@xmpp.test/x", "im:mallory@xmpp.test", True),
        ("sip:bob@sip.test", "im:bob@sip.test", True),  # one user across schemes
        ("sip:bob@sip.test", "im:alice@xmpp.test", False),
    ],
)
def test_a_message_whose_cpim_from_is_not_its_sender_is_refused(
    sender: str, author: str, allowed: bool
) -> None:
    table = RoutingTable([Route(XMPP_DOMAIN, "xmpp"), Route(SIP_DOMAIN, "sip")])
    origin = "xmpp" if sender.startswith("xmpp:") else "sip"
    envelope = Envelope(
        Operation.MESSAGE,
        sender,
        "sip:dave@sip.test" if origin == "xmpp" else "xmpp:dave@xmpp.test",
        Payload(CPIM, cpim_body(author, "im:dave@example.test", "hi")),
        "id-1",
        Origin(adapter=origin),
    )
    verdict = judge(
        envelope,
        rules=Rules(rate=0),
        routing=table,
        route=table.resolve(envelope.recipient).route,
        capabilities=frozenset({Capability.MESSAGE}),
        now=0.0,
    )
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.reason is Reason.FORBIDDEN
