"""A real (unpacked) distribution on ``sys.path`` that registers adapters in the
``cpimgw.adapters`` entry-point group: importlib.metadata discovers it exactly as it
discovers an installed wheel, so ``cpimgw adapters`` and ``cpimgw conformance`` see
plugins without pip and without touching the shared virtual environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_distribution(
    site: Path, name: str, version: str, entry_points: Mapping[str, str]
) -> Path:
    """``site/NAME-VERSION.dist-info`` with METADATA and the entry points; returns ``site``."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[cpimgw.adapters]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def environment(site: Path) -> dict[str, str]:
    """The environment for a ``cpimgw`` child process that sees ``site``."""
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def cpimgw(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]
