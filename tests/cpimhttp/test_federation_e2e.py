"""Two gateways federating over the native CPIM adapter with mutual TLS, as two
``cpimgw run`` processes on loopback:

    XMPP user (Prosody)  ->  gateway A  ==HTTPS, mTLS==>  gateway B  ->  Kamailio -> SIP UA

Gateway A fronts Prosody (XEP-0114 component ``sip.xmpp.test``) and sends everything for
``sip.test`` to its peer B over the HTTP adapter; gateway B fronts Kamailio (SIP users
``@sip.test``) and sends everything for ``xmpp.test`` back to A. Each accepts the other
only with a certificate from the shared CA whose name it has configured. An XMPP user's
signed message reaches a SIP user byte for byte and verifies with ``openssl cms``; the SIP
user's reply comes back; presence crosses both ways (RFC 3860/3859 operations carried
gateway to gateway, RFC 3862 objects untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.sip.codec import Request
from canonical import cpim, smime
from canonical.envelope import Payload
from canonical.presence import parse_pidf
from gateway.config import parse
from gateway.demo.servers import http_status, kamailio_argv, sip_ping
from tests import pki
from tests.e2e.peers import (
    E2E_NS,
    carried,
    is_message,
    openssl_verify,
    requests,
    sip_publish,
    sip_send,
    sip_user,
    sip_watch,
    statuses,
    xml_text,
)
from tests.e2e.stack import Stack
from tests.servers.kamailio import Kamailio
from tests.servers.process import ServerProcess, free_port
from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

XMPP_DOMAIN = "xmpp.test"
COMPONENT = "sip.xmpp.test"
SIP_DOMAIN = "sip.test"
SECRET = "federation-s3cret"
USERS = {"alice": "alicepw", "carol": "carolpw"}


@dataclass(frozen=True)
class Federation:
    """Both gateways and their networks; ``stack`` is what the SIP helpers need."""

    stack: Stack
    a: ServerProcess
    b: ServerProcess
    ca_file: Path
    alice: pki.Credential
    workdir: Path

    def logs(self) -> str:
        return f"--- gateway A ---\n{self.a.log(8000)}\n--- gateway B ---\n{self.b.log(8000)}"


def _toml(
    *,
    gateway_id: str,
    store: Path,
    metrics: int,
    fed_port: int,
    tls: tuple[Path, Path],
    ca: Path,
    peer: str,
    peer_url: str,
    peer_domains: list[str],
    network: str,
    routes: str,
) -> str:
    domains = ", ".join(f'"{d}"' for d in peer_domains)
    senders = ", ".join(f'"*@{d}"' for d in peer_domains)
    return f"""
[gateway]
id = "{gateway_id}"

[store]
path = "{store}"
synchronous = "normal"

[delivery]
initial_backoff = "200ms"
max_backoff = "2s"

{network}

[adapters.fed]
kind = "cpim"
host = "127.0.0.1"
port = {fed_port}
database = "{store}"
synchronous = "normal"
tls = {{ cert = "{tls[0]}", key = "{tls[1]}", ca = "{ca}", client_certs = "required" }}

[[adapters.fed.peers]]
name = "{peer}"
send_as = [{senders}]
domains = [{domains}]
url = "{peer_url}"

{routes}

[security]
rate = 0

[presence]
min_interval = "100ms"

[metrics]
listen = "127.0.0.1:{metrics}"

[logging]
level = "info"
"""


def _gateway(name: str, workdir: Path, text: str, metrics: int) -> ServerProcess:
    config = workdir / f"{name}.toml"
    parse(text, file=str(config))  # a broken config fails here, with its line
    config.write_text(text)
    return ServerProcess(
        f"cpimgw-{name}",
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        workdir=workdir,
        ready=lambda _p: http_status(metrics, "/readyz") == 200,
        ready_timeout=40.0,
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    workdir = tmp_path_factory.mktemp("federation")
    ca = pki.make_ca("cpimgw federation CA")
    ca_file = workdir / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    a_tls = pki.make_leaf(ca, "gw-a.test", dns=("gw-a.test",), ips=("127.0.0.1",)).write(
        workdir, "gw-a"
    )
    b_tls = pki.make_leaf(ca, "gw-b.test", dns=("gw-b.test",), ips=("127.0.0.1",)).write(
        workdir, "gw-b"
    )
    alice = pki.make_leaf(ca, "Alice (XMPP)", uris=(f"im:alice@{XMPP_DOMAIN}",))
    with contextlib.ExitStack() as stop:
        prosody = ProsodyServer(
            workdir / "prosody", domain=XMPP_DOMAIN, component=COMPONENT, secret=SECRET
        )
        for user, password in USERS.items():
            prosody.register(user, password)
        prosody.start()
        stop.callback(prosody.stop)
        sip_port, kamailio_port = free_port("udp"), free_port("udp")
        kamailio = ServerProcess(
            "kamailio",
            kamailio_argv(
                workdir / "kamailio",
                port=kamailio_port,
                sip_domain=SIP_DOMAIN,
                gateway_domain=XMPP_DOMAIN,
                gateway=f"sip:127.0.0.1:{sip_port};transport=udp",
            ),
            workdir=workdir / "kamailio",
            env={"LC_ALL": "C"},
            ready=lambda _p: sip_ping(kamailio_port),
        ).start()
        stop.callback(kamailio.stop)
        a_fed, b_fed, a_metrics, b_metrics = (free_port() for _ in range(4))
        a = _gateway(
            "a",
            workdir,
            _toml(
                gateway_id="gw-a",
                store=workdir / "a.sqlite3",
                metrics=a_metrics,
                fed_port=a_fed,
                tls=a_tls,
                ca=ca_file,
                peer="gw-b.test",
                peer_url=f"https://127.0.0.1:{b_fed}",
                peer_domains=[SIP_DOMAIN],
                network=f"""
[adapters.xmpp]
kind = "xmpp"
host = "127.0.0.1"
port = {prosody.component_port}
component = "{COMPONENT}"
secret = "{SECRET}"
domains = ["{XMPP_DOMAIN}"]
domain_map = {{ "{COMPONENT}" = "sip:{SIP_DOMAIN}" }}
""",
                routes=f"""
[[routes]]
match = "{XMPP_DOMAIN}"
adapter = "xmpp"
scheme = "xmpp"

[[routes]]
match = "{SIP_DOMAIN}"
adapter = "fed"
""",
            ),
            a_metrics,
        )
        b = _gateway(
            "b",
            workdir,
            _toml(
                gateway_id="gw-b",
                store=workdir / "b.sqlite3",
                metrics=b_metrics,
                fed_port=b_fed,
                tls=b_tls,
                ca=ca_file,
                peer="gw-a.test",
                peer_url=f"https://127.0.0.1:{a_fed}",
                peer_domains=[XMPP_DOMAIN],
                network=f"""
[adapters.sip]
kind = "sip"
listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
proxy = "sip:127.0.0.1:{kamailio_port};transport=udp"
domains = ["{XMPP_DOMAIN}"]
""",
                routes=f"""
[[routes]]
match = "{SIP_DOMAIN}"
adapter = "sip"

[[routes]]
match = "{XMPP_DOMAIN}"
adapter = "fed"
# the XMPP side knows its users as xmpp: (see examples/gateway.toml)
scheme = "xmpp"
""",
            ),
            b_metrics,
        )
        b.start()
        stop.callback(b.stop)
        a.start()
        stop.callback(a.stop)
        proxy = Kamailio(kamailio, kamailio_port, 0, None, None, workdir / "kamailio")
        stack = Stack(workdir=workdir, xmpp=prosody, kamailio=proxy)  # gateways: a and b
        yield Federation(stack, a, b, ca_file, alice, workdir)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_signed_xmpp_message_crosses_both_gateways_and_verifies_at_the_sip_ua(
    federation: Federation,
) -> None:
    stack = federation.stack
    entity = bytes(
        cpim.build(
            sender=f"im:alice@{XMPP_DOMAIN}",
            to=[f"sip:bob@{SIP_DOMAIN}"],
            datetime=_now(),
            subjects=[("en", "Across two gateways"), ("fr", "À travers deux passerelles")],
            content_type="text/plain; charset=utf-8",
            body="Signé, scellé, livré ✓\r\n".encode(),
            form="entity",
        )
    )
    signed = smime.sign(entity, federation.alice.cert, federation.alice.key)
    mime = f"Content-Type: {signed.content_type}\r\n\r\n".encode() + signed.body
    text = xml_text(mime.decode()).replace("\r", "&#13;")  # RFC 3923 §4 <e2e/>
    async with (
        sip_user(stack, "bob") as bob,
        logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice,
    ):
        alice.send_raw(
            f"<message to='bob@{COMPONENT}' type='chat' id='fed-signed-1'>"
            f"<e2e xmlns='{E2E_NS}'>{text}</e2e></message>"
        )
        got = await bob.messages()
    assert len(got) == 1, federation.logs()
    received = Payload(got[0].get("Content-Type") or "", got[0].body)
    assert received == signed, "the SIP UA gets the signed object byte for byte"
    verdict = openssl_verify(received, federation.ca_file, federation.workdir / "verify")
    assert verdict.ok, verdict.output
    assert "Alice (XMPP)" in verdict.signer
    # it went through both gateways: the transport history the SIP adapter carries
    trace = got[0].get("Cpimgw-Trace") or ""
    assert [h.strip() for h in trace.split(",")] == ["gw-a", "gw-b"]


async def test_sip_reply_comes_back_through_both_gateways(federation: Federation) -> None:
    stack = federation.stack
    reply = bytes(
        cpim.build(
            sender=f"sip:bob@{SIP_DOMAIN}",
            to=[f"sip:alice@{XMPP_DOMAIN}"],
            datetime=_now(),
            content_type="text/plain; charset=utf-8",
            body="Bien reçu, merci ✓\r\n".encode(),
        )
    )
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        run = await sip_send(
            stack, sender="bob", to="alice", content_type="message/cpim", body=reply
        )
        assert statuses(run) == [202], run.output + federation.logs()
        stanza = await alice.wait_for(lambda s: is_message(s, sender=f"bob@{COMPONENT}"))
    assert "Bien reçu, merci ✓" in stanza["body"]
    assert carried(stanza) == Payload("message/cpim", reply)
    hops = [h.get("by") for h in stanza.xml.iter("{urn:cpimgw:trace:0}hop")]
    assert hops == ["gw-b", "gw-a"]  # came back through both gateways


def _pidf(user: str, note: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<presence xmlns='urn:ietf:params:xml:ns:pidf' "
        f"entity='sip:{user}@{SIP_DOMAIN}'><tuple id='desk'><status><basic>open</basic>"
        f"</status><note xml:lang='en'>{note}</note></tuple></presence>"
    ).encode()


def _presence_from(user: str, status: str):  # type: ignore[no-untyped-def]
    def match(stanza) -> bool:  # type: ignore[no-untyped-def]
        return (
            stanza.name == "presence"
            and str(stanza["from"]).split("/")[0] == user
            and stanza.xml.get("type") in (None, "available")
            and stanza["status"] == status
        )

    return match


def _answer(user: str, kind: str):  # type: ignore[no-untyped-def]
    def match(stanza) -> bool:  # type: ignore[no-untyped-def]
        return (
            stanza.name == "presence"
            and str(stanza["from"]).split("/")[0] == user
            and stanza.xml.get("type") == kind
        )

    return match


async def test_sip_presence_reaches_the_xmpp_user_across_the_federation(
    federation: Federation,
) -> None:
    stack = federation.stack
    contact = f"dan@{COMPONENT}"
    publisher = await sip_publish(
        stack,
        "dan",
        _pidf("dan", "In the office ✓"),
        _pidf("dan", "Gone fishing 🎣"),
        wait_ms=10000,
    )
    await asyncio.sleep(0.5)
    async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
        alice.send_raw(f"<presence to='{contact}' type='subscribe'/>")
        await alice.wait_for(_answer(contact, "subscribed"), wait=20)
        await alice.wait_for(_presence_from(contact, "In the office ✓"), wait=20)
        await alice.wait_for(_presence_from(contact, "Gone fishing 🎣"), wait=20)
        alice.send_raw(f"<presence to='{contact}' type='unsubscribe'/>")
    run = await publisher
    assert run.returncode == 0, run.output


async def test_xmpp_presence_reaches_the_sip_watcher_across_the_federation(
    federation: Federation,
) -> None:
    stack = federation.stack
    watcher = f"erin@{COMPONENT}"
    async with logged_in(f"carol@{XMPP_DOMAIN}", "carolpw", stack.c2s_port) as carol:
        carol.send_raw("<presence><status>At my desk ✓</status></presence>")
        watching = sip_watch(stack, "erin", "carol")
        await carol.wait_for(_answer(watcher, "subscribe"), wait=20)
        carol.send_raw(f"<presence to='{watcher}' type='subscribed'/>")
        await asyncio.sleep(1.5)
        carol.send_raw("<presence><show>away</show><status>Out to lunch ☕</status></presence>")
        run = await watching
    assert run.returncode == 0, run.output + federation.logs()
    notifies: list[Request] = requests(run.received(), "NOTIFY")
    notes = [
        [n.text for t in parse_pidf(n.body).tuples for n in t.notes] for n in notifies if n.body
    ]
    assert ["At my desk ✓"] in notes, federation.logs()
    assert ["Out to lunch ☕"] in notes
    for notify in notifies:
        if notify.body:
            assert parse_pidf(notify.body).entity.endswith(f"carol@{XMPP_DOMAIN}")
