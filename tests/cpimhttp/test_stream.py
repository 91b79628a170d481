"""Events for applications: SSE and WebSocket over the durable outbox, resumable without
loss across reconnects and gateway restarts; failure reports and presence as events."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canonical.envelope import CPIM, PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import DeliveryError, Reason
from tests.cpimhttp.rig import (
    BOT,
    CAROL,
    OTHER_BOT,
    auth,
    base_url,
    build_gateway,
    cpim,
    net,
    running,
)

pytestmark = pytest.mark.e2e

PIDF_DOC = (
    b"<?xml version='1.0' encoding='UTF-8'?>\r\n<presence xmlns='urn:ietf:params:xml:ns:pidf'"
    b" entity='pres:carol@example.net'><tuple id='t'><status><basic>open</basic></status>"
    b"</tuple><note>lunch \xc3\xa0 midi</note></presence>"
)


def from_carol(text: str, to: str = BOT) -> Envelope:
    body = cpim(text, sender=CAROL, to=to)
    return Envelope(
        Operation.MESSAGE, CAROL, to, Payload(CPIM, body), identity_of(body), Origin("net")
    )


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """``count`` SSE events (id, event, data parsed as JSON)."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        raw = await asyncio.wait_for(response.content.readline(), 10)
        if not raw:
            raise AssertionError(f"stream ended after {len(events)} events")
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in fields:
                events.append({**fields, "data": json.loads(fields["data"])})
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


async def test_sse_resumes_after_reconnect_without_loss(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        for i in range(3):
            await net(gw).inject(from_carol(f"m{i}"))
        async with s.get(url + "/v1/events", headers=auth()) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await read_events(response, 2)
        for i in range(3, 5):
            await net(gw).inject(from_carol(f"m{i}"))
        resume = {**auth(), "Last-Event-ID": first[-1]["id"]}
        async with s.get(url + "/v1/events", headers=resume) as response:
            rest = await read_events(response, 3)
        async with s.get(url + "/v1/me", headers=auth()) as response:
            backlog = (await response.json())["backlog"]
    texts = [
        base64.b64decode(e["data"]["body"]).rsplit(b"\r\n\r\n", 1)[1].decode() for e in first + rest
    ]
    assert texts == ["m0", "m1", "m2", "m3", "m4"]
    ids = [int(e["id"]) for e in first + rest]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert backlog == 3  # the first two were acknowledged by the reconnect
    body = base64.b64decode(rest[0]["data"]["body"])
    assert body == cpim("m2", sender=CAROL, to=BOT)
    assert rest[0]["event"] == "message"
    assert rest[0]["data"]["from"] == CAROL


async def test_events_wait_on_disk_across_a_gateway_restart(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with running(build_gateway(path)) as gw:
        for i in range(2):
            await net(gw).inject(from_carol(f"kept{i}"))
        await gw.settle()
    async with running(build_gateway(path)) as gw, aiohttp.ClientSession() as s:
        response = await s.get(base_url(gw) + "/v1/events?after=0", headers=auth())
        events = await read_events(response, 2)
        response.close()
    assert [e["data"]["identity"] for e in events] == [
        from_carol("kept0").identity,
        from_carol("kept1").identity,
    ]


async def test_websocket_delivers_and_acknowledges(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        async with s.ws_connect(url + "/v1/events", headers=auth()) as ws:
            await net(gw).inject(from_carol("over ws"))
            frame = json.loads((await ws.receive(timeout=10)).data)
            await ws.send_str(json.dumps({"ack": int(frame["id"])}))
            await ws.send_str("not json")
            complaint = json.loads((await ws.receive(timeout=10)).data)
        async with s.get(url + "/v1/me", headers=auth()) as response:
            me = await response.json()
    assert base64.b64decode(frame["body"]) == cpim("over ws", sender=CAROL, to=BOT)
    assert "ack" in complaint["error"]
    assert me["backlog"] == 0


async def test_each_client_sees_only_what_it_watches(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        await net(gw).inject(from_carol("for other", to=OTHER_BOT))
        await net(gw).inject(from_carol("for bot"))
        await gw.settle()
        async with s.get(url + "/v1/events", headers=auth()) as response:
            [only] = await read_events(response, 1)
        async with s.get(url + "/v1/events", headers=auth("mute")) as response:
            assert response.status == 403
        async with s.get(url + "/v1/events", headers={**auth(), "Last-Event-ID": "x"}) as r:
            assert r.status == 400
    assert only["data"]["to"] == BOT


async def test_final_failure_comes_back_as_a_report_event(tmp_path: Path) -> None:
    gateway = build_gateway(tmp_path / "gw.db")
    net(gateway).fail_next(
        DeliveryError("carol is gone", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
    )
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        headers = {"Content-Type": CPIM, **auth()}
        async with s.post(url + "/v1/messages", data=cpim("hello?"), headers=headers) as r:
            sent = await r.json()
        async with s.get(url + "/v1/events", headers=auth()) as response:
            [report] = await read_events(response, 1)
    assert report["event"] == "report"
    data = report["data"]
    assert data["attributes"]["report.reason"] == "unknown-destination"
    assert data["attributes"]["report.identity"] == sent["id"]
    assert (data["from"], data["to"], data["body"]) == (CAROL, BOT, None)


async def test_presence_reaches_a_watching_application(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        head = {"Cpimgw-From": BOT, "Cpimgw-To": CAROL, **auth()}
        async with s.post(url + "/v1/subscriptions", headers=head) as response:
            assert response.status == 202
        await net(gw).wait_sent(1)
        await net(gw).inject(
            Envelope(Operation.AUTHORIZE, CAROL, BOT, None, "auth-1", Origin("net"), granted=True)
        )
        await net(gw).inject(
            Envelope(
                Operation.NOTIFY, CAROL, CAROL, Payload(PIDF, PIDF_DOC), "pidf-1", Origin("net")
            )
        )
        async with s.get(url + "/v1/events", headers=auth()) as response:
            events = await read_events(response, 2)
    assert [e["event"] for e in events] == ["authorize", "notify"]
    assert events[0]["data"]["granted"] is True
    assert base64.b64decode(events[1]["data"]["body"]) == PIDF_DOC
    assert events[1]["data"]["content_type"] == PIDF
    assert events[1]["data"]["attributes"]["subscription.state"] == "active"


async def test_someone_subscribing_to_a_bot_is_an_event_it_can_answer(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        await net(gw).inject(
            Envelope(Operation.SUBSCRIBE, CAROL, BOT, None, "sub-1", Origin("net"), duration=600)
        )
        async with s.get(url + "/v1/events", headers=auth()) as response:
            [event] = await read_events(response, 1)
        answer = {"Cpimgw-From": BOT, "Cpimgw-To": CAROL, "Cpimgw-Granted": "true", **auth()}
        async with s.post(url + "/v1/authorizations", headers=answer) as response:
            assert response.status == 202
        await net(gw).wait_sent(1)
    assert (event["event"], event["data"]["duration"]) == ("subscribe", 600)
    [granted] = net(gw).sent
    assert (granted.operation, granted.granted, granted.recipient) == (
        Operation.AUTHORIZE,
        True,
        CAROL,
    )
