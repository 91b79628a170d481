"""A gateway config made from the annotated example (``examples/gateway.toml``).

The demo, the end-to-end tests and the benchmark all run ``cpimgw run`` on a file that is
the operators' example with only the deployment values changed (ports, domains, paths,
secret): what the guide shows is what is proven. :func:`render` replaces the value of
existing keys line by line, so every comment and every other key of the example stays,
and a key the example no longer has is an error rather than a silent drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The example every generated config starts from.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"

TomlValue = str | int | float | bool | Sequence["TomlValue"] | Mapping[str, "TomlValue"]

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-]+)\s*\]\]\s*(#.*)?$")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_-]+)\s*=\s*(.*)$")
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_PATH = re.compile(
    r"^(?P<table>[A-Za-z0-9_.\-]+?)(?:\[(?P<index>\d+)\])?\.(?P<key>[A-Za-z0-9_-]+)$"
)


class TemplateError(ValueError):
    """The example does not have a table or key a generated config needs to set."""


def toml_value(value: TomlValue) -> str:
    """``value`` written as a TOML value (strings in JSON-compatible basic form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{k if _BARE.match(k) else json.dumps(k)} = {toml_value(v)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def _split(path: str) -> tuple[str, int | None, str]:
    match = _PATH.match(path)
    if match is None:
        raise TemplateError(f"{path!r} is not TABLE.KEY or TABLE[N].KEY")
    index = match.group("index")
    return match.group("table"), None if index is None else int(index), match.group("key")


def _depth(text: str) -> int:
    """Open brackets minus closed ones, outside strings (for multi-line arrays)."""
    depth, quote = 0, ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def render(template: str, values: Mapping[str, TomlValue]) -> str:
    """``template`` with each ``"table.key"`` / ``"table[N].key"`` of ``values`` set.

    An existing key line is replaced (continuation lines of a multi-line value too); a key
    the table lacks is added at the end of the table. A table the template lacks raises
    :class:`TemplateError` naming it.
    """
    wanted: dict[tuple[str, int | None], dict[str, str]] = {}
    for path, value in values.items():
        table, index, key = _split(path)
        wanted.setdefault((table, index), {})[key] = toml_value(value)
    lines = template.splitlines()
    out: list[str] = []
    counts: dict[str, int] = {}
    current: tuple[str, int | None] | None = None
    seen_tables: set[tuple[str, int | None]] = set()
    pending: dict[str, str] = {}
    skip_depth = 0

    def close_table() -> None:
        # keys this table lacked go before the blank lines that end it
        if pending:
            tail: list[str] = []
            while out and not out[-1].strip():
                tail.append(out.pop())
            out.extend(f"{k} = {v}" for k, v in pending.items())
            out.extend(reversed(tail))
            pending.clear()

    for line in lines:
        if skip_depth > 0:
            skip_depth += _depth(line)
            continue
        array = _ARRAY_TABLE.match(line)
        plain = None if array else _TABLE.match(line)
        if array or plain:
            close_table()
            if array:
                name = array.group(1)
                current = (name, counts.get(name, 0))
                counts[name] = counts.get(name, 0) + 1
            else:
                assert plain is not None
                current = (plain.group(1), None)
            seen_tables.add(current)
            pending.update(wanted.get(current, {}))
            out.append(line)
            continue
        found = _KEY.match(line)
        if found is not None and current is not None and found.group(2) in pending:
            out.append(f"{found.group(1)}{found.group(2)} = {pending.pop(found.group(2))}")
            skip_depth = max(_depth(found.group(3)), 0)
            continue
        out.append(line)
    close_table()
    missing = [
        f"[{t}]" if i is None else f"[[{t}]] number {i + 1}"
        for t, i in wanted
        if (t, i) not in seen_tables
    ]
    if missing:
        raise TemplateError(
            "the example config has no "
            + ", ".join(missing)
            + "; update the generator or the example"
        )
    return "\n".join(out) + "\n"


def render_example(values: Mapping[str, TomlValue], *, example: Path = EXAMPLE) -> str:
    """The operators' example with ``values`` set (see :func:`render`)."""
    try:
        text = example.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(
            f"cannot read {example}: {exc.strerror} "
            "(the demo runs from a source checkout: make demo)"
        ) from exc
    return render(text, values)
