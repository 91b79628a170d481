"""``kill -9`` of ``cpimgw run`` in the middle of 1,000 messages each way, through a real
Prosody and a real Kamailio, then a restart on the same store.

What is promised (docs/architecture.md "Delivery", docs/reliability.md): every message the
gateway acknowledged — SIP: a 2xx final response; XMPP, which has no acknowledgement for
a component (XEP-0114, docs/xmpp.md "What sent means"): every message the store accepted —
is delivered after the restart, counted by unique identity at the receiving user; a
message is delivered twice only when it was in flight at the kill (its first copy arrived
before the kill). Senders whose message was refused while the gateway was down get an
error (SIP 408/5xx, XMPP error stanza) and send it again with the same identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    Stack,
    fault_stack,
    sip_identity,
    sip_ua,
    xmpp_identity,
)
from tests.faults.figures import record
from tests.xmpp.users import User, logged_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 1000
KILL_AFTER = 400
WINDOW = 20
#: Messages a second the XMPP user sends: below what the gateway stores per second from one
#: component stream on a loaded 2-core machine (about 120/s with fsync per commit), so the
#: loss window measures the crash, not an overload (docs/reliability.md has both figures).
#: ``CPIMGW_FAULTS_XMPP_RATE=200`` measures the overload case instead (docs/reliability.md):
#: the loss window is then recorded, not held to the bound below.
XMPP_RATE = int(os.environ.get("CPIMGW_FAULTS_XMPP_RATE", "50"))


class Arrivals:
    """Message stanzas an XMPP user received: (stanza id, monotonic time, body)."""

    def __init__(self, user: User) -> None:
        self.items: list[tuple[str, float, str]] = []
        self.errors: list[str] = []
        self.changed = asyncio.Event()
        user.add_event_handler("message", self._on_message)
        user.add_event_handler("message_error", self._on_error)

    def _on_message(self, msg: Any) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.items.append((msg["id"], time.monotonic(), msg["body"]))
            self.changed.set()

    def _on_error(self, msg: Any) -> None:
        self.errors.append(msg["id"])
        self.changed.set()

    def ids(self) -> Counter[str]:
        return Counter(i for i, _, _ in self.items)

    async def wait_for(self, wanted: set[str], within: float) -> None:
        deadline = time.monotonic() + within
        while not wanted <= set(self.ids()) and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)


async def restart(s: Stack) -> set[str]:
    """SIGKILL the gateway, start it again on the same store; what it held undelivered at
    the kill (the messages in flight, and those queued behind them)."""
    s.gateway.kill()
    held = s.gateway.pending_identities()
    await asyncio.to_thread(s.gateway.start)
    return held


async def when(predicate: Callable[[], bool], then: Callable[[], Awaitable[set[str]]]) -> set[str]:
    async with asyncio.timeout(120):
        while not predicate():  # noqa: ASYNC110 - the predicate reads other tasks' results
            await asyncio.sleep(0.01)
    return await then()


def duplicates_in_flight(arrivals: list[str], held: set[str]) -> dict[str, Any]:
    """Identities received more than once, and those of them the store did not hold as
    undelivered at the kill (a duplicate of a message already marked delivered is a bug)."""
    counts = Counter(arrivals)
    dups = {i for i, n in counts.items() if n > 1}
    return {
        "held_at_kill": len(held),
        "duplicates": len(dups),
        "extra_copies": sum(counts[i] - 1 for i in dups),
        "not_in_flight": sorted(dups - held),
    }


async def test_kill_9_mid_stream_sip_to_xmpp_loses_no_acknowledged_message(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    call_ids = [f"k{i}-{run}" for i in range(TOTAL)]
    statuses: dict[int, int] = {}
    with fault_stack(tmp_path) as s:
        async with (
            logged_in(f"alice@{XMPP_DOMAIN}/desk", PASSWORD, s.prosody.c2s_port) as alice,
            sip_ua(s.kamailio.port, s.sink_port) as ua,
        ):
            arrivals = Arrivals(alice)

            def acked() -> int:
                return sum(1 for v in statuses.values() if 200 <= v < 300)

            async def send(indexes: list[int]) -> None:
                gate = asyncio.Semaphore(WINDOW)

                async def one(i: int) -> None:
                    async with gate:
                        request = ua.message(
                            f"sip:bob@{SIP_DOMAIN}",
                            f"sip:alice@{XMPP_DOMAIN}",
                            f"m{i}".encode(),
                            call_id=call_ids[i],
                        )
                        statuses[i] = await ua.send(request)

                await asyncio.gather(*(one(i) for i in indexes))

            killer = asyncio.create_task(when(lambda: acked() >= KILL_AFTER, lambda: restart(s)))
            await send(list(range(TOTAL)))
            held = await killer
            acked_first_pass = {i for i, v in statuses.items() if 200 <= v < 300}
            failed = [i for i in range(TOTAL) if i not in acked_first_pass]
            # the sender tries again what was not acknowledged, same Call-ID and CSeq
            for _ in range(3):
                retry = [i for i in range(TOTAL) if not 200 <= statuses[i] < 300]
                if not retry:
                    break
                await send(retry)
            acknowledged = {sip_identity(call_ids[i]) for i, v in statuses.items() if v < 300}
            await arrivals.wait_for(acknowledged, within=90)
            delivered = arrivals.ids()
            report = duplicates_in_flight([i for i, _, _ in arrivals.items], held)
            missing = acknowledged - set(delivered)
            record(
                "kill9-sip-to-xmpp",
                messages=TOTAL,
                killed_after_acks=KILL_AFTER,
                failed_first_pass=len(failed),
                failure_statuses=dict(Counter(statuses.get(i, 0) for i in failed)),
                acknowledged=len(acknowledged),
                delivered_unique=len(delivered),
                missing=len(missing),
                **report,
            )
            assert not missing, f"{len(missing)} acknowledged messages lost\n{s.gateway.log()}"
            assert len(acknowledged) == TOTAL
            assert not report["not_in_flight"], report
            assert report["extra_copies"] <= 64  # at most the delivery concurrency


async def test_kill_9_mid_stream_xmpp_to_sip_loses_no_stored_message(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    ids = [f"x{i}-{run}" for i in range(TOTAL)]
    sinks = [f"sink-bob{n}" for n in range(4)]
    full_jid = f"alice@{XMPP_DOMAIN}/desk"
    identities = {xmpp_identity(full_jid, i): n for n, i in enumerate(ids)}
    with fault_stack(tmp_path) as s:
        async with (
            logged_in(full_jid, PASSWORD, s.prosody.c2s_port) as alice,
            sip_ua(s.kamailio.port, s.sink_port) as ua,
        ):
            arrivals = Arrivals(alice)

            def seen() -> set[str]:
                return {c.split("@", 1)[0] for c in ua.call_ids()}

            def send(n: int) -> None:
                msg = alice.make_message(
                    mto=f"{sinks[n % len(sinks)]}@{COMPONENT}", mbody=f"x{n}", mtype="chat"
                )
                msg["id"] = ids[n]
                msg.send()

            killer = asyncio.create_task(
                when(lambda: len(seen() & identities.keys()) >= KILL_AFTER, lambda: restart(s))
            )
            for n in range(TOTAL):
                send(n)
                if n % 10 == 9:
                    await asyncio.sleep(10 / XMPP_RATE)
            held = await killer
            await asyncio.sleep(2)  # errors for what came while the component was away
            bounced = sorted({e for e in arrivals.errors if e in set(ids)})
            for stanza_id in bounced:  # the sender resends what was refused, same id
                send(ids.index(stanza_id))
            deadline = time.monotonic() + 60
            stable_since, last = time.monotonic(), -1
            while time.monotonic() < deadline:
                now = len(seen() & identities.keys())
                if now == TOTAL:
                    break
                if now != last:
                    stable_since, last = time.monotonic(), now
                elif time.monotonic() - stable_since > 8:
                    break
                await asyncio.sleep(0.2)
            stored = s.gateway.stored_identities() & identities.keys()
            delivered = seen() & identities.keys()
            report = duplicates_in_flight([c.split("@", 1)[0] for c in ua.call_ids()], held)
            silently_lost = sorted(identities[i] for i in identities.keys() - delivered)
            record(
                "kill9-xmpp-to-sip" + ("" if XMPP_RATE == 50 else f"-rate{XMPP_RATE}"),
                messages=TOTAL,
                rate_per_second=XMPP_RATE,
                killed_after_deliveries=KILL_AFTER,
                bounced_with_error=len(bounced),
                stored=len(stored),
                delivered_unique=len(delivered),
                not_stored_not_bounced=len(silently_lost),
                lost_indexes=silently_lost,
                **report,
            )
            assert stored <= delivered, f"stored but not delivered: {len(stored - delivered)}"
            assert not report["not_in_flight"], report
            # XEP-0114 has no acknowledgement: what Prosody had written to the component's
            # socket and the gateway had not stored at the kill is gone without an error.
            # That is a window of the last moments before the kill, never more.
            if XMPP_RATE <= 50:
                assert len(silently_lost) <= 50, silently_lost
