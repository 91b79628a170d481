"""The example client in docs/examples/client.py works against the real API."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of
from tests.cpimhttp.rig import BOT, CAROL, TOKENS, base_url, build_gateway, cpim, net, running

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "client.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_client", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_client_sends_polls_and_follows_events(tmp_path: Path) -> None:
    client = example()
    async with running(build_gateway(tmp_path / "gw.db")) as gw:
        url = base_url(gw)
        accepted = await client.send(url, TOKENS["bot"], BOT, CAROL, "from the example ✓")
        await net(gw).wait_sent(1)
        await gw.settle()
        state = await client.status(url, TOKENS["bot"], accepted["status"])
        body = cpim("answer", sender=CAROL, to=BOT)
        await net(gw).inject(
            Envelope(
                Operation.MESSAGE, CAROL, BOT, Payload(CPIM, body), identity_of(body), Origin("net")
            )
        )
        stream = client.events(url, TOKENS["bot"])
        event = await anext(stream)
        await stream.aclose()
    assert state["state"] == "delivered"
    assert net(gw).sent[0].payload.body.endswith("from the example ✓".encode())
    assert (event["kind"], event["body"]) == ("message", body)
