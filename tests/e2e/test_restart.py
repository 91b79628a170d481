"""Messages queued in the gateway's durable store survive a restart of ``cpimgw run`` and are
all delivered once the recipient can take them; none is lost and none arrives twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from canonical import cpim
from tests.e2e.peers import scenario, sip_user
from tests.e2e.stack import COMPONENT, XMPP_DOMAIN, Stack
from tests.servers.sipp import run_sipp, sipp_uas
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

COUNT = 5


def queue(stack: Stack) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "queue", "list", "-c", str(stack.config), "--json"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


async def test_queued_messages_survive_a_gateway_restart_and_arrive_once(
    prosody_stack: Stack,
) -> None:
    stack = prosody_stack
    texts = [f"queued message {i} ✓" for i in range(COUNT)]
    folder = stack.workdir / "sipp" / "frank-away"
    # frank is registered but unavailable: every MESSAGE gets 480, so the gateway keeps
    # them queued and retries
    with sipp_uas(scenario("uas_unavailable.xml"), folder, name="frank-away", timeout=120) as away:
        reg = await asyncio.to_thread(
            run_sipp,
            "register.xml",
            folder,
            remote=stack.proxy,
            name="frank-register",
            service="frank",
            keys={"contact_port": str(away.port), "expires": "600"},
        )
        assert reg.returncode == 0, reg.output
        taken_before = stack.metric("cpimgw_messages_in_total", adapter="xmpp")
        async with logged_in(f"alice@{XMPP_DOMAIN}", "alicepw", stack.c2s_port) as alice:
            for i, text in enumerate(texts):
                alice.send_raw(
                    f"<message to='frank@{COMPONENT}' type='chat' id='q-{i}'>"
                    f"<body>{text}</body></message>"
                )
            for _ in range(200):
                if (  # every message stored, and each tried once at least
                    stack.metric("cpimgw_messages_in_total", adapter="xmpp") >= taken_before + COUNT
                    and stack.metric("cpimgw_retries_total", adapter="sip", reason="unavailable")
                    >= COUNT
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the gateway did not retry:\n{stack.log()}")
        await asyncio.to_thread(stack.stop_gateway)
        assert stack.gateway is not None
        assert stack.gateway is not None
        assert stack.gateway.returncode == 0, stack.log()  # a clean drain
    waiting = await asyncio.to_thread(queue, stack)  # read from the store file, gateway down
    assert len(waiting) == COUNT
    assert all(row["state"] == "pending" and row["target"] == "sip" for row in waiting)
    # frank is back (a new contact); the gateway starts again
    async with sip_user(stack, "frank", calls=COUNT) as frank:
        await asyncio.to_thread(stack.start_gateway)
        got = await frank.messages(within=30)
    bodies = [cpim.parse_body(m.body).body.decode() for m in got]
    assert sorted(bodies) == sorted(texts), stack.log()
    assert len({m.call_id for m in got}) == COUNT  # once each
    assert await asyncio.to_thread(queue, stack) == []
