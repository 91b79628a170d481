"""``cpimgw adapters`` and ``cpimgw conformance``, run as a user runs them: a child
process, plugins discovered through a real distribution's entry points."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conformance.distribution import ROOT, cpimgw, environment, write_distribution

PLUGINS = {
    "loopback": "tests.conformance.loopback:LoopbackAdapter",
    "loopback-crlf": "tests.conformance.loopback:CrlfLossAdapter",
    "broken": "cpimgw_no_such_module.adapter:Adapter",
    "notanadapter": "tests.conformance.loopback:LoopbackMapper",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_distribution(
        tmp_path_factory.mktemp("site"), "cpimgw-test-plugins", "1.2.3", PLUGINS
    )


def run(site: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cpimgw(*args),
        cwd=ROOT,
        env=environment(site),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_adapters_lists_plugins_with_distribution_version_and_capabilities(site: Path) -> None:
    done = run(site, "adapters")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    loopback = next(i for i, line in enumerate(lines) if line.startswith("loopback "))
    assert "cpimgw-test-plugins 1.2.3  ok" in lines[loopback]
    assert "capabilities: binary-body, chat-states, cpim-body" in lines[loopback + 1]


def test_broken_plugin_is_one_line_with_its_import_error_and_no_traceback(site: Path) -> None:
    done = run(site, "adapters")
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    broken = next(i for i, line in enumerate(lines) if line.startswith("broken "))
    assert "BROKEN (cpimgw_no_such_module.adapter:Adapter)" in lines[broken]
    assert "ModuleNotFoundError: No module named 'cpimgw_no_such_module'" in lines[broken + 1]
    wrong = next(line for line in lines if line.strip().startswith("error: not an Adapter"))
    assert wrong


def test_adapters_check_fails_when_a_plugin_is_broken(site: Path) -> None:
    assert run(site, "adapters", "--check").returncode == 1


def test_adapters_json_is_machine_readable(site: Path) -> None:
    done = run(site, "adapters", "--json")
    entries = {e["name"]: e for e in json.loads(done.stdout)}
    assert entries["loopback"]["version"] == "1.2.3"
    assert entries["loopback"]["kind"] == "loopback"
    assert entries["broken"]["error"].startswith("ModuleNotFoundError")
    assert entries["broken"]["capabilities"] == []


def test_conformance_passes_a_lossless_plugin_and_writes_both_reports(
    site: Path, tmp_path: Path
) -> None:
    html, data = tmp_path / "r.html", tmp_path / "r.json"
    args = ["conformance", "--adapter", "loopback", "--peer", "loopback-crlf", "--examples", "5"]
    done = run(site, *args, "--report", str(html))
    again = run(
        site,
        "conformance",
        "--adapter",
        "loopback",
        "--no-peers",
        "--examples",
        "5",
        "--report",
        str(data),
    )
    assert again.returncode == 0, again.stdout
    assert "total" in again.stdout
    assert "peers: none" in again.stdout
    report = json.loads(data.read_text())
    assert report["summary"]["FAIL"] == 0
    assert report["adapter"] == "loopback"
    # Through the lossy peer, the cross cases fail and name the peer's hop.
    assert done.returncode == 1
    assert "FAIL cross/loopback-crlf/vector/cpim/001-minimal" in done.stdout
    page = html.read_text(encoding="utf-8")
    assert "class='diff'" in page


def test_conformance_exits_1_on_a_lossy_plugin_and_names_each_failure(site: Path) -> None:
    done = run(site, "conformance", "--adapter", "loopback-crlf", "--no-peers", "--no-properties")
    assert done.returncode == 1
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert any("vector/cpim/001-minimal (RFC 3862 §2" in line for line in fails)
    assert any("first difference at byte" in line for line in fails)


def test_progress_goes_to_stderr_and_summary_to_stdout(site: Path) -> None:
    done = run(site, "conformance", "--adapter", "loopback", "--no-peers", "--no-properties")
    assert re.search(r"^\[#{30}\] (\d+)/\1 FAIL 0 ", done.stderr, re.MULTILINE)
    assert done.stdout.startswith("cpimgw conformance: adapter loopback")


def test_unknown_adapter_is_a_usage_error_naming_what_is_installed(site: Path) -> None:
    done = run(site, "conformance", "--adapter", "carrier-pigeon")
    assert done.returncode == 2
    assert "no adapter named 'carrier-pigeon'" in done.stderr
    assert "loopback" in done.stderr


def test_broken_adapter_is_a_usage_error_with_its_import_error(site: Path) -> None:
    done = run(site, "conformance", "--adapter", "broken")
    assert done.returncode == 2
    assert "ModuleNotFoundError" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_vector_folder_is_a_usage_error(site: Path, tmp_path: Path) -> None:
    done = run(site, "conformance", "--adapter", "loopback", "--vectors", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "not a folder" in done.stderr


def test_only_selects_cases_by_id(site: Path) -> None:
    done = run(site, "conformance", "--adapter", "loopback", "--no-peers", "--only", "error/")
    assert done.returncode == 0
    assert "16 cases" in done.stdout


def test_config_file_replaces_the_sample_config(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[adapters.loopback]\nkind = "loopback"\nunknown_key = 1\n')
    done = run(site, "conformance", "--adapter", "loopback", "--config", str(config))
    assert done.returncode == 2
    assert "invalid config for adapter 'loopback'" in done.stderr
    assert "unknown_key" in done.stderr
