"""message/cpim (RFC 3862), byte-exact.  INTERFACE STUB — being implemented.

DESIGN.md "The canonical model": bytes are the truth, parsed fields are views.
``bytes(parse(data)) == data`` for every accepted input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from canonical.errors import Defect
from canonical.policy import Policy, Profile

#: RFC 3862 §3.4: the namespace of the core headers (the default namespace).
CPIM_NS = "urn:ietf:params:cpim-headers:"

Form = Literal["entity", "body"]


@dataclass(frozen=True, slots=True)
class Party:
    """From / To / cc value (RFC 3862 §4.1-4.3): optional Formal-name and the URI."""

    formal_name: str | None
    uri: str


@dataclass(frozen=True, slots=True)
class DateTimeValue:
    """DateTime (RFC 3862 §4.4, RFC 3339 §5.6), kept as written. ``offset_minutes`` is None
    for ``-00:00`` (UTC, local offset unknown); ``second`` may be 60 (leap second)."""

    text: str
    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    fraction: str  # digits after '.', '' when absent
    offset_minutes: int | None

    def timestamp(self) -> float:
        """POSIX seconds (a leap second counts as :59.999999)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Header:
    """One CPIM message header line (RFC 3862 §3), exactly as written.

    ``name`` is as written (prefix included); ``namespace`` is resolved through NS
    (None when the prefix is undefined, lenient mode only); ``params`` are
    ``(name, decoded value)`` pairs; ``value_raw`` is the text after ``": "`` undecoded;
    ``value`` is decoded per §2.3; ``raw`` is the line including its CRLF; ``line`` is
    1-based within the parsed data and ``offset`` is the byte offset of the line.
    """

    name: str
    prefix: str | None
    local: str
    namespace: str | None
    params: tuple[tuple[str, str], ...]
    value_raw: str
    value: str
    raw: bytes
    line: int
    offset: int

    @property
    def lang(self) -> str | None:
        """The ``lang`` parameter, if any (RFC 3862 §3.3)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Subject:
    lang: str | None
    text: str


class CpimMessage:
    """An immutable, parsed message/cpim object that keeps its bytes.

    Attributes: ``raw``, ``form`` ("entity" or "body"), ``mime_headers`` (entity form: the
    outer ``(name, raw value)`` pairs), ``headers`` (tuple[Header] in source order),
    ``entity_headers`` (``(name, raw value)`` as MIME keeps them, leading space included),
    ``body_offset``, ``body`` (bytes), ``defects`` (tuple[Defect]).

    Views: ``sender`` (Party | None), ``to``/``cc`` (tuple[Party]), ``datetime``
    (DateTimeValue | None), ``subjects`` (tuple[Subject]), ``subject(lang)``,
    ``namespaces`` (dict prefix|None -> URI, final state), ``require`` (tuple[str]),
    ``content_type`` (entity Content-Type value, stripped), ``find(local, namespace)``.
    """

    raw: bytes
    form: Form
    headers: tuple[Header, ...]
    entity_headers: tuple[tuple[str, str], ...]
    body_offset: int
    body: bytes
    defects: tuple[Defect, ...]

    def __bytes__(self) -> bytes:
        return self.raw

    def find(self, local: str, namespace: str = CPIM_NS) -> tuple[Header, ...]:
        """Headers whose resolved (namespace, local name) match, in source order."""
        raise NotImplementedError

    def to_body(self) -> bytes:
        """The body form (first CPIM header to the end), as a SIP MESSAGE body carries it."""
        raise NotImplementedError

    def to_entity(self, mime_header: bytes = b"Content-type: Message/CPIM\r\n") -> bytes:
        """The entity form; for an entity-form message, its own bytes unchanged."""
        raise NotImplementedError

    def with_header(
        self,
        name: str,
        value: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        index: int | None = None,
    ) -> CpimMessage:
        """A new message with one header added (value escaped per §2.3); every other byte
        identical. ``index`` is the position among the headers (default: after the last)."""
        raise NotImplementedError

    def without_header(self, name: str, *, occurrence: int | None = None) -> CpimMessage:
        """A new message without the header(s) named exactly ``name`` (all, or the
        ``occurrence``-th, 0-based); every other byte identical."""
        raise NotImplementedError


def parse(
    data: bytes,
    *,
    strict: bool = False,
    profile: Profile | None = None,
    policy: Policy | None = None,
) -> CpimMessage:
    """Parse a whole MIME entity starting with the ``Content-type: Message/CPIM`` block."""
    raise NotImplementedError


def parse_body(
    data: bytes,
    *,
    strict: bool = False,
    profile: Profile | None = None,
    policy: Policy | None = None,
) -> CpimMessage:
    """Parse a transport body (starts at the first CPIM header, RFC 3862 §2 via SIP/MSRP)."""
    raise NotImplementedError


def build(
    *,
    sender: Party | str | None,
    to: Sequence[Party | str] = (),
    cc: Sequence[Party | str] = (),
    datetime: str | None = None,
    subjects: Sequence[tuple[str | None, str]] = (),
    namespaces: Sequence[tuple[str | None, str]] = (),
    extensions: Sequence[tuple[str, str]] = (),
    require: Sequence[str] = (),
    content_type: str,
    entity_headers: Sequence[tuple[str, str]] = (),
    body: bytes,
    form: Form = "body",
) -> CpimMessage:
    """Build a deterministic message (same arguments, same bytes), escaping what must be
    escaped (§2.3). Header order: From, To..., cc..., DateTime, Subject..., NS..., the
    extensions (name as written, prefix included), Require."""
    raise NotImplementedError
