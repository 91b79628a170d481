"""Fixtures for the SIP tests: a real Kamailio routing ``xmpp.test`` to the gateway's port,
and the SIP adapter with a recording ``deliver`` of the test's own (the core is tested
elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.contract import AdapterContext, Receipt
from adapters.sip.adapter import SipAdapter, SipConfig
from canonical.envelope import Envelope
from canonical.errors import GatewayError
from tests.servers.kamailio import Kamailio, kamailio
from tests.servers.process import free_port


class Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, **labels: Any) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        for key, value in labels.items():
            label = f"{name}{{{key}={value}}}"
            self.counts[label] = self.counts.get(label, 0) + 1


@dataclass
class Recorder:
    """A ``deliver`` that stores envelopes in a list (or refuses with ``refuse``)."""

    envelopes: list[Envelope] = field(default_factory=list)
    refuse: GatewayError | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, envelope: Envelope) -> Receipt:
        if self.refuse is not None:
            raise self.refuse
        self.envelopes.append(envelope)
        self.changed.set()
        return Receipt(envelope.identity)

    async def wait_for(
        self, predicate: Callable[[Envelope], bool], *, within: float = 10.0
    ) -> Envelope:
        async with asyncio.timeout(within):
            while True:
                for envelope in self.envelopes:
                    if predicate(envelope):
                        return envelope
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Gateway:
    adapter: SipAdapter
    recorder: Recorder
    metrics: Metrics
    task: asyncio.Task[None]


@dataclass
class Stack:
    kamailio: Kamailio
    gateway_port: int
    workdir: Path

    def config(self, **overrides: Any) -> SipConfig:
        values: dict[str, Any] = {
            "listen": [
                {"transport": "udp", "port": self.gateway_port},
                {"transport": "tcp", "port": self.gateway_port},
            ],
            "proxy": f"sip:127.0.0.1:{self.kamailio.port};transport=udp",
            "domains": ["xmpp.test"],
            "t1": 0.1,
            "t2": 0.8,
            "t4": 1.0,
        }
        values.update(overrides)
        return SipConfig.model_validate(values)


@contextlib.contextmanager
def _stack(tmp: Path, **kwargs: Any) -> Iterator[Stack]:
    port = free_port("udp")
    with kamailio(tmp / "kamailio", gateway=f"sip:127.0.0.1:{port};transport=udp", **kwargs) as k:
        yield Stack(k, port, tmp)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Kamailio without authentication, shared by a module's tests."""
    with _stack(tmp_path_factory.mktemp("sip-stack")) as s:
        yield s


@contextlib.asynccontextmanager
async def running(config: SipConfig, *, name: str = "sip") -> AsyncIterator[Gateway]:
    metrics = Metrics()
    context = AdapterContext(
        gateway_id="gw-test", logger=logging.getLogger("cpimgw.test.sip"), count=metrics
    )
    adapter = SipAdapter(name, config, context)
    recorder = Recorder()
    task = asyncio.create_task(adapter.run(recorder))
    try:
        async with asyncio.timeout(10):
            while not adapter.ready():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield Gateway(adapter, recorder, metrics, task)
    finally:
        await adapter.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
