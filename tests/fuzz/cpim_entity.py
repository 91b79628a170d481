"""Fuzz target: ``canonical.cpim.parse`` (the entity form: ``Content-type: Message/CPIM``,
as inside multipart/signed and in files), strict and lenient, with and without the MSRP
profile, and under tight policy limits.

Documented errors (docs/cpim.md, ``canonical.cpim`` docstring): :class:`ParseError` only.
The laws checked are in :mod:`tests.fuzz.cpim_laws`.
"""

from __future__ import annotations

from collections.abc import Iterator

from canonical import cpim
from canonical.errors import ParseError
from tests.fuzz import corpus, cpim_laws

ALLOWED = (ParseError,)
MAX_LEN = 8192


def run(data: bytes) -> None:
    cpim_laws.check(cpim.parse, data)


def seeds() -> Iterator[bytes]:
    yield from corpus.cpim_entities()
