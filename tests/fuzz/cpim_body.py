"""Fuzz target: ``canonical.cpim.parse_body`` (the body form a SIP MESSAGE, MSRP chunk or
HTTP request carries: it starts at the first CPIM header), strict and lenient, with and
without the MSRP profile (RFC 4975 §13), and under tight policy limits.

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
    cpim_laws.check(cpim.parse_body, data)


def seeds() -> Iterator[bytes]:
    yield from corpus.cpim_bodies()
