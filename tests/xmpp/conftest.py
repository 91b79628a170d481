"""Fixtures for the XMPP adapter tests: a real Prosody with users and the gateway component."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.prosody import ProsodyServer

USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}


def _prosody(workdir: Path) -> ProsodyServer:
    server = ProsodyServer(workdir)
    for user, password in USERS.items():
        server.register(user, password)
    return server.start()


@pytest.fixture(scope="module")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """One Prosody per test module (users alice, bob, carol on xmpp.test)."""
    server = _prosody(tmp_path_factory.mktemp("prosody"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prosody_own(tmp_path: Path) -> Iterator[ProsodyServer]:
    """A Prosody of the test's own (for restarts)."""
    server = _prosody(tmp_path / "prosody")
    try:
        yield server
    finally:
        server.stop()
