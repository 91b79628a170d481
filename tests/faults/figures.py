"""Measured figures of the fault and security tests, kept for docs/reliability.md.

Each test that measures something calls :func:`record`; the values go to
``build/reliability/<name>.json`` (one file per figure, overwritten by the next run) and
to the test report (``record_property``), so every number in the docs can be reproduced
by running the test that wrote it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parents[2] / "build" / "reliability"


def record(name: str, **values: Any) -> Path:
    FOLDER.mkdir(parents=True, exist_ok=True)
    path = FOLDER / f"{name}.json"
    values = {"figure": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"), **values}
    path.write_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n")
    return path
