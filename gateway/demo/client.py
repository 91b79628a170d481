"""The demo's XMPP user: a slixmpp client that logs in over plain c2s on loopback, sends raw
stanzas (so the demo writes exactly what a client would) and keeps what it receives."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from slixmpp import ClientXMPP


class XmppClient(ClientXMPP):
    """A logged-in XMPP user that records every stanza it receives (RFC 6120, RFC 6121)."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(
            jid,
            password,
            plugin_config={
                "feature_mechanisms": {"unencrypted_scram": True, "unencrypted_plain": True}
            },
        )
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.auto_authorize = None  # the demo answers subscription requests itself
        self.auto_subscribe = False
        self.received: list[ET.Element] = []
        self._changed = asyncio.Event()
        self._started = asyncio.Event()
        self._failed = asyncio.Event()
        self.add_filter("in", self._record)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", lambda _e: self._failed.set())

    def _record(self, stanza: Any) -> Any:
        self.received.append(stanza.xml)
        self._changed.set()
        return stanza

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()
        self.send_presence()
        self._started.set()

    async def login(self, port: int, wait: float = 10.0) -> XmppClient:
        self.connect("127.0.0.1", port)
        done = [
            asyncio.ensure_future(self._started.wait()),
            asyncio.ensure_future(self._failed.wait()),
        ]
        await asyncio.wait(done, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for waiter in done:
            waiter.cancel()
        if not self._started.is_set():
            why = "the password was refused" if self._failed.is_set() else "no session"
            raise RuntimeError(f"{self.boundjid.bare} could not log in: {why}")
        return self

    async def wait_for(
        self, predicate: Callable[[ET.Element], bool], *, within: float = 10.0, after: int = 0
    ) -> ET.Element:
        """The first received stanza (from index ``after`` on) matching ``predicate``."""
        async with asyncio.timeout(within):
            seen = after
            while True:
                for stanza in self.received[seen:]:
                    if predicate(stanza):
                        return stanza
                seen = len(self.received)
                self._changed.clear()
                await self._changed.wait()

    async def logout(self) -> None:
        self.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.disconnected, 5)


def local_name(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def bare_from(element: ET.Element) -> str:
    return element.get("from", "").split("/", 1)[0]


def find(element: ET.Element, namespace: str, name: str) -> ET.Element | None:
    return element.find(f"{{{namespace}}}{name}")


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in element if local_name(e) == name]
