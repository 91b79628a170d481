"""``make demo`` (``python -m gateway.demo``) really plays the conversation end to end, and
stops everything it started — after the last step and on Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def pids(output: str) -> list[int]:
    return sorted({int(p) for p in re.findall(r"pid (\d+)", output)})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_demo_plays_every_step_and_stops_everything_it_started() -> None:
    proc = demo("--keep")
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert "8 of 8 steps passed" in output
    assert "FAILED" not in output
    assert "Traceback" not in output
    for what in (
        "identical to what Alice signed",
        "identical to what Bob signed",
        "CMS Verification successful",
        "signed by CN=Alice (XMPP user)",
        "signed by CN=Bob (SIP user)",
        "<item-not-found/>",
        "could not be delivered",
    ):
        assert what in output, what
    started = pids(output)
    assert len(started) == 3, output  # prosody, kamailio, cpimgw
    assert not [p for p in started if alive(p)], "a server outlived the demo"
    kept = re.search(r"logs and files are kept in (\S+)", output)
    assert kept is not None, output
    folder = Path(kept.group(1))
    try:
        assert (folder / "cpimgw.log").exists()
        assert (folder / "gateway.toml").read_text().startswith("# cpimgw: an annotated example")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_ctrl_c_stops_everything_and_exits_non_zero() -> None:
    proc = demo()
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        if "Bob's SIP phone registered" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert "Traceback" not in output
    started = pids(output)
    assert len(started) == 3, output
    assert not [p for p in started if alive(p)], "a server outlived the interrupted demo"
    kept = re.search(r"logs and files are kept in (\S+)", output)
    assert kept is not None, output  # kept after a failure, to read the logs
    shutil.rmtree(kept.group(1), ignore_errors=True)
