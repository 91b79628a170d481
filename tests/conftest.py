"""Shared fixtures: the test vectors (read from the installed package, unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "canonical" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The shipped copy of the project's test vectors (``canonical/vectors``)."""
    return VECTORS
