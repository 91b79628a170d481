"""Laws of canonical.smime, checked with hypothesis on generated MIME entities.

- verify(sign(e)).content == e, and the result is valid;
- any single changed byte of the signed content, or of the signature value, fails;
- an XML-carried text object (every CR lost) verifies again after restore_crlf, which is
  idempotent and leaves canonical text objects unchanged;
- decrypt(encrypt(b)) == b for any bytes;
- malformed or mutated input raises ParseError or gives a Verification, nothing else;
- sender matching ignores scheme (among im/pres/sip/sips/xmpp) and host case.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canonical import smime
from canonical.envelope import Payload
from canonical.errors import ParseError
from tests import pki

NOW = pki.NOW
CA = pki.make_ca("property CA")
SIGNER = pki.make_leaf(CA, "Prop", uris=("im:prop@example.com",))
EC_SIGNER = pki.make_leaf(CA, "Prop EC", uris=("im:prop@example.com",), key_kind="ec")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-",
    min_size=1,
    max_size=12,
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)
text_lines = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")),
    max_size=6,
)


def header_block(content_type: str, extra: list[tuple[str, str]]) -> bytes:
    lines = [f"Content-Type: {content_type}"] + [f"X-{n}: {v}" for n, v in extra]
    return "".join(line + "\r\n" for line in lines).encode() + b"\r\n"


@st.composite
def text_entities(draw: st.DrawFn) -> bytes:
    """A CRLF-canonical text entity, optionally wrapped as Message/CPIM."""
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    lines = draw(text_lines)
    body = "\r\n".join(lines).encode("utf-8") + (b"\r\n" if draw(st.booleans()) else b"")
    inner = header_block("text/plain; charset=utf-8", extra) + body
    if not draw(st.booleans()):
        return inner
    cpim = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    cpim_block = "".join(f"{n}: {v}\r\n" for n, v in cpim).encode() + b"\r\n"
    return b"Content-type: Message/CPIM\r\n\r\n" + cpim_block + inner


@st.composite
def binary_entities(draw: st.DrawFn) -> bytes:
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    return header_block("application/octet-stream", extra) + draw(st.binary(max_size=300))


entities = st.one_of(text_entities(), binary_entities())


def lf(data: bytes) -> bytes:
    """XML 1.0 §2.11 end-of-line handling."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def fails(payload: Payload) -> bool:
    try:
        return not smime.verify(payload, [CA.cert], now=NOW).valid
    except ParseError:
        return True


@SETTINGS
@given(entity=entities, use_ec=st.booleans())
def test_verify_of_sign_gives_back_the_entity(entity: bytes, use_ec: bool) -> None:
    signer = EC_SIGNER if use_ec else SIGNER
    result = smime.verify(smime.sign(entity, signer.cert, signer.key), [CA.cert], now=NOW)
    assert result.valid, result.error
    assert result.content == entity


@SETTINGS
@given(entity=entities, data=st.data())
def test_any_changed_content_byte_fails(entity: bytes, data: st.DataObject) -> None:
    payload = smime.sign(entity, SIGNER.cert, SIGNER.key)
    start = payload.body.index(b"\r\n") + 2
    index = start + data.draw(st.integers(0, len(entity) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    body = bytearray(payload.body)
    body[index] ^= flip
    assert fails(Payload(payload.content_type, bytes(body)))


@SETTINGS
@given(entity=entities, data=st.data())
def test_any_changed_signature_value_byte_fails(entity: bytes, data: st.DataObject) -> None:
    payload = smime.sign(entity, SIGNER.cert, SIGNER.key)
    _, der = smime._split_signed(payload)
    # RSA-2048: the signature value is the last 256 bytes of the SignerInfo (and the DER).
    index = len(der) - 1 - data.draw(st.integers(0, 255), label="from the end")
    changed = bytearray(der)
    changed[index] ^= data.draw(st.integers(1, 255), label="xor")
    body = payload.body.replace(smime._base64_lines(der), smime._base64_lines(bytes(changed)))
    result = smime.verify(Payload(payload.content_type, body), [CA.cert], now=NOW)
    assert not result.valid
    assert result.code == "BAD_SIGNATURE"


@SETTINGS
@given(entity=text_entities())
def test_xml_carried_text_object_verifies_after_restore_crlf(entity: bytes) -> None:
    mime = smime.entity_from_payload(smime.sign(entity, SIGNER.cert, SIGNER.key))
    restored = smime.restore_crlf(lf(mime))
    assert restored == mime
    result = smime.verify(smime.payload_from_entity(restored), [CA.cert], now=NOW)
    assert result.valid
    assert result.content == entity


@SETTINGS
@given(data=st.binary(max_size=400))
def test_restore_crlf_is_idempotent_and_total(data: bytes) -> None:
    once = smime.restore_crlf(data)
    assert smime.restore_crlf(once) == once


@SETTINGS
@given(entity=text_entities())
def test_restore_crlf_leaves_canonical_text_unchanged(entity: bytes) -> None:
    assert smime.restore_crlf(entity) == entity


@SETTINGS
@given(content=st.binary(max_size=2000))
def test_decrypt_of_encrypt_gives_back_the_bytes(content: bytes) -> None:
    payload = smime.encrypt(content, [SIGNER.cert])
    assert smime.decrypt(payload, SIGNER.cert, SIGNER.key) == content


VECTOR_TIME = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def s01(vectors_dir: Path) -> tuple[bytes, bytes, x509.Certificate]:
    """s01's bytes, its signed content, and its signer certificate."""
    signed = vectors_dir / "signed"
    data = (signed / "s01-multipart-signed.mime").read_bytes()
    content = smime.signed_content(smime.payload_from_entity(data))
    assert content is not None
    cert = x509.load_pem_x509_certificate((signed / "test-signer-cert.pem").read_bytes())
    return data, content, cert


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_vector_raises_only_parse_errors_and_never_validates_other_content(
    s01: tuple[bytes, bytes, x509.Certificate], data: st.DataObject
) -> None:
    original, content, cert = s01
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        index = data.draw(st.integers(0, len(mutated) - 1), label="index")
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]), label="action")
        if action == "flip":
            mutated[index] ^= data.draw(st.integers(1, 255), label="xor")
        elif action == "delete":
            del mutated[index]
        else:
            mutated.insert(index, data.draw(st.integers(0, 255), label="byte"))
    raw = bytes(mutated)
    smime.restore_crlf(raw)
    try:
        payload = smime.payload_from_entity(raw)
        smime.signed_content(payload)
        result = smime.verify(payload, [cert], now=VECTOR_TIME)
    except ParseError as exc:
        code: str | None = exc.code
    else:
        code = None
        if result.valid:
            assert result.content == content
    assert code is None or code.startswith("SMIME_")


@SETTINGS
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        [
            'multipart/signed; boundary=b; protocol="application/pkcs7-signature"',
            "application/pkcs7-mime; smime-type=signed-data",
            "application/pkcs7-mime; smime-type=enveloped-data",
        ]
    ),
)
def test_random_bodies_raise_only_parse_errors(body: bytes, content_type: str) -> None:
    payload = Payload(content_type, body)
    with contextlib.suppress(ParseError):
        smime.verify(payload, [CA.cert], now=NOW)
    with contextlib.suppress(ParseError, smime.DecryptionError):
        smime.decrypt(payload, SIGNER.cert, SIGNER.key)


users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=10)
hosts = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    min_size=1,
    max_size=3,
).map(".".join)
schemes = st.sampled_from(["im", "pres", "sip", "sips", "xmpp"])


@SETTINGS
@given(user=users, host=hosts, ours=schemes, theirs=schemes)
def test_same_user_at_host_matches_across_schemes_and_host_case(
    user: str, host: str, ours: str, theirs: str
) -> None:
    uri = f"{ours}:{user}@{host}"
    assert smime.match_sender(f"{theirs.upper()}:{user}@{host.upper()}", [uri]) == uri
    assert smime.match_sender(f"{theirs}:{user}x@{host}", [uri]) is None
    assert smime.match_sender(f"{theirs}:{user}@x{host}", [uri]) is None
