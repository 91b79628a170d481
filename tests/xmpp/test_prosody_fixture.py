"""The Prosody fixture itself: users log in, a component authenticates, messages route."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp import ComponentXMPP

from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


async def test_user_message_reaches_a_raw_component(prosody: ProsodyServer) -> None:
    comp = ComponentXMPP(prosody.component, prosody.secret, "127.0.0.1", prosody.component_port)
    got: asyncio.Queue[object] = asyncio.Queue()
    started = asyncio.Event()
    comp.add_event_handler("session_start", lambda _e: started.set())
    comp.add_event_handler("message", got.put_nowait)
    comp.connect()
    await asyncio.wait_for(started.wait(), 10)
    try:
        async with logged_in("alice@xmpp.test/t", "alicepw", prosody.c2s_port) as alice:
            alice.send_message(mto=f"dave@{prosody.component}", mbody="hi ✓")
            msg = await asyncio.wait_for(got.get(), 10)
            assert msg["body"] == "hi ✓"  # type: ignore[index]
            assert str(msg["from"]) == "alice@xmpp.test/t"  # type: ignore[index]
    finally:
        comp.disconnect()
