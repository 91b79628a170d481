"""The HTTP API against a real gateway core and SQLite store: 202 only after storing, the
status resource (and its survival across restarts), and each refusal with its status."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from canonical.envelope import CPIM, Operation, Payload
from canonical.errors import DeliveryError, Reason
from canonical.policy import STRICT
from gateway.routing import Route
from gateway.security import Rules
from tests.cpimhttp.rig import (
    BOT,
    CAROL,
    auth,
    base_url,
    build_gateway,
    client,
    cpim,
    http_config,
    net,
    running,
    status_of,
    wait_state,
)
from tests.gateway.network import until

pytestmark = pytest.mark.e2e


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    who: str = "bot",
    content_type: str = CPIM,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, object]]:
    async with session.post(
        url + "/v1/messages",
        data=body,
        headers={"Content-Type": content_type, **auth(who), **(headers or {})},
    ) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def test_message_is_accepted_stored_delivered_and_its_status_says_so(tmp_path: Path) -> None:
    body = cpim("hello from a bot")
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        status, headers, answer = await post(s, url, body)
        assert status == 202, answer
        assert headers["Location"] == answer["status"] == f"/v1/status/{answer['id']}"
        await net(gw).wait_sent(1)
        done = await wait_state(s, url, headers["Location"], "delivered")
    [sent] = net(gw).sent
    assert sent.payload == Payload(CPIM, body)
    assert (sent.sender, sent.recipient, sent.identity) == (BOT, CAROL, answer["id"])
    assert (sent.max_forwards, sent.trace) == (69, ("gw",))
    assert done["cpim_status"] == "success"
    assert done["operation"] == "message"


async def test_status_survives_a_restart_pending_then_failed(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    gateway = build_gateway(path)
    net(gateway).fail_next(*[DeliveryError("busy", retryable=True, retry_after=60)] * 2)
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        _, headers, _ = await post(s, base_url(gw), cpim("queued"))
        await until(lambda: net(gw).attempts >= 1)
        pending = await status_of(s, base_url(gw), headers["Location"])
    assert pending["state"] == "accepted"
    assert pending["cpim_status"] is None
    again = build_gateway(path)
    net(again).fail_next(
        DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
    )
    async with running(again) as gw, aiohttp.ClientSession() as s:
        assert (await status_of(s, base_url(gw), headers["Location"]))["state"] == "accepted"
        waiting = [e.id for e in await gw.store.entries()]
        await gw.store.requeue(waiting, now=gw.clock())  # the operator retries it now
        failed = await wait_state(s, base_url(gw), headers["Location"], "failed")
    assert failed["reason"] == "unknown-destination"
    assert failed["cpim_status"] == "failure"
    third = build_gateway(path)
    async with running(third) as gw, aiohttp.ClientSession() as s:
        kept = await status_of(s, base_url(gw), headers["Location"])
    assert (kept["state"], kept["reason"]) == ("failed", "unknown-destination")


async def test_same_id_twice_is_acknowledged_and_delivered_once(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        first = await post(s, base_url(gw), cpim("once"), headers={"Cpimgw-Id": "k-1"})
        second = await post(s, base_url(gw), cpim("once"), headers={"Cpimgw-Id": "k-1"})
        await gw.settle()
    assert (first[0], second[0]) == (202, 202)
    assert (first[2]["duplicate"], second[2]["duplicate"]) == (False, True)
    assert first[2]["id"] == second[2]["id"]
    assert len(net(gw).sent) == 1


async def test_two_clients_with_the_same_key_do_not_collide(tmp_path: Path) -> None:
    config = http_config(
        tmp_path / "gw.db",
        clients=[client("bot"), client("other", send_as=["im:bot@bots.test"])],
    )
    async with (
        running(build_gateway(tmp_path / "gw.db", config=config)) as gw,
        aiohttp.ClientSession() as s,
    ):
        first = await post(s, base_url(gw), cpim("a"), headers={"Cpimgw-Id": "same"})
        second = await post(s, base_url(gw), cpim("a"), who="other", headers={"Cpimgw-Id": "same"})
        await gw.settle()
    assert first[2]["id"] != second[2]["id"]
    assert len(net(gw).sent) == 2


async def test_each_refusal_has_its_status_and_precise_reason(tmp_path: Path) -> None:
    config = http_config(
        tmp_path / "gw.db", max_body=4096, clients=[client("bot"), client("other"), client("mute")]
    )
    gateway = build_gateway(
        tmp_path / "gw.db",
        config=config,
        routes=(Route("bots.test", "api"), Route("example.net", "net", signatures="require")),
    )
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        cases = {
            "no token": await post(s, url, cpim("x"), headers={"Authorization": ""}),
            "wrong token": await post(s, url, cpim("x"), headers={"Authorization": "Bearer nope"}),
            "bare LF": await post(s, url, cpim("x").replace(b"\r\nTo", b"\nTo", 1)),
            "From not owned": await post(s, url, cpim("x", sender="im:ceo@bots.test")),
            "envelope sender": await post(
                s, url, cpim("x"), headers={"Cpimgw-From": "im:other@bots.test"}
            ),
            "no route": await post(s, url, cpim("x", to="sip:nobody@nowhere.test")),
            "too large": await post(s, url, cpim("x" * 5000)),
            "text/plain": await post(s, url, b"hi", content_type="text/plain"),
            "loop": await post(s, url, cpim("x"), headers={"Cpimgw-Trace": "gw-a, gw"}),
            "no hops": await post(s, url, cpim("x"), headers={"Max-Forwards": "0"}),
            "unsigned": await post(s, url, cpim("x")),
            "muted": await post(s, url, cpim("x"), who="mute"),
            "private attribute": await post(
                s, url, cpim("x"), headers={"Cpimgw-Attribute": "sip.from-display=Boss"}
            ),
        }
    expected = {
        "no token": (401, "unauthenticated"),
        "wrong token": (401, "unauthenticated"),
        "bare LF": (400, "bad-request"),
        "From not owned": (403, "forbidden"),
        "envelope sender": (403, "forbidden"),
        "no route": (404, "unknown-destination"),
        "too large": (413, "too-large"),
        "text/plain": (415, "unsupported-media"),
        "loop": (508, "loop"),
        "no hops": (508, "loop"),
        "unsigned": (403, "signature-invalid"),
        "muted": (403, "forbidden"),
        "private attribute": (400, "bad-request"),
    }
    got = {k: (v[0], v[2].get("reason")) for k, v in cases.items()}
    assert got == expected
    assert cases["no token"][1]["WWW-Authenticate"].startswith("Bearer")
    assert cases["bare LF"][1]["Content-Type"].startswith("application/problem+json")
    lf = cases["bare LF"][2]
    assert (lf["code"], lf["line"]) == ("BARE_LF", 1)
    assert lf["offset"] == cpim("x").index(b"\r\nTo")
    assert "im:bot@bots.test" in str(cases["From not owned"][2]["hint"])
    assert cases["private attribute"][2]["code"] == "HTTP_PRIVATE_ATTRIBUTE"
    assert net(gw).sent == []


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    config = http_config(tmp_path / "gw.db", clients=[client("bot", rate=0.5, burst=2)])
    async with (
        running(build_gateway(tmp_path / "gw.db", config=config)) as gw,
        aiohttp.ClientSession() as s,
    ):
        answers = [await post(s, base_url(gw), cpim(f"m{i}")) for i in range(3)]
    assert [a[0] for a in answers] == [202, 202, 429]
    assert answers[2][2]["reason"] == "rate-limited"
    assert int(answers[2][1]["Retry-After"]) >= 1


async def test_gateway_rate_limit_also_gives_retry_after(tmp_path: Path) -> None:
    gateway = build_gateway(tmp_path / "gw.db", rules=Rules(rate=0.01, burst=1))
    async with running(gateway) as gw, aiohttp.ClientSession() as s:
        answers = [await post(s, base_url(gw), cpim(f"m{i}")) for i in range(2)]
    assert [a[0] for a in answers] == [202, 429]
    assert int(answers[1][1]["Retry-After"]) >= 1


async def test_strict_policy_refuses_what_lenient_mode_relays(tmp_path: Path) -> None:
    loose = cpim("x").replace(b"From: <", b'From: "Bot" <')
    async with running(build_gateway(tmp_path / "a.db")) as gw, aiohttp.ClientSession() as s:
        assert (await post(s, base_url(gw), loose))[0] == 202
    async with (
        running(build_gateway(tmp_path / "b.db", policy=STRICT)) as gw,
        aiohttp.ClientSession() as s,
    ):
        status, _, answer = await post(s, base_url(gw), loose)
    assert status == 400
    assert answer["code"]


async def test_status_belongs_to_its_sender_only(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        _, headers, _ = await post(s, base_url(gw), cpim("mine"))
        async with s.get(base_url(gw) + headers["Location"], headers=auth("other")) as response:
            assert response.status == 404
        async with s.get(base_url(gw) + "/v1/status/unknown", headers=auth()) as response:
            assert response.status == 404
        async with s.get(base_url(gw) + headers["Location"]) as response:
            assert response.status == 401


async def test_unknown_paths_and_methods_are_problems(tmp_path: Path) -> None:
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        async with s.get(base_url(gw) + "/v1/nothing", headers=auth()) as response:
            assert response.status == 404
            assert (await response.json(content_type=None))["status"] == 404
        async with s.put(base_url(gw) + "/v1/messages", headers=auth()) as response:
            assert response.status == 405
            assert "POST" in response.headers["Allow"]
        async with s.get(base_url(gw) + "/openapi.yaml") as response:
            assert response.status == 200
            assert (await response.text()).startswith("openapi:")


async def test_presence_operations_cross_in_both_directions(tmp_path: Path) -> None:
    pidf = (
        b"<?xml version='1.0' encoding='UTF-8'?>\r\n<presence xmlns='urn:ietf:params:xml:ns:pidf'"
        b" entity='pres:bot@bots.test'><tuple id='a'><status><basic>open</basic></status>"
        b"</tuple></presence>"
    )
    async with running(build_gateway(tmp_path / "gw.db")) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        sub = {"Cpimgw-From": BOT, "Cpimgw-To": CAROL, "Cpimgw-Duration": "3600", **auth()}
        async with s.post(url + "/v1/subscriptions", headers=sub) as response:
            assert response.status == 202, await response.text()
        await net(gw).wait_sent(1)
        head = {"Cpimgw-From": BOT, "Cpimgw-To": CAROL, **auth()}
        async with s.delete(url + "/v1/subscriptions", headers=head) as response:
            assert response.status == 202
        await net(gw).wait_sent(2)
        grant = {**head, "Cpimgw-Granted": "true"}
        async with s.post(url + "/v1/authorizations", headers=grant) as response:
            assert response.status == 202
        await net(gw).wait_sent(3)
        notify = {**head, "Content-Type": "application/pidf+xml"}
        async with s.post(url + "/v1/presence", headers=notify, data=pidf) as response:
            assert response.status == 202, await response.text()
        spoof = pidf.replace(b"pres:bot@", b"pres:ceo@")
        async with s.post(url + "/v1/presence", headers=notify, data=spoof) as response:
            assert response.status == 403
        await gw.settle()
    ops = [(e.operation, e.duration, e.granted) for e in net(gw).sent]
    assert ops[:3] == [
        (Operation.SUBSCRIBE, 3600, None),
        (Operation.UNSUBSCRIBE, None, None),
        (Operation.AUTHORIZE, None, True),
    ]
