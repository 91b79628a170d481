"""The XMPP adapter against a real Prosody, with slixmpp clients as users.

The gateway side is a ``deliver`` of the test's own that records envelopes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from adapters.contract import AdapterContext, Receipt
from adapters.xmpp.adapter import XmppAdapter, XmppConfig
from adapters.xmpp.mapping import entity_to_payload
from adapters.xmpp.stanza import CARRIAGE_NS
from canonical import cpim, smime
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, GatewayError, Reason
from tests.pki import make_ca, make_leaf
from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e
VECTORS = Path(__file__).resolve().parents[2] / "canonical" / "vectors"


class Recorder:
    """The test's stand-in for the gateway core: stores envelopes, may refuse some."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.changed = asyncio.Event()
        self.refuse: GatewayError | None = None

    async def __call__(self, envelope: Envelope) -> Receipt:
        if self.refuse is not None:
            raise self.refuse
        self.envelopes.append(envelope)
        self.changed.set()
        return Receipt(envelope.identity)

    async def wait(self, count: int = 1, wait: float = 10.0) -> list[Envelope]:
        async with asyncio.timeout(wait):
            while len(self.envelopes) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.envelopes


def config(server: ProsodyServer, **changes: object) -> XmppConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.component_port,
        "component": server.component,
        "secret": SecretStr(server.secret),
        "domain_map": {server.component: "sip:sip.test"},
        "domains": [server.domain],
        "reconnect_initial": 0.2,
        "reconnect_max": 1.0,
    }
    values.update(changes)
    return XmppConfig.model_validate(values)


@contextlib.asynccontextmanager
async def running(
    server: ProsodyServer, **changes: object
) -> AsyncIterator[tuple[XmppAdapter, Recorder]]:
    adapter = XmppAdapter("xmpp", config(server, **changes), AdapterContext(gateway_id="gw-test"))
    recorder = Recorder()
    task = asyncio.create_task(adapter.run(recorder))
    try:
        async with asyncio.timeout(10):
            while not adapter.ready():
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield adapter, recorder
    finally:
        await adapter.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def outbound(payload: Payload, recipient: str = "xmpp:alice@xmpp.test", n: int = 0) -> Envelope:
    return Envelope(
        Operation.MESSAGE,
        "sip:ada@sip.test",
        recipient,
        payload,
        f"{n:032x}",
        Origin("sip"),
    ).hop("gw-test")


def carried(stanza: object) -> Payload:
    xml = stanza.xml  # type: ignore[attr-defined]
    element = xml.find(f"{{{CARRIAGE_NS}}}cpim")
    assert element is not None, str(stanza)
    return Payload(element.get("type"), base64.b64decode(element.text or ""))


def condition(stanza: object) -> str:
    """The RFC 6120 §8.3.3 defined condition of an error stanza, read from its XML."""
    for error in stanza.xml:  # type: ignore[attr-defined]
        if error.tag.endswith("}error"):
            for child in error:
                if child.tag.startswith(
                    "{urn:ietf:params:xml:ns:xmpp-stanzas}"
                ) and not child.tag.endswith("}text"):
                    return str(child.tag.rsplit("}", 1)[1])
    return ""


def is_message_from(domain: str):  # type: ignore[no-untyped-def]
    return lambda s: s.name == "message" and s["from"].domain == domain


# ---------------------------------------------------------------- client -> canonical
async def test_client_message_reaches_canonical(prosody: ProsodyServer) -> None:
    async with (
        running(prosody) as (_adapter, recorder),
        logged_in("alice@xmpp.test/phone", "alicepw", prosody.c2s_port) as alice,
    ):
        msg = alice.make_message(
            mto=f"bob@{prosody.component}", mbody="Grüße ✓ 😀 <&>", mtype="chat"
        )
        msg["id"] = "m-1"
        msg["subject"] = "Hello"
        fr = msg.xml.makeelement(
            f"{{{msg.namespace}}}subject", {"{http://www.w3.org/XML/1998/namespace}lang": "fr"}
        )
        fr.text = "Bonjour"
        msg.xml.append(fr)
        msg.xml.append(msg.xml.makeelement("{urn:xmpp:receipts}request", {}))
        msg.xml.append(msg.xml.makeelement("{http://jabber.org/protocol/chatstates}active", {}))
        msg.send()
        (env,) = await recorder.wait()
        assert env.operation is Operation.MESSAGE
        assert env.sender == "xmpp:alice@xmpp.test/phone"
        assert env.recipient == "sip:bob@sip.test"
        inner = cpim.parse_body(env.payload.body, strict=True)  # type: ignore[union-attr]
        assert inner.body.decode() == "Grüße ✓ 😀 <&>"
        assert [(s.lang, s.text) for s in inner.subjects] == [(None, "Hello"), ("fr", "Bonjour")]
        assert inner.find("Disposition-Notification", "urn:ietf:params:imdn")
        assert inner.find("Message-ID", "urn:ietf:params:imdn")[0].value == "m-1"

        alice.send_message(mto=f"bob@{prosody.component}", mbody=None, mtype="chat")
        composing = alice.make_message(mto=f"bob@{prosody.component}", mtype="chat")
        composing.xml.append(
            composing.xml.makeelement("{http://jabber.org/protocol/chatstates}composing", {})
        )
        composing.send()
        envs = await recorder.wait(3)
        states = [cpim.parse_body(e.payload.body) for e in envs[1:]]  # type: ignore[union-attr]
        assert states[1].content_type == "application/im-iscomposing+xml"
        assert b"<state>active</state>" in states[1].body


async def test_signed_object_from_client_reaches_canonical_and_verifies(
    prosody: ProsodyServer,
) -> None:
    ca = make_ca()
    signer = make_leaf(ca, "alice", uris=("im:alice@xmpp.test",))
    entity = bytes(
        cpim.build(
            sender="im:alice@xmpp.test",
            to=["sip:bob@sip.test"],
            content_type="text/plain; charset=utf-8",
            body="signed from XMPP ✓\r\n".encode(),
            form="entity",
        )
    )
    payload = smime.sign(entity, signer.cert, signer.key)
    text = (b"Content-Type: " + payload.content_type.encode() + b"\r\n\r\n" + payload.body).decode()
    async with (
        running(prosody) as (_adapter, recorder),
        logged_in("alice@xmpp.test/e2e", "alicepw", prosody.c2s_port) as alice,
    ):
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        alice.send_raw(  # RFC 3923 §3 character-reference form (CR written as &#13;)
            f"<message to='bob@{prosody.component}' id='s1'>"
            f"<e2e xmlns='urn:ietf:params:xml:ns:xmpp-e2e'>{escaped.replace(chr(13), '&#13;')}"
            "</e2e></message>"
        )
        alice.send_raw(  # and the CDATA form: the server delivers LF only
            f"<message to='bob@{prosody.component}' id='s2'>"
            f"<e2e xmlns='urn:ietf:params:xml:ns:xmpp-e2e'><![CDATA[{text}]]></e2e></message>"
        )
        envs = await recorder.wait(2)
    for env in envs:
        assert env.payload == payload
        result = smime.verify(env.payload, [ca.cert], now=dt.datetime.now(dt.UTC))
        assert result.valid, result.error


# ---------------------------------------------------------------- canonical -> client
@pytest.mark.parametrize(
    "vector", ["012-utf8-names-body.cpim", "013-binary-png-body.cpim", "015-imdn-request.cpim"]
)
async def test_canonical_message_reaches_client_with_exact_bytes(
    prosody: ProsodyServer, vector: str
) -> None:
    payload = Payload(
        "message/cpim", cpim.parse((VECTORS / "cpim" / "valid" / vector).read_bytes()).to_body()
    )
    async with (
        running(prosody) as (adapter, _),
        logged_in("alice@xmpp.test/desk", "alicepw", prosody.c2s_port) as alice,
    ):
        sent = await adapter.send(outbound(payload))
        got = await alice.wait_for(is_message_from(prosody.component))
        assert carried(got) == payload
        assert got["id"] == sent.native_id
        assert got["body"]  # something readable for every client
        if vector.startswith("013"):
            assert "image/png" in got["body"]


async def test_signed_object_crosses_to_client_and_still_verifies(prosody: ProsodyServer) -> None:
    ca = make_ca()
    signer = make_leaf(ca, "ada", uris=("sip:ada@sip.test",))
    entity = bytes(
        cpim.build(
            sender="sip:ada@sip.test",
            to=["im:alice@xmpp.test"],
            subjects=[(None, "signed"), ("de", "signiert")],
            content_type="text/plain; charset=utf-8",
            body="Grüße\r\nfrom SIP\r\n".encode(),
            form="entity",
        )
    )
    payload = smime.sign(entity, signer.cert, signer.key)
    async with (
        running(prosody) as (adapter, _),
        logged_in("alice@xmpp.test/sig", "alicepw", prosody.c2s_port) as alice,
    ):
        await adapter.send(outbound(payload, n=7))
        got = await alice.wait_for(is_message_from(prosody.component))
    received = carried(got)
    assert received == payload
    assert smime.verify(received, [ca.cert], now=dt.datetime.now(dt.UTC)).valid
    e2e = got.xml.find("{urn:ietf:params:xml:ns:xmpp-e2e}e2e")
    assert e2e is not None
    # the RFC 3923 copy lost its CRs in the server; restoring them gives the object back
    restored = entity_to_payload(smime.restore_crlf((e2e.text or "").encode()))[0]
    assert restored == payload


async def test_unknown_user_makes_send_fail_with_the_bounced_error(prosody: ProsodyServer) -> None:
    payload = Payload(
        "message/cpim",
        bytes(
            cpim.build(
                sender="sip:ada@sip.test",
                to=["im:x@xmpp.test"],
                content_type="text/plain",
                body=b"x",
            )
        ),
    )
    async with running(prosody) as (adapter, _):
        with pytest.raises(DeliveryError) as info:
            await adapter.send(outbound(payload, "xmpp:nobody@xmpp.test", n=3))
        assert info.value.reason is Reason.UNAVAILABLE
        assert info.value.status == "service-unavailable"


# ---------------------------------------------------------------- refusals keep serving
async def test_refusals_answer_with_stanza_errors_and_the_adapter_keeps_serving(
    prosody: ProsodyServer,
) -> None:
    async with (
        running(prosody, max_stanza_size=2048) as (_adapter, recorder),
        logged_in("alice@xmpp.test/err", "alicepw", prosody.c2s_port) as alice,
    ):
        alice.send_message(mto=f"bob@{prosody.component}", mbody="x" * 5000)
        big = await alice.wait_for(lambda s: s.name == "message" and s["type"] == "error")
        assert condition(big) == "policy-violation", str(big)

        alice.send_message(mto=prosody.component, mbody="to the component itself")
        unknown = await alice.wait_for(
            lambda s: s.name == "message" and s["type"] == "error" and s is not big
        )
        assert condition(unknown) == "item-not-found", str(unknown)

        recorder.refuse = GatewayError("denied by policy", reason=Reason.FORBIDDEN)
        refused = alice.make_message(mto=f"bob@{prosody.component}", mbody="refused")
        refused["id"] = "r-9"
        refused.send()
        denied = await alice.wait_for(
            lambda s: s.name == "message" and s["type"] == "error" and s["id"] == "r-9"
        )
        assert condition(denied) == "forbidden", str(denied)

        recorder.refuse = None
        alice.send_message(mto=f"bob@{prosody.component}", mbody="still served")
        (env,) = await recorder.wait()
        assert cpim.parse_body(env.payload.body).body == b"still served"  # type: ignore[union-attr]


# ---------------------------------------------------------------- presence
async def test_presence_subscription_both_ways(prosody: ProsodyServer) -> None:
    contact = f"dave@{prosody.component}"
    async with (
        running(prosody) as (adapter, recorder),
        logged_in("carol@xmpp.test/p", "carolpw", prosody.c2s_port) as carol,
    ):
        # XMPP user subscribes to a foreign contact
        carol.send_presence(pto=contact, ptype="subscribe")
        (sub,) = await recorder.wait()
        assert (sub.operation, sub.sender, sub.recipient, sub.duration) == (
            Operation.SUBSCRIBE,
            "xmpp:carol@xmpp.test",
            "sip:dave@sip.test",
            None,
        )
        # the foreign side authorises and shows presence
        await adapter.send(
            Envelope(
                Operation.AUTHORIZE,
                "sip:dave@sip.test",
                "xmpp:carol@xmpp.test",
                None,
                "a" * 32,
                Origin("sip"),
                granted=True,
            )
        )
        pidf = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<presence xmlns="urn:ietf:params:xml:ns:pidf"'
            b' entity="pres:dave@sip.test"><tuple id="desk"><status><basic>open</basic></status>'
            b"<note>on a call</note></tuple></presence>\n"
        )
        await adapter.send(
            Envelope(
                Operation.NOTIFY,
                "sip:dave@sip.test",
                "xmpp:carol@xmpp.test",
                Payload("application/pidf+xml", pidf),
                "b" * 32,
                Origin("sip"),
            )
        )
        shown = await carol.wait_for(
            lambda s: (
                s.name == "presence" and s["from"] == f"{contact}/desk" and s["type"] == "available"
            )
        )
        assert shown["status"] == "on a call"
        await asyncio.sleep(0.2)
        assert carol.client_roster[contact]["subscription"] in ("to", "both")

        # the foreign contact subscribes to the XMPP user, who approves
        await adapter.send(
            Envelope(
                Operation.SUBSCRIBE,
                "sip:dave@sip.test",
                "xmpp:carol@xmpp.test",
                None,
                "c" * 32,
                Origin("sip"),
            )
        )
        await carol.wait_for(lambda s: s.name == "presence" and s["type"] == "subscribe")
        carol.send_presence(pto=contact, ptype="subscribed")
        # Prosody first sends an unavailable from the bare JID (servers NOTES §1.5)
        async with asyncio.timeout(10):
            while not any(e.operation is Operation.AUTHORIZE for e in recorder.envelopes):
                recorder.changed.clear()
                await recorder.changed.wait()
        auth = next(e for e in recorder.envelopes if e.operation is Operation.AUTHORIZE)
        assert auth.granted is True
        assert auth.sender == "xmpp:carol@xmpp.test"
        # now carol's presence flows to the foreign side as PIDF
        carol.send_presence(pshow="dnd", pstatus="busy")
        async with asyncio.timeout(10):
            while not any(e.payload and b"dnd" in e.payload.body for e in recorder.envelopes):
                recorder.changed.clear()
                await recorder.changed.wait()
        envs = recorder.envelopes
        notify = next(
            e for e in envs if e.operation is Operation.NOTIFY and b"dnd" in e.payload.body
        )  # type: ignore[union-attr]
        assert notify.sender == "xmpp:carol@xmpp.test/p"


async def test_probe_becomes_one_time_subscribe(prosody: ProsodyServer) -> None:
    async with (
        running(prosody) as (_adapter, recorder),
        logged_in("bob@xmpp.test/p", "bobpw", prosody.c2s_port) as bob,
    ):
        bob.send_presence(pto=f"erin@{prosody.component}", ptype="probe")
        (probe,) = await recorder.wait()
        assert probe.operation is Operation.SUBSCRIBE
        assert probe.duration == 0


async def test_shutdown_sends_unavailable_for_shown_contacts(prosody: ProsodyServer) -> None:
    contact = f"frank@{prosody.component}"
    async with logged_in("bob@xmpp.test/s", "bobpw", prosody.c2s_port) as bob:
        async with running(prosody) as (adapter, _):
            pidf = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n'
                b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:frank@sip.test">'
                b'<tuple id="m"><status><basic>open</basic></status></tuple></presence>\n'
            )
            await adapter.send(
                Envelope(
                    Operation.NOTIFY,
                    "sip:frank@sip.test",
                    "xmpp:bob@xmpp.test/s",
                    Payload("application/pidf+xml", pidf),
                    "d" * 32,
                    Origin("sip"),
                )
            )
            await bob.wait_for(lambda s: s.name == "presence" and s["from"] == f"{contact}/m")
        gone = await bob.wait_for(
            lambda s: (
                s.name == "presence" and s["from"] == f"{contact}/m" and s["type"] == "unavailable"
            )
        )
        assert gone is not None


# ---------------------------------------------------------------- restart
async def test_server_restart_mid_stream_loses_no_message(prosody_own: ProsodyServer) -> None:
    server = prosody_own
    payloads = [
        Payload(
            "message/cpim",
            bytes(
                cpim.build(
                    sender="sip:ada@sip.test",
                    to=["im:alice@xmpp.test"],
                    content_type="text/plain; charset=utf-8",
                    body=f"n={i}".encode(),
                )
            ),
        )
        for i in range(30)
    ]
    async with running(server) as (adapter, _):
        first = [
            asyncio.create_task(adapter.send(outbound(p, n=i))) for i, p in enumerate(payloads[:10])
        ]
        await asyncio.gather(*first)
        await asyncio.to_thread(server.stop)
        during = [
            asyncio.create_task(adapter.send(outbound(p, n=10 + i)))
            for i, p in enumerate(payloads[10:20])
        ]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in during)  # never reported sent while the server is down
        await asyncio.to_thread(server.start)
        await asyncio.gather(*during)
        after = [adapter.send(outbound(p, n=20 + i)) for i, p in enumerate(payloads[20:])]
        await asyncio.gather(*after)
        # alice was offline all along: the server stored every message (mod_offline)
        async with logged_in("alice@xmpp.test/late", "alicepw", server.c2s_port) as alice:
            async with asyncio.timeout(15):
                while True:
                    got = {
                        carried(s).body
                        for s in alice.received
                        if s.name == "message" and s["from"].domain == server.component
                    }
                    if len(got) >= 30:
                        break
                    await asyncio.sleep(0.1)
    assert got == {p.body for p in payloads}
