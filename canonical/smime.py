"""S/MIME for CPIM objects (RFC 8551, RFC 1847, RFC 5652, RFC 3862 §5.2, RFC 3923):
sign as multipart/signed (detached DER, binary), verify multipart/signed and pkcs7-mime
signed-data, encrypt/decrypt pkcs7-mime enveloped-data. Bytes in, bytes out; the clock is
passed in.  INTERFACE STUB — being implemented."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from canonical.envelope import Payload


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of :func:`verify`. ``valid`` is True only when the signature is good and the
    chain leads to a trust root at ``now``. ``content`` is the exact signed content (for
    multipart/signed, the first part's bytes: a ``Content-type: Message/CPIM`` entity).
    ``signer_uris`` are the signer's subjectAltName URIs; ``matches_sender`` tells whether
    one of them equals the expected sender (the CPIM From), None when none was given."""

    valid: bool
    content: bytes
    signer_subject: str | None
    signer_uris: tuple[str, ...]
    matches_sender: bool | None
    error: str | None


def sign(
    entity: bytes,
    certificate: x509.Certificate,
    key: PrivateKeyTypes,
    *,
    chain: Sequence[x509.Certificate] = (),
    boundary: str | None = None,
) -> Payload:
    """multipart/signed around ``entity`` (exact bytes), detached DER signature, binary."""
    raise NotImplementedError


def verify(
    payload: Payload,
    trust: Sequence[x509.Certificate],
    *,
    now: _dt.datetime,
    expected_sender: str | None = None,
) -> Verification:
    """Verify multipart/signed or application/pkcs7-mime signed-data byte-exactly."""
    raise NotImplementedError


def signed_content(payload: Payload) -> bytes | None:
    """The signed content of a signed payload without verifying (read-only, for routing
    and mapping); None when the payload is not signed or is malformed."""
    raise NotImplementedError


def encrypt(content: bytes, recipients: Sequence[x509.Certificate]) -> Payload:
    """application/pkcs7-mime; smime-type=enveloped-data (DER, binary, AES-256-CBC)."""
    raise NotImplementedError


def decrypt(payload: Payload, certificate: x509.Certificate, key: PrivateKeyTypes) -> bytes:
    """The exact bytes that were encrypted."""
    raise NotImplementedError
