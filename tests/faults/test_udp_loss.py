"""20% UDP loss on the SIP leg between ``cpimgw run`` and Kamailio (this kernel has no netem:
two of the tests' own lossy relays, ``tests/sip/relay.py``, sit in the path).

- the gateway's requests to Kamailio and Kamailio's responses go through one relay (the
  gateway's proxy is the relay; its Via asks for ``rport`` so the answers come back the
  same way): 20% of the datagrams are dropped in each direction;
- Kamailio's requests to the gateway go through the other relay (Kamailio routes
  ``xmpp.test`` to it): 20% dropped. The gateway's responses to those go straight back
  to Kamailio (its Via has no ``rport``), so that one direction is not lossy.

Promised: nothing accepted is lost (retransmissions, then the core's retries), a sender
whose message could not get through hears so (a final SIP error, an XMPP error stanza),
the gateway's memory stays bounded across a second batch, and once the loss stops it is
back to normal by itself (nothing left queued, a new message goes straight through).
"""

from __future__ import annotations

import asyncio
import random
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
    sip_identity,
    sip_ua,
    xmpp_identity,
)
from tests.faults.figures import record
from tests.servers.process import free_port
from tests.sip.relay import LossyUdpRelay
from tests.xmpp.users import User

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOSS = 0.2
PER_BATCH = 200


class Loss:
    """A drop rule: ``rate`` of the datagrams, from a seeded generator (reproducible)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.random = random.Random(seed)

    def __call__(self, _index: int, _data: bytes, _direction: str) -> bool:
        return self.random.random() < self.rate


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_20_percent_udp_loss_on_the_sip_leg_loses_nothing_accepted(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    jid = f"alice@{XMPP_DOMAIN}/desk"
    inbound_port = free_port("udp")  # Kamailio -> relay -> gateway
    inbound = LossyUdpRelay(("127.0.0.1", 0), Loss(LOSS, 1))
    outbound: LossyUdpRelay | None = None
    received: list[str] = []
    errors: list[str] = []
    rss: list[tuple[str, int]] = []
    with fault_stack(
        tmp_path, gateway_sip_target=lambda _gw: inbound_port, start_gateway=False
    ) as s:
        inbound.target = ("127.0.0.1", s.settings.sip_port)
        await inbound.start(inbound_port)
        outbound = LossyUdpRelay(("127.0.0.1", s.kamailio.port), Loss(LOSS, 2))
        s.settings.proxy_port = await outbound.start()
        try:
            await asyncio.to_thread(s.gateway.start)
            alice = User(jid, PASSWORD)
            alice.add_event_handler(
                "message",
                lambda m: received.append(m["id"]) if m["type"] == "chat" and m["body"] else None,
            )
            alice.add_event_handler("message_error", lambda m: errors.append(m["id"]))
            await alice.login(s.prosody.c2s_port)
            async with sip_ua(s.kamailio.port, s.sink_port) as ua:
                statuses: dict[str, int] = {}

                async def sip_batch(tag: str) -> None:
                    gate = asyncio.Semaphore(20)

                    async def one(i: int) -> None:
                        call_id = f"{tag}{i}-{run}"
                        async with gate:
                            statuses[call_id] = await ua.send(
                                ua.message(
                                    f"sip:bob@{SIP_DOMAIN}",
                                    f"sip:alice@{XMPP_DOMAIN}",
                                    f"{tag}{i}".encode(),
                                    call_id=call_id,
                                )
                            )

                    await asyncio.gather(*(one(i) for i in range(PER_BATCH)))

                async def xmpp_batch(tag: str) -> list[str]:
                    ids = []
                    for i in range(PER_BATCH):
                        msg = alice.make_message(
                            mto=f"sink-bob{i % 8}@{COMPONENT}", mbody=f"{tag}{i}", mtype="chat"
                        )
                        msg["id"] = f"{tag}{i}-{run}"
                        ids.append(msg["id"])
                        msg.send()
                        await asyncio.sleep(0.01)
                    return ids

                def sampler() -> asyncio.Task[None]:
                    async def sample() -> None:
                        while True:
                            rss.append(("sample", s.gateway.rss_kib()))
                            await asyncio.sleep(0.5)

                    return asyncio.create_task(sample())

                def sink_ids() -> set[str]:
                    return {c.split("@", 1)[0] for c in ua.call_ids()}

                sampling = sampler()
                started = time.monotonic()
                xmpp_ids: list[str] = []
                for batch in ("a", "b"):
                    xmpp_send = asyncio.create_task(xmpp_batch(f"x{batch}"))
                    await sip_batch(f"s{batch}")
                    xmpp_ids += await xmpp_send
                    want_sink = {xmpp_identity(jid, i) for i in xmpp_ids} - {
                        xmpp_identity(jid, e) for e in errors
                    }
                    await until(lambda w=want_sink: w <= sink_ids(), 120)
                    rss.append((f"after batch {batch}", s.gateway.rss_kib()))
                lossy_seconds = time.monotonic() - started
                sampling.cancel()
                accepted = {sip_identity(c) for c, v in statuses.items() if v < 300}
                all_to_xmpp = await until(lambda: accepted <= set(received), 60)
                # the loss stops: the gateway is back to normal without help
                inbound.rule = outbound.rule = lambda *_a: False
                settled = await until(lambda: not s.gateway.pending_identities(), 60)
                probe = f"probe-{run}"
                t0 = time.monotonic()
                status = await ua.send(
                    ua.message(
                        f"sip:bob@{SIP_DOMAIN}", f"sip:alice@{XMPP_DOMAIN}", b"p", call_id=probe
                    )
                )
                probe_through = await until(lambda: sip_identity(probe) in received, 10)
                probe_seconds = time.monotonic() - t0
                stored_xmpp = s.gateway.stored_identities() & {
                    xmpp_identity(jid, i) for i in xmpp_ids
                }
                metrics = s.gateway.metrics()
                after = [v for k, v in rss if k.startswith("after")]
                record(
                    "udp-loss-20",
                    loss_each_way=LOSS,
                    messages_each_way=2 * PER_BATCH,
                    lossy_seconds=round(lossy_seconds, 1),
                    datagrams_dropped=len(inbound.log.dropped) + len(outbound.log.dropped),
                    datagrams_forwarded=len(inbound.log.forwarded) + len(outbound.log.forwarded),
                    sip_to_xmpp_accepted=len(accepted),
                    sip_to_xmpp_refused=sorted(v for v in statuses.values() if v >= 300),
                    sip_to_xmpp_delivered=len(accepted & set(received)),
                    xmpp_to_sip_stored=len(stored_xmpp),
                    xmpp_to_sip_delivered=len(stored_xmpp & sink_ids()),
                    xmpp_errors_to_sender=len(errors),
                    sip_duplicates_at_sink=len(ua.call_ids()) - len(set(ua.call_ids())),
                    gateway_retries=sum(
                        float(x.rsplit(" ", 1)[1])
                        for x in metrics.splitlines()
                        if x.startswith("cpimgw_retries_total{")
                    ),
                    rss_kib_max=max(v for _, v in rss),
                    rss_kib_after_batches=after,
                    queue_empty_after_loss=settled,
                    probe_status=status,
                    probe_seconds=round(probe_seconds, 3),
                )
                await alice.logout()
                assert all_to_xmpp, f"{len(accepted - set(received))} accepted SIP not delivered"
                assert stored_xmpp <= sink_ids(), "stored XMPP messages not delivered"
                # every XMPP message was either stored and delivered or refused with an error
                assert len(stored_xmpp) + len(set(errors)) >= len(xmpp_ids)
                assert settled, s.gateway.pending_identities()
                assert status == 202
                assert probe_through
                assert after[1] - after[0] < 32 * 1024, rss  # no growth batch over batch
                assert s.gateway.alive()
        finally:
            inbound.close()
            if outbound is not None:
                outbound.close()
