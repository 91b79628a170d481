"""The ``cpimgw`` command's output piped into a reader that leaves early (``| head``):
no traceback, the shell's status for SIGPIPE."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def large_object(path: Path) -> Path:
    """A valid message/cpim entity whose ``show`` JSON is far beyond a pipe's buffer."""
    headers = [b"From: <im:a@example.com>", b"To: <im:b@example.com>"]
    headers += [b"Subject: " + b"s" * 2000 for _ in range(300)]
    path.write_bytes(
        b"Content-type: Message/CPIM\r\n\r\n"
        + b"\r\n".join(headers)
        + b"\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
    )
    return path


def test_show_into_a_reader_that_leaves_exits_quietly(tmp_path: Path) -> None:
    script = str(Path(sys.executable).with_name("cpimgw"))
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run(
        [script, "cpim", "show", str(large_object(tmp_path / "big.cpim"))],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    assert reader.stdin is not None
    assert reader.stdout is not None
    reader.stdin.close()
    head = reader.stdout.read()
    reader.wait(timeout=10)
    assert head.startswith(b"{")
    assert writer.stderr == b""
    assert writer.returncode == 141
