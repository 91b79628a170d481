"""XMPP users on Prosody or ejabberd and SIP users (SIPp) on Kamailio message each other through
``cpimgw run``: text in any script, subjects in several languages, chat states, receipts,
signed and encrypted objects that the far end verifies or decrypts on the exact bytes it
received, and errors that come back to the sender in its own protocol."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from canonical import cpim, smime
from canonical.envelope import Payload
from gateway.demo.phone import SipPhone
from tests.e2e.conftest import Pki
from tests.e2e.peers import (
    CHATSTATES_NS,
    E2E_NS,
    RECEIPTS_NS,
    carried,
    child,
    error_condition,
    is_message,
    openssl_decrypt,
    openssl_verify,
    sip_send,
    sip_user,
    statuses,
    xml_text,
)
from tests.e2e.stack import COMPONENT, SIP_DOMAIN, XMPP_DOMAIN, Stack
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
IMDN_NS = "urn:ietf:params:imdn"
TEXT = "Grüße aus Köln ✓ 😀 — 東京で会いましょう"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpim_from_sip(user: str, to: str, text: str, **fields: object) -> bytes:
    """A message/cpim body as a SIP client writes it (ends with CRLF for SIPp)."""
    message = cpim.build(
        sender=f"sip:{user}@{SIP_DOMAIN}",
        to=[f"sip:{to}@{XMPP_DOMAIN}"],
        datetime=now(),
        content_type="text/plain; charset=utf-8",
        body=(text + "\r\n").encode(),
        **fields,  # type: ignore[arg-type]
    )
    return bytes(message)


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """The same flows through Prosody and through ejabberd: the component is not tuned to
    one XMPP server."""
    running: Stack = request.getfixturevalue(f"{request.param}_stack")
    return running


# ------------------------------------------------------------------- text and subjects


async def test_xmpp_text_with_subjects_in_two_languages_reaches_the_sip_user(
    stack: Stack,
) -> None:
    async with (
        sip_user(stack, "bob1") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob1@{COMPONENT}' type='chat' id='subj-1' xml:lang='en'>"
            "<subject xml:lang='en'>Lunch on Friday?</subject>"
            "<subject xml:lang='de'>Mittagessen am Freitag?</subject>"
            f"<body>{xml_text(TEXT)}</body></message>"
        )
        got = await bob.messages()
    assert len(got) == 1
    message = got[0]
    assert message.get("Content-Type") == "message/cpim"
    assert message.from_.uri.user == "alice"
    assert message.from_.uri.host == XMPP_DOMAIN
    body = cpim.parse_body(message.body)
    assert body.body.decode() == TEXT
    assert [(s.lang, s.text) for s in body.subjects] == [
        ("en", "Lunch on Friday?"),
        ("de", "Mittagessen am Freitag?"),
    ]
    assert body.sender is not None
    assert body.sender.uri == f"im:alice@{XMPP_DOMAIN}"
    assert [p.uri for p in body.to] == [f"sip:bob1@{SIP_DOMAIN}"]


async def test_sip_text_with_subjects_in_two_languages_reaches_the_xmpp_user(
    stack: Stack,
) -> None:
    body = cpim_from_sip(
        "bob2",
        "alice",
        "Très bien, à vendredi ✓ — 金曜日に",
        subjects=[("fr", "Déjeuner"), ("ja", "昼食")],
    )
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        run = await sip_send(
            stack, sender="bob2", to="alice", content_type="message/cpim", body=body
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob2@{COMPONENT}"))
    subjects = [(e.get(XML_LANG), e.text) for e in stanza.xml if e.tag.endswith("}subject")]
    assert subjects == [("fr", "Déjeuner"), ("ja", "昼食")]
    assert stanza["body"] == "Très bien, à vendredi ✓ — 金曜日に\n"
    assert carried(stanza) == Payload("message/cpim", body)  # the exact bytes, for L1


async def test_plain_sip_text_without_cpim_reaches_the_xmpp_user(stack: Stack) -> None:
    async with logged_in(f"carol@{XMPP_DOMAIN}", "carolpw", stack.c2s_port) as carol:
        run = await sip_send(
            stack,
            sender="bob3",
            to="carol",
            content_type="text/plain;charset=UTF-8",
            body="Привет, Кэрол! ✓\r\n".encode(),
        )
        assert statuses(run) == [202], run.output
        stanza = await carol.wait_for(lambda s: is_message(s, sender=f"bob3@{COMPONENT}"))
    assert stanza["body"] == "Привет, Кэрол! ✓\n"


# ------------------------------------------------------------------- chat states


async def test_chat_state_crosses_both_ways(stack: Stack) -> None:
    composing = (
        b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
        b'<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">'
        b"<state>active</state><contenttype>text/plain</contenttype></isComposing>\r\n"
    )
    async with (
        sip_user(stack, "bob4") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob4@{COMPONENT}' type='chat' id='cs-1'>"
            f"<composing xmlns='{CHATSTATES_NS}'/></message>"
        )
        got = await bob.messages()
        run = await sip_send(
            stack,
            sender="bob4",
            to="alice",
            content_type="application/im-iscomposing+xml",
            body=composing,
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob4@{COMPONENT}"))
    assert len(got) == 1
    entity = cpim.parse_body(got[0].body)
    assert (entity.content_type or "").startswith("application/im-iscomposing+xml")
    assert b"<state>active</state>" in entity.body
    assert child(stanza, CHATSTATES_NS, "composing") is not None
    assert not stanza["body"]


# ------------------------------------------------------------------- receipts / IMDN


async def test_xmpp_receipt_request_becomes_imdn_and_the_sip_imdn_comes_back_as_receipt(
    stack: Stack,
) -> None:
    async with (
        sip_user(stack, "bob5") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob5@{COMPONENT}' type='chat' id='rcpt-1'>"
            f"<body>Did you get this?</body><request xmlns='{RECEIPTS_NS}'/></message>"
        )
        got = await bob.messages()
        assert len(got) == 1
        request = cpim.parse_body(got[0].body)
        message_id = request.find("Message-ID", IMDN_NS)[0].value
        assert message_id == "rcpt-1"
        assert "positive-delivery" in request.find("Disposition-Notification", IMDN_NS)[0].value
        imdn = (
            '<?xml version="1.0" encoding="UTF-8"?>\r\n'
            '<imdn xmlns="urn:ietf:params:xml:ns:imdn">'
            f"<message-id>{message_id}</message-id><datetime>{now()}</datetime>"
            "<delivery-notification><status><delivered/></status></delivery-notification>"
            "</imdn>\r\n"
        ).encode()
        notification = bytes(
            cpim.build(
                sender=f"sip:bob5@{SIP_DOMAIN}",
                to=[f"sip:alice@{XMPP_DOMAIN}"],
                datetime=now(),
                namespaces=[("imdn", IMDN_NS)],
                extensions=[("imdn.Message-ID", "sip-imdn-1")],
                content_type="message/imdn+xml",
                entity_headers=[("Content-Disposition", "notification")],
                body=imdn,
            )
        )
        run = await sip_send(
            stack, sender="bob5", to="alice", content_type="message/cpim", body=notification
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(
            lambda s: (
                is_message(s, sender=f"bob5@{COMPONENT}")
                and child(s, RECEIPTS_NS, "received") is not None
            )
        )
    received = child(stanza, RECEIPTS_NS, "received")
    assert received is not None
    assert received.get("id") == "rcpt-1"


async def test_sip_imdn_request_becomes_receipt_request_and_the_receipt_comes_back_as_imdn(
    stack: Stack,
) -> None:
    body = cpim_from_sip(
        "bob6",
        "alice",
        "Please confirm ✓",
        namespaces=[("imdn", IMDN_NS)],
        extensions=[
            ("imdn.Message-ID", "sipmsg-77"),
            ("imdn.Disposition-Notification", "positive-delivery"),
        ],
    )
    async with (
        sip_user(stack, "bob6") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        run = await sip_send(
            stack, sender="bob6", to="alice", content_type="message/cpim", body=body
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob6@{COMPONENT}"))
        assert child(stanza, RECEIPTS_NS, "request") is not None
        assert stanza["id"] == "sipmsg-77"
        alice.send_raw(
            f"<message to='bob6@{COMPONENT}' id='ack-77'>"
            f"<received xmlns='{RECEIPTS_NS}' id='sipmsg-77'/></message>"
        )
        got = await bob.messages()
    assert len(got) == 1
    notification = cpim.parse_body(got[0].body)
    assert (notification.content_type or "").startswith("message/imdn+xml")
    document = ET.fromstring(notification.body)
    ns = {"i": "urn:ietf:params:xml:ns:imdn"}
    assert document.findtext("i:message-id", namespaces=ns) == "sipmsg-77"
    assert document.find("i:delivery-notification/i:status/i:delivered", ns) is not None


# ------------------------------------------------------------------- S/MIME


def signed_entity(sender: str, recipient: str, text: str) -> bytes:
    return bytes(
        cpim.build(
            sender=sender,
            to=[recipient],
            datetime=now(),
            subjects=[("en", "Signed"), ("de", "Signiert")],
            content_type="text/plain; charset=utf-8",
            body=(text + "\r\n").encode(),
            form="entity",
        )
    )


async def test_xmpp_signed_message_verifies_at_the_sip_end(
    stack: Stack, smime_pki: Pki, tmp_path: Path
) -> None:
    entity = signed_entity(f"im:alice@{XMPP_DOMAIN}", f"sip:bob7@{SIP_DOMAIN}", "Signed ✓ Ünïcödé")
    signed = smime.sign(entity, smime_pki.xmpp_user.cert, smime_pki.xmpp_user.key)
    mime = f"Content-Type: {signed.content_type}\r\n\r\n".encode() + signed.body
    # RFC 3923 §4: the whole MIME entity in <e2e/>, CRs as character references
    text = xml_text(mime.decode()).replace("\r", "&#13;")
    async with (
        sip_user(stack, "bob7") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob7@{COMPONENT}' type='chat' id='signed-1'>"
            f"<e2e xmlns='{E2E_NS}'>{text}</e2e></message>"
        )
        got = await bob.messages()
    assert len(got) == 1
    received = Payload(got[0].get("Content-Type") or "", got[0].body)
    assert received == signed, "the SIP user gets the signed object byte for byte"
    verdict = openssl_verify(received, smime_pki.ca_file, tmp_path)
    assert verdict.ok, verdict.output
    assert "Alice (XMPP)" in verdict.signer


async def test_sip_signed_message_verifies_at_the_xmpp_end(
    stack: Stack, smime_pki: Pki, tmp_path: Path
) -> None:
    entity = signed_entity(f"sip:bob8@{SIP_DOMAIN}", f"sip:alice@{XMPP_DOMAIN}", "Signé ✓ 署名")
    signed = smime.sign(entity, smime_pki.sip_user.cert, smime_pki.sip_user.key)
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        run = await sip_send(
            stack, sender="bob8", to="alice", content_type=signed.content_type, body=signed.body
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob8@{COMPONENT}"))
    received = carried(stanza)
    assert received == signed, "the XMPP user gets the signed object byte for byte"
    verdict = openssl_verify(received, smime_pki.ca_file, tmp_path)
    assert verdict.ok, verdict.output
    assert "Bob (SIP)" in verdict.signer
    assert child(stanza, E2E_NS, "e2e") is not None  # RFC 3923 clients see it too
    assert "Signé ✓ 署名" in stanza["body"]


async def test_encrypted_messages_pass_through_both_ways_and_decrypt_at_the_far_end(
    stack: Stack, smime_pki: Pki, tmp_path: Path
) -> None:
    # the SIP user here is cpimgw's own SIP stack as a client (gateway.demo.phone): SIPp's
    # message trace cuts binary bodies at the first NUL, so it cannot show what arrived
    for_bob = signed_entity(f"im:alice@{XMPP_DOMAIN}", f"sip:bob9@{SIP_DOMAIN}", "Geheim ✓ 秘密")
    to_bob = smime.encrypt(for_bob, [smime_pki.sip_user.cert])
    for_alice = signed_entity(f"sip:bob9@{SIP_DOMAIN}", f"sip:alice@{XMPP_DOMAIN}", "Secret ✓")
    to_alice = smime.encrypt(for_alice, [smime_pki.xmpp_user.cert])
    carriage = (
        f"<cpim xmlns='urn:cpimgw:carriage:0' type='{to_bob.content_type}'>"
        f"{base64.b64encode(to_bob.body).decode()}</cpim>"
    )
    async with (
        SipPhone("bob9", SIP_DOMAIN, ("127.0.0.1", stack.kamailio_port)) as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        assert (await bob.register()).status == 200
        alice.send_raw(
            f"<message to='bob9@{COMPONENT}' type='chat' id='enc-1'>"
            f"<body>[encrypted]</body>{carriage}</message>"
        )
        got = await bob.wait_for(lambda r: r.method == "MESSAGE")
        answer = await bob.message(f"sip:alice@{XMPP_DOMAIN}", to_alice.body, to_alice.content_type)
        assert answer.status == 202
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob9@{COMPONENT}"))
    assert Payload(got.get("Content-Type") or "", got.body) == to_bob
    cert, key = smime_pki.sip_user_files
    assert openssl_decrypt(got.body, cert, key, tmp_path / "bob") == for_bob
    received = carried(stanza)
    assert received == to_alice
    cert, key = smime_pki.xmpp_user_files
    assert openssl_decrypt(received.body, cert, key, tmp_path / "alice") == for_alice


# ------------------------------------------------------------------- errors


async def test_message_to_an_unknown_sip_user_comes_back_as_an_xmpp_error(stack: Stack) -> None:
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        alice.send_raw(
            f"<message to='ghost@{COMPONENT}' type='chat' id='lost-1'><body>hello?</body></message>"
        )
        error = await alice.wait_for(
            lambda s: is_message(s, sender=f"ghost@{COMPONENT}", kind="error")
        )
    assert error["id"] == "lost-1"
    assert error_condition(error) == "item-not-found"


async def test_message_to_an_unknown_xmpp_user_comes_back_to_the_sip_sender(stack: Stack) -> None:
    async with sip_user(stack, "bob10") as bob:
        run = await sip_send(
            stack,
            sender="bob10",
            to="ghost",
            content_type="text/plain;charset=UTF-8",
            body="anyone there? ✓\r\n".encode(),
        )
        assert statuses(run) == [202], run.output  # accepted: stored before the ack
        got = await bob.messages()
    assert len(got) == 1
    notice = got[0]
    assert notice.from_.uri.host == XMPP_DOMAIN
    assert "could not be delivered" in notice.body.decode()
    assert f"ghost@{XMPP_DOMAIN}" in notice.body.decode()
    assert notice.get("Reason") is not None


# ------------------------------------------------------------------- duplicates


async def test_sip_resend_with_the_same_call_id_is_delivered_once(stack: Stack) -> None:
    before = stack.metric("cpimgw_duplicates_total", adapter="sip")
    body = "only once, please ✓\r\n".encode()
    async with logged_in(f"erin@{XMPP_DOMAIN}", "erinpw", stack.c2s_port) as erin:
        for attempt in range(2):
            run = await sip_send(
                stack,
                sender="bob11",
                to="erin",
                content_type="text/plain;charset=UTF-8",
                body=body,
                call_id="resend-identity-1",
                name=f"resend-{attempt}",
            )
            assert statuses(run) == [202], run.output
        await erin.wait_for(lambda s: is_message(s, sender=f"bob11@{COMPONENT}"))
        await asyncio.sleep(1.0)
    copies = [s for s in erin.received if is_message(s, sender=f"bob11@{COMPONENT}")]
    assert len(copies) == 1
    assert stack.metric("cpimgw_duplicates_total", adapter="sip") == before + 1


async def test_xmpp_resend_with_the_same_origin_id_is_delivered_once(stack: Stack) -> None:
    before = stack.metric("cpimgw_duplicates_total", adapter="xmpp")
    sent_before = stack.metric("cpimgw_messages_out_total", adapter="sip")
    stanza = (
        f"<message to='bob12@{COMPONENT}' type='chat' id='dup-1'><body>once ✓</body>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='dup-1'/></message>"
    )
    async with (
        sip_user(stack, "bob12", calls=2) as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(stanza)
        alice.send_raw(stanza)
        for _ in range(150):  # the copy is refused and the first sent on (however slowly)
            if (
                stack.metric("cpimgw_duplicates_total", adapter="xmpp") == before + 1
                and stack.metric("cpimgw_messages_out_total", adapter="sip") > sent_before
            ):
                break
            await asyncio.sleep(0.1)
        got = await bob.messages(within=1.0)  # and a second copy would have arrived by now
    assert len(got) == 1
    assert stack.metric("cpimgw_duplicates_total", adapter="xmpp") == before + 1
