"""Fuzz target: the S/MIME readers on whatever a peer sends: ``payload_from_entity`` (the
RFC 3923 ``<e2e/>`` content and the file form), ``signed_content`` (read without
verifying, for routing), ``verify`` (multipart/signed and pkcs7-mime signed-data, RFC 5652
§5.4), ``decrypt`` (enveloped-data, RFC 8551 §3.3) and ``restore_crlf`` (RFC 3923 §6.4).

The input's first byte picks the content type (multipart/signed with the boundary the
input names, pkcs7-mime signed-data, enveloped-data, or the entity form); the rest is the
body. Documented errors (``canonical.smime`` docstring): :class:`ParseError` ``SMIME_*``
for unreadable objects, :class:`SmimeError`, :class:`DecryptionError`; a readable object
that does not verify is a ``Verification`` with ``valid=False``, never an exception. So
``GatewayError`` only. Law: ``restore_crlf`` is idempotent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from canonical import smime, vectorset
from canonical.envelope import Payload
from canonical.errors import GatewayError
from tests.fuzz import corpus

ALLOWED = (GatewayError,)
MAX_LEN = 16384
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
#: A fixed recipient (the seeds are encrypted to it, so decryption paths are reached).
KEYS = Path(__file__).resolve().parent / "keys"
TYPES = (
    'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="',
    "application/pkcs7-mime; smime-type=signed-data",
    "application/pkcs7-mime; smime-type=enveloped-data",
    "entity",
)


@cache
def recipient() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((KEYS / "recipient.crt").read_bytes())
    key = serialization.load_pem_private_key((KEYS / "recipient.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


@cache
def trust() -> tuple[x509.Certificate, ...]:
    return (x509.load_pem_x509_certificate(vectorset.signer_certificate()),)


def payload_of(data: bytes) -> Payload | None:
    if not data:
        return None
    kind = TYPES[data[0] % len(TYPES)]
    rest = data[1:]
    if kind == "entity":
        return smime.payload_from_entity(rest)
    if kind.endswith('"'):
        boundary, _, body = rest.partition(b"\n")
        return Payload(kind + boundary.decode("latin-1") + '"', body)
    return Payload(kind, rest)


def run(data: bytes) -> None:
    if data:
        once = smime.restore_crlf(data[1:])
        assert smime.restore_crlf(once) == once, "restore_crlf is not idempotent"
    payload = payload_of(data)
    if payload is None:
        return
    smime.signed_content(payload)
    try:
        result = smime.verify(payload, trust(), now=NOW, expected_sender="im:ada@example.com")
        assert result.valid or result.code, "a failed verification without a code"
    except GatewayError:
        pass
    cert, key = recipient()
    smime.decrypt(payload, cert, key)


def _encode(payload: Payload) -> bytes:
    for n, kind in enumerate(TYPES):
        if kind.endswith('"') and payload.media_type == "multipart/signed":
            boundary = payload.content_type.split('boundary="', 1)[1].split('"', 1)[0]
            return bytes([n]) + boundary.encode() + b"\n" + payload.body
        if kind == payload.content_type:
            return bytes([n]) + payload.body
    return bytes([TYPES.index("entity")]) + smime.entity_from_payload(payload)


def seeds() -> Iterator[bytes]:
    cert, _key = recipient()
    for signed in corpus.signed_objects():
        if signed.startswith(b"<"):
            continue
        yield bytes([TYPES.index("entity")]) + signed
        try:
            payload = smime.payload_from_entity(signed)
        except GatewayError:
            continue
        yield _encode(payload)
        yield _encode(smime.encrypt(smime.entity_from_payload(payload), [cert]))
    for entity in list(corpus.cpim_entities())[:4]:
        yield _encode(smime.encrypt(entity, [cert]))
