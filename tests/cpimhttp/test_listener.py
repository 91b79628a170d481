"""The API listener against slow and greedy clients (real aiohttp listener on loopback):
a request head must complete within ``header_timeout``, a body within ``body_timeout``,
and connections past ``max_connections`` are refused at once; each is counted. Requests
that keep to the limits, keep-alive reuse and event streams are not disturbed."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
import yaml

from adapters.cpim.adapter import CpimHttpAdapter
from adapters.cpim.api import openapi_text
from gateway.core import Gateway
from tests.cpimhttp.rig import TOKENS, auth, build_gateway, http, http_config, running

pytestmark = pytest.mark.e2e

DOCUMENT: dict[str, Any] = yaml.safe_load(openapi_text())
OPENAPI = schemathesis.openapi.from_dict(DOCUMENT)


@contextlib.asynccontextmanager
async def api(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[Gateway, Counter[str]]]:
    """A running gateway whose HTTP adapter has ``limits``; counts recorded by name."""
    counts: Counter[str] = Counter()

    def count(name: str, **_labels: str) -> None:
        counts[name] += 1

    path = tmp_path / "gw.db"
    gateway = build_gateway(path, config=http_config(path, **limits))
    adapter: CpimHttpAdapter = http(gateway)
    adapter.gate.count = count
    adapter.api.count = count
    async with running(gateway) as gw:
        yield gw, counts


async def connect(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", http(gw).port)


async def answer(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(within):
        return await reader.read()


def get(path: str, *, close: bool = False) -> bytes:
    connection = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: {connection}\r\n\r\n".encode()


async def test_a_request_head_that_never_completes_gets_408_and_is_closed(
    tmp_path: Path,
) -> None:
    async with api(tmp_path, header_timeout=0.5) as (gw, counts):
        reader, writer = await connect(gw)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        for _ in range(4):  # still trickling when the deadline passes
            await asyncio.sleep(0.2)
            writer.write(b"x")
        got = await answer(reader)
        writer.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"Connection: close" in got
    assert counts["http_header_timeouts"] == 1


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    tmp_path: Path,
) -> None:
    async with api(tmp_path, header_timeout=0.5) as (gw, counts):
        reader, writer = await connect(gw)
        got = await answer(reader)
        writer.close()
    assert got == b""
    assert counts["http_header_timeouts"] == 1


async def test_keep_alive_requests_restart_the_deadline_and_an_idle_one_is_closed(
    tmp_path: Path,
) -> None:
    async with api(tmp_path, header_timeout=1.5) as (gw, counts):
        reader, writer = await connect(gw)
        statuses = []
        for _ in range(3):  # 3 x 0.7 s on one connection: more than one deadline in all
            writer.write(get("/openapi.yaml"))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            statuses.append(head.split(b" ")[1])
            await asyncio.sleep(0.7)
        got = await answer(reader)
        writer.close()
    assert statuses == [b"200"] * 3
    assert got == b""  # idle after the last answer: closed silently
    assert counts["http_header_timeouts"] == 1


async def test_a_body_that_never_completes_gets_408_and_is_closed(tmp_path: Path) -> None:
    async with api(tmp_path, body_timeout=0.5, header_timeout=5.0) as (gw, counts):
        reader, writer = await connect(gw)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: message/cpim\r\n"
            b"Authorization: Bearer " + TOKENS["bot"].encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\nFrom: <im:bot@bots.test>\r\n"
        )
        got = await answer(reader, within=10.0)
        writer.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b'"reason": "timeout"' in got or b'"reason":"timeout"' in got
    assert counts["http_body_timeouts"] == 1


async def test_connections_past_the_cap_are_refused_at_once_with_503(tmp_path: Path) -> None:
    async with api(tmp_path, max_connections=3, header_timeout=30.0) as (gw, counts):
        held = [await connect(gw) for _ in range(3)]
        reader, writer = await connect(gw)
        refused = await answer(reader)
        writer.close()
        for _, w in held[1:]:
            w.close()
        held = held[:1]
        await asyncio.sleep(0.2)  # the gateway sees the closes
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{http(gw).port}/openapi.yaml") as response,
        ):
            served = response.status
        for _, w in held:
            w.close()
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert b"Retry-After: 1" in refused
    assert counts["http_connections_refused"] == 1
    assert served == 200


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one whole HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def check_documented(method: str, path: str, raw: bytes) -> None:
    """``raw`` is a response the document gives ``method path``: its status listed, its
    documented headers present and valid, its media type and body as documented."""
    status, headers, body = parse(raw)
    assert len(body) == int(headers["content-length"])
    responses = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    name = responses[str(status)]["$ref"].rsplit("/", 1)[1]
    definition = DOCUMENT["components"]["responses"][name]
    for header, spec in definition.get("headers", {}).items():
        value = headers[header.lower()]
        schema = spec["schema"]
        if schema["type"] == "integer":
            assert int(value) >= schema.get("minimum", 0)
        assert value in schema.get("enum", [value])
    media = headers["content-type"].split(";")[0].strip()
    assert media in definition["content"]
    operation = OPENAPI[path][method.upper()]
    response = schemathesis.Response(
        status_code=status,
        headers={k: [v] for k, v in headers.items()},
        content=body,
        request=requests.Request(method, "http://127.0.0.1" + path).prepare(),
        elapsed=0.0,
        verify=False,
    )
    operation.validate_response(response)  # raises when the body is not the schema's


async def test_the_listener_refusals_are_the_responses_every_route_documents(
    tmp_path: Path,
) -> None:
    # The gate answers before any route is known, so every route must document its 503
    # (max_connections) and 408 (header_timeout); the body deadline's 408 comes from the
    # handler of an operation that reads a body.
    limits = {"header_timeout": 0.5, "max_connections": 1, "body_timeout": 0.5}
    async with api(tmp_path, **limits) as (gw, counts):
        reader, writer = await connect(gw)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nX-Slow: x")
        await asyncio.sleep(0.1)
        extra_reader, extra_writer = await connect(gw)
        busy = await answer(extra_reader)
        late = await answer(reader)
        writer.close()
        extra_writer.close()
        await asyncio.sleep(0.2)  # the gateway sees the closes
        reader, writer = await connect(gw)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: message/cpim\r\n"
            b"Authorization: Bearer " + TOKENS["bot"].encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\nFrom: <im:bot@bots.test>\r\n"
        )
        slow_body = await answer(reader, within=10.0)
        writer.close()
    routes = [(m, p) for p, item in DOCUMENT["paths"].items() for m in item]
    assert len(routes) >= 10
    for method, path in routes:
        check_documented(method, path, busy)
        check_documented(method, path, late)
    check_documented("POST", "/v1/messages", slow_body)
    assert parse(busy)[0] == 503
    assert parse(late)[0] == parse(slow_body)[0] == 408
    assert parse(late)[1]["connection"] == parse(slow_body)[1]["connection"] == "close"
    assert counts["http_connections_refused"] == counts["http_body_timeouts"] == 1


async def test_an_event_stream_outlives_the_head_deadline(tmp_path: Path) -> None:
    async with (
        api(tmp_path, header_timeout=0.5, heartbeat=0.3) as (gw, counts),
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{http(gw).port}/v1/events", headers=auth("bot")) as response,
    ):
        assert response.status == 200
        lines: list[bytes] = []
        async with asyncio.timeout(5.0):
            while len(lines) < 6:  # 6 keep-alives at 0.3 s: well past the 0.5 s deadline
                line = await response.content.readline()
                if line.startswith(b":"):
                    lines.append(line)
    assert counts["http_header_timeouts"] == 0


def test_the_gate_holds_on_uvloop(tmp_path: Path) -> None:
    # cpimgw run uses uvloop when it is installed, whose transports are not asyncio's
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[bytes, bytes, Counter[str]]:
        async with api(tmp_path, header_timeout=0.5, max_connections=1) as (gw, counts):
            reader, writer = await connect(gw)
            writer.write(b"GET /openapi.yaml HTTP/1.1\r\nHost: gw\r\nX-Slow: x")
            await asyncio.sleep(0.1)
            extra_reader, extra_writer = await connect(gw)
            refused = await answer(extra_reader)
            late = await answer(reader)
            writer.close()
            extra_writer.close()
            return refused, late, counts

    refused, late, counts = uvloop.run(scenario())
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert late.startswith(b"HTTP/1.1 408 "), late
    assert counts["http_connections_refused"] == counts["http_header_timeouts"] == 1
