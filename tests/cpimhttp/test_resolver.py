"""RFC 3861 peer discovery against a dnsmasq on loopback (never the system resolver)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.cpim.resolver import HostResolver, SrvRecord, SrvResolver, Target, order, owner_name
from canonical.errors import DeliveryError, Reason
from tests.servers.dnsmasq import DnsmasqServer, Srv
from tests.servers.process import free_port

records = st.lists(
    st.builds(
        SrvRecord,
        priority=st.integers(0, 3),
        weight=st.integers(0, 10),
        port=st.integers(1, 65535),
        target=st.from_regex(r"[a-z]{1,8}\.test", fullmatch=True),
    ),
    max_size=8,
)


@given(records, st.randoms())
def test_order_keeps_every_record_by_ascending_priority(
    found: list[SrvRecord], rng: random.Random
) -> None:
    ordered = order(found, rng.random)
    assert sorted(ordered, key=repr) == sorted(found, key=repr)
    assert [r.priority for r in ordered] == sorted(r.priority for r in found)


def test_order_prefers_heavier_weights() -> None:
    heavy, light = SrvRecord(0, 90, 1, "heavy.test"), SrvRecord(0, 10, 1, "light.test")
    rng = random.Random(7)
    firsts = [order([light, heavy], rng.random)[0].target for _ in range(400)]
    assert 0.8 < firsts.count("heavy.test") / 400 < 0.98


def test_owner_name_follows_rfc3861() -> None:
    assert owner_name("_im", "example.com") == "_im._cpimgw-http.example.com."
    assert owner_name("_pres", "example.com.") == "_pres._cpimgw-http.example.com."


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsmasqServer]:
    server = DnsmasqServer(
        tmp_path_factory.mktemp("dnsmasq"),
        srv=[
            Srv("_im._cpimgw-http.b.test", "gw-b2.b.test", 9444, priority=20),
            Srv("_im._cpimgw-http.b.test", "gw-b.b.test", 9443, priority=10),
            Srv("_pres._cpimgw-http.b.test", "pres.b.test", 9445),
            Srv("_im._cpimgw-http.none.test", ".", 0),
        ],
        hosts={"gw-b.b.test": ["127.0.0.1"], "plain.test": ["127.0.0.1", "::1"]},
    )
    with server:
        yield server


@pytest.mark.e2e
async def test_srv_targets_in_priority_order(dns: DnsmasqServer) -> None:
    resolver = SrvResolver([dns.nameserver])
    assert await resolver.targets("_im", "b.test") == [
        Target("gw-b.b.test", 9443),
        Target("gw-b2.b.test", 9444),
    ]
    assert await resolver.targets("_pres", "b.test") == [Target("pres.b.test", 9445)]


@pytest.mark.e2e
async def test_address_record_without_srv_uses_the_domain_itself(dns: DnsmasqServer) -> None:
    resolver = SrvResolver([dns.nameserver], default_port=8443)
    assert await resolver.targets("_im", "plain.test") == [Target("plain.test", 8443)]


@pytest.mark.e2e
@pytest.mark.parametrize("domain", ["nowhere.test", "none.test"])
async def test_unknown_or_refusing_domain_is_final(dns: DnsmasqServer, domain: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        await SrvResolver([dns.nameserver]).targets("_im", domain)
    assert (caught.value.reason, caught.value.retryable) == (Reason.UNKNOWN_DESTINATION, False)


@pytest.mark.e2e
async def test_dead_dns_server_is_retryable() -> None:
    resolver = SrvResolver([("127.0.0.1", free_port("udp"))], timeout=0.5)
    with pytest.raises(DeliveryError) as caught:
        await resolver.targets("_im", "b.test")
    assert (caught.value.reason, caught.value.retryable) == (Reason.UNAVAILABLE, True)


@pytest.mark.e2e
async def test_http_client_addresses_come_from_the_named_server(dns: DnsmasqServer) -> None:
    hosts = HostResolver(SrvResolver([dns.nameserver]))
    found = await hosts.resolve("plain.test", 443, socket.AF_UNSPEC)
    assert {(r["host"], r["family"]) for r in found} == {
        ("127.0.0.1", socket.AF_INET),
        ("::1", socket.AF_INET6),
    }
    assert [r["host"] for r in await hosts.resolve("127.0.0.1", 1)] == ["127.0.0.1"]
    with pytest.raises(OSError):
        await hosts.resolve("nowhere.test", 443)


def test_resolver_needs_an_explicit_server(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DNS server"):
        SrvResolver([])
