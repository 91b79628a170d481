"""canonical.smime: signing, verification, encryption and CR restoration (own behaviour).

Interoperability with the openssl CLI is in test_smime_openssl.py, laws in
test_smime_properties.py, the shipped vectors in test_smime_vectors.py.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canonical import smime
from canonical.envelope import Payload
from canonical.errors import ParseError
from tests import pki

NOW = pki.NOW
ENTITY = (
    b"Content-type: Message/CPIM\r\n"
    b"\r\n"
    b"From: Ada <im:ada@example.com>\r\n"
    b"To: Charles <im:charles@example.net>\r\n"
    b"DateTime: 2026-11-26T14:00:00Z\r\n"
    b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello, Charles.\r\n"
)


@pytest.fixture(scope="module")
def ca() -> pki.Credential:
    return pki.make_ca("smime test CA")


@pytest.fixture(scope="module")
def ada(ca: pki.Credential) -> pki.Credential:
    return pki.make_leaf(ca, "Ada", uris=("im:ada@example.com", "pres:ada@example.com"))


@pytest.fixture(scope="module")
def eve(ca: pki.Credential) -> pki.Credential:
    return pki.make_leaf(ca, "Eve", uris=("sip:eve@example.org",), key_kind="ec")


def make_intermediate(root: pki.Credential) -> pki.Credential:
    """A CA certificate signed by ``root`` (tests/pki.py makes only self-signed CAs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate CA")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    return pki.Credential(cert, key)


def make_tls_only_leaf(ca: pki.Credential) -> pki.Credential:
    """A leaf whose extendedKeyUsage allows TLS but not e-mail protection."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls only")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("im:tls@example.com")]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return pki.Credential(cert, key)


def parts_of(payload: Payload) -> list[bytes]:
    boundary = smime._parse_content_type(payload.content_type)[1]["boundary"]
    return smime._split_multipart(payload.body, boundary)


def signature_der(payload: Payload) -> bytes:
    _, der = smime._split_signed(payload)
    return der


def with_signature(payload: Payload, der: bytes) -> Payload:
    """``payload`` with its signature part's base64 replaced by that of ``der``."""
    old = base64.b64encode(signature_der(payload))
    lines_old = smime._base64_lines(signature_der(payload))
    assert old
    return Payload(payload.content_type, payload.body.replace(lines_old, smime._base64_lines(der)))


def vector(vectors_dir: Path, name: str) -> bytes:
    return (vectors_dir / "cpim" / "valid" / name).read_bytes()


# ---------------------------------------------------------------------------- signing


def test_signed_first_part_is_the_exact_entity(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    assert parts_of(payload)[0] == ENTITY
    result = smime.verify(payload, [ca.cert], now=NOW)
    assert result.valid, result.error
    assert result.content == ENTITY


@pytest.mark.parametrize(
    "name", ["001-minimal.cpim", "013-binary-png-body.cpim", "021-empty-body.cpim"]
)
def test_vector_entities_sign_and_verify_byte_for_byte(
    vectors_dir: Path, ada: pki.Credential, ca: pki.Credential, name: str
) -> None:
    entity = vector(vectors_dir, name)
    payload = smime.sign(entity, ada.cert, ada.key)
    result = smime.verify(payload, [ca.cert], now=NOW)
    assert result.valid, result.error
    assert result.content == entity


def test_signed_wrapper_follows_rfc_8551(ada: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, boundary="b1")
    assert payload.content_type == (
        'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b1"'
    )
    assert payload.is_signed
    assert payload.body.startswith(b"--b1\r\n" + ENTITY + b"\r\n--b1\r\n")
    assert payload.body.endswith(b"\r\n--b1--\r\n")
    second = parts_of(payload)[1]
    assert second.startswith(
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
    )
    lines = second.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert all(len(line) <= 76 for line in lines)


def test_default_boundary_derives_from_the_content(ada: pki.Credential) -> None:
    first = smime.sign(ENTITY, ada.cert, ada.key)
    again = smime.sign(ENTITY, ada.cert, ada.key)
    other = smime.sign(ENTITY.replace(b"Hello", b"Howdy"), ada.cert, ada.key)
    assert first.content_type == again.content_type
    assert first.content_type != other.content_type


def test_rsa_signature_without_attributes_is_reproducible(ada: pki.Credential) -> None:
    first = smime.sign(ENTITY, ada.cert, ada.key, attributes=False)
    assert smime.sign(ENTITY, ada.cert, ada.key, attributes=False) == first


def test_signature_without_attributes_verifies(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, attributes=False)
    assert smime.verify(payload, [ca.cert], now=NOW).valid


@pytest.mark.parametrize("micalg", ["sha-256", "sha-384", "sha-512"])
def test_ecdsa_signer_verifies_with_each_micalg(
    eve: pki.Credential, ca: pki.Credential, micalg: smime.Micalg
) -> None:
    payload = smime.sign(ENTITY, eve.cert, eve.key, micalg=micalg)
    assert f"micalg={micalg};" in payload.content_type
    result = smime.verify(payload, [ca.cert], now=NOW, expected_sender="sip:eve@example.org")
    assert result.valid, result.error
    assert result.matches_sender is True


def test_rsa_pss_signer_verifies(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, pss=True)
    _, signed = smime._extract(payload)
    assert signed.signers[0].signature_algo == "rsassa_pss"
    assert smime.verify(payload, [ca.cert], now=NOW).valid


def test_sign_refuses_bare_lf_in_the_mime_header_block(ada: pki.Credential) -> None:
    entity = b"Content-type: Message/CPIM\n\r\nFrom: <im:a@example.com>\r\n\r\n" + ENTITY[-50:]
    with pytest.raises(ParseError) as info:
        smime.sign(entity, ada.cert, ada.key)
    assert info.value.code == "SMIME_BARE_LF"
    assert info.value.offset == 26
    assert info.value.line == 1
    assert "CRLF" in str(info.value)


def test_sign_refuses_bare_lf_in_the_cpim_header_block(ada: pki.Credential) -> None:
    entity = ENTITY.replace(b"To: Charles <im:charles@example.net>\r\n", b"To: <im:c@x.net>\n")
    with pytest.raises(ParseError) as info:
        smime.sign(entity, ada.cert, ada.key)
    assert info.value.code == "SMIME_BARE_LF"
    assert "CPIM" in info.value.message


def test_sign_refuses_bare_lf_in_text_content(ada: pki.Credential) -> None:
    with pytest.raises(ParseError) as info:
        smime.sign(
            ENTITY.replace(b"Hello, Charles.\r\n", b"Hello,\nCharles.\r\n"), ada.cert, ada.key
        )
    assert info.value.code == "SMIME_BARE_LF"
    assert "text/plain" in info.value.message


def test_sign_refuses_bare_cr_in_a_header_block(ada: pki.Credential) -> None:
    with pytest.raises(ParseError) as info:
        smime.sign(ENTITY.replace(b"DateTime:", b"Date\rTime:"), ada.cert, ada.key)
    assert info.value.code == "SMIME_BARE_CR"


def test_sign_refuses_an_entity_without_an_empty_line(ada: pki.Credential) -> None:
    with pytest.raises(ParseError) as info:
        smime.sign(b"Content-Type: text/plain\r\nno blank line", ada.cert, ada.key)
    assert info.value.code == "SMIME_NO_BLANK_LINE"


def test_sign_keeps_bare_lf_and_cr_in_binary_content(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    entity = b"Content-Type: application/octet-stream\r\n\r\n\x00\n\r\r\n\xff"
    result = smime.verify(smime.sign(entity, ada.cert, ada.key), [ca.cert], now=NOW)
    assert result.valid
    assert result.content == entity


def test_sign_refuses_a_boundary_found_in_the_content(ada: pki.Credential) -> None:
    entity = b"Content-Type: text/plain\r\n\r\n--clash\r\n"
    with pytest.raises(smime.SmimeError) as info:
        smime.sign(entity, ada.cert, ada.key, boundary="clash")
    assert info.value.code == "SMIME_BOUNDARY_IN_CONTENT"


@pytest.mark.parametrize("boundary", ["", "ends with space ", "x" * 71, "semi;colon"])
def test_sign_refuses_a_boundary_rfc_2046_forbids(ada: pki.Credential, boundary: str) -> None:
    with pytest.raises(smime.SmimeError) as info:
        smime.sign(ENTITY, ada.cert, ada.key, boundary=boundary)
    assert info.value.code == "SMIME_BAD_BOUNDARY"


def test_sign_refuses_a_key_of_another_certificate(
    ada: pki.Credential, eve: pki.Credential
) -> None:
    with pytest.raises(smime.SmimeError) as info:
        smime.sign(ENTITY, ada.cert, eve.key)
    assert info.value.code == "SMIME_KEY_MISMATCH"


def test_sign_refuses_an_unsupported_key(ada: pki.Credential) -> None:
    with pytest.raises(smime.SmimeError) as info:
        smime.sign(ENTITY, ada.cert, ed25519.Ed25519PrivateKey.generate())
    assert info.value.code == "SMIME_UNSUPPORTED_KEY"


# ---------------------------------------------------------------------------- chains


def test_embedded_chain_leads_to_the_root(ca: pki.Credential) -> None:
    intermediate = make_intermediate(ca)
    leaf = pki.make_leaf(intermediate, "Ivy", uris=("im:ivy@example.com",))
    bare = smime.sign(ENTITY, leaf.cert, leaf.key)
    assert smime.verify(bare, [ca.cert], now=NOW).code == "UNTRUSTED"
    assert smime.verify(bare, [ca.cert], now=NOW, intermediates=[intermediate.cert]).valid
    chained = smime.sign(ENTITY, leaf.cert, leaf.key, chain=[intermediate.cert])
    assert smime.verify(chained, [ca.cert], now=NOW).valid


def test_expired_signer_is_rejected(ca: pki.Credential) -> None:
    old = pki.make_leaf(
        ca,
        "Old",
        not_before=NOW - dt.timedelta(days=30),
        not_after=NOW - dt.timedelta(days=1),
    )
    result = smime.verify(smime.sign(ENTITY, old.cert, old.key), [ca.cert], now=NOW)
    assert not result.valid
    assert result.code == "EXPIRED"


def test_signer_checked_at_the_given_time(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    assert smime.verify(payload, [ca.cert], now=NOW + dt.timedelta(days=400)).code == "EXPIRED"
    assert smime.verify(payload, [ca.cert], now=NOW - dt.timedelta(days=2)).code == "NOT_YET_VALID"
    naive = NOW.astimezone(dt.UTC).replace(tzinfo=None)
    assert smime.verify(payload, [ca.cert], now=naive).valid


def test_signer_from_another_root_is_untrusted(ada: pki.Credential) -> None:
    other = pki.make_ca("other CA")
    result = smime.verify(smime.sign(ENTITY, ada.cert, ada.key), [other.cert], now=NOW)
    assert not result.valid
    assert result.code == "UNTRUSTED"
    assert result.signer_subject == "CN=Ada"  # what the object claims


def test_self_signed_signer_is_untrusted_unless_it_is_a_root() -> None:
    lone = pki.make_self_signed("Lone")
    payload = smime.sign(b"Content-Type: text/plain\r\n\r\nhi", lone.cert, lone.key)
    assert smime.verify(payload, [pki.make_ca().cert], now=NOW).code == "UNTRUSTED"
    assert smime.verify(payload, [], now=NOW).code == "UNTRUSTED"


def test_signer_without_email_protection_is_rejected(ca: pki.Credential) -> None:
    tls = make_tls_only_leaf(ca)
    result = smime.verify(smime.sign(ENTITY, tls.cert, tls.key), [ca.cert], now=NOW)
    assert not result.valid
    assert result.code == "WRONG_KEY_USAGE"


def test_signer_certificate_missing_from_the_signature(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(ENTITY)
        .add_signer(ada.cert, ada.key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [
                pkcs7.PKCS7Options.DetachedSignature,
                pkcs7.PKCS7Options.Binary,
                pkcs7.PKCS7Options.NoCerts,
            ],
        )
    )
    payload = with_signature(smime.sign(ENTITY, ada.cert, ada.key), der)
    assert smime.verify(payload, [ca.cert], now=NOW).code == "SIGNER_NOT_FOUND"
    assert smime.verify(payload, [ca.cert], now=NOW, intermediates=[ada.cert]).valid


def test_first_verifying_signer_is_reported(ada: pki.Credential, ca: pki.Credential) -> None:
    stranger = pki.make_leaf(pki.make_ca("stranger CA"), "Stranger")
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(ENTITY)
        .add_signer(stranger.cert, stranger.key, hashes.SHA256())
        .add_signer(ada.cert, ada.key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
    payload = with_signature(smime.sign(ENTITY, ada.cert, ada.key), der)
    result = smime.verify(payload, [ca.cert], now=NOW)
    assert result.valid
    assert result.signer_subject == "CN=Ada"


# ---------------------------------------------------------------------------- tampering


def test_one_changed_content_byte_fails(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    tampered = Payload(payload.content_type, payload.body.replace(b"Hello", b"Jello"))
    result = smime.verify(tampered, [ca.cert], now=NOW)
    assert not result.valid
    assert result.code == "CONTENT_MISMATCH"
    assert result.content == ENTITY.replace(b"Hello", b"Jello")


def test_changed_content_without_attributes_fails(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, attributes=False)
    tampered = Payload(payload.content_type, payload.body.replace(b"Hello", b"Jello"))
    assert smime.verify(tampered, [ca.cert], now=NOW).code == "BAD_SIGNATURE"


def test_changed_signature_value_fails(eve: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, eve.cert, eve.key)
    der = bytearray(signature_der(payload))
    der[-3] ^= 0x01  # inside the ECDSA signature value, the last field of the SignerInfo
    result = smime.verify(with_signature(payload, bytes(der)), [ca.cert], now=NOW)
    assert not result.valid
    assert result.code == "BAD_SIGNATURE"


def test_signature_from_another_content_fails(ada: pki.Credential, ca: pki.Credential) -> None:
    mine = smime.sign(ENTITY, ada.cert, ada.key)
    theirs = smime.sign(ENTITY.replace(b"Hello", b"Bye"), ada.cert, ada.key)
    swapped = with_signature(mine, signature_der(theirs))
    assert smime.verify(swapped, [ca.cert], now=NOW).code == "CONTENT_MISMATCH"


# ---------------------------------------------------------------------------- signed-data


def signed_data(entity: bytes, cred: pki.Credential) -> bytes:
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(entity)
        .add_signer(cred.cert, cred.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def test_pkcs7_mime_signed_data_verifies(ada: pki.Credential, ca: pki.Credential) -> None:
    der = signed_data(ENTITY, ada)
    payload = Payload("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m", der)
    result = smime.verify(payload, [ca.cert], now=NOW, expected_sender="im:ada@example.com")
    assert result.valid, result.error
    assert result.content == ENTITY
    assert result.matches_sender is True
    assert smime.signed_content(payload) == ENTITY


def test_pkcs7_mime_signed_data_in_base64_verifies(ada: pki.Credential, ca: pki.Credential) -> None:
    body = smime._base64_lines(signed_data(ENTITY, ada))
    payload = Payload("application/pkcs7-mime; smime-type=signed-data", body)
    assert smime.verify(payload, [ca.cert], now=NOW).valid


def test_pkcs7_mime_entity_with_base64_transfer_encoding_is_decoded(ada: pki.Credential) -> None:
    der = signed_data(ENTITY, ada)
    entity = (
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + smime._base64_lines(der)
    )
    assert smime.payload_from_entity(entity).body == der


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("message/cpim", b"From: <im:a@example.com>\r\n", "SMIME_NOT_SIGNED"),
        ('multipart/signed; protocol="application/pkcs7-signature"', b"x", "SMIME_NO_BOUNDARY"),
        (
            'multipart/signed; boundary=b; protocol="application/pgp-signature"',
            b"",
            "SMIME_UNSUPPORTED_PROTOCOL",
        ),
        (
            'multipart/signed; boundary=b; protocol="application/pkcs7-signature"',
            b"--b\r\nx",
            "SMIME_NO_CLOSE_DELIMITER",
        ),
        (
            'multipart/signed; boundary=b; protocol="application/pkcs7-signature"',
            b"--b\r\nx\r\n--b--\r\n",
            "SMIME_PART_COUNT",
        ),
        (
            "application/pkcs7-mime; smime-type=signed-data",
            b"\x30\x03\x02\x01\x01",
            "SMIME_BAD_CMS",
        ),
        ("application/pkcs7-mime; smime-type=signed-data", b"not base64 !", "SMIME_BAD_BASE64"),
        ("application/pkcs7-mime; smime-type=enveloped-data", b"\x30\x00", "SMIME_NOT_SIGNED"),
    ],
)
def test_malformed_signed_objects_raise_parse_errors_with_codes(
    content_type: str, body: bytes, code: str
) -> None:
    payload = Payload(content_type, body)
    with pytest.raises(ParseError) as info:
        smime.verify(payload, [], now=NOW)
    assert info.value.code == code
    assert smime.signed_content(payload) is None


def test_second_part_that_is_not_a_signature_is_refused(ada: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    body = payload.body.replace(b"application/pkcs7-signature;", b"text/plain;")
    with pytest.raises(ParseError) as info:
        smime.verify(Payload(payload.content_type, body), [], now=NOW)
    assert info.value.code == "SMIME_NO_SIGNATURE_PART"


def test_enveloped_data_as_signature_is_not_signed(ada: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    envelope = smime.encrypt(b"x", [ada.cert]).body
    with pytest.raises(ParseError) as info:
        smime.verify(with_signature(payload, envelope), [], now=NOW)
    assert info.value.code == "SMIME_NOT_SIGNED"


def test_certificates_only_signature_has_no_signer(ada: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    certs_only = pkcs7.serialize_certificates([ada.cert], serialization.Encoding.DER)
    result = smime.verify(with_signature(payload, certs_only), [], now=NOW)
    assert not result.valid
    assert result.code == "NO_SIGNER"


def test_delimiter_lookalike_inside_a_part_is_not_a_delimiter(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    # sign() refuses such a boundary (RFC 2046 §5.1.1: it must not occur in the parts), so
    # the wrapper is rebuilt by hand around a real signature.
    entity = b"Content-Type: text/plain\r\n\r\n--b1x is not a delimiter\r\n"
    signed = smime.sign(entity, ada.cert, ada.key, boundary="other")
    payload = Payload(
        signed.content_type.replace('"other"', "b1"), signed.body.replace(b"--other", b"--b1")
    )
    result = smime.verify(payload, [ca.cert], now=NOW)
    assert result.valid
    assert result.content == entity


def test_transport_padding_after_a_delimiter_is_allowed(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, boundary="b1")
    padded = Payload(payload.content_type, payload.body.replace(b"--b1\r\n", b"--b1 \t\r\n"))
    assert smime.verify(padded, [ca.cert], now=NOW).valid


def test_preamble_and_epilogue_are_ignored(ada: pki.Credential, ca: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key, boundary="b1")
    wrapped = Payload(
        payload.content_type, b"This is a signed message\r\n" + payload.body + b"epilogue\r\n"
    )
    assert smime.verify(wrapped, [ca.cert], now=NOW).valid


# ---------------------------------------------------------------------------- sender match


@pytest.mark.parametrize(
    ("expected", "matched"),
    [
        ("im:ada@example.com", "im:ada@example.com"),
        ("pres:ada@example.com", "pres:ada@example.com"),
        ("sip:ada@example.com", "im:ada@example.com"),
        ("sips:ada@example.com:5061;transport=tls", "im:ada@example.com"),
        ("xmpp:ada@example.com/phone", "im:ada@example.com"),
        ("ada@example.com/phone", "im:ada@example.com"),
        ("IM:ada@EXAMPLE.com", "im:ada@example.com"),
        ("Ada Lovelace <im:ada@example.com>", "im:ada@example.com"),
        ("im:%61da@example.com", "im:ada@example.com"),
        ("im:Ada@example.com", None),
        ("im:ada@example.org", None),
        ("im:bob@example.com", None),
        ("tel:+15550100", None),
    ],
)
def test_sender_matching_rules(expected: str, matched: str | None) -> None:
    uris = ("im:ada@example.com", "pres:ada@example.com", "tel:+15550199")
    assert smime.match_sender(expected, uris) == matched


def test_sender_matching_can_require_the_same_scheme() -> None:
    uris = ("im:ada@example.com",)
    assert smime.match_sender("sip:ada@example.com", uris, across_schemes=False) is None
    assert smime.match_sender("im:ada@Example.COM", uris, across_schemes=False) == uris[0]


def test_sender_matching_of_other_schemes_is_exact() -> None:
    uris = ("tel:+15550199", "https://Example.com/Ada")
    assert smime.match_sender("tel:+15550199", uris) == "tel:+15550199"
    assert smime.match_sender("HTTPS://example.com/Ada", uris) == "https://Example.com/Ada"
    assert smime.match_sender("https://example.com/ada", uris) is None


def test_no_expected_sender_leaves_the_match_open(ada: pki.Credential, ca: pki.Credential) -> None:
    result = smime.verify(smime.sign(ENTITY, ada.cert, ada.key), [ca.cert], now=NOW)
    assert result.matches_sender is None
    assert result.signer_uris == ("im:ada@example.com", "pres:ada@example.com")


# ---------------------------------------------------------------------------- MIME files


def test_entity_and_payload_convert_both_ways(ada: pki.Credential) -> None:
    payload = smime.sign(ENTITY, ada.cert, ada.key)
    entity = smime.entity_from_payload(payload)
    assert entity.startswith(b"Content-Type: multipart/signed; ")
    assert smime.payload_from_entity(entity) == payload


def test_entity_with_folded_content_type_and_other_headers() -> None:
    entity = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/signed; boundary=x;\r\n"
        b'\tprotocol="application/pkcs7-signature"\r\n\r\nbody'
    )
    payload = smime.payload_from_entity(entity)
    assert payload.content_type == (
        'multipart/signed; boundary=x; protocol="application/pkcs7-signature"'
    )
    assert payload.body == b"body"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"Content-Type: text/plain\r\nno end", "SMIME_NO_BLANK_LINE"),
        (b"MIME-Version: 1.0\r\n\r\nbody", "SMIME_NO_CONTENT_TYPE"),
        (b"no colon here\r\n\r\nbody", "SMIME_BAD_HEADER"),
    ],
)
def test_malformed_entity_files_raise_parse_errors(data: bytes, code: str) -> None:
    with pytest.raises(ParseError) as info:
        smime.payload_from_entity(data)
    assert info.value.code == code


# ---------------------------------------------------------------------------- encryption


def test_encrypt_and_decrypt_give_back_the_exact_bytes(ada: pki.Credential) -> None:
    content = b"Content-Type: application/octet-stream\r\n\r\n\x00\r\n\n\r\xff" * 10
    payload = smime.encrypt(content, [ada.cert])
    assert payload.content_type == (
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
    )
    assert payload.is_encrypted
    assert smime.decrypt(payload, ada.cert, ada.key) == content


def test_every_recipient_can_decrypt(ca: pki.Credential, ada: pki.Credential) -> None:
    bob = pki.make_leaf(ca, "Bob")
    payload = smime.encrypt(ENTITY, [ada.cert, bob.cert])
    assert smime.decrypt(payload, ada.cert, ada.key) == ENTITY
    assert smime.decrypt(payload, bob.cert, bob.key) == ENTITY


def test_decrypt_by_someone_else_fails(ca: pki.Credential, ada: pki.Credential) -> None:
    bob = pki.make_leaf(ca, "Bob")
    with pytest.raises(smime.DecryptionError) as info:
        smime.decrypt(smime.encrypt(ENTITY, [ada.cert]), bob.cert, bob.key)
    assert info.value.code == "SMIME_DECRYPT_FAILED"


def test_encrypt_refuses_ec_recipients_and_no_recipients(eve: pki.Credential) -> None:
    with pytest.raises(smime.SmimeError) as info:
        smime.encrypt(ENTITY, [eve.cert])
    assert info.value.code == "SMIME_UNSUPPORTED_RECIPIENT"
    with pytest.raises(smime.SmimeError) as info:
        smime.encrypt(ENTITY, [])
    assert info.value.code == "SMIME_NO_RECIPIENT"


def test_decrypt_accepts_a_base64_body(ada: pki.Credential) -> None:
    payload = smime.encrypt(ENTITY, [ada.cert])
    encoded = Payload(payload.content_type, smime._base64_lines(payload.body))
    assert smime.decrypt(encoded, ada.cert, ada.key) == ENTITY


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (Payload("message/cpim", b"x"), "SMIME_NOT_ENCRYPTED"),
        (
            Payload("application/pkcs7-mime; smime-type=signed-data", b"\x30\x00"),
            "SMIME_NOT_ENCRYPTED",
        ),
        (
            Payload("application/pkcs7-mime; smime-type=enveloped-data", b"\x30\x00"),
            "SMIME_BAD_CMS",
        ),
    ],
)
def test_decrypt_of_a_non_envelope_is_a_parse_error(
    ada: pki.Credential, payload: Payload, code: str
) -> None:
    with pytest.raises(ParseError) as info:
        smime.decrypt(payload, ada.cert, ada.key)
    assert info.value.code == code


def test_decrypt_of_signed_data_is_not_encrypted(ada: pki.Credential) -> None:
    payload = Payload("application/pkcs7-mime", signed_data(ENTITY, ada))
    with pytest.raises(ParseError) as info:
        smime.decrypt(payload, ada.cert, ada.key)
    assert info.value.code == "SMIME_NOT_ENCRYPTED"


def test_sign_then_encrypt_then_decrypt_then_verify(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    signed = smime.sign(ENTITY, ada.cert, ada.key)
    sealed = smime.encrypt(smime.entity_from_payload(signed), [ada.cert])
    opened = smime.payload_from_entity(smime.decrypt(sealed, ada.cert, ada.key))
    assert opened == signed
    assert smime.verify(opened, [ca.cert], now=NOW).valid


# ---------------------------------------------------------------------------- restore_crlf


def lf(data: bytes) -> bytes:
    """What an XML parser does to line ends (XML 1.0 §2.11)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def test_lf_damaged_text_object_verifies_after_restoring_crlf(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    mime = smime.entity_from_payload(smime.sign(ENTITY, ada.cert, ada.key))
    damaged = lf(mime)
    assert smime.verify(smime.payload_from_entity(damaged), [ca.cert], now=NOW).code == (
        "CONTENT_MISMATCH"
    )
    restored = smime.restore_crlf(damaged)
    assert restored == mime
    assert smime.verify(smime.payload_from_entity(restored), [ca.cert], now=NOW).valid


def test_restore_crlf_leaves_binary_parts_alone(ada: pki.Credential, ca: pki.Credential) -> None:
    entity = (
        b"Content-type: Message/CPIM\r\n\r\nFrom: <im:ada@example.com>\r\n\r\n"
        b"Content-Type: image/png\r\n\r\n\x89PNG\n\x1a\n\x00"
    )
    mime = smime.entity_from_payload(smime.sign(entity, ada.cert, ada.key))
    restored = smime.restore_crlf(lf(mime))
    content = smime.signed_content(smime.payload_from_entity(restored))
    assert content == entity  # the image had only bare LFs: nothing was lost or added
    assert smime.verify(smime.payload_from_entity(restored), [ca.cert], now=NOW).valid


def test_binary_part_that_lost_a_cr_stays_unverifiable(
    ada: pki.Credential, ca: pki.Credential
) -> None:
    entity = b"Content-Type: application/octet-stream\r\n\r\n\x00\r\n\x01"
    mime = smime.entity_from_payload(smime.sign(entity, ada.cert, ada.key))
    restored = smime.restore_crlf(lf(mime))
    assert b"\x00\n\x01" in restored
    result = smime.verify(smime.payload_from_entity(restored), [ca.cert], now=NOW)
    assert result.code == "CONTENT_MISMATCH"


def test_restore_crlf_fixes_base64_lines_not_the_decoded_data() -> None:
    data = b"\n\r\n\x00" * 40
    encoded = base64.encodebytes(data)  # LF-separated lines
    entity = (
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + encoded
    )
    restored = smime.restore_crlf(entity)
    head, _, body = restored.partition(b"\r\n\r\n")
    assert head.count(b"\r\n") == 1
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert base64.b64decode(body) == data


def test_restore_crlf_handles_preamble_epilogue_and_padding() -> None:
    text = (
        b"Content-Type: multipart/mixed; boundary=zz\n\npreamble\n--zz \n"
        b"Content-Type: text/plain\n\none\ntwo\n--zz--\nepilogue\n"
    )
    assert smime.restore_crlf(text) == text.replace(b"\n", b"\r\n")


def test_restore_crlf_of_headers_only_input() -> None:
    assert smime.restore_crlf(b"Content-Type: text/plain\nX: y") == (
        b"Content-Type: text/plain\r\nX: y"
    )
    assert smime.restore_crlf(b"") == b""
