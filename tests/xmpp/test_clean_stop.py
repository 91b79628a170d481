"""Stopping the XMPP adapter leaves nothing for asyncio to complain about: no future whose
exception nobody retrieved ("Future exception was never retrieved"), no task destroyed
while pending — whether it stops connected to a real Prosody with its own stanzas queued,
or while it cannot connect at all."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from adapters.contract import Receipt
from adapters.xmpp.adapter import XmppAdapter, XmppConfig
from canonical.envelope import Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, Reason
from tests.gateway.network import until
from tests.servers.process import free_port
from tests.servers.prosody import ProsodyServer
from tests.xmpp.test_adapter_e2e import config
from tests.xmpp.test_component_down import Lines, context
from tests.xmpp.users import logged_in

PIDF = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:frank@sip.test">'
    b'<tuple id="m"><status><basic>open</basic></status></tuple></presence>\n'
)


async def nothing(envelope: Envelope) -> Receipt:
    return Receipt(envelope.identity)


def came_in(sender: str, n: int) -> Envelope:
    """An envelope as if it had come in from XMPP (what report() answers)."""
    return Envelope(
        Operation.MESSAGE,
        sender,
        "sip:ada@sip.test",
        None,
        f"{n:032x}",
        Origin("xmpp", native_id=f"m-{n}", reply_to=sender),
    )


async def stop_and_collect(adapter: XmppAdapter, task: asyncio.Task[None]) -> list[str]:
    """Stop the adapter, let go of everything, and return what reached the loop's
    exception handler (where asyncio reports unretrieved exceptions and pending tasks
    destroyed)."""
    loop = asyncio.get_running_loop()
    found: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: found.append(str(ctx.get("message"))))
    try:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
        await asyncio.sleep(0.1)  # callbacks scheduled by the close run
        del task
        gc.collect()  # futures nobody holds any more are finalised here
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    return found


async def test_stopping_while_unable_to_connect_leaves_no_unretrieved_exception() -> None:
    settings = XmppConfig(
        port=free_port(),  # nothing listens there
        component="sip.xmpp.test",
        secret="s",  # type: ignore[arg-type]
        domain_map={"sip.xmpp.test": "sip:sip.test"},
        domains=["xmpp.test"],
        reconnect_initial=0.05,
        reconnect_max=0.1,
    )
    lines = Lines()
    adapter = XmppAdapter("xmpp", settings, context(lines))
    task = asyncio.create_task(adapter.run(nothing))
    await until(lambda: "cannot connect" in (adapter.not_ready_reason() or ""))
    # error reports nobody awaits, queued while the side is down: failed at stop
    error = DeliveryError("no", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
    for n in range(2):
        await adapter.report(came_in("xmpp:alice@xmpp.test/phone", n), error)
    assert len(adapter._outbound) == 2
    assert await stop_and_collect(adapter, task) == []
    assert sum("not sent" in line for line in lines.at(logging.INFO)) == 2  # said, not lost


@pytest.mark.e2e
async def test_stopping_a_connected_adapter_with_its_own_stanzas_queued_is_clean(
    prosody: ProsodyServer,
) -> None:
    lines = Lines()
    adapter = XmppAdapter("xmpp", config(prosody), context(lines))
    task = asyncio.create_task(adapter.run(nothing))
    async with logged_in("bob@xmpp.test/s", "bobpw", prosody.c2s_port) as bob:
        await until(adapter.ready, within=10)
        # a foreign contact shown available to bob: stop() sends its unavailable presence
        await adapter.send(
            Envelope(
                Operation.NOTIFY,
                "sip:frank@sip.test",
                "xmpp:bob@xmpp.test/s",
                Payload("application/pidf+xml", PIDF),
                "d" * 32,
                Origin("sip"),
            )
        )
        error = DeliveryError("no", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
        for n in range(3):  # error reports nobody awaits, still queued when stop() comes
            await adapter.report(came_in(f"xmpp:bob@xmpp.test/r{n}", n), error)
        assert await stop_and_collect(adapter, task) == []
        gone = await bob.wait_for(
            lambda s: s.name == "presence" and s["type"] == "unavailable" and "frank" in str(s)
        )
        assert gone is not None
    # stop() waited for its own stanzas to be confirmed, those already written included
    assert not [line for line in lines.at(logging.INFO) if "not sent" in line]
