"""``cpimgw smime sign|verify|encrypt|decrypt``: files, stdin/stdout, exit statuses, and
interop with the openssl CLI through the real command."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from canonical import smime
from gateway.cli import main
from tests import pki

ENTITY = (
    b"Content-type: Message/CPIM\r\n"
    b"\r\n"
    b"From: Ada <im:ada@example.com>\r\n"
    b"To: Charles <im:charles@example.net>\r\n"
    b"DateTime: 2026-11-26T14:00:00Z\r\n"
    b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello from the command line.\r\n"
)
VECTOR_TIME = "2026-11-27T00:00:00Z"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("smime-cli")
    ca = pki.make_ca("cli CA")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    ada_crt, ada_key = pki.make_leaf(ca, "Ada", uris=("im:ada@example.com",)).write(
        directory, "ada"
    )
    eve_crt, eve_key = pki.make_leaf(ca, "Eve", uris=("sip:eve@example.org",), key_kind="ec").write(
        directory, "eve"
    )
    bob_crt, bob_key = pki.make_leaf(ca, "Bob").write(directory, "bob")
    other = pki.make_ca("other CA")
    (directory / "other.crt").write_bytes(other.cert_pem)
    (directory / "entity.cpim").write_bytes(ENTITY)
    return {
        "dir": directory,
        "ca": directory / "ca.crt",
        "other": directory / "other.crt",
        "ada.crt": ada_crt,
        "ada.key": ada_key,
        "eve.crt": eve_crt,
        "eve.key": eve_key,
        "bob.crt": bob_crt,
        "bob.key": bob_key,
        "entity": directory / "entity.cpim",
    }


def run(*args: str | Path) -> int:
    return main(["smime", *map(str, args)])


def sign_to(files: dict[str, Path], out: Path, *extra: str) -> None:
    status = run(
        "sign", "--cert", files["ada.crt"], "--key", files["ada.key"], "--out", out,
        *extra, files["entity"],
    )  # fmt: skip
    assert status == 0


def test_sign_writes_a_mime_file_that_verify_accepts(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signed.mime"
    sign_to(files, out)
    data = out.read_bytes()
    assert data.startswith(b"Content-Type: multipart/signed; protocol=")
    payload = smime.payload_from_entity(data)
    assert smime.signed_content(payload) == ENTITY
    capsys.readouterr()
    assert run("verify", "--trust", files["ca"], out) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "valid: signature and certificate chain are good",
        "signer: CN=Ada",
        "uri: im:ada@example.com",
        "sender: im:ada@example.com (CPIM From) matches im:ada@example.com",
    ]


def test_verify_checks_an_explicit_sender(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signed.mime"
    sign_to(files, out)
    capsys.readouterr()
    assert run("verify", "--trust", files["ca"], "--sender", "sip:ada@example.com", out) == 0
    assert "sender: sip:ada@example.com (--sender) matches im:ada@example.com" in (
        capsys.readouterr().out
    )
    assert run("verify", "--trust", files["ca"], "--sender", "im:eve@example.com", out) == 1
    text = capsys.readouterr().out
    assert text.startswith("valid: ")
    assert "MISMATCH" in text


def test_verify_of_a_tampered_object_exits_1_with_the_reason(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signed.mime"
    sign_to(files, out)
    out.write_bytes(out.read_bytes().replace(b"Hello from", b"Hullo from"))
    capsys.readouterr()
    assert run("verify", "--trust", files["ca"], out) == 1
    text = capsys.readouterr().out
    assert text.startswith("invalid: CONTENT_MISMATCH: ")
    assert "signer: CN=Ada (claimed, not verified)" in text


def test_verify_against_another_root_exits_1(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "signed.mime"
    sign_to(files, out)
    capsys.readouterr()
    assert run("verify", "--trust", files["other"], out) == 1
    assert capsys.readouterr().out.startswith("invalid: UNTRUSTED: ")


def test_verify_of_something_unsigned_exits_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("verify", "--trust", files["ca"], files["entity"]) == 1
    assert capsys.readouterr().out.startswith("invalid: SMIME_NOT_SIGNED: ")


def test_body_only_output_verifies_with_its_content_type(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mime, body = tmp_path / "signed.mime", tmp_path / "signed.body"
    # no signed attributes: no signingTime, so the two RSA signatures are identical
    sign_to(files, mime, "--boundary", "cli-b", "--no-attributes")
    sign_to(files, body, "--boundary", "cli-b", "--no-attributes", "--body-only")
    payload = smime.payload_from_entity(mime.read_bytes())
    assert body.read_bytes() == payload.body
    capsys.readouterr()
    status = run("verify", "--trust", files["ca"], "--content-type", payload.content_type, body)
    assert status == 0, capsys.readouterr().out


def test_verify_writes_the_signed_content_when_valid(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out, content = tmp_path / "signed.mime", tmp_path / "content.cpim"
    sign_to(files, out)
    assert run("verify", "--trust", files["ca"], "--content-out", content, out) == 0
    assert content.read_bytes() == ENTITY


def test_verify_of_the_shipped_vectors(
    vectors_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = vectors_dir / "signed"
    cert = signed / "test-signer-cert.pem"
    good = signed / "s01-multipart-signed.mime"
    assert run("verify", "--trust", cert, "--now", VECTOR_TIME, good) == 0
    assert run("verify", "--trust", cert, "--now", "2026-11-25T00:00:00", good) == 1
    assert "invalid: NOT_YET_VALID" in capsys.readouterr().out
    for name in ("s03-tampered-reordered.mime", "s04-tampered-recased-mime-header.mime"):
        assert run("verify", "--trust", cert, "--now", VECTOR_TIME, signed / name) == 1


def test_sign_refuses_a_bare_lf_entity_with_exit_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entity = tmp_path / "lf.cpim"
    entity.write_bytes(ENTITY.replace(b"\r\n", b"\n"))
    status = run("sign", "--cert", files["ada.crt"], "--key", files["ada.key"], entity)
    assert status == 2
    assert "SMIME_BARE_LF" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--trust", "/nonexistent/ca.pem", "{entity}"],
        ["verify", "--trust", "{ca}", "/nonexistent/signed.mime"],
        ["verify", "--trust", "{entity}", "{entity}"],
        ["verify", "--trust", "{ca}", "--now", "yesterday", "{entity}"],
        ["sign", "--cert", "{ada.crt}", "--key", "{ada.crt}", "{entity}"],
        ["sign", "--cert", "{ada.crt}", "--key", "{eve.key}", "{entity}"],
        ["encrypt", "--recipient", "{eve.crt}", "{entity}"],
        ["decrypt", "--cert", "{ada.crt}", "--key", "/nonexistent", "{entity}"],
    ],
)
def test_usage_and_file_errors_exit_2(
    files: dict[str, Path], args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    filled = [str(files[a[1:-1]]) if a.startswith("{") else a for a in args]
    assert main(["smime", *filled]) == 2
    assert capsys.readouterr().err.startswith("cpimgw smime: ")


def test_encrypted_key_file_is_explained(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = serialization.load_pem_private_key(files["ada.key"].read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert run("sign", "--cert", files["ada.crt"], "--key", locked, files["entity"]) == 2
    assert "encrypted" in capsys.readouterr().err


def test_smime_without_an_action_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smime"]) == 2
    assert "sign" in capsys.readouterr().err


def test_encrypt_then_decrypt_gives_back_the_exact_bytes(
    files: dict[str, Path], tmp_path: Path
) -> None:
    sealed, opened = tmp_path / "sealed.mime", tmp_path / "opened.bin"
    assert run("encrypt", "--recipient", files["ada.crt"], "--out", sealed, files["entity"]) == 0
    assert sealed.read_bytes().startswith(
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\n"
    )
    status = run(
        "decrypt", "--cert", files["ada.crt"], "--key", files["ada.key"], "--out", opened, sealed
    )
    assert status == 0
    assert opened.read_bytes() == ENTITY


def test_decrypt_for_someone_else_exits_1(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealed = tmp_path / "sealed.der"
    assert (
        run("encrypt", "--recipient", files["ada.crt"], "--body-only", "--out", sealed,
            files["entity"])
        == 0
    )  # fmt: skip
    status = run(
        "decrypt", "--cert", files["bob.crt"], "--key", files["bob.key"],
        "--content-type", smime.ENVELOPED_CONTENT_TYPE, sealed,
    )  # fmt: skip
    assert status == 1
    assert "SMIME_DECRYPT_FAILED" in capsys.readouterr().err


def test_sign_then_encrypt_then_decrypt_then_verify(files: dict[str, Path], tmp_path: Path) -> None:
    signed, sealed, opened = (tmp_path / n for n in ("s.mime", "e.mime", "o.mime"))
    sign_to(files, signed)
    assert run("encrypt", "--recipient", files["bob.crt"], "--out", sealed, signed) == 0
    assert (
        run("decrypt", "--cert", files["bob.crt"], "--key", files["bob.key"], "--out", opened,
            sealed)
        == 0
    )  # fmt: skip
    assert opened.read_bytes() == signed.read_bytes()
    assert run("verify", "--trust", files["ca"], opened) == 0


# -------------------------------------------------------------- the real command, in pipes


def command(*args: str | Path, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "smime", *map(str, args)],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_command_signs_stdin_and_verifies_stdin(files: dict[str, Path]) -> None:
    signed = command("sign", "--cert", files["eve.crt"], "--key", files["eve.key"], data=ENTITY)
    assert signed.returncode == 0, signed.stderr
    checked = command(
        "verify", "--trust", files["ca"], "--sender", "sip:eve@example.org", "-",
        data=signed.stdout,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout
    assert b"signer: CN=Eve" in checked.stdout
    damaged = command(
        "verify", "--trust", files["ca"], "-", data=signed.stdout.replace(b"\r\n", b"\n")
    )
    assert damaged.returncode == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
def test_command_output_passes_the_byte_exact_openssl_check(
    files: dict[str, Path], tmp_path: Path
) -> None:
    signed = command("sign", "--cert", files["ada.crt"], "--key", files["ada.key"], files["entity"])
    assert signed.returncode == 0, signed.stderr
    payload = smime.payload_from_entity(signed.stdout)
    boundary = smime._parse_content_type(payload.content_type)[1]["boundary"].encode()
    body = payload.body
    dash = b"--" + boundary
    first_end = body.index(b"\r\n" + dash + b"\r\n")
    part1 = body[len(dash) + 2 : first_end]
    part2 = body[first_end + len(dash) + 4 : body.index(b"\r\n" + dash + b"--")]
    der = base64.b64decode(part2.partition(b"\r\n\r\n")[2])
    (tmp_path / "part1.bin").write_bytes(part1)
    (tmp_path / "sig.der").write_bytes(der)
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der",
         "-content", tmp_path / "part1.bin", "-CAfile", files["ca"], "-purpose", "any",
         "-out", tmp_path / "out.bin"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == ENTITY


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
def test_command_verifies_openssl_smime_output_and_encrypts_for_openssl(
    files: dict[str, Path], tmp_path: Path
) -> None:
    smime_out = tmp_path / "openssl.mime"
    done = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-crlfeol", "-in", files["entity"],
         "-signer", files["ada.crt"], "-inkey", files["ada.key"], "-outform", "SMIME",
         "-out", smime_out],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checked = command("verify", "--trust", files["ca"], smime_out)
    assert checked.returncode == 0, checked.stdout
    sealed = command("encrypt", "--recipient", files["ada.crt"], "--body-only", files["entity"])
    assert sealed.returncode == 0, sealed.stderr
    opened = subprocess.run(
        ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER",
         "-recip", files["ada.crt"], "-inkey", files["ada.key"]],
        input=sealed.stdout, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == ENTITY
