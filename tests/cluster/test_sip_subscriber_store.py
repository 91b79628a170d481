"""The records of the gateway's own SIP subscriptions on a real Redis
(adapters/sip/subscribers.py): of several surviving nodes exactly one takes a dead node's
subscriptions, a node whose heartbeat is back keeps its own, and an unsubscribe or a new
SUBSCRIBE through another node reaches the node that holds the dialog."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.sip.subscribers import Intent, SharedSubscriptions
from gateway.store.redis import RedisStore
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(text, text, text, st.integers(0, 2**31), text)
def test_an_intent_reads_back_equal(
    watcher: str, presentity: str, owner: str, expires: int, event: str
) -> None:
    intent = Intent(watcher, presentity, owner, expires, event)
    assert Intent.from_json(intent.to_json(at=1.5)) == intent


def intents(count: int) -> list[Intent]:
    return [
        Intent(f"sip:alice{i}@xmpp.test", "sip:bob@sip.test", f"xmpp:alice{i}@xmpp.test", 600)
        for i in range(count)
    ]


class Cluster:
    """Nodes' subscription records on one namespace; heartbeats set by hand."""

    def __init__(self, url: str, namespace: str, names: str) -> None:
        self.stores = {n: RedisStore(url, namespace=namespace, node=n) for n in names}
        self.nodes = {n: SharedSubscriptions(s) for n, s in self.stores.items()}

    async def beat(self, *names: str) -> None:
        for name in names:
            store = self.stores[name]
            await store.client.set(store.prefix + "node:" + name, "{}", px=60_000)

    async def die(self, name: str) -> None:
        store = self.stores[name]
        await store.client.delete(store.prefix + "node:" + name)

    async def close(self) -> None:
        for store in self.stores.values():
            await store.client.aclose()


async def test_of_three_survivors_exactly_one_takes_a_dead_nodes_subscriptions(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    cluster = Cluster(redis_server.url, redis_namespace, "abcd")
    a = cluster.nodes["a"]
    try:
        await cluster.beat("a", "b", "c", "d")
        for intent in intents(50):
            await a.record(intent)
        assert not await cluster.nodes["b"].take_orphans()  # a is alive: nothing to take
        await cluster.die("a")

        callers = [cluster.nodes[n] for n in "bcd" for _ in range(5)]
        rounds = await asyncio.gather(*(s.take_orphans() for s in callers))
        taken = [i for found in rounds for i in found]
        assert Counter(taken) == Counter(intents(50)), "each subscription taken exactly once"
        winners = {s.node for s, found in zip(callers, rounds, strict=True) if found}
        assert len(winners) == 1
        [winner] = winners
        assert sorted(await cluster.nodes[winner].mine(), key=str) == sorted(intents(50), key=str)
        assert await a.mine() == []
        for intent in intents(50):
            assert await a.holder(intent.key) == winner
        # the dead node comes back: what it held went to the winner; it holds nothing
        await cluster.beat("a")
        assert await a.taken_from_me() == []
        assert not await a.holds(intents(1)[0].key)
    finally:
        await cluster.close()


async def test_a_node_whose_heartbeat_is_back_keeps_its_subscriptions(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    cluster = Cluster(redis_server.url, redis_namespace, "ab")
    try:
        await cluster.beat("b")
        await cluster.nodes["a"].record(intents(1)[0])
        await cluster.beat("a")  # restarted before b looked
        assert await cluster.nodes["b"].take_orphans() == []
        assert await cluster.nodes["a"].mine() == intents(1)
    finally:
        await cluster.close()


async def test_an_unsubscribe_or_subscribe_through_another_node_reaches_the_holder(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    cluster = Cluster(redis_server.url, redis_namespace, "ab")
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    first, second, third = intents(3)
    try:
        await cluster.beat("a", "b")
        for intent in (first, second, third):
            await a.record(intent)

        # b ends only what it holds itself (a failed re-subscription of its own)
        assert await b.forget(first.key, only_mine=True) is None
        assert await a.holds(first.key)
        # the watcher unsubscribes through b: the record goes, a learns it
        assert await b.forget(first.key) == "a"
        assert await a.holder(first.key) is None
        # a's re-subscription planned before it learnt that does not bring it back
        assert not await a.record(first, kept=True)
        assert await a.holder(first.key) is None
        # the watcher subscribes again through b: b holds it now
        await b.record(second)
        assert await a.holder(second.key) == "b"
        # a subscription taken from a and given back before a looked stays a's
        await b.record(third)
        await a.record(third)

        assert sorted(await a.taken_from_me()) == sorted([first.key, second.key])
        assert await a.taken_from_me() == []  # said once
        assert await a.mine() == [third]
        assert await b.mine() == [second]
        assert await b.taken_from_me() == [third.key]
    finally:
        await cluster.close()
