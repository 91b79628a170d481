"""PIDF presence documents (RFC 3863) with the RPID subset (RFC 4480) cpimgw maps, keeping
their bytes.  INTERFACE STUB — being implemented."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from canonical.policy import Policy


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceTuple:
    """RFC 3863 §4.1.2 tuple: id, basic status, contact (+priority), notes, timestamp,
    and the XMPP ``<show>`` carried inside ``<status>`` (RFC 8048 §6.2)."""

    id: str
    basic: str | None  # "open" | "closed" | None
    contact: str | None = None
    priority: float | None = None
    notes: tuple[Note, ...] = ()
    timestamp: str | None = None
    show: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceDocument:
    """A parsed PIDF document; ``raw`` is the exact input, the rest are views."""

    raw: bytes
    entity: str
    tuples: tuple[PresenceTuple, ...]
    notes: tuple[Note, ...] = ()  # presence-level notes
    activities: tuple[str, ...] = ()  # RPID activities (person), e.g. "away", "busy"

    @property
    def basic(self) -> str | None:
        """ "open" if any tuple is open, else "closed" if any closed, else None."""
        raise NotImplementedError


def parse_pidf(data: bytes, *, policy: Policy | None = None) -> PresenceDocument:
    """Parse with canonical.xmldoc (no DTD, no entities, bounded); ParseError with code."""
    raise NotImplementedError


def build_pidf(
    *,
    entity: str,
    tuples: Sequence[PresenceTuple],
    notes: Sequence[Note] = (),
    activities: Sequence[str] = (),
) -> PresenceDocument:
    """Deterministic PIDF bytes (same arguments, same bytes)."""
    raise NotImplementedError
