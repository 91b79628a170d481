"""``cpimgw cpim check`` and ``cpimgw cpim show``, through gateway.cli.main and once
through the installed ``cpimgw`` script. Expected codes come from the vectors' manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from canonical import cpim, vectorset
from gateway.cli import main

VECTORS = Path(str(vectorset.root())) / "cpim"
LINE = re.compile(
    r"^(?P<file>.+?): (?P<warning>warning: )?(?P<code>[A-Z0-9_]+): (?P<message>.+)"
    r" \(line (?P<line>\d+), byte (?P<byte>\d+)\)$"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def vector_path(vector: vectorset.Vector) -> str:
    return str(VECTORS / vector.relpath)


def test_check_accepts_every_valid_vector_strictly(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [vector_path(v) for v in vectorset.valid_vectors()]
    status, out, err = run(capsys, "cpim", "check", "--strict", *paths)
    assert (status, out, err) == (0, "", "")


@pytest.mark.parametrize("vector", vectorset.invalid_vectors(), ids=lambda v: v.name)
def test_check_strict_rejects_each_invalid_vector_with_its_code(
    capsys: pytest.CaptureFixture[str], vector: vectorset.Vector
) -> None:
    argv = ["cpim", "check", "--strict", vector_path(vector)]
    if vector.profile:
        argv[2:2] = ["--profile", vector.profile]
    status, out, err = run(capsys, *argv)
    assert status == 1
    assert err == ""
    (line,) = out.splitlines()
    m = LINE.match(line)
    assert m is not None, line
    assert m["file"] == vector_path(vector)
    assert m["warning"] is None
    assert m["code"] in vector.accepted_codes
    data = vector.read_bytes()
    assert int(m["line"]) == data.count(b"\n", 0, int(m["byte"])) + 1


@pytest.mark.parametrize("vector", vectorset.invalid_vectors(), ids=lambda v: v.name)
def test_check_lenient_warns_or_rejects_as_the_readme_says(
    capsys: pytest.CaptureFixture[str], vector: vectorset.Vector
) -> None:
    argv = ["cpim", "check", vector_path(vector)]
    if vector.profile:
        argv[2:2] = ["--profile", vector.profile]
    status, out, _ = run(capsys, *argv)
    matches = [LINE.match(line) for line in out.splitlines()]
    assert all(matches), out
    fatal = bool(vector.accepted_codes & cpim.FATAL_CODES)
    assert status == (1 if fatal else 0)
    if fatal:
        assert len(matches) == 1
        assert matches[0] is not None
        assert matches[0]["warning"] is None
    else:
        assert all(m is not None and m["warning"] for m in matches)
        assert vector.expected_code in {m["code"] for m in matches if m is not None}


def test_check_reports_every_file_and_exits_with_the_worst(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = vector_path(vectorset.vector("001"))
    bad = vector_path(vectorset.vector("i005"))
    status, out, _ = run(capsys, "cpim", "check", good, bad, good)
    assert status == 1
    assert [line.split(":", 1)[0] for line in out.splitlines()] == [bad]
    missing = str(tmp_path / "missing.cpim")
    status, out, err = run(capsys, "cpim", "check", bad, missing)
    assert status == 2
    assert out.startswith(bad)
    assert f"cannot read {missing}" in err


def test_check_verbose_prints_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "cpim", "check", "-v", vector_path(vectorset.vector("i025")))
    assert status == 0
    assert "warning: REQUIRE_SPACE" in out
    assert f"fix: {cpim.HINTS['REQUIRE_SPACE']}" in out


def test_check_reads_transport_bodies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = tmp_path / "message.body"
    body.write_bytes(cpim.parse(vectorset.vector("002").read_bytes()).to_body())
    assert run(capsys, "cpim", "check", "--strict", "--body", str(body))[0] == 0
    status, out, _ = run(capsys, "cpim", "check", "--strict", str(body))
    assert status == 1
    assert ": NOT_MESSAGE_CPIM: " in out


def test_check_reads_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stdin:
        buffer = __import__("io").BytesIO(vectorset.vector("i009").read_bytes())

    monkeypatch.setattr(sys, "stdin", Stdin)
    status, out, _ = run(capsys, "cpim", "check", "-")
    assert status == 0
    assert out.startswith("-: warning: TRAILING_WHITESPACE: ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["cpim"], ["cpim", "check"], ["cpim", "check", "--profile", "sip", "x"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("vector", vectorset.valid_vectors(), ids=lambda v: v.name)
def test_show_prints_the_manifest_fields(
    capsys: pytest.CaptureFixture[str], vector: vectorset.Vector
) -> None:
    status, out, err = run(capsys, "cpim", "show", vector_path(vector))
    assert (status, err) == (0, "")
    shown = json.loads(out)
    entry = vector.entry
    assert shown["headers"] == entry["headers"]
    for key in ("entity_headers", "body_offset", "body_length"):
        assert shown[key] == entry[key]
    assert shown["defects"] == []


def test_show_lists_defects_and_rejections(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "cpim", "show", vector_path(vectorset.vector("i023")))
    assert status == 0
    (defect,) = json.loads(out)["defects"]
    assert defect["code"] == "BAD_FORMAL_NAME"
    assert defect["severity"] == "defect"
    assert (defect["line"], defect["offset"]) == (3, 36)
    status, out, err = run(
        capsys, "cpim", "show", "--strict", vector_path(vectorset.vector("i023"))
    )
    assert (status, out) == (1, "")
    assert ": BAD_FORMAL_NAME: " in err
    status, _, err = run(capsys, "cpim", "show", "/nonexistent/file.cpim")
    assert status == 2
    assert "cannot read" in err


def test_installed_cpimgw_script_checks_and_shows() -> None:
    script = Path(sys.executable).with_name("cpimgw")
    if not script.exists():
        found = shutil.which("cpimgw")
        if found is None:
            pytest.skip("the cpimgw script is not installed (pip install -e .)")
        script = Path(found)
    bad = vector_path(vectorset.vector("i030"))
    good = vector_path(vectorset.vector("012"))
    done = subprocess.run(
        [str(script), "cpim", "check", "--strict", good, bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{bad}: EMPTY_NAME: header line starts with ':' (no name) (line 5, byte 88)"
    ]
    shown = subprocess.run(
        [str(script), "cpim", "show", good],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert (
        json.loads(shown.stdout.decode("utf-8"))["headers"]
        == vectorset.vector("012").entry["headers"]
    )
