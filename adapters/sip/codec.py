"""SIP messages that keep their bytes (RFC 3261 §7), and stream framing (§18.3).

DESIGN.md rule 1: bytes are the truth. A parsed :class:`Request` or :class:`Response`
keeps its start line, every header line exactly as written (order, case, compact forms,
whitespace, folding) and the body as bytes; ``bytes(parse(data)) == data`` for every
accepted message. Edits return new messages that change only the line they name (and the
Content-Length line when the body changes, counted in bytes).

Header values are read on demand through :mod:`adapters.sip.header`. The module is
sans-I/O: :func:`parse` reads one datagram, :class:`StreamFramer` cuts a TCP/TLS byte
stream into messages by Content-Length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Self

from adapters.sip import header as hdr
from canonical.errors import Defect, ParseError, Reason

#: Compact header forms (RFC 3261 §7.3.3, RFC 3265/6665, RFC 3515, RFC 3892, RFC 4028,
#: RFC 3841, RFC 4474): compact name -> canonical lower-case long name.
COMPACT: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

_TOKEN_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_TOKEN_DELETE = bytes(sorted(_TOKEN_BYTES))
_FOLD = re.compile(rb"\r\n[ \t]+")
#: canonical keys of the names seen so far (header names repeat across messages).
_KEYS: dict[str, str] = {}
#: name bytes before the colon (as on the wire, trailing blanks included) -> (name, key),
#: for names already checked to be tokens: one lookup per header line on the fast path
_NAMES: dict[bytes, tuple[str, str]] = {}
#: canonical keys of the names :meth:`HeaderField.build` has checked (they are tokens).
_BUILT: dict[str, str] = {}
#: ``HeaderField(...)`` without the call of namedtuple's Python-level ``__new__``.
_new_field = tuple.__new__


def _is_token(data: bytes) -> bool:
    """True for a non-empty RFC 3261 token (C speed: delete the token bytes, see if any stay)."""
    return bool(data) and not data.translate(None, _TOKEN_DELETE)


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = canonical_name(name)
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


_VERSION = re.compile(rb"SIP/[0-9]+\.[0-9]+")
CRLF = b"\r\n"


def canonical_name(name: str) -> str:
    """The lower-case long form of a header name (``"v"`` -> ``"via"``)."""
    lower = name.lower()
    return COMPACT.get(lower, lower)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the codec accepts from the network (policy, not grammar).

    ``max_message`` bounds a whole message (datagram or framed), ``max_headers`` the
    number of header fields (header floods), ``max_line`` one logical header line, and
    ``max_head`` the start line plus headers of a stream message still being received.
    """

    max_message: int = 1024 * 1024
    max_headers: int = 256
    max_line: int = 16 * 1024
    max_head: int = 64 * 1024


DEFAULT_LIMITS = Limits()


class HeaderField(NamedTuple):
    """One header field as written: ``name`` (as written), ``value`` (unfolded, trimmed,
    UTF-8 with surrogateescape so no byte is lost), ``raw`` (its exact line(s), CRLF
    included) and ``key`` (canonical lower-case long name)."""

    name: str
    value: str
    raw: bytes
    key: str

    @classmethod
    def build(cls, name: str, value: str) -> HeaderField:
        """A new ``Name: value`` line. Refuses CR/LF in either (header injection)."""
        key = _BUILT.get(name)
        if key is None:
            if not _is_token(name.encode("utf-8", "replace")):
                raise ValueError(f"{name!r} is not a header name (RFC 3261 §25.1 token)")
            key = canonical_name(name)
            if len(_BUILT) < 4096:
                _BUILT[name] = key
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} value contains CR or LF")
        raw = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        return _new_field(cls, (name, value.strip(" \t"), raw, key))


class Message:
    """A SIP request or response that keeps its bytes. Immutable; edits return copies."""

    __slots__ = ("_index_", "_raw", "_views", "body", "defects", "headers", "start_line")

    kind: ClassVar[str] = "message"

    start_line: bytes
    headers: tuple[HeaderField, ...]
    body: bytes
    defects: tuple[Defect, ...]
    _raw: bytes | None
    _views: dict[str, Any] | None
    _index_: dict[str, list[HeaderField]] | None

    def _init(
        self,
        start_line: bytes,
        headers: tuple[HeaderField, ...],
        body: bytes,
        raw: bytes | None,
        defects: tuple[Defect, ...],
    ) -> None:
        self.start_line = start_line
        self.headers = headers
        self.body = body
        self._raw = raw
        self.defects = defects
        self._views = None
        self._index_ = None

    def _memo(self, name: str, read: Callable[[], Any]) -> Any:
        """A parsed view, computed once (the message never changes; errors are not kept)."""
        views = self._views
        if views is None:
            views = self._views = {}
        elif name in views:
            return views[name]
        value = views[name] = read()
        return value

    # -- bytes

    def __bytes__(self) -> bytes:
        if self._raw is None:
            self._raw = b"".join((self.start_line, *(h.raw for h in self.headers), CRLF, self.body))
        return self._raw

    def __len__(self) -> int:
        return len(bytes(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    # -- header access

    def _index(self) -> dict[str, list[HeaderField]]:
        """The fields by canonical name, in order: built once, on the first lookup, so
        that each further lookup is one dictionary access (a UAS reads a dozen names)."""
        index = self._index_
        if index is None:
            index = self._index_ = {}
            for h in self.headers:
                same = index.get(h.key)
                if same is None:
                    index[h.key] = [h]
                else:
                    same.append(h)
        return index

    def fields(self, name: str) -> list[HeaderField]:
        """Every field named ``name`` (compact or long form, any case), in order."""
        return list((self._index_ or self._index()).get(_KEYS.get(name) or _key(name), ()))

    def get(self, name: str) -> str | None:
        """The value of the first field named ``name``, or None."""
        found = (self._index_ or self._index()).get(_KEYS.get(name) or _key(name))
        return None if found is None else found[0].value

    def get_all(self, name: str) -> list[str]:
        """The values of every field named ``name`` (not split at commas)."""
        found = (self._index_ or self._index()).get(_KEYS.get(name) or _key(name))
        return [h.value for h in found] if found else []

    def count(self, name: str) -> int:
        """How many fields are named ``name`` (compact or long form, any case)."""
        found = (self._index_ or self._index()).get(_KEYS.get(name) or _key(name))
        return len(found) if found else 0

    def values(self, name: str) -> list[str]:
        """List elements over every field named ``name`` (split at commas, §7.3.1)."""
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(hdr.split_list(value))
        return out

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def single(self, name: str) -> str:
        """The value of a header that must occur exactly once (ParseError otherwise)."""
        found = self.get_all(name)
        if not found:
            raise ParseError(
                "MISSING_HEADER",
                f"{name} header is missing",
                hint=f"every SIP request carries {name} (RFC 3261 §8.1.1)",
            )
        if len(found) > 1:
            raise ParseError("DUPLICATE_HEADER", f"{name} header occurs {len(found)} times")
        return found[0]

    # -- typed views (RFC 3261 §20)

    @property
    def call_id(self) -> str:
        return str(self._memo("call_id", lambda: self.single("Call-ID")))

    @property
    def cseq(self) -> hdr.CSeq:
        value: hdr.CSeq = self._memo("cseq", lambda: hdr.parse_cseq(self.single("CSeq")))
        return value

    @property
    def from_(self) -> hdr.NameAddr:
        value: hdr.NameAddr = self._memo("from", lambda: hdr.parse_name_addr(self.single("From")))
        return value

    @property
    def to(self) -> hdr.NameAddr:
        value: hdr.NameAddr = self._memo("to", lambda: hdr.parse_name_addr(self.single("To")))
        return value

    @property
    def vias(self) -> list[hdr.Via]:
        def read() -> tuple[hdr.Via, ...]:
            out: list[hdr.Via] = []
            for value in self.get_all("Via"):
                out.extend(hdr.parse_via(value))
            return tuple(out)

        return list(self._memo("vias", read))

    @property
    def top_via(self) -> hdr.Via:
        def read() -> hdr.Via:
            views = self._views
            vias = None if views is None else views.get("vias")
            if vias:  # every Via was read already (a UAS's checks): the first element
                return vias[0]  # type: ignore[no-any-return]
            first = self.get("Via")
            if first is None:
                raise ParseError("MISSING_HEADER", "Via header is missing")
            return hdr.parse_via(first)[0]

        value: hdr.Via = self._memo("top_via", read)
        return value

    @property
    def content_type(self) -> hdr.MediaType | None:
        def read() -> hdr.MediaType | None:
            value = self.get("Content-Type")
            return None if value is None else hdr.parse_media_type(value)

        found: hdr.MediaType | None = self._memo("content_type", read)
        return found

    @property
    def max_forwards(self) -> int | None:
        value = self.get("Max-Forwards")
        return None if value is None else hdr.parse_max_forwards(value)

    @property
    def expires(self) -> int | None:
        value = self.get("Expires")
        return None if value is None else hdr.parse_expires(value)

    @property
    def event(self) -> hdr.Event | None:
        value = self.get("Event")
        return None if value is None else hdr.parse_event(value)

    @property
    def subscription_state(self) -> hdr.SubscriptionState | None:
        value = self.get("Subscription-State")
        return None if value is None else hdr.parse_subscription_state(value)

    @property
    def contact(self) -> hdr.NameAddr | None:
        values = self.values("Contact")
        return hdr.parse_name_addr(values[0]) if values else None

    @property
    def record_routes(self) -> list[hdr.NameAddr]:
        out: list[hdr.NameAddr] = []
        for value in self.get_all("Record-Route"):
            out.extend(hdr.parse_name_addrs(value))
        return out

    # -- edits (each returns a new message; untouched lines keep their bytes)

    #: The start-line fields a subclass copies into an edited message.
    _line_fields: ClassVar[tuple[str, ...]] = ()

    def _with(self, headers: tuple[HeaderField, ...], body: bytes | None = None) -> Self:
        new = object.__new__(type(self))
        for name in self._line_fields:
            setattr(new, name, getattr(self, name))
        new._init(self.start_line, headers, self.body if body is None else body, None, ())
        return new

    def with_header(self, name: str, value: str, *, index: int | None = None) -> Self:
        """Insert ``Name: value`` at field position ``index`` (default: before Content-Length
        if present, else last). Every other line is unchanged."""
        field_ = HeaderField.build(name, value)
        headers = list(self.headers)
        if index is None:
            index = next(
                (i for i, h in enumerate(headers) if h.key == "content-length"), len(headers)
            )
        headers.insert(index, field_)
        return self._with(tuple(headers))

    def with_replaced(self, name: str, value: str) -> Self:
        """Replace the first field named ``name`` (keeping the name as written), or add it."""
        key = canonical_name(name)
        headers = list(self.headers)
        for i, h in enumerate(headers):
            if h.key == key:
                headers[i] = HeaderField.build(h.name, value)
                return self._with(tuple(headers))
        return self.with_header(name, value)

    def without(self, name: str) -> Self:
        """Remove every field named ``name``."""
        key = canonical_name(name)
        return self._with(tuple(h for h in self.headers if h.key != key))

    def with_top_via(self, via: str) -> Self:
        """Prepend a Via as the first Via line (a new field, other Vias untouched, §16.6)."""
        index = next((i for i, h in enumerate(self.headers) if h.key == "via"), 0)
        return self.with_header("Via", via, index=index)

    def without_top_via(self) -> Self:
        """Remove the topmost via-parm (only that element of a comma list, §18.1.2)."""
        headers = list(self.headers)
        for i, h in enumerate(headers):
            if h.key == "via":
                items = hdr.split_list(h.value)
                if len(items) > 1:
                    headers[i] = HeaderField.build(h.name, ", ".join(items[1:]))
                else:
                    del headers[i]
                return self._with(tuple(headers))
        return self

    def with_body(self, body: bytes, content_type: str | None = None) -> Self:
        """A copy with ``body``; Content-Length set to ``len(body)`` in bytes and the
        Content-Type line replaced when given (or removed for an empty body)."""
        msg = self._with(self.headers, body)
        if content_type is not None:
            msg = msg.with_replaced("Content-Type", content_type)
        elif not body:
            msg = msg.without("Content-Type")
        return msg.with_replaced("Content-Length", str(len(body)))


class Request(Message):
    """``Method SP Request-URI SP SIP-Version CRLF`` headers CRLF body (§7.1)."""

    __slots__ = ("method", "uri", "version")
    kind: ClassVar[str] = "request"
    _line_fields = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: tuple[HeaderField, ...],
        body: bytes = b"",
        *,
        version: str = "SIP/2.0",
        start_line: bytes | None = None,
        raw: bytes | None = None,
        defects: tuple[Defect, ...] = (),
    ) -> None:
        self.method = method
        self.uri = uri
        self.version = version
        line = start_line or f"{method} {uri} {version}\r\n".encode("utf-8", "surrogateescape")
        self._init(line, headers, body, raw, defects)

    @property
    def request_uri(self) -> hdr.Uri:
        return hdr.parse_uri(self.uri)

    def with_uri(self, uri: str) -> Request:
        """A copy with another Request-URI (a new start line)."""
        return Request(self.method, uri, self.headers, self.body, version=self.version)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} {len(self.body)}B>"

    @classmethod
    def build(
        cls,
        method: str,
        uri: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = b"",
    ) -> Request:
        """A new request; Content-Length (bytes) is appended when not given."""
        return cls(method, uri, _build_headers(headers, body), body)


class Response(Message):
    """``SIP-Version SP Status-Code SP Reason-Phrase CRLF`` headers CRLF body (§7.2)."""

    __slots__ = ("reason", "status", "version")
    kind: ClassVar[str] = "response"
    _line_fields = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: tuple[HeaderField, ...],
        body: bytes = b"",
        *,
        version: str = "SIP/2.0",
        start_line: bytes | None = None,
        raw: bytes | None = None,
        defects: tuple[Defect, ...] = (),
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        line = start_line or f"{version} {status} {reason}\r\n".encode("utf-8", "surrogateescape")
        self._init(line, headers, body, raw, defects)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    @property
    def retry_after(self) -> int | None:
        value = self.get("Retry-After")
        if value is None:
            return None
        try:
            return hdr.parse_retry_after(value).seconds
        except ParseError:
            return None

    @classmethod
    def build(
        cls,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = b"",
    ) -> Response:
        return cls(status, reason, _build_headers(headers, body), body)


class Packed(Message):
    """A message kept only as its bytes (a finished transaction's last response, held for
    retransmissions until Timer J): no parsed header objects, a fraction of the memory."""

    __slots__ = ()
    kind: ClassVar[str] = "packed"

    def __init__(self, raw: bytes) -> None:
        self._init(b"", (), b"", raw, ())


def _build_headers(headers: Sequence[tuple[str, str]], body: bytes) -> tuple[HeaderField, ...]:
    fields = [HeaderField.build(n, v) for n, v in headers]
    if not any(f.key == "content-length" for f in fields):
        fields.append(HeaderField.build("Content-Length", str(len(body))))
    return tuple(fields)


#: Requests that create dialogs (RFC 3261 §12, RFC 6665 §4.1.2, RFC 3515).
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def reply(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2: Via lines, From, Call-ID and CSeq
    copied byte for byte, To copied with a tag added when given (and none present), and
    Record-Route copied for responses that establish a dialog (§12.1.1)."""
    fields: list[HeaderField] = []
    # §12.1.1: a 2xx/1xx to a dialog-creating request carries its Record-Route lines.
    dialog = request.method in DIALOG_METHODS and 100 < status < 300
    for h in request.headers:
        if h.key in ("via", "from", "call-id", "cseq") or (dialog and h.key == "record-route"):
            fields.append(h)
        elif h.key == "to":
            if to_tag is not None and ";tag=" not in h.value.replace(" ", "").lower():
                fields.append(HeaderField.build(h.name, f"{h.value};tag={to_tag}"))
            else:
                fields.append(h)
    fields.extend(HeaderField.build(n, v) for n, v in extra)
    if content_type is not None:
        fields.append(HeaderField.build("Content-Type", content_type))
    fields.append(HeaderField.build("Content-Length", str(len(body))))
    return Response(status, reason, tuple(fields), body)


# ------------------------------------------------------------------------------ parsing


@dataclass(slots=True)
class _Head:
    """The start line and headers of a message whose body may still be arriving."""

    start: int  # offset of the start line (after skipped leading CRLFs)
    body_start: int
    start_line: bytes
    fields: list[HeaderField]
    content_length: int | None
    defects: list[Defect] = field(default_factory=list)


def _error(
    code: str,
    message: str,
    offset: int | None,
    *,
    line: int | None = None,
    hint: str = "",
    reason: Reason | None = None,
) -> ParseError:
    return ParseError(code, message, offset=offset, line=line, hint=hint, reason=reason)


def _parse_head(data: bytes | bytearray, limits: Limits, *, start: int = 0) -> _Head | None:
    """Read the start line and header block at ``start``; None when the block is incomplete."""
    n = len(data)
    i = start
    while data.startswith(b"\r\n", i):  # §7.5: ignore empty lines before the start line
        i += 2
    end = data.find(b"\r\n\r\n", i)
    if end < 0:
        if n - i > limits.max_head:
            raise _error(
                "HEAD_TOO_LARGE",
                f"no end of headers within {limits.max_head} bytes",
                i,
                reason=Reason.TOO_LARGE,
            )
        return None
    if end - i > limits.max_head:
        raise _error(
            "HEAD_TOO_LARGE",
            f"start line and headers exceed {limits.max_head} bytes",
            i,
            reason=Reason.TOO_LARGE,
        )
    head = bytes(data[i : end + 2])
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        pos = next(
            k
            for k in range(len(head))
            if (head[k] == 10 and (k == 0 or head[k - 1] != 13))
            or (head[k] == 13 and (k + 1 >= len(head) or head[k + 1] != 10))
        )
        raise _error(
            "BARE_LF" if head[pos] == 10 else "BARE_CR",
            "a line ends without CRLF",
            i + pos,
            hint="SIP lines end with CRLF (RFC 3261 §7)",
        )
    lines = head.split(b"\r\n")[:-1]
    start_line = lines[0] + CRLF
    fields: list[HeaderField] = []
    if len(lines) - 1 > limits.max_headers:
        raise _error(
            "TOO_MANY_HEADERS",
            f"more than {limits.max_headers} header fields",
            i,
            reason=Reason.TOO_LARGE,
        )
    # Group physical lines into logical header lines (folding: a line starting with SP/HT
    # continues the previous one, RFC 3261 §7.3.1). Most messages fold nothing: fast path.
    max_line = limits.max_line
    offset = i + len(start_line)
    if b"\r\n " not in head and b"\r\n\t" not in head:
        append = fields.append
        names = _NAMES
        for line in lines[1:]:
            colon = line.find(b":")
            if colon <= 0 or len(line) + 2 > max_line:
                break  # the careful path below names the fault
            name_bytes = line[:colon]
            known = names.get(name_bytes)
            if known is None:
                name_bytes = name_bytes.rstrip(b" \t")
                if not _is_token(name_bytes):
                    break
                name = name_bytes.decode("ascii")
                known = (name, _key(name))
                if len(names) < 4096:
                    names[line[:colon]] = known
            append(
                _new_field(
                    HeaderField,
                    (
                        known[0],
                        line[colon + 1 :].strip(b" \t").decode("utf-8", "surrogateescape"),
                        line + CRLF,
                        known[1],
                    ),
                )
            )
        else:
            lines = []  # all read
        if lines:
            fields.clear()
    groups: list[tuple[list[bytes], int, int]] = []
    for number, line in enumerate(lines[1:], start=2):
        if line[:1] in (b" ", b"\t"):
            if not groups:
                raise _error(
                    "FOLD_WITHOUT_HEADER",
                    "continuation line before any header",
                    offset,
                    line=number,
                )
            groups[-1][0].append(line)
        else:
            groups.append(([line], offset, number))
        offset += len(line) + 2
    for parts, at, number in groups:
        raw = parts[0] + CRLF if len(parts) == 1 else b"\r\n".join(parts) + CRLF
        if len(raw) > max_line:
            raise _error(
                "LINE_TOO_LONG",
                f"header line of {len(raw)} bytes exceeds {max_line}",
                at,
                line=number,
                reason=Reason.TOO_LARGE,
            )
        colon = raw.find(b":")
        if colon < 0:
            raise _error(
                "NO_COLON", "header line without ':'", at, line=number, hint="write Name: value"
            )
        name_bytes = raw[:colon].rstrip(b" \t")
        if not _is_token(name_bytes):
            raise _error(
                "BAD_HEADER_NAME",
                f"header name {name_bytes[:40]!r} is not a token",
                at,
                line=number,
            )
        value_bytes = raw[colon + 1 : -2]
        if len(parts) > 1:
            value_bytes = _FOLD.sub(b" ", value_bytes)
        name = name_bytes.decode("ascii")
        value = value_bytes.strip(b" \t").decode("utf-8", "surrogateescape")
        fields.append(HeaderField(name, value, raw, _key(name)))
    lengths = [f for f in fields if f.key == "content-length"]
    content_length: int | None = None
    if len(lengths) > 1:
        raise _error(
            "MULTIPLE_CONTENT_LENGTH",
            f"Content-Length occurs {len(lengths)} times",
            i,
            hint="send exactly one Content-Length (RFC 4475 §3.3.9)",
        )
    if lengths:
        text = lengths[0].value
        if not text.isascii() or not text.isdigit():
            raise _error(
                "BAD_CONTENT_LENGTH",
                f"Content-Length {text!r} is not a non-negative integer",
                i,
                hint="Content-Length counts the body in bytes",
            )
        content_length = int(text)
        if content_length > limits.max_message:
            raise _error(
                "TOO_LARGE",
                f"Content-Length {content_length} exceeds {limits.max_message} bytes",
                i,
                reason=Reason.TOO_LARGE,
            )
    return _Head(i, end + 4, start_line, fields, content_length)


def _make(head: _Head, data: bytes, body: bytes, raw: bytes) -> Message:
    line = head.start_line[:-2]
    fields = tuple(head.fields)
    defects = tuple(head.defects)
    if line.startswith(b"SIP/"):
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not _VERSION.fullmatch(parts[0]):
            raise _error("BAD_STATUS_LINE", "malformed status line", head.start)
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
            raise _error(
                "BAD_STATUS_CODE",
                f"status code {code[:20]!r} is not three digits (100-699)",
                head.start + len(parts[0]) + 1,
            )
        if len(parts) == 2:
            defects += (Defect("NO_REASON_SP", "status line without SP before the reason"),)
        reason = parts[2].decode("utf-8", "surrogateescape") if len(parts) == 3 else ""
        return Response(
            int(code),
            reason,
            fields,
            body,
            version=parts[0].decode("ascii"),
            start_line=head.start_line,
            raw=raw,
            defects=defects,
        )
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _error(
            "BAD_REQUEST_LINE",
            "request line is not 'Method SP Request-URI SP SIP-Version' with single spaces",
            head.start,
            hint="RFC 3261 §7.1; RFC 4475 §3.1.2.7-3.1.2.9",
        )
    method, uri, version = parts
    if not _is_token(method):
        raise _error("BAD_METHOD", f"method {method[:20]!r} is not a token", head.start)
    if not _VERSION.fullmatch(version):
        raise _error(
            "BAD_VERSION",
            f"{version[:20]!r} is not a SIP version",
            head.start + len(line) - len(version),
        )
    if uri.startswith(b"<") or b":" not in uri:
        raise _error(
            "BAD_REQUEST_URI",
            f"Request-URI {uri[:40]!r} is not an absolute URI",
            head.start + len(method) + 1,
            hint="no angle brackets around the Request-URI (RFC 4475 §3.1.2.6)",
        )
    return Request(
        method.decode("ascii"),
        uri.decode("utf-8", "surrogateescape"),
        fields,
        body,
        version=version.decode("ascii"),
        start_line=head.start_line,
        raw=raw,
        defects=defects,
    )


def parse(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one message from a datagram (RFC 3261 §18.3).

    Without Content-Length the body runs to the end of the datagram. Bytes after the
    Content-Length are discarded (§18.3) and recorded as an ``EXCESS_BYTES`` defect; a
    Content-Length larger than the datagram is a ``TRUNCATED`` error (RFC 4475 §3.1.2.2).
    """
    if len(data) > limits.max_message:
        raise _error(
            "TOO_LARGE",
            f"message of {len(data)} bytes exceeds {limits.max_message}",
            0,
            reason=Reason.TOO_LARGE,
        )
    head = _parse_head(data, limits)
    if head is None:
        raise _error(
            "NO_END_OF_HEADERS",
            "no empty line ends the headers",
            len(data),
            hint="end the header block with CRLF CRLF",
        )
    available = len(data) - head.body_start
    if head.content_length is None:
        length = available
    else:
        length = head.content_length
        if length > available:
            raise _error(
                "TRUNCATED",
                f"Content-Length says {length} bytes, the datagram holds {available}",
                head.body_start,
                hint="Content-Length counts the body in bytes",
            )
        if length < available:
            head.defects.append(
                Defect(
                    "EXCESS_BYTES",
                    f"{available - length} bytes after the body were discarded",
                    head.body_start + length,
                )
            )
    end = head.body_start + length
    body = data[head.body_start : end]
    raw = data if head.start == 0 and end == len(data) else data[head.start : end]
    return _make(head, data, body, raw)


class StreamFramer:
    """Cut a reliable byte stream (TCP, TLS) into messages (RFC 3261 §18.3).

    Content-Length is mandatory on streams; CRLF keep-alives between messages (RFC 5626
    §4.4.1) are skipped and counted. A framing error is fatal for the connection: the
    caller closes it.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._head: _Head | None = None
        self._framed: list[Message] = []
        self.keepalives = 0

    def feed(self, data: bytes) -> list[Message]:
        """The complete messages in the stream so far. On a :class:`ParseError` the
        messages cut before the faulty one in the same call are kept for
        :meth:`take_framed`, so a good message ahead of a bad one is not lost."""
        self._buffer += data
        out: list[Message] = []
        try:
            self._cut(out)
        except ParseError:
            self._framed = out
            raise
        return out

    def take_framed(self) -> list[Message]:
        """The messages cut before the last :class:`ParseError` of :meth:`feed`, once."""
        framed, self._framed = self._framed, []
        return framed

    def _cut(self, out: list[Message]) -> None:
        buf = self._buffer
        while True:
            if self._head is None:
                k = 0
                while buf.startswith(b"\r\n", k):
                    k += 2
                if k:
                    self.keepalives += k // 4 or 1
                    del buf[:k]
                if not buf:
                    break
                head = _parse_head(buf, self.limits)
                if head is None:
                    break
                if head.content_length is None:
                    raise _error(
                        "NO_CONTENT_LENGTH",
                        "a message on a stream has no Content-Length",
                        head.start,
                        hint="stream transports require Content-Length (RFC 3261 §18.3)",
                    )
                self._head = head
            head = self._head
            assert head.content_length is not None
            end = head.body_start + head.content_length
            if len(buf) < end:
                break
            raw = bytes(buf[head.start : end])
            body = raw[head.body_start - head.start :]
            del buf[:end]
            self._head = None
            out.append(_make(head, raw, body, raw))

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)


def iter_lines(message: Message) -> Iterator[bytes]:
    """The message's lines as sent: start line, each header line, the blank line."""
    yield message.start_line
    for h in message.headers:
        yield h.raw
    yield CRLF
