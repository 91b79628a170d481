"""The generated configs are the operators' example with only the given values changed."""

from __future__ import annotations

import tomllib

import pytest

from gateway.config import parse
from gateway.demo.template import EXAMPLE, TemplateError, render, render_example

TEXT = """# head comment
[gateway]
id = "gw1"   # trailing comment

[adapters.sip]
# the listeners
listen = [
  { transport = "udp", port = 5070 },
]
proxy = "sip:127.0.0.1:5060"

[[routes]]
match = "a.example"
adapter = "x"

[[routes]]
match = "b.example"
adapter = "y"
"""


def test_render_replaces_values_and_keeps_every_comment_and_other_key() -> None:
    out = render(
        TEXT,
        {
            "gateway.id": "gw-ä",
            "adapters.sip.listen": [{"transport": "tcp", "host": "127.0.0.1", "port": 1}],
            "routes[1].match": ["b.example", "*.b.example"],
        },
    )
    data = tomllib.loads(out)
    assert data["gateway"]["id"] == "gw-ä"
    assert data["adapters"]["sip"]["listen"] == [
        {"transport": "tcp", "host": "127.0.0.1", "port": 1}
    ]
    assert data["adapters"]["sip"]["proxy"] == "sip:127.0.0.1:5060"
    assert [r["match"] for r in data["routes"]] == ["a.example", ["b.example", "*.b.example"]]
    for comment in ("# head comment", "# the listeners"):
        assert comment in out


def test_render_adds_a_key_the_table_lacks_inside_that_table() -> None:
    data = tomllib.loads(render(TEXT, {"adapters.sip.t1": 0.1, "routes[0].scheme": "xmpp"}))
    assert data["adapters"]["sip"]["t1"] == 0.1
    assert data["routes"][0]["scheme"] == "xmpp"
    assert "scheme" not in data["routes"][1]


def test_render_refuses_a_table_the_example_does_not_have() -> None:
    with pytest.raises(TemplateError, match=r"\[nothere\]"):
        render(TEXT, {"nothere.key": 1})
    with pytest.raises(TemplateError, match="number 3"):
        render(TEXT, {"routes[2].match": "c.example"})


def test_the_shipped_example_renders_into_a_valid_config() -> None:
    text = render_example({"store.path": "/tmp/x.sqlite3", "adapters.xmpp.port": 15347})
    config = parse(text, file=str(EXAMPLE))
    assert config.settings.store.path.as_posix() == "/tmp/x.sqlite3"
    assert set(config.adapters) == {"xmpp", "sip"}
    # what the example does not change is the example's
    assert text.count("\n#") == EXAMPLE.read_text().count("\n#")
