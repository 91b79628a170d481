"""The shipped S/MIME vectors behave as canonical/vectors/README.md ("S/MIME vectors") says."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509

from canonical import smime
from canonical.envelope import Payload
from canonical.errors import ParseError
from tests import pki

E2E_NS = "{urn:ietf:params:xml:ns:xmpp-e2e}e2e"
#: The test signer certificate is valid from 2026-11-26T13:08:55Z for a century.
AFTER = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
BEFORE = dt.datetime(2026, 11, 26, 13, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def signed_dir(vectors_dir: Path) -> Path:
    return vectors_dir / "signed"


@pytest.fixture(scope="module")
def signer_cert(signed_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((signed_dir / "test-signer-cert.pem").read_bytes())


def read(signed_dir: Path, name: str) -> bytes:
    return (signed_dir / name).read_bytes()


def e2e_text(signed_dir: Path, name: str) -> bytes:
    """The text of the <e2e/> element as the stdlib XML parser delivers it."""
    element = ET.fromstring(read(signed_dir, name)).find(E2E_NS)
    assert element is not None
    assert element.text is not None
    return element.text.encode("utf-8")


def test_s01_verifies_byte_exactly(signed_dir: Path, signer_cert: x509.Certificate) -> None:
    data = read(signed_dir, "s01-multipart-signed.mime")
    payload = smime.payload_from_entity(data)
    result = smime.verify(payload, [signer_cert], now=AFTER, expected_sender="im:ada@example.com")
    assert result.valid, result.error
    assert result.code is None
    assert result.error is None
    assert result.content.startswith(b"Content-type: Message/CPIM\r\n\r\nFrom: Ada Lovelace")
    assert result.content.endswith(b"covered by the signature.\r\n")
    assert result.content in data
    assert result.signer_subject == "CN=CPIM gateway test signer (TEST ONLY)"
    assert result.signer_uris == (
        "im:ada@example.com",
        "pres:ada@example.com",
        "sip:ada@example.com",
    )
    assert result.matches_sender is True
    assert result.matched_uri == "im:ada@example.com"
    assert result.signer == signer_cert


def test_s01_content_is_the_first_part_without_the_delimiter_crlf(signed_dir: Path) -> None:
    data = read(signed_dir, "s01-multipart-signed.mime")
    content = smime.signed_content(smime.payload_from_entity(data))
    assert content is not None
    start = data.index(b"Content-type: Message/CPIM")
    assert data[start : start + len(content) + 2 + 2] == content + b"\r\n--"


def test_s01_is_not_valid_before_its_certificate(
    signed_dir: Path, signer_cert: x509.Certificate
) -> None:
    payload = smime.payload_from_entity(read(signed_dir, "s01-multipart-signed.mime"))
    result = smime.verify(payload, [signer_cert], now=BEFORE)
    assert not result.valid
    assert result.code == "NOT_YET_VALID"
    assert result.error is not None
    assert "2026-11-26T13:08:55Z" in result.error


def test_s01_against_another_trust_root_is_untrusted(signed_dir: Path) -> None:
    other = pki.make_ca("not the signer")
    payload = smime.payload_from_entity(read(signed_dir, "s01-multipart-signed.mime"))
    result = smime.verify(payload, [other.cert], now=AFTER)
    assert not result.valid
    assert result.code == "UNTRUSTED"


def test_s01_reports_a_sender_the_certificate_does_not_name(
    signed_dir: Path, signer_cert: x509.Certificate
) -> None:
    payload = smime.payload_from_entity(read(signed_dir, "s01-multipart-signed.mime"))
    result = smime.verify(payload, [signer_cert], now=AFTER, expected_sender="im:eve@example.com")
    assert result.valid
    assert result.matches_sender is False
    assert result.matched_uri is None


@pytest.mark.parametrize(
    "name", ["s03-tampered-reordered.mime", "s04-tampered-recased-mime-header.mime"]
)
def test_tampered_vectors_fail(signed_dir: Path, signer_cert: x509.Certificate, name: str) -> None:
    payload = smime.payload_from_entity(read(signed_dir, name))
    result = smime.verify(payload, [signer_cert], now=AFTER)
    assert not result.valid
    assert result.code == "CONTENT_MISMATCH"
    assert result.error is not None
    assert "altered" in result.error


def test_s06_charref_text_equals_s01(signed_dir: Path, signer_cert: x509.Certificate) -> None:
    text = e2e_text(signed_dir, "s06-xmpp-e2e-charref-cr.xml")
    assert text == read(signed_dir, "s01-multipart-signed.mime")
    result = smime.verify(smime.payload_from_entity(text), [signer_cert], now=AFTER)
    assert result.valid


def test_s07_cdata_text_fails_as_it_is(signed_dir: Path, signer_cert: x509.Certificate) -> None:
    text = e2e_text(signed_dir, "s07-xmpp-e2e-cdata.xml")
    assert b"\r" not in text
    result = smime.verify(smime.payload_from_entity(text), [signer_cert], now=AFTER)
    assert not result.valid
    assert result.code == "CONTENT_MISMATCH"
    assert result.error is not None
    assert "restore_crlf" in result.error


def test_s07_cdata_text_verifies_after_restoring_crlf(
    signed_dir: Path, signer_cert: x509.Certificate
) -> None:
    text = e2e_text(signed_dir, "s07-xmpp-e2e-cdata.xml")
    restored = smime.restore_crlf(text)
    assert restored == read(signed_dir, "s01-multipart-signed.mime")
    result = smime.verify(smime.payload_from_entity(restored), [signer_cert], now=AFTER)
    assert result.valid, result.error


def test_restore_crlf_leaves_s01_unchanged(signed_dir: Path) -> None:
    data = read(signed_dir, "s01-multipart-signed.mime")
    assert smime.restore_crlf(data) == data


def test_s01_transport_body_verifies_with_its_content_type(
    signed_dir: Path, signer_cert: x509.Certificate
) -> None:
    data = read(signed_dir, "s01-multipart-signed.mime")
    header, _, body = data.partition(b"\r\n\r\n")
    content_type = header.decode().partition(": ")[2]
    result = smime.verify(Payload(content_type, body), [signer_cert], now=AFTER)
    assert result.valid


def test_s01_with_a_wrong_boundary_is_a_parse_error(signed_dir: Path) -> None:
    data = read(signed_dir, "s01-multipart-signed.mime")
    _, _, body = data.partition(b"\r\n\r\n")
    payload = Payload(
        'multipart/signed; boundary="other"; protocol="application/pkcs7-signature"', body
    )
    with pytest.raises(ParseError) as info:
        smime.verify(payload, [], now=AFTER)
    assert info.value.code == "SMIME_NO_DELIMITER"
    assert smime.signed_content(payload) is None
