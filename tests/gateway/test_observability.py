"""Logs (one line per outcome, identity, no bodies unless traced), metrics, /readyz."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from canonical.errors import DeliveryError
from gateway.health import HealthServer
from gateway.logs import OutcomeLog, configure
from tests.gateway.network import adapter, build
from tests.gateway.samples import message
from tests.servers.process import free_port


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``configure`` changes the process-wide "cpimgw" logger; put it back afterwards."""
    root = logging.getLogger("cpimgw")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def capture(fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    configure(fmt=fmt, level="info", stream=stream)  # type: ignore[arg-type]
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def test_one_json_line_per_outcome_with_identity_and_no_body() -> None:
    stream = capture()
    env = message(text="secret words")
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(DeliveryError("busy", retryable=True))
        await adapter(gw, "xmpp").inject(env)
        await sip.wait_sent(1)
        await gw.settle()
    events = [r for r in lines(stream) if r.get("logger") == "cpimgw.delivery"]
    assert [r["event"] for r in events] == ["accepted", "retry", "delivered"]
    assert {r["identity"] for r in events} == {env.identity}
    assert events[2]["attempts"] == 2
    assert events[1]["reason"] == "unavailable"
    assert "secret words" not in stream.getvalue()
    assert all("body_b64" not in r for r in events)


async def test_traced_address_logs_the_body() -> None:
    stream = capture()
    env = message(text="trace me")
    async with build() as gw:
        gw.outcomes = OutcomeLog(["sip:bob@sip.example.net"])
        await adapter(gw, "xmpp").inject(env)
        await adapter(gw, "sip").wait_sent(1)
    [accepted, *_] = [r for r in lines(stream) if r.get("event") == "accepted"]
    assert accepted["body_b64"]
    assert b"trace me" in __import__("base64").b64decode(str(accepted["body_b64"]))


def test_text_format_is_one_line_with_key_values() -> None:
    stream = capture("text")
    OutcomeLog().outcome(
        "refused", message(), level=logging.WARNING, reason="forbidden", error="a b"
    )
    [line] = stream.getvalue().splitlines()
    assert " WARNING cpimgw.delivery refused " in line
    assert "reason=forbidden" in line
    assert 'error="a b"' in line
    assert f"identity={message().identity}" in line


async def test_readyz_reports_each_component_and_metrics_are_served() -> None:
    gw = build()
    health = HealthServer(gw, host="127.0.0.1", port=free_port())
    port = await health.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503  # not started
                assert (await response.json())["components"]["store"] is False
            await gw.start()
            await adapter(gw, "xmpp").started()
            await adapter(gw, "sip").started()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200
                body = await response.json()
            assert body == {
                "ready": True,
                "components": {
                    "accepting": True,
                    "adapter:sip": True,
                    "adapter:xmpp": True,
                    "store": True,
                },
            }
            await adapter(gw, "xmpp").inject(message())
            await adapter(gw, "sip").wait_sent(1)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert 'cpimgw_messages_in_total{adapter="xmpp",operation="message"} 1.0' in text
            assert 'cpimgw_delivery_latency_seconds_count{adapter="sip"} 1.0' in text
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert await response.text() == "ok\n"
            await adapter(gw, "sip").stop()
            await gw.settle()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503
    finally:
        await gw.stop()
        await health.stop()
