"""``[gateway] event_loop``: the standard loop, uvloop, or uvloop when installed."""

from __future__ import annotations

import asyncio
import importlib
import types

import pytest

from canonical.errors import ConfigError
from gateway.commands import run


def missing(name: str) -> types.ModuleType:
    raise ImportError(f"No module named {name!r}")


def test_asyncio_is_the_standard_loop() -> None:
    assert run.loop_factory("asyncio") is None


def test_auto_without_uvloop_is_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run.importlib, "import_module", missing)
    assert run.loop_factory("auto") is None


def test_uvloop_asked_for_but_not_installed_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run.importlib, "import_module", missing)
    with pytest.raises(ConfigError) as info:
        run.loop_factory("uvloop")
    assert "cpimgw[speed]" in str(info.value)
    assert info.value.key == "gateway.event_loop"


def test_uvloop_when_installed_runs_the_gateway_loop() -> None:
    uvloop = pytest.importorskip("uvloop")
    for choice in ("auto", "uvloop"):
        factory = run.loop_factory(choice)
        assert factory is uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            kind = runner.run(_loop_module())
        assert kind == "uvloop"
    assert importlib.import_module("uvloop") is uvloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".", 1)[0]
