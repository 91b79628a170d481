"""Tokens and address patterns: who may send as and watch what."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.cpim.adapter import ClientConfig, CpimHttpConfig, PeerConfig, build_tokens
from adapters.cpim.token import (
    AddressPattern,
    Principal,
    RateBook,
    TokenBook,
    certificate_names,
    digest,
    patterns,
)
from canonical.errors import ConfigError


def book(*tokens: str) -> TokenBook:
    return TokenBook(
        [
            (digest(t), Principal(f"p{i}", "client", patterns([f"im:bot{i}@bots.test"])))
            for i, t in enumerate(tokens)
        ]
    )


def test_bearer_token_finds_its_principal_and_nothing_else() -> None:
    tokens = book("alpha-secret", "beta-secret")
    assert tokens.authenticate("Bearer beta-secret").name == "p1"  # type: ignore[union-attr]
    assert tokens.authenticate("bearer alpha-secret").name == "p0"  # type: ignore[union-attr]
    for wrong in (
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic alpha-secret",
        "Bearer alpha-secre",
        "Bearer alpha-secretx",
        "alpha-secret",
        "Bearer \udcff",
    ):
        assert tokens.authenticate(wrong) is None, wrong


@given(st.text(max_size=80))
def test_no_other_token_authenticates(guess: str) -> None:
    tokens = book("the-only-token")
    if guess.strip() != "the-only-token":
        assert tokens.authenticate(f"Bearer {guess}") is None


def test_only_digests_are_kept_at_rest() -> None:
    tokens = book("plain-token-value")
    assert "plain-token-value" not in repr(vars(tokens))


@pytest.mark.parametrize(
    ("pattern", "address", "matches"),
    [
        ("im:bot@bots.test", "im:bot@bots.test", True),
        ("im:bot@bots.test", "xmpp:bot@bots.test", False),
        ("im:bot@bots.test", "pres:bot@bots.test", True),
        ("pres:bot@bots.test", "im:bot@bots.test", True),
        ("bot@bots.test", "xmpp:bot@bots.test/res", True),
        ("*@bots.test", "sip:anyone@bots.test", True),
        ("*@bots.test", "sip:anyone@evil.test", False),
        ("*@*.bots.test", "im:a@x.bots.test", True),
        ("*@*.bots.test", "im:a@bots.test", False),
        ("bots.test", "im:z@bots.test", True),
        ("im:bot@bots.test", "im:bot@bots.test.evil.test", False),
        ("im:bot@bots.test", "not an address", False),
    ],
)
def test_address_patterns(pattern: str, address: str, matches: bool) -> None:
    assert AddressPattern.parse(pattern).matches(address) is matches


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        AddressPattern.parse("im:x@exa mple.com")


def test_config_tokens_from_env_and_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", "from-the-env")
    config = CpimHttpConfig(
        clients=[
            ClientConfig(name="a", token_env="BOT_TOKEN", send_as=["*@a.test"]),
            ClientConfig(name="b", token_sha256="sha256:" + digest("hashed"), watch=["*@b.test"]),
        ],
        peers=[PeerConfig(name="gw-b.test", send_as=["*@sip.test"])],
    )
    tokens = build_tokens(config)
    assert tokens.authenticate("Bearer from-the-env").name == "a"  # type: ignore[union-attr]
    assert tokens.authenticate("Bearer hashed").name == "b"  # type: ignore[union-attr]
    assert tokens.peer(["other", "GW-B.test"]).name == "gw-b.test"  # type: ignore[union-attr]
    assert [p.name for p in tokens.watchers("im:x@b.test")] == ["b"]


@pytest.mark.parametrize(
    "client",
    [
        {"name": "a"},
        {"name": "a", "token_sha256": "abc"},
        {"name": "a", "token_env": "CPIMGW_TEST_UNSET_VARIABLE"},
        {"name": "a", "token_sha256": "0" * 64, "token_env": "X"},
    ],
)
def test_bad_token_config_names_the_key(client: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_tokens(CpimHttpConfig(clients=[ClientConfig(**client)]))  # type: ignore[arg-type]
    assert caught.value.key is not None
    assert "clients[0]" in caught.value.key


def test_certificate_names_prefer_subject_alt_names() -> None:
    cert = {
        "subject": ((("commonName", "cn.test"),),),
        "subjectAltName": (("DNS", "gw-a.test"), ("IP Address", "127.0.0.1")),
    }
    assert certificate_names(cert) == ["gw-a.test", "cn.test"]
    assert certificate_names(None) == []


def test_rate_book_refills_over_time() -> None:
    rates = RateBook()
    assert [rates.take("k", rate=1.0, burst=2.0, now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert rates.take("k", rate=1.0, burst=2.0, now=0.0) == pytest.approx(1.0)
    assert rates.take("k", rate=1.0, burst=2.0, now=1.0) == 0.0
    assert rates.take("other", rate=0.0, burst=1.0, now=0.0) == 0.0
