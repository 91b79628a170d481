"""The servers on either side restarted in the middle of a stream of messages through
``cpimgw run``: Prosody (the XMPP leg goes away with every user and the component
connection) and Kamailio (the SIP proxy goes away; UDP requests to it go unanswered).

Promised: nothing the gateway accepted is lost — what it cannot send waits in the store and
is sent again once the server is back, without any operator action (the XMPP component
reconnects by itself, SIP transactions time out and are retried with backoff); the
gateway process stays up and answers its other side throughout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    fault_stack,
    http_get,
    sip_identity,
    sip_ua,
)
from tests.faults.figures import record
from tests.xmpp.users import User

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 300
RESTART_AFTER = 100


async def until(predicate: Any, within: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


class Inbox:
    """The ids of message stanzas one XMPP account received, over several sessions."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def attach(self, user: User) -> None:
        def on_message(msg: Any) -> None:
            if msg["type"] in ("chat", "normal") and msg["body"]:
                self.ids.append(msg["id"])

        user.add_event_handler("message", on_message)


async def test_prosody_restart_mid_stream_loses_nothing_the_gateway_accepted(
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    call_ids = [f"p{i}-{run}" for i in range(TOTAL)]
    statuses: dict[int, int] = {}
    inbox = Inbox()
    jid = f"alice@{XMPP_DOMAIN}/desk"
    with fault_stack(tmp_path) as s:
        alice = User(jid, PASSWORD)
        inbox.attach(alice)
        await alice.login(s.prosody.c2s_port)
        async with sip_ua(s.kamailio.port, s.sink_port) as ua:
            gate = asyncio.Semaphore(10)

            async def one(i: int) -> None:
                async with gate:
                    request = ua.message(
                        f"sip:bob@{SIP_DOMAIN}",
                        f"sip:alice@{XMPP_DOMAIN}",
                        f"p{i}".encode(),
                        call_id=call_ids[i],
                    )
                    statuses[i] = await ua.send(request)
                    await asyncio.sleep(0.1)

            sender = asyncio.gather(*(one(i) for i in range(TOTAL)))
            await until(lambda: len(statuses) >= RESTART_AFTER, 60)
            down_at = time.monotonic()
            await asyncio.to_thread(s.prosody.restart)
            up_at = time.monotonic()
            alice.disconnect()
            ready_again = await until(
                lambda: http_get(s.settings.metrics_port, "/readyz")[0] == 200, 30, 0.1
            )
            reconnected_after = time.monotonic() - up_at
            alice = User(jid, PASSWORD)  # the user logs in again (offline messages come)
            inbox.attach(alice)
            await alice.login(s.prosody.c2s_port)
            await sender
            accepted = {sip_identity(call_ids[i]) for i, v in statuses.items() if v < 300}
            delivered = await until(lambda: accepted <= set(inbox.ids), 90, 0.2)
            missing = accepted - set(inbox.ids)
            record(
                "restart-prosody",
                messages=TOTAL,
                accepted=len(accepted),
                refused=TOTAL - len(accepted),
                delivered_unique=len(set(inbox.ids) & accepted),
                duplicates=len(inbox.ids) - len(set(inbox.ids)),
                prosody_down_seconds=round(up_at - down_at, 2),
                component_ready_after_seconds=round(reconnected_after, 2),
                gateway_alive=s.gateway.alive(),
            )
            await alice.logout()
            assert ready_again, f"the component did not reconnect\n{s.gateway.log()}"
            assert s.gateway.alive()
            assert len(accepted) == TOTAL, {i: v for i, v in statuses.items() if v >= 300}
            assert delivered, f"{len(missing)} accepted messages not delivered\n{s.gateway.log()}"


async def test_kamailio_restart_mid_stream_loses_nothing_the_gateway_accepted(
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    jid = f"alice@{XMPP_DOMAIN}/desk"
    ids = [f"q{i}-{run}" for i in range(TOTAL)]
    errors: list[str] = []
    with fault_stack(tmp_path) as s:
        alice = User(jid, PASSWORD)
        alice.add_event_handler("message_error", lambda m: errors.append(m["id"]))
        await alice.login(s.prosody.c2s_port)
        async with sip_ua(s.kamailio.port, s.sink_port) as ua:

            def delivered() -> set[str]:
                return {c.split("@", 1)[0] for c in ua.call_ids()}

            async def send_all() -> None:
                for n, stanza_id in enumerate(ids):
                    msg = alice.make_message(
                        mto=f"sink-carol{n % 4}@{COMPONENT}", mbody=f"q{n}", mtype="chat"
                    )
                    msg["id"] = stanza_id
                    msg.send()
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(send_all())
            await until(lambda: len(delivered()) >= RESTART_AFTER, 60)
            down_at = time.monotonic()
            await asyncio.to_thread(s.kamailio.process.stop)
            await asyncio.sleep(8)  # longer than Timer F (64*T1): sends time out, are retried
            await asyncio.to_thread(s.kamailio.process.start)
            up_at = time.monotonic()
            await sender
            wanted = s.gateway.stored_identities()
            complete = await until(lambda: len(delivered()) >= TOTAL, 120, 0.2)
            recovered_after = time.monotonic() - up_at
            metrics = s.gateway.metrics()
            record(
                "restart-kamailio",
                messages=TOTAL,
                stored=len(wanted),
                delivered_unique=len(delivered()),
                duplicates=len(ua.call_ids()) - len(delivered()),
                errors_to_sender=len(errors),
                kamailio_down_seconds=round(up_at - down_at, 2),
                all_delivered_after_seconds=round(recovered_after, 2),
                gateway_alive=s.gateway.alive(),
                retries=sum(
                    float(x.rsplit(" ", 1)[1])
                    for x in metrics.splitlines()
                    if x.startswith("cpimgw_retries_total")
                ),
            )
            await alice.logout()
            assert s.gateway.alive()
            assert not errors, errors
            assert complete, f"{TOTAL - len(delivered())} not delivered\n{s.gateway.log()}"
            assert len(wanted) >= TOTAL
