"""Every configuration key has its place in the docs: each field of the gateway's config
models (``gateway/config.py``) in the operators' guide, each field of an adapter's config
models (``adapters/*/adapter.py``) in that adapter's document.

A key counts as documented where the document names it as a key: in the first cell of a
table row (`` `key` ``, several per cell allowed), on the left of ``=`` in a TOML example
(commented out or not, inline tables too), or as a section name (``[cluster]``,
``[[adapters.api.clients]]``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

import adapters.cpim.adapter
import adapters.sip.adapter
import adapters.xmpp.adapter
import gateway.config

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: Each module's config models and the document that is their reference.
REFERENCES: list[tuple[ModuleType, str]] = [
    (gateway.config, "operators-guide.md"),
    (adapters.xmpp.adapter, "xmpp.md"),
    (adapters.sip.adapter, "sip.md"),
    (adapters.cpim.adapter, "http-api.md"),
]

_TABLE_ROW = re.compile(r"^\|([^|\n]*)\|", re.MULTILINE)
_TICKED = re.compile(r"`\[{0,2}([A-Za-z_][\w.]*)\]{0,2}`")
_TOML_KEY = re.compile(r"^[ \t]*#?[ \t]*(?:or:[ \t]*)?([A-Za-z_]\w*)[ \t]*=", re.MULTILINE)
_INLINE_KEY = re.compile(r"[{,][ \t]*([A-Za-z_]\w*)[ \t]*=")
_SECTION = re.compile(r"\[\[?([A-Za-z_][\w.]*)\]\]?")


def documented_keys(text: str) -> set[str]:
    """The names ``text`` documents as configuration keys (see the module docstring)."""
    keys: set[str] = set()
    for cell in _TABLE_ROW.findall(text):
        for name in _TICKED.findall(cell):
            keys.update(name.split("."))
    keys.update(_TOML_KEY.findall(text))
    keys.update(_INLINE_KEY.findall(text))
    for section in _SECTION.findall(text):
        keys.update(section.split("."))
    return keys


def config_models(module: ModuleType) -> list[type[BaseModel]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseModel)
        and value.__module__ == module.__name__
        and value.model_fields
    ]


def test_the_key_reader_finds_keys_in_tables_toml_and_sections() -> None:
    text = """
| key | default |
|---|---|
| `host`, `port` | x |
| `[cluster]` | |
```toml
[[adapters.api.clients]]
name = "a"
# token_env = "X"
tls = { cert = "c", key = "k" }
# or: webhook_secret = "..."
```
Prose that mentions `elsewhere` is not a key.
"""
    found = documented_keys(text)
    assert {"host", "port", "cluster", "clients", "name", "token_env", "tls", "cert"} <= found
    assert {"key", "webhook_secret"} <= found
    assert "elsewhere" not in found


@pytest.mark.parametrize(("module", "document"), REFERENCES, ids=[doc for _, doc in REFERENCES])
def test_every_config_key_is_documented(module: ModuleType, document: str) -> None:
    models = config_models(module)
    assert models, f"no config models found in {module.__name__}"
    keys = documented_keys((DOCS / document).read_text(encoding="utf-8"))
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if name not in keys
    ]
    assert missing == [], f"docs/{document} does not document: {', '.join(missing)}"
