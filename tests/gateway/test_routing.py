"""Routing table, address rewriting and loop prevention (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical.envelope import Origin
from canonical.errors import ConfigError, Reason, RoutingError
from gateway.routing import (
    Route,
    RoutingTable,
    SeenSet,
    bare,
    check_hops,
    check_pattern,
    rewrite,
    split_address,
)
from tests.gateway.samples import message

TABLE = RoutingTable(
    [
        Route("xmpp.example.com", "xmpp"),
        Route("*.example.com", "wild"),
        Route("deep.x.example.com", "deep"),
        Route("sip.example.net", "sip", scheme="sip", domain="example.net"),
        Route("*", "peer"),
    ]
)


@pytest.mark.parametrize(
    ("address", "scheme", "user", "host", "rest"),
    [
        ("xmpp:alice@xmpp.example.com/phone", "xmpp", "alice", "xmpp.example.com", "/phone"),
        ("xmpp:alice@x.example/res@with/slash", "xmpp", "alice", "x.example", "/res@with/slash"),
        (
            "sip:bob@Example.NET:5061;transport=tls",
            "sip",
            "bob",
            "Example.NET",
            ":5061;transport=tls",
        ),
        ("sips:bob@[::1]:5061", "sips", "bob", "[::1]", ":5061"),
        ("im:carol@example.org", "im", "carol", "example.org", ""),
        ("im:a/b@x.example", "im", "a/b", "x.example", ""),
        ("pres:a/b@x.example/phone", "pres", "a/b", "x.example", "/phone"),
        ("im:a@x.example/b@c", "im", "a", "x.example", "/b@c"),
        ("alice@example.com/r", "xmpp", "alice", "example.com", "/r"),
        ("xmpp:sip.example.com", "xmpp", None, "sip.example.com", ""),
        ("bob\\40example.net@sip.example.com", "xmpp", "bob\\40example.net", "sip.example.com", ""),
    ],
)
def test_split_address_reads_each_scheme(
    address: str, scheme: str, user: str | None, host: str, rest: str
) -> None:
    parts = split_address(address)
    assert (parts.scheme, parts.user, parts.host, parts.rest) == (scheme, user, host, rest)


users = st.from_regex(r"[a-z0-9._\-]{1,12}", fullmatch=True)
hosts = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
rests = st.sampled_from(["", "/phone", ":5060", ";transport=tcp", "/a@b"])


@given(st.sampled_from(["sip", "xmpp", "im", "pres"]), users, hosts, rests)
def test_split_address_gives_back_the_address(scheme: str, user: str, host: str, rest: str) -> None:
    if (rest in (";transport=tcp", ":5060")) != (scheme == "sip"):
        rest = ""  # SIP has parameters and ports, the others resources
    address = f"{scheme}:{user}@{host}{rest}"
    assert str(split_address(address)) == address
    assert bare(bare(address)) == bare(address) == f"{scheme}:{user}@{host}"


def test_address_without_domain_is_a_bad_request() -> None:
    with pytest.raises(RoutingError) as err:
        split_address("sip:")
    assert err.value.reason is Reason.BAD_REQUEST


def test_exact_domain_beats_wildcard_and_longest_wildcard_beats_default() -> None:
    assert TABLE.resolve("xmpp:a@xmpp.example.com").adapter == "xmpp"
    assert TABLE.resolve("xmpp:a@other.example.com").adapter == "wild"
    assert TABLE.resolve("xmpp:a@deep.x.example.com").adapter == "deep"
    assert TABLE.resolve("sip:a@elsewhere.org").adapter == "peer"


def test_wildcard_does_not_match_the_bare_parent_domain() -> None:
    table = RoutingTable([Route("*.example.com", "wild")])
    with pytest.raises(RoutingError) as err:
        table.resolve("sip:a@example.com")
    assert err.value.reason is Reason.UNKNOWN_DESTINATION
    assert "example.com" in str(err.value)


def test_route_rewrites_scheme_and_domain_but_keeps_the_user() -> None:
    resolved = TABLE.resolve("xmpp:bob@sip.example.net/phone")
    assert resolved.recipient == "sip:bob@example.net"
    assert rewrite("sip:bob@a.example;transport=tcp", scheme=None, domain="b.example") == (
        "sip:bob@b.example;transport=tcp"
    )


def test_owner_follows_the_same_table() -> None:
    assert TABLE.owner("xmpp:alice@XMPP.example.com/x") == "xmpp"
    assert RoutingTable([Route("a.example", "a")]).owner("sip:x@b.example") is None


@pytest.mark.parametrize("bad", ["exa mple.com", "*example.com", "a.*.com", "", "-a.com"])
def test_bad_domain_patterns_are_refused_with_the_allowed_forms(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"\*\.example\.com"):
        check_pattern(bad)


def test_envelope_with_no_hop_left_is_a_loop() -> None:
    with pytest.raises(RoutingError) as err:
        check_hops(message(max_forwards=0, trace=("gw-a", "gw-b")), "gw-c")
    assert err.value.reason is Reason.LOOP
    assert "gw-a -> gw-b" in str(err.value)


def test_own_id_in_trace_is_a_loop() -> None:
    with pytest.raises(RoutingError) as err:
        check_hops(message(trace=("gw-a", "gw-b")), "gw-a")
    assert err.value.reason is Reason.LOOP
    check_hops(message(trace=("gw-b",)), "gw-a")


def test_same_bytes_reentering_under_new_identity_is_a_loop() -> None:
    seen = SeenSet(window=30.0)
    first = message(native_id="1")
    seen.check(first, 100.0)
    seen.check(first, 101.0)  # the same identity again: a duplicate, not a loop
    with pytest.raises(RoutingError) as err:
        seen.check(message(native_id="2"), 110.0)
    assert err.value.reason is Reason.LOOP
    third = message(native_id="3")
    seen.check(third, 200.0)  # outside the window: a new message
    with pytest.raises(RoutingError, match="on adapter 'peer'"):
        seen.check(third.replace(origin=Origin(adapter="peer")), 201.0)


def test_seen_set_stays_within_capacity() -> None:
    seen = SeenSet(window=1e9, capacity=10)
    for i in range(50):
        seen.check(message(text=str(i)), float(i))
    assert len(seen._seen) == 10
