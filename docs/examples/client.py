"""A small client of cpimgw's HTTP API (docs/http-api.md): send a CPIM message, poll its
status, and follow the events for the bot's address, resuming where it left off.

    python docs/examples/client.py send  URL TOKEN FROM TO "text"
    python docs/examples/client.py watch URL TOKEN [CURSOR-FILE]

Needs only aiohttp. A bot would call ``send`` to talk and ``events`` to listen.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


def cpim_message(sender: str, to: str, text: str) -> bytes:
    """A message/cpim body (RFC 3862): CPIM headers, blank line, the MIME entity."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nDateTime: {now}\r\n\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


async def send(url: str, token: str, sender: str, to: str, text: str) -> dict[str, Any]:
    """POST the message; returns the 202 answer (``id``, ``status`` URL). The key makes
    a resend after a network error harmless: the gateway drops the duplicate."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "message/cpim",
        "Cpimgw-Id": uuid.uuid4().hex,
    }
    body = cpim_message(sender, to, text)
    async with aiohttp.ClientSession() as session:
        for attempt in range(5):
            async with session.post(f"{url}/v1/messages", data=body, headers=headers) as r:
                answer: dict[str, Any] = await r.json(content_type=None)
                if r.status == 202:
                    return answer
                if r.status not in (429, 503):  # a refusal: say why (problem object)
                    raise RuntimeError(f"{r.status} {answer.get('reason')}: {answer.get('detail')}")
                await asyncio.sleep(float(r.headers.get("Retry-After", 2**attempt)))
    raise RuntimeError("the gateway stayed busy")


async def status(url: str, token: str, location: str) -> dict[str, Any]:
    """The status resource: state accepted / delivered / failed (with a reason)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + location, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        result: dict[str, Any] = await r.json()
        return result


async def events(url: str, token: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
    """Server-Sent Events after cursor ``after``, forever. Each event's ``id`` is the
    cursor to resume from; events up to it are removed when you reconnect with it."""
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(after)}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{url}/v1/events", headers=headers) as r,
    ):
        r.raise_for_status()
        data = ""
        async for raw in r.content:
            line = raw.decode("utf-8").rstrip("\n")
            if line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                event: dict[str, Any] = json.loads(data)
                if event.get("body") is not None:
                    event["body"] = base64.b64decode(event["body"])  # exact bytes
                yield event
                data = ""


async def watch(url: str, token: str, cursor_file: Path) -> None:
    after = int(cursor_file.read_text()) if cursor_file.exists() else 0  # noqa: ASYNC240
    async for event in events(url, token, after):
        print(event["kind"], event["from"], "->", event["to"], event.get("body"))
        cursor_file.write_text(event["id"])  # noqa: ASYNC240 - after handling: at-least-once


if __name__ == "__main__":
    command, url, token, *rest = sys.argv[1:]
    if command == "send":
        sender, to, text = rest
        accepted = asyncio.run(send(url, token, sender, to, text))
        print(accepted, asyncio.run(status(url, token, accepted["status"])))
    else:
        asyncio.run(watch(url, token, Path(rest[0] if rest else "cursor.txt")))
