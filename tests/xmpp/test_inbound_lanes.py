"""Inbound stanzas go to the core many at once, in order per sender.

A real Prosody and a slixmpp user; the core is a ``deliver`` of the test's own whose
answers take a random time (as a store commit does). The core stores ``deliver`` calls
of messages in the order they were made, so the order that counts is the order of the
calls; a presence stanza must wait for the sender's earlier stanzas to be answered."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.contract import AdapterContext, Receipt
from adapters.xmpp.adapter import XmppAdapter
from canonical import cpim
from canonical.envelope import Envelope, Operation
from canonical.errors import GatewayError, Reason
from tests.servers.prosody import ProsodyServer
from tests.xmpp.test_adapter_e2e import condition, config
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


def label(envelope: Envelope) -> str:
    if envelope.operation is not Operation.MESSAGE:
        return f"presence:{envelope.recipient.split(':', 1)[1].split('@', 1)[0]}"
    assert envelope.payload is not None
    return cpim.parse_body(envelope.payload.body).body.decode()


class SlowCore:
    """Answers each ``deliver`` after a random pause and keeps a journal of the calls
    ("in", label) and answers ("out", label). The first message to bob waits until one
    to carol has come in, which only happens if stanzas are handed over in parallel."""

    def __init__(self) -> None:
        self.journal: list[tuple[str, str]] = []
        self.carol_seen = asyncio.Event()
        self.changed = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.rng = random.Random(7)

    def calls(self, prefix: str) -> list[str]:
        return [t for kind, t in self.journal if kind == "in" and t.startswith(prefix)]

    async def until(self, done: Callable[[SlowCore], bool]) -> None:
        while not done(self):
            self.changed.clear()
            await self.changed.wait()

    async def __call__(self, envelope: Envelope) -> Receipt:
        text = label(envelope)
        self.journal.append(("in", text))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if text.startswith("c"):
                self.carol_seen.set()
            if text == "b0":
                await asyncio.wait_for(self.carol_seen.wait(), 10)
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            if text.startswith("refuse"):
                raise GatewayError("not this one", reason=Reason.FORBIDDEN)
            return Receipt(envelope.identity)
        finally:
            self.in_flight -= 1
            self.journal.append(("out", text))
            self.changed.set()


@contextlib.asynccontextmanager
async def serving(server: ProsodyServer, core: SlowCore) -> AsyncIterator[XmppAdapter]:
    adapter = XmppAdapter("xmpp", config(server), AdapterContext(gateway_id="gw-test"))
    task = asyncio.create_task(adapter.run(core))
    try:
        async with asyncio.timeout(10):
            while not adapter.ready():
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield adapter
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)


async def test_messages_of_one_sender_are_handed_over_in_order_and_overlap(
    prosody: ProsodyServer,
) -> None:
    core = SlowCore()
    async with (
        serving(prosody, core),
        logged_in("alice@xmpp.test/lanes", "alicepw", prosody.c2s_port) as alice,
    ):
        for i in range(40):
            alice.send_message(mto=f"bob@{prosody.component}", mbody=f"b{i}")
            alice.send_message(mto=f"carol@{prosody.component}", mbody=f"c{i}")
        async with asyncio.timeout(20):
            await core.until(lambda c: len(c.journal) == 160)
    assert core.calls("b") == [f"b{i}" for i in range(40)]
    assert core.calls("c") == [f"c{i}" for i in range(40)]
    assert core.most_in_flight >= 2


async def test_a_presence_stanza_waits_for_earlier_stanzas_and_holds_back_later_ones(
    prosody: ProsodyServer,
) -> None:
    core = SlowCore()
    core.carol_seen.set()
    async with (
        serving(prosody, core),
        logged_in("alice@xmpp.test/presence", "alicepw", prosody.c2s_port) as alice,
    ):
        for i in range(5):
            alice.send_message(mto=f"bob@{prosody.component}", mbody=f"b{i}")
        alice.send_presence(pto=f"bob@{prosody.component}", pstatus="here")
        for i in range(5, 10):
            alice.send_message(mto=f"bob@{prosody.component}", mbody=f"b{i}")
        async with asyncio.timeout(20):
            await core.until(lambda c: len(c.journal) == 22)
    journal = core.journal
    presence_in = journal.index(("in", "presence:bob"))
    presence_out = journal.index(("out", "presence:bob"))
    assert {t for _, t in journal[:presence_in]} == {f"b{i}" for i in range(5)}
    assert len(journal[:presence_in]) == 10  # each earlier message answered before
    assert presence_out == presence_in + 1  # nothing else came in meanwhile
    assert core.calls("b") == [f"b{i}" for i in range(10)]


async def test_a_refusal_is_answered_and_the_sender_goes_on(prosody: ProsodyServer) -> None:
    core = SlowCore()
    core.carol_seen.set()
    async with (
        serving(prosody, core),
        logged_in("alice@xmpp.test/refuse", "alicepw", prosody.c2s_port) as alice,
    ):
        for i in range(5):
            message = alice.make_message(
                mto=f"bob@{prosody.component}", mbody=f"refuse{i}" if i == 2 else f"b{i}"
            )
            message["id"] = f"lane-{i}"
            message.send()
        error = await alice.wait_for(lambda s: s.name == "message" and s["type"] == "error")
        async with asyncio.timeout(10):
            await core.until(lambda c: len(c.journal) == 10)
    assert error["id"] == "lane-2"
    assert condition(error) == "forbidden"
    assert core.calls("b") + core.calls("refuse") == ["b0", "b1", "b3", "b4", "refuse2"]
