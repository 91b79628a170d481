"""The SIP watchers' shared store on a real Redis: CSeqs taken by two nodes never repeat,
a refresh through one node keeps the other from expiring the subscription, and of two
nodes expiring it at once exactly one ends it (sends the final NOTIFY)."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.sip.subscription import Dialog, Notifier
from adapters.sip.watchers import SharedWatchers
from gateway.store.redis import RedisStore
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.e2e


def notifier(expires_at: float) -> Notifier:
    dialog = Dialog(
        call_id="c1",
        local_tag="gw",
        local_uri="sip:ada@xmpp.test",
        remote_uri="sip:bob@sip.test",
        remote_target="sip:bob@127.0.0.1:5099",
        remote_tag="w",
        remote_cseq=1,
    )
    return Notifier("sip:bob@sip.test", "sip:ada@xmpp.test", dialog, expires_at=expires_at)


async def test_two_nodes_share_cseqs_refreshes_and_one_expiry(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    stores = [RedisStore(redis_server.url, namespace=redis_namespace, node=n) for n in "ab"]
    a, b = (SharedWatchers(s) for s in stores)
    now = time.time()  # stored dialogs expire in Redis a minute after the subscription
    try:
        await a.save(notifier(now + 1000.0))
        on_a = (await a.of_presentity("sip:ada@xmpp.test"))[0]
        on_b = (await b.of_presentity("sip:ada@xmpp.test"))[0]

        async def take(watchers: SharedWatchers, held: Notifier) -> int:
            assert await watchers.reserve(held)
            return held.dialog.request("NOTIFY").cseq.number

        numbers = await asyncio.gather(
            *(take(w, n) for _ in range(20) for w, n in ((a, on_a), (b, on_b)))
        )
        assert sorted(numbers) == list(range(1, 41))

        # refreshed through b: a, at the old expiry, leaves it alone
        on_b.expires_at = now + 2000.0
        await b.save(on_b)
        assert await a.expire(on_a, now + 1500.0) is None
        assert await a.get(on_a.dialog.key) is not None

        # both expire it at once: one ends it, with the next CSeq reserved
        ended = await asyncio.gather(a.expire(on_a, now + 2500), b.expire(on_b, now + 2500))
        winners = [n for n in ended if n is not None]
        assert len(winners) == 1
        assert winners[0].dialog.request("NOTIFY").cseq.number > 40
        assert await a.get(on_a.dialog.key) is None
        assert await b.of_presentity("sip:ada@xmpp.test") == []
        assert not await a.reserve(on_a)  # nothing more is sent in it
    finally:
        for store in stores:
            await store.client.aclose()
