"""Gateway-to-gateway federation over the API with mutual TLS (certificates from
tests/pki.py): messages and presence both ways, identity and hop history carried,
wrong certificates refused, loops stopped, failures reported back, SRV discovery."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter, CpimHttpConfig, PeerConfig, TlsConfig
from adapters.memory import MemoryAdapter
from canonical.envelope import CPIM, PIDF, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import DeliveryError, Reason
from gateway.core import Gateway
from gateway.routing import Route, RoutingTable, SeenSet
from gateway.security import Rules
from gateway.store.sqlite import SqliteStore
from tests.cpimhttp.rig import BOT, CAROL, auth, client, cpim, running, wait_state
from tests.cpimhttp.test_stream import read_events
from tests.gateway.network import FAST, memory, until
from tests.pki import Credential, make_ca, make_leaf
from tests.servers.dnsmasq import DnsmasqServer, Srv
from tests.servers.process import free_port

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Pki:
    ca: Path
    a: tuple[Path, Path]
    b: tuple[Path, Path]
    stranger: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    (root / "ca.crt").write_bytes(ca.cert_pem)

    def leaf(issuer: Credential, name: str) -> tuple[Path, Path]:
        cred = make_leaf(issuer, name, dns=(name,), ips=("127.0.0.1",))
        return cred.write(root, name)

    return Pki(
        root / "ca.crt",
        leaf(ca, "gw-a.test"),
        leaf(ca, "gw-b.test"),
        leaf(make_ca("rogue CA"), "gw-a.test-rogue"),
    )


def tls(pki: Pki, pair: tuple[Path, Path]) -> TlsConfig:
    return TlsConfig(cert=pair[0], key=pair[1], ca=pki.ca, client_certs="required")


@dataclass
class Pair:
    a: Gateway
    b: Gateway
    a_port: int
    b_port: int

    def http(self, gateway: Gateway, name: str) -> CpimHttpAdapter:
        found = gateway.adapters[name]
        assert isinstance(found, CpimHttpAdapter)
        return found

    def net(self) -> MemoryAdapter:
        found = self.b.adapters["net"]
        assert isinstance(found, MemoryAdapter)
        return found


def make_pair(
    tmp: Path,
    pki: Pki,
    *,
    a_cert: tuple[Path, Path] | None = None,
    a_peer: dict[str, Any] | None = None,
    b_routes: tuple[Route, ...] | None = None,
    a_extra: dict[str, Any] | None = None,
) -> Pair:
    a_port, b_port, api_port = free_port(), free_port(), free_port()
    a_db, b_db = tmp / "a.db", tmp / "b.db"
    context_a = AdapterContext(gateway_id="gw-a")
    context_b = AdapterContext(gateway_id="gw-b")
    api = CpimHttpAdapter(
        "api",
        CpimHttpConfig(port=api_port, database=a_db, synchronous="normal", clients=[client("bot")]),
        context_a,
    )
    peer_b = {"name": "gw-b.test", "send_as": ["*@example.net"], "domains": ["example.net"],
              "url": f"https://127.0.0.1:{b_port}", **(a_peer or {})}  # fmt: skip
    fed_a = CpimHttpAdapter(
        "fed",
        CpimHttpConfig(
            port=a_port,
            database=a_db,
            synchronous="normal",
            tls=tls(pki, a_cert or pki.a),
            peers=[PeerConfig(**peer_b)],
            **(a_extra or {}),
        ),
        context_a,
    )
    fed_b = CpimHttpAdapter(
        "fed",
        CpimHttpConfig(
            port=b_port,
            database=b_db,
            synchronous="normal",
            tls=tls(pki, pki.b),
            peers=[
                PeerConfig(
                    name="gw-a.test",
                    send_as=["*@bots.test"],
                    domains=["bots.test"],
                    url=f"https://127.0.0.1:{a_port}",
                )
            ],
        ),
        context_b,
    )
    a = Gateway(
        gateway_id="gw-a",
        adapters={"api": api, "fed": fed_a},
        store=SqliteStore(a_db, synchronous="normal"),
        routing=RoutingTable([Route("bots.test", "api"), Route("example.net", "fed")]),
        rules=Rules(rate=0),
        delivery=FAST,
        seen=SeenSet(window=0),
    )
    b = Gateway(
        gateway_id="gw-b",
        adapters={"fed": fed_b, "net": memory("net", "gw-b")},
        store=SqliteStore(b_db, synchronous="normal"),
        routing=RoutingTable(b_routes or (Route("example.net", "net"), Route("bots.test", "fed"))),
        rules=Rules(rate=0),
        delivery=FAST,
        seen=SeenSet(window=0),
    )
    return Pair(a, b, a_port, b_port)


async def send_from_bot(pair: Pair, body: bytes) -> dict[str, Any]:
    url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + "/v1/messages", data=body, headers={"Content-Type": CPIM, **auth()}
        ) as response,
    ):
        assert response.status == 202, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def test_message_crosses_two_gateways_with_identity_and_history(
    tmp_path: Path, pki: Pki
) -> None:
    pair = make_pair(tmp_path, pki)
    body = cpim("across two gateways")
    async with running(pair.b), running(pair.a):
        answer = await send_from_bot(pair, body)
        await pair.net().wait_sent(1)
        url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
        async with aiohttp.ClientSession() as s:
            await wait_state(s, url, answer["status"], "delivered")
    [arrived] = pair.net().sent
    assert arrived.payload == Payload(CPIM, body)
    assert arrived.identity == answer["id"]
    assert arrived.trace == ("gw-a", "gw-b")
    assert arrived.max_forwards == 68
    assert arrived.origin.peer == "gw-a.test"


async def test_reply_and_presence_cross_back(tmp_path: Path, pki: Pki) -> None:
    pair = make_pair(tmp_path, pki)
    pidf = (
        b"<?xml version='1.0' encoding='UTF-8'?>\r\n<presence xmlns='urn:ietf:params:xml:ns:pidf'"
        b" entity='pres:carol@example.net'><tuple id='t'><status><basic>open</basic></status>"
        b"</tuple></presence>"
    )
    async with running(pair.b), running(pair.a), aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
        head = {"Cpimgw-From": BOT, "Cpimgw-To": CAROL, **auth()}
        async with s.post(url + "/v1/subscriptions", headers=head) as response:
            assert response.status == 202
        await pair.net().wait_sent(1)
        net = pair.net()
        reply = cpim("a reply", sender=CAROL, to=BOT)
        await net.inject(
            Envelope(
                Operation.MESSAGE,
                CAROL,
                BOT,
                Payload(CPIM, reply),
                identity_of(reply),
                Origin("net"),
            )
        )
        await net.inject(
            Envelope(Operation.AUTHORIZE, CAROL, BOT, None, "grant-1", Origin("net"), granted=True)
        )
        async with s.get(url + "/v1/events", headers=auth()) as response:
            events = await read_events(response, 2)
            # A NOTIFY passes gateway A only once A's book has the approval: wait for it.
            await net.inject(
                Envelope(
                    Operation.NOTIFY, CAROL, CAROL, Payload(PIDF, pidf), "pidf-1", Origin("net")
                )
            )
            events += await read_events(response, 1)
    by_kind = {e["event"]: e["data"] for e in events}  # separate identities: any order
    assert sorted(by_kind) == ["authorize", "message", "notify"]
    assert base64.b64decode(by_kind["message"]["body"]) == reply
    assert by_kind["message"]["trace"] == ["gw-b", "gw-a"]
    assert by_kind["authorize"]["granted"] is True
    assert base64.b64decode(by_kind["notify"]["body"]) == pidf
    [subscribe] = net.sent
    assert (subscribe.operation, subscribe.sender, subscribe.trace) == (
        Operation.SUBSCRIBE, BOT, ("gw-a", "gw-b"),
    )  # fmt: skip


async def test_far_failure_is_reported_back_into_the_senders_status(
    tmp_path: Path, pki: Pki
) -> None:
    pair = make_pair(tmp_path, pki)
    pair.net().fail_next(
        DeliveryError("carol left", retryable=False, reason=Reason.UNKNOWN_DESTINATION)
    )
    async with running(pair.b), running(pair.a), aiohttp.ClientSession() as s:
        answer = await send_from_bot(pair, cpim("to nowhere"))
        url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
        failed = await wait_state(s, url, answer["status"], "failed")
        async with s.get(url + "/v1/events", headers=auth()) as response:
            [report] = await read_events(response, 1)
    assert failed["reason"] == "unknown-destination"
    assert report["data"]["attributes"]["report.identity"] == answer["id"]


async def test_certificate_from_another_ca_is_refused_and_the_message_waits(
    tmp_path: Path, pki: Pki
) -> None:
    pair = make_pair(tmp_path, pki, a_cert=pki.stranger)
    async with running(pair.b), running(pair.a), aiohttp.ClientSession() as s:
        answer = await send_from_bot(pair, cpim("rogue"))
        url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
        await until(lambda: pair.a.counters.retried >= 1, within=10)
        async with s.get(url + answer["status"], headers=auth()) as response:
            status = await response.json()
    assert pair.net().sent == []
    assert status["state"] == "accepted"
    assert status["attempts"] >= 1
    assert status["detail"].startswith(f"https://127.0.0.1:{pair.b_port}/v1/messages")
    assert pair.b.counters.accepted == 0  # TLS 1.3: the refusal shows as a reset


async def test_federation_listener_needs_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    pair = make_pair(tmp_path, pki)
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with running(pair.b), aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{pair.b_port}/v1/me"
        with pytest.raises(aiohttp.ClientError):
            async with s.get(url, ssl=context, headers=auth()) as response:
                await response.read()
        context.load_cert_chain(*pki.a)
        async with s.get(url, ssl=context) as response:
            me = await response.json()
    assert (me["name"], me["kind"]) == ("gw-a.test", "peer")


async def test_peer_cannot_send_as_domains_it_does_not_carry(tmp_path: Path, pki: Pki) -> None:
    pair = make_pair(tmp_path, pki)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(*pki.a)
    async with running(pair.b), aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{pair.b_port}/v1/messages"
        body = cpim("spoof", sender="sip:boss@example.net", to=CAROL)
        async with s.post(url, data=body, ssl=context, headers={"Content-Type": CPIM}) as response:
            assert response.status == 403
            assert (await response.json())["reason"] == "forbidden"


async def test_routing_loop_between_gateways_is_stopped_and_reported(
    tmp_path: Path, pki: Pki
) -> None:
    pair = make_pair(
        tmp_path,
        pki,
        a_peer={"send_as": ["*"]},  # A trusts B with any sender: only the trace stops it
        b_routes=(Route("example.net", "fed"), Route("bots.test", "fed")),
    )
    pair.http(pair.b, "fed").settings.peers[0].domains.append("example.net")
    async with running(pair.b), running(pair.a), aiohttp.ClientSession() as s:
        answer = await send_from_bot(pair, cpim("round and round"))
        url = f"http://127.0.0.1:{pair.http(pair.a, 'api').port}"
        failed = await wait_state(s, url, answer["status"], "failed")
    assert failed["reason"] == "loop"
    assert pair.net().sent == []


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[tuple[DnsmasqServer, int]]:
    port = free_port()
    server = DnsmasqServer(
        tmp_path / "dns",
        srv=[Srv("_im._cpimgw-http.example.net", "gw-b.test", port)],
        hosts={"gw-b.test": ["127.0.0.1"]},
        local=("test", "example.net"),
    )
    with server:
        yield server, port


async def test_peer_found_by_rfc3861_srv_lookup(
    tmp_path: Path, pki: Pki, dns: tuple[DnsmasqServer, int]
) -> None:
    server, b_port = dns
    pair = make_pair(
        tmp_path,
        pki,
        a_peer={"url": None, "domains": []},
        a_extra={"discover": True, "dns": [f"127.0.0.1:{server.port}"]},
    )
    pair = _with_b_port(pair, b_port)
    async with running(pair.b), running(pair.a):
        answer = await send_from_bot(pair, cpim("found by SRV"))
        await pair.net().wait_sent(1)
    assert pair.net().sent[0].identity == answer["id"]
    assert "_im._cpimgw-http.example.net" in server.log()


def _with_b_port(pair: Pair, port: int) -> Pair:
    """Move gateway B's federation listener to ``port`` (the one the SRV record names)."""
    fed_b = pair.http(pair.b, "fed")
    moved = CpimHttpAdapter("fed", fed_b.settings.model_copy(update={"port": port}), fed_b.context)
    pair.b.adapters["fed"] = moved
    return Pair(pair.a, pair.b, pair.a_port, port)


async def test_http_peer_request_is_what_the_mapper_says(tmp_path: Path, pki: Pki) -> None:
    """The bytes on the federation link carry the object untouched (L1 on the wire)."""
    received: list[bytes] = []
    pair = make_pair(tmp_path, pki)
    original = pair.http(pair.b, "fed").api.operate

    async def spy(request: Any) -> Any:
        received.append(await request.read())
        return await original(request)

    pair.http(pair.b, "fed").api.operate = spy  # type: ignore[method-assign]
    body = cpim("watched on the wire")
    async with running(pair.b), running(pair.a):
        await send_from_bot(pair, body)
        await pair.net().wait_sent(1)
        await asyncio.sleep(0)
    assert received == [body]
