"""The presence book (pure): authorization, fan-out, fetch, coalescing, restarts."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import SecurityError
from gateway.presence import STATE, Effects, PresenceBook, SubscriptionState

W = "xmpp:alice@xmpp.example.com/phone"
P = "sip:bob@sip.example.net"


def env(op: Operation, sender: str, recipient: str, adapter: str, **kw: object) -> Envelope:
    base = Envelope(
        operation=op,
        sender=sender,
        recipient=recipient,
        payload=None,
        identity=identity_of(op.value, sender, recipient, repr(kw)),
        origin=Origin(adapter=adapter),
    )
    return base.replace(**kw) if kw else base


def pidf(text: str) -> Payload:
    return Payload(PIDF, f"<presence entity='pres:bob@sip.example.net'>{text}</presence>".encode())


def subscribed(book: PresenceBook, now: float = 0.0) -> None:
    book.apply(
        book.subscribe(
            env(Operation.SUBSCRIBE, W, P, "xmpp"), presentity=P, presentity_adapter="sip", now=now
        )
    )
    book.apply(
        book.authorize(env(Operation.AUTHORIZE, P, W, "sip", granted=True), watcher=W, now=now)
    )


def test_subscription_is_pending_until_the_presentity_approves() -> None:
    book = PresenceBook()
    effects = book.subscribe(
        env(Operation.SUBSCRIBE, W, P, "xmpp"), presentity=P, presentity_adapter="sip", now=1.0
    )
    assert [e.recipient for e in effects.send] == [P]
    assert effects.subscriptions[0].state is SubscriptionState.PENDING
    book.apply(effects)
    dropped = book.notify(env(Operation.NOTIFY, P, W, "sip", payload=pidf("a")), now=2.0)
    assert dropped.send == ()
    assert dropped.dropped == 1
    book.apply(
        book.authorize(env(Operation.AUTHORIZE, P, W, "sip", granted=True), watcher=W, now=3.0)
    )
    assert book.subscription(W, P).state is SubscriptionState.ACTIVE
    passed = book.notify(env(Operation.NOTIFY, P, W, "sip", payload=pidf("b")), now=4.0)
    assert [e.recipient for e in passed.send] == [W]
    assert passed.send[0].payload == pidf("b")
    assert passed.send[0].attributes[STATE] == "active"


def test_refusal_ends_the_subscription_and_is_passed_to_the_watcher() -> None:
    book = PresenceBook()
    book.apply(
        book.subscribe(
            env(Operation.SUBSCRIBE, W, P, "xmpp"), presentity=P, presentity_adapter="sip", now=1.0
        )
    )
    effects = book.authorize(
        env(Operation.AUTHORIZE, P, W, "sip", granted=False), watcher=W, now=2.0
    )
    assert effects.ended == (("xmpp:alice@xmpp.example.com", P),)
    assert effects.send[0].granted is False
    book.apply(effects)
    assert book.subscription(W, P) is None


def test_nobody_unsubscribes_for_a_watcher_from_another_network() -> None:
    book = PresenceBook()
    subscribed(book)
    with pytest.raises(SecurityError, match="only the watcher"):
        book.unsubscribe(env(Operation.UNSUBSCRIBE, W, P, "sip"), presentity=P, now=5.0)
    effects = book.unsubscribe(env(Operation.UNSUBSCRIBE, W, P, "xmpp"), presentity=P, now=5.0)
    book.apply(effects)
    assert book.subscription(W, P) is None


def test_only_the_presentity_network_can_approve() -> None:
    book = PresenceBook()
    book.apply(
        book.subscribe(
            env(Operation.SUBSCRIBE, W, P, "xmpp"), presentity=P, presentity_adapter="sip", now=1.0
        )
    )
    with pytest.raises(SecurityError, match="only the presentity"):
        book.authorize(env(Operation.AUTHORIZE, P, W, "xmpp", granted=True), watcher=W, now=2.0)


def test_fetch_is_answered_with_the_last_known_presence() -> None:
    book = PresenceBook()
    subscribed(book)
    book.apply(book.notify(env(Operation.NOTIFY, P, W, "sip", payload=pidf("latest")), now=10.0))
    effects = book.subscribe(
        env(Operation.SUBSCRIBE, W, P, "xmpp", duration=0),
        presentity=P,
        presentity_adapter="sip",
        now=11.0,
    )
    [answer] = effects.send
    assert answer.operation is Operation.NOTIFY
    assert (answer.sender, answer.recipient, answer.payload) == (P, W, pidf("latest"))


def test_fetch_by_an_unauthorised_watcher_goes_to_the_presentity() -> None:
    book = PresenceBook()
    effects = book.subscribe(
        env(Operation.SUBSCRIBE, W, P, "xmpp", duration=0),
        presentity=P,
        presentity_adapter="sip",
        now=1.0,
    )
    assert [e.operation for e in effects.send] == [Operation.SUBSCRIBE]
    assert effects.subscriptions == ()


def test_notify_to_the_presentity_fans_out_to_every_active_watcher() -> None:
    book = PresenceBook()
    watchers = [f"xmpp:w{i}@xmpp.example.com" for i in range(3)]
    for w in watchers:
        book.apply(
            book.subscribe(
                env(Operation.SUBSCRIBE, w, P, "xmpp"),
                presentity=P,
                presentity_adapter="sip",
                now=0.0,
            )
        )
    for w in watchers[:2]:
        book.apply(
            book.authorize(env(Operation.AUTHORIZE, P, w, "sip", granted=True), watcher=w, now=0.0)
        )
    effects = book.notify(
        env(Operation.NOTIFY, P, "sip:sip.example.net", "sip", payload=pidf("x")), now=1.0
    )
    assert sorted(e.recipient for e in effects.send) == watchers[:2]
    assert len({e.identity for e in effects.send}) == 2
    assert all(e.payload == pidf("x") for e in effects.send)


def test_signed_presence_passes_byte_for_byte() -> None:
    book = PresenceBook()
    subscribed(book)
    signed = Payload(
        'multipart/signed; protocol="application/pkcs7-signature"; boundary=b',
        b"--b\r\nX\r\n--b--\r\n",
    )
    [out] = book.notify(env(Operation.NOTIFY, P, W, "sip", payload=signed), now=1.0).send
    assert out.payload == signed


def test_flapping_presentity_is_coalesced_to_the_latest_state() -> None:
    book = PresenceBook(min_interval=5.0)
    subscribed(book)
    sent = []
    for i in range(100):
        sent += book.notify(
            env(Operation.NOTIFY, P, W, "sip", payload=pidf(str(i))), now=10.0 + i * 0.01
        ).send
    assert [e.payload for e in sent] == [pidf("0")]
    assert book.next_flush() == 15.0
    assert book.flush(14.0).send == ()
    [held] = book.flush(15.0).send
    assert held.payload == pidf("99")


def test_subscriptions_expire() -> None:
    book = PresenceBook()
    book.apply(
        book.subscribe(
            env(Operation.SUBSCRIBE, W, P, "xmpp", duration=60),
            presentity=P,
            presentity_adapter="sip",
            now=0.0,
        )
    )
    assert book.flush(59.0).ended == ()
    effects = book.flush(60.0)
    assert effects.ended == (("xmpp:alice@xmpp.example.com", P),)


def test_book_rebuilt_from_stored_state_resubscribes() -> None:
    book = PresenceBook()
    subscribed(book)
    again = PresenceBook()
    again.load(book.subscriptions(), [])
    [(adapter, sub)] = again.resubscribe(100.0)
    assert adapter == "sip"
    assert (sub.operation, sub.sender, sub.recipient) == (
        Operation.SUBSCRIBE,
        "xmpp:alice@xmpp.example.com",
        P,
    )
    assert sub.origin.adapter == "xmpp"


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=200))
def test_a_watcher_never_gets_more_than_one_notify_per_interval(times: list[float]) -> None:
    book = PresenceBook(min_interval=5.0, watcher_rate=100.0, watcher_burst=100.0)
    subscribed(book)
    stamps: list[float] = []
    for i, t in enumerate(sorted(times)):
        flushed: Effects = book.flush(t)
        stamps += [t] * len(flushed.send)
        stamps += [t] * len(
            book.notify(env(Operation.NOTIFY, P, W, "sip", payload=pidf(str(i))), now=t).send
        )
    assert all(b - a >= 5.0 for a, b in itertools.pairwise(stamps))
