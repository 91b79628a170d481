"""Adapter counters (``AdapterContext.count``) reach ``/metrics``: ``cpimgw run`` as a
real process with the HTTP adapter taking messages and the testnet plugin delivering
them, scraped over HTTP; and the label cap that bounds what an adapter can make us keep."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest

from adapters.cpim.token import digest
from gateway.demo.servers import gateway
from gateway.metrics import AdapterCounters, Metrics, metric_name
from tests.gateway.test_process import Sink, get, sink_server
from tests.servers.process import free_port

pytest.importorskip("cpimgw_testnet", reason="pip install -e tests/plugins/cpimgw-testnet")

TOKEN = "metrics-bot-token"


def config_text(*, store: Path, api: int, sink: int, metrics: int, ledger: Path) -> str:
    return f"""
[gateway]
id = "gw-metrics"

[store]
path = "{store}"
poll_interval = "200ms"

[delivery]
initial_backoff = "50ms"
max_backoff = "500ms"
drain_timeout = "5s"

[adapters.api]
kind = "cpim"
host = "127.0.0.1"
port = {api}
database = "{ledger}"
synchronous = "normal"

[[adapters.api.clients]]
name = "bot"
token_sha256 = "{digest(TOKEN)}"
send_as = ["im:bot@bots.test"]

[adapters.out]
kind = "testnet"
connect = "127.0.0.1:{sink}"

[[routes]]
match = "bots.test"
adapter = "api"

[[routes]]
match = "dst.test"
adapter = "out"

[security]
rate = 0

[metrics]
listen = "127.0.0.1:{metrics}"

[logging]
level = "warning"
"""


def post_message(port: int, text: str) -> int:
    body = (
        "From: <im:bot@bots.test>\r\nTo: <im:carol@dst.test>\r\n"
        "DateTime: 2024-03-05T17:00:00Z\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/messages",
        data=body,
        headers={"Content-Type": "message/cpim", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def sample(text: str, series: str) -> float | None:
    """The value of one exposition line ``series value``, or None when absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


async def wait_received(sink: Sink, count: int) -> None:
    for _ in range(1000):
        if len(sink.received) >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the sink got {len(sink.received)} of {count}")


@pytest.mark.e2e
async def test_adapter_counter_appears_on_metrics_and_increases(tmp_path: Path) -> None:
    api, metrics = free_port(), free_port()
    accepted = 'cpimgw_http_accepted_total{adapter="api",operation="message"}'
    async with sink_server() as sink:
        config = tmp_path / "gw.toml"
        config.write_text(
            config_text(
                store=tmp_path / "q.db",
                api=api,
                sink=sink.port,
                metrics=metrics,
                ledger=tmp_path / "api.db",
            )
        )
        proc = gateway(tmp_path, config, metrics_port=metrics)
        proc.start()
        try:
            status, before = await asyncio.to_thread(get, metrics, "/metrics")
            assert status == 200
            assert sample(before, accepted) is None
            assert await asyncio.to_thread(post_message, api, "one") == 202
            await wait_received(sink, 1)
            _, first = await asyncio.to_thread(get, metrics, "/metrics")
            assert sample(first, accepted) == 1.0
            assert "# TYPE cpimgw_http_accepted_total counter" in first
            for text in ("two", "three"):
                assert await asyncio.to_thread(post_message, api, text) == 202
            await wait_received(sink, 3)
            _, later = await asyncio.to_thread(get, metrics, "/metrics")
            assert sample(later, accepted) == 3.0
            assert sample(later, 'cpimgw_messages_in_total{adapter="api",operation="message"}')
        finally:
            proc.stop()


def test_adapter_names_are_sanitised_to_the_total_convention() -> None:
    assert metric_name("sip_requests_sent_total") == "cpimgw_sip_requests_sent"
    assert metric_name("xmpp_connected") == "cpimgw_xmpp_connected"
    assert metric_name("http.webhook-delivered") == "cpimgw_http_webhook_delivered"
    metrics = Metrics()
    count = metrics.adapters.for_adapter("sip-1")
    count("sip_requests_sent_total", method="MESSAGE")
    count("sip.requests-sent", method="MESSAGE")
    count("xmpp_losses", adapter="x", field="thread")
    count("odd", **{"peer-kind": "a", "2nd": "b"})
    text = metrics.render().decode()
    assert sample(text, 'cpimgw_sip_requests_sent_total{adapter="sip-1",method="MESSAGE"}') == 2.0
    assert sample(text, 'cpimgw_xmpp_losses_total{adapter="x",field="thread"}') == 1.0
    assert "# HELP cpimgw_sip_requests_sent_total " in text
    assert sample(text, 'cpimgw_odd_total{adapter="sip-1",l_2nd="b",peer_kind="a"}') == 1.0


def test_label_sets_in_any_order_are_one_series() -> None:
    metrics = Metrics()
    count = metrics.adapters.for_adapter("sip")
    count("sip_malformed_total", code="X", transport="udp")
    count("sip_malformed_total", transport="udp", code="X")
    text = metrics.render().decode()
    series = [line for line in text.splitlines() if line.startswith("cpimgw_sip_malformed_total")]
    assert series == ['cpimgw_sip_malformed_total{adapter="sip",code="X",transport="udp"} 2.0']


def test_a_principal_label_cannot_grow_memory_past_the_cap() -> None:
    metrics = Metrics()
    metrics.adapters.max_series = 50
    count = metrics.adapters.for_adapter("api")
    for i in range(500):
        count("http_webhook_delivered", client=f"client-{i}")
    count("http_webhook_delivered", client="client-3")  # a kept series still counts
    text = metrics.render().decode()
    kept = [line for line in text.splitlines() if line.startswith("cpimgw_http_webhook_delivered")]
    assert len(kept) == 50
    assert sample(text, 'cpimgw_http_webhook_delivered_total{adapter="api",client="client-3"}') == 2
    assert sample(text, 'cpimgw_adapter_series_dropped_total{adapter="api"}') == 450.0


def test_an_adapter_cannot_shadow_a_gateway_metric() -> None:
    metrics = Metrics()
    metrics.adapters.for_adapter("x")("messages_in_total", operation="message")
    text = metrics.render().decode()
    assert 'cpimgw_messages_in_total{adapter="x"' not in text
    assert sample(text, 'cpimgw_adapter_series_dropped_total{adapter="x"}') == 1.0


def test_family_count_is_bounded() -> None:
    dropped = Metrics().adapter_dropped
    counters = AdapterCounters(max_families=3, dropped=dropped)
    for i in range(10):
        counters.count("a", f"name_{i}")
    assert len(list(counters.collect())) == 3
