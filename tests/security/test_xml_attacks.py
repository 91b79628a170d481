"""XML attacks through the adapters of ``cpimgw run`` (not just the parser): billion laughs,
external entities, deep nesting and huge attribute counts in the documents the gateway
reads from the network.

- HTTP API: a PIDF body (``POST /v1/presence``) is read for its entity, through
  ``canonical.xmldoc``: every attack is refused with 400 and its ``XML_*`` code, in
  bounded time and memory (the gateway's RSS is measured around the attack);
- SIP: a hostile presence server (the gateway's proxy is the test's own SIP endpoint)
  answers the gateway's SUBSCRIBE with NOTIFYs whose PIDF carries each attack: each gets
  400, nothing reaches the XMPP watcher, a clean NOTIFY afterwards still does;
- XMPP: a stream with a DTD never gets past Prosody (XMPP forbids DTDs, RFC 6120 §11.1),
  so the gateway's component never sees one; a deeply nested stanza does pass Prosody and
  is refused by the component with an error stanza (the policy's XML bounds).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.sip.codec import Request
from adapters.sip.endpoint import Incoming
from adapters.sip.transport import Peer
from canonical.envelope import CPIM, PIDF, Payload
from gateway.security import xml_fault
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
from tests.faults.figures import record
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE presence [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
        for i in range(1, 10)
    )
    + "]>\n<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}'>"
    "<tuple id='t1'><status><basic>open</basic></status><note>&lol9;</note></tuple></presence>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE presence [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}'>"
    "<tuple id='t1'><status><basic>open</basic></status><note>&xxe;</note></tuple></presence>"
)


def deep(entity: str, depth: int = 100_000) -> bytes:
    return (
        f"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}'>"
        + "<x>" * depth
        + "</x>" * depth
        + "</presence>"
    ).encode()


def attributes(entity: str, count: int = 50_000) -> bytes:
    many = " ".join(f"a{i}='v'" for i in range(count))
    return (
        f"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}' {many}>"
        "<tuple id='t1'><status><basic>open</basic></status></tuple></presence>"
    ).encode()


ATTACKS: dict[str, Callable[[str], bytes]] = {
    "billion-laughs": lambda e: BILLION_LAUGHS.replace("{entity}", e).encode(),
    "external-entity": lambda e: EXTERNAL_ENTITY.replace("{entity}", e).encode(),
    "deep-nesting": deep,
    "attribute-flood": attributes,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fault_stack(tmp_path_factory.mktemp("xml")) as s:
        yield s


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_http_api_refuses_every_xml_attack_in_a_pidf_body(gw: Stack) -> None:
    url = f"http://127.0.0.1:{gw.settings.http_port}/v1/presence"
    headers = {
        "Authorization": f"Bearer {API_TOKEN}",
        "Cpimgw-From": API_BOT,
        "Cpimgw-To": f"xmpp:alice@{XMPP_DOMAIN}",
        "Content-Type": "application/pidf+xml",
    }
    results: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        for name, make in ATTACKS.items():
            body = make(API_BOT.replace("im:", "pres:"))
            rss_before = gw.gateway.rss_kib()
            started = time.monotonic()
            async with session.post(url, data=body, headers=headers) as response:
                problem = await response.json(content_type=None)
                status = response.status
            results[name] = {
                "status": status,
                "code": problem.get("code"),
                "bytes": len(body),
                "seconds": round(time.monotonic() - started, 3),
                "rss_growth_kib": gw.gateway.rss_kib() - rss_before,
            }
        clean = ATTACKS["external-entity"](API_BOT.replace("im:", "pres:"))
        clean = clean.replace(b"<note>&xxe;</note>", b"").split(b"]>\n", 1)[1]
        async with session.post(url, data=clean, headers=headers) as response:
            clean_status = response.status
    record("xml-attacks-http", results=results, clean_status=clean_status)
    for name, result in results.items():
        assert result["status"] == 400, (name, result)
        assert str(result["code"]).startswith("XML_"), (name, result)
        assert result["rss_growth_kib"] < 64 * 1024, (name, result)
    assert results["billion-laughs"]["code"] == "XML_DTD"
    assert results["external-entity"]["code"] == "XML_DTD"
    assert clean_status == 202
    assert gw.gateway.alive()


async def test_pidf_with_a_dtd_from_a_hostile_sip_notifier_reaches_no_watcher(
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    with fault_stack(tmp_path, start_gateway=False) as s:
        subscribed: asyncio.Future[Request] = asyncio.get_running_loop().create_future()

        async def notifier(incoming: Incoming) -> None:
            if incoming.request.method == "SUBSCRIBE":
                incoming.respond(
                    200,
                    "OK",
                    extra=(("Expires", "600"), ("Contact", f"<sip:carol@127.0.0.1:{port}>")),
                )
                if not subscribed.done():
                    subscribed.set_result(incoming.request)
            else:
                incoming.respond(200, "OK")

        async with sip_ua(s.kamailio.port) as ua:
            ua.answer = notifier
            port = ua.endpoint.local("UDP").port
            s.settings.proxy_port = port  # the hostile server is the gateway's proxy
            await asyncio.to_thread(s.gateway.start)
            async with logged_in(
                f"alice@{XMPP_DOMAIN}/desk", PASSWORD, s.prosody.c2s_port
            ) as alice:
                alice.send_presence_subscription(pto=f"carol@{COMPONENT}")
                subscribe = await asyncio.wait_for(subscribed, 15)
                contact = subscribe.contact
                assert contact is not None
                to_tag = "hostile" + run
                gateway = Peer("UDP", "127.0.0.1", s.settings.sip_port)

                def notify(cseq: int, body: bytes) -> Request:
                    return Request.build(
                        "NOTIFY",
                        contact.uri.text,
                        [
                            ("From", f"<sip:carol@{SIP_DOMAIN}>;tag={to_tag}"),
                            ("To", str(subscribe.get("From"))),
                            ("Call-ID", subscribe.call_id),
                            ("CSeq", f"{cseq} NOTIFY"),
                            ("Max-Forwards", "70"),
                            ("Event", "presence"),
                            ("Subscription-State", "active;expires=600"),
                            ("Contact", f"<sip:carol@127.0.0.1:{port}>"),
                            ("Content-Type", "application/pidf+xml"),
                        ],
                        body,
                    )

                entity = f"pres:carol@{SIP_DOMAIN}"
                statuses = {}
                rss_before = s.gateway.rss_kib()
                # under the SIP adapter's 64 KiB message limit, still far past the XML limits
                small: dict[str, Callable[[str], bytes]] = {
                    **ATTACKS,
                    "deep-nesting": lambda e: deep(e, 8000),
                }
                small["attribute-flood"] = lambda e: attributes(e, 5000)
                for n, (name, make) in enumerate(small.items(), start=1):
                    started = time.monotonic()
                    response = await ua.endpoint.request(notify(n, make(entity)), gateway)
                    statuses[name] = (response.status, round(time.monotonic() - started, 3))
                clean = (
                    f"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}'>"
                    f"<tuple id='t1'><status><basic>open</basic></status>"
                    f"<note>clean {run}</note></tuple></presence>"
                ).encode()
                clean_response = await ua.endpoint.request(notify(99, clean), gateway)

                def notes() -> list[str]:
                    return [str(p["status"]) for p in alice.received if p.name == "presence"]

                reached = await until(lambda: f"clean {run}" in notes(), 15)
                rss_growth = s.gateway.rss_kib() - rss_before
                record(
                    "xml-attacks-sip-notify",
                    notify_statuses=statuses,
                    clean_status=clean_response.status,
                    rss_growth_kib=rss_growth,
                    presence_seen_by_watcher=notes(),
                )
                assert reached, f"the clean NOTIFY did not reach the watcher\n{s.gateway.log()}"
                assert not any("lol" in n or "root:" in n for n in notes())
                assert rss_growth < 64 * 1024
                assert s.gateway.alive()
                assert all(seconds < 5 for _, seconds in statuses.values()), statuses
                # refused at the NOTIFY itself (400 with the XML_* code in the Warning),
                # not answered 200 and dropped later
                assert {status for status, _ in statuses.values()} == {400}, statuses
                assert clean_response.status == 200


async def test_xmpp_stream_with_a_dtd_is_stopped_by_the_server(gw: Stack) -> None:
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice,
        sip_ua(gw.kamailio.port, gw.sink_port) as ua,
    ):
        alice.send_raw(
            "<!DOCTYPE message [<!ENTITY lol 'lol'>]>"
            f"<message to='sink-bob@{COMPONENT}' type='chat' id='dtd'><body>&lol;</body></message>"
        )
        await asyncio.sleep(2)
        assert not any(b"lol" in r.request.body for r in ua.received)
    assert gw.gateway.alive()


async def test_deeply_nested_xmpp_stanza_gets_an_error_back(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    errors: list[str] = []
    async with logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice:
        alice.add_event_handler("message_error", lambda m: errors.append(m["id"]))
        # slixmpp builds the tree without limits; the component then refuses it by the
        # policy's bounds (a stanza nested 3000 deep used to raise RecursionError in the
        # mapping: logged as "inbound stanza failed", no error to the sender)
        depth = 3000
        nested = "<x xmlns='urn:deep'>" * depth + "</x>" * depth
        alice.send_raw(
            f"<message to='sink-bob@{COMPONENT}' type='chat' id='deep-{run}'>"
            f"<body>deep</body>{nested}</message>"
        )
        answered = await until(lambda: f"deep-{run}" in errors, 10)
    assert gw.gateway.alive()
    assert answered, "no error stanza for a stanza the gateway could not map"


ISCOMPOSING_LOL = (
    '<?xml version="1.0"?><!DOCTYPE isComposing [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    '<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>&lol2;</state>'
    "</isComposing>"
)
IMDN_XXE = (
    '<?xml version="1.0"?><!DOCTYPE imdn [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>&x;</message-id>'
    "<datetime>2024-01-01T00:00:00Z</datetime><delivery-notification><status><delivered/>"
    "</status></delivery-notification></imdn>"
)


def carried(sender: str, recipient: str, content_type: str, document: str) -> bytes:
    """An unsigned CPIM object (body form) whose entity is ``document``."""
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n\r\n"
        f"Content-Type: {content_type}\r\n\r\n{document}"
    ).encode()


async def test_documents_with_a_dtd_inside_cpim_objects_are_not_relayed(gw: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    docs = {
        "iscomposing": ("application/im-iscomposing+xml", ISCOMPOSING_LOL),
        "imdn": ("message/imdn+xml", IMDN_XXE),
    }
    outcome: dict[str, Any] = {}
    errors: dict[str, str] = {}
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, gw.prosody.c2s_port) as alice,
        sip_ua(gw.kamailio.port, gw.sink_port) as ua,
        aiohttp.ClientSession() as session,
    ):
        alice.add_event_handler(
            "message_error", lambda m: errors.__setitem__(m["id"], m["error"]["condition"])
        )
        for name, (content_type, document) in docs.items():
            # XMPP: the object in the carriage element
            body = carried(
                f"im:alice@{XMPP_DOMAIN}", f"sip:sink-bob@{SIP_DOMAIN}", content_type, document
            )
            msg = alice.make_message(mto=f"sink-bob@{COMPONENT}", mbody="doc", mtype="chat")
            msg["id"] = f"{name}-{run}"
            carriage = msg.xml.makeelement("{urn:cpimgw:carriage:0}cpim", {"type": "message/cpim"})
            carriage.text = base64.b64encode(body).decode()
            msg.xml.append(carriage)
            msg.send()
            # SIP: the object as a MESSAGE body
            outcome[f"sip-{name}"] = await ua.send(
                ua.message(
                    f"sip:bob@{SIP_DOMAIN}",
                    f"sip:alice@{XMPP_DOMAIN}",
                    carried(
                        f"sip:bob@{SIP_DOMAIN}", f"im:alice@{XMPP_DOMAIN}", content_type, document
                    ),
                    content_type="message/cpim",
                    call_id=f"{name}-{run}",
                )
            )
            # HTTP: the object as a message
            async with session.post(
                f"http://127.0.0.1:{gw.settings.http_port}/v1/messages",
                data=carried(API_BOT, f"sip:sink-bob@{SIP_DOMAIN}", content_type, document),
                headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "message/cpim"},
            ) as response:
                outcome[f"http-{name}"] = response.status
        await until(lambda: len(errors) >= len(docs), 10)
        await asyncio.sleep(1)
        relayed = [r for r in ua.received if b"<!DOCTYPE" in r.request.body]
        at_alice = [s for s in alice.received if s["type"] != "error" and "DOCTYPE" in str(s)]
    for name in docs:
        outcome[f"xmpp-{name}"] = errors.get(f"{name}-{run}")
    record("xml-attacks-in-cpim-objects", outcome=outcome, relayed=len(relayed) + len(at_alice))
    assert not relayed
    assert not at_alice
    for name in docs:
        assert outcome[f"sip-{name}"] == 400, outcome
        assert outcome[f"http-{name}"] == 400, outcome
        assert outcome[f"xmpp-{name}"] == "bad-request", outcome


def test_only_the_documents_cpimgw_knows_are_read_for_a_dtd() -> None:
    lol = carried("im:a@b.test", "im:c@d.test", "application/im-iscomposing+xml", ISCOMPOSING_LOL)
    xhtml = carried(
        "im:a@b.test",
        "im:c@d.test",
        "application/xhtml+xml",
        '<!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml"><body>hi</body></html>',
    )
    fault = xml_fault(Payload(CPIM, lol))
    assert fault is not None
    assert fault.code == "XML_DTD"
    assert xml_fault(Payload(CPIM, xhtml)) is None  # other XML is relayed as it is
    assert xml_fault(Payload(PIDF, BILLION_LAUGHS.replace("{entity}", "pres:a@b").encode()))
