"""Webhook deliveries of the HTTP adapter verify the receiver's TLS certificate.

A webhook is an HTTPS client leg (``adapters/cpim/webhook.py``): the adapter POSTs a
client's events to its URL with the adapter's client TLS context (the configured CA, host
name checked). Receivers on 127.0.0.1 present, one per case, a certificate that is
expired, self-signed (trusted by nobody), or issued for another name (``tests/pki.py``,
real X.509 from ``cryptography``). Each must be refused during the handshake, so the
receiver's handler never sees a request; the refusal must be visible (the ledger's last
error names the certificate problem, a warning is logged, ``http_webhook_retries`` is
counted) and the event must stay in the client's outbox: once the same port presents a
good certificate, that very event is delivered.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter, TlsConfig
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of
from canonical.policy import DEFAULT
from gateway.core import Gateway
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store.sqlite import SqliteStore
from tests import pki
from tests.cpimhttp.rig import BOT, CAROL, client, cpim, http_config, net, running
from tests.gateway.network import FAST, memory, until
from tests.servers.process import free_port

pytestmark = pytest.mark.e2e

SECRET = "webhook-tls-secret"
PAST = pki.NOW - dt.timedelta(days=30)
LOOPBACK = ("127.0.0.1",)

#: What the refusal of each certificate says (OpenSSL's verify error, via aiohttp).
EXPECTED_ERROR = {
    "expired": "certificate has expired",
    "self-signed": "unable to get local issuer certificate",
    "wrong-name": "IP address mismatch",
}


def bad_certificate(kind: str, ca: pki.Credential) -> pki.Credential:
    if kind == "expired":
        return pki.make_leaf(
            ca, "expired", not_before=PAST - dt.timedelta(days=1), not_after=PAST, ips=LOOPBACK
        )
    if kind == "self-signed":
        return pki.make_self_signed("self-signed", ips=LOOPBACK)
    return pki.make_leaf(ca, "wrong.test", dns=("wrong.test",))  # not 127.0.0.1


class Receiver:
    """A webhook receiver: records every request that reaches its handler."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        return web.Response(status=204)


@asynccontextmanager
async def https_receiver(
    receiver: Receiver, port: int, credential: pki.Credential, folder: Path
) -> AsyncIterator[None]:
    """An HTTPS server on 127.0.0.1:``port`` presenting ``credential``."""
    cert, key = credential.write(folder, f"receiver-{port}-{credential.cert.serial_number}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield
    finally:
        await runner.cleanup()


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def hooked_gateway(
    folder: Path, hook_port: int, ca: pki.Credential, counts: Counter[str], logger: logging.Logger
) -> Gateway:
    """A gateway whose HTTP adapter trusts ``ca`` and sends client ``bot``'s events to
    ``https://127.0.0.1:hook_port/hook``; the other network is a memory adapter."""
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    own_cert, own_key = pki.make_leaf(ca, "gateway", ips=LOOPBACK).write(folder, "gateway")

    def count(name: str, /, **labels: Any) -> None:
        counts[name] += 1

    config = http_config(
        folder / "gw.db",
        tls=TlsConfig(cert=own_cert, key=own_key, ca=ca_file),
        clients=[
            client(
                "bot",
                webhook=f"https://127.0.0.1:{hook_port}/hook",
                webhook_secret=SecretStr(SECRET),
            )
        ],
        webhook_initial_backoff=0.05,
        webhook_max_backoff=0.2,
        webhook_timeout=5.0,
    )
    api = CpimHttpAdapter(
        "api",
        config,
        AdapterContext(gateway_id="gw", logger=logger, policy=DEFAULT, count=count),
    )
    return Gateway(
        gateway_id="gw",
        adapters={"api": api, "net": memory("net", "gw")},
        store=SqliteStore(folder / "gw.db", synchronous="normal"),
        routing=RoutingTable((Route("bots.test", "api"), Route("example.net", "net"))),
        rules=Rules(rate=0),
        delivery=FAST,
        seen=SeenSet(window=0),
    )


def message(text: str) -> Envelope:
    body = cpim(text, sender=CAROL, to=BOT)
    return Envelope(
        Operation.MESSAGE, CAROL, BOT, Payload(CPIM, body), identity_of(body), Origin("net")
    )


@pytest.mark.parametrize("kind", sorted(EXPECTED_ERROR))
async def test_webhook_receiver_with_a_bad_certificate_is_refused_and_the_event_kept(
    tmp_path: Path, kind: str
) -> None:
    ca = pki.make_ca("webhook test CA")
    port = free_port()
    counts: Counter[str] = Counter()
    logger = logging.getLogger(f"test.webhook-tls.{kind}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    lines = Recorded()
    logger.addHandler(lines)
    event = message(f"for a receiver with a {kind} certificate")
    gateway = hooked_gateway(tmp_path, port, ca, counts, logger)
    try:
        bad = Receiver()
        async with running(gateway) as gw:
            adapter = gw.adapters["api"]
            assert isinstance(adapter, CpimHttpAdapter)
            hook = adapter.webhooks["bot"]
            async with https_receiver(bad, port, bad_certificate(kind, ca), tmp_path):
                await net(gw).inject(event)
                await until(lambda: hook.failures >= 2, within=15)
            assert bad.received == []  # refused in the handshake: nothing reached it
            assert hook.delivered == 0
            attempts, _, error = await adapter.ledger.hook_state("bot")
            assert attempts >= 2
            assert error is not None
            assert "Certificate" in error, error  # aiohttp's ClientConnectorCertificateError
            assert EXPECTED_ERROR[kind] in error, error
            assert counts["http_webhook_retries"] >= 2
            assert counts["http_webhook_delivered"] == 0
            warned = [line for line in lines.lines if "webhook of bot" in line]
            assert warned
            assert EXPECTED_ERROR[kind] in warned[0], warned[0]
            assert await adapter.ledger.backlog("bot") == 1  # kept, not dropped

            # the same port now presents a good certificate: that same event arrives
            good = Receiver()
            certificate = pki.make_leaf(ca, "hooks.test", ips=LOOPBACK)
            async with https_receiver(good, port, certificate, tmp_path):
                await until(lambda: len(good.received) == 1, within=15)
            assert json.loads(good.received[0])["identity"] == event.identity
            assert await adapter.ledger.backlog("bot") == 0
            assert counts["http_webhook_delivered"] == 1
    finally:
        logger.removeHandler(lines)
