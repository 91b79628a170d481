"""Several gateway nodes behind one XMPP server: what Prosody and ejabberd (as Debian 12
ships them) do with several XEP-0114 connections for one component domain.

The answers these tests pin (docs/scaling.md, "XMPP: several component connections"):

- Prosody 0.12 refuses a second connection for a connected component domain with a
  ``<conflict/>`` stream error and keeps the first. Nodes run as active + standby per
  domain (the standby's reconnect loop takes over when the active one dies), or component
  domains are sharded across nodes.
- ejabberd 23.01 accepts several and spreads the stanzas over them at random; when one
  connection goes, the others get everything.
- ejabberd's ``domain_balancing`` (``bare_source`` + ``component_number``) keeps each
  sender on one connection, but the stanzas of a slot whose connection is gone are dropped
  without an error to the sender until a new connection takes the slot: not usable when a
  node can die.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from slixmpp import JID

import tests.servers.ejabberd as ejabberd_fixture
from tests.cluster.component import RawComponent
from tests.servers.ejabberd import EjabberdServer
from tests.servers.prosody import ProsodyServer
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

USERS = [f"u{i}" for i in range(6)]
Server = ProsodyServer | EjabberdServer


def _scratch() -> Path:
    # under /tmp itself: pytest's tmp folders are 0700 and ejabberd runs as its own user
    workdir = Path(tempfile.mkdtemp(prefix="cpimgw-cluster-"))
    workdir.chmod(0o755)
    return workdir


def _ejabberd(extra_config: str = "") -> Iterator[EjabberdServer]:
    workdir = _scratch()
    configs = workdir / "configs"
    shutil.copytree(ejabberd_fixture.CONFIGS, configs)
    if extra_config:
        with (configs / "ejabberd.yml.in").open("a") as file:
            file.write(extra_config)
    server = EjabberdServer(workdir / "server")
    try:
        with mock.patch.object(ejabberd_fixture, "CONFIGS", configs):
            server.start()
        for user in USERS:
            server.register(user, "pw")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def ejabberd() -> Iterator[EjabberdServer]:
    yield from _ejabberd()


@pytest.fixture(scope="module")
def ejabberd_balanced() -> Iterator[EjabberdServer]:
    yield from _ejabberd(
        'domain_balancing:\n  "@COMPONENT@":\n    type: bare_source\n    component_number: 3\n'
    )


@pytest.fixture(scope="module")
def prosody() -> Iterator[ProsodyServer]:
    workdir = _scratch()
    server = ProsodyServer(workdir)
    try:
        server.start()
        for user in USERS:
            server.register(user, "pw")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def component(server: Server) -> RawComponent:
    return await RawComponent(server.component_port, server.component, server.secret).connect()


async def send_from_each_user(server: Server, tag: str, count: int = 3) -> None:
    """Every user sends ``count`` messages to contacts on the component domain."""
    for user in USERS:
        async with logged_in(f"{user}@xmpp.test/{tag}", "pw", server.c2s_port) as client:
            for i in range(count):
                client.send_message(
                    mto=JID(f"c{i}@{server.component}"), mbody=f"{tag} {i}", mtype="chat"
                )
            await asyncio.sleep(0.3)  # written and routed before the session closes


def senders(conn: RawComponent, tag: str) -> dict[str, int]:
    """Per sending user, how many ``tag`` messages this connection got."""
    found = re.findall(rb"from='(u\d+)@xmpp\.test/" + tag.encode() + rb"'", conn.data)
    return {u.decode(): found.count(u) for u in set(found)}


async def arrived(conns: list[RawComponent], tag: str, expected: int, wait: float = 15.0) -> int:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        total = sum(sum(senders(c, tag).values()) for c in conns)
        if total >= expected or asyncio.get_running_loop().time() > deadline:
            return total
        await asyncio.sleep(0.05)


async def test_prosody_refuses_a_second_connection_and_a_standby_takes_over(
    prosody: ProsodyServer,
) -> None:
    active = await component(prosody)
    second = await component(prosody)
    assert active.accepted
    assert (second.accepted, second.error) == (False, "conflict")
    await second.close()
    await send_from_each_user(prosody, "p1")
    assert await arrived([active], "p1", 3 * len(USERS)) == 3 * len(USERS)
    await active.close()  # the active node dies; the standby's next attempt gets in
    standby = await component(prosody)
    try:
        assert standby.accepted
        await send_from_each_user(prosody, "p2")
        assert await arrived([standby], "p2", 3 * len(USERS)) == 3 * len(USERS)
    finally:
        await standby.close()


async def test_ejabberd_spreads_stanzas_over_connections_and_survives_losing_one(
    ejabberd: EjabberdServer,
) -> None:
    conns = [await component(ejabberd) for _ in range(3)]
    try:
        assert all(c.accepted for c in conns)
        await send_from_each_user(ejabberd, "e1", count=6)
        assert await arrived(conns, "e1", 6 * len(USERS)) == 6 * len(USERS)
        used = [c for c in conns if senders(c, "e1")]
        assert len(used) >= 2, "random balancing uses more than one connection"
        # no affinity: some sender's messages went to more than one connection
        per_user = {u: sum(1 for c in conns if u in senders(c, "e1")) for u in USERS}
        assert max(per_user.values()) > 1
        await conns[0].close()
        await asyncio.sleep(0.3)
        await send_from_each_user(ejabberd, "e2")
        assert await arrived(conns[1:], "e2", 3 * len(USERS)) == 3 * len(USERS)
    finally:
        for conn in conns:
            await conn.close()


async def test_ejabberd_bare_source_balancing_drops_a_dead_slots_stanzas(
    ejabberd_balanced: EjabberdServer,
) -> None:
    server = ejabberd_balanced
    conns = [await component(server) for _ in range(3)]
    try:
        await send_from_each_user(server, "b1")
        assert await arrived(conns, "b1", 3 * len(USERS)) == 3 * len(USERS)
        owner = {u: i for i, c in enumerate(conns) for u in senders(c, "b1")}
        assert all(sum(1 for c in conns if u in senders(c, "b1")) == 1 for u in USERS)
        victim = next(i for i in range(3) if i in owner.values())
        lost = {u for u, i in owner.items() if i == victim}
        await conns[victim].close()
        await asyncio.sleep(0.3)
        survivors = [c for i, c in enumerate(conns) if i != victim]
        await send_from_each_user(server, "b2")
        expected = 3 * (len(USERS) - len(lost))
        assert await arrived(survivors, "b2", expected + 1, wait=2.0) == expected
        # a new connection takes the free slot and its senders' stanzas flow again
        conns.append(await component(server))
        await send_from_each_user(server, "b3")
        await arrived([conns[-1]], "b3", 3 * len(lost))
        assert senders(conns[-1], "b3").keys() == lost
    finally:
        for conn in conns:
            await conn.close()
