"""The runner with in-memory adapters: store-before-ack, dedup, retries, reports, presence."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canonical.envelope import PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import DeliveryError, GatewayError, Reason, RoutingError, SecurityError
from gateway.core import REPORT_IMDN, SIGNATURE, DeliveryPolicy, backoff
from gateway.presence import PresenceBook
from gateway.routing import Route, RoutingTable
from gateway.security import Rules
from gateway.store import EntryState
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from tests.gateway.network import adapter, build, until
from tests.gateway.samples import message


async def test_message_crosses_with_one_hop_spent_and_our_id_in_the_trace(tmp_path: Path) -> None:
    async with build(path=tmp_path / "q.db") as gw:
        receipt = await adapter(gw, "xmpp").inject(message())
        sip = adapter(gw, "sip")
        await sip.wait_sent(1)
    [sent] = sip.sent
    assert receipt.identity == sent.identity
    assert not receipt.duplicate
    assert sent.max_forwards == 69
    assert sent.trace == ("gw",)
    assert sent.payload == message().payload
    assert gw.metrics.messages_out.labels("sip", "message")._value.get() == 1


async def test_receipt_comes_only_after_the_envelope_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with build(path=path) as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(*[DeliveryError("busy", retryable=True)] * 50)
        receipt = await adapter(gw, "xmpp").inject(message())
        reader = SqliteStore(path, serve=False)
        await reader.open()
        stored = await reader.entries()
        await reader.close()
        assert [e.envelope.identity for e in stored] == [receipt.identity]


async def test_same_identity_twice_is_delivered_once() -> None:
    async with build() as gw:
        xmpp = adapter(gw, "xmpp")
        first = await xmpp.inject(message())
        second = await xmpp.inject(message())
        await gw.settle()
    assert (first.duplicate, second.duplicate) == (False, True)
    assert len(adapter(gw, "sip").sent) == 1


async def test_unknown_destination_is_refused_before_storing() -> None:
    async with build() as gw:
        with pytest.raises(RoutingError) as err:
            await adapter(gw, "xmpp").inject(message(recipient="sip:bob@nowhere.example"))
        assert err.value.reason is Reason.UNKNOWN_DESTINATION
        assert (await gw.store.stats(time.time())).pending == 0
        assert gw.metrics.rejected.labels("xmpp", "unknown-destination")._value.get() == 1


async def test_spoofed_sender_is_refused() -> None:
    async with build() as gw:
        with pytest.raises(SecurityError) as err:
            await adapter(gw, "sip").inject(message(sender="xmpp:mallory@xmpp.example.com"))
    assert err.value.reason is Reason.FORBIDDEN


async def test_sender_over_its_rate_is_refused_with_a_retry_hint() -> None:
    async with build(rules=Rules(rate=0.001, burst=2)) as gw:
        xmpp = adapter(gw, "xmpp")
        await xmpp.inject(message(text="1"))
        await xmpp.inject(message(text="2"))
        with pytest.raises(SecurityError) as err:
            await xmpp.inject(message(text="3"))
    assert err.value.reason is Reason.RATE_LIMITED
    assert "retry after" in str(err.value)
    assert err.value.retry_after == pytest.approx(1000.0, rel=0.01)  # type: ignore[attr-defined]


async def test_retryable_failures_are_retried_until_delivered() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(DeliveryError("busy", retryable=True), DeliveryError("busy", retryable=True))
        await adapter(gw, "xmpp").inject(message())
        await sip.wait_sent(1)
    assert sip.attempts == 3
    assert gw.counters.retried == 2
    assert len(sip.sent) == 1


async def test_retry_waits_at_least_what_the_peer_asked() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(DeliveryError("later", retryable=True, retry_after=30.0))
        before = time.time()
        await adapter(gw, "xmpp").inject(message())
        await until(lambda: sip.attempts >= 1)
        await asyncio.sleep(0.05)
        [entry] = await gw.store.entries()
    assert entry.next_at >= before + 30.0
    assert entry.attempts == 1


def test_backoff_grows_exponentially_within_its_jitter_and_cap() -> None:
    policy = DeliveryPolicy(initial_backoff=1.0, multiplier=2.0, max_backoff=60.0, jitter=0.5)
    for attempts in range(1, 12):
        base = min(60.0, 2.0 ** (attempts - 1))
        low = backoff(attempts, policy, draw=0.999999, retry_after=None)
        high = backoff(attempts, policy, draw=0.0, retry_after=None)
        assert base * 0.5 <= low <= high == base
    assert backoff(1, policy, draw=0.5, retry_after=90.0) == 90.0


async def test_final_failure_is_kept_and_reported_to_the_sender_once() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(
            DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        xmpp = adapter(gw, "xmpp")
        env = message().replace(
            attributes={"imdn.disposition-notification": "positive-delivery, negative-delivery"}
        )
        await xmpp.inject(env)
        await xmpp.wait_sent(1)
        failed = await gw.store.entries(EntryState.FAILED)
    [(reported, error)] = xmpp.reports
    assert reported.identity == env.identity
    assert error.reason is Reason.UNKNOWN_DESTINATION
    assert reported.attributes[REPORT_IMDN] == "failed"
    assert [e.envelope.identity for e in failed] == [env.identity]
    assert "no such user" in (failed[0].last_error or "")


async def test_entry_past_its_expiry_fails_as_expired() -> None:
    policy = DeliveryPolicy(initial_backoff=0.02, max_backoff=0.02, expiry=0.2, send_timeout=1.0)
    async with build(delivery=policy) as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(*[DeliveryError("down", retryable=True)] * 1000)
        xmpp = adapter(gw, "xmpp")
        await xmpp.inject(message())
        await xmpp.wait_sent(1, within=5.0)
    [(_, error)] = xmpp.reports
    assert error.reason is Reason.EXPIRED
    assert "down" in str(error)


async def test_a_failed_report_is_never_reported() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(DeliveryError("gone", retryable=False))
        report = message().replace(attributes={"report.reason": "loop"})
        await adapter(gw, "xmpp").inject(report)
        await gw.settle()
    assert adapter(gw, "xmpp").reports == []
    assert gw.counters.failed == 1


async def test_unexpected_exception_in_send_is_retried_not_lost() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(RuntimeError("bug"))
        await adapter(gw, "xmpp").inject(message())
        await sip.wait_sent(1)
    assert gw.counters.retried == 1


async def test_pending_entries_are_delivered_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    gw = build(path=path)
    await gw.start()
    sip = adapter(gw, "sip")
    sip.fail_next(*[DeliveryError("down", retryable=True)] * 1000)
    ids = [(await adapter(gw, "xmpp").inject(message(text=str(i)))).identity for i in range(5)]
    await gw.stop()
    again = build(path=path)
    async with again:
        await adapter(again, "sip").wait_sent(5)
    assert sorted(e.identity for e in adapter(again, "sip").sent) == sorted(ids)


async def test_stop_drains_in_flight_sends() -> None:
    gw = build()
    await gw.start()
    sip = adapter(gw, "sip")
    gate = asyncio.Event()
    original = sip.send

    async def slow(envelope: Envelope):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(envelope)

    sip.send = slow  # type: ignore[method-assign]
    await adapter(gw, "xmpp").inject(message())
    await until(lambda: bool(gw._inflight))
    stopping = asyncio.create_task(gw.stop())
    await asyncio.sleep(0.05)
    with pytest.raises(GatewayError) as err:
        await adapter(gw, "xmpp").inject(message(text="late"))
    assert err.value.reason is Reason.UNAVAILABLE
    gate.set()
    await stopping
    assert len(sip.sent) == 1


async def test_reload_changes_routes_without_restarting_adapters() -> None:
    async with build() as gw:
        with pytest.raises(RoutingError):
            await adapter(gw, "xmpp").inject(message(recipient="sip:bob@new.example"))
        gw.reload(
            routing=RoutingTable([*gw.routing.routes, Route("new.example", "sip")]),
            rules=gw.rules,
        )
        await adapter(gw, "xmpp").inject(message(recipient="sip:bob@new.example"))
        await adapter(gw, "sip").wait_sent(1)
        with pytest.raises(RoutingError, match="not configured"):
            gw.reload(routing=RoutingTable([Route("x.example", "irc")]), rules=gw.rules)
        assert len(gw.routing.routes) == 3


async def test_route_rewrites_the_transport_address_not_the_payload() -> None:
    routes = (
        Route("xmpp.example.com", "xmpp"),
        Route("sip.example.com", "sip", scheme="sip", domain="example.net"),
    )
    async with build(routes) as gw:
        env = message(recipient="xmpp:bob@sip.example.com")
        await adapter(gw, "xmpp").inject(env)
        await adapter(gw, "sip").wait_sent(1)
    [sent] = adapter(gw, "sip").sent
    assert sent.recipient == "sip:bob@example.net"
    assert sent.payload == env.payload


# -- presence through the core ----------------------------------------------------------

W = "xmpp:alice@xmpp.example.com/phone"
P = "sip:bob@sip.example.net"


def op(
    kind: Operation, sender: str, recipient: str, adapter_name: str, n: int = 0, **kw: object
) -> Envelope:
    env = Envelope(
        operation=kind,
        sender=sender,
        recipient=recipient,
        payload=None,
        identity=identity_of(kind.value, sender, recipient, str(n)),
        origin=Origin(adapter=adapter_name),
    )
    return env.replace(**kw) if kw else env


async def test_a_notify_right_behind_the_approval_reaches_the_watcher(tmp_path: Path) -> None:
    """The presentity's network approves and notifies back to back, without waiting for
    the first answer (as a gateway or adapter pipelining its calls does): the NOTIFY is
    planned after the AUTHORIZE's change to the book, not while the AUTHORIZE's store
    write is in flight (it was then dropped as "no authorised subscription")."""
    async with build(path=tmp_path / "q.db") as gw:
        xmpp, sip = adapter(gw, "xmpp"), adapter(gw, "sip")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await sip.wait_sent(1)
        doc = Payload(PIDF, b"<presence entity='pres:bob@sip.example.net'>here</presence>")
        await asyncio.gather(
            sip.inject(op(Operation.AUTHORIZE, P, W, "sip", granted=True)),
            sip.inject(op(Operation.NOTIFY, P, W, "sip", 1, payload=doc)),
        )
        await xmpp.wait_sent(2)
        dropped = gw.metrics.registry.get_sample_value("cpimgw_presence_dropped_total")
        assert not dropped
    assert [e.operation for e in xmpp.sent] == [Operation.AUTHORIZE, Operation.NOTIFY]
    assert xmpp.sent[1].payload == doc


async def test_a_held_notify_goes_when_its_interval_ends_not_at_the_next_sweep() -> None:
    """A NOTIFY held by coalescing (one per ``min_interval`` per watcher) is sent once the
    interval ends: the housekeeping loop, asleep for up to 2 s, is woken for it."""
    async with build(presence=PresenceBook(min_interval=0.1)) as gw:
        xmpp, sip = adapter(gw, "xmpp"), adapter(gw, "sip")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await sip.inject(op(Operation.AUTHORIZE, P, W, "sip", granted=True))
        first = Payload(PIDF, b"<presence entity='pres:bob@sip.example.net'>1</presence>")
        await sip.inject(op(Operation.NOTIFY, P, W, "sip", 1, payload=first))
        await xmpp.wait_sent(2)
        await until(lambda: gw._housekeeping_at - gw.clock() > 1.5)  # in its 2 s sleep
        second = Payload(PIDF, b"<presence entity='pres:bob@sip.example.net'>2</presence>")
        await sip.inject(op(Operation.NOTIFY, P, W, "sip", 2, payload=second))  # held
        held_at = time.monotonic()
        await xmpp.wait_sent(3, within=5.0)
        waited = time.monotonic() - held_at
    assert xmpp.sent[2].payload == second
    assert waited < 1.0, f"the held NOTIFY waited {waited:.2f}s for the next sweep"


async def test_presence_handshake_notify_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with build(path=path) as gw:
        xmpp, sip = adapter(gw, "xmpp"), adapter(gw, "sip")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await sip.wait_sent(1)
        await sip.inject(op(Operation.AUTHORIZE, P, W, "sip", granted=True))
        await xmpp.wait_sent(1)
        doc = Payload(PIDF, b"<presence entity='pres:bob@sip.example.net'/>")
        await sip.inject(op(Operation.NOTIFY, P, W, "sip", 1, payload=doc))
        await xmpp.wait_sent(2)
        with pytest.raises(SecurityError):
            await sip.inject(op(Operation.UNSUBSCRIBE, W, P, "sip"))
    assert [e.operation for e in sip.sent] == [Operation.SUBSCRIBE]
    assert [e.operation for e in xmpp.sent] == [Operation.AUTHORIZE, Operation.NOTIFY]
    assert xmpp.sent[1].payload == doc
    again = build(path=path)
    async with again:
        await adapter(again, "sip").wait_sent(1)
        [resub] = adapter(again, "sip").sent
        assert (resub.operation, resub.sender, resub.recipient) == (
            Operation.SUBSCRIBE,
            "xmpp:alice@xmpp.example.com",
            P,
        )
        await adapter(again, "xmpp").wait_sent(1)  # the last presence, restated at start
        await adapter(again, "xmpp").inject(op(Operation.SUBSCRIBE, W, P, "xmpp", 2, duration=0))
        await adapter(again, "xmpp").wait_sent(2)
        restated, answer = adapter(again, "xmpp").sent
    assert restated.operation is Operation.NOTIFY
    assert restated.payload == doc
    assert answer.operation is Operation.NOTIFY  # the probe's own answer, not the restatement
    assert answer.payload == doc
    assert answer.identity != restated.identity


async def test_undeliverable_subscribe_leaves_no_pending_subscription() -> None:
    async with build() as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(
            DeliveryError("no such presentity", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        xmpp = adapter(gw, "xmpp")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await xmpp.wait_sent(1)
        [(reported, error)] = xmpp.reports
    assert reported.operation is Operation.SUBSCRIBE
    assert error.reason is Reason.UNKNOWN_DESTINATION
    assert gw.book.subscription(W, P) is None
    assert await gw.store.subscriptions() == []


@settings(max_examples=30, deadline=None)
@given(
    texts=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=12),
    failures=st.lists(st.sampled_from(["retry", "permanent", "crash"]), max_size=15),
)
def test_every_accepted_message_is_delivered_once_or_reported_once(
    texts: list[str], failures: list[str]
) -> None:
    """The delivery law: whatever the peer does, each distinct identity that was accepted
    ends either delivered exactly once or failed and reported to its sender exactly once."""

    async def scenario() -> None:
        policy = DeliveryPolicy(initial_backoff=0.001, max_backoff=0.002, max_attempts=3)
        async with build(delivery=policy) as gw:
            sip, xmpp = adapter(gw, "sip"), adapter(gw, "xmpp")
            made = {
                "retry": lambda: DeliveryError("busy", retryable=True),
                "permanent": lambda: DeliveryError("no", retryable=False),
                "crash": lambda: RuntimeError("bug"),
            }
            sip.fail_next(*(made[f]() for f in failures))
            for text in texts:  # repeated texts are resends with the same identity
                await xmpp.inject(message(text=text))
            await gw.settle(within=20)
        distinct = {message(text=t).identity for t in texts}
        delivered = Counter(e.identity for e in sip.sent)
        reported = Counter(e.identity for e, _ in xmpp.reports)
        assert set(delivered) | set(reported) == distinct
        assert not set(delivered) & set(reported)
        assert all(n == 1 for n in (*delivered.values(), *reported.values()))

    asyncio.run(scenario())


async def test_a_store_that_cannot_write_refuses_with_a_retryable_error() -> None:
    store = MemoryStore()

    async def full_disk(_batch: object) -> object:
        raise OSError(28, "No space left on device")

    async with build(store=store) as gw:
        store.commit = full_disk  # type: ignore[method-assign, assignment]
        with pytest.raises(DeliveryError) as err:
            await adapter(gw, "xmpp").inject(message())
    assert err.value.retryable
    assert err.value.reason is Reason.UNAVAILABLE
    assert "No space left on device" in str(err.value)
    assert adapter(gw, "sip").sent == []


async def test_verify_policy_annotates_and_counts_but_delivers() -> None:
    routes = (
        Route("xmpp.example.com", "xmpp"),
        Route("sip.example.net", "sip", signatures="verify"),
    )
    async with build(routes) as gw:
        await adapter(gw, "xmpp").inject(message())
        await adapter(gw, "sip").wait_sent(1)
    [sent] = adapter(gw, "sip").sent
    assert sent.attributes[SIGNATURE] == "none"
    assert gw.metrics.signatures.labels("none")._value.get() == 1


async def test_require_policy_refuses_unsigned_through_the_core() -> None:
    routes = (
        Route("xmpp.example.com", "xmpp"),
        Route("sip.example.net", "sip", signatures="require"),
    )
    async with build(routes) as gw:
        with pytest.raises(SecurityError) as err:
            await adapter(gw, "xmpp").inject(message())
    assert err.value.reason is Reason.SIGNATURE_INVALID
    assert adapter(gw, "sip").sent == []


async def test_a_bug_while_accepting_becomes_an_internal_error_for_the_sender() -> None:
    async with build() as gw:

        def broken(*_a: object, **_k: object) -> object:
            raise IndexError("bug")

        gw.book.subscribe = broken  # type: ignore[method-assign, assignment]
        with pytest.raises(GatewayError) as err:
            await adapter(gw, "xmpp").inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
    assert err.value.reason is Reason.INTERNAL
    assert isinstance(err.value.__cause__, IndexError)


class EndingRefused(MemoryStore):
    """A store that cannot write the end of a subscription (the write after a failure)."""

    async def commit(self, commit, *args, **kwargs):  # type: ignore[no-untyped-def]
        if commit.ended:
            raise OSError("disk I/O error")
        return await super().commit(commit, *args, **kwargs)


async def test_undeliverable_subscribe_is_reported_even_when_its_end_cannot_be_stored() -> None:
    async with build(store=EndingRefused()) as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(
            DeliveryError("no such presentity", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        xmpp = adapter(gw, "xmpp")
        await xmpp.inject(op(Operation.SUBSCRIBE, W, P, "xmpp"))
        await until(lambda: len(xmpp.reports) == 1)
        [(reported, error)] = xmpp.reports
        assert reported.operation is Operation.SUBSCRIBE
        assert error.reason is Reason.UNKNOWN_DESTINATION
        assert gw.metrics.store_errors.labels("abandon")._value.get() == 1
