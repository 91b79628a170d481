"""Config: every error names the key, the line and what is allowed; env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.contract import available
from adapters.memory import MemoryConfig
from gateway.config import ConfigFileError, load_file, locate, parse

GOOD = """\
[gateway]
id = "gw1.example.com"

[store]
path = "state/queue.sqlite3"
dedup_window = "2h"

[adapters.users]
kind = "memory"

[adapters.peer]
kind = "memory"
link = "wire"

[[routes]]
match = "example.com"
adapter = "users"

[[routes]]
match = ["*.example.net", "example.org"]
adapter = "peer"
scheme = "sip"
signatures = "verify"

[security]
rate = 5
peers = { peer = ["*"] }
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigFileError) as err:
        parse(text, file="gw.toml")
    return [str(p) for p in err.value.problems]


def test_good_config_builds_routes_rules_and_adapters(tmp_path: Path) -> None:
    file = tmp_path / "gw.toml"
    file.write_text(GOOD)
    config = load_file(file)
    assert config.settings.store.dedup_window == 7200.0
    assert config.store_path == tmp_path / "state/queue.sqlite3"
    assert [r.pattern for r in config.routing().routes] == [
        "example.com",
        "*.example.net",
        "example.org",
    ]
    assert config.routing().resolve("im:a@x.example.net").recipient == "sip:a@x.example.net"
    assert config.rules().peers == {"peer": ("*",)}
    assert isinstance(config.adapters["peer"].config, MemoryConfig)
    assert config.adapters["peer"].config.link == "wire"


def test_wrong_value_names_key_line_and_allowed_values() -> None:
    text = GOOD.replace('signatures = "verify"', 'signatures = "maybe"')
    [problem] = problems(text)
    line = text.splitlines().index('signatures = "maybe"') + 1
    assert problem.startswith(f"gw.toml:{line}: routes[1].signatures:")
    assert "'off', 'verify' or 'require'" in problem


def test_unknown_key_lists_the_allowed_ones() -> None:
    [problem] = problems(GOOD.replace("[store]\n", "[store]\nbackend_kind = 1\n"))
    assert "gw.toml:5: store.backend_kind: unknown key" in problem
    assert "allowed keys: backend, path, synchronous" in problem


def test_missing_required_key_points_at_its_table() -> None:
    [problem] = problems(GOOD.replace('id = "gw1.example.com"\n', ""))
    assert problem.startswith("gw.toml:1: gateway.id: required key is missing")


def test_adapter_section_is_checked_by_the_adapter_model() -> None:
    [problem] = problems(GOOD.replace('link = "wire"', 'link = "wire"\nspeed = 3'))
    assert problem.startswith("gw.toml:14: adapters.peer.speed: unknown key")
    assert "link" in problem


def test_unknown_adapter_kind_says_what_is_installed() -> None:
    [problem] = problems(
        GOOD.replace('kind = "memory"\n\n[adapters.peer]', 'kind = "nosuch"\n\n[adapters.peer]')
    )
    assert "gw.toml:9: adapters.users.kind: no adapter named 'nosuch' is installed" in problem
    assert "memory" in problem


def test_route_to_an_unconfigured_adapter_and_duplicate_patterns() -> None:
    text = GOOD + '\n[[routes]]\nmatch = "example.com"\nadapter = "irc"\n'
    found = problems(text)
    assert any("routes[2].adapter: adapter 'irc' is not configured" in p for p in found)
    assert any(
        "routes[2].match: pattern 'example.com' is already routed by routes[0]" in p for p in found
    )
    assert all(
        p.startswith(f"gw.toml:{len(GOOD.splitlines()) + 3}:") or "adapter" in p for p in found
    )


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("rate = 5", "rate = -1").replace(
        'dedup_window = "2h"', 'dedup_window = "soon"'
    )
    found = problems(text)
    assert len(found) == 2
    assert any("security.rate" in p and "greater than or equal to 0" in p for p in found)
    assert any("store.dedup_window" in p and "ms, s, m, h or d" in p for p in found)


def test_toml_syntax_error_has_its_line() -> None:
    [problem] = problems(GOOD.replace("[store]", "[store", 1))
    assert problem.startswith("gw.toml:4:")
    assert "not valid TOML" in problem


def test_environment_overrides_secrets_and_is_named_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CPIMGW_ADAPTERS__PEER__LINK", "from-env")
    assert parse(GOOD).adapters["peer"].config.link == "from-env"  # type: ignore[attr-defined]
    monkeypatch.setenv("CPIMGW_DELIVERY__MAX_ATTEMPTS", "zero")
    [problem] = problems(GOOD)
    assert "delivery.max_attempts" in problem
    assert "CPIMGW_DELIVERY__MAX_ATTEMPTS" in problem


def test_a_json_list_from_the_environment_sets_a_list_valued_adapter_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = GOOD + (
        '\n[adapters.sip]\nproxy = "sip:127.0.0.1:5060"\ndomains = ["xmpp.example.com"]\n'
    )
    monkeypatch.setenv(
        "CPIMGW_ADAPTERS__SIP__CREDENTIALS", '[{"username": "gw", "password": "from-env"}]'
    )
    [credential] = parse(text).adapters["sip"].config.credentials  # type: ignore[attr-defined]
    assert credential.username == "gw"
    assert credential.password.get_secret_value() == "from-env"


def test_unreadable_trust_anchor_is_a_problem(tmp_path: Path) -> None:
    [problem] = problems(GOOD + 'trust = ["missing-ca.pem"]\n')
    assert "security.trust: cannot read trust anchors" in problem


def test_locate_finds_tables_arrays_and_dotted_keys() -> None:
    lines = locate(
        'a = 1\n[t]\nx.y = [\n 1,\n 2]\nz = """\nq = 1\n"""\n[[r]]\nk = 1\n[[r]]\nk = 2\n'
    )
    assert lines[("a",)] == 1
    assert lines[("t", "x", "y")] == 3
    assert lines[("t", "z")] == 6
    assert ("t", "q") not in lines
    assert lines[("r", 1, "k")] == 12


def test_example_config_is_valid_where_its_adapters_are_installed() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
    installed = {a.name for a in available() if a.adapter is not None}
    missing = {"xmpp", "sip"} - installed
    if missing:
        pytest.skip(f"adapters not installed yet: {', '.join(sorted(missing))}")
    config = load_file(example)
    assert set(config.adapters) >= {"xmpp", "sip"}


def test_schema_errors_and_dangling_routes_are_reported_together() -> None:
    text = GOOD.replace("rate = 5", "rate = -5").replace('adapter = "users"', 'adapter = "nobody"')
    found = problems(text)
    assert len(found) == 2
    assert any("security.rate" in p for p in found)
    assert any("routes[0].adapter: adapter 'nobody' is not configured" in p for p in found)
