"""The fuzz targets in CI: every target runs a few seconds under atheris (a new crash, hang
or memory blow-up fails the test with libFuzzer's report), and every seed and regression
input is replayed in this process through the same harness (only the documented errors may
come out). The long run is ``make fuzz`` (``python -m tests.fuzz --seconds N``)."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import pytest

from tests.fuzz import TARGETS
from tests.fuzz.__main__ import REGRESSIONS, fuzz

#: Seconds per target in CI (the documented long run uses minutes).
CI_SECONDS = 3
#: The suite's short runs start from a fixed seed (``make fuzz`` explores with fresh ones).
CI_SEED = 3862


#: Regression inputs whose bug is open in code this suite does not own: replayed as strict
#: xfails (they pass again, and so fail here, the day the bug is fixed).
KNOWN_OPEN: dict[str, str] = {}


def regression_inputs() -> list[object]:
    out: list[object] = []
    for target in TARGETS:
        for path in sorted((REGRESSIONS / target).glob("*")):
            if not path.is_file():
                continue
            reason = KNOWN_OPEN.get(f"{target}/{path.name}")
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(target, path, marks=marks, id=f"{target}/{path.name}"))
    return out


@pytest.mark.parametrize(("target", "path"), regression_inputs())
def test_regression_input_gives_only_documented_errors(target: str, path: Path) -> None:
    harness = importlib.import_module(f"tests.fuzz.{target}")
    with contextlib.suppress(*harness.ALLOWED):
        harness.run(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_give_only_documented_errors(target: str) -> None:
    harness = importlib.import_module(f"tests.fuzz.{target}")
    seeds = list(harness.seeds())
    assert seeds, f"{target} has no seeds"
    for seed in seeds:
        with contextlib.suppress(*harness.ALLOWED):
            harness.run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_target_survives_a_short_coverage_guided_run(target: str, tmp_path: Path) -> None:
    outcome = fuzz(
        target, seconds=CI_SECONDS, timeout=10, rss_limit_mb=1024, work=tmp_path, seed=CI_SEED
    )
    log = (tmp_path / "logs" / f"{target}.log").read_text()
    assert outcome.finding is None, f"{outcome.finding}\n{log[-6000:]}"
    assert outcome.runs > 0, log[-3000:]
