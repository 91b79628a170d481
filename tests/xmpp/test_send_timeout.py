"""A send the XMPP server never confirms fails as a retryable timeout after send_timeout,
and its stanza stays queued for the next connection."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import SecretStr

from adapters.contract import AdapterContext
from adapters.xmpp.adapter import XmppAdapter, XmppConfig
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, Reason

BODY = (
    b"From: <sip:ada@sip.test>\r\nTo: <im:bob@xmpp.test>\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
)


def envelope(n: int) -> Envelope:
    return Envelope(
        Operation.MESSAGE,
        "sip:ada@sip.test",
        "xmpp:bob@xmpp.test",
        Payload(CPIM, BODY),
        f"{n:032x}",
        Origin("sip"),
    )


async def test_an_unconfirmed_send_times_out_and_stays_queued() -> None:
    config = XmppConfig(
        component="sip.xmpp.test",
        secret=SecretStr("s"),
        domain_map={"sip.xmpp.test": "sip:sip.test"},
        domains=["xmpp.test"],
        send_timeout=0.2,
    )
    adapter = XmppAdapter("xmpp", config, AdapterContext(gateway_id="gw"))  # never connected
    started = time.monotonic()
    results = await asyncio.gather(
        adapter.send(envelope(1)), adapter.send(envelope(2)), return_exceptions=True
    )
    waited = time.monotonic() - started
    for result in results:
        assert isinstance(result, DeliveryError)
        assert result.retryable
        assert result.reason is Reason.TIMEOUT
    assert 0.2 <= waited < 10  # found by a check about once a second, not never
    assert len(adapter._outbound) == 2  # written after (re)connecting


async def test_a_cancelled_send_is_not_answered_later() -> None:
    config = XmppConfig(component="c.test", secret=SecretStr("s"), send_timeout=0.2)
    adapter = XmppAdapter("xmpp", config, AdapterContext(gateway_id="gw"))
    call = asyncio.create_task(adapter.send(envelope(3)))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(1.2)  # the overdue check passes over it without raising
    assert adapter._outbound[0].done.cancelled()
