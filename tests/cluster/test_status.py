"""``cpimgw cluster status`` against a real Redis shared by nodes (one alive with claimed
work, one dead with claimed work, one stopped cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from adapters.sip.subscribers import Intent, SharedSubscriptions
from gateway.cli import main
from gateway.cluster import Timing
from gateway.store import Commit, Outbound
from gateway.store.redis import RedisStore
from tests.gateway.samples import message
from tests.servers.process import free_port
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e

LONG = Timing(heartbeat=1.0, ttl=60.0, claim_idle=120.0, recover_interval=60.0)


def config(tmp_path: Path, url: str, namespace: str, backend: str = "redis") -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""
[gateway]
id = "gw"

[store]
backend = "{backend}"
url = "{url}"
namespace = "{namespace}"

[adapters.mem]
kind = "memory"

[[routes]]
match = "*"
adapter = "mem"
"""
    )
    return path


async def populate(url: str, namespace: str) -> str:
    """Three nodes and six entries; returns the target of the one that failed."""
    nodes = {n: RedisStore(url, namespace=namespace, node=n, timing=LONG) for n in "abc"}
    for store in nodes.values():
        await store.open()
    for i in range(6):
        env = message(text=str(i))
        target = "sip" if i % 2 else "xmpp"
        await nodes["a"].commit(Commit(env.identity, 1000.0, (Outbound(target, env, 9e9),)))
    await nodes["a"].claim(1000.0, 2)
    [dead] = await nodes["b"].claim(1000.0, 1)
    [failed] = await nodes["c"].claim(1000.0, 1)
    await nodes["c"].fail(failed.id, error="refused", now=1000.0)
    [retry] = await nodes["c"].claim(1000.0, 1)
    await nodes["c"].reschedule(retry.id, next_at=9e9, attempts=1, error="busy")
    for node, presentities in (("a", ["bob", "carol"]), ("b", ["dan"])):
        held = SharedSubscriptions(nodes[node])
        for who in presentities:
            assert await held.record(Intent(f"sip:al@{node}.test", f"sip:{who}@sip.test"))
    await nodes["c"].close()  # stopped cleanly
    await abandon(nodes["b"])  # b dies: its heartbeat goes, its claim stays
    await nodes["b"].client.delete(nodes["b"].prefix + "node:b")
    await abandon(nodes["a"])  # a "runs on": its heartbeat lives for ttl
    assert dead.id
    return failed.target


async def abandon(store: RedisStore) -> None:
    """Stop a node's heartbeat and connection without the goodbye a clean stop says."""
    assert store._beat_task is not None
    store._beat_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await store._beat_task
    await store.client.aclose()


def test_status_shows_nodes_claims_and_the_queue(
    redis_server: RedisServer,
    redis_namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed_target = asyncio.run(populate(redis_server.url, redis_namespace))
    path = config(tmp_path, redis_server.url, redis_namespace)
    assert main(["cluster", "status", "-c", str(path), "--json"]) == 1  # b holds work, dead
    status = json.loads(capsys.readouterr().out)
    queue = status["queue"]
    assert (queue["pending"], queue["failed"], queue["scheduled"]) == (5, 1, 1)
    assert (queue["claimed"], queue["unclaimed"]) == (3, 1)
    expected = {"sip": 3, "xmpp": 3}
    expected[failed_target] -= 1
    assert queue["by_target"] == expected
    nodes = {n["name"]: n for n in status["nodes"]}
    assert (nodes["a"]["alive"], nodes["a"]["claimed"]) == (True, 2)
    assert (nodes["b"]["alive"], nodes["b"]["claimed"]) == (False, 1)
    assert nodes["c"]["alive"] is False
    assert nodes["c"]["stopped_at"] is not None
    held = [(n, nodes[n]["sip_subscriptions"]) for n in "abc"]
    assert held == [("a", 2), ("b", 1), ("c", 0)]
    assert main(["cluster", "status", "-c", str(path)]) == 1
    text = capsys.readouterr().out
    assert "5 pending (1 not yet claimed, 3 claimed by nodes, 1 waiting for a retry)" in text
    assert "claimed by nodes that are not running: b (1)" in text
    assert "SIP subscriptions held by nodes that are not running: b (1)" in text
    assert [line.split()[:2] for line in text.splitlines() if line[:2] in ("a ", "b ", "c ")] == [
        ["a", "alive"],
        ["b", "dead"],
        ["c", "stopped"],
    ]


def test_status_of_an_empty_cluster_says_so(
    redis_server: RedisServer,
    redis_namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = config(tmp_path, redis_server.url, redis_namespace)
    assert main(["cluster", "status", "-c", str(path)]) == 0
    assert "no node has joined this cluster yet" in capsys.readouterr().out


def test_status_needs_the_shared_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "redis://127.0.0.1:1/0", "x", backend="sqlite")
    assert main(["cluster", "status", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "store.backend" in err
    assert 'backend = "redis"' in err


def test_status_says_when_redis_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "x")
    assert main(["cluster", "status", "-c", str(path)]) == 2
    assert "cannot reach the shared store" in capsys.readouterr().err


def test_the_queue_commands_work_on_the_shared_store(
    redis_server: RedisServer,
    redis_namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(populate(redis_server.url, redis_namespace))
    path = str(config(tmp_path, redis_server.url, redis_namespace))
    assert main(["queue", "list", "-c", path]) == 0
    assert capsys.readouterr().out.startswith("5 pending, 1 failed")
    assert main(["queue", "retry", "-c", path, "--all-failed"]) == 0
    assert capsys.readouterr().out.strip() == "retried 1 entry"
    assert main(["queue", "list", "-c", path]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("6 pending, 0 failed")
    first = listing.splitlines()[1].split()[0]
    assert main(["queue", "drop", "-c", path, first]) == 0
    assert capsys.readouterr().out.strip() == "dropped 1 entry"
    assert main(["queue", "list", "-c", path]) == 0
    assert capsys.readouterr().out.startswith("5 pending, 0 failed")
