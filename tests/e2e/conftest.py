"""Fixtures of the end-to-end tests: one whole deployment per test module (XMPP server,
Kamailio, ``cpimgw run``), so the modules stay fast, and the signers' certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import pki
from tests.e2e.stack import SIP_DOMAIN, XMPP_DOMAIN, Stack, stack


@pytest.fixture(scope="module")
def prosody_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prosody + Kamailio + cpimgw, shared by the tests of one module."""
    with stack(tmp_path_factory.mktemp("e2e-prosody"), xmpp="prosody") as running:
        yield running


@pytest.fixture(scope="module")
def ejabberd_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ejabberd + Kamailio + cpimgw, shared by the tests of one module."""
    with stack(tmp_path_factory.mktemp("e2e-ejabberd"), xmpp="ejabberd") as running:
        yield running


@dataclass(frozen=True)
class Pki:
    """A CA and S/MIME credentials of users on both networks, written to files."""

    folder: Path
    ca: pki.Credential
    ca_file: Path
    xmpp_user: pki.Credential
    sip_user: pki.Credential
    sip_user_files: tuple[Path, Path]
    xmpp_user_files: tuple[Path, Path]


@pytest.fixture(scope="session")
def smime_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("e2e-pki")
    ca = pki.make_ca("cpimgw e2e users CA")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    alice = pki.make_leaf(
        ca, "Alice (XMPP)", uris=(f"im:alice@{XMPP_DOMAIN}", f"xmpp:alice@{XMPP_DOMAIN}")
    )
    bob = pki.make_leaf(ca, "Bob (SIP)", uris=(f"sip:bob@{SIP_DOMAIN}", f"im:bob@{SIP_DOMAIN}"))
    return Pki(
        folder,
        ca,
        ca_file,
        alice,
        bob,
        bob.write(folder, "bob"),
        alice.write(folder, "alice"),
    )
