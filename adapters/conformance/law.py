"""Laws L1-L3 checked on generated examples (hypothesis), as property cases.

DESIGN.md "Lossless mapping": L1 (canonical survives the trip), L2 (native survives the
trip, losses recorded), L3 (signatures survive). The generators build RFC 3862 objects by
construction — header by header, escapes per §2.3, namespaces declared before use (§3.4)
— independently of :mod:`canonical.cpim`, so they test the adapter and not a shared
parser. Signed examples are built here too (RFC 1847 multipart/signed around the exact
entity, a detached DER CMS signature, RFC 8551 §3.5) with a throw-away CA.

Each example is graded like any case; the first FAIL is shrunk by hypothesis to a minimal
example, which the outcome shows.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from adapters.conformance.case import Case, Check, Expect, Input
from adapters.conformance.checks import Bench, explore, judge
from adapters.conformance.folder import cpim_features
from adapters.conformance.grade import Grade, Outcome
from adapters.conformance.journey import envelope_into
from adapters.conformance.target import Target
from adapters.contract import Capability
from canonical.envelope import Payload

DOMAINS = ("example.com", "example.net", "example.org")
SCHEMES = ("im", "sip", "xmpp", "pres", "sips")
LANGS = ("en", "fr", "de-CH", "ja", "zh-Hant", "x-private")
#: Escapes a generator may write inside a header value (RFC 3862 §2.3).
ESCAPES = ("\\\\", "\\t", "\\n", "\\u0007", "\\u007F", "\\r")

ASCII_TEXT = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\")
WIDE_TEXT = st.characters(
    min_codepoint=0xA1, max_codepoint=0x2FFFF, categories=("L", "N", "P", "S")
)


def _words(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Header value text: no CTL, no raw backslash, no leading or trailing space."""
    piece = st.one_of(st.text(alphabet, min_size=1, max_size=8), st.sampled_from(ESCAPES))
    return st.lists(piece, min_size=1, max_size=6).map(" ".join)


def values(*, wide: bool = True) -> st.SearchStrategy[str]:
    return _words(st.one_of(ASCII_TEXT, WIDE_TEXT) if wide else ASCII_TEXT)


@st.composite
def uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    user = draw(st.from_regex(r"[a-z][a-z0-9._-]{0,11}", fullmatch=True))
    uri = f"{scheme}:{user}@{draw(st.sampled_from(DOMAINS))}"
    if scheme in {"sip", "sips"} and draw(st.booleans()):
        uri += ";transport=tcp"
    if scheme == "xmpp" and draw(st.booleans()):
        uri += "/phone"
    return uri


@st.composite
def parties(draw: st.DrawFn) -> str:
    name = draw(st.none() | st.from_regex(r"[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8})?", fullmatch=True))
    uri = draw(uris())
    return f"{name} <{uri}>" if name else f"<{uri}>"


@st.composite
def datetimes(draw: st.DrawFn) -> str:
    """RFC 3339 §5.6 date-time, as RFC 3862 §4.4 requires."""
    moment = draw(
        st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1))
    )
    fraction = draw(st.sampled_from(["", ".5", ".123", ".000001"]))
    offset = draw(st.sampled_from(["Z", "-00:00", "+01:00", "-05:30"]))
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset


@st.composite
def cpim_bodies(draw: st.DrawFn, *, wide: bool = True, rich: bool = True) -> bytes:
    """A message/cpim object in body form (RFC 3862 §2: CPIM headers, blank line, entity)."""
    lines: list[str] = []
    if draw(st.integers(0, 9)) > 0:
        lines.append(f"From: {draw(parties())}")
    lines += [f"To: {p}" for p in draw(st.lists(parties(), min_size=1, max_size=3))]
    if rich:
        lines += [f"cc: {p}" for p in draw(st.lists(parties(), max_size=2))]
        if draw(st.booleans()):
            lines.append(f"DateTime: {draw(datetimes())}")
        langs = draw(st.lists(st.none() | st.sampled_from(LANGS), max_size=3, unique=True))
        for lang in langs:
            param = f";lang={lang}" if lang else ""
            lines.append(f"Subject:{param} {draw(values(wide=wide))}")
        prefixes = draw(
            st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=2, unique=True)
        )
        required: list[str] = []
        for index, prefix in enumerate(prefixes):
            lines.append(f"NS: {prefix} <urn:example:cpimgw:{index}>")
            for local in draw(
                st.lists(
                    st.from_regex(r"[A-Z][A-Za-z0-9-]{0,9}", fullmatch=True),
                    min_size=1,
                    max_size=2,
                    unique=True,
                )
            ):
                params = draw(st.sampled_from(["", ";p=1", ";q=token"]))
                lines.append(f"{prefix}.{local}:{params} {draw(values(wide=wide))}")
                required.append(f"{prefix}.{local}")
        with_require: bool = draw(st.booleans())
        if required and with_require:
            lines.append(f"Require: {','.join(required[:2])}")
    media = draw(
        st.sampled_from(
            ["text/plain; charset=utf-8", "text/html; charset=utf-8", "application/octet-stream"]
        )
        if rich
        else st.just("text/plain; charset=utf-8")
    )
    entity = [f"Content-Type: {media}"]
    if rich and draw(st.booleans()):
        entity.append(
            f"Content-ID: <{draw(st.from_regex(r'[a-z0-9]{4,10}', fullmatch=True))}@example.com>"
        )
    if media.startswith("text/"):
        text = draw(body_texts(wide=wide))
        body = text.encode("utf-8")
    else:
        body = draw(st.binary(max_size=200))
    head = "".join(f"{line}\r\n" for line in lines) + "\r\n"
    head += "".join(f"{line}\r\n" for line in entity) + "\r\n"
    return head.encode("utf-8") + body


#: Line structure a gateway must not touch in a body: CRLF, bare LF, bare CR, TAB, runs
#: of spaces (RFC 3862 §2.4: the entity is opaque).
LAYOUT = ("\r\n", "\n", "\r", "\t", "  ", "\r\n\r\n", " \r\n")


def body_texts(*, wide: bool = True) -> st.SearchStrategy[str]:
    """Text bodies mixing words with every line-ending and blank form."""
    letters = st.one_of(ASCII_TEXT, WIDE_TEXT) if wide else ASCII_TEXT
    piece = st.one_of(st.text(letters, min_size=1, max_size=12), st.sampled_from(LAYOUT))
    return st.lists(piece, max_size=16).map("".join)


@st.composite
def text_messages(draw: st.DrawFn) -> bytes:
    """A plain text message: From, To, maybe a DateTime, a short UTF-8 body."""
    lines = [f"From: {draw(parties())}", f"To: {draw(parties())}"]
    if draw(st.booleans()):
        lines.append(f"DateTime: {draw(datetimes())}")
    body = draw(st.text(st.one_of(ASCII_TEXT, WIDE_TEXT, st.just(" ")), min_size=1, max_size=120))
    head = "".join(f"{line}\r\n" for line in lines)
    head += "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    return head.encode("utf-8") + body.strip().encode("utf-8")


# --- a throw-away signer (RFC 8551 §3.5, RFC 1847 §2.1) ------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    """A CA and a leaf with ``im:``/``sip:`` subjectAltName URIs, PEM files on disk."""

    trust: tuple[Path, ...]
    sign: Callable[[bytes], Payload]


_SIGNER: list[Signer] = []


def signer() -> Signer:
    """The process-wide throw-away signer (made on first use; its files removed at exit)."""
    if _SIGNER:
        return _SIGNER[0]
    from cryptography import x509  # noqa: PLC0415 - only property runs sign
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import pkcs7  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpimgw conformance CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ada")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("im:ada@example.com"),
                    x509.UniformResourceIdentifier("sip:ada@example.com"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="cpimgw-conformance-"))
    atexit.register(shutil.rmtree, folder, True)
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def sign(entity: bytes) -> Payload:
        der = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(entity)
            .add_signer(leaf, key, hashes.SHA256())
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
            )
        )
        boundary = "cpimgw-conformance-" + base64.b32encode(der[-10:]).decode("ascii").strip("=")
        signature = base64.encodebytes(der).replace(b"\n", b"\r\n")
        body = (
            f"--{boundary}\r\n".encode("ascii")
            + entity
            + f"\r\n--{boundary}\r\n".encode("ascii")
            + b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + signature
            + f"\r\n--{boundary}--\r\n".encode("ascii")
        )
        content_type = (
            f'multipart/signed; boundary="{boundary}"; micalg=sha-256; '
            'protocol="application/pkcs7-signature"'
        )
        return Payload(content_type, body)

    _SIGNER.append(Signer((ca_path,), sign))
    return _SIGNER[0]


def _usage(*, cert_sign: bool) -> Any:
    from cryptography import x509  # noqa: PLC0415

    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- property runs ----------------------------------------------------------------------


class _Falsified(Exception):  # noqa: N818 - carries the failing example out of hypothesis
    def __init__(self, outcome: Outcome, example: Case) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome
        self.example = example


def _example(case: Case, check: Check, expect: Expect, form: str, data: bytes, **kw: Any) -> Case:
    return replace(
        case,
        check=check,
        expect=expect,
        input=Input(form=form, content_type=kw.pop("content_type", None), data=data),  # type: ignore[arg-type]
        **kw,
    )


def _native_wire(target: Target, body: bytes) -> bytes:
    """A native wire message of ``target`` made from a text message, or a rejected example."""
    try:
        mapped = target.mapper.from_canonical(envelope_into(target, Payload("message/cpim", body)))
        return target.mapper.encode(mapped.value)
    except Exception:  # noqa: BLE001 - an example the adapter cannot express is not used
        reject()


def _plan(
    case: Case, target: Target, bench: Bench, natives: st.SearchStrategy[bytes] | None
) -> tuple[st.SearchStrategy[Any], Callable[[Any], tuple[Case, frozenset[Capability]]]]:
    """The strategy of a property case and how one example becomes a graded case."""
    strategy = case.input.fields.get("strategy", "cpim")
    law = case.input.fields.get("law", "L1")
    base = case.capabilities
    if strategy == "cpim":

        def cpim(body: bytes) -> tuple[Case, frozenset[Capability]]:
            example = _example(
                case,
                Check.CANONICAL,
                Expect.IDENTICAL,
                "payload",
                body,
                content_type="message/cpim",
            )
            return example, base | cpim_features(body)

        return cpim_bodies(), cpim
    if strategy == "signed-cpim":
        seal = signer()

        def signed(body: bytes) -> tuple[Case, frozenset[Capability]]:
            payload = seal.sign(b"Content-type: Message/CPIM\r\n\r\n" + body)
            example = _example(
                case,
                Check.SIGNED,
                Expect.SAME_VERDICT,
                "payload",
                payload.body,
                content_type=payload.content_type,
                trust=seal.trust,
            )
            return example, base | cpim_features(body)

        return cpim_bodies(), signed
    if strategy == "native":
        wires = (
            natives
            if natives is not None
            else text_messages().map(lambda body: _native_wire(target, body))
        )
        if law == "L1-own":

            def own(wire: bytes) -> tuple[Case, frozenset[Capability]]:
                native = target.mapper.decode(wire)
                from adapters.conformance.journey import RECEIVED_AT  # noqa: PLC0415
                from canonical.envelope import Origin  # noqa: PLC0415

                try:
                    envelope = target.mapper.to_canonical(
                        native, origin=Origin(adapter=target.name), received_at=RECEIVED_AT
                    ).value
                except Exception:  # noqa: BLE001 - L2 reports it; L1-own needs an object
                    reject()
                payload = envelope.payload
                if payload is None:
                    reject()
                example = _example(
                    case,
                    Check.CANONICAL,
                    Expect.IDENTICAL,
                    "payload",
                    payload.body,
                    content_type=payload.content_type,
                )
                return example, base

            return wires, own

        def native(wire: bytes) -> tuple[Case, frozenset[Capability]]:
            return _example(case, Check.NATIVE, Expect.EQUAL, "native", wire), base

        return wires, native
    raise ValueError(f"unknown strategy {strategy!r} in case {case.id}")


def run_property(
    case: Case,
    target: Target,
    bench: Bench,
    *,
    examples: int | None = None,
    natives: st.SearchStrategy[bytes] | None = None,
) -> Outcome:
    """Check the case's law on generated examples; a FAIL is shrunk to a minimal example."""
    count = examples if examples is not None else int(case.input.fields.get("examples", "50"))
    strategy, make = _plan(case, target, bench, natives)
    graded: list[Outcome] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def holds(value: Any) -> None:
        example, needed = make(value)
        outcome = judge(example, explore(example, target, bench), target.missing(needed))
        if outcome.grade is Grade.FAIL:
            raise _Falsified(outcome, example)
        graded.append(outcome)

    try:
        holds()
    except _Falsified as falsified:
        shown = falsified.example.input.data[:400]
        return replace(
            falsified.outcome,
            detail=(f"falsified; minimal example {shown!r}: {falsified.outcome.detail}"),
        )
    except Exception as exc:  # noqa: BLE001 - hypothesis errors (unsatisfiable, flaky...)
        return Outcome(Grade.FAIL, f"property could not run: {type(exc).__name__}: {exc}")
    return _summarise(graded)


def _summarise(graded: list[Outcome]) -> Outcome:
    if not graded:
        return Outcome(Grade.FAIL, "no example could be generated")
    counts = {grade: sum(1 for o in graded if o.grade is grade) for grade in Grade}
    worst = (
        Grade.UNSUPPORTED
        if counts[Grade.UNSUPPORTED]
        else Grade.NON_STRICT
        if counts[Grade.NON_STRICT]
        else Grade.PASS
    )
    text = ", ".join(f"{n} {g.value}" for g, n in counts.items() if n)
    sample = next((o for o in graded if o.grade is worst), graded[0])
    losses = tuple(dict.fromkeys(loss for o in graded for loss in o.losses))
    detail = f"{len(graded)} examples: {text}"
    if worst is not Grade.PASS:
        detail += f"; e.g. {sample.detail}"
    return Outcome(worst, detail, losses[:20])
