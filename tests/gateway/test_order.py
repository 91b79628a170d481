"""``accept`` calls made in order are stored, and sent on, in that order — also when they
overlap (an adapter hands many over without waiting for each answer) and when the
store's token bucket answers late, as a shared store does over the network. And a send
that never answers is given up after ``send_timeout`` and tried again."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from adapters.contract import AdapterContext, Sent
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import Envelope
from gateway.core import DeliveryPolicy
from gateway.security import Rules
from gateway.store.sqlite import SqliteStore
from tests.gateway.network import adapter, build, memory
from tests.gateway.samples import message

SENDERS = ("alice", "bob", "carol")


class LateBuckets(SqliteStore):
    """The SQLite store whose token bucket answers late: one call in 20 after 50 ms (so
    the calls after it would be stored and sent first), the others after 0-1 ms."""

    def __init__(self, path: Path, seed: int) -> None:
        super().__init__(path, synchronous="normal")
        self.rng = random.Random(seed)
        self.calls = 0

    async def take_token(self, key: str, *, rate: float, burst: float, now: float) -> float:
        self.calls += 1
        late = self.calls % 20 == 1
        await asyncio.sleep(0.05 if late else self.rng.uniform(0, 0.001))
        return await super().take_token(key, rate=rate, burst=burst, now=now)


@pytest.mark.parametrize("late_buckets", [False, True])
async def test_overlapping_accepts_are_sent_on_in_call_order(
    tmp_path: Path, late_buckets: bool
) -> None:
    path = tmp_path / "store.sqlite3"
    store = LateBuckets(path, seed=3) if late_buckets else SqliteStore(path, synchronous="normal")
    rules = Rules(rate=1e6, burst=1e6)
    async with build(store=store, rules=rules) as gw:
        deliver = gw.deliver_for("xmpp")
        envelopes = [
            message(
                sender=f"xmpp:{SENDERS[i % 3]}@xmpp.example.com/phone",
                recipient=f"sip:sink{i % 2}@sip.example.net",
                text=f"{i}",
            )
            for i in range(300)
        ]
        calls = [asyncio.create_task(deliver(env)) for env in envelopes]
        receipts = await asyncio.gather(*calls)
        assert not any(r.duplicate for r in receipts)
        await adapter(gw, "sip").wait_sent(300)
        await gw.settle()
    sent = adapter(gw, "sip").sent
    for who in SENDERS:
        for sink in ("sink0", "sink1"):
            mine = [e.identity for e in envelopes if who in e.sender and sink in e.recipient]
            went = [e.identity for e in sent if who in e.sender and sink in e.recipient]
            assert went == mine, (who, sink)


class Hanging(MemoryAdapter):
    """Its first ``send`` never answers; the later ones are accepted."""

    hung = 0

    async def send(self, envelope: Envelope) -> Sent:
        if not self.hung:
            self.hung += 1
            await asyncio.Event().wait()
        return await super().send(envelope)


async def test_a_send_that_never_answers_is_retried_after_the_send_timeout() -> None:
    policy = DeliveryPolicy(initial_backoff=0.01, max_backoff=0.05, send_timeout=0.3)
    sip = Hanging("sip", MemoryConfig(), AdapterContext(gateway_id="gw"))
    adapters = {"xmpp": memory("xmpp"), "sip": sip}
    async with build(delivery=policy, adapters=adapters) as gw:
        started = time.monotonic()
        await adapter(gw, "xmpp").inject(message())
        await sip.wait_sent(1, within=5.0)
        waited = time.monotonic() - started
        await gw.settle()
    assert gw.counters.retried == 1
    assert gw.counters.delivered == 1
    assert waited >= 0.3  # the timeout, found by a check about once a second (not sooner)
    assert gw.metrics.retries.labels("sip", "timeout")._value.get() == 1
