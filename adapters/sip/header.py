"""SIP header-field value grammar (RFC 3261 §25.1), parsed on demand from unfolded values.

The codec keeps every header line as written; this module reads the *values* the gateway
needs: URIs (§19.1), name-addr / addr-spec (From, To, Contact, Route), Via (§20.42), CSeq
(§20.16), Content-Type (§20.15, RFC 2045 §5.1), Event and Subscription-State (RFC 6665
§8.2), Expires, Max-Forwards, Retry-After, and the Digest challenge/credential lists
(RFC 7616 §3.3-3.4). Every parser raises :class:`~canonical.errors.ParseError` with a
stable code and the column of the fault inside the value.

Whitespace follows the grammar's LWS/SWS rules: ``SLASH``, ``SEMI``, ``EQUAL``, ``COMMA``
and ``HCOLON`` may be surrounded by whitespace (RFC 4475 §3.1.1.1), but ``LAQUOT``/``RAQUOT``
do not allow whitespace inside the brackets (RFC 4475 §3.1.2.13).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from canonical.errors import ParseError

#: RFC 3261 §25.1 ``token`` characters besides alphanumerics.
_TOKEN_MARKS = frozenset("-.!%*_+`'~")
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") | _TOKEN_MARKS
#: ``word`` (Call-ID) adds these separators to ``token``.
_WORD = _TOKEN | frozenset('()<>:\\"/[]?{}')
_WS = " \t"
#: Characters that never occur unescaped in a SIP URI (§19.1.1, §25.1 ``reserved``/``unreserved``).
_URI_FORBIDDEN = frozenset(' \t\r\n<>"{}|\\^`')
#: The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"

Params = tuple[tuple[str, str | None], ...]


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 ``token``."""
    return bool(text) and all(c in _TOKEN for c in text)


def is_word(text: str) -> bool:
    """True when ``text`` is a non-empty ``word`` (the Call-ID grammar, §25.1)."""
    return bool(text) and all(c in _WORD for c in text)


def quote(text: str) -> str:
    """A ``quoted-string`` for ``text``: backslash and double quote escaped (§25.1)."""
    if "\r" in text or "\n" in text:
        raise ValueError("a quoted-string cannot hold CR or LF")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fail(code: str, message: str, column: int, *, hint: str = "") -> ParseError:
    return ParseError(code, message, offset=column, hint=hint)


class _Cursor:
    """A position in a header value with the grammar's small lexical steps."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str, pos: int = 0) -> None:
        self.text = text
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> int:
        start = self.pos
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] in _WS:
            self.pos += 1
        return self.pos - start

    def accept(self, char: str) -> bool:
        """Consume ``char`` surrounded by optional whitespace (SEMI, EQUAL, SLASH, COMMA)."""
        save = self.pos
        self.skip_ws()
        if self.peek() == char:
            self.pos += 1
            self.skip_ws()
            return True
        self.pos = save
        return False

    def expect(self, char: str, what: str) -> None:
        if not self.accept(char):
            found = self.peek() or "end of value"
            raise _fail("SYNTAX", f"expected {char!r} ({what}), found {found!r}", self.pos)

    def token(self, what: str) -> str:
        start = self.pos
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] in _TOKEN:
            self.pos += 1
        if self.pos == start:
            found = self.peek() or "end of value"
            raise _fail("SYNTAX", f"expected a token ({what}), found {found!r}", start)
        return text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string at the cursor, unescaped (quoted-pair, §25.1)."""
        start = self.pos
        if self.peek() != '"':
            raise _fail("SYNTAX", "expected a quoted string", start)
        self.pos += 1
        out: list[str] = []
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                if self.pos + 1 >= n:
                    break
                nxt = text[self.pos + 1]
                if nxt in "\r\n":
                    raise _fail("SYNTAX", "quoted-pair cannot escape CR or LF", self.pos)
                out.append(nxt)
                self.pos += 2
                continue
            out.append(c)
            self.pos += 1
        raise _fail(
            "UNTERMINATED_QUOTE",
            "quoted string is not terminated",
            start,
            hint='close the display name with a double quote (")',
        )

    def gen_value(self) -> str:
        """``gen-value = token / host / quoted-string`` (§25.1), quotes removed."""
        if self.peek() == '"':
            return self.quoted()
        start = self.pos
        text, n = self.text, len(self.text)
        # host values may carry ':' and brackets (IPv6); stop at separators.
        while self.pos < n and (text[self.pos] in _TOKEN or text[self.pos] in ":[]"):
            self.pos += 1
        if self.pos == start:
            found = self.peek() or "end of value"
            raise _fail("SYNTAX", f"expected a parameter value, found {found!r}", start)
        return text[start : self.pos]

    def params(self, *, stop: str = "") -> Params:
        """``*( SEMI generic-param )`` where ``generic-param = token [ EQUAL gen-value ]``."""
        out: list[tuple[str, str | None]] = []
        while True:
            save = self.pos
            self.skip_ws()
            if self.peek() != ";":
                self.pos = save
                return tuple(out)
            self.pos += 1
            self.skip_ws()
            name = self.token("parameter name")
            value: str | None = None
            if self.accept("="):
                value = self.gen_value()
            out.append((name, value))
            if stop and self.peek() in stop:
                return tuple(out)

    def rest(self) -> str:
        value = self.text[self.pos :]
        self.pos = len(self.text)
        return value


def _finish(cur: _Cursor, what: str) -> None:
    cur.skip_ws()
    if not cur.at_end():
        raise _fail(
            "TRAILING_DATA",
            f"unexpected {cur.text[cur.pos :][:20]!r} after the {what}",
            cur.pos,
        )


def param(params: Params, name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive), ``""`` when it has no value."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def format_params(params: Iterable[tuple[str, str | None]]) -> str:
    """``;name=value`` pairs; values that are not tokens or hosts are quoted."""
    parts: list[str] = []
    for name, value in params:
        if value is None:
            parts.append(f";{name}")
        elif value and all(c in _TOKEN or c in ":[]" for c in value):
            parts.append(f";{name}={value}")
        else:
            parts.append(f";{name}={quote(value)}")
    return "".join(parts)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (``#element``, §7.3.1) outside quotes and ``<>``.

    Empty elements are kept so callers can reject them (RFC 4475 §3.1.2.1).
    """
    out: list[str] = []
    depth = 0
    in_quote = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    out.append(value[start:].strip(_WS))
    return out


# ----------------------------------------------------------------------------------- URIs


@dataclass(frozen=True, slots=True)
class Uri:
    """A URI as written (``text``) with the SIP/SIPS parts read out (RFC 3261 §19.1.1).

    For other schemes only ``scheme`` and ``opaque`` (everything after the colon) are
    set; ``host`` is empty. ``user`` and ``password`` keep their %-escapes: compare with
    :meth:`user_unescaped` (§19.1.4).
    """

    text: str
    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str = ""

    def __str__(self) -> str:
        return self.text

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def user_unescaped(self) -> str | None:
        """The user part with %HH escapes decoded (UTF-8, surrogateescape)."""
        if self.user is None:
            return None
        return unquote_to_bytes(self.user).decode("utf-8", "surrogateescape")

    @property
    def address_of_record(self) -> str:
        """``scheme:user@host`` without port, parameters or headers (the AoR, §10.2.1)."""
        if not self.is_sip:
            return self.text
        userpart = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{userpart}{self.host.lower()}"

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @classmethod
    def build(
        cls,
        *,
        scheme: str = "sip",
        user: str | None = None,
        host: str,
        port: int | None = None,
        params: Sequence[tuple[str, str | None]] = (),
    ) -> Uri:
        """A SIP URI from parts (``user`` already escaped)."""
        userpart = f"{user}@" if user is not None else ""
        portpart = f":{port}" if port is not None else ""
        text = f"{scheme}:{userpart}{host}{portpart}" + "".join(
            f";{n}" if v is None else f";{n}={v}" for n, v in params
        )
        return parse_uri(text)


def _check_uri_chars(text: str, base: int) -> None:
    for i, c in enumerate(text):
        if c in _URI_FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F:
            raise _fail(
                "BAD_URI",
                f"character {c!r} is not allowed unescaped in a URI",
                base + i,
                hint="percent-encode it (RFC 3261 §19.1.2)",
            )


def _parse_host(text: str, base: int) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _fail("BAD_URI", "IPv6 reference without ']'", base)
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, sep, port_text = text.partition(":")
        rest = sep + port_text
    if not host:
        raise _fail("BAD_URI", "URI has no host", base)
    if not host.startswith("["):
        for i, c in enumerate(host):
            if not (c.isascii() and (c.isalnum() or c in "-._")):
                raise _fail("BAD_URI", f"character {c!r} is not allowed in a host", base + i)
    port: int | None = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not digits.isdigit() or len(digits) > 5:
            raise _fail("BAD_URI", f"bad port {rest[1:]!r}", base + len(host))
        port = int(digits)
        if port > 65535:
            raise _fail("BAD_URI", f"port {port} is out of range", base + len(host))
    return host, port


@functools.lru_cache(maxsize=8192)
def parse_uri(text: str, *, base: int = 0) -> Uri:
    """Parse a URI; SIP and SIPS URIs are split into their parts (§19.1.1, §25.1).

    ``base`` is the column of ``text`` inside the header value, for error offsets.
    """
    colon = text.find(":")
    scheme = text[:colon] if colon > 0 else ""
    if not scheme or not scheme[0].isalpha() or not all(c.isalnum() or c in "+-." for c in scheme):
        raise _fail(
            "BAD_URI", f"{text[:40]!r} is not a URI (no scheme)", base, hint="write scheme:..."
        )
    _check_uri_chars(text, base)
    lscheme = scheme.lower()
    rest = text[colon + 1 :]
    if lscheme not in ("sip", "sips"):
        if not rest:
            raise _fail("BAD_URI", f"empty {scheme}: URI", base)
        return Uri(text=text, scheme=lscheme, opaque=rest)
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise _fail("BAD_URI", "empty user part before '@'", base + colon + 1)
    offset = base + len(text) - len(rest)
    headers_text = ""
    qmark = rest.find("?")
    if qmark >= 0:
        rest, headers_text = rest[:qmark], rest[qmark + 1 :]
    semi = rest.find(";")
    hostport, params_text = (rest, "") if semi < 0 else (rest[:semi], rest[semi:])
    host, port = _parse_host(hostport, offset)
    params: list[tuple[str, str | None]] = []
    if params_text:
        for item in params_text[1:].split(";"):
            name, eq, value = item.partition("=")
            if not name:
                raise _fail("BAD_URI", "empty URI parameter", offset + len(hostport))
            params.append((name, value if eq else None))
    headers: list[tuple[str, str]] = []
    if headers_text:
        for item in headers_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise _fail("BAD_URI", f"bad URI header {item!r}", offset + qmark)
            headers.append((name, value))
    return Uri(
        text=text,
        scheme=lscheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=tuple(params),
        headers=tuple(headers),
    )


# ------------------------------------------------------------------------ name-addr, addr-spec


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``name-addr`` or ``addr-spec`` plus header parameters (From/To/Contact/Route, §20).

    ``display_name`` is unquoted and unescaped (None when absent); ``bracketed`` says
    whether the URI was in angle brackets.
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        return param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def with_params(self, *extra: tuple[str, str | None]) -> NameAddr:
        return NameAddr(self.uri, self.display_name, self.params + tuple(extra), True)

    def __str__(self) -> str:
        name = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{name}<{self.uri.text}>{format_params(self.params)}"


def _parse_name_addr_at(cur: _Cursor) -> NameAddr:
    cur.skip_ws()
    display: str | None = None
    if cur.peek() == '"':
        display = cur.quoted()
        cur.skip_ws()
    elif cur.peek() != "<":
        # either a display name of tokens followed by '<', or an addr-spec.
        start = cur.pos
        text, n = cur.text, len(cur.text)
        scan = cur.pos
        words: list[str] = []
        while scan < n:
            wstart = scan
            while scan < n and text[scan] in _TOKEN:
                scan += 1
            if scan == wstart:
                break
            words.append(text[wstart:scan])
            while scan < n and text[scan] in _WS:
                scan += 1
        if scan < n and text[scan] == "<" and words:
            display = " ".join(words)
            cur.pos = scan
        else:
            # addr-spec: the URI runs to the first ';', ',' or whitespace (§20.10).
            end = start
            while end < n and text[end] not in ";, \t":
                end += 1
            uri_text = text[start:end]
            if not uri_text:
                raise _fail("SYNTAX", "expected an address", start)
            if "?" in uri_text:
                raise _fail(
                    "BAD_ADDRESS",
                    "a URI with headers ('?') must be enclosed in <>",
                    start + uri_text.index("?"),
                    hint="write <" + uri_text + ">",
                )
            uri = parse_uri(uri_text, base=start)
            cur.pos = end
            params = cur.params()
            return NameAddr(uri, None, params, bracketed=False)
    if cur.peek() != "<":
        found = cur.peek() or "end of value"
        raise _fail(
            "BAD_ADDRESS",
            f"expected '<' after the display name, found {found!r}",
            cur.pos,
            hint="quote display names that contain separators",
        )
    cur.pos += 1
    start = cur.pos
    end = cur.text.find(">", start)
    if end < 0:
        raise _fail("BAD_ADDRESS", "'<' without '>'", start - 1)
    uri_text = cur.text[start:end]
    if uri_text != uri_text.strip(_WS) or not uri_text:
        raise _fail(
            "BAD_ADDRESS",
            "whitespace inside <> around the URI",
            start,
            hint="write <sip:user@host> without spaces",
        )
    uri = parse_uri(uri_text, base=start)
    cur.pos = end + 1
    params = cur.params()
    return NameAddr(uri, display, params, bracketed=True)


_NAME_CHARS = r"[A-Za-z0-9.\-_!%*+`'~]+"
_SIMPLE_NAME_ADDR = re.compile(
    rf"<([^<>\s\"]+)>((?:;{_NAME_CHARS}(?:=[A-Za-z0-9.\-_!%*+`'~:\[\]]+)?)*)"
)


def _simple_name_addr(value: str) -> NameAddr | None:
    """``<URI>;param=value...`` without display name, whitespace or quotes, read in one
    regex match (the form proxies and most clients write); None for anything else."""
    match = _SIMPLE_NAME_ADDR.fullmatch(value)
    if match is None:
        return None
    uri_text, params_text = match.groups()
    params: list[tuple[str, str | None]] = []
    if params_text:
        for item in params_text.split(";")[1:]:
            name, eq, pvalue = item.partition("=")
            params.append((name, pvalue if eq else None))
    return NameAddr(parse_uri(uri_text, base=1), None, tuple(params), bracketed=True)


@functools.lru_cache(maxsize=4096)
def parse_name_addr(value: str) -> NameAddr:
    """From / To / a single Contact or Route value (RFC 3261 §20.10, §20.20, §20.39)."""
    simple = _simple_name_addr(value)
    if simple is not None:
        return simple
    cur = _Cursor(value)
    result = _parse_name_addr_at(cur)
    _finish(cur, "address")
    return result


def parse_name_addrs(value: str) -> list[NameAddr]:
    """A comma-separated list of addresses (Contact, Route, Record-Route)."""
    items = split_list(value)
    out: list[NameAddr] = []
    for item in items:
        if not item:
            raise _fail("EMPTY_ELEMENT", "empty element in an address list", 0)
        out.append(parse_name_addr(item))
    return out


# ------------------------------------------------------------------------------------ Via


@dataclass(frozen=True, slots=True)
class Via:
    """One ``via-parm`` (RFC 3261 §20.42), with RFC 3581 ``rport``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP"
    version: str = "2.0"

    @property
    def branch(self) -> str | None:
        return param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value filled in by the server (None when absent or empty)."""
        value = param(self.params, "rport")
        return int(value) if value and value.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        return param(self.params, "rport") is not None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def has_cookie(self) -> bool:
        """The branch is an RFC 3261 transaction id: magic cookie plus something (§8.1.1.7)."""
        branch = self.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7

    def __str__(self) -> str:
        return (
            f"{self.protocol}/{self.version}/{self.transport} {self.sent_by}"
            f"{format_params(self.params)}"
        )

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((n, v) for n, v in self.params if n.lower() != name.lower())
        return Via(self.transport, self.host, self.port, (*kept, (name, value)), self.protocol)


def _parse_via_at(cur: _Cursor) -> Via:
    cur.skip_ws()
    protocol = cur.token("protocol name")
    cur.expect("/", "SLASH in sent-protocol")
    version = cur.token("protocol version")
    cur.expect("/", "SLASH in sent-protocol")
    transport = cur.token("transport")
    if not cur.skip_ws():
        raise _fail("SYNTAX", "expected whitespace before sent-by", cur.pos)
    start = cur.pos
    text, n = cur.text, len(cur.text)
    if cur.peek() == "[":
        end = text.find("]", start)
        if end < 0:
            raise _fail("BAD_VIA", "IPv6 reference without ']'", start)
        cur.pos = end + 1
    while cur.pos < n and text[cur.pos] not in ";, \t:":
        cur.pos += 1
    host = text[start : cur.pos]
    port: int | None = None
    if cur.accept(":"):
        pstart = cur.pos
        while cur.pos < n and text[cur.pos].isdigit():
            cur.pos += 1
        digits = text[pstart : cur.pos]
        if not digits or len(digits) > 5 or int(digits) > 65535:
            raise _fail("BAD_VIA", "bad port in Via sent-by", pstart)
        port = int(digits)
    host_checked, _ = _parse_host(host, start)
    params = cur.params()
    return Via(transport.upper(), host_checked, port, params, protocol, version)


_SIMPLE_VIA = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-_]+)(?::([0-9]{1,5}))?((?:;[A-Za-z0-9.\-_!%*+`'~]+"
    r"(?:=[A-Za-z0-9.\-_!%*+`'~:\[\]]+)?)*)"
)


def _simple_via(value: str) -> Via | None:
    """The common one-element form without whitespace or quotes, read in one regex match."""
    match = _SIMPLE_VIA.fullmatch(value)
    if match is None:
        return None
    transport, host, port, params_text = match.groups()
    if port is not None and int(port) > 65535:
        return None
    params: list[tuple[str, str | None]] = []
    for item in params_text.split(";")[1:]:
        name, eq, pvalue = item.partition("=")
        params.append((name, pvalue if eq else None))
    return Via(transport.upper(), host, None if port is None else int(port), tuple(params))


def parse_via(value: str) -> list[Via]:
    """All ``via-parm`` elements of one Via header value (comma-separated, §20.42)."""
    simple = _simple_via(value)
    if simple is not None:
        return [simple]
    out: list[Via] = []
    for item in split_list(value):
        if not item:
            raise _fail(
                "EMPTY_ELEMENT",
                "empty element in a Via list",
                0,
                hint="remove the stray ',' or ';' (RFC 4475 §3.1.2.1)",
            )
        cur = _Cursor(item)
        via = _parse_via_at(cur)
        _finish(cur, "Via element")
        out.append(via)
    return out


# ---------------------------------------------------------------------------- scalar fields

#: CSeq numbers MUST be below 2**31 (RFC 3261 §8.1.1.5).
CSEQ_LIMIT = 2**31


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_SIMPLE_CSEQ = re.compile(rf"([0-9]{{1,9}}) ({_NAME_CHARS})")


@functools.lru_cache(maxsize=4096)
def parse_cseq(value: str) -> CSeq:
    """``CSeq = 1*DIGIT LWS Method`` with the number below 2**31 (§20.16, RFC 4475 §3.1.2.4)."""
    simple = _SIMPLE_CSEQ.fullmatch(value)
    if simple is not None:  # the common form: up to 9 digits, one space, the method
        return CSeq(int(simple.group(1)), simple.group(2))
    return _parse_cseq(value)


def _parse_cseq(value: str) -> CSeq:
    """:func:`parse_cseq` by the full grammar, with the column of any fault."""
    cur = _Cursor(value)
    cur.skip_ws()
    start = cur.pos
    text, n = cur.text, len(cur.text)
    while cur.pos < n and text[cur.pos].isdigit():
        cur.pos += 1
    digits = text[start : cur.pos]
    if not digits:
        raise _fail("BAD_CSEQ", "CSeq has no sequence number", start)
    number = int(digits)
    if number >= CSEQ_LIMIT:
        raise _fail("BAD_CSEQ", f"CSeq number {digits} is 2**31 or more", start)
    if not cur.skip_ws():
        raise _fail("BAD_CSEQ", "expected whitespace between CSeq number and method", cur.pos)
    method = cur.token("CSeq method")
    _finish(cur, "CSeq")
    return CSeq(number, method)


def parse_delta_seconds(value: str, *, what: str, limit: int = 2**32 - 1) -> int:
    """``delta-seconds`` (§25.1): digits only; values above ``limit`` are errors."""
    text = value.strip(_WS)
    if not text.isdigit() or not text.isascii():
        raise _fail("BAD_NUMBER", f"{what} is not a number of seconds: {value!r}", 0)
    number = int(text)
    if number > limit:
        raise _fail("BAD_NUMBER", f"{what} {text} is larger than {limit}", 0)
    return number


@functools.lru_cache(maxsize=4096)
def parse_max_forwards(value: str) -> int:
    """``Max-Forwards = 1*DIGIT`` in 0..255 (§20.22; RFC 4475 §3.1.2.4)."""
    return parse_delta_seconds(value, what="Max-Forwards", limit=255)


def parse_expires(value: str) -> int:
    """``Expires = delta-seconds`` (§20.19)."""
    return parse_delta_seconds(value, what="Expires")


@dataclass(frozen=True, slots=True)
class RetryAfter:
    seconds: int
    comment: str | None = None
    params: Params = ()


def parse_retry_after(value: str) -> RetryAfter:
    """``Retry-After = delta-seconds [ comment ] *( SEMI retry-param )`` (§20.33)."""
    cur = _Cursor(value)
    cur.skip_ws()
    start = cur.pos
    text, n = cur.text, len(cur.text)
    while cur.pos < n and text[cur.pos].isdigit():
        cur.pos += 1
    seconds = parse_delta_seconds(text[start : cur.pos] or value, what="Retry-After")
    cur.skip_ws()
    comment: str | None = None
    if cur.peek() == "(":
        depth = 0
        cstart = cur.pos
        while cur.pos < n:
            c = text[cur.pos]
            cur.pos += 1
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
        if depth:
            raise _fail("SYNTAX", "unterminated comment in Retry-After", cstart)
        comment = text[cstart + 1 : cur.pos - 1]
    params = cur.params()
    _finish(cur, "Retry-After")
    return RetryAfter(seconds, comment, params)


# ------------------------------------------------------------------ Content-Type, Event, ...


@dataclass(frozen=True, slots=True)
class MediaType:
    """``m-type "/" m-subtype *( SEMI m-parameter )`` (§20.15). ``type``/``subtype`` lower."""

    type: str
    subtype: str
    params: Params = ()

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def __str__(self) -> str:
        return self.essence + format_params(self.params)


@functools.lru_cache(maxsize=4096)
def parse_media_type(value: str) -> MediaType:
    cur = _Cursor(value)
    cur.skip_ws()
    mtype = cur.token("media type")
    cur.expect("/", "SLASH in media type")
    subtype = cur.token("media subtype")
    params = cur.params()
    _finish(cur, "Content-Type")
    return MediaType(mtype.lower(), subtype.lower(), params)


@dataclass(frozen=True, slots=True)
class Event:
    """``Event = event-type *( SEMI event-param )`` (RFC 6665 §8.2.1); ``id`` separates
    subscriptions of one dialog."""

    package: str
    params: Params = ()

    @property
    def id(self) -> str | None:
        return param(self.params, "id")

    def __str__(self) -> str:
        return self.package + format_params(self.params)


def parse_event(value: str) -> Event:
    cur = _Cursor(value)
    cur.skip_ws()
    package = cur.token("event package")
    params = cur.params()
    _finish(cur, "Event")
    return Event(package.lower(), params)


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """RFC 6665 §8.2.3: ``active`` / ``pending`` / ``terminated`` with expires, reason,
    retry-after."""

    state: str
    params: Params = ()

    @property
    def expires(self) -> int | None:
        value = param(self.params, "expires")
        return int(value) if value and value.isdigit() else None

    @property
    def reason(self) -> str | None:
        return param(self.params, "reason")

    @property
    def retry_after(self) -> int | None:
        value = param(self.params, "retry-after")
        return int(value) if value and value.isdigit() else None

    def __str__(self) -> str:
        return self.state + format_params(self.params)


def parse_subscription_state(value: str) -> SubscriptionState:
    cur = _Cursor(value)
    cur.skip_ws()
    state = cur.token("subscription state").lower()
    params = cur.params()
    _finish(cur, "Subscription-State")
    return SubscriptionState(state, params)


# ----------------------------------------------------------------------- Digest challenges


@dataclass(frozen=True, slots=True)
class AuthParams:
    """A ``challenge`` or ``credentials`` value: scheme plus ``auth-param`` list
    (RFC 3261 §25.1, RFC 7616 §3.3-3.4). Values are unquoted; ``quoted`` remembers which
    names were written quoted."""

    scheme: str
    params: tuple[tuple[str, str], ...]
    quoted: frozenset[str] = frozenset()

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.params:
            if key.lower() == lname:
                return value
        return None


def parse_auth(value: str) -> AuthParams:
    """``Digest realm="...", nonce="...", ...`` (WWW-/Proxy-Authenticate, Authorization)."""
    cur = _Cursor(value)
    cur.skip_ws()
    scheme = cur.token("authentication scheme")
    params: list[tuple[str, str]] = []
    quoted: set[str] = set()
    if not cur.skip_ws() and not cur.at_end():
        raise _fail("SYNTAX", "expected whitespace after the authentication scheme", cur.pos)
    first = True
    while not cur.at_end():
        if not first:
            cur.expect(",", "COMMA between auth-params")
            cur.skip_ws()
            if cur.at_end():
                break
        first = False
        name = cur.token("auth-param name")
        cur.expect("=", "EQUAL in auth-param")
        if cur.peek() == '"':
            pvalue = cur.quoted()
            quoted.add(name.lower())
        else:
            pvalue = cur.token("auth-param value")
        params.append((name, pvalue))
        cur.skip_ws()
    return AuthParams(scheme, tuple(params), frozenset(quoted))


def format_auth(scheme: str, params: Sequence[tuple[str, str, bool]]) -> str:
    """``scheme name="value", name=token`` from ``(name, value, quoted)`` triples."""
    items = [f"{n}={quote(v)}" if q else f"{n}={v}" for n, v, q in params]
    return f"{scheme} " + ", ".join(items)


@dataclass(frozen=True, slots=True)
class ReasonValue:
    """One ``Reason`` header value (RFC 3326 §2): protocol plus ``cause``/``text`` params."""

    protocol: str
    params: Params = ()

    @property
    def cause(self) -> int | None:
        value = param(self.params, "cause")
        return int(value) if value and value.isdigit() else None

    @property
    def text(self) -> str | None:
        return param(self.params, "text")


def parse_reason(value: str) -> ReasonValue:
    cur = _Cursor(value)
    cur.skip_ws()
    protocol = cur.token("reason protocol")
    params = cur.params()
    _finish(cur, "Reason")
    return ReasonValue(protocol, params)
