"""Presence held by coalescing lives in memory only; the last known presence is stored.

A presentity that changes twice within ``min_interval`` has its second NOTIFY held for
each watcher (the book keeps the latest), while the store already has that second
document as the presentity's last presence. A stop or crash in between loses the held
NOTIFY. Without more, the watcher keeps the first status until the presentity changes
again — forever for a presentity that does not (its network owes no NOTIFY to the
gateway's re-subscription: an HTTP client, an XMPP server that only pushes changes). So
at start the gateway restates the stored last presence to every active watcher (RFC 6665
§4.2.1.2, RFC 6121 §4.3.2: a new subscription gets the current state), paced like any
NOTIFY. These tests restart a gateway on the same SQLite file, as ``cpimgw run`` does.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from canonical.envelope import PIDF, Envelope, Operation, Payload
from gateway.presence import LastPresence, PresenceBook, Subscription, SubscriptionState
from tests.gateway.network import adapter, build, until
from tests.gateway.test_core import P, W, op


def doc(status: str) -> Payload:
    body = f"<presence entity='pres:bob@sip.example.net'>{status}</presence>"
    return Payload(PIDF, body.encode())


def notifies(sent: list[Envelope]) -> list[Payload | None]:
    return [e.payload for e in sent if e.operation is Operation.NOTIFY]


async def test_a_watcher_gets_the_presence_coalescing_held_when_the_gateway_stopped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    async with build(path=path, presence=PresenceBook(min_interval=60.0)) as gw:
        xmpp, sip = adapter(gw, "xmpp"), adapter(gw, "sip")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await sip.wait_sent(1)
        await sip.inject(op(Operation.AUTHORIZE, P, W, "sip", granted=True))
        await xmpp.wait_sent(1)
        await sip.inject(op(Operation.NOTIFY, P, P, "sip", 1, payload=doc("away")))
        await xmpp.wait_sent(2)
        await sip.inject(op(Operation.NOTIFY, P, P, "sip", 2, payload=doc("online")))
        await gw.settle()
        assert notifies(xmpp.sent) == [doc("away")]  # "online" is held, in memory only
        assert gw.book.next_flush() is not None
    again = build(path=path, presence=PresenceBook(min_interval=60.0))
    async with again:
        watcher = adapter(again, "xmpp")
        await until(lambda: bool(notifies(watcher.sent)))
        await again.settle()
        [restated] = [e for e in watcher.sent if e.operation is Operation.NOTIFY]
        assert restated.payload == doc("online")
        assert (restated.sender, restated.recipient) == (P, "xmpp:alice@xmpp.example.com")
        # the restatement counts for pacing: a change right after it is held, not sent
        await adapter(again, "sip").inject(op(Operation.NOTIFY, P, P, "sip", 3, payload=doc("dnd")))
        await again.settle()
        assert notifies(watcher.sent) == [doc("online")]


async def test_nothing_is_restated_to_pending_or_ended_subscriptions(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    other = "xmpp:carol@xmpp.example.com/pc"
    async with build(path=path) as gw:
        xmpp, sip = adapter(gw, "xmpp"), adapter(gw, "sip")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await xmpp.inject(op(Operation.SUBSCRIBE, other, P, "xmpp"))
        await sip.wait_sent(2)
        await sip.inject(op(Operation.AUTHORIZE, P, W, "sip", granted=True))
        await sip.inject(op(Operation.NOTIFY, P, P, "sip", 1, payload=doc("away")))
        await xmpp.inject(op(Operation.UNSUBSCRIBE, W, P, "xmpp"))
        await gw.settle()
    again = build(path=path)
    async with again:
        await adapter(again, "sip").wait_sent(1)  # the pending one is re-subscribed
        await again.settle()
        assert notifies(adapter(again, "xmpp").sent) == []


@given(
    subs=st.lists(
        st.tuples(
            st.sampled_from("abcdef"),  # watcher
            st.sampled_from("xyz"),  # presentity
            st.sampled_from(list(SubscriptionState)),
            st.sampled_from([None, 50.0, 200.0]),  # expires_at
        ),
        max_size=20,
    ),
    known=st.sets(st.sampled_from("xyz")),
)
def test_restate_sends_each_active_watcher_its_presentitys_stored_presence_once(
    subs: list[tuple[str, str, SubscriptionState, float | None]], known: set[str]
) -> None:
    now = 100.0
    book = PresenceBook(min_interval=5.0, watcher_burst=100.0)
    stored = {p: LastPresence(f"sip:{p}@s.test", doc(p), 10.0, f"id-{p}") for p in sorted(known)}
    book.load(
        [
            Subscription(f"xmpp:{w}@x.test", f"sip:{p}@s.test", state, "xmpp", "sip", exp, 0, 0)
            for w, p, state, exp in subs
        ],
        stored.values(),
    )
    expected = sorted(
        (s.watcher, s.presentity)
        for s in book.subscriptions()
        if s.state is SubscriptionState.ACTIVE
        and (s.expires_at is None or s.expires_at > now)
        and s.presentity[4] in known
    )
    sent = book.restate(now).send
    assert sorted((e.recipient, e.sender) for e in sent) == expected
    for e in sent:
        assert e.operation is Operation.NOTIFY
        assert e.payload == stored[e.sender[4]].payload
    assert len({e.identity for e in sent}) == len(sent)
    assert book.restate(now + 1.0).send == ()  # paced: within min_interval nothing again
