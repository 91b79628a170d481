"""A lossy UDP relay for the tests (there is no netem here): it forwards datagrams between
one client and one server on loopback and drops the ones its rule picks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

#: ``rule(index, data, direction)``: True drops the datagram. ``direction`` is "up"
#: (client to server) or "down"; ``index`` counts datagrams per direction from 0.
DropRule = Callable[[int, bytes, str], bool]


@dataclass
class RelayLog:
    forwarded: list[tuple[str, bytes]] = field(default_factory=list)
    dropped: list[tuple[str, bytes]] = field(default_factory=list)


class LossyUdpRelay:
    """Listens on 127.0.0.1:``port``; the first peer that sends becomes the client, every
    datagram from it goes to ``target``, every datagram from ``target`` goes back to it."""

    def __init__(self, target: tuple[str, int], rule: DropRule) -> None:
        self.target = target
        self.rule = rule
        self.log = RelayLog()
        self.client: tuple[str, int] | None = None
        self._counts = {"up": 0, "down": 0}
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                relay._on(data, (addr[0], addr[1]))

        transport, _ = await loop.create_datagram_endpoint(
            _Protocol, local_addr=("127.0.0.1", port)
        )
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    def _on(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        if addr == self.target:
            direction, dest = "down", self.client
        else:
            self.client = addr
            direction, dest = "up", self.target
        index = self._counts[direction]
        self._counts[direction] += 1
        if dest is None or self.rule(index, data, direction):
            self.log.dropped.append((direction, data))
            return
        self.log.forwarded.append((direction, data))
        self._transport.sendto(data, dest)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
