"""A failure report owed to a sender outlives a crash (RFC 3860 §3.4.1): the store keeps
it with the failed entry until the origin adapter took it, and the next start sends it,
once, from the stored envelope and reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.contract import AdapterContext
from adapters.memory import MemoryAdapter, MemoryConfig
from canonical.envelope import Envelope
from canonical.errors import DeliveryError, GatewayError, Reason
from gateway.store import Commit, Outbound
from gateway.store.sqlite import SqliteStore
from tests.gateway.network import adapter, build, until, until_no_report_owed
from tests.gateway.samples import message


class DownAdapter(MemoryAdapter):
    """A network whose reports cannot be sent (its link went down)."""

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        raise DeliveryError("the link is down", retryable=True, reason=Reason.UNAVAILABLE)


def networks(xmpp: MemoryAdapter) -> dict[str, MemoryAdapter]:
    context = AdapterContext(gateway_id="gw")
    return {"xmpp": xmpp, "sip": MemoryAdapter("sip", MemoryConfig(), context)}


async def test_a_report_the_sender_did_not_get_is_sent_after_restart_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    env = message(text="to nobody")
    down = DownAdapter("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    async with build(path=path, adapters=networks(down)) as gw:
        sip = adapter(gw, "sip")
        sip.fail_next(
            DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        await down.inject(env)
        await gw.settle()
        assert gw.counters.failed == 1
        assert gw.counters.reported == 0
    # the next start: the sender's network is back
    up = MemoryAdapter("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    async with build(path=path, adapters=networks(up)) as gw:
        await up.wait_sent(1)
        [(reported, error)] = up.reports
        assert reported.identity == env.identity
        assert error.reason is Reason.UNKNOWN_DESTINATION
        assert "no such user" in str(error)
        await until(lambda: gw.counters.reported == 1)
    # and the one after sends nothing again
    again = MemoryAdapter("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    async with build(path=path, adapters=networks(again)) as gw:
        await gw.settle()
        assert again.reports == []
        store = gw.store
        assert isinstance(store, SqliteStore)
        assert await store.reports() == []
        [failed] = await store.entries()
        assert failed.envelope.identity == env.identity


async def test_a_report_taken_at_once_is_not_owed(tmp_path: Path) -> None:
    async with build(path=tmp_path / "q.db") as gw:
        adapter(gw, "sip").fail_next(DeliveryError("gone", retryable=False))
        await adapter(gw, "xmpp").inject(message(text="once"))
        await adapter(gw, "xmpp").wait_sent(1)
        await until(lambda: gw.counters.reported == 1)
        await until(
            lambda: (
                gw.metrics.registry.get_sample_value(
                    "cpimgw_reports_total", {"adapter": "xmpp", "result": "sent"}
                )
                == 1.0
            )
        )
        assert len(await gw.store.entries()) == 1
        await until_no_report_owed(gw.store)


class FlakyLink(MemoryAdapter):
    """A network whose link is down for a while: reports are refused until ``up``."""

    up = False

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        if not self.up:
            raise DeliveryError("the link is down", retryable=True, reason=Reason.UNAVAILABLE)
        await super().report(envelope, error)


async def test_a_report_refused_while_running_reaches_the_sender_once_the_link_is_up(
    tmp_path: Path,
) -> None:
    """No restart needed: the refused report is tried again while the gateway runs, sent
    once, and then no longer owed in the store."""
    env = message(text="to nobody, link down")
    flaky = FlakyLink("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    gw = build(path=tmp_path / "q.db", adapters=networks(flaky))
    gw.report_retry_interval = 0.05
    gw.report_orphan_age = 0.2  # while retried here, the report is not also sent as nobody's
    async with gw:
        adapter(gw, "sip").fail_next(
            DeliveryError("no such user", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        )
        await flaky.inject(env)
        await until(
            lambda: (
                (
                    gw.metrics.registry.get_sample_value(
                        "cpimgw_reports_total", {"adapter": "xmpp", "result": "error"}
                    )
                    or 0.0
                )
                >= 2.0
            )
        )  # refused, and refused again by the retries
        assert flaky.reports == []
        assert [e.envelope.identity for e in await gw.store.reports()] == [env.identity]
        flaky.up = True
        await flaky.wait_sent(1)
        [(reported, error)] = flaky.reports
        assert reported.identity == env.identity
        assert error.reason is Reason.UNKNOWN_DESTINATION
        await until(lambda: gw.counters.reported == 1)
        await until_no_report_owed(gw.store)
        await asyncio.sleep(0.2)  # several retry rounds: nothing is sent twice
        assert len(flaky.reports) == 1


async def test_a_refused_report_the_operator_requeued_is_not_retried(tmp_path: Path) -> None:
    flaky = FlakyLink("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    gw = build(path=tmp_path / "q.db", adapters=networks(flaky))
    gw.report_retry_interval = 0.05
    async with gw:
        sip = adapter(gw, "sip")
        sip.fail_next(DeliveryError("down", retryable=False, reason=Reason.UNAVAILABLE))
        await flaky.inject(message(text="requeued later"))
        await until(lambda: gw.counters.failed == 1)
        await until(lambda: bool(gw._unreported))
        assert await gw.store.requeue(None, now=gw.clock()) == 1
        gw._wake.set()
        await sip.wait_sent(1)  # delivered after all
        flaky.up = True
        await until(lambda: not gw._unreported)
        await asyncio.sleep(0.2)
        assert flaky.reports == []


async def test_more_reports_than_a_start_sends_follow_while_running_each_once(
    tmp_path: Path,
) -> None:
    """A start sends the first 1,000 owed reports; the rest are sent by the running node
    (owed reports nobody is sending), not at the following start — and none twice."""
    path = tmp_path / "q.db"
    seed = SqliteStore(path, synchronous="normal")
    await seed.open()
    given_up = []
    for i in range(1_005):
        env = message(text=f"to nobody {i}")
        await seed.commit(Commit(env.identity, 1000.0, (Outbound("sip", env, 5000.0),)))
        given_up.append(env.identity)
    for entry in await seed.claim(1000.0, 2_000):
        await seed.fail(entry.id, error="no such user", now=1001.0, report="unknown-destination")
    await seed.close()
    up = MemoryAdapter("xmpp", MemoryConfig(), AdapterContext(gateway_id="gw"))
    gw = build(path=path, adapters=networks(up))
    gw.report_retry_interval = 0.05
    async with gw:
        await until(lambda: len(up.reports) >= 1_005, within=30.0)
        await until_no_report_owed(gw.store)
        await asyncio.sleep(0.3)
    sent = [envelope.identity for envelope, _ in up.reports]
    assert sorted(sent) == sorted(given_up), "each owed report once"
