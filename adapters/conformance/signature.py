"""Signature verdicts for law L3, from two independent verifiers.

DESIGN.md L3: a signed object verifies at the far end "byte-exactly, with the
detached-DER ``openssl cms -verify -binary`` command in ``vectors/README.md`` (text-mode
verify repairs line endings and would hide a loss) — and with our own verifier"
(:func:`canonical.smime.verify`). The kit asks both; when they disagree, that is reported.

The OpenSSL oracle splits a multipart/signed body at its boundary (RFC 2046 §5.1.1: the
CRLF before each delimiter belongs to the delimiter), writes part 1 as it is and the
signature part as DER, and verifies the detached signature over part 1's exact bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from canonical.envelope import MULTIPART_SIGNED, PKCS7_MIME, Payload
from canonical.errors import GatewayError

_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a signed payload verifies, and what each verifier said."""

    valid: bool
    notes: tuple[str, ...] = ()
    disagreement: bool = False

    def describe(self) -> str:
        state = "verifies" if self.valid else "does not verify"
        return f"{state} ({'; '.join(self.notes)})" if self.notes else state


def split_signed(payload: Payload) -> tuple[bytes, bytes] | None:
    """(signed content, DER signature) of a multipart/signed payload, None if malformed."""
    match = _BOUNDARY.search(payload.content_type)
    if payload.media_type != MULTIPART_SIGNED or match is None:
        return None
    boundary = (match.group(1) or match.group(2)).encode("utf-8")
    delimiter = b"--" + boundary
    body = payload.body
    start = body.find(delimiter)
    if start < 0:
        return None
    start = body.find(b"\r\n", start) + 2
    middle = body.find(b"\r\n" + delimiter, start)
    if start < 2 or middle < 0:
        return None
    content = body[start:middle]
    sig_start = body.find(b"\r\n", middle + 2) + 2
    sig_end = body.find(b"\r\n" + delimiter, sig_start)
    if sig_start < 2 or sig_end < 0:
        return None
    sig_part = body[sig_start:sig_end]
    _head, sep, b64 = sig_part.partition(b"\r\n\r\n")
    if not sep:
        return None
    try:
        der = base64.b64decode(b"".join(b64.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return content, der


def openssl_verify(payload: Payload, trust: Sequence[Path]) -> bool | None:
    """The OpenSSL oracle's verdict; None when OpenSSL is not installed or the payload is
    not a form it can check."""
    openssl = shutil.which("openssl")
    if openssl is None or not trust:
        return None
    with tempfile.TemporaryDirectory(prefix="cpimgw-l3-") as tmp:
        folder = Path(tmp)
        ca = folder / "trust.pem"
        ca.write_bytes(b"".join(p.read_bytes() for p in trust))
        argv = [openssl, "cms", "-verify", "-binary", "-inform", "DER", "-CAfile", str(ca)]
        argv += ["-purpose", "any", "-out", str(folder / "out.bin")]
        if payload.media_type == MULTIPART_SIGNED:
            parts = split_signed(payload)
            if parts is None:
                return False
            (folder / "part1.bin").write_bytes(parts[0])
            (folder / "sig.der").write_bytes(parts[1])
            argv += ["-in", str(folder / "sig.der"), "-content", str(folder / "part1.bin")]
        elif payload.media_type == PKCS7_MIME:
            (folder / "sig.der").write_bytes(payload.body)
            argv += ["-in", str(folder / "sig.der")]
        else:
            return None
        result = subprocess.run(argv, capture_output=True, check=False, timeout=30)  # noqa: S603
        return result.returncode == 0


def verdict(
    payload: Payload | None,
    trust: Sequence[Path],
    *,
    now: dt.datetime,
) -> Verdict:
    """Verify ``payload`` with cpimgw's verifier and with the OpenSSL oracle."""
    if payload is None:
        return Verdict(False, ("no payload",))
    notes: list[str] = []
    ours: bool | None = None
    try:
        from cryptography import x509  # noqa: PLC0415

        from canonical import smime  # noqa: PLC0415 - cryptography loads only when needed

        roots = [x509.load_pem_x509_certificate(p.read_bytes()) for p in trust]
        checked = smime.verify(payload, roots, now=now)
        ours = checked.valid
        if not checked.valid and checked.error:
            notes.append(f"cpimgw: {checked.error}")
    except NotImplementedError:
        notes.append("cpimgw verifier not implemented yet")
    except (GatewayError, ValueError) as exc:
        ours = False
        notes.append(f"cpimgw: {exc}")
    oracle = openssl_verify(payload, trust)
    if oracle is None:
        notes.append("OpenSSL oracle unavailable")
    verdicts = [v for v in (ours, oracle) if v is not None]
    if not verdicts:
        return Verdict(False, (*notes, "no verifier could run"))
    if len(set(verdicts)) > 1:
        notes.append(f"verifiers disagree: cpimgw={ours}, openssl={oracle}")
        return Verdict(False, tuple(notes), disagreement=True)
    return Verdict(verdicts[0], tuple(notes))
