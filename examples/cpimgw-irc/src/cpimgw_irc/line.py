"""IRC message lines (RFC 2812 §2.3, RFC 1459 §2.3): parse and write, keeping every byte.

Grammar (RFC 2812 §2.3.1)::

    message  = [ ":" prefix SPACE ] command [ params ] crlf
    command  = 1*letter / 3digit
    params   = *14( SPACE middle ) [ SPACE ":" trailing ]
             / 14( SPACE middle ) [ SPACE [ ":" ] trailing ]

A line is at most 512 bytes including CR LF (§2.3) and never contains NUL, CR or LF
inside. IRC is a byte protocol: text is decoded as UTF-8 with ``surrogateescape`` so that
bytes that are not UTF-8 survive a parse/write round trip exactly. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from canonical.errors import ParseError

#: RFC 2812 §2.3: "IRC messages are always lines of characters terminated with a CR-LF
#: pair, and these messages SHALL NOT exceed 512 characters in length, counting all
#: characters including the trailing CR-LF."
MAX_LINE = 512
MAX_PARAMS = 15


def text_of(data: bytes) -> str:
    """Bytes as text, every byte kept (undecodable ones as surrogate escapes)."""
    return data.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    """The exact bytes of text made by :func:`text_of`."""
    return text.encode("utf-8", "surrogateescape")


def fold(name: str) -> str:
    """Case-fold a nickname or channel name for comparison (``CASEMAPPING=ascii``, the
    mapping ngIRCd announces; RFC 2812 §2.2 allows the server to choose)."""
    return name.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Line:
    """One IRC message. ``trailing`` tells whether the last parameter was written after
    ``:`` (it must be when it is empty, contains a space or starts with ``:``)."""

    command: str
    params: tuple[str, ...] = ()
    prefix: str | None = None
    trailing: bool = False

    @property
    def nick(self) -> str | None:
        """The nickname in the prefix (``nick!user@host``), None for no prefix."""
        if self.prefix is None:
            return None
        return self.prefix.split("!", 1)[0].split("@", 1)[0]

    @property
    def text(self) -> str:
        """The last parameter (the message text of PRIVMSG/NOTICE), or empty."""
        return self.params[-1] if self.params else ""

    def to_bytes(self) -> bytes:
        """The line as written on the wire, CR LF included."""
        parts = [f":{self.prefix}"] if self.prefix is not None else []
        parts.append(self.command)
        for index, param in enumerate(self.params):
            last = index == len(self.params) - 1
            needs_colon = not param or " " in param or param.startswith(":")
            if last and (self.trailing or needs_colon):
                parts.append(f":{param}")
            else:
                parts.append(param)
        return bytes_of(" ".join(parts)) + b"\r\n"

    def same_as(self, other: Line) -> bool:
        """Equal as IRC sees it: command case-insensitive, the first parameter (a target)
        under the server's case mapping, the rest exact; ``trailing`` form ignored."""
        if self.command.upper() != other.command.upper() or self.prefix != other.prefix:
            return False
        if len(self.params) != len(other.params):
            return False
        if self.params and fold(self.params[0]) != fold(other.params[0]):
            return False
        return self.params[1:] == other.params[1:]


def parse_line(data: bytes, *, offset: int = 0, line: int = 1) -> Line:
    """Parse one line without its CR LF. ParseError says what and where (byte offset)."""
    if b"\x00" in data:
        at = offset + data.index(b"\x00")
        raise ParseError(
            "NUL",
            "NUL byte in an IRC line",
            line=line,
            offset=at,
            hint="RFC 2812 §2.3.1: NUL is never allowed",
        )
    if b"\r" in data:
        at = offset + data.index(b"\r")
        raise ParseError(
            "BARE_CR",
            "CR inside an IRC line",
            line=line,
            offset=at,
            hint="end each line with CR LF and nothing else",
        )
    if len(data) + 2 > MAX_LINE:
        raise ParseError(
            "LINE_TOO_LONG",
            f"IRC line of {len(data) + 2} bytes (limit 512)",
            line=line,
            offset=offset + MAX_LINE - 2,
            hint="RFC 2812 §2.3: split the text over several lines",
        )
    text = text_of(data)
    prefix = None
    rest = text
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
        if not prefix:
            raise ParseError("EMPTY_PREFIX", "':' without a prefix", line=line, offset=offset)
    rest = rest.lstrip(" ")
    command_at = offset + len(data) - len(bytes_of(rest))
    command, _, rest = rest.partition(" ")
    if not command:
        raise ParseError("NO_COMMAND", "no command in the IRC line", line=line, offset=offset)
    if not (command.isascii() and (command.isalpha() or (command.isdigit() and len(command) == 3))):
        raise ParseError(
            "BAD_COMMAND",
            f"command {command!r} is neither letters nor 3 digits",
            line=line,
            offset=command_at,
            hint="RFC 2812 §2.3.1: command = 1*letter / 3digit",
        )
    params: list[str] = []
    trailing = False
    while rest:
        rest = rest.lstrip(" ")
        if not rest:
            break
        if rest.startswith(":") or len(params) == MAX_PARAMS - 1:
            params.append(rest[1:] if rest.startswith(":") else rest)
            trailing = rest.startswith(":")
            break
        middle, _, rest = rest.partition(" ")
        params.append(middle)
    return Line(command.upper(), tuple(params), prefix, trailing)


def parse_lines(data: bytes) -> tuple[Line, ...]:
    """Every line of ``data`` (CR LF separated; a last line without CR LF is accepted).

    Empty lines are skipped, as servers do (RFC 2812 §2.3.1); input without any message
    is a ParseError.
    """
    lines: list[Line] = []
    offset = 0
    for number, chunk in enumerate(data.split(b"\n"), start=1):
        body = chunk[:-1] if chunk.endswith(b"\r") else chunk
        if body:
            lines.append(parse_line(body, offset=offset, line=number))
        offset += len(chunk) + 1
    if not lines:
        raise ParseError(
            "EMPTY",
            "no IRC message in the input",
            offset=0,
            hint="send at least one line 'COMMAND params' ending in CR LF",
        )
    return tuple(lines)
