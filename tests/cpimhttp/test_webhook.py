"""Webhooks: HMAC-SHA256 signed POSTs, in order, retried with backoff from the ledger
(so a restart resumes them), against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from adapters.cpim.adapter import CpimHttpAdapter, CpimHttpConfig
from adapters.cpim.webhook import EVENT_ID, SIGNATURE, backoff, sign, verify
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of
from gateway.core import Gateway
from tests.cpimhttp.rig import BOT, CAROL, build_gateway, client, cpim, http_config, net, running
from tests.gateway.network import until
from tests.servers.process import free_port

SECRET = b"webhook-secret"


@given(st.binary(max_size=200), st.integers(0, 2**31))
def test_signature_verifies_and_any_change_breaks_it(body: bytes, stamp: int) -> None:
    header = sign(SECRET, stamp, body)
    assert verify(SECRET, header, body, now=stamp, tolerance=300)
    assert not verify(SECRET, header, body + b"x", now=stamp, tolerance=300)
    assert not verify(b"other", header, body, now=stamp, tolerance=300)
    assert not verify(SECRET, header, body, now=stamp + 301, tolerance=300)
    assert not verify(SECRET, None, body, now=stamp, tolerance=300)


@given(st.integers(1, 40), st.floats(0, 1000))
def test_backoff_doubles_is_capped_and_honours_retry_after(attempts: int, after: float) -> None:
    delay = backoff(attempts, initial=1.0, maximum=300.0, retry_after=after)
    assert delay >= after
    assert delay <= max(300.0, after)
    assert backoff(1, initial=1.0, maximum=300.0, retry_after=None) == 1.0


class Receiver:
    """A webhook receiver that refuses the first ``refuse`` deliveries with 503."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refused < self.refuse:
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": "0"})
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)


@asynccontextmanager
async def receiving(receiver: Receiver, port: int) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def api(gateway: Gateway) -> CpimHttpAdapter:
    found = gateway.adapters["api"]
    assert isinstance(found, CpimHttpAdapter)
    return found


def message(text: str) -> Envelope:
    body = cpim(text, sender=CAROL, to=BOT)
    return Envelope(
        Operation.MESSAGE, CAROL, BOT, Payload(CPIM, body), identity_of(body), Origin("net")
    )


def hooked(path: Path, port: int) -> CpimHttpConfig:
    return http_config(
        path,
        clients=[
            client(
                "bot",
                webhook=f"http://127.0.0.1:{port}/hook",
                webhook_secret=SecretStr(SECRET.decode()),
            )
        ],
        webhook_initial_backoff=0.05,
        webhook_max_backoff=0.2,
    )


@pytest.mark.e2e
async def test_webhook_is_signed_ordered_and_retried(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(refuse=2)
    config = hooked(tmp_path / "gw.db", port)
    async with (
        receiving(receiver, port),
        running(build_gateway(tmp_path / "gw.db", config=config)) as gw,
    ):
        for i in range(3):
            await net(gw).inject(message(f"w{i}"))
        await until(lambda: len(receiver.received) == 3, within=10)
        failures = api(gw).webhooks["bot"].failures
    assert receiver.refused == 2
    assert failures == 2
    events = [json.loads(body) for _, body in receiver.received]
    texts = [base64.b64decode(e["body"]).rsplit(b"\r\n\r\n", 1)[1] for e in events]
    assert texts == [b"w0", b"w1", b"w2"]
    for headers, body in receiver.received:
        assert verify(SECRET, headers[SIGNATURE], body, now=time.time(), tolerance=60)
        assert headers[EVENT_ID] == json.loads(body)["id"]


@pytest.mark.e2e
async def test_webhook_retries_resume_after_a_restart(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "gw.db"
    config = hooked(path, port)
    async with running(build_gateway(path, config=config)) as gw:
        await net(gw).inject(message("while the receiver is down"))
        await until(lambda: api(gw).webhooks["bot"].failures >= 2, within=10)
        attempts, _, error = await api(gw).ledger.hook_state("bot")
    assert attempts >= 2
    assert error is not None
    receiver = Receiver()
    async with receiving(receiver, port), running(build_gateway(path, config=config)) as gw:
        await until(lambda: len(receiver.received) == 1, within=10)
        ledger = api(gw).ledger
        deadline = time.monotonic() + 10  # the row leaves once the 204 is processed
        while time.monotonic() < deadline:
            left, state = await ledger.backlog("bot"), await ledger.hook_state("bot")
            if left == 0 and state == (0, 0.0, None):
                break
            await asyncio.sleep(0.02)
    assert left == 0
    assert state == (0, 0.0, None)
    delivered = json.loads(receiver.received[0][1])["identity"]
    assert delivered == message("while the receiver is down").identity
