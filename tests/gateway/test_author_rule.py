"""``[security] author``: what happens to a message whose CPIM From is not its sender.

``match`` (the default) refuses it; ``signed`` lets it through only when the route checks
signatures and the object carries a valid, fresh signature by the From it names (a
store-and-forward service relaying someone else's signed message, RFC 3862 §5.2); ``off``
lets it through, annotated ``author.mismatch``, logged and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters.contract import Capability
from canonical.envelope import CPIM, Payload
from canonical.errors import Reason
from gateway.config import load_file
from gateway.core import SIGNATURE
from gateway.routing import Route, RoutingTable
from gateway.security import AUTHOR_MISMATCH, Rules, judge
from tests import pki
from tests.gateway.network import adapter, build
from tests.gateway.samples import cpim_body, message
from tests.gateway.test_security import ALICE, CA, MALLORY, NOW, TABLE, signed

#: A relay on the XMPP side (not alice) that passes on alice's signed message.
RELAY = "xmpp:relay@xmpp.example.com/service"
ALICE_FROM = "im:alice@xmpp.example.com"


def relayed(recipient: str, *, by: pki.Credential = ALICE, when: float = NOW):  # type: ignore[no-untyped-def]
    return message(sender=RELAY, recipient=recipient, payload=signed(recipient, by=by, when=when))


def unsigned_from_carol(recipient: str):  # type: ignore[no-untyped-def]
    return message(
        sender=RELAY,
        recipient=recipient,
        payload=Payload(CPIM, cpim_body("sip:carol@sip.example.net", recipient, "hi")),
    )


def verdict(envelope, author: str):  # type: ignore[no-untyped-def]
    rules = Rules(trust=(CA.cert,), author=author)  # type: ignore[arg-type]
    route = TABLE.resolve(envelope.recipient).route
    return judge(
        envelope,
        rules=rules,
        routing=TABLE,
        route=route,
        capabilities=frozenset({Capability.MESSAGE}),
        now=NOW,
    )


def test_match_refuses_another_author_even_when_validly_signed() -> None:
    result = verdict(relayed("sip:bob@checked.example.net"), "match")
    assert not result.allowed
    assert result.reason is Reason.FORBIDDEN
    assert "is not its sender" in result.message
    assert 'author = "signed"' in result.hint


@pytest.mark.parametrize("recipient", ["sip:bob@checked.example.net", "sip:bob@signed.example.net"])
def test_signed_lets_a_valid_signature_by_the_named_author_through(recipient: str) -> None:
    result = verdict(relayed(recipient), "signed")
    assert result.allowed, result.message
    assert result.signature == "valid"
    assert AUTHOR_MISMATCH not in result.attributes


def test_signed_refuses_another_author_on_a_route_that_does_not_check_signatures() -> None:
    result = verdict(relayed("sip:bob@sip.example.net"), "signed")
    assert not result.allowed
    assert result.reason is Reason.FORBIDDEN
    assert "signatures = verify or require" in result.hint


def test_signed_refuses_another_author_without_a_signature() -> None:
    result = verdict(unsigned_from_carol("sip:bob@checked.example.net"), "signed")
    assert not result.allowed
    assert result.reason is Reason.FORBIDDEN


def test_signed_refuses_a_signature_from_an_untrusted_signer_under_verify() -> None:
    # under "verify" a bad signature alone only annotates; for another author it refuses
    result = verdict(relayed("sip:bob@checked.example.net", by=MALLORY), "signed")
    assert not result.allowed
    assert result.reason is Reason.FORBIDDEN
    assert result.signature == "invalid"
    assert "does not prove" in result.message


def test_signed_still_refuses_a_replayed_signed_object() -> None:
    result = verdict(relayed("sip:bob@checked.example.net", when=NOW - 7200), "signed")
    assert not result.allowed
    assert result.reason is Reason.STALE


def test_the_sender_own_from_passes_under_every_rule_without_annotation() -> None:
    for rule in ("match", "signed", "off"):
        result = verdict(message(), rule)
        assert result.allowed
        assert dict(result.attributes) == {}


def test_off_lets_another_author_through_annotated() -> None:
    result = verdict(unsigned_from_carol("sip:bob@sip.example.net"), "off")
    assert result.allowed
    assert dict(result.attributes) == {AUTHOR_MISMATCH: "sip:carol@sip.example.net"}


async def test_off_stores_the_annotation_logs_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = build(rules=Rules(rate=0, author="off"))
    await gateway.start()
    try:
        with caplog.at_level(logging.WARNING):
            receipt = await adapter(gateway, "xmpp").inject(
                unsigned_from_carol("sip:bob@sip.example.net")
            )
        await adapter(gateway, "sip").wait_sent(1)
        [sent] = adapter(gateway, "sip").sent
    finally:
        await gateway.stop()
    assert not receipt.duplicate
    assert sent.attributes[AUTHOR_MISMATCH] == "sip:carol@sip.example.net"
    assert SIGNATURE not in sent.attributes  # the route checks no signature
    assert any("CPIM From is not the sender" in r.getMessage() for r in caplog.records)
    counted = gateway.metrics.registry.get_sample_value(
        "cpimgw_author_mismatches_total", {"adapter": "xmpp"}
    )
    assert counted == 1.0


async def test_match_refuses_through_the_core() -> None:
    gateway = build()
    await gateway.start()
    try:
        with pytest.raises(Exception) as caught:
            await adapter(gateway, "xmpp").inject(unsigned_from_carol("sip:bob@sip.example.net"))
    finally:
        await gateway.stop()
    assert getattr(caught.value, "reason", None) is Reason.FORBIDDEN


def test_the_config_key_defaults_to_match_and_names_the_allowed_values(tmp_path: Path) -> None:
    base = '[gateway]\nid = "gw"\n[adapters.m]\nkind = "memory"\n'
    base += '[[routes]]\nmatch = "*"\nadapter = "m"\n'
    path = tmp_path / "gw.toml"
    path.write_text(base)
    assert load_file(path).rules().author == "match"
    path.write_text(base + '[security]\nauthor = "signed"\n')
    assert load_file(path).rules().author == "signed"
    path.write_text(base + '[security]\nauthor = "lenient"\n')
    with pytest.raises(Exception) as caught:
        load_file(path)
    text = str(caught.value)
    assert "security.author" in text
    assert "'match', 'signed' or 'off'" in text


def test_a_routing_table_without_signature_routes_keeps_signed_strict() -> None:
    table = RoutingTable([Route("xmpp.example.com", "xmpp"), Route("sip.example.net", "sip")])
    envelope = relayed("sip:bob@sip.example.net")
    result = judge(
        envelope,
        rules=Rules(trust=(CA.cert,), author="signed"),
        routing=table,
        route=table.resolve(envelope.recipient).route,
        capabilities=frozenset({Capability.MESSAGE}),
        now=NOW,
    )
    assert not result.allowed
