"""Security verdicts (pure): size, anti-spoofing, lists, Require, signatures, freshness."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.contract import Capability
from canonical import smime
from canonical.envelope import CPIM, Operation, Payload
from canonical.errors import Reason
from gateway.routing import Route, RoutingTable
from gateway.security import AddressPattern, Buckets, Rules, judge
from tests import pki
from tests.gateway.samples import cpim_body, message

TABLE = RoutingTable(
    [
        Route("xmpp.example.com", "xmpp"),
        Route("sip.example.net", "sip"),
        Route("signed.example.net", "sip", signatures="require"),
        Route("checked.example.net", "sip", signatures="verify"),
        Route("cpim.example.org", "cpim", honours=frozenset({"*"})),
    ]
)
CAPS = frozenset({Capability.MESSAGE})
NOW = float(int(pki.NOW.timestamp()))  # certificates are valid around now
CA = pki.make_ca()
ALICE = pki.make_leaf(CA, "alice", uris=("im:alice@xmpp.example.com",))
MALLORY = pki.make_leaf(pki.make_ca("other CA"), "mallory", uris=("im:alice@xmpp.example.com",))


def verdict(envelope, rules: Rules | None = None):  # type: ignore[no-untyped-def]
    rules = rules or Rules(trust=(CA.cert,))
    route = TABLE.resolve(envelope.recipient).route
    return judge(envelope, rules=rules, routing=TABLE, route=route, capabilities=CAPS, now=NOW)


def signed(recipient: str, *, when: float = NOW, by: pki.Credential = ALICE) -> Payload:
    stamp = dt.datetime.fromtimestamp(when, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entity = b"Content-type: Message/CPIM\r\n\r\n" + cpim_body(
        "im:alice@xmpp.example.com", recipient, "signed hello", extra=f"DateTime: {stamp}\r\n"
    )
    return smime.sign(entity, by.cert, by.key)


def test_plain_message_from_its_own_network_passes_with_a_rate_key() -> None:
    result = verdict(message())
    assert result.allowed
    assert result.rate_key == "sender:xmpp:alice@xmpp.example.com"
    assert result.signature == "unchecked"


def test_oversized_object_is_refused_as_too_large() -> None:
    result = verdict(message(text="x" * 2000), Rules(max_size=1000))
    assert not result.allowed
    assert result.reason is Reason.TOO_LARGE


def test_sender_from_another_network_is_spoofing() -> None:
    result = verdict(message(sender="sip:eve@sip.example.net", adapter="xmpp"))
    assert result.reason is Reason.FORBIDDEN
    assert "belongs to adapter 'sip'" in result.message
    assert result.error().reason is Reason.FORBIDDEN


def test_peer_may_carry_domains_listed_for_it() -> None:
    env = message(sender="im:carol@far.example", adapter="xmpp")
    assert verdict(env).reason is Reason.FORBIDDEN
    assert verdict(env, Rules(peers={"xmpp": ("*.example",)})).allowed


def test_deny_list_beats_everything_and_allow_list_needs_both_parties() -> None:
    deny = Rules(deny=(AddressPattern.parse("bob@sip.example.net"),))
    assert verdict(message(), deny).reason is Reason.FORBIDDEN
    allow_one = Rules(allow=(AddressPattern.parse("xmpp.example.com"),))
    assert "allow list" in verdict(message(), allow_one).message
    allow_both = Rules(
        allow=tuple(map(AddressPattern.parse, ["xmpp.example.com", "*@sip.example.net"]))
    )
    assert verdict(message(), allow_both).allowed


def test_require_of_an_unhonoured_header_is_refused() -> None:
    body = cpim_body(
        "im:alice@xmpp.example.com", "im:bob@sip.example.net", "x", extra="Require: Subject\r\n"
    )
    env = message().replace(payload=Payload(CPIM, body))
    result = verdict(env)
    assert result.reason is Reason.UNSUPPORTED_FEATURE
    assert "Subject" in result.message
    to_cpim = env.replace(recipient="im:bob@cpim.example.org")
    assert verdict(to_cpim).allowed
    with_subject = judge(
        env,
        rules=Rules(),
        routing=TABLE,
        route=TABLE.resolve(env.recipient).route,
        capabilities=frozenset({Capability.SUBJECT}),
        now=NOW,
    )
    assert with_subject.allowed


def test_require_policy_refuses_unsigned_objects() -> None:
    result = verdict(message(recipient="sip:bob@signed.example.net"))
    assert result.reason is Reason.SIGNATURE_INVALID
    assert result.signature == "none"


def test_require_policy_accepts_a_fresh_valid_signature() -> None:
    env = message(recipient="sip:bob@signed.example.net")
    env = env.replace(payload=signed("im:bob@signed.example.net"))
    result = verdict(env)
    assert result.allowed, result.message
    assert result.signature == "valid"


def test_untrusted_signer_is_refused_under_require_and_annotated_under_verify() -> None:
    env = message(recipient="sip:bob@signed.example.net")
    env = env.replace(payload=signed("im:bob@signed.example.net", by=MALLORY))
    assert verdict(env).reason is Reason.SIGNATURE_INVALID
    checked = verdict(env.replace(recipient="sip:bob@checked.example.net"))
    assert checked.allowed
    assert checked.signature == "invalid"


def test_tampered_signed_object_is_refused() -> None:
    env = message(recipient="sip:bob@signed.example.net")
    payload = signed("im:bob@signed.example.net")
    tampered = Payload(payload.content_type, payload.body.replace(b"signed hello", b"signed HELLO"))
    assert verdict(env.replace(payload=tampered)).reason is Reason.SIGNATURE_INVALID


@pytest.mark.parametrize(
    ("age", "fresh"), [(0, True), (600 + 59, True), (600 + 61, False), (-59, True), (-61, False)]
)
def test_signed_object_outside_the_freshness_window_is_stale(age: float, fresh: bool) -> None:
    env = message(recipient="sip:bob@checked.example.net")
    env = env.replace(payload=signed("im:bob@checked.example.net", when=NOW - age))
    result = verdict(env, Rules(trust=(CA.cert,), freshness=600, skew=60))
    assert result.allowed is fresh
    if not fresh:
        assert result.reason is Reason.STALE


def test_verdicts_cover_subscriptions_too() -> None:
    sub = message(
        sender="sip:eve@sip.example.net", recipient="xmpp:a@xmpp.example.com", adapter="xmpp"
    )
    sub = sub.replace(operation=Operation.SUBSCRIBE, payload=None)
    assert verdict(sub).reason is Reason.FORBIDDEN


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=100))
def test_token_bucket_never_grants_more_than_burst_plus_refill(times: list[float]) -> None:
    buckets = Buckets()
    times.sort()
    granted = sum(buckets.take("k", rate=2.0, burst=5.0, now=t) == 0.0 for t in times)
    assert granted <= 5 + 2.0 * (times[-1] - times[0]) + 1e-9
