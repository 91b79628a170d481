"""The pure half of gateway.cluster: liveness decisions, name take-over, the presence
change log as book effects, and the encodings the nodes share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.envelope import PIDF, Payload
from canonical.errors import ConfigError
from gateway.cluster import (
    Consumer,
    Node,
    Timing,
    decode_presence,
    decode_subscription,
    effects_of,
    encode_presence,
    encode_subscription,
    may_take_over,
    node_name,
    node_statuses,
    orphaned,
    resync_effects,
    retired,
    subscription_field,
)
from gateway.presence import LastPresence, PresenceBook, Subscription, SubscriptionState
from gateway.store.redis import Change

addresses = st.from_regex(r"(xmpp|sip):[a-z0-9.]{1,12}@[a-z]{1,8}\.test", fullmatch=True)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
subscriptions = st.builds(
    Subscription,
    watcher=addresses,
    presentity=addresses,
    state=st.sampled_from(SubscriptionState),
    watcher_adapter=st.sampled_from(["xmpp", "sip"]),
    presentity_adapter=st.sampled_from(["xmpp", "sip"]),
    expires_at=st.none() | times,
    created_at=times,
    updated_at=times,
)
presences = st.builds(
    LastPresence,
    presentity=addresses,
    payload=st.builds(Payload, st.just(PIDF), st.binary(max_size=200)),
    at=times,
    identity=st.text(min_size=1, max_size=20),
)


def node(name: str = "gw1", *, instance: str = "i1", host: str = "h", pid: int = 10) -> Node:
    return Node(name, instance, host, pid, 1.0)


def test_consumers_of_dead_nodes_with_work_are_orphaned_biggest_first() -> None:
    consumers = [
        Consumer("me", 5, 0),
        Consumer("alive", 9, 99_000),
        Consumer("dead-small", 1, 10),
        Consumer("dead-big", 7, 10),
        Consumer("dead-empty", 0, 10),
    ]
    found = orphaned(consumers, {"alive"}, "me")
    assert [c.name for c in found] == ["dead-big", "dead-small"]


def test_only_dead_consumers_holding_nothing_are_retired() -> None:
    consumers = [
        Consumer("me", 0, 0),
        Consumer("a", 0, 5),
        Consumer("b", 2, 5),
        Consumer("c", 0, 1),
    ]
    assert retired(consumers, {"c"}, "me") == ["a"]


def test_a_name_is_taken_over_only_from_a_process_that_is_gone() -> None:
    me = node(instance="new", pid=20)
    assert may_take_over(None, me, holder_running=False)
    assert may_take_over(node(instance="new", pid=20), me, holder_running=True)
    assert may_take_over(node(instance="old", pid=10), me, holder_running=False)
    assert not may_take_over(node(instance="old", pid=10), me, holder_running=True)
    assert not may_take_over(node(instance="old", host="other"), me, holder_running=False)
    assert not may_take_over(node(instance="old", pid=20), me, holder_running=False)


@given(st.builds(Node, st.text(), st.text(), st.text(), st.integers(0, 2**31), times))
def test_node_encoding_round_trips(value: Node) -> None:
    assert Node.decode(value.encode()) == value


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"name": 1}', "[1, 2]"])
def test_a_value_that_is_not_a_node_decodes_to_none(text: str) -> None:
    assert Node.decode(text) is None


@given(subscriptions)
def test_subscription_encoding_round_trips(sub: Subscription) -> None:
    field = subscription_field(sub.watcher, sub.presentity)
    assert decode_subscription(field, encode_subscription(sub)) == sub


@given(presences)
def test_presence_encoding_keeps_the_document_bytes(pres: LastPresence) -> None:
    assert decode_presence(pres.presentity, encode_presence(pres)) == pres


@pytest.mark.parametrize("name", ["gw1", "node-2.eu", "a_b"])
def test_usable_node_names_pass(name: str) -> None:
    assert node_name(name) == name


@pytest.mark.parametrize("name", ["-x", "a b", "a:b", "x" * 65, "{tag}"])
def test_unusable_node_names_are_refused_with_the_key(name: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.node"):
        node_name(name)


def test_a_ttl_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.ttl.*two heartbeats"):
        Timing(heartbeat=2.0, ttl=3.0)


def _change(kind: str, sub: Subscription | None = None, pres: LastPresence | None = None) -> Change:
    if pres is not None:
        return Change("0-1", "pres", pres.presentity, encode_presence(pres))
    assert sub is not None
    field = subscription_field(sub.watcher, sub.presentity)
    value = encode_subscription(sub).encode() if kind == "put" else b""
    return Change("0-1", kind, field, value)


@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "end", "pres"]), subscriptions, presences), max_size=30
    )
)
def test_applying_the_change_log_equals_applying_each_change_in_order(
    steps: list[tuple[str, Subscription, LastPresence]],
) -> None:
    """Batching changes into effects never reorders a put and an end of the same pair."""
    batched, one_by_one = PresenceBook(), PresenceBook()
    changes = [_change(kind, sub, pres if kind == "pres" else None) for kind, sub, pres in steps]
    for effects in effects_of(changes):
        batched.apply(effects)
    for change in changes:
        for effects in effects_of([change]):
            one_by_one.apply(effects)
    assert batched.subscriptions() == one_by_one.subscriptions()
    for _, _, pres in steps:
        assert batched.last(pres.presentity) == one_by_one.last(pres.presentity)


@given(st.lists(subscriptions, max_size=15), st.lists(subscriptions, max_size=15))
def test_a_resync_makes_the_book_equal_the_store(
    held: list[Subscription], stored: list[Subscription]
) -> None:
    stored_by_key = {(s.watcher, s.presentity): s for s in stored}
    book = PresenceBook()
    book.load(held, [])
    book.apply(resync_effects(book.subscriptions(), list(stored_by_key.values())))
    assert book.subscriptions() == sorted(
        stored_by_key.values(), key=lambda s: (s.presentity, s.watcher)
    )


def test_node_statuses_join_roster_heartbeats_and_consumers() -> None:
    roster = {
        "a": {"node": node("a").encode(), "beat_at": "5.0", "recovered": "3"},
        "b": {"node": node("b").encode(), "beat_at": "4.0", "stopped_at": "4.5"},
    }
    rows = node_statuses(roster, {"a"}, [Consumer("a", 2, 1500), Consumer("c", 1, 10)])
    assert [(r.name, r.alive, r.claimed, r.recovered) for r in rows] == [
        ("a", True, 2, 3),
        ("b", False, 0, 0),
        ("c", False, 1, 0),
    ]
    assert rows[0].idle == 1.5
    assert rows[1].stopped_at == 4.5
    assert rows[2].node is None
