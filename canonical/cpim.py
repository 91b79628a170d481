"""message/cpim (RFC 3862), byte-exact.

DESIGN.md "The canonical model": bytes are the truth, parsed fields are views.
``bytes(parse(data)) == data`` for every accepted input, in either mode.

Layout (RFC 3862 §2): an optional MIME header block (``Content-type: Message/CPIM``, the
*entity form* that sits inside multipart/signed and in the vector files), a blank line, the
CPIM message headers, a blank line, then the encapsulated MIME entity (its headers, a blank
line, the body). The *body form* that SIP MESSAGE, MSRP and HTTP carry starts at the first
CPIM header. :func:`parse` reads the entity form, :func:`parse_body` the body form.

Two modes (``canonical/vectors/README.md``, "Strict and lenient modes"):

- **strict** follows the collected ABNF of §3.6 (with the documented exception of a space
  between an NS prefix and ``<``) and raises :class:`~canonical.errors.ParseError` at the
  first fault, with a stable code, the line and the byte offset;
- **lenient** (the relaying default) rejects only faults that make the object unusable
  (:data:`FATAL_CODES`) and records every other violation as a
  :class:`~canonical.errors.Defect` carrying the code strict mode would raise. The bytes
  are kept either way.

The error codes, what they mean and how to fix them are listed in :data:`ERROR_CODES` and
:data:`HINTS` (and ``docs/cpim.md``).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import operator
import re
from calendar import timegm
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, overload

from canonical.errors import Defect, ParseError, Reason
from canonical.policy import DEFAULT, Policy, Profile, resolve

__all__ = [
    "CPIM_NS",
    "ERROR_CODES",
    "FATAL_CODES",
    "HINTS",
    "IMDN_NS",
    "MIME_HEADER",
    "WARNING_CODES",
    "CpimMessage",
    "DateTimeValue",
    "Form",
    "Header",
    "Party",
    "Requirement",
    "Subject",
    "build",
    "decode_escapes",
    "describe",
    "encode_entity_headers",
    "encode_parties",
    "encode_string",
    "encode_value",
    "format_datetime",
    "parse",
    "parse_body",
    "parse_datetime",
]

#: RFC 3862 §3.4: the namespace of the core headers (the default namespace).
CPIM_NS: Final = "urn:ietf:params:cpim-headers:"
#: RFC 5438 §6.1: the namespace of the IMDN headers.
IMDN_NS: Final = "urn:ietf:params:imdn"
#: The MIME header block of the entity form, as RFC 3862 §2 and the vectors write it.
MIME_HEADER: Final = b"Content-type: Message/CPIM\r\n"

Form = Literal["entity", "body"]

# --------------------------------------------------------------------------------------
# Error codes (the stable identifiers; canonical/vectors/README.md "Error codes")
# --------------------------------------------------------------------------------------

#: Every code this module raises or records, with its meaning.
ERROR_CODES: Final[dict[str, str]] = {
    "BARE_LF": "a line in a header block ends with LF without CR (RFC 3862 §2.2)",
    "BARE_CR": "a CR not followed by LF in a header block (RFC 3862 §2.2)",
    "NO_BLANK_LINE": "a header block is not ended by a blank line (RFC 3862 §2)",
    "NO_COLON": "a header line has no ':' (RFC 3862 §3.6)",
    "EMPTY_NAME": "a header line starts with ':' (RFC 3862 §3.6, Name = 1*NAMECHAR)",
    "SPACE_BEFORE_COLON": "whitespace between a header name and ':' (RFC 3862 §3.6)",
    "NO_SP_AFTER_COLON": "':' (and any parameters) not followed by exactly one SP (RFC 3862 §2.2)",
    "LEADING_WHITESPACE": "a header line starts with whitespace, e.g. RFC 822 folding "
    "(RFC 3862 §2.2)",
    "TRAILING_WHITESPACE": "a header line ends with whitespace (RFC 3862 §2.2)",
    "CTL_IN_HEADER": "a raw control character in a header line (RFC 3862 §2.2, §2.3.1)",
    "BAD_ESCAPE_IN_STRING": "an undefined escape inside a quoted String (RFC 3862 §3.6)",
    "UNESCAPED_BACKSLASH": "a backslash that does not start a defined escape in a value "
    "(RFC 3862 §2.3.1)",
    "UNDEFINED_PREFIX": "a name prefix not declared by an earlier NS header (RFC 3862 §3.4)",
    "BAD_HEADER_NAME": "a header name with characters outside NAMECHAR or more than one "
    "'.' (RFC 3862 §3.1)",
    "BAD_UTF8": "header bytes that are not UTF-8 (RFC 3862 §2.2, RFC 3629)",
    "POLICY_LINE_TOO_LONG": "a header line longer than the policy's max_line_length",
    "POLICY_MESSAGE_TOO_LARGE": "an object larger than the policy's max_message_size",
    "POLICY_TOO_MANY_HEADERS": "a header block with more lines than the policy's max_headers",
    "ENTITY_NO_CONTENT_TYPE": "the encapsulated MIME entity has no Content-Type (RFC 3862 §2.4)",
    "NOT_MESSAGE_CPIM": "the MIME header block does not say Content-type: Message/CPIM "
    "(RFC 3862 §2.1)",
    "BAD_FORMAL_NAME": "a From/To/cc value that is not [Formal-name] <URI> (RFC 3862 §4.1)",
    "SP_AFTER_STRING_NAME": "a space between a quoted Formal-name and '<' (RFC 3862 §3.6)",
    "REQUIRE_SPACE": "whitespace around the commas of Require (RFC 3862 §4.7)",
    "BAD_DATETIME": "a DateTime that is not an RFC 3339 date-time (RFC 3862 §4.4)",
    "BAD_NS_URI": "an NS value that is not [prefix] <absolute URI> (RFC 3862 §3.4, §4.6)",
    "BAD_LANG_TAG": "a lang parameter that is not an RFC 3066 tag (RFC 3862 §3.3)",
    "PARAMS_NOT_ALLOWED": "parameters on a header whose syntax allows none (RFC 3862 §4)",
    "BAD_PARAMETER": "a malformed ';name=value' parameter (RFC 3862 §3.6, Parameter)",
    "PROFILE_REPEAT": "a header repeated that the MSRP profile allows once (RFC 4975 §13)",
    "PROFILE_MISSING": "From or To missing under the MSRP profile (RFC 4975 §13)",
    "DATETIME_LOWERCASE": "warning: 't'/'z' written in lower case in DateTime "
    "(RFC 3339 §5.6 allows it; emit upper case)",
}

#: What to do about each code (the ``hint`` of a ParseError).
HINTS: Final[dict[str, str]] = {
    "BARE_LF": "end every header line with CRLF; convert line endings of the header blocks "
    "only, never of the body",
    "BARE_CR": "remove the stray CR, or write it escaped as \\r",
    "NO_BLANK_LINE": "separate the MIME headers, the CPIM headers and the encapsulated "
    "entity's headers from what follows by an empty line (CRLF CRLF)",
    "NO_COLON": "write each header as 'Name: value' on one line",
    "EMPTY_NAME": "give the header a name before the ':'",
    "SPACE_BEFORE_COLON": "remove the whitespace between the name and ':'",
    "NO_SP_AFTER_COLON": "write exactly one space after ':' (after the parameters, if any)",
    "LEADING_WHITESPACE": "CPIM headers are never folded: join the line onto the previous "
    "one and write line breaks inside a value as \\n",
    "TRAILING_WHITESPACE": "remove the trailing whitespace, or escape a meaningful final "
    "space as \\u0020",
    "CTL_IN_HEADER": "write control characters escaped: \\t \\n \\r \\b or \\uXXXX",
    "BAD_ESCAPE_IN_STRING": 'inside "..." only \\" \\\' \\\\ \\b \\t \\n \\r and \\uXXXX '
    "are defined; write a backslash as \\\\",
    "UNESCAPED_BACKSLASH": "double every backslash in a header value (\\\\)",
    "UNDEFINED_PREFIX": "declare the prefix first with 'NS: prefix <uri>'",
    "BAD_HEADER_NAME": "use only letters, digits and !#$%&'*+-^_`|~ in names, with at most "
    "one '.' between prefix and name",
    "BAD_UTF8": "encode header text as UTF-8 (RFC 3629)",
    "POLICY_LINE_TOO_LONG": "send long content in the body, or raise max_line_length in the policy",
    "POLICY_MESSAGE_TOO_LARGE": "send a smaller object, or raise max_message_size in the policy",
    "POLICY_TOO_MANY_HEADERS": "send fewer headers, or raise max_headers in the policy",
    "ENTITY_NO_CONTENT_TYPE": "give the encapsulated entity a Content-Type header (and "
    "make sure the CPIM headers end with a blank line)",
    "NOT_MESSAGE_CPIM": "start the object with 'Content-type: Message/CPIM' and a blank "
    "line, or read a transport body with parse_body()",
    "BAD_FORMAL_NAME": "write '<uri>', 'Name <uri>' or '\"Quoted Name\"<uri>'",
    "SP_AFTER_STRING_NAME": "write a quoted name directly before '<' or use the token form "
    "'Ada Lovelace <uri>'",
    "REQUIRE_SPACE": "separate Require names with ',' only ('A.x,B.y')",
    "BAD_DATETIME": "write an RFC 3339 date-time such as 2024-03-05T09:30:12Z",
    "BAD_NS_URI": "write 'NS: prefix <absolute-uri>' or 'NS: <absolute-uri>' (no fragment)",
    "BAD_LANG_TAG": "use an RFC 3066 language tag such as en or en-GB (hyphen, not underscore)",
    "PARAMS_NOT_ALLOWED": "remove the parameters (Subject takes only ;lang=)",
    "BAD_PARAMETER": 'write parameters as ;name=token or ;name="string" before the space',
    "PROFILE_REPEAT": "MSRP allows only NS, To and cc to repeat: send one header",
    "PROFILE_MISSING": "MSRP requires From and To in every CPIM message",
    "DATETIME_LOWERCASE": "write 'T' and 'Z' in upper case",
}

#: Codes fatal in every mode: the object cannot be used (or exceeds a policy limit).
FATAL_CODES: Final = frozenset(
    {
        "BARE_LF",
        "BARE_CR",
        "NO_BLANK_LINE",
        "NO_COLON",
        "EMPTY_NAME",
        "BAD_UTF8",
        "NOT_MESSAGE_CPIM",
        "ENTITY_NO_CONTENT_TYPE",
        "POLICY_LINE_TOO_LONG",
        "POLICY_MESSAGE_TOO_LARGE",
        "POLICY_TOO_MANY_HEADERS",
    }
)
#: Codes that are observations, never fatal, even in strict mode.
WARNING_CODES: Final = frozenset({"DATETIME_LOWERCASE"})

# --------------------------------------------------------------------------------------
# Grammar (RFC 3862 §3.6) as precompiled patterns
# --------------------------------------------------------------------------------------

_NC = r"!#$%&'*+\-0-9A-Za-z^_`|~"  # NAMECHAR
_TC = _NC + r".\u0080-\U0010ffff"  # TOKENCHAR = NAMECHAR / "." / UCS-high
_STR_BODY = r'(?:[^"\\\x00-\x1f\x7f]|\\.)*'  # String content, escapes checked apart
_PARAMS = rf'(?:;[{_NC}]+=(?:[{_TC}]+|"{_STR_BODY}"))*'

# The part of a header line before its first SP when nothing is wrong with it (the common
# case): Header-name ":" *( ";" Parameter ) with Token values. Lines whose parameters hold
# a quoted String (which may contain SP) are read by the slow path.
# Groups: name, prefix, local, params.
_HEAD = re.compile(rf"((?:([{_NC}]+)\.)?([{_NC}]+)):((?:;[{_NC}]+=[{_TC}]+)*)")
# Bytes that may not appear raw in a header line (CTL, RFC 2234), CR LF included.
_CTL_BYTES: Final = bytes(range(0x20)) + b"\x7f"
_CTL_NO_TAB: Final = _CTL_BYTES.replace(b"\t", b"")
_NAME = re.compile(rf"(?:([{_NC}]+)\.)?([{_NC}]+)")
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_PARAM_NAME = re.compile(rf"[{_NC}]*")
_TOKEN = re.compile(rf"[{_TC}]*")
_STRING_TAIL = re.compile(rf'({_STR_BODY})"')
# Escapes (§2.3), consumed left to right: ``\uXXXX``, or a backslash and one character
# (none at the end of the text).
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.?)", re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE_CHARS: Final = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "r": "\r",
    '"': '"',
    "'": "'",
    "\\": "\\",
}
# RFC 3066 §2.1 Language-Tag.
_LANG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
# From/To/cc (§4.1-4.3): [ Formal-name ] "<" URI ">"; Formal-name = 1*( Token SP ) / String.
_PARTY = re.compile(rf'(?:((?:[{_TC}]+ )+)|"({_STR_BODY})"( *))?<([^<>]*)>')
# RFC 3986 absolute-URI (RFC 2396 absoluteURI): scheme ":" then URI characters, no fragment.
# (Written as runs of plain characters between %HH, which sre matches several times
# faster than one alternation per character.)
_URI_CHARS = r"[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]*"
_URI_TEXT = rf"[A-Za-z][A-Za-z0-9+.\-]*:{_URI_CHARS}(?:%[0-9A-Fa-f]{{2}}{_URI_CHARS})*"
_URI = re.compile(_URI_TEXT)
# A From/To/cc value with nothing wrong: token name or String without a space before "<",
# and an absolute URI (one pattern, so the common case costs one match).
_PARTY_VALID = re.compile(rf'(?:(?:[{_TC}]+ )+|"{_STR_BODY}")?<{_URI_TEXT}>')
# NS (§4.6): [ Name-prefix ] "<" URI ">", also with the SP every RFC example writes.
_NS_VALUE = re.compile(rf"(?:([{_NC}]+) ?)?<([^<>]*)>")
# Require (§4.7): Header-name *( "," Header-name ), no whitespace.
_HEADER_NAME = rf"[{_NC}]+(?:\.[{_NC}]+)?"
_REQUIRE = re.compile(rf"{_HEADER_NAME}(?:,{_HEADER_NAME})*")
_REQUIRE_SPACED = re.compile(rf"{_HEADER_NAME}(?:[ \t]*,[ \t]*{_HEADER_NAME})*")
# RFC 3339 §5.6 date-time (T and Z may be lower case, §5.6 NOTE).
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})([Tt])(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
# A bare LF or a bare CR (structure faults in a header block).
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")
# MIME header field names (RFC 5322 §3.6.8 ftext).
_MIME_NAME = re.compile(r"[!-9;-~]+")

_CANONICAL_MIME: Final = MIME_HEADER + b"\r\n"
_CANONICAL_MIME_HEADERS: Final = (("Content-type", " Message/CPIM"),)
_PARTY_HEADERS: Final = frozenset({"From", "To", "cc"})
# RFC 3862 §4: headers whose syntax has no parameters (Subject has its own rule).
_NO_PARAMS: Final = frozenset({"From", "To", "cc", "DateTime", "NS", "Require"})
# RFC 4975 §13: of the core headers only NS, To and cc may repeat.
_MSRP_ONCE: Final = ("From", "DateTime", "Subject", "Require")
_DAYS: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# --------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Party:
    """From / To / cc value (RFC 3862 §4.1-4.3): optional Formal-name and the URI."""

    formal_name: str | None
    uri: str

    def encode(self) -> str:
        """The header value text: ``<uri>``, ``Name <uri>`` or ``"Quoted"<uri>`` (§3.6).

        A name that is a sequence of Tokens separated by single spaces is written as tokens
        (``Ada Lovelace <im:...>``); anything else as a String directly before ``<``, which
        is the only form the ABNF allows for a quoted name.
        """
        if not _URI.fullmatch(self.uri):
            raise ValueError(f"not an absolute URI: {self.uri!r} (RFC 3862 §4.1)")
        name = self.formal_name
        if not name:
            return f"<{self.uri}>"
        if all(_TOKEN_ONLY.fullmatch(part) for part in name.split(" ")):
            return f"{name} <{self.uri}>"
        return f"{encode_string(name)}<{self.uri}>"


_TOKEN_ONLY = re.compile(rf"[{_TC}]+")


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
        offset = self.offset_minutes or 0
        if self.second == 60:
            base = timegm((self.year, self.month, self.day, self.hour, self.minute, 59))
            return base - offset * 60 + 0.999999
        base = timegm((self.year, self.month, self.day, self.hour, self.minute, self.second))
        frac = int(self.fraction) / 10 ** len(self.fraction) if self.fraction else 0.0
        return base - offset * 60 + frac


@dataclass(frozen=True, slots=True)
class Subject:
    """One Subject header (RFC 3862 §4.5): its language tag (None: untagged) and text."""

    lang: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Requirement:
    """One name listed by Require (RFC 3862 §3.5), resolved through NS at that line."""

    name: str
    namespace: str | None
    local: str


class Header:
    """One CPIM message header line (RFC 3862 §3), exactly as written.

    ``name`` is as written (prefix included); ``namespace`` is resolved through NS
    (None when the prefix is undefined, lenient mode only); ``params`` are
    ``(name, decoded value)`` pairs; ``value_raw`` is the text after ``": "`` undecoded;
    ``value`` is decoded per §2.3; ``raw`` is the line including its CRLF; ``line`` is
    1-based within the parsed data and ``offset`` is the byte offset of the line.

    ``params`` and ``value`` are decoded on first use; a Header cannot be changed.
    """

    __slots__ = (
        "_data",
        "_end",
        "_line",
        "_local",
        "_name",
        "_namespace",
        "_offset",
        "_params",
        "_params_text",
        "_prefix",
        "_value_raw",
    )

    def __init__(  # noqa: PLR0917 - internal, hot path
        self,
        name: str,
        prefix: str | None,
        local: str,
        namespace: str | None,
        params_text: str,
        value_raw: str,
        data: bytes,
        line: int,
        offset: int,
        end: int,
    ) -> None:
        self._name = name
        self._prefix = prefix
        self._local = local
        self._namespace = namespace
        self._params_text = params_text
        self._value_raw = value_raw
        self._data = data
        self._line = line
        self._offset = offset
        self._end = end
        self._params: tuple[tuple[str, str], ...] | None = None

    @property
    def name(self) -> str:
        """The name as written, prefix included (``imdn.Message-ID``)."""
        return self._name

    @property
    def prefix(self) -> str | None:
        """The namespace prefix as written, or None."""
        return self._prefix

    @property
    def local(self) -> str:
        """The name without its prefix."""
        return self._local

    @property
    def namespace(self) -> str | None:
        """The namespace URI resolved through NS (RFC 3862 §3.4); None: undefined prefix."""
        return self._namespace

    @property
    def value_raw(self) -> str:
        """The value text after ``": "``, undecoded."""
        return self._value_raw

    @property
    def line(self) -> int:
        """1-based line number in the parsed data."""
        return self._line

    @property
    def offset(self) -> int:
        """Byte offset of the line in the parsed data."""
        return self._offset

    @property
    def params_raw(self) -> str:
        """The parameter text between ``:`` and the SP, as written (``;lang=fr``)."""
        return self._params_text

    @property
    def params(self) -> tuple[tuple[str, str], ...]:
        """``(name, decoded value)`` pairs in order (RFC 3862 §3.6 Parameter)."""
        if self._params is None:
            self._params = _read_params(self._params_text) if self._params_text else ()
        return self._params

    @property
    def value(self) -> str:
        """The value decoded per RFC 3862 §2.3 (escapes resolved)."""
        raw = self._value_raw
        return decode_escapes(raw) if "\\" in raw else raw

    @property
    def raw(self) -> bytes:
        """The header's bytes, CRLF included (continuation lines too, lenient mode)."""
        return self._data[self._offset : self._end]

    @property
    def lang(self) -> str | None:
        """The ``lang`` parameter, if any (RFC 3862 §3.3)."""
        if not self._params_text:
            return None
        for key, val in self.params:
            if key == "lang":
                return val
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return (self.raw, self._offset, self._line, self._namespace) == (
            other.raw,
            other._offset,
            other._line,
            other._namespace,
        )

    def __hash__(self) -> int:
        return hash((self.raw, self._offset))

    def __repr__(self) -> str:
        return f"Header({self._name!r}, {self._value_raw!r}, line={self._line})"


# --------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------

# A header as the scanner records it, cheap to make (Header objects are built on demand):
# (head, namespace, value_raw, index) where head = (name, prefix, local, params_text,
# special) is shared between messages for recurring heads, and index is the header's
# (first) line within the block, or None when every header is one line (the fast path:
# the index is then the header's position). Byte offsets and line numbers come from a
# _Layout when needed.
_Head = tuple[str, str | None, str, str, bool]
_Record = tuple[_Head, str | None, str, int | None]
# What a CPIM block read by the lean front is apart from its values (the same for every
# block with the same heads and NS values): each line's head parts and namespace, what
# must be checked per line ``(index, text, quoted)`` (the value of an NS line, which the
# namespaces depend on; the whole head and its SP of a line whose head has a quoted String
# parameter, which may hold SP), where the core From is (-1: none), where the core To
# and cc headers are.
_Skeleton = tuple[
    tuple[_Head, ...],
    tuple[str | None, ...],
    tuple[tuple[int, str, bool], ...],
    int,
    tuple[int, ...],
    tuple[int, ...],
]
# Where the parts are: outer MIME headers, first CPIM header, end of the CPIM block,
# entity headers (None: split on first use), body offset, the defects found while
# reading, and whether the CPIM lines still have their line-level checks to run (lenient
# fast path: see ``defects``).
_Frame = tuple[
    tuple[tuple[str, str], ...],
    int,
    int,
    tuple[tuple[str, str], ...] | None,
    int,
    tuple[Defect, ...],
    bool,
]


class _Layout:
    """Where each line of a CPIM header block is: byte offsets and line numbers, computed
    on demand (errors, Header objects, edits, strict checks) rather than while parsing."""

    __slots__ = ("ascii_only", "first_line", "lines", "starts")

    def __init__(self, data: bytes, h0: int, h_end: int, lines: list[str] | None = None) -> None:
        if lines is None:
            lines = data[h0:h_end].decode("utf-8").split("\r\n") if h_end > h0 else []
        self.lines = lines
        self.ascii_only = h_end - h0 == sum(map(len, lines)) + 2 * len(lines) - 2
        starts = [h0]
        at = h0
        if self.ascii_only:
            for line in lines:
                at += len(line) + 2
                starts.append(at)
        else:
            for line in lines:
                at += len(line.encode("utf-8")) + 2
                starts.append(at)
        self.starts = starts
        self.first_line = data.count(b"\n", 0, h0) + 1

    def span(self, records: Sequence[_Record], k: int) -> tuple[int, int, int, int]:
        """Offset, end (after CRLF), value offset and line number of record ``k``."""
        record = records[k]
        i = record[3]
        j: int | None
        if i is None:  # one line per header (the fast path): the index is the position
            i = k
            j = k + 1
        else:
            j = records[k + 1][3] if k + 1 < len(records) else len(self.lines)
            assert j is not None  # the diagnosing path numbers every record
        offset = self.starts[i]
        value = record[2]
        if "\r\n" in value:
            value = value.split("\r\n", 1)[0]
        if self.ascii_only:
            voff = offset + len(self.lines[i]) - len(value)
        else:
            voff = offset + _byte_len(self.lines[i]) - _byte_len(value)
        return offset, self.starts[j], voff, self.first_line + i


class CpimMessage:
    """An immutable, parsed message/cpim object that keeps its bytes.

    Attributes: ``raw``, ``form`` ("entity" or "body"), ``mime_headers`` (entity form: the
    outer ``(name, raw value)`` pairs), ``headers`` (tuple[Header] in source order),
    ``entity_headers`` (``(name, raw value)`` as MIME keeps them, leading space included),
    ``body_offset``, ``body`` (bytes), ``defects`` (tuple[Defect]), ``policy``.

    Views: ``sender`` (Party | None), ``to``/``cc`` (tuple[Party]), ``datetime``
    (DateTimeValue | None), ``subjects`` (tuple[Subject]), ``subject(lang)``,
    ``namespaces`` (dict prefix|None -> URI, final state), ``require`` (tuple[str]),
    ``requirements``, ``content_type`` (entity Content-Type value, stripped),
    ``dispositions`` (IMDN), ``find(local, namespace)``.

    Two messages are equal when they have the same bytes and the same form.
    Make one with :func:`parse`, :func:`parse_body` or :func:`build`.
    """

    __slots__ = (
        "_data",
        "_defects",
        "_form",
        "_frame",
        "_memo",
        "_parts",
        "_policy",
        "_recs",
        "_skeleton",
    )

    def __init__(  # noqa: PLR0917 - internal constructor
        self,
        data: bytes,
        form: Form,
        policy: Policy,
        records: list[_Record],
        frame: _Frame,
        defects: tuple[Defect, ...] | None,
    ) -> None:
        """Internal: use :func:`parse`, :func:`parse_body` or :func:`build`.

        ``defects`` is None while the values are still to be checked (lenient mode); the
        defects found while reading are then in ``frame``.
        """
        self._data = data
        self._form = form
        self._policy = policy
        self._recs: list[_Record] | None = records
        self._parts: list[tuple[str, str, str]] | None = None
        self._skeleton: _Skeleton | None = None
        self._frame = frame
        self._defects = defects

    # -- bytes and structure ------------------------------------------------------------

    @property
    def raw(self) -> bytes:
        """The exact bytes parsed (``bytes(msg)`` gives the same)."""
        return self._data

    @property
    def form(self) -> Form:
        """``"entity"`` (starts with the MIME header block) or ``"body"``."""
        return self._form

    @property
    def policy(self) -> Policy:
        """The policy the message was read with (edits are read again with it)."""
        return self._policy

    @property
    def mime_headers(self) -> tuple[tuple[str, str], ...]:
        """The outer MIME headers ``(name, raw value)`` (entity form; empty for a body)."""
        return self._frame[0]

    @property
    def headers_offset(self) -> int:
        """Byte offset of the first CPIM header (where the body form starts)."""
        return self._frame[1]

    @property
    def entity_headers(self) -> tuple[tuple[str, str], ...]:
        """The encapsulated entity's headers ``(name, raw value)`` as MIME keeps them."""
        pairs = self._frame[3]
        if pairs is None:  # read by the fast path, which checked them: split on first use
            memo = self._memory()
            pairs = memo.get("entity_headers")
            if pairs is None:
                e0 = self._frame[2] + 4
                lines = self._data[e0 : self._frame[4] - 4].decode("utf-8").split("\r\n")
                pairs = memo["entity_headers"] = tuple(
                    [(name, value) for name, _, value in map(_PARTITION, lines, _COLONS)]
                )
        return pairs

    @property
    def body_offset(self) -> int:
        """Byte offset of the body (after the entity's blank line)."""
        return self._frame[4]

    @property
    def body(self) -> bytes:
        """The encapsulated entity's body: every byte after its blank line."""
        return self._data[self._frame[4] :]

    @property
    def defects(self) -> tuple[Defect, ...]:
        """Violations accepted in lenient mode, and warnings (:data:`WARNING_CODES`), in
        the order of their offsets.

        Lenient parsing checks at once only what makes an object unusable
        (:data:`FATAL_CODES`); the rest — control characters and whitespace in header
        lines, the header values (§4 syntax, escapes, parameters, undefined prefixes),
        profile rules — on first access of this attribute: it never decides whether a
        lenient parse succeeds.
        """
        if self._defects is None:
            faults = _Faults(self._data, strict=False)
            layout = self._layout()
            if self._frame[6] and _has_line_faults(self._data, self._frame[1], self._frame[2]):
                _read_lines(self._data, self._frame[1], layout.lines, faults)
            _check_values(self._records, layout, faults, self._policy.profile)
            merged = self._frame[5] + tuple(faults.items)
            self._defects = tuple(sorted(merged, key=lambda d: d.offset or 0))
        return self._defects

    def __bytes__(self) -> bytes:
        return self._data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CpimMessage):
            return NotImplemented
        return self._form == other._form and self._data == other._data

    def __hash__(self) -> int:
        return hash((self._form, self._data))

    def __repr__(self) -> str:
        return (
            f"<CpimMessage {self._form} form, {len(self._records)} headers, "
            f"{len(self._data) - self._frame[4]} body bytes>"
        )

    @property
    def _records(self) -> list[_Record]:
        """The CPIM header records, made on first use from the lines split at their first
        SP and the block's skeleton when the lean front read a known block."""
        records = self._recs
        if records is None:
            skeleton = self._skeleton
            parts = self._parts
            assert skeleton is not None
            assert parts is not None
            records = self._recs = _records_of(skeleton, parts)
        return records

    def _memory(self) -> dict[str, Any]:
        try:
            return self._memo
        except AttributeError:  # first use: not set while parsing, to keep that cheap
            self._memo: dict[str, Any] = {}
            return self._memo

    def _layout(self) -> _Layout:
        memo = self._memory()
        layout: _Layout | None = memo.get("layout")
        if layout is None:
            layout = memo["layout"] = _Layout(self._data, self._frame[1], self._frame[2])
        return layout

    @property
    def headers(self) -> tuple[Header, ...]:
        """The CPIM message headers in source order."""
        memo = self._memory()
        headers: tuple[Header, ...] | None = memo.get("headers")
        if headers is None:
            layout = self._layout()
            records = self._records
            data = self._data
            items = []
            for k, (head, namespace, value, _) in enumerate(records):
                offset, end, _voff, number = layout.span(records, k)
                items.append(
                    Header(
                        head[0],
                        head[1],
                        head[2],
                        namespace,
                        head[3],
                        value,
                        data,
                        number,
                        offset,
                        end,
                    )
                )
            headers = memo["headers"] = tuple(items)
        return headers

    # -- views ----------------------------------------------------------------------------

    @property
    def sender(self) -> Party | None:
        """The first From header (RFC 3862 §4.1), or None.

        A malformed value (lenient mode) gives a best-effort Party: the URI is what the
        last ``<...>`` holds, or the whole value.
        """
        skeleton = self._skeleton
        if skeleton is not None:  # where the From is, known from the block's skeleton
            k = skeleton[3]
            parts = self._parts
            assert parts is not None
            return None if k < 0 else _party_of(parts[k][2])
        for record in self._records:
            if record[0][2] == "From" and record[1] == CPIM_NS:
                return _party_of(record[2])
        return None

    @property
    def to(self) -> tuple[Party, ...]:
        """Every To header in order (RFC 3862 §4.2)."""
        skeleton = self._skeleton
        if skeleton is not None:
            parts = self._parts
            assert parts is not None
            where = skeleton[4]
            if len(where) == 1:  # the common case
                return (_party_of(parts[where[0]][2]),)
            return tuple([_party_of(parts[k][2]) for k in where])
        found = []
        for record in self._records:
            if record[0][2] == "To" and record[1] == CPIM_NS:
                found.append(_party_of(record[2]))  # noqa: PERF401 - a loop costs less here
        return tuple(found)

    @property
    def cc(self) -> tuple[Party, ...]:
        """Every cc header in order (RFC 3862 §4.3)."""
        skeleton = self._skeleton
        if skeleton is not None:
            parts = self._parts
            assert parts is not None
            where = skeleton[5]
            if len(where) == 1:  # the common case
                return (_party_of(parts[where[0]][2]),)
            return tuple([_party_of(parts[k][2]) for k in where])
        found = []
        for record in self._records:
            if record[0][2] == "cc" and record[1] == CPIM_NS:
                found.append(_party_of(record[2]))  # noqa: PERF401 - a loop costs less here
        return tuple(found)

    @property
    def datetime(self) -> DateTimeValue | None:
        """The first DateTime header (RFC 3862 §4.4), or None (also when malformed)."""
        for head, namespace, value, _ in self._records:
            if head[2] == "DateTime" and namespace == CPIM_NS:
                return parse_datetime(value)
        return None

    @property
    def subjects(self) -> tuple[Subject, ...]:
        """Every Subject header in order with its language (RFC 3862 §4.5, §3.3)."""
        return tuple(Subject(h.lang, h.value) for h in self.find("Subject"))

    def subject(self, lang: str | None = None) -> str | None:
        """The Subject text best matching ``lang`` (RFC 3066 tags compare case-insensitively).

        Order of preference: the exact tag; a tag with the same primary subtag (``en`` for
        ``en-GB`` and the other way); the untagged Subject; the first Subject. With
        ``lang=None``: the untagged Subject, else the first. None when there is no Subject.
        """
        subjects = self.subjects
        if not subjects:
            return None
        if lang is not None:
            want = lang.lower()
            for s in subjects:
                if s.lang is not None and s.lang.lower() == want:
                    return s.text
            primary = want.split("-")[0]
            for s in subjects:
                if s.lang is not None and s.lang.lower().split("-")[0] == primary:
                    return s.text
        for s in subjects:
            if s.lang is None:
                return s.text
        return subjects[0].text

    @property
    def namespaces(self) -> dict[str | None, str]:
        """Prefix -> URI bindings after the last header (None: the default namespace)."""
        bindings: dict[str | None, str] = {None: CPIM_NS}
        for head, namespace, value, _ in self._records:
            if head[2] == "NS" and namespace == CPIM_NS:
                binding = _read_ns(value)
                if binding is not None:
                    bindings[binding[0]] = binding[1]
        return bindings

    @property
    def requirements(self) -> tuple[Requirement, ...]:
        """Every name listed by the core Require headers, resolved through the NS bindings
        in force at its line (RFC 3862 §3.5)."""
        found: list[Requirement] = []
        bindings: dict[str | None, str] = {None: CPIM_NS}
        for head, namespace, value, _ in self._records:
            if namespace != CPIM_NS:
                continue
            if head[2] == "NS":
                binding = _read_ns(value)
                if binding is not None:
                    bindings[binding[0]] = binding[1]
            elif head[2] == "Require":
                found.extend(_read_require(value, bindings))
        return tuple(found)

    @property
    def require(self) -> tuple[str, ...]:
        """The names listed by Require, as written (RFC 3862 §4.7)."""
        return tuple(r.name for r in self.requirements)

    @property
    def content_type(self) -> str | None:
        """The encapsulated entity's Content-Type value, unfolded and stripped."""
        for name, value in self.entity_headers:
            if name.lower() == "content-type":
                return value.replace("\r\n", "").strip()
        return None

    @property
    def dispositions(self) -> tuple[str, ...]:
        """The IMDN Disposition-Notification tokens (RFC 5438 §6.3), lower-cased."""
        for h in self.find("Disposition-Notification", IMDN_NS):
            return tuple(t.strip().lower() for t in h.value.split(",") if t.strip())
        return ()

    def find(self, local: str, namespace: str = CPIM_NS) -> tuple[Header, ...]:
        """Headers whose resolved (namespace, local name) match, in source order."""
        picks = [k for k, r in enumerate(self._records) if r[0][2] == local and r[1] == namespace]
        if not picks:
            return ()
        headers = self.headers
        return tuple(headers[k] for k in picks)

    # -- forms and edits --------------------------------------------------------------------

    def to_body(self) -> bytes:
        """The body form (first CPIM header to the end), as a SIP MESSAGE body carries it."""
        return self._data[self._frame[1] :]

    def to_entity(self, mime_header: bytes = MIME_HEADER) -> bytes:
        """The entity form; for an entity-form message, its own bytes unchanged.

        ``mime_header`` is the MIME header block (without the blank line) put in front of a
        body-form message; each of its lines ends with CRLF.
        """
        if self._form == "entity":
            return self._data
        if not mime_header.endswith(b"\r\n") or b"\r\n\r\n" in mime_header:
            raise ValueError("mime_header must be header lines, each ending with CRLF")
        return mime_header + b"\r\n" + self._data

    def _blank_offset(self) -> int:
        """Offset of the blank line that ends the CPIM header block."""
        h0, h_end = self._frame[1], self._frame[2]
        return h_end + 2 if h_end > h0 else h0

    def with_header(
        self,
        name: str,
        value: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        index: int | None = None,
    ) -> CpimMessage:
        """A new message with one header added (value escaped per §2.3); every other byte
        identical. ``index`` is the position among the headers (default: after the last).

        The result is read again with this message's policy. To change a *signed* object,
        wrap it in a new one instead (RFC 3862 §6).
        """
        line = _encode_header(name, value, params)
        count = len(self._records)
        if index is None or index == count:
            at = self._blank_offset()
        elif 0 <= index < count:
            at = self._layout().span(self._records, index)[0]
        else:
            raise IndexError(f"header index {index} out of range 0..{count}")
        return _parse(self._data[:at] + line + self._data[at:], self._form, self._policy)

    def without_header(self, name: str, *, occurrence: int | None = None) -> CpimMessage:
        """A new message without the header(s) named exactly ``name`` (all, or the
        ``occurrence``-th, 0-based); every other byte identical.

        Without ``occurrence`` and with no such header, the message itself is returned;
        an ``occurrence`` that does not exist raises IndexError.
        """
        layout = self._layout()
        records = self._records
        spans = [layout.span(records, k)[:2] for k, r in enumerate(records) if r[0][0] == name]
        if occurrence is not None:
            if not 0 <= occurrence < len(spans):
                raise IndexError(f"no occurrence {occurrence} of header {name!r}")
            spans = [spans[occurrence]]
        if not spans:
            return self
        parts = []
        pos = 0
        for start, end in spans:
            parts.append(self._data[pos:start])
            pos = end
        parts.append(self._data[pos:])
        return _parse(b"".join(parts), self._form, self._policy)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def parse(
    data: bytes,
    *,
    strict: bool | None = None,
    profile: Profile | None = None,
    policy: Policy | None = None,
) -> CpimMessage:
    """Parse a whole MIME entity starting with the ``Content-type: Message/CPIM`` block.

    ``strict`` and ``profile`` override the ``policy`` (default: lenient, no profile).
    Raises :class:`~canonical.errors.ParseError`; see the module docstring for the modes.
    """
    if type(data) is not bytes:
        data = _as_bytes(data)
    if policy is None and strict is None and profile is None:
        return _parse(data, "entity", DEFAULT)
    return _parse(data, "entity", _resolve(policy, strict, profile))


def parse_body(
    data: bytes,
    *,
    strict: bool | None = None,
    profile: Profile | None = None,
    policy: Policy | None = None,
) -> CpimMessage:
    """Parse a transport body (starts at the first CPIM header, RFC 3862 §2 via SIP/MSRP)."""
    if type(data) is not bytes:
        data = _as_bytes(data)
    if policy is None and strict is None and profile is None:
        return _parse(data, "body", DEFAULT)
    return _parse(data, "body", _resolve(policy, strict, profile))


_POLICIES: dict[tuple[Policy | None, bool | None, Profile | None], Policy] = {}


def _resolve(policy: Policy | None, strict: bool | None, profile: Profile | None) -> Policy:
    """:func:`canonical.policy.resolve`, remembered (policies are frozen and few)."""
    key = (policy, strict, profile)
    found = _POLICIES.get(key)
    if found is None:
        found = resolve(policy, strict=strict, profile=profile)
        if len(_POLICIES) < 64:
            _POLICIES[key] = found
    return found


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"message/cpim is parsed from bytes, not {type(data).__name__}")


class _Faults:
    """Collects defects; raises at once in strict mode (and always for fatal codes)."""

    __slots__ = ("data", "items", "strict")

    def __init__(self, data: bytes, strict: bool) -> None:
        self.data = data
        self.strict = strict
        self.items: list[Defect] = []

    def add(self, code: str, detail: str, offset: int, line: int | None = None) -> None:
        if code in FATAL_CODES or (self.strict and code not in WARNING_CODES):
            raise self.fatal(code, detail, offset, line)
        if line is None:
            line = self.data.count(b"\n", 0, offset) + 1
        self.items.append(Defect(code, detail, offset, line))

    def fatal(self, code: str, detail: str, offset: int, line: int | None = None) -> ParseError:
        if line is None:
            line = self.data.count(b"\n", 0, offset) + 1
        # an object over the size limit is refused as too large (SIP 413, HTTP 413), not
        # as malformed: the sender must send less, not fix its syntax
        reason = Reason.TOO_LARGE if code == "POLICY_MESSAGE_TOO_LARGE" else None
        return ParseError(
            code, detail, line=line, offset=offset, hint=HINTS.get(code, ""), reason=reason
        )


def _parse(data: bytes, form: Form, policy: Policy) -> CpimMessage:
    """Read ``data`` (RFC 3862 §2), the relaying hot path: the common case inline, with
    no helper call and no bookkeeping; anything else is read by :func:`_parse_general`
    from the start, which gives the same result for what this accepts (a property test
    holds them equal).

    The common case: the canonical MIME block (entity form), a non-empty CPIM block whose
    lines all start with a valid ``Name:params`` head, an entity block of known, unfolded
    MIME headers starting with its Content-Type, no bare CR or LF, within the policy's
    limits; in strict mode also no control character in the header blocks but the CRLFs
    (and HTAB in the entity's), no whitespace ending a CPIM line and an SP after every
    head. Values are checked now in strict mode (all at once by the block's pattern when
    its heads were seen before: :func:`_strict_block`; else one by one), on first access
    of ``defects`` in lenient mode (with the line-level checks: see
    :func:`_has_line_faults`).
    """
    # The blocks (RFC 3862 §2): one split of a small object (the body is copied once, which
    # costs less than two searches from an offset up to about 8 KiB), two searches and
    # slices of the header blocks of a larger one.
    h0 = 30 if form == "entity" else 0
    size = len(data)
    if size <= _SPLIT_LIMIT:
        try:
            if h0:
                mime, head, ehead, _ = data.split(b"\r\n\r\n", 3)
                if mime != _MIME_LINE:
                    return _parse_general(data, form, policy)
            else:
                head, ehead, _ = data.split(b"\r\n\r\n", 2)
        except ValueError:  # a blank line missing, or the CPIM block empty
            if data.startswith(b"\r\n", h0):
                return _parse_empty_block(data, form, policy, h0)
            return _parse_general(data, form, policy)
    else:
        if h0 and not data.startswith(_CANONICAL_MIME):
            return _parse_general(data, form, policy)
        h_end = data.find(b"\r\n\r\n", h0)
        e_end = data.find(b"\r\n\r\n", h_end + 4)
        if h_end < 0 or e_end < 0:
            return _parse_general(data, form, policy)
        head, ehead = data[h0:h_end], data[h_end + 4 : e_end]
    h_end = h0 + len(head)
    e_end = h_end + 4 + len(ehead)
    if e_end + 2 - h0 > policy.max_line_length or size > policy.max_message_size:
        return _parse_general(data, form, policy)
    try:
        block = head.decode()  # UTF-8
        lines = block.split("\r\n")
        elines = ehead.decode().split("\r\n")
    except UnicodeDecodeError:
        return _parse_general(data, form, policy)
    strict = policy.strict
    if len(lines) + len(elines) + 3 > policy.max_headers or (
        # strict: no control character but CRLF (hence no bare CR or LF) and HTAB in the
        # entity's block (the CPIM block's are checked below)
        len(ehead) - len(ehead.translate(None, _CTL_NO_TAB)) != 2 * len(elines) - 2
        if strict
        # lenient: every CR and LF is part of a CRLF (the separators are gone)
        else "\r" in (joined := "".join(lines + elines)) or "\n" in joined
    ):
        return _parse_general(data, form, policy)
    # The CPIM lines (§3): a block whose sequence of heads (and NS values) was read before
    # has the same names, namespaces and parameters; only the values are new. Strict mode
    # takes that path only when the whole block matches the block's remembered pattern of
    # valid values (:func:`_strict_block`); any other block has its records read and each
    # value checked now, which finds the first fault and says where it is.
    parts = list(map(_PARTITION, lines, _SPACES))
    key = tuple(map(_HEAD_OF, parts))
    skeleton = _SKELETONS.get(key)
    checked = False  # strict: every value found valid at once
    if strict and skeleton is not None:
        valid = _STRICT_BLOCKS.get(key)
        if valid is None:
            valid = _strict_block(key, skeleton)
        if policy.profile is None and valid(block) is not None:
            checked = True
        else:
            skeleton = None
    if (
        strict
        and not checked
        and (
            # no control character but CRLF (hence no bare CR or LF), no HTAB or SP ending a
            # line (what a block matching its strict pattern has not either)
            len(head) - len(head.translate(None, _CTL_NO_TAB)) != 2 * len(lines) - 2
            or b"\t" in head
            or b" \r\n" in head
            or head.endswith(b" ")
        )
    ):
        return _parse_general(data, form, policy)
    if skeleton is not None:
        for k, text, quoted in skeleton[2]:
            if quoted:  # a head with a quoted String parameter, which may hold SP
                line = lines[k]
                if line.startswith(text):
                    parts[k] = (text[:-1], " ", line[len(text) :])
                    continue
            elif parts[k][2] == text:  # an NS value
                continue
            skeleton = None
            checked = False
            parts = list(map(_PARTITION, lines, _SPACES))  # undo what was patched
            break
    records: list[_Record] | None = None
    if skeleton is None:
        records, skeleton = _read_parts(parts, lines, key)
        if records is None:
            if not lines[0] and data.startswith(b"\r\n", h0):
                return _parse_empty_block(data, form, policy, h0)
            return _parse_general(data, form, policy)
    # The entity's headers: Content-Type first, then known names; split on first use.
    if not elines[0].startswith(_CONTENT_TYPE_HEADS):
        return _parse_general(data, form, policy)
    if len(elines) == 2:  # the second most common case: Content-Type and one more
        name, colon, _ = elines[1].partition(":")
        if not colon or name not in _MIME_NAMES:
            return _parse_general(data, form, policy)
    elif len(elines) > 2:
        names = _MIME_NAMES
        for name, colon, _ in map(_PARTITION, elines[1:], _COLONS):
            if not colon or name not in names:
                return _parse_general(data, form, policy)
    found: tuple[Defect, ...] | None = () if strict else None
    if strict and not checked:
        if records is None:
            assert skeleton is not None
            records = _records_of(skeleton, parts)
        if "" in map(_VALUE, records):  # a line ending at its head: diagnosed there
            return _parse_general(data, form, policy)
        faults = _Faults(data, True)
        _check_values(records, lambda: _Layout(data, h0, h_end, lines), faults, policy.profile)
        found = tuple(faults.items)
    msg = _new_message(CpimMessage)
    msg._data = data
    msg._form = form
    msg._policy = policy
    msg._recs = records
    msg._parts = parts
    msg._skeleton = skeleton
    msg._frame = (
        _CANONICAL_MIME_HEADERS if h0 else (),
        h0,
        h_end,
        None,
        e_end + 4,
        found or (),
        not strict,
    )
    msg._defects = found
    return msg


_new_message = object.__new__


def _parse_empty_block(data: bytes, form: Form, policy: Policy, h0: int) -> CpimMessage:
    """The lean front for an object whose CPIM header block is empty: its blank line
    follows at once (RFC 3862 §2 allows no headers; vector 027), so the encapsulated
    entity's header block starts right after it. Anything unusual is read by
    :func:`_parse_general`, which gives the same result for what this accepts."""
    e0 = h0 + 2
    e_end = data.find(b"\r\n\r\n", e0)
    strict = policy.strict
    if (
        e_end <= e0
        or (h0 and not data.startswith(_CANONICAL_MIME))
        or e_end + 2 - h0 > policy.max_line_length
        or len(data) > policy.max_message_size
        or policy.profile is not None
    ):
        return _parse_general(data, form, policy)
    ehead = data[e0:e_end]
    try:
        elines = ehead.decode().split("\r\n")  # UTF-8
    except UnicodeDecodeError:
        return _parse_general(data, form, policy)
    if len(elines) + 3 > policy.max_headers or (
        len(ehead) - len(ehead.translate(None, _CTL_NO_TAB)) != 2 * len(elines) - 2
        if strict
        else "\r" in (joined := "".join(elines)) or "\n" in joined
    ):
        return _parse_general(data, form, policy)
    if not elines[0].startswith(_CONTENT_TYPE_HEADS):
        return _parse_general(data, form, policy)
    pairs = []
    for line in elines:
        name, colon, value = line.partition(":")
        if not colon or name not in _MIME_NAMES:
            return _parse_general(data, form, policy)
        pairs.append((name, value))
    msg = _new_message(CpimMessage)
    msg._data = data
    msg._form = form
    msg._policy = policy
    msg._recs = []
    msg._parts = []
    msg._skeleton = _EMPTY_SKELETON
    msg._frame = (
        _CANONICAL_MIME_HEADERS if h0 else (),
        h0,
        h0,
        tuple(pairs),
        e_end + 4,
        (),
        False,
    )
    msg._defects = () if strict else None
    return msg


#: The skeleton of an empty CPIM header block.
_EMPTY_SKELETON: Final[_Skeleton] = ((), (), (), -1, (), ())
_HEAD_OF = operator.itemgetter(0)
_NONES = itertools.repeat(None)


def _records_of(skeleton: _Skeleton, parts: list[tuple[str, str, str]]) -> list[_Record]:
    """The records of a block read through its skeleton: what :func:`_read_parts` makes."""
    return list(zip(skeleton[0], skeleton[1], map(_VALUE, parts), _NONES, strict=False))


def _read_parts(
    parts: list[tuple[str, str, str]], lines: list[str], key: tuple[str, ...]
) -> tuple[list[_Record] | None, _Skeleton | None]:
    """The records of CPIM lines split at their first SP, when each starts with a valid
    head (None otherwise), names resolved through NS (§3.4), and the block's skeleton,
    remembered (:data:`_SKELETONS`) under ``key``, the heads of ``parts``. A line whose
    head has a quoted String parameter gets its real value in ``parts`` too.
    """
    records: list[_Record] = []
    append = records.append
    heads = _HEADS.get
    ns_values = _NS_VALUES.get
    default: str | None = CPIM_NS
    bindings: dict[str | None, str] = {}
    quoted: list[tuple[int, str, bool]] = []
    for name, _, value in parts:
        info = heads(name)
        if info is None:  # an unknown head: read, then remembered
            info = _read_head(name)
            if info is None:
                if '"' not in name:
                    return None, None
                # a quoted String parameter
                line = lines[len(records)]
                info, value = _read_quoted_head(line, name, value)  # noqa: PLW2901
                if info is None:
                    return None, None
                quoted.append((len(records), line[: len(line) - len(value)], True))
        if info[4]:  # prefixed, or NS: resolve through the bindings (§3.4)
            prefix = info[1]
            namespace = default if prefix is None else bindings.get(prefix)
            if info[2] == "NS" and namespace == CPIM_NS:
                binding = ns_values(value) or _read_ns(value)
                if binding is not None:
                    bindings[binding[0]] = binding[1]
                    if binding[0] is None:
                        default = binding[1]
            append((info, namespace, value, None))
        else:
            append((info, default, value, None))
    for k, text, _ in quoted:  # the value is after the whole head, not the first SP
        parts[k] = (text[:-1], " ", records[k][2])
    checks = quoted + [(k, r[2], False) for k, r in enumerate(records) if r[0][2] == "NS"]
    if len(parts) > _SKELETON_LINES or (
        quoted and any(records[k][0][2] == "NS" for k, *_ in quoted)
    ):
        return records, None
    parties = [k for k, r in enumerate(records) if r[0][2] in _PARTY_HEADERS and r[1] == CPIM_NS]
    skeleton: _Skeleton = (
        tuple([r[0] for r in records]),
        tuple([r[1] for r in records]),
        tuple(sorted(checks)),
        next((k for k in parties if records[k][0][2] == "From"), -1),
        tuple([k for k in parties if records[k][0][2] == "To"]),
        tuple([k for k in parties if records[k][0][2] == "cc"]),
    )
    size = sum(map(len, key)) + sum(len(text) for _, text, _ in skeleton[2])
    if len(_SKELETONS) < _SKELETONS_MAX and size <= _SKELETON_SIZE:
        if _SKELETONS.get(key, skeleton) != skeleton:  # other NS values for these heads
            _STRICT_BLOCKS.pop(key, None)  # made for the ones replaced
        _SKELETONS[key] = skeleton
    return records, skeleton


#: CPIM header blocks already read, by their sequence of heads (``Name:params`` before the
#: first SP of each line). Keys and the NS values an entry depends on are header names
#: and namespace URIs, which recur from message to message, never other values; bounded
#: like the other caches (at most _SKELETONS_MAX entries of _SKELETON_SIZE characters).
_SKELETONS: dict[tuple[str, ...], _Skeleton] = {}
_SKELETONS_MAX: Final = 1024
_SKELETON_LINES: Final = 32
_SKELETON_SIZE: Final = 1024
_SPLIT_LIMIT: Final = 8192
_MIME_LINE: Final = MIME_HEADER[:-2]
_PARTITION = str.partition
_VALUE = operator.itemgetter(2)
_SPACES = itertools.repeat(" ")
_COLONS = itertools.repeat(":")


def _parse_general(data: bytes, form: Form, policy: Policy) -> CpimMessage:
    """Read ``data`` (RFC 3862 §2): find the three header blocks with byte searches, read
    the CPIM headers and the entity's MIME headers, then check values now (strict) or on
    demand (lenient).

    Blocks that are nothing unusual are read inline here too (a CPIM block with no bare
    CR or LF whose lines start with a valid ``Name:params`` head; an entity block of
    known, unfolded MIME headers); anything else goes through the diagnosing slow paths,
    which report each fault with its place.
    """
    size = len(data)
    strict = policy.strict
    if size > policy.max_message_size:
        raise _Faults(data, strict).fatal(
            "POLICY_MESSAGE_TOO_LARGE",
            f"object of {size} bytes exceeds max_message_size {policy.max_message_size}",
            policy.max_message_size,
        )
    faults: _Faults | None = None
    # 1. The outer MIME header block (entity form only; RFC 3862 §2.1).
    mime_headers: tuple[tuple[str, str], ...] = ()
    h0 = 0
    if form == "entity":
        if data.startswith(_CANONICAL_MIME):
            mime_headers = _CANONICAL_MIME_HEADERS
            h0 = 30
        else:
            faults = _Faults(data, strict)
            mime_headers, h0 = _read_outer(data, faults, policy)
    # 2. The CPIM header block (RFC 3862 §2.2).
    if data.startswith(b"\r\n", h0):
        h_end = h0  # empty block: the blank line follows at once (vector 027)
        e0 = h0 + 2
    else:
        h_end = data.find(b"\r\n\r\n", h0)
        if h_end < 0:
            raise _missing_blank(faults or _Faults(data, strict), h0, "the CPIM header block", None)
        e0 = h_end + 4
    # 3. The encapsulated entity's header block (RFC 3862 §2.4).
    if data.startswith(b"\r\n", e0):
        e_end = e0
        body_offset = e0 + 2
    else:
        e_end = data.find(b"\r\n\r\n", e0)
        if e_end < 0:
            faults = faults or _Faults(data, strict)
            if e0 >= size:
                raise faults.fatal(
                    "ENTITY_NO_CONTENT_TYPE",
                    "the object ends after the CPIM headers: there is no encapsulated entity",
                    size,
                )
            raise _missing_blank(
                faults,
                e0,
                "the encapsulated entity's header block",
                _blank_line_clue(data, mime_headers, h0, h_end),
            )
        body_offset = e_end + 4
    # 4. Both header blocks in one pass when nothing is unusual: one decode, one split, two
    # byte counts proving every CR and LF is part of a CRLF (no bare CR or LF, which are
    # fatal). A CPIM line is read here when it starts with a valid ``Name:params`` head;
    # what else may be wrong with it (control characters, whitespace at its end, no SP
    # after the head) leaves its parts as the diagnosing path reads them, so lenient mode
    # records those defects when ``defects`` is first read (:func:`_has_line_faults`) and
    # strict mode, which must raise the first fault in line order, sends any such block
    # to the diagnosing path. Leading whitespace and folding fail the head lookup.
    records: list[_Record] = []
    lines: list[str] = []
    entity_headers: tuple[tuple[str, str], ...] = ()
    cpim_done = h_end == h0
    entity_done = lazy = quoted = checked = False
    if e_end > e0 and e_end + 2 - h0 <= policy.max_line_length:
        region = data[h0 - 2 : e_end + 2] if h0 else b"\r\n" + data[: e_end + 2]
        try:
            every = region.decode("utf-8").split("\r\n")  # "", CPIM..., "", entity..., ""
        except UnicodeDecodeError:
            every = []
        crlfs = len(every) - 1
        if (
            every
            and crlfs < policy.max_headers
            and region.count(b"\n") == crlfs
            and region.count(b"\r") == crlfs
            and not (
                strict
                and (
                    len(region) - len(region.translate(None, _CTL_NO_TAB)) != 2 * crlfs
                    or data.find(b"\t", h0, h_end) >= 0
                    or data.find(b" \r\n", h0, h_end + 2) >= 0
                )
            )
        ):
            blank = every.index("", 1)
            lines = every[1:blank]
            heads = _HEADS
            append = records.append
            default: str | None = CPIM_NS
            bindings: dict[str | None, str] | None = None
            cpim_done = True
            lazy = not strict  # line-level defects found on first access of ``defects``
            for index, line in enumerate(lines):
                head, _, value = line.partition(" ")
                info = heads.get(head)
                if info is None or not value:
                    # An unknown head (read, then remembered), or a line that ends at its
                    # head or at its first SP: strict mode diagnoses that one.
                    if info is None:
                        info = _read_head(head)
                        if info is None and '"' in head:  # a quoted String parameter
                            info, value = _read_quoted_head(line, head, value)
                            quoted = True
                    if info is None or (strict and not value):
                        cpim_done = lazy = False
                        break
                if info[4]:  # prefixed, or NS: resolve through the bindings (§3.4)
                    prefix = info[1]
                    if prefix is None:
                        namespace = default
                    else:
                        namespace = bindings.get(prefix) if bindings is not None else None
                    if info[2] == "NS" and namespace == CPIM_NS:
                        binding = _read_ns(value)
                        if binding is not None:
                            if bindings is None:
                                bindings = {}
                            bindings[binding[0]] = binding[1]
                            if binding[0] is None:
                                default = binding[1]
                    append((info, namespace, value, index))
                else:
                    append((info, default, value, index))
            names = _MIME_NAMES
            pairs = []
            for line in every[blank + 1 : -1]:
                name, colon, value = line.partition(":")
                if not colon or name not in names:
                    break
                pairs.append((name, value))
            else:
                entity_headers = tuple(pairs)
                entity_done = True
    if not cpim_done:
        faults = faults or _Faults(data, strict)
        records, lines = _read_cpim_block(data, h0, h_end, faults, policy)
        checked = strict  # the diagnosing path checks values line by line in strict mode
    elif quoted and strict:
        # Values before the entity block, in the order the diagnosing path would find faults.
        faults = faults or _Faults(data, strict)
        _check_values(records, lambda: _Layout(data, h0, h_end, lines), faults, None)
        checked = True
    if not entity_done and e_end > e0:
        faults = faults or _Faults(data, strict)
        entity_headers = _read_mime_block(data, e0, e_end, faults, policy, "entity header")
    # 5. The entity's Content-Type is required (§2.4).
    if (not entity_headers or entity_headers[0][0] not in _CONTENT_TYPE_NAMES) and not any(
        name.lower() == "content-type" for name, _ in entity_headers
    ):
        clue = _blank_line_clue(data, mime_headers, h0, h_end)
        raise (faults or _Faults(data, strict)).fatal(
            "ENTITY_NO_CONTENT_TYPE",
            "the encapsulated MIME entity has no Content-Type header" + (clue[1] if clue else ""),
            e0,
        )
    # 6. Values: now in strict mode, on first access of ``defects`` in lenient mode.
    if strict:
        faults = faults or _Faults(data, strict)
        if records and not checked:
            _check_values(records, lambda: _Layout(data, h0, h_end, lines), faults, policy.profile)
        elif policy.profile == "msrp":
            if records:
                layout = _Layout(data, h0, h_end, lines)
                _check_msrp(records, layout, faults, layout.starts[-1])
            else:
                _check_msrp(records, None, faults, h0)
    found = tuple(faults.items) if faults is not None and faults.items else ()
    frame = (mime_headers, h0, h_end, entity_headers, body_offset, found, lazy)
    return CpimMessage(data, form, policy, records, frame, found if strict else None)


def _read_outer(
    data: bytes, faults: _Faults, policy: Policy
) -> tuple[tuple[tuple[str, str], ...], int]:
    """The outer MIME header block of the entity form, which must say Message/CPIM
    (RFC 3862 §2.1); returns its headers and where the CPIM headers start."""
    if data.startswith(b"\r\n") or not data:
        raise faults.fatal(
            "NOT_MESSAGE_CPIM",
            "no 'Content-type: Message/CPIM' header block before the first blank line",
            0,
            1,
        )
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise _missing_blank(faults, 0, "the MIME header block", None)
    mime_headers = _read_mime_block(data, 0, end, faults, policy, "MIME header")
    _check_outer_type(mime_headers, faults)
    return mime_headers, end + 4


_CONTENT_TYPE_NAMES: Final = frozenset({"Content-Type", "Content-type", "content-type"})
_CONTENT_TYPE_HEADS: Final = tuple(name + ":" for name in sorted(_CONTENT_TYPE_NAMES))


def _bare_fault(faults: _Faults, at: int) -> ParseError:
    if faults.data[at] == 0x0A:
        return faults.fatal("BARE_LF", "line ends with LF without CR", at)
    return faults.fatal("BARE_CR", "CR not followed by LF inside a header block", at)


_CPIM_LINE = re.compile(rb"(?:^|\r\n)((?:From|To|cc|NS|DateTime|Subject|Require):)")


def _blank_line_clue(
    data: bytes, mime_headers: tuple[tuple[str, str], ...], h0: int, h_end: int
) -> tuple[int, str] | None:
    """Where a blank line is probably missing: CPIM headers inside the MIME block
    (vector i004), or a Content-Type ending the CPIM block (RFC 5438 / 4975 examples, i003)."""
    if any(name in _CORE_NAMES for name, _ in mime_headers):
        m = _CPIM_LINE.search(data, 0, h0)
        at = m.start(1) if m is not None else 0
        return at, (
            "; the MIME header block contains CPIM headers: the blank line after "
            "'Content-type: Message/CPIM' is missing"
        )
    if h_end > h0:
        last = data.rfind(b"\r\n", h0, h_end)
        start = last + 2 if last >= 0 else h0
        if data[start:h_end].lower().startswith(b"content-type:"):
            return start, (
                "; the CPIM header block ends with a Content-Type header: the blank line "
                "between the CPIM headers and the encapsulated entity is missing"
            )
    return None


def _missing_blank(
    faults: _Faults, start: int, what: str, clue: tuple[int, str] | None
) -> ParseError:
    """The fault for a header block that never ends: a bare LF/CR if there is one (it hides
    the blank line), else NO_BLANK_LINE with the likely place."""
    bare = _BARE.search(faults.data, start)
    if bare is not None:
        return _bare_fault(faults, bare.start())
    detail = f"{what} is not followed by a blank line"
    if clue is not None:
        return faults.fatal("NO_BLANK_LINE", detail + clue[1], clue[0])
    return faults.fatal("NO_BLANK_LINE", detail, len(faults.data))


def _check_outer_type(mime_headers: tuple[tuple[str, str], ...], faults: _Faults) -> None:
    for name, value in mime_headers:
        if name.lower() == "content-type":
            media = value.replace("\r\n", "").split(";", 1)[0].strip()
            if media.lower() == "message/cpim":
                return
            raise faults.fatal(
                "NOT_MESSAGE_CPIM", f"the MIME Content-Type is {media!r}, not Message/CPIM", 0, 1
            )
    raise faults.fatal("NOT_MESSAGE_CPIM", "the MIME header block has no Content-Type", 0, 1)


def _decode_block(data: bytes, start: int, end: int, faults: _Faults) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        bad = data[at : at + max(1, min(4, exc.end - exc.start))].hex(" ")
        raise faults.fatal("BAD_UTF8", f"invalid UTF-8 ({exc.reason}): bytes {bad}", at) from None


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _check_block_limits(
    lines: list[str], start: int, end: int, faults: _Faults, policy: Policy
) -> None:
    """The policy limits on one header block: number of lines, longest line."""
    first_line = faults.data.count(b"\n", 0, start) + 1
    if len(lines) > policy.max_headers:
        raise faults.fatal(
            "POLICY_TOO_MANY_HEADERS",
            f"{len(lines)} lines in one header block exceed max_headers {policy.max_headers}",
            start,
            first_line,
        )
    limit = policy.max_line_length
    if end - start <= limit:
        return
    offset = start
    for i, line in enumerate(lines):
        size = _byte_len(line)
        if size > limit:
            raise faults.fatal(
                "POLICY_LINE_TOO_LONG",
                f"header line of {size} bytes exceeds max_line_length {limit}",
                offset,
                first_line + i,
            )
        offset += size + 2


#: MIME header names already found valid.
_MIME_NAMES: set[str] = {"Content-Type", "Content-type", "Content-ID", "Content-Length"}


def _read_mime_block(  # noqa: PLR0917 - internal
    data: bytes,
    start: int,
    end: int,
    faults: _Faults,
    policy: Policy,
    what: str,
) -> tuple[tuple[str, str], ...]:
    """A MIME header block (RFC 5322 §2.2 rules: folding allowed, names compared without
    case). Returns ``(name, raw value)`` pairs; the raw value is everything after the
    colon, continuation lines included with their CRLF, as MIME keeps it."""
    bare = _BARE.search(data, start, end)
    if bare is not None:
        raise _bare_fault(faults, bare.start())
    text = _decode_block(data, start, end, faults)
    lines = text.split("\r\n")
    _check_block_limits(lines, start, end, faults, policy)
    first_line = data.count(b"\n", 0, start) + 1
    headers: list[list[str]] = []
    offset = start
    for i, line in enumerate(lines):
        number = first_line + i
        if line[:1] in (" ", "\t"):
            if headers:
                headers[-1][1] += "\r\n" + line
            else:
                faults.add(
                    "LEADING_WHITESPACE",
                    f"the {what} block starts with a continuation line",
                    offset,
                    number,
                )
        else:
            colon = line.find(":")
            if colon < 0:
                raise faults.fatal(
                    "NO_COLON", f"{what} line {_clip(line)!r} has no ':'", offset, number
                )
            if colon == 0:
                raise faults.fatal("EMPTY_NAME", f"{what} line starts with ':'", offset, number)
            name = line[:colon]
            if _MIME_NAME.fullmatch(name):
                if len(_MIME_NAMES) < _HEADS_MAX and len(name) <= _CACHED_SIZE:
                    _MIME_NAMES.add(name)
            else:
                faults.add("BAD_HEADER_NAME", f"{what} name {name!r} is not valid", offset, number)
            headers.append([name, line[colon + 1 :]])
        offset += _byte_len(line) + 2
    return tuple((h[0], h[1]) for h in headers)


def _read_cpim_block(
    data: bytes, h0: int, h_end: int, faults: _Faults, policy: Policy
) -> tuple[list[_Record], list[str]]:
    """The CPIM header block when the inline fast path of :func:`_parse` does not apply:
    UTF-8 and policy limits checked with the place of the fault, every line diagnosed."""
    text = _decode_block(data, h0, h_end, faults)
    lines = text.split("\r\n")
    _check_block_limits(lines, h0, h_end, faults, policy)
    return _read_lines(data, h0, lines, faults), lines


#: Heads (``Name:params`` before the SP) already found valid, with their parts.
_HEADS: dict[str, _Head] = {}
#: Bounds of the caches, whose keys come from the input: entries, and key length (so a
#: flood of unusual headers costs at most a few megabytes and then only speed).
_HEADS_MAX: Final = 4096
_CACHED_SIZE: Final = 200


def _read_head(head: str) -> _Head | None:
    """The parts of a valid head (name, prefix, local, params, whether NS resolution has
    work to do for it), or None; remembered."""
    m = _HEAD.fullmatch(head)
    if m is None:
        return None
    name, prefix, local, params = m.groups()
    info = (name, prefix, local, params, prefix is not None or local == "NS")
    if len(_HEADS) < _HEADS_MAX and len(head) <= _CACHED_SIZE:
        _HEADS[head] = info
    return info


_QUOTED_HEAD = re.compile(
    rf'((?:([{_NC}]+)\.)?([{_NC}]+)):((?:;[{_NC}]+=(?:[{_TC}]+|"{_STR_BODY}"))*) '
)


def _read_quoted_head(line: str, start: str, value: str) -> tuple[_Head | None, str]:
    """A head whose parameters hold a quoted String, which may contain SP (RFC 3862 §3.6
    Parameter): its parts and the value after it, or ``(None, value)``; ``start`` is the
    line's text before its first SP, ``value`` the text after it.

    The last such head seen with the same ``start`` is remembered with its text: a line
    starting with that text and an SP has that head (the pattern reads a head up to the
    first SP outside a String, so the same text gives the same head).
    """
    known = _QUOTED_HEADS.get(start)
    if known is not None and line.startswith(known[0]):
        return known[1], line[len(known[0]) :]
    m = _QUOTED_HEAD.match(line)
    if m is None:
        return None, value
    name, prefix, local, params = m.groups()
    info = (name, prefix, local, params, prefix is not None or local == "NS")
    end = m.end()
    if len(_QUOTED_HEADS) < _HEADS_MAX and end <= _CACHED_SIZE:
        _QUOTED_HEADS[start] = (line[:end], info)
    return info, line[end:]


#: Heads with a quoted String parameter, by the text before their first SP: the whole head
#: with its SP, and its parts (bounded like the other caches).
_QUOTED_HEADS: dict[str, tuple[str, _Head]] = {}


def _has_line_faults(data: bytes, h0: int, h_end: int) -> bool:
    """Whether a CPIM block read by the fast path has something the diagnosing path
    reports about its lines (§2.2): a control character but the CRLFs, a line ending in
    whitespace, or a line ending at its head (no SP after it)."""
    if h_end == h0:
        return False
    block = data[h0:h_end]
    crlfs = block.count(b"\r\n")
    return (
        len(block) - len(block.translate(None, _CTL_BYTES)) != 2 * crlfs
        or data.find(b" \r\n", h0, h_end + 2) >= 0
        or _NO_SP_LINE.search(block) is not None
    )


# A line of a fast-read block with no SP: its head is valid (it has no SP), so the line
# ends at its head.
_NO_SP_LINE = re.compile(rb"(?:^|\n)[^ \r]*(?:\r|$)")


def _read_lines(data: bytes, h0: int, lines: list[str], faults: _Faults) -> list[_Record]:
    """The slow path of :func:`_read_cpim_block`: every line diagnosed (§2.2, §3.6), faults
    reported in order; in strict mode values are checked line by line too, so the first
    fault in the block is the one raised."""
    bare = _BARE.search(data, h0, h0 + sum(_byte_len(line) + 2 for line in lines) - 2)
    if bare is not None:
        raise _bare_fault(faults, bare.start())
    records: list[_Record] = []
    namespaces: dict[str | None, str] = {None: CPIM_NS}
    default: str | None = CPIM_NS
    strict = faults.strict
    offset = h0
    number = data.count(b"\n", 0, h0) + 1
    for index, line in enumerate(lines):
        size = _byte_len(line)
        if line[:1] in (" ", "\t") and records:
            # RFC 822 folding (i008): lenient mode reads it as a continuation.
            faults.add(
                "LEADING_WHITESPACE",
                "header line starts with whitespace (CPIM headers are never folded)",
                offset,
                number,
            )
            last = records[-1]
            records[-1] = (last[0], last[1], last[2] + "\r\n" + line, last[3])
        else:
            name, prefix, local, params_text, value = _diagnose_line(line, faults, offset, number)
            namespace = default if prefix is None else namespaces.get(prefix)
            info: _Head = (name, prefix, local, params_text, prefix is not None or local == "NS")
            record: _Record = (info, namespace, value, index)
            if strict:
                found = _value_findings(record, namespaces)
                if found:
                    voff = offset + size - _byte_len(value)
                    _report(found, faults, offset, voff, params_text, number)
            if local == "NS" and namespace == CPIM_NS:
                binding = _read_ns(value)
                if binding is not None:
                    namespaces[binding[0]] = binding[1]
                    if binding[0] is None:
                        default = binding[1]
            records.append(record)
        offset += size + 2
        number += 1
    return records


def _value_findings(record: _Record, bindings: dict[str | None, str]) -> list[_Finding]:
    """Check one header's prefix, parameters and value (RFC 3862 §3.4, §3.6, §4, §2.3.1);
    ``bindings`` are the NS bindings in force at its line."""
    head, namespace, value, _ = record
    name, prefix, local, params_text, _special = head
    found: list[_Finding] = []
    if namespace is None:
        found.append(
            (
                "UNDEFINED_PREFIX",
                f"prefix {prefix!r} of {name!r} is not declared by an earlier NS header",
                "line",
                0,
            )
        )
    if params_text:
        _read_params(params_text, found)
    if namespace == CPIM_NS and local in _CORE_CHECKS:
        _CORE_CHECKS[local](local, value, params_text, bindings, found)
    elif "\\" in value:
        _escape_findings(value, found)
    return found


def _report(  # noqa: PLR0917 - internal
    found: list[_Finding],
    faults: _Faults,
    offset: int,
    voff: int,
    params_text: str,
    number: int,
) -> None:
    """Turn findings into defects (or the strict-mode error) at their byte offsets."""
    poff = voff - 1 - _byte_len(params_text)
    for code, detail, where, delta in found:
        base = offset if where == "line" else poff if where == "params" else voff
        faults.add(code, detail, base + delta, number)


# The common valid shape of each core header's value, as one pattern (§3.6, §4): a value
# matching it has nothing to report (what _value_findings would say is pinned by property
# tests), so strict mode needs no closer look. DateTime: any valid calendar date (leap
# years included), no leap second, upper-case T and Z (others are read field by field).
# TOKENCHAR as the ASCII characters it leaves out: the same set, which sre compiles in
# microseconds instead of milliseconds (a whole-block pattern holds one per party line).
_TC_CLASS: Final = r'[^\x00-\x20"(),/:;<=>?@\[\\\]{}\x7f]'
_PARTY_SHAPE: Final = rf'(?:(?:{_TC_CLASS}+ )+|"[^"\\\x00-\x1f\x7f]*")?<{_URI_TEXT}>'
_DATE_SHAPE: Final = (
    r"(?:[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    # 29 February of a leap year: divisible by 4, and by 400 when by 100 (RFC 3339 §5.7)
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_DATETIME_SHAPE: Final = (
    _DATE_SHAPE + r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_NS_SHAPE: Final = rf"(?:[{_NC}]+ ?)?<{_URI_TEXT}>"
# Any other value (Subject, extension headers): not empty, no control character, every
# backslash starting a defined escape (§2.3, §2.3.1), not ending with SP (§2.2).
_VALUE_SHAPE: Final = (
    r"(?=[^\r\n])[^\\\x00-\x1f\x7f]*"
    r"""(?:\\(?:u[0-9A-Fa-f]{4}|[btnr"'\\])[^\\\x00-\x1f\x7f]*)*(?<! )"""
)
_VALID_PARTY = re.compile(_PARTY_SHAPE).fullmatch
_VALID_SHAPES: Final[dict[str, Callable[[str], re.Match[str] | None]]] = {
    "From": _VALID_PARTY,
    "To": _VALID_PARTY,
    "cc": _VALID_PARTY,
    "DateTime": re.compile(_DATETIME_SHAPE).fullmatch,
    "NS": re.compile(_NS_SHAPE).fullmatch,
}
# Subject's one parameter, a valid lang tag (§3.3, §4.5).
_LANG_PARAM = re.compile(r";lang=[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*").fullmatch


def _check_values(
    records: list[_Record],
    layout: _Layout | Callable[[], _Layout],
    faults: _Faults,
    profile: Profile | None,
) -> None:
    """Check every header value in order (what strict mode does while reading; lenient
    mode on the first access of ``defects``), then the profile's rules. ``layout`` may be
    a function making it: it is only needed when there is something to report."""
    bindings: dict[str | None, str] = {None: CPIM_NS}
    valid_shapes = _VALID_SHAPES
    for k, record in enumerate(records):
        head, namespace, value, _ = record
        # First the common valid shapes, one test each (a value passing one has nothing
        # to report); anything else is examined by _value_findings, which says what is
        # wrong and where.
        if namespace == CPIM_NS:
            local = head[2]
            shape = valid_shapes.get(local)
            if shape is not None:  # From, To, cc, DateTime, NS
                if not head[3] and shape(value) is not None:
                    if local == "NS":
                        binding = _read_ns(value)
                        if binding is not None:
                            bindings[binding[0]] = binding[1]
                    continue
            elif local == "Subject":
                if "\\" not in value and (not head[3] or _LANG_PARAM(head[3]) is not None):
                    continue
            elif local != "Require" and not head[3] and "\\" not in value:
                continue
        elif namespace is not None and not head[3] and "\\" not in value:
            continue
        found = _value_findings(record, bindings)
        if found:
            if not isinstance(layout, _Layout):
                layout = layout()
            offset, _end, voff, number = layout.span(records, k)
            _report(found, faults, offset, voff, head[3], number)
        if namespace == CPIM_NS and head[2] == "NS":
            binding = _read_ns(value)
            if binding is not None:
                bindings[binding[0]] = binding[1]
    if profile == "msrp":
        if not isinstance(layout, _Layout):
            layout = layout()
        _check_msrp(records, layout, faults, layout.starts[-1])


def _strict_block(key: tuple[str, ...], skeleton: _Skeleton) -> Callable[[str], object]:
    """The test strict mode runs on a CPIM block whose heads are ``key`` (and whose NS
    values and quoted heads those of ``skeleton``): one pattern for the whole block, each
    line its head as written, SP, and the valid shape of its kind of value (the patterns
    :func:`_check_values` accepts at once, a Require listing only declared prefixes, and
    any other value with defined escapes only), or None. A block it matches has nothing
    for :func:`_check_values` to report (property tests hold them equal); any other block
    is checked value by value, which reports the first fault with its line and byte.

    A block it matches has no control character but the CRLFs between its lines and no
    whitespace ending a line either (§2.2). Remembered per key (bounded like the
    skeletons).
    """
    heads, namespaces, checks = skeleton[0], skeleton[1], skeleton[2]
    fixed = {k: (text, quoted) for k, text, quoted in checks}
    prefixes: dict[str, None] = {}  # bound by NS so far, for Require (§3.5)
    patterns = []
    fit = True
    for k, (head, namespace) in enumerate(zip(heads, namespaces, strict=True)):
        local, params = head[2], head[3]
        if namespace is None:  # UNDEFINED_PREFIX
            fit = False
            break
        core = namespace == CPIM_NS
        if core and local in _NO_PARAMS:
            if params:  # PARAMS_NOT_ALLOWED
                fit = False
                break
            if local == "Require":
                name = rf"[{_NC}]+"
                if prefixes:
                    bound = "|".join(map(re.escape, prefixes))
                    name = rf"(?:(?:{bound})\.)?{name}"
                shape = rf"{name}(?:,{name})*"
            else:
                shape = _CORE_SHAPES[local]
        elif core and local == "Subject":
            if params and _LANG_PARAM(params) is None:
                fit = False
                break
            shape = _VALUE_SHAPE
        else:
            found: list[_Finding] = []
            if params:
                _read_params(params, found)
            if found:
                fit = False
                break
            shape = _VALUE_SHAPE
        start = key[k] + " "
        text, quoted = fixed.get(k, ("", False))
        if quoted:  # the whole head, quoted String parameters and SP included
            start = text
        elif local == "NS":  # the value is fixed too: check it now
            if re.fullmatch(shape, text) is None:
                fit = False
                break
            if core:
                binding = _read_ns(text)
                if binding is not None and binding[0] is not None:
                    prefixes[binding[0]] = None
            patterns.append(re.escape(start + text))
            continue
        patterns.append(re.escape(start) + shape)
    check: Callable[[str], object] = (
        re.compile("\r\n".join(patterns)).fullmatch if fit else _NO_BLOCK
    )
    if len(_STRICT_BLOCKS) < _SKELETONS_MAX:
        _STRICT_BLOCKS[key] = check
    return check


def _no_block(_block: str) -> None:
    """The strict test of a block layout that is never valid as a whole."""


_NO_BLOCK: Final = _no_block
#: :func:`_strict_block` per sequence of heads.
_STRICT_BLOCKS: dict[tuple[str, ...], Callable[[str], object]] = {}
_CORE_SHAPES: Final = {
    "From": _PARTY_SHAPE,
    "To": _PARTY_SHAPE,
    "cc": _PARTY_SHAPE,
    "DateTime": _DATETIME_SHAPE,
    "NS": _NS_SHAPE,
}


def _diagnose_line(
    line: str, faults: _Faults, offset: int, number: int
) -> tuple[str, str | None, str, str, str]:
    """Read a header line that is not clean, reporting each fault (§2.2, §3.6)."""
    if line[:1] in (" ", "\t"):
        faults.add(
            "LEADING_WHITESPACE", "the first header line starts with whitespace", offset, number
        )
    colon = line.find(":")
    if colon < 0:
        raise faults.fatal("NO_COLON", f"header line {_clip(line)!r} has no ':'", offset, number)
    if colon == 0:
        raise faults.fatal("EMPTY_NAME", "header line starts with ':' (no name)", offset, number)
    name = line[:colon]
    stripped = name.rstrip(" \t")
    if stripped != name and stripped:
        faults.add(
            "SPACE_BEFORE_COLON",
            f"whitespace between header name {stripped!r} and ':'",
            offset + len(stripped),
            number,
        )
        name = stripped
    lead = len(line) - len(line.lstrip(" \t"))
    ctl = _CTL.search(line, lead, len(line.rstrip(" \t")))
    if ctl is not None:
        faults.add(
            "CTL_IN_HEADER",
            f"raw control character U+{ord(ctl.group()):04X} in a header line",
            offset + _byte_len(line[: ctl.start()]),
            number,
        )
    named = _NAME.fullmatch(name)
    prefix: str | None
    if named is not None:
        prefix, local = named.groups()
    else:
        bad = next((c for c in name if not _NAMECHAR_OR_DOT.fullmatch(c)), ".")
        faults.add(
            "BAD_HEADER_NAME",
            f"header name {name!r} contains {bad!r}"
            + (" (more than one '.' or an empty part)" if bad == "." else ""),
            offset,
            number,
        )
        head, dot, tail = name.partition(".")
        prefix, local = (head, tail) if dot else (None, name)
    pos = colon + 1
    params_text = ""
    if line.startswith(";", pos):
        end = _params_end(line, pos)
        params_text = line[pos:end]
        pos = end
    if line.startswith(" ", pos):
        value = line[pos + 1 :]
    else:
        faults.add(
            "NO_SP_AFTER_COLON",
            "':' (and any parameters) not followed by a single SP",
            offset + _byte_len(line[:pos]),
            number,
        )
        value = line[pos:]
    if line[-1:] in (" ", "\t") and line.strip(" \t"):
        faults.add(
            "TRAILING_WHITESPACE",
            "header line ends with whitespace",
            offset + _byte_len(line.rstrip(" \t")),
            number,
        )
    return name, prefix, local, params_text, value


_NAMECHAR_OR_DOT = re.compile(rf"[{_NC}.]")


def _clip(text: str, size: int = 40) -> str:
    return text if len(text) <= size else text[:size] + "..."


def _first_bad_escape(text: str) -> re.Match[str] | None:
    """The first backslash that starts no defined escape (§2.3), scanning left to right
    so that ``\\\\q`` is an escaped backslash followed by ``q``."""
    for m in _ESCAPE.finditer(text):
        seq = m.group(1)
        if len(seq) != 5 and seq not in _ESCAPE_CHARS:
            return m
    return None


# A finding of a value check: code, detail, where ("line", "params" or "value") and the
# byte offset relative to that place. Checks are pure; positions are worked out only
# when there is something to report.
_Finding = tuple[str, str, str, int]


def _escape_findings(value: str, found: list[_Finding]) -> None:
    bad = _first_bad_escape(value)
    if bad is not None:
        seq = bad.group(1)
        detail = (
            f"backslash before {seq!r} starts no defined escape"
            if seq
            else "lone backslash at the end of the value"
        )
        found.append(("UNESCAPED_BACKSLASH", detail, "value", _byte_len(value[: bad.start()])))


def _params_end(text: str, pos: int) -> int:
    """Where ``*( ";" Parameter )`` starting at ``pos`` ends (lenient: a malformed
    parameter runs to the next ';' or SP; a String to its closing quote)."""
    size = len(text)
    while pos < size and text[pos] == ";":
        pos += 1
        while pos < size and text[pos] not in ' ;"':
            pos += 1
        if pos < size and text[pos] == '"':
            m = _STRING_TAIL.match(text, pos + 1)
            pos = m.end() if m is not None else pos + 1
            while pos < size and text[pos] not in " ;":
                pos += 1
    return pos


def _read_params(text: str, found: list[_Finding] | None = None) -> tuple[tuple[str, str], ...]:
    """Read ``*( ";" Parameter )`` (RFC 3862 §3.6) from the parameter text ``text``.

    With ``found``, report malformed parameters (BAD_PARAMETER), undefined escapes in
    Strings (BAD_ESCAPE_IN_STRING) and bad language tags (BAD_LANG_TAG), placed relative
    to the start of ``text``.
    """
    params: list[tuple[str, str]] = []
    size = len(text)
    pos = 0
    while pos < size:
        start = pos
        pos += 1  # the ';'
        key_match = _PARAM_NAME.match(text, pos)
        key = key_match.group() if key_match is not None else ""
        pos += len(key)
        val: str | None = None
        if key and text.startswith("=", pos):
            pos += 1
            if text.startswith('"', pos):
                m = _STRING_TAIL.match(text, pos + 1)
                if m is not None:
                    inner = m.group(1)
                    val = inner
                    if "\\" in inner:
                        val = decode_escapes(inner)
                        bad = _first_bad_escape(inner) if found is not None else None
                        if found is not None and bad is not None:
                            found.append(
                                (
                                    "BAD_ESCAPE_IN_STRING",
                                    f"undefined escape '{bad.group()}' in the quoted value "
                                    f"of {key!r}",
                                    "params",
                                    _byte_len(text[: pos + 1 + bad.start()]),
                                )
                            )
                    pos = m.end()
            else:
                tm = _TOKEN.match(text, pos)
                token = tm.group() if tm is not None else ""
                if token:
                    val = token
                    pos += len(token)
        if val is None or (pos < size and text[pos] != ";"):
            end = text.find(";", pos)
            end = size if end < 0 else end
            if found is not None:
                found.append(
                    (
                        "BAD_PARAMETER",
                        f"malformed parameter {_clip(text[start:end])!r} (expected "
                        ';name=token or ;name="string")',
                        "params",
                        _byte_len(text[:start]),
                    )
                )
            pos = end
            continue
        if found is not None and key == "lang" and not _LANG.fullmatch(val):
            found.append(
                (
                    "BAD_LANG_TAG",
                    f"lang={val!r} is not an RFC 3066 language tag",
                    "params",
                    _byte_len(text[:start]),
                )
            )
        params.append((key, val))
    return tuple(params)


# -- core header checks (RFC 3862 §4) ----------------------------------------------------


def _no_params(local: str, params_text: str, found: list[_Finding]) -> None:
    if params_text:
        found.append(
            (
                "PARAMS_NOT_ALLOWED",
                f"{local} takes no parameters ({_clip(params_text)!r})",
                "params",
                0,
            )
        )


def _check_party(
    local: str,
    value: str,
    params_text: str,
    bindings: dict[str | None, str],
    found: list[_Finding],
) -> None:
    """From / To / cc (RFC 3862 §4.1-4.3)."""
    _no_params(local, params_text, found)
    fault = _party_fault(value)
    if fault is not None:
        found.append((fault[0], f"{local}: {fault[1]}", "value", 0))


def _party_fault(value: str) -> tuple[str, str] | None:
    """What is wrong with ``[ Formal-name ] "<" URI ">"`` (§3.6, §4.1), or None. Trailing
    whitespace is reported on its own (TRAILING_WHITESPACE), not here."""
    if _PARTY_VALID.fullmatch(value) and "\\" not in value:
        return None
    if value[-1:] in (" ", "\t"):
        value = value.rstrip(" \t")
    m = _PARTY.fullmatch(value)
    if m is None:
        if "<" in value and value.endswith(">"):
            return "BAD_FORMAL_NAME", f"{_clip(value)!r} does not match [Formal-name] <URI>"
        return "BAD_FORMAL_NAME", f"the address {_clip(value)!r} is not enclosed in <>"
    _tokens, string, spaces, uri = m.groups()
    if string is not None:
        bad = _first_bad_escape(string) if "\\" in string else None
        if bad is not None:
            return (
                "BAD_ESCAPE_IN_STRING",
                f"undefined escape '{bad.group()}' in the quoted Formal-name",
            )
        if spaces:
            return "SP_AFTER_STRING_NAME", "space between the quoted Formal-name and '<'"
    if not _URI.fullmatch(uri):
        return "BAD_FORMAL_NAME", f"<{_clip(uri)}> is not an absolute URI"
    return None


def _read_party(value: str) -> Party:
    """The Party a From/To/cc value names. A malformed value (lenient mode) gives a
    best-effort Party: the URI is what the last ``<...>`` holds (or the whole value), the
    name the text before it, unquoted."""
    if value[-1:] in (" ", "\t"):
        value = value.rstrip(" \t")
    m = _PARTY.fullmatch(value)
    if m is not None:
        tokens, string, _spaces, uri = m.groups()
        if tokens is not None:
            return Party(tokens[:-1], uri)
        if string is not None:
            return Party(decode_escapes(string), uri)
        return Party(None, uri)
    lt = value.rfind("<")
    if lt >= 0 and value.endswith(">"):
        text = value[:lt].strip(" ")
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = decode_escapes(text[1:-1])
        return Party(text or None, value[lt + 1 : -1])
    return Party(None, value.strip(" "))


def _party_of(value: str) -> Party:
    """:func:`_read_party`, with a fast path for the common ``Name <uri>`` and ``<uri>``
    (same result: a property test holds them equal).

    The fast path takes what ``(?:([^<" ][^<"]*) )?<([^<]*)>`` matches in full whose name
    does not end with SP: a name (first character not SP, no ``<`` or ``"``, last
    character not SP), SP, ``<``, a URI without ``<``, ``>``; or ``<``, URI, ``>``.
    """
    if value[:1] == "<":
        uri = value[1:-1]
        if value[-1] == ">" and "<" not in uri:
            party = _new_party(Party)
            _set_formal_name(party, None)
            _set_uri(party, uri)
            return party
    else:
        name, sep, uri = value.partition(" <")
        if (
            sep
            and name
            and uri[-1:] == ">"
            and "<" not in uri
            and "<" not in name
            and '"' not in name
            and name[0] != " "
            and name[-1] != " "
        ):
            party = _new_party(Party)
            _set_formal_name(party, name)
            _set_uri(party, uri[:-1])
            return party
    return _read_party(value)


_new_party = object.__new__
_set_formal_name: Callable[[Party, str | None], None] = vars(Party)["formal_name"].__set__
_set_uri: Callable[[Party, str], None] = vars(Party)["uri"].__set__


def _check_datetime(
    local: str,
    value: str,
    params_text: str,
    bindings: dict[str | None, str],
    found: list[_Finding],
) -> None:
    """DateTime (RFC 3862 §4.4, RFC 3339 §5.6)."""
    _no_params(local, params_text, found)
    if _datetime_fields(value) is None:
        found.append(
            (
                "BAD_DATETIME",
                f"DateTime {_clip(value)!r} is not an RFC 3339 date-time",
                "value",
                0,
            )
        )
    elif "t" in value or "z" in value:
        found.append(("DATETIME_LOWERCASE", "DateTime writes 't' or 'z' in lower case", "value", 0))


def _check_subject(
    local: str,
    value: str,
    params_text: str,
    bindings: dict[str | None, str],
    found: list[_Finding],
) -> None:
    """Subject (RFC 3862 §4.5): one optional ;lang= parameter, an unstructured value."""
    if "\\" in value:
        _escape_findings(value, found)
    if params_text:
        params = _read_params(params_text)
        if len(params) != 1 or params[0][0] != "lang":
            found.append(
                (
                    "PARAMS_NOT_ALLOWED",
                    f"Subject takes one ;lang= parameter at most ({_clip(params_text)!r})",
                    "params",
                    0,
                )
            )


def _read_ns(value: str) -> tuple[str | None, str] | None:
    """The (prefix, URI) an NS value binds, or None when it is not ``[prefix] <URI>``.
    Declarations recur (the same extensions in every message), so they are remembered."""
    binding = _NS_VALUES.get(value, _UNSEEN)
    if binding is _UNSEEN:
        m = _NS_VALUE.fullmatch(value)
        binding = None if m is None else (m.group(1), m.group(2))
        if len(_NS_VALUES) < _HEADS_MAX and len(value) <= _CACHED_SIZE:
            _NS_VALUES[value] = binding
    return binding  # type: ignore[return-value]


_UNSEEN: Final = object()
_NS_VALUES: dict[str, tuple[str | None, str] | None] = {}


def _check_ns(
    local: str,
    value: str,
    params_text: str,
    bindings: dict[str | None, str],
    found: list[_Finding],
) -> None:
    """NS (RFC 3862 §3.4, §4.6): ``[prefix] <absolute URI>``, with or without the SP."""
    _no_params(local, params_text, found)
    binding = _read_ns(value)
    if binding is None:
        found.append(
            (
                "BAD_NS_URI",
                f"NS value {_clip(value)!r} is not [prefix] <URI>: nothing is declared",
                "value",
                0,
            )
        )
        return
    uri = binding[1]
    if not _URI.fullmatch(uri):
        why = "has a fragment" if "#" in uri else "is not an absolute URI"
        found.append(("BAD_NS_URI", f"NS URI {uri!r} {why}", "value", 0))


def _read_require(value: str, bindings: dict[str | None, str]) -> list[Requirement]:
    found = []
    for item in value.split(","):
        name = item.strip(" \t")
        if not name:
            continue
        prefix, dot, local = name.partition(".")
        if dot:
            found.append(Requirement(name, bindings.get(prefix), local))
        else:
            found.append(Requirement(name, bindings.get(None), name))
    return found


def _check_require(
    local: str,
    value: str,
    params_text: str,
    bindings: dict[str | None, str],
    found: list[_Finding],
) -> None:
    """Require (RFC 3862 §3.5, §4.7): ``Header-name *( "," Header-name )``, prefixes
    declared."""
    _no_params(local, params_text, found)
    if not _REQUIRE.fullmatch(value):
        if _REQUIRE_SPACED.fullmatch(value):
            found.append(
                (
                    "REQUIRE_SPACE",
                    f"whitespace around ',' in Require {_clip(value)!r}",
                    "value",
                    0,
                )
            )
        else:
            found.append(
                (
                    "BAD_HEADER_NAME",
                    f"Require lists something that is not a header name: {_clip(value)!r}",
                    "value",
                    0,
                )
            )
    for item in value.split(","):
        prefix, dot, _local = item.strip(" \t").partition(".")
        if dot and prefix not in bindings:
            found.append(
                (
                    "UNDEFINED_PREFIX",
                    f"Require names {item.strip()!r} whose prefix is not declared by an earlier NS",
                    "value",
                    0,
                )
            )


_CORE_CHECKS: Final[dict[str, Any]] = {
    "From": _check_party,
    "To": _check_party,
    "cc": _check_party,
    "DateTime": _check_datetime,
    "Subject": _check_subject,
    "NS": _check_ns,
    "Require": _check_require,
}
_CORE_NAMES: Final = frozenset(_CORE_CHECKS)


def _check_msrp(
    records: list[_Record], layout: _Layout | None, faults: _Faults, blank: int
) -> None:
    """RFC 4975 §13: From and To present; of the core headers only NS, To, cc repeat."""
    seen: dict[str, int] = {}
    for k, (head, namespace, _value, _index) in enumerate(records):
        if namespace != CPIM_NS:
            continue
        local = head[2]
        if local in _MSRP_ONCE and local in seen and layout is not None:
            offset, _end, _voff, number = layout.span(records, k)
            faults.add(
                "PROFILE_REPEAT",
                f"{local} repeated (first as header {seen[local] + 1}); MSRP allows only NS, "
                "To and cc to repeat",
                offset,
                number,
            )
        seen.setdefault(local, k)
    for required in ("From", "To"):
        if required not in seen:
            faults.add(
                "PROFILE_MISSING", f"no {required} header (MSRP requires From and To)", blank
            )


# --------------------------------------------------------------------------------------
# Escapes (RFC 3862 §2.3)
# --------------------------------------------------------------------------------------


def _unescape_match(m: re.Match[str]) -> str:
    seq = m.group(1)
    if len(seq) == 5:
        return chr(int(seq[1:], 16))
    return _ESCAPE_CHARS.get(seq, seq)


def decode_escapes(text: str) -> str:
    """Resolve the escapes of RFC 3862 §2.3 the way §2.3.1 asks receivers to.

    ``\\uXXXX`` are UCS-2 code units (a surrogate pair joins into one character, a lone
    surrogate becomes U+FFFD); ``\\b \\t \\n \\r \\" \\' \\\\`` their characters; any other
    ``\\c`` gives ``c``; a lone trailing backslash is dropped.
    """
    if "\\" not in text:
        return text
    out = _ESCAPE.sub(_unescape_match, text)
    if _SURROGATE.search(out):
        out = out.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return out


_NAMED_ESCAPES: Final = {"\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_MUST_ESCAPE = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


def _escape_match(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED_ESCAPES.get(ch) or f"\\u{ord(ch):04X}"


def encode_value(text: str) -> str:
    """Write ``text`` as an unstructured header value (RFC 3862 §2.3.1).

    Backslash and controls are escaped, nothing else; a final space is written
    ``\\u0020`` because a header line may not end in whitespace (§2.2). An empty value
    cannot be written and raises ValueError.
    """
    if not text:
        raise ValueError("an empty header value cannot be written (RFC 3862 §2.2)")
    out = _MUST_ESCAPE.sub(_escape_match, text)
    if out.endswith(" "):
        out = out[:-1] + "\\u0020"
    return out


def encode_string(text: str) -> str:
    """Write ``text`` as a quoted String (RFC 3862 §3.6): ``"``, ``\\`` and controls
    escaped."""
    return '"' + _MUST_ESCAPE.sub(_escape_match, text).replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------
# DateTime (RFC 3339 §5.6)
# --------------------------------------------------------------------------------------


def parse_datetime(text: str) -> DateTimeValue | None:
    """Read an RFC 3339 date-time (RFC 3862 §4.4); None when it is not one.

    Field ranges and leap years are checked; ``:60`` is accepted only where the UTC time
    is 23:59 (RFC 3339 §5.7); ``-00:00`` gives ``offset_minutes=None``.
    """
    fields = _datetime_fields(text)
    return None if fields is None else DateTimeValue(text, *fields)


def _datetime_fields(
    text: str,
) -> tuple[int, int, int, int, int, int, str, int | None] | None:
    m = _DATETIME.fullmatch(text)
    if m is None:
        return None
    y, mo, d, _t, h, mi, s, fraction, zulu, sign, oh, om = m.groups()
    year, month, day, hour, minute, second = int(y), int(mo), int(d), int(h), int(mi), int(s)
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 60 or day < 1:
        return None
    if day > _DAYS[month - 1] and not (
        month == 2 and day == 29 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    ):
        return None
    offset: int | None = 0
    if not zulu:
        hours, minutes = int(oh), int(om)
        if hours > 23 or minutes > 59:
            return None
        offset = hours * 60 + minutes
        if sign == "-":
            offset = -offset if offset else None  # -00:00: UTC, local offset unknown
    if second == 60 and (hour * 60 + minute - (offset or 0)) % 1440 != 1439:
        return None
    return year, month, day, hour, minute, second, fraction or "", offset


def format_datetime(moment: _dt.datetime) -> str:
    """Write an aware datetime as a DateTime value in UTC (``...Z``, as RFC 3923 §6.9
    wants for secured messages), with microseconds when there are any."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("DateTime needs an aware datetime (RFC 3339 §4.3)")
    utc = moment.astimezone(_dt.UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def _encode_param(key: str, val: str) -> str:
    if not key or not _PARAM_NAME.fullmatch(key):
        raise ValueError(f"parameter name {key!r} is not a Name (RFC 3862 §3.6)")
    if key == "lang" and not _LANG.fullmatch(val):
        raise ValueError(f"lang={val!r} is not an RFC 3066 language tag (RFC 3862 §3.3)")
    if val and _TOKEN_ONLY.fullmatch(val):
        return f";{key}={val}"
    return f";{key}={encode_string(val)}"


def _encode_header(name: str, value: str, params: Iterable[tuple[str, str]] = ()) -> bytes:
    if not _NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a Header-name (RFC 3862 §3.1)")
    params_text = "".join(_encode_param(k, v) for k, v in params)
    return f"{name}:{params_text} {encode_value(value)}\r\n".encode()


def _party(p: Party | str) -> Party:
    return p if isinstance(p, Party) else Party(None, p)


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
    extensions (name as written, prefix included), Require.

    A ``str`` party is a URI. Formal-names are written as tokens when they can be
    (``Ada Lovelace <im:...>``), else as a String directly before ``<``. NS is written
    ``NS: prefix <uri>``. Entity headers are written ``Name: value`` after
    ``Content-Type``. The result is read back by the strict parser, so ``build`` only
    returns strictly valid objects; what cannot be written raises ValueError (ParseError
    is one).
    """
    lines: list[str] = []
    if sender is not None:
        lines.append("From: " + _party(sender).encode())
    lines.extend("To: " + _party(p).encode() for p in to)
    lines.extend("cc: " + _party(p).encode() for p in cc)
    if datetime is not None:
        if parse_datetime(datetime) is None:
            raise ValueError(f"DateTime {datetime!r} is not an RFC 3339 date-time")
        lines.append("DateTime: " + datetime)
    for lang, text in subjects:
        params = "" if lang is None else _encode_param("lang", lang)
        lines.append(f"Subject:{params} {encode_value(text)}")
    redeclared = False
    for prefix, uri in namespaces:
        if prefix is not None and not (prefix and _PARAM_NAME.fullmatch(prefix)):
            raise ValueError(f"NS prefix {prefix!r} is not a Name (RFC 3862 §3.4)")
        if not _URI.fullmatch(uri):
            raise ValueError(f"NS URI {uri!r} is not an absolute URI without fragment")
        lines.append(f"NS: {prefix} <{uri}>" if prefix is not None else f"NS: <{uri}>")
        redeclared = redeclared or prefix is None
    head = "".join(line + "\r\n" for line in lines).encode()
    head += b"".join(_encode_header(name, value) for name, value in extensions)
    if require:
        if redeclared:
            raise ValueError(
                "Require cannot follow an NS that redeclares the default namespace: it would "
                "not be the CPIM Require header (RFC 3862 §3.4)"
            )
        if not all(_NAME.fullmatch(name) for name in require):
            raise ValueError(f"Require lists something that is not a header name: {require!r}")
        head += ("Require: " + ",".join(require) + "\r\n").encode()
    if "\r" in content_type or "\n" in content_type or not content_type.strip():
        raise ValueError("content_type must be one non-empty line")
    entity = f"Content-Type: {content_type}\r\n"
    for name, value in entity_headers:
        if not _MIME_NAME.fullmatch(name) or "\r" in value or "\n" in value:
            raise ValueError(f"entity header {name!r} needs a MIME name and a one-line value")
        entity += f"{name}: {value}\r\n"
    data = head + b"\r\n" + entity.encode() + b"\r\n" + body
    if form == "entity":
        data = _CANONICAL_MIME + data
    return _parse(data, form, _BUILD_POLICY)


_BUILD_POLICY: Final = Policy(strict=True, max_message_size=2**62, max_line_length=2**62)

#: How many (sender, recipients) keys :func:`encode_parties` remembers; the memory is
#: emptied whole when it is full, so a flood of new pairs cannot grow it.
PARTIES_REMEMBERED: Final = 4096
_PARTY_LINES: dict[tuple[Party | str, tuple[Party | str, ...]], bytes] = {}


@overload
def encode_parties(
    sender: Party | str, to: Sequence[Party | str], *, refused: Literal["raise"] = "raise"
) -> bytes: ...
@overload
def encode_parties(
    sender: Party | str, to: Sequence[Party | str], *, refused: Literal["none"]
) -> bytes | None: ...
def encode_parties(
    sender: Party | str,
    to: Sequence[Party | str],
    *,
    refused: Literal["raise", "none"] = "raise",
) -> bytes | None:
    """The ``From`` and ``To`` lines (RFC 3862 §4.1, §4.2) exactly as :func:`build` writes
    them first for ``sender=sender, to=to``: checked by :func:`build` itself the first
    time (so only strictly valid parties pass), then remembered for the next messages
    between the same parties (at most :data:`PARTIES_REMEMBERED` keys).

    A ``str`` party is a URI, as in :func:`build`. A party :func:`build` refuses (not an
    absolute URI, §4.1) raises its ValueError, or gives None with ``refused="none"``.
    Mappers that write the rest of an object directly start from these bytes.
    """
    key = (sender, tuple(to))
    lines = _PARTY_LINES.get(key)
    if lines is None:
        try:
            built = build(sender=sender, to=key[1], content_type="text/plain", body=b"")
        except ValueError:
            if refused == "none":
                return None
            raise
        lines = b"".join(header.raw for header in built.headers)
        if len(_PARTY_LINES) >= PARTIES_REMEMBERED:
            _PARTY_LINES.clear()
        _PARTY_LINES[key] = lines
    return lines


#: ``Content-Type`` lines :func:`encode_entity_headers` has checked (a gateway sees few
#: content types; emptied whole at :data:`PARTIES_REMEMBERED` entries).
_CONTENT_TYPE_LINES: dict[str, bytes] = {}
#: Entity header names known to be MIME names, spared the pattern on the hot path.
_COMMON_ENTITY_NAMES: Final = frozenset(
    {
        "Content-Language",
        "Content-Disposition",
        "Content-ID",
        "Content-Id",
        "Content-Description",
        "Content-Transfer-Encoding",
    }
)


def encode_entity_headers(content_type: str, headers: Sequence[tuple[str, str]]) -> bytes | None:
    """The encapsulated MIME entity's header block (RFC 3862 §2, §3.1: ``Content-Type``
    first, then ``headers`` as ``Name: value``, then the blank line before the body) with
    the bytes :func:`build` writes for the same ``content_type`` and ``entity_headers``.

    None for anything :func:`build` must judge itself: a content type that is empty or
    padded, a content type or value holding a control character, a name that is not a
    MIME header name, or text that is not UTF-8 (surrogates). A direct writer then falls
    back to :func:`build`, whose answer (bytes or ValueError) is the authority.
    """
    first = _CONTENT_TYPE_LINES.get(content_type)
    if first is None:
        if not content_type.isprintable() or content_type != content_type.strip():
            return None
        if not content_type:
            return None
        first = f"Content-Type: {content_type}\r\n".encode()
        if len(_CONTENT_TYPE_LINES) >= PARTIES_REMEMBERED:
            _CONTENT_TYPE_LINES.clear()
        _CONTENT_TYPE_LINES[content_type] = first
    if not headers:
        return first + b"\r\n"
    block = [f"Content-Type: {content_type}\r\n"]
    for name, value in headers:
        if not value.isprintable() or (
            name not in _COMMON_ENTITY_NAMES and not _MIME_NAME.fullmatch(name)
        ):
            return None
        block.append(f"{name}: {value}\r\n")
    block.append("\r\n")
    # a printable value holds no surrogate and a MIME name is ASCII: this encodes
    return "".join(block).encode()


# --------------------------------------------------------------------------------------
# The manifest-shaped description (``cpimgw cpim show``)
# --------------------------------------------------------------------------------------


def describe(msg: CpimMessage) -> dict[str, Any]:
    """The parse as plain data with the field names of ``vectors/cpim/manifest.json``:
    ``headers`` (line, name, namespace, local, params, value_raw, value, and ``extra``
    for From/To/cc, NS, Require and the IMDN Disposition-Notification),
    ``entity_headers``, ``body_offset``, ``body_length``, ``defects``; plus ``form`` and
    ``mime_headers``."""
    headers: list[dict[str, Any]] = []
    bindings: dict[str | None, str] = {None: CPIM_NS}
    for h in msg.headers:
        item: dict[str, Any] = {
            "line": h.line,
            "name": h.name,
            "namespace": h.namespace,
            "local": h.local,
            "params": [list(p) for p in h.params],
            "value_raw": h.value_raw,
            "value": h.value,
        }
        core = h.namespace == CPIM_NS
        if core and h.local in _PARTY_HEADERS:
            party = _read_party(h.value_raw)
            item["extra"] = {"formal_name": party.formal_name, "uri": party.uri}
        elif core and h.local == "NS":
            binding = _read_ns(h.value_raw)
            if binding is not None:
                bindings[binding[0]] = binding[1]
                item["extra"] = {"ns_prefix": binding[0], "ns_uri": binding[1]}
        elif core and h.local == "Require":
            item["extra"] = {
                "required": [
                    {"name": r.name, "namespace": r.namespace, "local": r.local}
                    for r in _read_require(h.value_raw, bindings)
                ]
            }
        elif h.namespace == IMDN_NS and h.local == "Disposition-Notification":
            item["extra"] = {"dispositions": [t.strip() for t in h.value.split(",") if t.strip()]}
        headers.append(item)
    return {
        "form": msg.form,
        "mime_headers": [list(p) for p in msg.mime_headers],
        "headers": headers,
        "entity_headers": [list(p) for p in msg.entity_headers],
        "body_offset": msg.body_offset,
        "body_length": len(msg.raw) - msg.body_offset,
        "defects": [
            {
                "code": d.code,
                "severity": "warning" if d.code in WARNING_CODES else "defect",
                "detail": d.detail,
                "line": d.line,
                "offset": d.offset,
            }
            for d in msg.defects
        ],
    }
