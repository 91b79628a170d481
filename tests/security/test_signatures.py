"""End-to-end signatures under the route policy, through ``cpimgw run`` with Prosody and
Kamailio: the objects are signed here (``canonical.smime.sign``, certificates from
``tests/pki.py``) with a DateTime this test chooses, then changed the way a careless or
hostile relay would, and sent through each network's real adapter.

Under ``require`` (RFC 3862 §5.2, RFC 3923): a tampered, reordered, re-cased or
LF-normalised object fails verification and is refused (HTTP 403/400, SIP 403, XMPP
``not-acceptable``) and reaches nobody; a valid signature whose signer is not the CPIM
From is refused; a signed object whose DateTime lies outside the freshness window (a
replay, RFC 3923 §6.9) is refused as stale. Under ``verify`` the signer mismatch is
delivered but flagged (``cpimgw_signatures_total{state="invalid"}``, the log line).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canonical import smime
from canonical.envelope import Payload
from tests import pki
from tests.e2e.stack import (
    API_BOT,
    API_TOKEN,
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    Stack,
    fault_stack,
    metric,
    sip_ua,
)
from tests.faults.figures import record
from tests.xmpp.users import User, logged_in

pytestmark = pytest.mark.e2e

CA = pki.make_ca("cpimgw signature test CA")
BOT = pki.make_leaf(CA, "bot", uris=(API_BOT,))
OTHER = pki.make_leaf(CA, "other", uris=("im:other@bots.test",))
BOB = pki.make_leaf(CA, "bob", uris=(f"sip:bob@{SIP_DOMAIN}",))
ALICE = pki.make_leaf(CA, "alice", uris=(f"im:alice@{XMPP_DOMAIN}",))


def stamp(offset: float = 0.0) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def entity(sender: str, recipient: str, text: str, *, when: float = 0.0) -> bytes:
    return (
        "Content-type: Message/CPIM\r\n\r\n"
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nDateTime: {stamp(when)}\r\n"
        f"Subject: signed\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    ).encode()


def signed(
    sender: str, recipient: str, text: str, by: pki.Credential, when: float = 0.0
) -> Payload:
    return smime.sign(entity(sender, recipient, text, when=when), by.cert, by.key)


def tampered(payload: Payload, text: str) -> Payload:
    return Payload(payload.content_type, payload.body.replace(text.encode(), text.upper().encode()))


def reordered(payload: Payload) -> Payload:
    body = payload.body
    start = body.index(b"From: ")
    end = body.index(b"DateTime: ")
    lines = body[start:end].split(b"\r\n")[:-1]  # From, To
    swapped = b"\r\n".join(reversed(lines)) + b"\r\n"
    return Payload(payload.content_type, body[:start] + swapped + body[end:])


def recased(payload: Payload) -> Payload:
    return Payload(
        payload.content_type,
        payload.body.replace(b"Content-type: Message/CPIM", b"Content-Type: Message/CPIM", 1),
    )


def lf_normalised(payload: Payload) -> Payload:
    return Payload(payload.content_type, payload.body.replace(b"\r\n", b"\n"))


@pytest.fixture(scope="module")
def trust_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    path.write_bytes(CA.cert_pem)
    return path


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory, trust_file: Path) -> Iterator[Stack]:
    with fault_stack(
        tmp_path_factory.mktemp("require"), signatures="require", trust=(trust_file,)
    ) as s:
        yield s


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


def texts(user: User) -> str:
    """Everything an XMPP user received (bodies and carriage), as one text."""
    out = []
    for s in user.received:
        if s.name != "message":
            continue
        out.append(str(s["body"]))
        for child in s.xml:
            if child.tag == "{urn:cpimgw:carriage:0}cpim" and child.text:
                out.append(base64.b64decode(child.text).decode("utf-8", "replace"))
    return "\n".join(out)


async def post(port: int, payload: Payload, recipient: str) -> int:
    headers = {
        "Authorization": f"Bearer {API_TOKEN}",
        "Cpimgw-From": API_BOT,
        "Cpimgw-To": recipient,
        "Content-Type": payload.content_type,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/messages", data=payload.body, headers=headers
        ) as response,
    ):
        return response.status


async def test_changed_stale_and_misattributed_objects_are_refused_under_require(
    required: Stack,
) -> None:
    run = uuid.uuid4().hex[:8]
    to = f"im:alice@{XMPP_DOMAIN}"
    cases: dict[str, Payload] = {}
    for name in ("valid", "tampered", "reordered", "recased", "lf", "signer", "replay", "future"):
        text = f"{name} {run}"
        by = OTHER if name == "signer" else BOT
        when = {"replay": -3600.0, "future": 600.0}.get(name, 0.0)
        cases[name] = signed(API_BOT, to, text, by, when)
    cases["tampered"] = tampered(cases["tampered"], f"tampered {run}")
    cases["reordered"] = reordered(cases["reordered"])
    cases["recased"] = recased(cases["recased"])
    cases["lf"] = lf_normalised(cases["lf"])
    statuses = {}
    async with logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, required.prosody.c2s_port) as a:
        for name, payload in cases.items():
            statuses[name] = await post(required.settings.http_port, payload, f"xmpp:{to[3:]}")
        assert await until(lambda: f"valid {run}" in texts(a), 10), texts(a)
        await asyncio.sleep(1)
        leaked = [n for n in cases if n != "valid" and f"{n} {run}" in texts(a).lower()]
    metrics = required.gateway.metrics()
    record(
        "signatures-require-http",
        statuses=statuses,
        leaked=leaked,
        signatures_invalid=metric(metrics, "cpimgw_signatures_total", state="invalid"),
        signatures_valid=metric(metrics, "cpimgw_signatures_total", state="valid"),
    )
    assert statuses["valid"] == 202
    for name in ("tampered", "reordered", "recased", "signer"):
        assert statuses[name] == 403, (name, statuses)
    assert statuses["lf"] in (400, 403), statuses  # unreadable framing or a bad signature
    assert statuses["replay"] == 400  # stale: RFC 3923 §6.9
    assert statuses["future"] == 400
    assert not leaked


async def test_tampered_object_from_a_sip_user_gets_403(required: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, required.prosody.c2s_port) as alice,
        sip_ua(required.kamailio.port) as ua,
    ):
        statuses = {}
        for name in ("valid", "tampered"):
            payload = signed(
                f"sip:bob@{SIP_DOMAIN}", f"im:alice@{XMPP_DOMAIN}", f"{name} {run}", BOB
            )
            if name == "tampered":
                payload = tampered(payload, f"tampered {run}")
            statuses[name] = await ua.send(
                ua.message(
                    f"sip:bob@{SIP_DOMAIN}",
                    f"sip:alice@{XMPP_DOMAIN}",
                    payload.body,
                    content_type=payload.content_type,
                    call_id=f"{name}-{run}",
                )
            )
        assert await until(lambda: f"valid {run}" in texts(alice), 10)
        assert statuses == {"valid": 202, "tampered": 403}
        assert f"tampered {run}".upper() not in texts(alice)


async def test_tampered_object_from_an_xmpp_user_gets_not_acceptable(required: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    errors: dict[str, str] = {}
    async with (
        logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, required.prosody.c2s_port) as alice,
        sip_ua(required.kamailio.port, required.sink_port) as ua,
    ):
        alice.add_event_handler(
            "message_error", lambda m: errors.__setitem__(m["id"], m["error"]["condition"])
        )
        for name in ("valid", "tampered"):
            payload = signed(
                f"im:alice@{XMPP_DOMAIN}", f"sip:sink-bob@{SIP_DOMAIN}", f"{name} {run}", ALICE
            )
            if name == "tampered":
                payload = tampered(payload, f"tampered {run}")
            msg = alice.make_message(mto=f"sink-bob@{COMPONENT}", mbody="signed", mtype="chat")
            msg["id"] = f"{name}-{run}"
            carriage = msg.xml.makeelement(
                "{urn:cpimgw:carriage:0}cpim", {"type": payload.content_type}
            )
            carriage.text = base64.b64encode(payload.body).decode()
            msg.xml.append(carriage)
            msg.send()
        valid = f"valid {run}".encode()
        assert await until(lambda: any(valid in r.request.body for r in ua.received), 10)
        assert await until(lambda: f"tampered-{run}" in errors, 10), errors
        assert errors[f"tampered-{run}"] == "not-acceptable"
        assert not any(f"TAMPERED {run}".encode() in r.request.body for r in ua.received)


async def test_signer_not_the_sender_is_delivered_but_flagged_under_verify(
    tmp_path: Path, trust_file: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    to = f"im:alice@{XMPP_DOMAIN}"
    with fault_stack(tmp_path, signatures="verify", trust=(trust_file,)) as s:
        async with logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, s.prosody.c2s_port) as a:
            before = metric(s.gateway.metrics(), "cpimgw_signatures_total", state="invalid")
            mismatch = signed(API_BOT, to, f"mismatch {run}", OTHER)
            status = await post(s.settings.http_port, mismatch, f"xmpp:alice@{XMPP_DOMAIN}")
            assert status == 202
            assert await until(lambda: f"mismatch {run}" in texts(a), 10)
            after = metric(s.gateway.metrics(), "cpimgw_signatures_total", state="invalid")
            stale = signed(API_BOT, to, f"stale {run}", BOT, when=-3600)
            stale_status = await post(s.settings.http_port, stale, f"xmpp:alice@{XMPP_DOMAIN}")
        flagged = [
            line
            for line in s.gateway.log_lines()
            if "signature" in str(line) and "invalid" in str(line)
        ]
    assert after == before + 1
    assert flagged, "no log line flags the signature"
    assert stale_status == 400  # stale is refused under verify too (RFC 3923 §6.9)
