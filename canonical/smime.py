"""S/MIME for CPIM objects, byte-exact: sign, verify, encrypt, decrypt.

- Signing (RFC 8551 §3.5, RFC 1847 §2.1, RFC 3862 §5.2) wraps the exact bytes of a MIME entity
  (typically ``Content-type: Message/CPIM`` ...) in ``multipart/signed`` with a detached DER
  CMS SignedData made by ``cryptography`` with the Binary option, so the bytes signed are the
  bytes shipped. The wrapper is built here, deterministically given a boundary.
- Verification (RFC 5652 §5.4, §5.6) is our own: asn1crypto reads the SignedData, cryptography
  checks the signature (RSA PKCS#1 v1.5, RSA-PSS, ECDSA, Ed25519) and the certificate chain
  (``cryptography.x509.verification``) at the time the caller passes in. It handles
  ``multipart/signed`` (split at the boundary per RFC 2046 §5.1.1, the line break before each
  delimiter belonging to the delimiter) and ``application/pkcs7-mime; smime-type=signed-data``.
- Encryption (RFC 8551 §3.3) is CMS EnvelopedData, AES-256-CBC, RSA key transport, Binary.
- :func:`restore_crlf` undoes the CR loss of XML carriage (RFC 3923 §6.4, §8; XML 1.0 §2.11)
  where MIME canonical form (RFC 2045 §2.7-2.10, RFC 2046 §4.1.1, RFC 8551 §3.1.1) says line
  breaks are CRLF, and nowhere else.

Bytes in, bytes out; the clock is passed in (``now``). The signing library itself stamps the
optional signingTime attribute (pass ``attributes=False`` for fully reproducible output).
Malformed input raises :class:`~canonical.errors.ParseError` with a stable ``SMIME_*`` code; a
well-formed object that does not verify gives ``Verification(valid=False, code=..., error=...)``.
The rules and openssl commands are in ``docs/smime.md``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from asn1crypto import cms as _cms
from asn1crypto import core as _core
from asn1crypto import x509 as _ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from canonical.address import gateway_jid, is_canonical_localpart, unescape_localpart
from canonical.envelope import MULTIPART_SIGNED, PKCS7_MIME, Payload
from canonical.errors import GatewayError, ParseError, Reason, SecurityError

__all__ = [
    "ENVELOPED_CONTENT_TYPE",
    "DecryptionError",
    "Micalg",
    "SmimeError",
    "Verification",
    "decrypt",
    "encrypt",
    "entity_from_payload",
    "match_sender",
    "payload_from_entity",
    "restore_crlf",
    "sign",
    "signed_content",
    "verify",
]

CRLF = b"\r\n"

#: RFC 8551 §3.3: the content type of an enveloped (encrypted) object.
ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"

#: RFC 8551 §3.5.3 / RFC 3923 §3.2: headers of the signature part (base64 so that the object
#: can cross XML carriage, which cannot hold arbitrary bytes).
_SIGNATURE_PART_HEADERS = (
    b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; handling=required; filename="smime.p7s"\r\n'
)

_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_PKCS7_MIME_TYPES = frozenset({PKCS7_MIME, "application/x-pkcs7-mime"})

Micalg = Literal["sha-256", "sha-384", "sha-512"]
_MICALG_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}

#: RFC 5754 / RFC 8551 §2.1: digests accepted on receipt (SHA-1 and MD5 are refused).
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_WEAK_DIGESTS = frozenset({"md5", "sha1", "md2"})

_ID_DATA = "1.2.840.113549.1.7.1"
_MAX_DEPTH = 16

#: RFC 2046 §5.1.1 bchars.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class SmimeError(GatewayError, ValueError):
    """A well-formed request that cannot be carried out: an unsupported key or algorithm, a
    boundary that occurs in the content, a key that does not match its certificate.
    ``code`` is a stable identifier (``SMIME_*``)."""

    default_reason = Reason.BAD_REQUEST

    def __init__(self, code: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


class DecryptionError(SecurityError):
    """An enveloped object that this certificate and key cannot open (RFC 3923 §7 case 5:
    ``decryption-failed``). ``code`` is ``SMIME_DECRYPT_FAILED``."""

    default_reason = Reason.BAD_REQUEST

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = "SMIME_DECRYPT_FAILED"

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of :func:`verify`. ``valid`` is True only when the signature is good and the
    chain leads to a trust root at ``now``. ``content`` is the exact signed content (for
    multipart/signed, the first part's bytes: a ``Content-type: Message/CPIM`` entity).
    ``signer_uris`` are the signer's subjectAltName URIs; ``matches_sender`` tells whether
    one of them equals the expected sender (the CPIM From), None when none was given.

    ``code`` is a stable failure identifier (``CONTENT_MISMATCH``, ``BAD_SIGNATURE``,
    ``UNTRUSTED``, ``EXPIRED``, ``NOT_YET_VALID``, ...; None when valid); ``matched_uri`` is
    the subjectAltName URI that matched the expected sender; ``signer`` is the signer's
    certificate. When ``valid`` is False the signer fields describe what the object *claims*
    and must not be trusted.
    """

    valid: bool
    content: bytes
    signer_subject: str | None
    signer_uris: tuple[str, ...]
    matches_sender: bool | None
    error: str | None
    code: str | None = None
    matched_uri: str | None = None
    signer: x509.Certificate | None = None


# --------------------------------------------------------------------------------------------
# MIME framing (RFC 2045, RFC 2046, RFC 5322 §2.2)


@dataclass(frozen=True, slots=True)
class _HeaderBlock:
    """A MIME header block: unfolded ``(name, value)`` pairs and where the body starts."""

    fields: tuple[tuple[str, str], ...]
    body_start: int

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        for field_name, value in self.fields:
            if field_name.lower() == wanted:
                return value
        return None


def _read_header_block(data: bytes, start: int = 0, *, what: str = "MIME entity") -> _HeaderBlock:
    """Read header lines from ``start`` to the first empty line; CRLF or LF line ends.

    RFC 5322 §2.2.3: a line starting with space or tab continues the previous field.
    """
    fields: list[tuple[str, str]] = []
    pos = start
    line_no = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise ParseError(
                "SMIME_NO_BLANK_LINE",
                f"the {what} has no empty line after its headers",
                offset=len(data),
                hint="a MIME entity is header lines, an empty line, then the body (RFC 2045 §3)",
            )
        line_no += 1
        line = data[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return _HeaderBlock(tuple(fields), end + 1)
        text = line.decode("utf-8", "replace")
        if text[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + text.strip())
        else:
            name, sep, value = text.partition(":")
            if not sep or not name.strip():
                raise ParseError(
                    "SMIME_BAD_HEADER",
                    f"header line in the {what} is not 'Name: value': {text[:60]!r}",
                    line=line_no,
                    offset=pos,
                )
            fields.append((name.strip(), value.strip()))
        pos = end + 1


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` in lower case and its parameters (RFC 2045 §5.1; quoted strings)."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        name = rest[i:j].strip().lower()
        if j >= n or rest[j] == ";":
            i = j
            continue
        j += 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            j += 1
            chars: list[str] = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(rest[j])
                j += 1
            param_value = "".join(chars)
            j += 1
        else:
            k = j
            while k < n and rest[k] != ";":
                k += 1
            param_value = rest[j:k].strip()
            j = k
        if name and name not in params:
            params[name] = param_value
        i = j
    return media.strip().lower(), params


def payload_from_entity(data: bytes) -> Payload:
    """A :class:`Payload` from a whole MIME entity: header lines, an empty line, the body.

    This is the file form ``cpimgw smime sign`` writes and the RFC 3923 ``<e2e/>`` content:
    the ``Content-Type`` header gives the payload's content type (other headers such as
    ``MIME-Version`` are ignored) and the body is kept byte for byte, except that a
    non-multipart body with ``Content-Transfer-Encoding: base64`` is decoded (the transport
    form of ``application/pkcs7-mime`` is DER). Header lines may end in CRLF or LF.
    """
    block = _read_header_block(data, what="MIME entity")
    content_type = block.get("Content-Type")
    if content_type is None:
        raise ParseError(
            "SMIME_NO_CONTENT_TYPE",
            "the MIME entity has no Content-Type header",
            hint="start the file with 'Content-Type: ...' then an empty line (docs/smime.md)",
        )
    body = data[block.body_start :]
    encoding = (block.get("Content-Transfer-Encoding") or "").lower()
    if encoding == "base64" and not content_type.lower().startswith("multipart/"):
        body = _decode_base64(body, "the entity body")
    return Payload(content_type=content_type, body=body)


def entity_from_payload(payload: Payload) -> bytes:
    """The MIME entity form of a payload: ``Content-Type:`` line, empty line, body bytes
    (what :func:`payload_from_entity` reads back, and what RFC 3923 puts in ``<e2e/>``)."""
    return b"Content-Type: " + payload.content_type.encode("utf-8") + CRLF + CRLF + payload.body


def _decode_base64(data: bytes, what: str) -> bytes:
    compact = re.sub(rb"[ \t\r\n]+", b"", data)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(
            "SMIME_BAD_BASE64", f"{what} is not valid base64: {exc}", hint="RFC 2045 §6.8"
        ) from exc


def _find_delimiters(body: bytes, boundary: bytes) -> list[tuple[int, int, int, bool]]:
    """Delimiter lines of a multipart body (RFC 2046 §5.1.1).

    Returns ``(part_end, line_start, next_part_start, closing)`` per delimiter: the part
    before it ends at ``part_end`` (the line break before ``--boundary`` belongs to the
    delimiter), the next part starts after the delimiter line. CRLF is the rule; a bare LF
    is accepted as the line break so that LF-damaged objects fail on their signature, with
    a precise reason, rather than on framing.
    """
    dash = b"--" + boundary
    found: list[tuple[int, int, int, bool]] = []
    pos = 0
    while True:
        idx = body.find(dash, pos)
        if idx < 0:
            return found
        pos = idx + 1
        if idx and body[idx - 1 : idx] != b"\n":
            continue
        after = idx + len(dash)
        closing = body[after : after + 2] == b"--"
        k = after + 2 if closing else after
        while k < len(body) and body[k : k + 1] in (b" ", b"\t"):
            k += 1
        if k < len(body):
            if body[k : k + 2] == CRLF:
                k += 2
            elif body[k : k + 1] == b"\n":
                k += 1
            elif not closing:
                continue  # "--boundaryX": not a delimiter
        if idx == 0:
            part_end = 0
        elif body[idx - 2 : idx] == CRLF:
            part_end = idx - 2
        else:
            part_end = idx - 1
        found.append((part_end, idx, k, closing))
        if closing:
            return found


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The body parts of a multipart body, exact bytes (RFC 2046 §5.1.1)."""
    delimiters = _find_delimiters(body, boundary.encode("utf-8", "replace"))
    if not delimiters:
        raise ParseError(
            "SMIME_NO_DELIMITER",
            f"no '--{boundary}' delimiter line in the multipart body",
            hint="the boundary parameter must match the delimiter lines (RFC 2046 §5.1.1)",
        )
    if not delimiters[-1][3]:
        raise ParseError(
            "SMIME_NO_CLOSE_DELIMITER",
            f"the multipart body does not end with '--{boundary}--'",
            offset=len(body),
            hint="the object was truncated, or its boundary occurs in its content",
        )
    return [body[delimiters[i][2] : delimiters[i + 1][0]] for i in range(len(delimiters) - 1)]


# --------------------------------------------------------------------------------------------
# Signing


def _check_canonical(entity: bytes) -> None:
    """Refuse an entity whose header blocks (or text content) are not CRLF-canonical.

    RFC 8551 §3.1.1 / RFC 5322 §2.1: the signer signs the canonical form. Signing other
    bytes would produce an object that only verifies as long as nobody repairs its line
    ends; refusing is the only way not to sign something else than what the user sees.
    """
    _check_entity_canonical(entity, 0, len(entity), depth=0)


def _canonical_fault(data: bytes, start: int, end: int) -> tuple[str, int] | None:
    """The first bare LF or bare CR in ``data[start:end]``: (code, offset)."""
    lf = start
    while True:
        lf = data.find(b"\n", lf, end)
        if lf < 0:
            break
        if lf == start or data[lf - 1] != 0x0D:
            cr = _first_bare_cr(data, start, lf)
            return ("SMIME_BARE_CR", cr) if cr is not None else ("SMIME_BARE_LF", lf)
        lf += 1
    cr = _first_bare_cr(data, start, end)
    return ("SMIME_BARE_CR", cr) if cr is not None else None


def _first_bare_cr(data: bytes, start: int, end: int) -> int | None:
    cr = data.find(b"\r", start, end)
    while cr >= 0:
        if data[cr + 1 : cr + 2] != b"\n" or cr + 1 >= end:
            return cr
        cr = data.find(b"\r", cr + 1, end)
    return None


def _raise_canonical(data: bytes, fault: tuple[str, int], what: str) -> None:
    code, offset = fault
    char = "LF" if code == "SMIME_BARE_LF" else "CR"
    raise ParseError(
        code,
        f"bare {char} in {what}; the entity is not CRLF-canonical MIME",
        line=data.count(b"\n", 0, offset) + 1,
        offset=offset,
        hint="end every header line (and every line of text content) with CRLF before "
        "signing (RFC 8551 §3.1.1); the signature covers the exact bytes",
    )


def _header_block_end(data: bytes, start: int, end: int, what: str) -> int:
    """Offset just after the CRLF CRLF ending the header block at ``start`` (canonical)."""
    if data.startswith(CRLF, start):
        stop = start + 2
    else:
        blank = data.find(b"\r\n\r\n", start, end)
        stop = blank + 4 if blank >= 0 else -1
    header_end = stop if stop >= 0 else end
    fault = _canonical_fault(data, start, header_end)
    if fault is not None:
        _raise_canonical(data, fault, f"the {what} header block")
    if stop < 0:
        raise ParseError(
            "SMIME_NO_BLANK_LINE",
            f"the {what} has no empty line (CRLF CRLF) after its headers",
            offset=end,
            hint="a MIME entity is header lines, an empty line, then the body (RFC 2045 §3)",
        )
    return stop


def _check_entity_canonical(data: bytes, start: int, end: int, *, depth: int) -> None:
    body_start = _header_block_end(data, start, end, "MIME entity")
    block = _read_header_block(data, start)
    media, params = _parse_content_type(block.get("Content-Type") or "text/plain")
    encoding = (block.get("Content-Transfer-Encoding") or "").lower()
    if depth >= _MAX_DEPTH:
        return
    if media == "message/cpim":
        # RFC 3862 §2: CPIM header block, empty line, the encapsulated MIME entity.
        entity_start = _header_block_end(data, body_start, end, "CPIM message")
        _check_entity_canonical(data, entity_start, end, depth=depth + 1)
    elif media.startswith("multipart/") and params.get("boundary"):
        body = data[body_start:end]
        delimiters = _find_delimiters(body, params["boundary"].encode("utf-8", "replace"))
        for (_, _, part_start, _), (part_end, _, _, _) in itertools.pairwise(delimiters):
            if part_end <= part_start:
                continue  # an empty body part
            _check_entity_canonical(
                data, body_start + part_start, body_start + part_end, depth=depth + 1
            )
    elif media.startswith("text/") and encoding not in ("base64", "binary"):
        fault = _canonical_fault(data, body_start, end)
        if fault is not None:
            _raise_canonical(data, fault, f"{media} content")


def _check_boundary(boundary: str, entity: bytes) -> None:
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise SmimeError(
            "SMIME_BAD_BOUNDARY",
            f"boundary {boundary!r} is not 1-70 RFC 2046 bchars (no trailing space)",
            hint="letters, digits and '()+_,-./:=? only (RFC 2046 §5.1.1)",
        )
    dash = b"--" + boundary.encode("ascii")
    if entity.startswith(dash) or b"\n" + dash in entity:
        raise SmimeError(
            "SMIME_BOUNDARY_IN_CONTENT",
            f"the boundary {boundary!r} occurs at the start of a line in the content",
            hint="choose another boundary, or leave it out to derive one from the content",
        )


def _default_boundary(entity: bytes) -> str:
    """A boundary derived from the content, so the same input gives the same wrapper."""
    return "cpimgw-signed-" + hashlib.sha256(entity).hexdigest()[:32]


def _base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character lines, each ending in CRLF (RFC 2045 §6.8)."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + CRLF for i in range(0, len(text), 76))


def sign(
    entity: bytes,
    certificate: x509.Certificate,
    key: PrivateKeyTypes,
    *,
    chain: Sequence[x509.Certificate] = (),
    boundary: str | None = None,
    micalg: Micalg = "sha-256",
    attributes: bool = True,
    pss: bool = False,
) -> Payload:
    """multipart/signed around ``entity`` (exact bytes), detached DER signature, binary.

    RFC 8551 §3.5 / RFC 1847 §2.1: part 1 is ``entity`` byte for byte, part 2 the base64
    ``application/pkcs7-signature``. ``entity`` must be CRLF-canonical MIME (header block,
    and text content, without bare LF/CR): otherwise :class:`ParseError` (``SMIME_BARE_LF``,
    ``SMIME_BARE_CR``, ``SMIME_NO_BLANK_LINE``). ``chain`` certificates are embedded for the
    verifier. ``boundary`` defaults to one derived from the content. ``attributes=False``
    leaves out the signed attributes (RFC 5652 §5.3 allows it for id-data): no signingTime,
    so an RSA signature is then byte-for-byte reproducible. ``pss=True`` signs with RSA-PSS
    (RFC 4056) instead of PKCS#1 v1.5.
    """
    _check_canonical(entity)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SmimeError(
            "SMIME_UNSUPPORTED_KEY",
            f"cannot sign with a {type(key).__name__}",
            hint="use an RSA or EC (P-256/P-384/P-521) key",
        )
    if certificate.public_key() != key.public_key():
        raise SmimeError(
            "SMIME_KEY_MISMATCH",
            "the private key does not belong to the signer certificate",
            hint="pass the key that was certified in the certificate",
        )
    if pss and not isinstance(key, rsa.RSAPrivateKey):
        raise SmimeError("SMIME_UNSUPPORTED_KEY", "RSA-PSS needs an RSA key")
    if micalg not in _MICALG_HASHES:
        raise SmimeError("SMIME_UNSUPPORTED_ALGORITHM", f"unsupported micalg {micalg!r}")
    chosen = boundary if boundary is not None else _default_boundary(entity)
    _check_boundary(chosen, entity)
    hash_algorithm = _MICALG_HASHES[micalg]()
    rsa_padding = (
        padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
        if pss
        else None
    )
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity)
    builder = builder.add_signer(certificate, key, hash_algorithm, rsa_padding=rsa_padding)
    for extra in chain:
        builder = builder.add_certificate(extra)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    der = builder.sign(serialization.Encoding.DER, options)
    dash = b"--" + chosen.encode("ascii")
    body = b"".join(
        (
            dash + CRLF,
            entity + CRLF,
            dash + CRLF,
            _SIGNATURE_PART_HEADERS + CRLF,
            _base64_lines(der) + CRLF,
            dash + b"--" + CRLF,
        )
    )
    content_type = (
        f'multipart/signed; protocol="application/pkcs7-signature"; micalg={micalg}; '
        f'boundary="{chosen}"'
    )
    return Payload(content_type=content_type, body=body)


# --------------------------------------------------------------------------------------------
# Reading signed objects


@dataclass(frozen=True, slots=True)
class _SignerInfo:
    issuer: Any  # asn1crypto Name, or None for a subjectKeyIdentifier sid
    serial: int | None
    key_id: bytes | None
    digest: str
    signed_attrs: bytes | None  # DER SET OF, as signed (RFC 5652 §5.4)
    content_types: tuple[str, ...]
    digests: tuple[bytes, ...]
    signature_algo: str
    signature_hash: str | None
    pss_params: tuple[str, str, int] | None  # hash, mgf hash, salt length
    signature: bytes


@dataclass(frozen=True, slots=True)
class _SignedData:
    content_type: str
    content: bytes | None
    certificates: tuple[bytes, ...]
    signers: tuple[_SignerInfo, ...]


def _bad_cms(exc: Exception) -> ParseError:
    return ParseError(
        "SMIME_BAD_CMS",
        f"the signature is not a readable CMS SignedData: {exc}",
        hint="RFC 5652 §5; it must be DER (or BER) ContentInfo with signedData",
    )


def _read_signed_data(der: bytes) -> _SignedData:
    """Parse a CMS ContentInfo holding SignedData into plain values (RFC 5652 §5.1-5.3)."""
    try:
        info = _cms.ContentInfo.load(der, strict=True)
        kind = info["content_type"].native
    except Exception as exc:  # asn1crypto raises many types on bad input
        raise _bad_cms(exc) from exc
    if kind != "signed_data":
        raise ParseError(
            "SMIME_NOT_SIGNED",
            f"the CMS object is {kind}, not signedData",
            hint="RFC 8551 §3.5: the signature part holds a SignedData",
        )
    try:
        signed = info["content"]
        encap = signed["encap_content_info"]
        content = encap["content"].native
        if content is not None and not isinstance(content, bytes):
            content = encap["content"].contents
        certificates: list[bytes] = []
        if not isinstance(signed["certificates"], _core.Void):
            certificates.extend(
                choice.chosen.dump()
                for choice in signed["certificates"]
                if choice.name == "certificate"
            )
        signers = tuple(_read_signer(info_) for info_ in signed["signer_infos"])
        return _SignedData(
            content_type=encap["content_type"].dotted,
            content=content,
            certificates=tuple(certificates),
            signers=signers,
        )
    except Exception as exc:  # asn1crypto raises many types on bad input
        raise _bad_cms(exc) from exc


def _read_signer(info: Any) -> _SignerInfo:
    sid = info["sid"]
    issuer = serial = key_id = None
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        issuer.native  # noqa: B018 - parse now, inside the caller's error handling
        serial = int(sid.chosen["serial_number"].native)
    else:
        key_id = bytes(sid.chosen.native)
    attrs = info["signed_attrs"]
    signed_attrs: bytes | None = None
    content_types: list[str] = []
    digests: list[bytes] = []
    if not isinstance(attrs, _core.Void) and len(attrs):
        signed_attrs = b"\x31" + attrs.dump()[1:]
        for attr in attrs:
            oid = attr["type"].dotted
            if oid == "1.2.840.113549.1.9.3":
                content_types.extend(value.dotted for value in attr["values"])
            elif oid == "1.2.840.113549.1.9.4":
                digests.extend(bytes(value.native) for value in attr["values"])
    algorithm = info["signature_algorithm"]
    signature_algo = algorithm.signature_algo
    signature_hash: str | None = None
    pss_params: tuple[str, str, int] | None = None
    if signature_algo == "rsassa_pss":
        params = algorithm["parameters"]
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise ValueError(f"unsupported PSS mask generation {mgf['algorithm'].native}")
        pss_params = (
            params["hash_algorithm"]["algorithm"].native,
            mgf["parameters"]["algorithm"].native,
            int(params["salt_length"].native),
        )
    elif signature_algo in ("ecdsa", "rsassa_pkcs1v15", "dsa"):
        try:
            signature_hash = algorithm.hash_algo
        except ValueError:
            signature_hash = None  # rsaEncryption / bare ecdsa: the digestAlgorithm applies
    return _SignerInfo(
        issuer=issuer,
        serial=serial,
        key_id=key_id,
        digest=info["digest_algorithm"]["algorithm"].native,
        signed_attrs=signed_attrs,
        content_types=tuple(content_types),
        digests=tuple(digests),
        signature_algo=signature_algo,
        signature_hash=signature_hash,
        pss_params=pss_params,
        signature=bytes(info["signature"].native),
    )


def _pkcs7_der(body: bytes) -> bytes:
    """The DER of an application/pkcs7-mime body: DER as is, or base64 (email style)."""
    if body[:1] == b"\x30":
        return body
    return _decode_base64(body, "the application/pkcs7-mime body")


def _split_signed(payload: Payload) -> tuple[bytes | None, bytes]:
    """(detached content or None, SignedData DER) of a signed payload."""
    media, params = _parse_content_type(payload.content_type)
    if media == MULTIPART_SIGNED:
        protocol = params.get("protocol", "").lower()
        if protocol not in _SIGNATURE_TYPES:
            raise ParseError(
                "SMIME_UNSUPPORTED_PROTOCOL",
                f"multipart/signed protocol {protocol or '(missing)'!r} is not S/MIME",
                hint='expected protocol="application/pkcs7-signature" (RFC 8551 §3.5.3)',
            )
        boundary = params.get("boundary")
        if not boundary:
            raise ParseError(
                "SMIME_NO_BOUNDARY",
                "multipart/signed without a boundary parameter",
                hint='the Content-Type must carry boundary="..." (RFC 2046 §5.1.1)',
            )
        parts = _split_multipart(payload.body, boundary)
        if len(parts) != 2:
            raise ParseError(
                "SMIME_PART_COUNT",
                f"multipart/signed has {len(parts)} parts; RFC 1847 §2.1 requires exactly 2",
            )
        content, signature_part = parts
        block = _read_header_block(signature_part, what="signature part")
        part_type, _ = _parse_content_type(block.get("Content-Type") or "")
        if part_type not in _SIGNATURE_TYPES:
            raise ParseError(
                "SMIME_NO_SIGNATURE_PART",
                f"the second part is {part_type or 'untyped'}, not application/pkcs7-signature",
                hint="RFC 8551 §3.5.3",
            )
        raw = signature_part[block.body_start :]
        encoding = (block.get("Content-Transfer-Encoding") or "binary").lower()
        der = _decode_base64(raw, "the signature part") if encoding == "base64" else raw
        return content, der
    if media in _PKCS7_MIME_TYPES:
        smime_type = params.get("smime-type", "signed-data").lower()
        if smime_type != "signed-data":
            raise ParseError(
                "SMIME_NOT_SIGNED",
                f"application/pkcs7-mime with smime-type={smime_type} is not signed-data",
            )
        return None, _pkcs7_der(payload.body)
    raise ParseError(
        "SMIME_NOT_SIGNED",
        f"{media or 'an untyped payload'} is not a signed object",
        hint="expected multipart/signed or application/pkcs7-mime; smime-type=signed-data",
    )


def _extract(payload: Payload) -> tuple[bytes, _SignedData]:
    detached, der = _split_signed(payload)
    signed = _read_signed_data(der)
    if detached is not None:
        return detached, signed
    if signed.content is None:
        raise ParseError(
            "SMIME_NO_CONTENT",
            "application/pkcs7-mime signed-data without encapsulated content",
            hint="a detached signature travels as multipart/signed (RFC 8551 §3.5)",
        )
    return signed.content, signed


def signed_content(payload: Payload) -> bytes | None:
    """The signed content of a signed payload without verifying (read-only, for routing
    and mapping); None when the payload is not signed or cannot be read. For
    multipart/signed only the MIME framing is read (the first part's exact bytes), not the
    signature; for pkcs7-mime signed-data the CMS structure must be readable."""
    if not payload.is_signed:
        return None
    try:
        detached, _ = _split_signed(payload)
        if detached is not None:
            return detached  # multipart/signed: no need to read the CMS structure
        return _extract(payload)[0]
    except ParseError:
        return None


# --------------------------------------------------------------------------------------------
# Verification


class _CheckError(Exception):
    """A verification step failed: ``code`` and ``message`` end up in the Verification."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _find_signer_certificate(
    signer: _SignerInfo, candidates: Sequence[x509.Certificate]
) -> x509.Certificate:
    for cert in candidates:
        if signer.key_id is not None:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                digest = ski.value.digest
            except x509.ExtensionNotFound:
                public = cert.public_key()
                digest = x509.SubjectKeyIdentifier.from_public_key(public).digest
            if digest == signer.key_id:
                return cert
        elif cert.serial_number == signer.serial:
            issuer = _ax509.Name.load(cert.issuer.public_bytes())
            if issuer == signer.issuer:
                return cert
    raise _CheckError(
        "SIGNER_NOT_FOUND",
        "the signer's certificate is neither in the signature nor among the trust roots",
    )


def _hash(name: str) -> hashes.HashAlgorithm:
    if name in _WEAK_DIGESTS:
        raise _CheckError("WEAK_ALGORITHM", f"digest {name} is refused (RFC 8551 §2.1)")
    if name not in _DIGESTS:
        raise _CheckError("UNSUPPORTED_ALGORITHM", f"unsupported digest algorithm {name}")
    return _DIGESTS[name]()


def _check_signature(signer: _SignerInfo, content: bytes, content_type: str, key: Any) -> None:
    """RFC 5652 §5.4 (message digest and signed attributes) and §5.6 (signature value)."""
    digest_algorithm = _hash(signer.digest)
    if signer.signed_attrs is not None:
        if len(signer.content_types) != 1 or len(signer.digests) != 1:
            raise _CheckError(
                "MISSING_ATTRIBUTE",
                "signed attributes must hold exactly one contentType and one messageDigest",
            )
        if signer.content_types[0] != content_type:
            raise _CheckError(
                "CONTENT_TYPE_MISMATCH",
                "the signed contentType attribute differs from the encapsulated content type",
            )
        computed = hashes.Hash(digest_algorithm)
        computed.update(content)
        if computed.finalize() != signer.digests[0]:
            message = (
                "the content does not match the signature's message digest: it was altered "
                "after signing (changed, reordered or re-cased bytes, or line ends)"
            )
            if b"\n" in content and b"\r\n" not in content:
                message += (
                    "; its lines end in bare LF, as after XML carriage: restore CRLF "
                    "(restore_crlf, RFC 3923 §6.4) before verifying"
                )
            raise _CheckError("CONTENT_MISMATCH", message)
        data = signer.signed_attrs
    else:
        if content_type != _ID_DATA:
            raise _CheckError(
                "MISSING_ATTRIBUTE", "signed attributes are required for non-data content"
            )
        data = content
    try:
        _verify_value(signer, key, data, digest_algorithm)
    except InvalidSignature:
        what = (
            "signed attributes (they or the signature were altered)"
            if signer.signed_attrs is not None
            else "content (it or the signature was altered after signing)"
        )
        raise _CheckError(
            "BAD_SIGNATURE",
            f"the signature value does not verify over the {what} with the signer's key",
        ) from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise _CheckError("UNSUPPORTED_ALGORITHM", f"cannot check this signature: {exc}") from None


def _verify_value(
    signer: _SignerInfo, key: Any, data: bytes, digest_algorithm: hashes.HashAlgorithm
) -> None:
    algo = signer.signature_algo
    if isinstance(key, rsa.RSAPublicKey):
        if algo == "rsassa_pss" and signer.pss_params is not None:
            hash_name, mgf_name, salt = signer.pss_params
            key.verify(
                signer.signature,
                data,
                padding.PSS(mgf=padding.MGF1(_hash(mgf_name)), salt_length=salt),
                _hash(hash_name),
            )
            return
        if algo == "rsassa_pkcs1v15":
            chosen = _hash(signer.signature_hash) if signer.signature_hash else digest_algorithm
            key.verify(signer.signature, data, padding.PKCS1v15(), chosen)
            return
    elif isinstance(key, ec.EllipticCurvePublicKey) and algo == "ecdsa":
        chosen = _hash(signer.signature_hash) if signer.signature_hash else digest_algorithm
        key.verify(signer.signature, data, ec.ECDSA(chosen))
        return
    elif isinstance(key, ed25519.Ed25519PublicKey) and algo == "ed25519":
        key.verify(signer.signature, data)
        return
    raise _CheckError(
        "UNSUPPORTED_ALGORITHM",
        f"signature algorithm {algo} does not fit a {type(key).__name__}",
    )


def _utc(moment: _dt.datetime) -> _dt.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_dt.UTC)
    return moment.astimezone(_dt.UTC)


def _stamp(moment: _dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_usage(cert: x509.Certificate) -> None:
    """RFC 8550 §4.4.2 and §4.4.4: keyUsage and extendedKeyUsage must allow signing mail."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not (usage.digital_signature or usage.content_commitment):
            raise _CheckError(
                "WRONG_KEY_USAGE",
                "the signer certificate's keyUsage allows neither digitalSignature nor "
                "nonRepudiation (RFC 8550 §4.4.2)",
            )
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(extended):
        raise _CheckError(
            "WRONG_KEY_USAGE",
            "the signer certificate's extendedKeyUsage lacks emailProtection (RFC 8550 §4.4.4)",
        )


def _check_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    now: _dt.datetime,
) -> None:
    """The signer certificate chains to a trust root at ``now`` (RFC 5280 §6)."""
    when = _utc(now)
    if when < leaf.not_valid_before_utc:
        raise _CheckError(
            "NOT_YET_VALID",
            f"the signer certificate is not valid before {_stamp(leaf.not_valid_before_utc)}",
        )
    if when > leaf.not_valid_after_utc:
        raise _CheckError(
            "EXPIRED",
            f"the signer certificate expired at {_stamp(leaf.not_valid_after_utc)}",
        )
    _check_usage(leaf)
    if not trust:
        raise _CheckError("UNTRUSTED", "no trust roots were given")
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(list(trust)))
            .time(when)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        raise _CheckError(
            "UNTRUSTED", f"the signer certificate does not chain to a trust root: {exc}"
        ) from None


def _signer_uris(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    except ValueError:
        return ()
    return tuple(names.get_values_for_type(x509.UniformResourceIdentifier))


#: Schemes naming a user@host address of record; RFC 3860 §3 (im:), RFC 3859 §3 (pres:),
#: RFC 3261 §19.1 (sip:, sips:), RFC 5122 (xmpp:).
_AOR_SCHEMES = frozenset({"im", "pres", "sip", "sips", "xmpp"})


#: How many URIs :func:`_identity` remembers: the gateway judges the same few senders and
#: CPIM Froms over and over (least recently used ones are forgotten). Only URIs of at most
#: :data:`IDENTITY_REMEMBERED_LENGTH` characters are kept, so the memory stays small
#: (about 2 MiB at most) whatever long From a sender writes.
IDENTITIES_REMEMBERED = 4096
IDENTITY_REMEMBERED_LENGTH = 512


def _identity(uri: str) -> tuple[str, str, str] | None:
    """:func:`_read_identity`, remembered for the URIs the gateway sees again and again."""
    if len(uri) > IDENTITY_REMEMBERED_LENGTH:
        return _read_identity(uri)
    return _remembered_identity(uri)


def _read_identity(uri: str) -> tuple[str, str, str] | None:
    """(scheme, user, host) of an address-of-record URI, or None for other URIs.

    The user part is decoded and compared exactly; the host is case-insensitive
    (RFC 3986 §6.2.2.1). SIP parameters and headers, ports, passwords, XMPP resources and
    query parts do not name a different person and are dropped (RFC 3923 §6.3: ignore the
    resource). Each scheme is split where its grammar puts the user's end, because a user
    may hold ``;``, ``?`` or ``#``: a SIP user ends at the first ``@`` (RFC 3261 §25.1
    ``user`` allows ``;`` and ``?``: ``sip:who?@x``), an ``im:``/``pres:`` URI at its
    ``?headers`` (RFC 3860 §3.2, which encodes the rest), an ``xmpp:`` address is read as
    the gateway writes it (``%``, ``?``, ``#`` percent-encoded: :func:`gateway_jid`) and a
    bare JID, as a stanza 'from' gives it, is taken as it is (RFC 7622 §3.1).

    A pure function of ``uri``, so :func:`_identity` may remember its answers.
    """
    text = uri.strip()
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1 : -1].strip()
    scheme, sep, rest = text.partition(":")
    if not sep or "@" not in text or not scheme.isalpha():
        scheme, rest = "jid", text  # a bare JID, as an XMPP stanza 'from' gives it
    scheme = scheme.lower()
    if scheme not in _AOR_SCHEMES and scheme != "jid":
        return None
    if scheme in ("xmpp", "jid"):
        if scheme == "xmpp":
            if rest.startswith("//"):  # xmpp://authority/node@host
                rest = rest[2:].partition("/")[2]
            try:
                rest = gateway_jid("xmpp:" + rest)
            except ParseError:
                return None
        scheme, rest = "xmpp", rest.partition("/")[0]  # without the XMPP resource
    elif scheme in ("im", "pres"):
        rest = rest.partition("?")[0].partition("#")[0]
    user, at, host = rest.partition("@")
    if not at or not user:
        return None
    for stop in "/;?#":
        host = host.partition(stop)[0]
    # drop the port (an IPv6 literal keeps its brackets)
    host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    host = _ascii_host(host.lower().rstrip("."))
    if scheme in ("sip", "sips"):
        user = user.partition(":")[0]  # sip:user:password@host
    if scheme != "xmpp":
        user = unquote(user)
        return scheme, user, host
    # XEP-0106 §4.2 / RFC 7247 §6: the JID d\27artagnan is the user d'artagnan of im:
    # and sip: (docs/addresses.md "Conversion between schemes")
    if not is_canonical_localpart(user):
        # foo\5cbar unescapes to the user of foo\5c5cbar (XEP-0106 §7): it names no
        # user of another scheme, only itself ('/' never ends up in a host here)
        return scheme, user, f"{host}/xep-0106-non-canonical"
    return scheme, unescape_localpart(user), host


_remembered_identity = functools.lru_cache(maxsize=IDENTITIES_REMEMBERED)(_read_identity)


def _ascii_host(host: str) -> str:
    """A host in IDNA A-labels, as im:/sip: write it (a JID domain may be in U-labels,
    RFC 7622 §3.2); the host as it is when it has no A-label form."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _simple(uri: str) -> str:
    """Scheme and authority in lower case, the rest as written (RFC 3986 §6.2.2.1)."""
    scheme, _, rest = uri.strip().partition(":")
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = "//" + authority.lower() + slash + path
    return scheme.lower() + ":" + rest


def match_sender(expected: str, uris: Sequence[str], *, across_schemes: bool = True) -> str | None:
    """The URI among ``uris`` (a certificate's subjectAltName URIs) naming ``expected``.

    Same URI after normalisation (scheme and host case-insensitive, user part exact) is a
    match. With ``across_schemes`` (the default), ``im:``, ``pres:``, ``sip:``, ``sips:`` and
    ``xmpp:`` URIs (or a bare JID) of the same user@host are the same identity: RFC 3923 §6.3
    puts a user's im: and pres: URIs in one certificate, and gateways map one user@host
    between these schemes (RFC 3860 §3, RFC 7247 §6). Other schemes (``tel:``, ``mailto:``,
    ``https:``) match only themselves. An exact-scheme match is preferred.
    """
    wanted = _identity(expected)
    if wanted is None:
        plain = _simple(expected)
        return next((uri for uri in uris if _simple(uri) == plain), None)
    fallback: str | None = None
    for uri in uris:
        have = _identity(uri)
        if have is None or have[1:] != wanted[1:]:
            continue
        if have[0] == wanted[0]:
            return uri
        if across_schemes and fallback is None:
            fallback = uri
    return fallback


def _load_certificate(der: bytes) -> x509.Certificate | None:
    """A certificate carried in a signature, or None when it cannot be read in full.

    cryptography parses lazily, so every field used later is touched here; a certificate
    that fails is ignored (the signer is then not found, or the chain not built).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. non-positive serial numbers (RFC 5280)
            cert = x509.load_der_x509_certificate(der)
            cert.subject.rfc4514_string()
            cert.issuer.public_bytes()
            cert.public_key()
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            for _extension in cert.extensions:
                pass
            if cert.serial_number <= 0:
                return None
    except Exception:  # noqa: BLE001 - any unreadable certificate is simply not a candidate
        return None
    return cert


def _describe(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return repr(cert.subject)


def verify(
    payload: Payload,
    trust: Sequence[x509.Certificate],
    *,
    now: _dt.datetime,
    expected_sender: str | None = None,
    intermediates: Sequence[x509.Certificate] = (),
) -> Verification:
    """Verify multipart/signed or application/pkcs7-mime signed-data byte-exactly.

    RFC 5652 §5.4/§5.6 for the signature, RFC 5280 §6 (via ``cryptography.x509.verification``)
    for the chain to ``trust`` at ``now`` (naive means UTC), RFC 8550 §4.4 for key usage.
    ``intermediates`` add to the certificates carried in the signature. With several
    signers, the first that verifies is reported. Raises :class:`ParseError` (``SMIME_*``)
    only when the object cannot be read as a signed object at all; every other failure is a
    ``Verification`` with ``valid=False`` and ``code``/``error`` saying why.
    """
    content, signed = _extract(payload)
    candidates = [cert for der in signed.certificates if (cert := _load_certificate(der))]
    if not signed.signers:
        return Verification(
            False, content, None, (), None, "the signature has no signer", code="NO_SIGNER"
        )
    first: Verification | None = None
    for signer in signed.signers:
        result = _verify_signer(
            signer,
            content=content,
            signed=signed,
            candidates=candidates,
            intermediates=intermediates,
            trust=trust,
            now=now,
            expected_sender=expected_sender,
        )
        if result.valid:
            return result
        if first is None or (first.signer is None and result.signer is not None):
            first = result
    assert first is not None
    return first


def _verify_signer(
    signer: _SignerInfo,
    *,
    content: bytes,
    signed: _SignedData,
    candidates: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    now: _dt.datetime,
    expected_sender: str | None,
) -> Verification:
    cert: x509.Certificate | None = None
    try:
        cert = _find_signer_certificate(signer, [*candidates, *intermediates, *trust])
        _check_signature(signer, content, signed.content_type, cert.public_key())
        others = [c for c in [*candidates, *intermediates] if c != cert]
        _check_chain(cert, others, trust, now)
        failure: _CheckError | None = None
    except _CheckError as exc:
        failure = exc
    uris = _signer_uris(cert) if cert is not None else ()
    matched = match_sender(expected_sender, uris) if expected_sender is not None else None
    return Verification(
        valid=failure is None,
        content=content,
        signer_subject=_describe(cert) if cert is not None else None,
        signer_uris=uris,
        matches_sender=None if expected_sender is None else matched is not None,
        error=None if failure is None else failure.message,
        code=None if failure is None else failure.code,
        matched_uri=matched,
        signer=cert,
    )


# --------------------------------------------------------------------------------------------
# Encryption


def encrypt(content: bytes, recipients: Sequence[x509.Certificate]) -> Payload:
    """application/pkcs7-mime; smime-type=enveloped-data (DER, binary, AES-256-CBC).

    RFC 8551 §3.3: ``content`` (normally a whole MIME entity, e.g. a multipart/signed with
    its Content-Type line: sign first, then encrypt, RFC 3923 §6.5) is encrypted byte for
    byte for each recipient (RSA key transport; the library supports no other).
    """
    if not recipients:
        raise SmimeError("SMIME_NO_RECIPIENT", "encrypt needs at least one recipient")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(content)
    for cert in recipients:
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise SmimeError(
                "SMIME_UNSUPPORTED_RECIPIENT",
                f"recipient {_describe(cert)} has a {type(cert.public_key()).__name__}; "
                "only RSA recipients can be encrypted to",
                hint="give the recipient an RSA certificate for encryption",
            )
        builder = builder.add_recipient(cert)
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return Payload(content_type=ENVELOPED_CONTENT_TYPE, body=der)


def decrypt(payload: Payload, certificate: x509.Certificate, key: PrivateKeyTypes) -> bytes:
    """The exact bytes that were encrypted.

    :class:`ParseError` when the payload is not a readable enveloped-data object,
    :class:`DecryptionError` when this certificate and key cannot open it.
    """
    media, params = _parse_content_type(payload.content_type)
    smime_type = params.get("smime-type", "enveloped-data").lower()
    if media not in _PKCS7_MIME_TYPES or smime_type != "enveloped-data":
        raise ParseError(
            "SMIME_NOT_ENCRYPTED",
            f"{payload.content_type!r} is not application/pkcs7-mime enveloped-data",
            hint="RFC 8551 §3.3",
        )
    der = _pkcs7_der(payload.body)
    try:
        kind = _cms.ContentInfo.load(der, strict=True)["content_type"].native
    except Exception as exc:  # asn1crypto raises many types on bad input
        raise ParseError(
            "SMIME_BAD_CMS", f"the body is not a readable CMS object: {exc}", hint="RFC 5652"
        ) from exc
    if kind != "enveloped_data":
        raise ParseError("SMIME_NOT_ENCRYPTED", f"the CMS object is {kind}, not envelopedData")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SmimeError("SMIME_UNSUPPORTED_KEY", "only RSA keys can decrypt (RSA key transport)")
    try:
        return pkcs7.pkcs7_decrypt_der(der, certificate, key, [])
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecryptionError(
            f"cannot decrypt: {exc}",
            hint="the object is not addressed to this certificate, or the key does not match",
        ) from None


# --------------------------------------------------------------------------------------------
# CR restoration for XML carriage


_BARE_LF = re.compile(rb"(?<!\r)\n")


def _crlf(data: bytes) -> bytes:
    return _BARE_LF.sub(b"\r\n", data)


def _restore_headers(data: bytes, out: bytearray) -> int | None:
    """Copy the header block at the start of ``data`` with CRLF line ends; return where the
    body starts, or None when there is no empty line (the whole input was headers)."""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            out += data[pos:]
            return None
        line = data[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        out += line + CRLF
        pos = end + 1
        if not line:
            return pos
    return None


def _restore_entity(data: bytes, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        out += data
        return
    start = len(out)
    body_start = _restore_headers(data, out)
    if body_start is None:
        return
    try:
        block = _read_header_block(bytes(out[start:]))
    except ParseError:
        out += data[body_start:]
        return
    body = data[body_start:]
    media, params = _parse_content_type(block.get("Content-Type") or "text/plain")
    encoding = (block.get("Content-Transfer-Encoding") or "").lower()
    if media.startswith("multipart/") and params.get("boundary"):
        _restore_multipart(body, params["boundary"].encode("utf-8", "replace"), out, depth)
    elif media == "message/cpim":
        inner = _restore_headers(body, out)  # RFC 3862 §2: CPIM headers, empty line
        if inner is not None:
            _restore_entity(body[inner:], out, depth + 1)
    elif media in ("message/rfc822", "message/global"):
        _restore_entity(body, out, depth + 1)
    elif media.startswith("text/") or encoding in ("base64", "quoted-printable"):
        # Text is CRLF-canonical (RFC 2046 §4.1.1, RFC 8551 §3.1.1); base64 and
        # quoted-printable text has CRLF line breaks that decoding ignores (RFC 2045 §6).
        out += _crlf(body)
    else:
        out += body  # binary content: a lost CR cannot be told from a real LF


def _restore_multipart(body: bytes, boundary: bytes, out: bytearray, depth: int) -> None:
    delimiters = _find_delimiters(body, boundary)
    if not delimiters:
        out += _crlf(body)
        return
    out += _crlf(body[: delimiters[0][0]])  # preamble
    for index, (_, line_start, next_start, closing) in enumerate(delimiters):
        if line_start:
            out += CRLF  # the line break before a delimiter belongs to it
        line = body[line_start:next_start].rstrip(b"\r\n")
        out += line
        if next_start > line_start + len(line):
            out += CRLF
        if closing:
            out += _crlf(body[next_start:])  # epilogue
            return
        part_end = delimiters[index + 1][0] if index + 1 < len(delimiters) else len(body)
        _restore_entity(body[next_start:part_end], out, depth + 1)
    # no close delimiter: the last part ran to the end and was restored above


def restore_crlf(text: bytes) -> bytes:
    """Restore the CRLF line ends an XML parser turned into LF (RFC 3923 §6.4, §8).

    ``text`` is a whole MIME entity as carried in ``<e2e/>`` (its ``Content-Type`` header
    block included), after XML end-of-line handling (XML 1.0 §2.11). CRLF is restored only
    where MIME canonical form makes line breaks CRLF: header blocks (MIME, and CPIM per RFC
    3862 §2), multipart delimiter lines, preamble and epilogue (RFC 2046 §5.1.1), ``text/*``
    content (RFC 2046 §4.1.1, RFC 8551 §3.1.1) and the encoded lines of base64 and
    quoted-printable parts (RFC 2045 §6). Binary parts are copied untouched: their lost CRs
    cannot be recovered, and their signature then fails, as it must. Existing CRLFs stay,
    so the function is idempotent and leaves canonical input unchanged.
    """
    out = bytearray()
    _restore_entity(text, out, 0)
    return bytes(out)
