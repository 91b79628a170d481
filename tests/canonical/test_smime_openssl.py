"""Interoperability of canonical.smime with the real ``openssl cms`` command, both ways.

Our signatures are checked with the byte-exact detached-DER command of
canonical/vectors/README.md ("Checking a signature byte-exactly"); openssl's signatures
(detached DER wrapped by hand, its own S/MIME output, -nodetach signed-data, RSA-PSS,
P-384) are checked with ours. Some keys come from the openssl CLI itself, so we do not only
test against ourselves.
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from canonical import smime
from canonical.envelope import Payload
from tests import pki
from tests.canonical.test_smime import make_intermediate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")


def later() -> dt.datetime:
    """A verification time after the openssl-made certificates start (they start when the
    fixture runs, to the second) and inside every test certificate's lifetime."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


ENTITY = (
    b"Content-type: Message/CPIM\r\n"
    b"\r\n"
    b"From: Grace <im:grace@example.org>\r\n"
    b"To: Ada <im:ada@example.com>\r\n"
    b"DateTime: 2026-11-26T14:00:00Z\r\n"
    b"Subject: interop\r\n"
    b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Signed by one, checked by the other.\r\n"
)
BINARY_ENTITY = (
    b"Content-type: Message/CPIM\r\n\r\nFrom: <im:grace@example.org>\r\n\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n\x00\r\n\n\r\x1a\xff\xfe"
)


def openssl(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, timeout=60, check=False
    )


@dataclass(frozen=True)
class Signer:
    """A signer as files (for openssl) and objects (for us), and the root that trusts it."""

    name: str
    cert_file: Path
    key_file: Path
    ca_file: Path
    cert: x509.Certificate
    key: smime.PrivateKeyTypes
    ca: x509.Certificate
    sender: str


def pki_signer(directory: Path, name: str, ca: pki.Credential, leaf: pki.Credential) -> Signer:
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / f"{name}-ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    cert_file, key_file = leaf.write(directory, name)
    return Signer(
        name, cert_file, key_file, ca_file, leaf.cert, leaf.key, ca.cert, "im:grace@example.org"
    )


def openssl_signer(directory: Path, name: str, newkey: list[str]) -> Signer:
    """A CA and a leaf made entirely by the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    done = openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
        "-days", "30", "-subj", f"/CN=openssl {name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    done = openssl(
        "req", "-new", *newkey, "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=emailProtection\n"
        f"subjectAltName=URI:im:{name}@example.org,URI:xmpp:{name}@example.org\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    done = openssl(
        "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "10", "-extfile", ext, "-out", crt,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Signer(
        name,
        crt,
        key,
        ca_crt,
        x509.load_pem_x509_certificate(crt.read_bytes()),
        serialization.load_pem_private_key(key.read_bytes(), password=None),
        x509.load_pem_x509_certificate(ca_crt.read_bytes()),
        f"im:{name}@example.org",
    )


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Signer]:
    directory = tmp_path_factory.mktemp("smime-pki")
    ca = pki.make_ca("smime interop CA")
    return {
        "pki-rsa": pki_signer(
            directory, "pki-rsa", ca, pki.make_leaf(ca, "R", uris=("im:grace@example.org",))
        ),
        "pki-ec": pki_signer(
            directory,
            "pki-ec",
            ca,
            pki.make_leaf(ca, "E", uris=("im:grace@example.org",), key_kind="ec"),
        ),
        "openssl-p384": openssl_signer(
            directory, "grace", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]
        ),
        "openssl-rsa": openssl_signer(directory, "hopper", ["-newkey", "rsa:3072"]),
    }


def boundary_of(payload: Payload) -> str:
    return smime._parse_content_type(payload.content_type)[1]["boundary"]


def split_like_the_readme(payload: Payload) -> tuple[bytes, bytes]:
    """Part 1 and the DER signature, split as the vectors README says (independently of
    our parser: the CRLF before each ``--boundary`` belongs to the delimiter)."""
    dash = b"--" + boundary_of(payload).encode()
    body = payload.body
    assert body.startswith(dash + b"\r\n")
    first_end = body.index(b"\r\n" + dash + b"\r\n")
    part1 = body[len(dash) + 2 : first_end]
    part2 = body[first_end + len(dash) + 4 : body.index(b"\r\n" + dash + b"--")]
    headers, _, encoded = part2.partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: base64" in headers
    return part1, base64.b64decode(encoded)


def openssl_verify_exact(
    tmp_path: Path,
    part1: bytes,
    der: bytes,
    ca_file: Path,
    *,
    purpose: str = "any",
    at: dt.datetime | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """The byte-exact oracle of canonical/vectors/README.md."""
    (tmp_path / "part1.bin").write_bytes(part1)
    (tmp_path / "sig.der").write_bytes(der)
    out = tmp_path / "out.bin"
    out.unlink(missing_ok=True)
    args = ["cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der"]
    args += ["-content", tmp_path / "part1.bin", "-CAfile", ca_file, "-out", out]
    if purpose:
        args += ["-purpose", purpose]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    done = openssl(*args)
    if done.returncode == 0:
        assert out.read_bytes() == part1
    return done


# ---------------------------------------------------------------------------- ours -> openssl

OUR_VARIANTS: dict[str, Callable[[Signer], Payload]] = {
    "default": lambda s: smime.sign(ENTITY, s.cert, s.key),
    "binary": lambda s: smime.sign(BINARY_ENTITY, s.cert, s.key),
    "no-attributes": lambda s: smime.sign(ENTITY, s.cert, s.key, attributes=False),
    "sha-512": lambda s: smime.sign(ENTITY, s.cert, s.key, micalg="sha-512"),
}


@pytest.mark.parametrize("signer_name", ["pki-rsa", "pki-ec", "openssl-p384", "openssl-rsa"])
@pytest.mark.parametrize("variant", sorted(OUR_VARIANTS))
def test_our_signature_passes_the_byte_exact_openssl_check(
    signers: dict[str, Signer], tmp_path: Path, signer_name: str, variant: str
) -> None:
    signer = signers[signer_name]
    payload = OUR_VARIANTS[variant](signer)
    part1, der = split_like_the_readme(payload)
    assert part1 in (ENTITY, BINARY_ENTITY)
    done = openssl_verify_exact(tmp_path, part1, der, signer.ca_file)
    assert done.returncode == 0, done.stderr
    assert b"Verification successful" in done.stderr


def test_our_rsa_pss_signature_passes_openssl(signers: dict[str, Signer], tmp_path: Path) -> None:
    signer = signers["openssl-rsa"]
    part1, der = split_like_the_readme(smime.sign(ENTITY, signer.cert, signer.key, pss=True))
    done = openssl_verify_exact(tmp_path, part1, der, signer.ca_file)
    assert done.returncode == 0, done.stderr


def test_our_signature_meets_openssl_smime_purpose(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer = signers["openssl-p384"]
    part1, der = split_like_the_readme(smime.sign(ENTITY, signer.cert, signer.key))
    done = openssl_verify_exact(tmp_path, part1, der, signer.ca_file, purpose="")
    assert done.returncode == 0, done.stderr


def test_our_chain_embedding_satisfies_openssl(tmp_path: Path) -> None:
    root = pki.make_ca("root for openssl chain")
    intermediate = make_intermediate(root)
    leaf = pki.make_leaf(intermediate, "Ivy", uris=("im:ivy@example.com",))
    (tmp_path / "root.crt").write_bytes(root.cert_pem)
    bare = smime.sign(ENTITY, leaf.cert, leaf.key)
    chained = smime.sign(ENTITY, leaf.cert, leaf.key, chain=[intermediate.cert])
    assert (
        openssl_verify_exact(
            tmp_path, *split_like_the_readme(bare), tmp_path / "root.crt"
        ).returncode
        != 0
    )
    done = openssl_verify_exact(tmp_path, *split_like_the_readme(chained), tmp_path / "root.crt")
    assert done.returncode == 0, done.stderr
    assert smime.verify(chained, [root.cert], now=later()).valid


# ---------------------------------------------------------------------------- openssl -> ours


def openssl_sign(signer: Signer, tmp_path: Path, content: bytes, *extra: str) -> bytes:
    source, out = tmp_path / "content.bin", tmp_path / "signed.out"
    source.write_bytes(content)
    done = openssl(
        "cms", "-sign", "-binary", "-in", source, "-signer", signer.cert_file,
        "-inkey", signer.key_file, "-out", out, *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def wrap_by_hand(content: bytes, der: bytes, boundary: str = "openssl-der") -> Payload:
    body = (
        f"--{boundary}\r\n".encode() + content + f"\r\n--{boundary}\r\n".encode()
        + b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(der).replace(b"\n", b"\r\n")
        + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    return Payload(
        f'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; '
        f"boundary={boundary}",
        body,
    )


@pytest.mark.parametrize("signer_name", ["pki-rsa", "pki-ec", "openssl-p384", "openssl-rsa"])
@pytest.mark.parametrize("content", [ENTITY, BINARY_ENTITY], ids=["text", "binary"])
def test_openssl_detached_der_signature_verifies_with_ours(
    signers: dict[str, Signer], tmp_path: Path, signer_name: str, content: bytes
) -> None:
    signer = signers[signer_name]
    der = openssl_sign(signer, tmp_path, content, "-outform", "DER")
    result = smime.verify(
        wrap_by_hand(content, der), [signer.ca], now=later(), expected_sender=signer.sender
    )
    assert result.valid, result.error
    assert result.content == content
    assert result.matches_sender is True


@pytest.mark.parametrize("crlfeol", [True, False], ids=["crlf-framing", "lf-framing"])
def test_openssl_smime_output_verifies_with_ours(
    signers: dict[str, Signer], tmp_path: Path, crlfeol: bool
) -> None:
    signer = signers["openssl-p384"]
    extra = ["-outform", "SMIME", *(["-crlfeol"] if crlfeol else [])]
    mime = openssl_sign(signer, tmp_path, ENTITY, *extra)
    payload = smime.payload_from_entity(mime)
    assert payload.media_type == "multipart/signed"
    result = smime.verify(payload, [signer.ca], now=later())
    assert result.valid, result.error
    assert result.content == ENTITY


@pytest.mark.parametrize("signer_name", ["pki-rsa", "openssl-p384"])
@pytest.mark.parametrize("stream", [False, True], ids=["der", "ber-indefinite"])
def test_openssl_nodetach_signed_data_verifies_with_ours(
    signers: dict[str, Signer], tmp_path: Path, signer_name: str, stream: bool
) -> None:
    signer = signers[signer_name]
    extra = ["-stream"] if stream else []
    der = openssl_sign(signer, tmp_path, BINARY_ENTITY, "-nodetach", "-outform", "DER", *extra)
    assert (der[1] == 0x80) is stream  # -stream writes indefinite-length BER
    payload = Payload("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m", der)
    result = smime.verify(payload, [signer.ca], now=later())
    assert result.valid, result.error
    assert result.content == BINARY_ENTITY
    assert smime.signed_content(payload) == BINARY_ENTITY


def test_openssl_rsa_pss_signature_verifies_with_ours(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer = signers["openssl-rsa"]
    der = openssl_sign(
        signer, tmp_path, ENTITY, "-outform", "DER", "-keyopt", "rsa_padding_mode:pss"
    )
    payload = wrap_by_hand(ENTITY, der)
    _, signed = smime._extract(payload)
    assert signed.signers[0].signature_algo == "rsassa_pss"
    result = smime.verify(payload, [signer.ca], now=later())
    assert result.valid, result.error


def test_openssl_signature_without_attributes_verifies_with_ours(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer = signers["openssl-p384"]
    der = openssl_sign(signer, tmp_path, ENTITY, "-outform", "DER", "-noattr")
    assert smime.verify(wrap_by_hand(ENTITY, der), [signer.ca], now=later()).valid


def test_openssl_sha1_signature_is_refused_as_weak(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer = signers["openssl-rsa"]
    der = openssl_sign(signer, tmp_path, ENTITY, "-outform", "DER", "-md", "sha1")
    result = smime.verify(wrap_by_hand(ENTITY, der), [signer.ca], now=later())
    assert not result.valid
    assert result.code == "WEAK_ALGORITHM"


def test_openssl_signature_with_subject_key_identifier_verifies(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer = signers["openssl-rsa"]
    der = openssl_sign(signer, tmp_path, ENTITY, "-outform", "DER", "-keyid")
    _, signed = smime._extract(wrap_by_hand(ENTITY, der))
    assert signed.signers[0].key_id is not None
    assert smime.verify(wrap_by_hand(ENTITY, der), [signer.ca], now=later()).valid


# ---------------------------------------------------------------------------- encryption


@pytest.mark.parametrize("content", [ENTITY, BINARY_ENTITY], ids=["text", "binary"])
def test_our_encryption_opens_with_openssl(
    signers: dict[str, Signer], tmp_path: Path, content: bytes
) -> None:
    signer = signers["openssl-rsa"]
    (tmp_path / "env.der").write_bytes(smime.encrypt(content, [signer.cert]).body)
    done = openssl(
        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tmp_path / "env.der",
        "-recip", signer.cert_file, "-inkey", signer.key_file,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == content


def test_our_encryption_uses_aes_256(signers: dict[str, Signer], tmp_path: Path) -> None:
    signer = signers["pki-rsa"]
    (tmp_path / "env.der").write_bytes(smime.encrypt(ENTITY, [signer.cert]).body)
    done = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "env.der")
    assert done.returncode == 0, done.stderr
    assert b"aes-256-cbc" in done.stdout


@pytest.mark.parametrize("content", [ENTITY, BINARY_ENTITY], ids=["text", "binary"])
def test_openssl_encryption_opens_with_ours(
    signers: dict[str, Signer], tmp_path: Path, content: bytes
) -> None:
    first, second = signers["openssl-rsa"], signers["pki-rsa"]
    (tmp_path / "plain.bin").write_bytes(content)
    done = openssl(
        "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER",
        "-in", tmp_path / "plain.bin", "-out", tmp_path / "env.der",
        first.cert_file, second.cert_file,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = Payload(smime.ENVELOPED_CONTENT_TYPE, (tmp_path / "env.der").read_bytes())
    assert smime.decrypt(payload, first.cert, first.key) == content
    assert smime.decrypt(payload, second.cert, second.key) == content


# ---------------------------------------------------------------------------- failures agree


def flip_byte(part: bytes) -> bytes:
    index = part.index(b"Signed by one")
    return part[:index] + b"s" + part[index + 1 :]


def reorder(part: bytes) -> bytes:
    return part.replace(
        b"DateTime: 2026-11-26T14:00:00Z\r\nSubject: interop\r\n",
        b"Subject: interop\r\nDateTime: 2026-11-26T14:00:00Z\r\n",
    )


def recase(part: bytes) -> bytes:
    return part.replace(b"Content-type: Message/CPIM", b"Content-Type: message/cpim")


def lf_normalise(part: bytes) -> bytes:
    return part.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("damage", [flip_byte, reorder, recase, lf_normalise])
@pytest.mark.parametrize("signer_name", ["pki-rsa", "openssl-p384"])
def test_damaged_content_fails_for_ours_and_for_openssl(
    signers: dict[str, Signer],
    tmp_path: Path,
    damage: Callable[[bytes], bytes],
    signer_name: str,
) -> None:
    signer = signers[signer_name]
    payload = smime.sign(ENTITY, signer.cert, signer.key)
    part1, der = split_like_the_readme(payload)
    damaged = damage(part1)
    assert damaged != part1
    tampered = Payload(payload.content_type, payload.body.replace(part1, damaged))
    result = smime.verify(tampered, [signer.ca], now=later())
    assert not result.valid
    assert result.code == "CONTENT_MISMATCH"
    done = openssl_verify_exact(tmp_path, damaged, der, signer.ca_file)
    assert done.returncode != 0
    assert b"Verification failure" in done.stderr


def test_text_mode_openssl_would_hide_lf_damage_that_we_catch(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    """Why the oracle is byte-exact: text-mode verify repairs line ends."""
    signer = signers["pki-rsa"]
    payload = smime.sign(ENTITY, signer.cert, signer.key)
    part1, der = split_like_the_readme(payload)
    (tmp_path / "lf.bin").write_bytes(lf_normalise(part1))
    (tmp_path / "sig.der").write_bytes(der)
    text_mode = openssl(
        "cms", "-verify", "-inform", "DER", "-in", tmp_path / "sig.der",
        "-content", tmp_path / "lf.bin", "-CAfile", signer.ca_file, "-purpose", "any",
        "-out", tmp_path / "out.bin",
    )  # fmt: skip
    assert text_mode.returncode == 0, text_mode.stderr
    tampered = Payload(payload.content_type, payload.body.replace(part1, lf_normalise(part1)))
    assert smime.verify(tampered, [signer.ca], now=later()).code == "CONTENT_MISMATCH"


def test_expired_signer_fails_for_ours_and_for_openssl(tmp_path: Path) -> None:
    ca = pki.make_ca("expiry CA")
    old = pki.make_leaf(
        ca,
        "Old",
        not_before=pki.NOW - dt.timedelta(days=30),
        not_after=pki.NOW - dt.timedelta(days=1),
    )
    signer = pki_signer(tmp_path, "old", ca, old)
    payload = smime.sign(ENTITY, signer.cert, signer.key)
    assert smime.verify(payload, [ca.cert], now=later()).code == "EXPIRED"
    done = openssl_verify_exact(tmp_path, *split_like_the_readme(payload), signer.ca_file)
    assert done.returncode != 0
    assert b"expired" in done.stderr


def test_untrusted_signer_fails_for_ours_and_for_openssl(
    signers: dict[str, Signer], tmp_path: Path
) -> None:
    signer, stranger = signers["openssl-p384"], signers["openssl-rsa"]
    payload = smime.sign(ENTITY, signer.cert, signer.key)
    assert smime.verify(payload, [stranger.ca], now=later()).code == "UNTRUSTED"
    done = openssl_verify_exact(tmp_path, *split_like_the_readme(payload), stranger.ca_file)
    assert done.returncode != 0
    assert b"unable to get local issuer certificate" in done.stderr


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("s01-multipart-signed.mime", True),
        ("s03-tampered-reordered.mime", False),
        ("s04-tampered-recased-mime-header.mime", False),
    ],
)
def test_shipped_vectors_get_the_same_verdict_from_openssl_and_ours(
    vectors_dir: Path, tmp_path: Path, name: str, valid: bool
) -> None:
    signed = vectors_dir / "signed"
    cert_file = signed / "test-signer-cert.pem"
    at = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)  # the certificate starts 2026-11-26
    payload = smime.payload_from_entity((signed / name).read_bytes())
    part1, der = split_like_the_readme(payload)
    done = openssl_verify_exact(tmp_path, part1, der, cert_file, at=at)
    assert (done.returncode == 0) is valid, done.stderr
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert smime.verify(payload, [cert], now=at).valid is valid
    assert smime.signed_content(payload) == part1
