"""``cpimgw smime sign|verify|encrypt|decrypt``: S/MIME on files, byte-exact.

Files are MIME entities: header lines (at least ``Content-Type:``), an empty line, the body.
``sign`` reads the entity to sign (a ``Content-type: Message/CPIM`` entity as in the
vectors) and writes ``Content-Type: multipart/signed; ...`` CRLF CRLF and the multipart body,
which ``verify`` reads back. ``--body-only`` writes the transport body alone (what a SIP
MESSAGE carries); ``--content-type`` makes ``verify``/``decrypt`` read such a body.
``-`` (or no file) reads stdin; ``--out`` writes a file instead of stdout.

Exit status: 0 success (for verify: the signature and chain are good, and the sender matches
when one is expected); 1 the check failed (invalid, tampered or unreadable signed object,
sender mismatch, cannot decrypt); 2 usage or I/O error (bad certificate or key file). The
format and the openssl equivalents are in docs/smime.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from canonical import cpim, smime
from canonical.envelope import Payload
from canonical.errors import GatewayError, ParseError


class UsageError(Exception):
    """A problem with the command line or its files: exit status 2."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``smime`` and its four actions."""
    parser = subparsers.add_parser(
        "smime",
        help="sign, verify, encrypt and decrypt S/MIME objects byte-exactly",
        description="S/MIME (RFC 8551) for CPIM entities; see docs/smime.md.",
    )
    actions = parser.add_subparsers(dest="smime_action", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(handler=usage)

    sign = actions.add_parser(
        "sign",
        help="wrap a MIME entity in multipart/signed (detached DER, binary)",
        description="Sign the exact bytes of a CRLF-canonical MIME entity (e.g. a "
        "'Content-type: Message/CPIM' file) and write the multipart/signed object.",
    )
    sign.add_argument("input", nargs="?", default="-", help="entity file, or - for stdin")
    sign.add_argument("--cert", required=True, help="signer certificate (PEM or DER)")
    sign.add_argument("--key", required=True, help="signer private key (PEM or DER, unencrypted)")
    sign.add_argument("--chain", action="append", default=[], help="intermediate certificates")
    sign.add_argument("--boundary", help="multipart boundary (default: derived from the content)")
    sign.add_argument("--micalg", choices=["sha-256", "sha-384", "sha-512"], default="sha-256")
    sign.add_argument("--pss", action="store_true", help="RSA-PSS instead of PKCS#1 v1.5")
    sign.add_argument(
        "--no-attributes",
        action="store_true",
        help="no signed attributes (no signingTime: RSA output is reproducible)",
    )
    _add_output(sign)
    sign.set_defaults(handler=run_sign)

    verify = actions.add_parser(
        "verify",
        help="check a multipart/signed or pkcs7-mime signed-data object",
        description="Verify byte-exactly; print the signer. Exit 0 only when valid.",
    )
    verify.add_argument("input", nargs="?", default="-", help="signed file, or - for stdin")
    verify.add_argument(
        "--trust", action="append", required=True, help="trusted root certificate(s) (PEM/DER)"
    )
    verify.add_argument(
        "--intermediate", action="append", default=[], help="extra intermediate certificates"
    )
    verify.add_argument(
        "--sender",
        help="expected sender URI (default: the CPIM From of a Message/CPIM content)",
    )
    verify.add_argument("--now", help="check at this ISO 8601 time instead of now (UTC if naive)")
    verify.add_argument(
        "--content-type", help="the input is a transport body with this Content-Type"
    )
    verify.add_argument("--content-out", help="write the signed content here when valid")
    verify.set_defaults(handler=run_verify)

    encrypt = actions.add_parser(
        "encrypt",
        help="encrypt a MIME entity to application/pkcs7-mime (AES-256)",
        description="Encrypt the exact bytes of the input for each recipient.",
    )
    encrypt.add_argument("input", nargs="?", default="-", help="file to encrypt, or -")
    encrypt.add_argument(
        "--recipient", action="append", required=True, help="recipient certificate(s) (RSA)"
    )
    _add_output(encrypt)
    encrypt.set_defaults(handler=run_encrypt)

    decrypt = actions.add_parser(
        "decrypt",
        help="decrypt application/pkcs7-mime enveloped-data",
        description="Write the exact bytes that were encrypted.",
    )
    decrypt.add_argument("input", nargs="?", default="-", help="encrypted file, or -")
    decrypt.add_argument("--cert", required=True, help="recipient certificate")
    decrypt.add_argument("--key", required=True, help="recipient private key (RSA)")
    decrypt.add_argument(
        "--content-type", help="the input is a transport body with this Content-Type"
    )
    decrypt.add_argument("--out", help="output file (default: stdout)")
    decrypt.set_defaults(handler=run_decrypt)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output file (default: stdout)")
    parser.add_argument(
        "--body-only",
        action="store_true",
        help="write only the body (the transport form), without the Content-Type line",
    )


# -------------------------------------------------------------------------------- files


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


def _write(name: str | None, data: bytes) -> None:
    if name is None or name == "-":
        stream: BinaryIO = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return
    try:
        Path(name).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {name}: {exc.strerror or exc}") from None


def _certificates(names: Sequence[str]) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for name in names:
        data = _read(name)
        try:
            if b"-----BEGIN" in data:
                found.extend(x509.load_pem_x509_certificates(data))
            else:
                found.append(x509.load_der_x509_certificate(data))
        except ValueError as exc:
            raise UsageError(f"{name}: not a PEM or DER certificate ({exc})") from None
    return found


def _certificate(name: str) -> x509.Certificate:
    return _certificates([name])[0]


def _key(name: str) -> PrivateKeyTypes:
    data = _read(name)
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{name}: the key is encrypted; decrypt it first (openssl pkey)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{name}: not a PEM or DER private key ({exc})") from None


def _payload(data: bytes, content_type: str | None) -> Payload:
    if content_type is not None:
        return Payload(content_type=content_type, body=data)
    return smime.payload_from_entity(data)


def _emit(payload: Payload, args: argparse.Namespace) -> None:
    _write(args.out, payload.body if args.body_only else smime.entity_from_payload(payload))


def _now(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)  # the shell reads the clock; canonical/ never does
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {text!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# -------------------------------------------------------------------------------- actions


def _fail_usage(exc: Exception) -> int:
    print(f"cpimgw smime: {exc}", file=sys.stderr)
    return 2


def run_sign(args: argparse.Namespace) -> int:
    """``cpimgw smime sign``."""
    try:
        entity = _read(args.input)
        cert, key = _certificate(args.cert), _key(args.key)
        chain = _certificates(args.chain)
        payload = smime.sign(
            entity,
            cert,
            key,
            chain=chain,
            boundary=args.boundary,
            micalg=args.micalg,
            attributes=not args.no_attributes,
            pss=args.pss,
        )
        _emit(payload, args)
    except (UsageError, GatewayError) as exc:
        return _fail_usage(exc)
    return 0


def _expected_sender(args: argparse.Namespace, content: bytes) -> tuple[str | None, str]:
    """The sender to check, and where it came from."""
    if args.sender:
        return args.sender, "--sender"
    try:
        message = cpim.parse(content)
    except (ParseError, ValueError):
        return None, ""
    if message.sender is None:
        return None, ""
    return message.sender.uri, "CPIM From"


def run_verify(args: argparse.Namespace) -> int:
    """``cpimgw smime verify``: 0 valid (and sender matches), 1 invalid, 2 usage/I/O."""
    try:
        data = _read(args.input)
        trust = _certificates(args.trust)
        intermediates = _certificates(args.intermediate)
        now = _now(args.now)
        payload = _payload(data, args.content_type)
    except UsageError as exc:
        return _fail_usage(exc)
    except ParseError as exc:
        print(f"invalid: {exc}")
        return 1
    try:
        content = smime.signed_content(payload)
        sender, source = _expected_sender(args, content or b"")
        result = smime.verify(
            payload, trust, now=now, expected_sender=sender, intermediates=intermediates
        )
    except ParseError as exc:
        print(f"invalid: {exc}")
        return 1
    status = 0
    if result.valid:
        print("valid: signature and certificate chain are good")
    else:
        print(f"invalid: {result.code}: {result.error}")
        status = 1
    claim = "" if result.valid else " (claimed, not verified)"
    print(f"signer: {result.signer_subject or 'unknown'}{claim}")
    for uri in result.signer_uris:
        print(f"uri: {uri}")
    if sender is None:
        print("sender: not checked (no --sender and no CPIM From)")
    elif result.matches_sender:
        print(f"sender: {sender} ({source}) matches {result.matched_uri}")
    else:
        print(f"sender: {sender} ({source}) MISMATCH: no subjectAltName URI names it")
        status = 1
    if status == 0 and args.content_out:
        try:
            _write(args.content_out, result.content)
        except UsageError as exc:
            return _fail_usage(exc)
    return status


def run_encrypt(args: argparse.Namespace) -> int:
    """``cpimgw smime encrypt``."""
    try:
        content = _read(args.input)
        recipients = _certificates(args.recipient)
        _emit(smime.encrypt(content, recipients), args)
    except (UsageError, GatewayError) as exc:
        return _fail_usage(exc)
    return 0


def run_decrypt(args: argparse.Namespace) -> int:
    """``cpimgw smime decrypt``: 0 decrypted, 1 cannot decrypt or not encrypted, 2 usage."""
    try:
        data = _read(args.input)
        cert, key = _certificate(args.cert), _key(args.key)
    except UsageError as exc:
        return _fail_usage(exc)
    try:
        plain = smime.decrypt(_payload(data, args.content_type), cert, key)
    except (ParseError, smime.DecryptionError) as exc:
        print(f"cpimgw smime: {exc}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        return _fail_usage(exc)
    try:
        _write(args.out, plain)
    except UsageError as exc:
        return _fail_usage(exc)
    return 0
