"""The same message flow once against ejabberd, the second XMPP server."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.xmpp.adapter import XmppAdapter
from adapters.xmpp.stanza import CARRIAGE_NS
from canonical import cpim
from canonical.envelope import Operation, Payload
from tests.gateway.network import until
from tests.servers.ejabberd import EjabberdServer
from tests.xmpp.test_adapter_e2e import VECTORS, config, outbound, running
from tests.xmpp.test_component_down import Lines, context, nothing
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ejabberd() -> Iterator[EjabberdServer]:
    # under /tmp itself: pytest's own tmp folders are 0700 and ejabberd runs as its own user
    workdir = Path(tempfile.mkdtemp(prefix="cpimgw-ejabberd-"))
    server = EjabberdServer(workdir)
    try:
        server.start()
        server.register("alice", "alicepw")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_message_flow_both_ways_through_ejabberd(ejabberd: EjabberdServer) -> None:
    payload = Payload(
        "message/cpim",
        cpim.parse(
            (VECTORS / "cpim" / "valid" / "013-binary-png-body.cpim").read_bytes()
        ).to_body(),
    )
    async with (
        running(ejabberd) as (adapter, recorder),
        logged_in(  # type: ignore[arg-type]
            "alice@xmpp.test/ej", "alicepw", ejabberd.c2s_port
        ) as alice,
    ):
        alice.send_message(mto=f"bob@{ejabberd.component}", mbody="über ejabberd ✓", mtype="chat")
        (env,) = await recorder.wait()
        assert env.operation is Operation.MESSAGE
        assert env.sender == "xmpp:alice@xmpp.test/ej"
        assert cpim.parse_body(env.payload.body).body == "über ejabberd ✓".encode()  # type: ignore[union-attr]

        await adapter.send(outbound(payload))
        got = await alice.wait_for(
            lambda s: s.name == "message" and s["from"].domain == ejabberd.component
        )
        element = got.xml.find(f"{{{CARRIAGE_NS}}}cpim")
        assert element is not None
        assert base64.b64decode(element.text or "") == payload.body


async def test_a_wrong_secret_is_refused_by_ejabberd_with_the_fix_in_the_log(
    ejabberd: EjabberdServer,
) -> None:
    lines = Lines()
    settings = config(ejabberd, secret="not-the-secret", reconnect_initial=0.1)  # type: ignore[arg-type]
    adapter = XmppAdapter("xmpp", settings, context(lines))
    task = asyncio.create_task(adapter.run(nothing))
    try:
        await until(lambda: bool(lines.at(logging.ERROR)), within=15)
        line = lines.at(logging.ERROR)[0]
        assert f"refused component {ejabberd.component}" in line
        assert "not-authorized" in line
        assert "ejabberd.yml" in line
        assert not adapter.ready()
        assert not task.done()
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
