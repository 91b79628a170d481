"""slixmpp clients acting as XMPP users in the tests (plain c2s on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from slixmpp import ClientXMPP
from slixmpp.xmlstream import ElementBase


class User(ClientXMPP):  # type: ignore[misc]
    """A logged-in XMPP user that records every stanza it receives."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(
            jid,
            password,
            plugin_config={
                "feature_mechanisms": {"unencrypted_scram": True, "unencrypted_plain": True}
            },
        )
        self.enable_direct_tls = False  # c2s speaks plain XMPP; no XEP-0368 attempt
        self.enable_plaintext = True
        self.auto_authorize = None  # the test answers subscription requests itself
        self.auto_subscribe = False
        self.received: list[ElementBase] = []
        self._changed = asyncio.Event()
        self._started = asyncio.Event()
        self._failed = asyncio.Event()
        self.add_filter("in", self._record)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", lambda _e: self._failed.set())

    def _record(self, stanza: ElementBase) -> ElementBase:
        self.received.append(stanza)
        self._changed.set()
        return stanza

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()  # roster pushes only reach resources that fetched the roster
        self.send_presence()
        self._started.set()

    async def login(self, port: int, wait: float = 10.0) -> User:
        self.connect("127.0.0.1", port)
        waiters = [
            asyncio.ensure_future(self._started.wait()),
            asyncio.ensure_future(self._failed.wait()),
        ]
        await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if not self._started.is_set():
            failed = self._failed.is_set()
            raise RuntimeError(f"{self.boundjid} could not log in (auth failed: {failed})")
        return self

    async def wait_for(
        self, predicate: Callable[[ElementBase], bool], wait: float = 10.0
    ) -> ElementBase:
        """The first received stanza matching ``predicate`` (waits for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        seen = 0
        while True:
            for stanza in self.received[seen:]:
                if predicate(stanza):
                    return stanza
            seen = len(self.received)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.boundjid}: no matching stanza; got "
                    + "\n".join(str(s) for s in self.received[-10:])
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def logout(self) -> None:
        self.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.disconnected, 5)


@contextlib.asynccontextmanager
async def logged_in(jid: str, password: str, port: int, **attrs: Any) -> AsyncIterator[User]:
    user = User(jid, password)
    for name, value in attrs.items():
        setattr(user, name, value)
    await user.login(port)
    try:
        yield user
    finally:
        await user.logout()
