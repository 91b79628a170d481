"""The shipped test class and the pytest plugin, used the way a plugin author uses them:
a test module that subclasses ``AdapterConformance``, run by a separate pytest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.distribution import ROOT, environment, write_distribution

AUTHOR_TESTS = """
from adapters.conformance import AdapterConformance
from adapters.contract import Capability
from tests.conformance.loopback import CrlfLossAdapter, LoopbackAdapter


class LimitedAdapter(LoopbackAdapter):
    capabilities = frozenset(Capability) - {Capability.ERRORS}


class TestByName(AdapterConformance):
    adapter = "loopback"
    peers = ()
    examples = 5


class TestByClass(AdapterConformance):
    adapter = LimitedAdapter
    name = "limited"
    peers = ()
    properties = False


class TestLossy(AdapterConformance):
    adapter = CrlfLossAdapter
    name = "lossy"
    peers = ()
    properties = False
"""


Session = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    work = tmp_path_factory.mktemp("author")
    site = write_distribution(
        work / "site",
        "cpimgw-test-plugins",
        "1.0",
        {"loopback": "tests.conformance.loopback:LoopbackAdapter"},
    )
    module = work / "test_my_adapter.py"
    module.write_text(AUTHOR_TESTS)
    report = work / "conformance.json"
    common = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider"]
    common.append(f"--rootdir={work}")

    def pytest_run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*common, *extra],
            cwd=work,
            env=environment(site),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    collected = pytest_run("--collect-only", "-q")
    done = pytest_run("-q", "-rfs", f"--conformance-report={report}")
    return collected, done, report


def test_each_case_is_one_test_named_by_its_id(session: Session) -> None:
    collected, _, _ = session
    assert "TestByName::test_conformance_case[vector/cpim/001-minimal]" in collected.stdout
    assert "TestByName::test_conformance_case[law/L3/generated-signed]" in collected.stdout
    assert "TestByClass::test_conformance_case[error/loop]" in collected.stdout


def test_failures_fail_and_name_the_case_and_section(session: Session) -> None:
    _, done, _ = session
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed
    assert all("TestLossy" in line for line in failed)
    assert any("vector/cpim/001-minimal" in line for line in failed)
    assert "vector/cpim/001-minimal (RFC 3862 §2; " in done.stdout
    assert "first difference at byte 26" in done.stdout


def test_unsupported_cases_are_skipped_with_the_missing_capability(session: Session) -> None:
    _, done, _ = session
    assert "UNSUPPORTED: limited lacks errors (loss recorded or refused)" in done.stdout


def test_terminal_summary_and_one_report_per_adapter(session: Session) -> None:
    _, done, report = session
    assert "cpimgw conformance" in done.stdout
    written = sorted(report.parent.glob("conformance-*.json"))
    data = {json.loads(p.read_text())["adapter"]: json.loads(p.read_text()) for p in written}
    assert sorted(data) == ["limited", "loopback", "lossy"]
    assert data["loopback"]["summary"]["FAIL"] == 0
    assert data["lossy"]["summary"]["FAIL"] > 0
    assert data["limited"]["summary"]["UNSUPPORTED"] == 16
    assert all(sum(d["summary"].values()) == len(d["results"]) for d in data.values())


def test_plugin_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, adapters.conformance.plugin; "
        "print(sorted(m for m in ('hypothesis', 'cryptography', 'adapters.conformance.runner') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
