"""The gateway's store on a full disk: a real filesystem (a 16 MiB tmpfs this test mounts;
the tests run as root) holding the SQLite store, filled up with a file while ``cpimgw run``
is serving through Prosody and Kamailio.

Promised: while the disk is full a message is refused with an error its sender sees (SIP
final response >= 400, XMPP error stanza), never acknowledged and then dropped; what was
acknowledged before is delivered; once space returns the gateway accepts and delivers
again by itself, and the senders' retries go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    COMPONENT,
    PASSWORD,
    SIP_DOMAIN,
    XMPP_DOMAIN,
    fault_stack,
    sip_identity,
    sip_ua,
)
from tests.faults.figures import record
from tests.xmpp.users import User

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (unmounted whatever happens)."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a tmpfs: run it as root (CI does)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no byte left (ENOSPC)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


async def wait(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_store_on_a_full_disk_refuses_with_an_error_and_recovers(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    jid = f"alice@{XMPP_DOMAIN}/desk"
    received: list[str] = []
    errors: list[tuple[str, str]] = []
    with (
        small_disk(tmp_path / "disk") as disk,
        fault_stack(tmp_path, store=disk / "cpimgw.sqlite3") as s,
    ):
        alice = User(jid, PASSWORD)
        alice.add_event_handler(
            "message",
            lambda m: received.append(m["id"]) if m["type"] == "chat" and m["body"] else None,
        )
        alice.add_event_handler(
            "message_error", lambda m: errors.append((m["id"], m["error"]["condition"]))
        )
        await alice.login(s.prosody.c2s_port)
        async with sip_ua(s.kamailio.port, s.sink_port) as ua:

            async def send(tag: str) -> tuple[str, int]:
                call_id = f"{tag}-{run}"
                request = ua.message(
                    f"sip:bob@{SIP_DOMAIN}",
                    f"sip:alice@{XMPP_DOMAIN}",
                    tag.encode(),
                    call_id=call_id,
                )
                return call_id, await ua.send(request)

            before = [await send(f"before{i}") for i in range(20)]
            assert all(status == 202 for _, status in before), before
            filler = await asyncio.to_thread(fill, disk)
            during = [await send(f"during{i}") for i in range(20)]
            # an XMPP user writing while the disk is full gets an error stanza
            msg = alice.make_message(mto=f"sink-bob@{COMPONENT}", mbody="full", mtype="chat")
            msg["id"] = f"xfull-{run}"
            msg.send()
            got_error = await wait(lambda: any(i == msg["id"] for i, _ in errors), 15)
            alive_while_full = s.gateway.alive()
            filler.unlink()  # space returns
            freed_at = time.monotonic()
            retried: list[tuple[str, int]] = []
            for call_id, status in during:  # the SIP sender retries what was refused
                if status >= 300:
                    request = ua.message(
                        f"sip:bob@{SIP_DOMAIN}",
                        f"sip:alice@{XMPP_DOMAIN}",
                        call_id.split("-")[0].encode(),
                        call_id=call_id,
                    )
                    retried.append((call_id, await ua.send(request)))
            after = [await send(f"after{i}") for i in range(20)]
            accepted = {
                sip_identity(c) for c, status in before + during + retried + after if status < 300
            }
            all_there = await wait(lambda: accepted <= set(received), 60)
            record(
                "store-full-disk",
                filesystem="tmpfs 16 MiB, filled with a file to ENOSPC",
                acked_before=sum(1 for _, v in before if v < 300),
                refused_while_full=sum(1 for _, v in during if v >= 300),
                acked_while_full=sum(1 for _, v in during if v < 300),
                statuses_while_full=sorted({v for _, v in during}),
                xmpp_error_while_full=[c for i, c in errors if i == msg["id"]],
                retries_accepted_after=sum(1 for _, v in retried if v < 300),
                acked_after=sum(1 for _, v in after if v < 300),
                delivered_unique=len(accepted & set(received)),
                recovered_within_seconds=round(time.monotonic() - freed_at, 2),
                gateway_alive=alive_while_full and s.gateway.alive(),
            )
            await alice.logout()
            assert alive_while_full, s.gateway.log()
            assert s.gateway.alive(), s.gateway.log()
            assert all(v >= 400 for _, v in during), during
            assert got_error, errors
            assert all(v < 300 for _, v in retried + after), (retried, after)
            assert all_there, f"{len(accepted - set(received))} acknowledged not delivered"
