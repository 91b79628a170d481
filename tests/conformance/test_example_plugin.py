"""The example IRC plugin (examples/cpimgw-irc) passes its own test suite — its unit tests,
the conformance suite it runs by subclassing ``AdapterConformance``, and its tests against
a real ngIRCd — in a separate pytest run, as its author would run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapters.contract import available
from tests.conformance.distribution import ROOT

PLUGIN = ROOT / "examples" / "cpimgw-irc"

pytestmark = pytest.mark.e2e


def test_irc_plugin_is_installed_through_its_entry_point() -> None:
    info = next((i for i in available() if i.name == "irc"), None)
    assert info is not None, "install it: .venv/bin/pip install -e examples/cpimgw-irc"
    assert info.distribution == "cpimgw-irc"
    assert info.error is None


def test_irc_plugin_passes_its_own_tests_and_the_conformance_suite() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(PLUGIN / "tests"), "-q", "-p", "no:cacheprovider"],
        cwd=PLUGIN,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.splitlines()
    grades = next(line for line in summary if line.startswith("irc "))
    assert grades.split()[-1] == "0"  # no FAIL in the conformance grade table
