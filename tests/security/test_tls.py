"""TLS on every leg of ``cpimgw run`` that verifies a certificate, with certificates made
for the test (``tests/pki.py``): expired, self-signed (trusted by nobody) and issued for
another name are refused, a good one works, and nothing falls back to cleartext.

- SIP over TLS to Kamailio: the proxy's certificate is swapped between runs of the real
  Kamailio (its TLS files rewritten, the process restarted on the same ports);
- the HTTP API to a peer gateway (mutual TLS, the peer is an HTTPS server of the test's
  own presenting each certificate), and from a peer: the API's listener asks for client
  certificates and takes only good ones from the configured CA.

The XMPP component connection (XEP-0114) has no TLS: it is cleartext on loopback or a
private link by design (docs/threat-model.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import pki
from tests.e2e.stack import (
    API_TOKEN,
    COMPONENT,
    PASSWORD,
    XMPP_DOMAIN,
    fault_stack,
    sip_ua,
)
from tests.faults.figures import record
from tests.servers.process import free_port
from tests.xmpp.users import User

pytestmark = pytest.mark.e2e

PAST = pki.NOW - dt.timedelta(days=30)


def bad_certificates(ca: pki.Credential, good_names: dict[str, Any]) -> dict[str, pki.Credential]:
    return {
        "expired": pki.make_leaf(
            ca, "expired", not_before=PAST - dt.timedelta(days=1), not_after=PAST, **good_names
        ),
        "self-signed": pki.make_self_signed("self-signed", **good_names),
        "wrong-name": pki.make_leaf(ca, "wrong.test", dns=("wrong.test",)),
    }


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_sip_tls_to_kamailio_refuses_bad_proxy_certificates(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    with fault_stack(tmp_path, start_gateway=False, sip_proxy_transport="tls", expiry="1m") as s:
        k = s.kamailio
        s.settings.proxy_port = k.tls_port
        s.settings.values["adapters.sip.tls_ca_file"] = str(k.ca_file)
        await asyncio.to_thread(s.gateway.start)
        alice = User(f"alice@{XMPP_DOMAIN}/desk", PASSWORD)
        await alice.login(s.prosody.c2s_port)
        outcome: dict[str, Any] = {}
        async with sip_ua(k.port, s.sink_port) as ua:

            def arrived(tag: str) -> bool:
                return any(tag.encode() in r.request.body for r in ua.received)

            def send(tag: str) -> None:
                msg = alice.make_message(mto=f"sink-{tag}@{COMPONENT}", mbody=tag, mtype="chat")
                msg["id"] = tag
                msg.send()

            assert k.ca is not None
            cases = {"good": None, **bad_certificates(k.ca, {"ips": ("127.0.0.1",)})}
            for name, credential in cases.items():
                if credential is not None:
                    await asyncio.to_thread(s.swap_proxy_certificate, credential)
                tag = f"{name.replace('-', '')}{run}"
                send(tag)
                outcome[name] = await until(lambda t=tag: arrived(t), 5 if credential else 15)
            refusals = [
                line.get("error", "")
                for line in s.gateway.log_lines()
                if line.get("event") == "retry" and "sink-" in str(line.get("recipient"))
            ]
            # the good certificate back: what waited is delivered, by itself
            await asyncio.to_thread(s.swap_proxy_certificate, None)
            recovered = await until(
                lambda: all(arrived(f"{n.replace('-', '')}{run}") for n in cases), 30
            )
        await alice.logout()
    record(
        "tls-sip-proxy",
        delivered=outcome,
        refusal_errors=sorted({r.split(":", 1)[-1].strip()[:120] for r in refusals}),
        delivered_after_good_certificate_returned=recovered,
    )
    assert outcome == {"good": True, "expired": False, "self-signed": False, "wrong-name": False}
    assert refusals, "no retry logged for the refused handshakes"
    assert recovered


@contextlib.asynccontextmanager
async def fake_peer(port: int, credential: pki.Credential, ca: pki.Credential, folder: Path):  # type: ignore[no-untyped-def]
    """An HTTPS peer gateway of the test's own: records each request and answers 202."""
    received: list[dict[str, Any]] = []

    async def operate(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        received.append({"path": request.path, "client_cert": bool(peer)})
        await request.read()
        return web.json_response({"id": "x", "state": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/messages", operate)
    crt, key = credential.write(folder, f"peer-{uuid.uuid4().hex[:6]}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    ca_file = folder / "peer-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    try:
        yield received
    finally:
        await runner.cleanup()


async def test_http_api_peers_need_good_certificates_both_ways(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    ca = pki.make_ca("cpimgw federation test CA")
    certs = tmp_path / "certs"
    ours = pki.make_leaf(ca, "gw.test", dns=("gw.test",), ips=("127.0.0.1",))
    our_crt, our_key = ours.write(certs, "gw")
    ca_file = certs / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    peer_port = free_port()
    api = f"""
[adapters.api.tls]
cert = "{our_crt}"
key = "{our_key}"
ca = "{ca_file}"
client_certs = "optional"

[[adapters.api.peers]]
name = "peer.test"
url = "https://127.0.0.1:{peer_port}"
domains = ["peer.test"]
send_as = ["*@peer.test"]
"""
    routes = '[[routes]]\nmatch = "peer.test"\nadapter = "api"\n'
    good_peer = pki.make_leaf(ca, "peer.test", dns=("peer.test",), ips=("127.0.0.1",))
    cases = {"good": good_peer, **bad_certificates(ca, {"dns": ("peer.test",)})}
    outbound: dict[str, bool] = {}
    with fault_stack(tmp_path, api_clients=api, routes=routes, expiry="1m") as s:
        port = s.settings.http_port
        async with aiohttp.ClientSession() as session:

            async def post(tag: str) -> int:
                body = (
                    f"From: <im:bot@bots.test>\r\nTo: <im:carol@peer.test>\r\n\r\n"
                    f"Content-Type: text/plain\r\n\r\n{tag}"
                ).encode()
                trust = ssl.create_default_context(cafile=str(ca_file))
                async with session.post(
                    f"https://127.0.0.1:{port}/v1/messages",
                    data=body,
                    ssl=trust,
                    headers={
                        "Authorization": f"Bearer {API_TOKEN}",
                        "Content-Type": "message/cpim",
                    },
                ) as response:
                    return response.status

            for name, credential in cases.items():
                async with fake_peer(peer_port, credential, ca, certs) as received:
                    assert await post(f"{name}{run}") == 202
                    outbound[name] = await until(lambda r=received: bool(r), 6)
                    if name == "good":
                        assert received[0]["client_cert"], "the gateway showed no certificate"
            # inbound: callers presenting certificates to the API listener
            inbound: dict[str, str] = {}
            callers = {"good-peer": good_peer, **bad_certificates(ca, {"dns": ("peer.test",)})}
            callers["unknown-name"] = pki.make_leaf(ca, "stranger.test", dns=("stranger.test",))
            for name, credential in callers.items():
                crt, key = credential.write(certs, f"caller-{name}")
                context = ssl.create_default_context(cafile=str(ca_file))
                context.load_cert_chain(crt, key)
                body = (
                    b"From: <im:dan@peer.test>\r\nTo: <im:bot@bots.test>\r\n\r\n"
                    b"Content-Type: text/plain\r\n\r\nhi"
                )
                try:
                    async with session.post(
                        f"https://127.0.0.1:{port}/v1/messages",
                        data=body,
                        ssl=context,
                        headers={"Content-Type": "message/cpim"},
                    ) as response:
                        inbound[name] = str(response.status)
                except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                    inbound[name] = f"refused: {type(exc).__name__}"
            # and without TLS at all: the listener does not speak cleartext
            try:
                async with session.get(f"http://127.0.0.1:{port}/v1/status/x") as response:
                    inbound["cleartext"] = str(response.status)
            except aiohttp.ClientError as exc:
                inbound["cleartext"] = f"refused: {type(exc).__name__}"
    record("tls-http-peers", outbound_delivered=outbound, inbound=inbound)
    assert outbound == {"good": True, "expired": False, "self-signed": False, "wrong-name": False}
    assert inbound["good-peer"] == "202"
    for name in ("expired", "self-signed"):
        assert inbound[name].startswith("refused") or inbound[name] == "401", inbound
    assert inbound["unknown-name"] == "401", inbound
    assert inbound["cleartext"] != "200", inbound
