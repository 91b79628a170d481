"""Addresses: ``im:``/``pres:`` (RFC 3860 §3.2, RFC 3859 §3.2), ``sip:``/``sips:`` (RFC 3261
§19.1, §25.1), ``xmpp:`` URIs (RFC 5122 §2) and bare or full JIDs (RFC 7622 §3), with JID
escaping (XEP-0106) and conversion between schemes (RFC 7247 §6).

One value type, :class:`Address`, holds every kind. Its fields are *decoded*: percent-encoding
of URIs is removed on parse and applied again by ``str()``, so two spellings of one address
(``im:o%27neil@example.com`` and ``im:o'neil@example.com``) are one value. For ``xmpp``
addresses ``user`` is the JID localpart exactly as it travels in stanzas, i.e. *escaped* per
XEP-0106 (``d\\27artagnan``): XEP-0106 §4.1 rule 5 forbids comparing JIDs in unescaped form,
so the escaped form is the identity. :meth:`Address.with_scheme` unescapes and escapes at the
boundary between XMPP and URI schemes.

Case (RFC 3986 §6.2.2.1, RFC 3261 §19.1.4): schemes are stored in lower case; hosts keep the
case they were written in, but compare case-insensitively; users, resources, parameters and
headers compare exactly. ``Address.parse(str(a)) == a`` for every address, and ``str()`` gives
back the parsed text whenever that text was already in canonical form (docs/addresses.md).

Everything here is pure: no DNS, no I/O. Invalid input raises :class:`ParseError` (a
``ValueError``) with a stable code (``ADDRESS_*``, ``JID_*``), the byte offset, and a hint.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from encodings import idna
from typing import Literal, get_args

from canonical.errors import ParseError

Scheme = Literal["im", "pres", "sip", "sips", "xmpp"]

#: The schemes cpimgw understands, in the order of ``Scheme``.
SCHEMES: tuple[str, ...] = get_args(Scheme)

#: RFC 7622 §3.3.1, §3.2.1, §3.4.1: each JID part is at most 1023 octets of UTF-8.
JID_PART_MAX = 1023

# --- character classes (ASCII; RFC 3261 §25.1, RFC 3986 §2, RFC 5122 §2.2) -----------------

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_HEX = frozenset("0123456789ABCDEFabcdef")
# RFC 3261 §25.1 unreserved = alphanum / mark
_SIP_UNRESERVED = _ALNUM | frozenset("-_.!~*'()")
_SIP_USER = _SIP_UNRESERVED | frozenset("&=+$,;?/")  # + user-unreserved
_SIP_PARAM = _SIP_UNRESERVED | frozenset("[]/:&+$")  # paramchar = param-unreserved / unreserved
_SIP_HNV = _SIP_UNRESERVED | frozenset("[]/?:+$")  # hnv-unreserved / unreserved
# RFC 3986 §2.2-2.3
_URI_UNRESERVED = _ALNUM | frozenset("-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_PCHAR_NO_AT = _URI_UNRESERVED | _SUB_DELIMS | frozenset(":/")
# im:/pres: local part written raw by str(): RFC 2822 atext that is also a URI character,
# plus "." (dot-atom). Everything else (incl. the RFC 7247 §6.4 set "(),.;[\]" except the
# dot, and every non-ASCII octet) is percent-encoded.
_IM_USER_OUT = _ALNUM | frozenset("!$&'*+-./=_~")
_IM_HEADER_OUT = _URI_UNRESERVED | frozenset("!$'()*+,;:@/?")
# RFC 5122 §2.2: nodeid, resid and the query characters
_XMPP_NODE = _URI_UNRESERVED | frozenset("!$()*+,;=")
_XMPP_RES = _URI_UNRESERVED | frozenset("!$&'()*+,:;=")
_XMPP_HOST = _URI_UNRESERVED | _SUB_DELIMS

# --- XEP-0106 -------------------------------------------------------------------------------

#: XEP-0106 §3.2: the ten characters and their escapes (lower-case hex; case is significant).
_JID_ESCAPES = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
    "\\": "\\5c",
}
_JID_CODES = {esc[1:]: ch for ch, esc in _JID_ESCAPES.items()}
#: RFC 7622 §3.3.1: characters a localpart may never contain (XEP-0106 escapes them).
_JID_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")

_IPV4 = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")
# RFC 3261 §25.1 hostname: *( domainlabel "." ) toplabel [ "." ]
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

_USER_SCHEMES = ("im", "pres", "sip", "sips")


def _offset(text: str, index: int) -> int:
    """Byte offset of ``text[index]`` in the UTF-8 encoding of ``text``."""
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _fail(code: str, message: str, text: str | None, index: int | None, hint: str) -> ParseError:
    offset = _offset(text, index) if text is not None and index is not None else None
    return ParseError(code, message, offset=offset, hint=hint)


# --- percent-encoding (RFC 3986 §2.1) --------------------------------------------------------


def _decode(
    text: str, start: int, end: int, allowed: frozenset[str] | None, what: str, *, iri: bool
) -> str:
    """Percent-decode ``text[start:end]`` after checking every raw character is ``allowed``
    (plus non-ASCII characters when ``iri``: RFC 3987 §2.2 ucschar). Bytes must be UTF-8.
    ``allowed=None`` takes every raw character but a lone surrogate (the JID parts of a
    gateway-wide ``xmpp:`` address, checked as JID parts afterwards)."""
    out = bytearray()
    i = start
    while i < end:
        ch = text[i]
        if ch == "%":
            pair = text[i + 1 : i + 3]
            if i + 3 > end or not set(pair) <= _HEX:
                raise _fail(
                    "ADDRESS_BAD_PERCENT",
                    f"'%' in the {what} is not followed by two hex digits",
                    text,
                    i,
                    "write a literal '%' as %25",
                )
            out.append(int(pair, 16))
            i += 3
            continue
        if (
            (allowed is None and not "\ud800" <= ch <= "\udfff")
            or (allowed is not None and ch in allowed)
            or (iri and ord(ch) > 0x7F and _printable(ch))
        ):
            out += ch.encode("utf-8")
            i += 1
            continue
        raise _fail(
            "ADDRESS_BAD_CHAR",
            f"character {ch!r} is not allowed raw in the {what}",
            text,
            i,
            "pass valid Unicode text (a lone surrogate has no UTF-8 form)"
            if "\ud800" <= ch <= "\udfff"
            else f"percent-encode it as {_pct(ch)}",
        )
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            "ADDRESS_BAD_PERCENT",
            f"the percent-encoded octets of the {what} are not UTF-8 ({exc.reason})",
            text,
            start,
            "encode non-ASCII characters as their UTF-8 octets",
        ) from None


def _pct(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def _encode(value: str, allowed: frozenset[str], *, iri: bool = False) -> str:
    """Percent-encode every character of ``value`` not in ``allowed`` (RFC 3986 §2.1,
    upper-case hex). With ``iri``, printable non-ASCII characters stay raw (RFC 3987)."""
    if all(ch in allowed for ch in value):
        return value
    return "".join(
        ch if ch in allowed or (iri and ord(ch) > 0x7F and _printable(ch)) else _pct(ch)
        for ch in value
    )


def _printable(ch: str) -> bool:
    """Not a control, format, separator, surrogate, private-use or unassigned code point."""
    return unicodedata.category(ch)[0] not in "CZ"


# --- XEP-0106 escaping -----------------------------------------------------------------------


def escape_localpart(text: str) -> str:
    """XEP-0106 §3.2 / §4.2 escaping of a JID localpart.

    Each of the ten characters of the table becomes ``\\hh``. A backslash is escaped (``\\5c``)
    only where it starts one of the ten escape sequences (§4.2 step 3, §4.4: "partial escape
    sequences and escape sequences corresponding to characters not on the list ... MUST be
    ignored", so ``foo\\bar`` stays as it is). A space may not begin or end the result (§3.2,
    §4.1 rule 6): such input raises ``JID_BAD_ESCAPE``.
    """
    if text[:1] == " " or text[-1:] == " ":
        raise ParseError(
            "JID_BAD_ESCAPE",
            "a JID localpart cannot begin or end with a space (XEP-0106 forbids a leading or "
            "trailing \\20)",
            hint="remove the leading/trailing spaces from the user part",
        )
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\5c" if text[i + 1 : i + 3] in _JID_CODES else ch)
        else:
            out.append(_JID_ESCAPES.get(ch, ch))
    return "".join(out)


def unescape_localpart(text: str) -> str:
    """XEP-0106 §3.3 unescaping: exactly the ten lower-case ``\\hh`` sequences are replaced;
    every other backslash sequence (``\\2plus``, ``foo\\bar``, ``foob\\41r``, upper-case hex
    ``\\2F``) is left alone (§4.1 rule 3, §4.4)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        code = text[i + 1 : i + 3]
        if text[i] == "\\" and code in _JID_CODES:
            out.append(_JID_CODES[code])
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def is_canonical_localpart(text: str) -> bool:
    """True when ``escape_localpart(unescape_localpart(text)) == text``: the escaped JID
    localpart names exactly one unescaped user. False for e.g. ``foo\\5cbar`` (it unescapes to
    ``foo\\bar``, which is also a JID of its own; XEP-0106 §7) and ``\\20x``."""
    try:
        return escape_localpart(unescape_localpart(text)) == text
    except ParseError:
        return False


# --- validation of parts ---------------------------------------------------------------------


def _check_uri_host(host: str, text: str | None = None, index: int | None = None) -> None:
    """RFC 3261 §25.1 host = hostname / IPv4address / IPv6reference (also used for im:/pres:,
    whose RFC 2822 domains are host names in practice)."""
    if not host:
        raise _fail("ADDRESS_NO_HOST", "the address has no host", text, index, "add '@host'")
    if host[0] == "[":
        _check_ipv6(host, text, index)
        return
    if _IPV4.fullmatch(host):
        if all(int(part) <= 255 for part in host.split(".")):
            return
        raise _fail(
            "ADDRESS_BAD_HOST", f"{host!r} is not an IPv4 address", text, index, "use 0-255"
        )
    if (
        len(host) > 255
        or not _HOSTNAME.fullmatch(host)
        or any(len(label) > 63 for label in host.split("."))
    ):
        hint = (
            "write an internationalised domain as its IDNA A-labels (xn--...)"
            if any(ord(c) > 0x7F for c in host)
            else "a host name is letters, digits and '-' in dot-separated labels, the last "
            "starting with a letter"
        )
        raise _fail("ADDRESS_BAD_HOST", f"{host!r} is not a valid host", text, index, hint)


def _check_ipv6(host: str, text: str | None, index: int | None) -> None:
    inner = host[1:-1] if host.endswith("]") else None
    ok = inner is not None and "%" not in inner
    if ok:
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            ok = False
    if not ok:
        raise _fail(
            "ADDRESS_BAD_HOST",
            f"{host!r} is not a bracketed IPv6 address",
            text,
            index,
            "write IPv6 hosts as [2001:db8::1] (zone ids are not supported)",
        )


def _check_jid_domain(host: str, text: str | None = None, index: int | None = None) -> None:
    """RFC 7622 §3.2: IP-literal / IPv4address / ifqdn (IDNA2008 U-labels or NR-LDH labels)."""
    if not host:
        raise _fail("JID_BAD_DOMAIN", "the JID has no domainpart", text, index, "add a domain")
    if len(host.encode("utf-8", "surrogatepass")) > JID_PART_MAX:
        raise _fail(
            "JID_TOO_LONG",
            "the JID domainpart is longer than 1023 octets",
            text,
            index,
            "RFC 7622 §3.2.1 limits each JID part to 1023 octets",
        )
    if host[0] == "[":
        _check_ipv6(host, text, index)
        return
    if host.endswith("."):
        raise _fail(
            "JID_BAD_DOMAIN",
            f"JID domainpart {host!r} ends with a dot",
            text,
            index,
            "RFC 7622 §3.2 strips the final dot: drop it",
        )
    for label in host.split("."):
        if (
            not label
            or len(label) > 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c == "-" or c.isalnum() for c in label)
        ):
            raise _fail(
                "JID_BAD_DOMAIN",
                f"JID domainpart {host!r} has an invalid label {label!r}",
                text,
                index,
                "labels are letters, digits and inner '-', separated by single dots",
            )


def _check_jid_local(local: str, text: str | None = None, index: int | None = None) -> None:
    """RFC 7622 §3.3 (escaped form): 1-1023 octets, none of ``"&'/:<>@``, no spaces or
    controls. PRECIS IdentifierClass is approximated: ASCII printable, letters, marks, digits."""
    if not local:
        raise _fail(
            "JID_BAD_LOCALPART",
            "the JID localpart is empty",
            text,
            index,
            "remove the '@' or add a user",
        )
    if len(local.encode("utf-8", "surrogatepass")) > JID_PART_MAX:
        raise _fail(
            "JID_TOO_LONG",
            "the JID localpart is longer than 1023 octets",
            text,
            index,
            "RFC 7622 §3.3.1 limits each JID part to 1023 octets",
        )
    for i, ch in enumerate(local):
        if ch in _JID_LOCAL_FORBIDDEN or not (
            "!" <= ch <= "~" or (ord(ch) > 0x7F and unicodedata.category(ch)[0] in "LMN")
        ):
            where = None if index is None else index + i
            raise _fail(
                "JID_BAD_LOCALPART",
                f"character {ch!r} is not allowed in a JID localpart",
                text,
                where,
                f"escape it per XEP-0106 ({_JID_ESCAPES[ch]})"
                if ch in _JID_ESCAPES
                else "JID localparts contain no spaces, controls or symbols outside ASCII",
            )


def _check_resource(resource: str, text: str | None = None, index: int | None = None) -> None:
    """RFC 7622 §3.4: 1-1023 octets of OpaqueString (no controls or unassigned code points)."""
    if not resource:
        raise _fail(
            "JID_BAD_RESOURCE",
            "the JID resourcepart is empty",
            text,
            index,
            "remove the trailing '/' or name a resource",
        )
    if len(resource.encode("utf-8", "surrogatepass")) > JID_PART_MAX:
        raise _fail(
            "JID_TOO_LONG",
            "the JID resourcepart is longer than 1023 octets",
            text,
            index,
            "RFC 7622 §3.4.1 limits each JID part to 1023 octets",
        )
    for ch in resource:
        if unicodedata.category(ch) in ("Cc", "Cs", "Cn", "Zl", "Zp"):
            raise _fail(
                "JID_BAD_RESOURCE",
                f"character {ch!r} is not allowed in a JID resourcepart",
                text,
                index,
                "a resource contains no control characters",
            )


def _check_text(value: str, what: str, code: str) -> None:
    if not value:
        raise ParseError(code, f"the {what} is empty", hint=f"omit the empty {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError(
            code,
            f"the {what} contains a lone surrogate",
            hint="pass valid Unicode text",
        ) from None


# --- IDNA at the XMPP boundary (RFC 7622 §3.2: U-labels; URIs: A-labels) ----------------------


def _host_to_ascii(host: str) -> str:
    if host.isascii():
        return host
    try:
        return ".".join(idna.ToASCII(label).decode("ascii") for label in host.split("."))
    except UnicodeError as exc:
        raise ParseError(
            "ADDRESS_BAD_HOST",
            f"domain {host!r} cannot be written in IDNA A-labels ({exc})",
            hint="use an ASCII host name for this address",
        ) from None


def _host_to_unicode(host: str) -> str:
    if "xn--" not in host.lower():
        return host
    return ".".join(_label_to_unicode(label) for label in host.split("."))


def _label_to_unicode(label: str) -> str:
    if not label.lower().startswith("xn--"):
        return label
    try:
        return idna.ToUnicode(label)
    except UnicodeError:
        return label  # not valid punycode: keep the A-label as it is


# --- the value type --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Address:
    """A parsed address. ``user`` is the decoded local part (None for a bare domain; for
    ``xmpp`` the XEP-0106-escaped JID localpart), ``resource`` an XMPP resource, ``params``
    SIP URI parameters in order (name, value|None) — for ``xmpp`` the RFC 5122 query, the query
    type first with value None — and ``headers`` SIP/im:/pres: URI headers (name, value).
    ``Address.parse(str(a)) == a``."""

    scheme: Scheme
    user: str | None
    host: str
    port: int | None = None
    resource: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    # equality: scheme and host compare case-insensitively (RFC 3986 §6.2.2.1), the rest exactly
    def _key(self) -> tuple[object, ...]:
        return (
            self.scheme,
            self.user,
            self.host.casefold(),
            self.port,
            self.resource,
            self.params,
            self.headers,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse a URI (``im:``, ``pres:``, ``sip:``, ``sips:``, ``xmpp:``); a bare or full JID
        without scheme is read as ``xmpp:``. ValueError (ParseError) says why."""
        if not isinstance(text, str):
            raise TypeError(f"Address.parse() takes str, not {type(text).__name__}")
        if not text:
            raise ParseError("ADDRESS_EMPTY", "the address is empty", hint="give a URI or a JID")
        match = _SCHEME.match(text)
        if match is None:
            if text[0] == "<" and text[-1:] == ">":
                raise _fail(
                    "ADDRESS_BAD_SCHEME",
                    "the address is wrapped in angle brackets",
                    text,
                    0,
                    "pass the URI without '<' and '>' (and without a display name)",
                )
            return cls.from_jid(text)
        scheme = match.group(1).lower()
        rest = match.end()
        if scheme in ("sip", "sips"):
            return _parse_sip(text, scheme, rest)
        if scheme in ("im", "pres"):
            return _parse_im(text, scheme, rest)
        if scheme == "xmpp":
            return _parse_xmpp(text, rest)
        raise _fail(
            "ADDRESS_BAD_SCHEME",
            f"unsupported URI scheme {match.group(1)!r}",
            text,
            0,
            "cpimgw addresses are im:, pres:, sip:, sips: or xmpp: URIs, or bare/full JIDs",
        )

    @classmethod
    def from_jid(cls, text: str) -> Address:
        """Read a JID (RFC 7622 §3.1: resource first, then localpart, then domain) as an
        ``xmpp`` address. The localpart is kept escaped, as it is on the wire."""
        if not text:
            raise ParseError("ADDRESS_EMPTY", "the JID is empty", hint="give local@domain")
        slash = text.find("/")
        resource = text[slash + 1 :] if slash >= 0 else None
        head = text[:slash] if slash >= 0 else text
        at = head.find("@")
        local = head[:at] if at >= 0 else None
        domain = head[at + 1 :] if at >= 0 else head
        domain_at = at + 1
        if domain.endswith(".") and len(domain) > 1:
            domain = domain[:-1]  # RFC 7622 §3.2: a final dot is stripped
        if local is not None:
            _check_jid_local(local, text, 0)
        _check_jid_domain(domain, text, domain_at)
        if resource is not None:
            _check_resource(resource, text, slash + 1)
        return cls("xmpp", local, domain, resource=resource)

    @classmethod
    def from_gateway(cls, text: str) -> Address:
        """Read a gateway-wide address (docs/addresses.md "XMPP users seen from the other
        adapters"), as every adapter receives it in an envelope.

        ``xmpp:`` addresses name a JID as the XMPP server stamped it (:func:`gateway_xmpp`
        writes them): the localpart stays XEP-0106-escaped and the resource may hold a space
        (``xmpp:d\\27artagnan@xmpp.example.com/my phone``), which an RFC 5122 IRI would
        percent-encode; only ``%``, ``?`` and ``#`` are percent-encoded, because RFC 5122 §2.2
        reads them as an escape, a query and a fragment. So the JID is read from the text
        after ``xmpp:`` with its parts percent-decoded (:func:`gateway_jid`), and an IRI in
        canonical spelling (``xmpp:d%5C27artagnan@...``) reads as the same JID. An address
        with an RFC 5122 query (``xmpp:romeo@example.net?message``) is read as the URI it is.
        Every other scheme is parsed by :meth:`parse`. ``Address.from_gateway(a.to_gateway())
        == a`` for every address."""
        if text[:5].lower() != "xmpp:" or "?" in text:
            return cls.parse(text)
        jid = gateway_jid(text)
        try:
            return cls.from_jid(jid)
        except ParseError as exc:
            if exc.offset is not None:  # offsets point into the text given, when they can
                exc.offset = exc.offset + 5 if jid == text[5:] else None
            raise

    def __str__(self) -> str:
        if self.scheme in ("sip", "sips"):
            out = [self.scheme, ":"]
            if self.user is not None:
                out += [_encode(self.user, _SIP_USER), "@"]
            out.append(self.host)
            if self.port is not None:
                out.append(f":{self.port}")
            for name, value in self.params:
                out += [";", _encode(name, _SIP_PARAM)]
                if value is not None:
                    out += ["=", _encode(value, _SIP_PARAM)]
            out += _headers_text(self.headers, _SIP_HNV)
            return "".join(out)
        if self.scheme in ("im", "pres"):
            out = [self.scheme, ":"]
            if self.user is not None:
                out += [_encode(self.user, _IM_USER_OUT), "@"]
            out.append(self.host)
            out += _headers_text(self.headers, _IM_HEADER_OUT)
            return "".join(out)
        out = ["xmpp:"]
        if self.user is not None:
            out += [_encode(self.user, _XMPP_NODE, iri=True), "@"]
        out.append(self.host if self.host[0] == "[" else _encode(self.host, _XMPP_HOST, iri=True))
        if self.resource is not None:
            out += ["/", _encode(self.resource, _XMPP_RES, iri=True)]
        if self.params:
            out += ["?", _encode(self.params[0][0], _URI_UNRESERVED, iri=True)]
            for key, value in self.params[1:]:
                out += [";", _encode(key, _URI_UNRESERVED, iri=True), "="]
                out.append(_encode(value or "", _URI_UNRESERVED, iri=True))
        return "".join(out)

    # --- views and conversions -------------------------------------------------------------

    @property
    def bare(self) -> Address:
        """Without resource, port, params and headers."""
        if not (self.resource or self.port is not None or self.params or self.headers):
            return self
        return Address(self.scheme, self.user, self.host)

    @property
    def domain(self) -> str:
        """The host as a routing key: lower case, without a final dot (RFC 4343, RFC 7622
        §3.2). IPv6 hosts keep their brackets."""
        return self.host.rstrip(".").casefold()

    @property
    def gruu(self) -> str | None:
        """The device part: the XMPP resource, or a SIP URI's ``gr`` parameter (RFC 7247 §6.3)."""
        if self.scheme == "xmpp":
            return self.resource
        for name, value in self.params:
            if name == "gr":
                return value
        return None

    def with_scheme(self, scheme: Scheme) -> Address:
        """The same user@host under another scheme (RFC 7247 §6; XEP-0106 for xmpp).

        Identity only: port, URI parameters, headers and an XMPP query are locators, not part
        of the address, and are dropped. The device part moves between an XMPP resource and a
        SIP ``gr`` parameter (RFC 7247 §6.3); ``im:``/``pres:`` have no device part, so a full
        JID or GRUU raises ``ADDRESS_NOT_REPRESENTABLE`` (take ``.bare`` first). Into XMPP the
        user is escaped (XEP-0106) and IDNA A-labels become U-labels (RFC 7622 §3.2); out of
        XMPP the localpart is unescaped (refused with ``JID_AMBIGUOUS_ESCAPE`` when that is
        not reversible) and the domain is written in A-labels. The target scheme's
        ``str()`` then percent-encodes only what it reserves (RFC 7247 §6.4-6.5).
        """
        if scheme not in SCHEMES:
            raise ParseError(
                "ADDRESS_BAD_SCHEME",
                f"unsupported URI scheme {scheme!r}",
                hint="use one of: " + ", ".join(SCHEMES),
            )
        if scheme == self.scheme:
            return self
        device = self.gruu
        if device is not None and scheme in ("im", "pres"):
            raise ParseError(
                "ADDRESS_NOT_REPRESENTABLE",
                f"{scheme}: URIs name a user, not a device: {self} carries {device!r}",
                hint="convert the bare address (address.bare.with_scheme(...))",
            )
        user = self.user
        host = self.host
        if self.scheme == "xmpp":
            if user is not None:
                if not is_canonical_localpart(user):
                    raise ParseError(
                        "JID_AMBIGUOUS_ESCAPE",
                        f"JID localpart {user!r} does not unescape reversibly "
                        "(XEP-0106 §7: it would collide with another JID)",
                        hint="this JID cannot be mapped to a URI without ambiguity",
                    )
                user = unescape_localpart(user)
            host = _host_to_ascii(host)
        if scheme == "xmpp":
            if user is not None:
                user = escape_localpart(user)
                _check_jid_local(user)
            host = _host_to_unicode(host).rstrip(".") or host
            return Address("xmpp", user, host, resource=device)
        params: tuple[tuple[str, str | None], ...] = ()
        if device is not None:
            params = (("gr", device),)
        return Address(scheme, user, host, params=params)

    @property
    def jid(self) -> str:
        """``local@domain[/resource]`` with XEP-0106 escaping of the local part."""
        a = self.with_scheme("xmpp")
        text = a.host if a.user is None else f"{a.user}@{a.host}"
        return text if a.resource is None else f"{text}/{a.resource}"

    @property
    def bare_jid(self) -> str:
        """The bare JID (``local@domain``)."""
        return self.bare.jid

    @property
    def sip_uri(self) -> str:
        """The ``sip:`` URI of this user (``gr`` parameter for a device), RFC 7247 §6.4."""
        return str(self.with_scheme("sip"))

    def to_gateway(self) -> str:
        """The gateway-wide text of this address, read back by :meth:`from_gateway`: an
        ``xmpp:`` address without query is ``xmpp:<JID>`` (:func:`gateway_xmpp`), every other
        address its canonical ``str()``."""
        if self.scheme == "xmpp" and not self.params:
            return gateway_xmpp(self.jid)
        return str(self)

    def matches(self, pattern: str) -> bool:
        """Domain glob used by routing: ``*`` (any domain), ``example.com`` (that domain), or
        ``*.example.com`` (any subdomain of example.com, not example.com itself). Case and a
        final dot are ignored. A malformed pattern raises ``ADDRESS_BAD_PATTERN``."""
        return domain_matches(self.domain, pattern)


def domain_matches(domain: str, pattern: str) -> bool:
    """Match a routing ``domain`` (see :attr:`Address.domain`) against a domain glob."""
    pat = pattern.rstrip(".").casefold()
    if pat == "*":
        return True
    wildcard = pat.startswith("*.")
    body = pat[2:] if wildcard else pat
    if not body or any(c in body for c in "*@/?;") or any(c.isspace() for c in body):
        raise ParseError(
            "ADDRESS_BAD_PATTERN",
            f"{pattern!r} is not a domain pattern",
            hint="use '*', 'example.com' or '*.example.com'",
        )
    domain = domain.rstrip(".").casefold()
    if wildcard:
        return domain.endswith("." + body)
    return domain == body


#: The characters of a JID a gateway-wide ``xmpp:`` address percent-encodes: RFC 5122 §2.2
#: reads them as a percent-escape, the start of a query and the start of a fragment.
_GATEWAY_XMPP = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})


def gateway_xmpp(jid: str) -> str:
    """The gateway-wide address of a JID: ``xmpp:`` and the JID as the XMPP server stamped
    it, with only ``%``, ``?`` and ``#`` percent-encoded (``who?@x/my phone`` ->
    ``xmpp:who%3F@x/my phone``), so that it is read back unambiguously (RFC 5122 §2.2: ``?``
    starts a query, ``#`` a fragment). Text only: the JID is not checked here.
    :func:`gateway_jid` is the inverse."""
    if "%" in jid or "?" in jid or "#" in jid:
        return "xmpp:" + jid.translate(_GATEWAY_XMPP)
    return "xmpp:" + jid


def gateway_jid(text: str) -> str:
    """The JID text of a gateway-wide ``xmpp:`` address (:func:`gateway_xmpp`, or an RFC 5122
    IRI): split as RFC 7622 §3.1 splits a JID, each part percent-decoded (RFC 3986 §2.1), an
    RFC 5122 query dropped (a locator, not part of the address). The parts are not checked
    as JID parts (the caller's JID reader does that), except that a decoded ``@`` or ``/``
    outside the resource is refused, since it would split the JID differently. Raises
    ParseError ``ADDRESS_BAD_SCHEME`` (not ``xmpp:``), ``ADDRESS_UNSUPPORTED`` (authority
    or fragment, as :meth:`Address.parse`), ``ADDRESS_BAD_PERCENT``, ``JID_BAD_LOCALPART``,
    ``JID_BAD_DOMAIN``."""
    if text[:5].lower() != "xmpp:":
        raise _fail(
            "ADDRESS_BAD_SCHEME",
            f"{text[:80]!r} is not an xmpp: address",
            text,
            0,
            "write xmpp:local@domain[/resource]",
        )
    _check_xmpp_target(text, 5, fragment_hint="percent-encode '#' in a JID as %23")
    query = text.find("?")
    end = query if query >= 0 else len(text)
    if "%" not in text[5:end]:
        return text[5:end]
    slash = text.find("/", 5, end)
    head_end = slash if slash >= 0 else end
    at = text.find("@", 5, head_end)
    parts = []
    if at >= 0:
        local = _decode(text, 5, at, None, "JID localpart", iri=True)
        if "@" in local or "/" in local:
            raise _fail(
                "JID_BAD_LOCALPART",
                f"the JID localpart {local[:80]!r} holds '@' or '/' once percent-decoded",
                text,
                5,
                "escape '@' as \\40 and '/' as \\2f (XEP-0106)",
            )
        parts += [local, "@"]
    domain = _decode(text, at + 1 if at >= 0 else 5, head_end, None, "JID domain", iri=True)
    if "@" in domain or "/" in domain:
        raise _fail(
            "JID_BAD_DOMAIN",
            f"the JID domainpart {domain[:80]!r} holds '@' or '/' once percent-decoded",
            text,
            at + 1 if at >= 0 else 5,
            "a JID domain is letters, digits, '-' and dots",
        )
    parts.append(domain)
    if slash >= 0:
        parts += ["/", _decode(text, slash + 1, end, None, "JID resource", iri=True)]
    return "".join(parts)


def _headers_text(headers: tuple[tuple[str, str], ...], allowed: frozenset[str]) -> list[str]:
    out: list[str] = []
    for i, (name, value) in enumerate(headers):
        out += ["?" if i == 0 else "&", _encode(name, allowed), "=", _encode(value, allowed)]
    return out


def _validate(a: Address) -> None:
    """The invariants of a constructed address, so that ``str()`` always parses back."""
    if a.scheme not in SCHEMES:
        raise ParseError(
            "ADDRESS_BAD_SCHEME",
            f"unsupported URI scheme {a.scheme!r}",
            hint="use one of: " + ", ".join(SCHEMES),
        )
    if a.scheme == "xmpp":
        if a.user is not None:
            _check_jid_local(a.user)
        _check_jid_domain(a.host)
        if a.resource is not None:
            _check_resource(a.resource)
        if a.port is not None or a.headers:
            raise ParseError(
                "ADDRESS_NOT_REPRESENTABLE",
                "xmpp: addresses have no port and no headers",
                hint="drop the port and headers",
            )
        if a.params:
            if a.params[0][1] is not None or any(v is None for _, v in a.params[1:]):
                raise ParseError(
                    "ADDRESS_BAD_PARAM",
                    "an xmpp: query is (querytype, None) followed by (key, value) pairs",
                    hint="see RFC 5122 §2.2 querycomp",
                )
            for k, _ in a.params[1:]:
                _check_text(k, "query key", "ADDRESS_BAD_PARAM")
        return
    if a.user is not None:
        _check_text(a.user, "user part", "ADDRESS_BAD_USER")
    _check_uri_host(a.host)
    if a.resource is not None:
        raise ParseError(
            "ADDRESS_NOT_REPRESENTABLE",
            f"{a.scheme}: URIs have no resource",
            hint="carry a device as a SIP 'gr' parameter (RFC 7247 §6.3) or use xmpp:",
        )
    for hname, hvalue in a.headers:
        _check_text(hname, "header name", "ADDRESS_BAD_HEADER")
        if hvalue:
            _check_text(hvalue, "header value", "ADDRESS_BAD_HEADER")
    if a.scheme in ("im", "pres"):
        if a.port is not None or a.params:
            raise ParseError(
                "ADDRESS_NOT_REPRESENTABLE",
                f"{a.scheme}: URIs have no port and no parameters (RFC 3860 §3.2)",
                hint="drop the port and parameters",
            )
        return
    if a.port is not None and not 0 <= a.port <= 65535:
        raise ParseError("ADDRESS_BAD_PORT", f"port {a.port} is out of range", hint="use 0-65535")
    for name, value in a.params:
        _check_text(name, "parameter name", "ADDRESS_BAD_PARAM")
        if value is not None:
            _check_text(value, "parameter value", "ADDRESS_BAD_PARAM")


# --- scheme parsers --------------------------------------------------------------------------


def _split_host_port(text: str, start: int, end: int, *, port_ok: bool) -> tuple[str, int | None]:
    """``host [":" port]`` in ``text[start:end]``; IPv6 references keep their brackets."""
    segment = text[start:end]
    if segment.startswith("["):
        close = segment.find("]")
        if close < 0:
            raise _fail(
                "ADDRESS_BAD_HOST", "unterminated IPv6 reference", text, start, "close it with ']'"
            )
        host, tail, tail_at = segment[: close + 1], segment[close + 1 :], start + close + 1
    else:
        colon = segment.find(":")
        host, tail = (segment, "") if colon < 0 else (segment[:colon], segment[colon:])
        tail_at = start + (len(segment) if colon < 0 else colon)
    port: int | None = None
    if tail:
        digits = tail[1:]
        if tail[0] != ":" or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
            raise _fail(
                "ADDRESS_BAD_PORT",
                f"{tail!r} after the host is not ':port'",
                text,
                tail_at,
                "a port is ':' and 1-5 digits",
            )
        if not port_ok:
            raise _fail(
                "ADDRESS_BAD_PORT",
                "this scheme has no port",
                text,
                tail_at,
                "remove the ':port' (im:, pres: and xmpp: addresses carry no port)",
            )
        port = int(digits)
        if port > 65535:
            raise _fail("ADDRESS_BAD_PORT", f"port {port} > 65535", text, tail_at, "use 0-65535")
    return host, port


def _parse_sip(text: str, scheme: str, start: int) -> Address:
    """RFC 3261 §19.1.1 / §25.1: ``sip:[user[:password]@]host[:port][;params][?headers]``."""
    at = text.find("@", start)
    user: str | None = None
    host_start = start
    if at >= 0:
        colon = text.find(":", start, at)
        if colon >= 0:
            raise _fail(
                "ADDRESS_PASSWORD",
                "SIP URI carries a password",
                text,
                colon,
                "remove ':password' (RFC 3261 §19.1.1: NOT RECOMMENDED; cpimgw never relays one)",
            )
        if at == start:
            raise _fail(
                "ADDRESS_BAD_USER", "empty user part before '@'", text, at, "remove the '@'"
            )
        user = _decode(text, start, at, _SIP_USER, "SIP user part", iri=False)
        host_start = at + 1
    end = len(text)
    q = text.find("?", host_start)
    header_start = q if q >= 0 else end
    semi = text.find(";", host_start, header_start)
    hostport_end = semi if semi >= 0 else header_start
    if hostport_end == host_start:
        raise _fail("ADDRESS_NO_HOST", "the SIP URI has no host", text, host_start, "add a host")
    host, port = _split_host_port(text, host_start, hostport_end, port_ok=True)
    _check_uri_host(host, text, host_start)
    params: list[tuple[str, str | None]] = []
    if semi >= 0:
        pos = semi
        while pos < header_start:
            nxt = text.find(";", pos + 1, header_start)
            nxt = header_start if nxt < 0 else nxt
            eq = text.find("=", pos + 1, nxt)
            name_end = eq if eq >= 0 else nxt
            if name_end == pos + 1 or (eq >= 0 and eq + 1 == nxt):
                raise _fail(
                    "ADDRESS_BAD_PARAM",
                    "empty URI parameter name or value",
                    text,
                    pos,
                    "write ';name' or ';name=value' (RFC 3261 §19.1.1)",
                )
            name = _decode(text, pos + 1, name_end, _SIP_PARAM, "URI parameter", iri=False)
            value = None
            if eq >= 0:
                value = _decode(text, eq + 1, nxt, _SIP_PARAM, "URI parameter", iri=False)
            params.append((name, value))
            pos = nxt
    headers = _parse_headers(text, header_start, _SIP_HNV, "SIP URI header")
    return Address(scheme, user, host, port, None, tuple(params), headers)  # type: ignore[arg-type]


def _parse_headers(
    text: str, start: int, allowed: frozenset[str], what: str
) -> tuple[tuple[str, str], ...]:
    """``"?" hname "=" hvalue *( "&" hname "=" hvalue )`` starting at ``text[start]``."""
    end = len(text)
    if start >= end:
        return ()
    headers: list[tuple[str, str]] = []
    pos = start
    while pos < end:
        nxt = text.find("&", pos + 1)
        nxt = end if nxt < 0 else nxt
        eq = text.find("=", pos + 1, nxt)
        if eq <= pos + 1:
            raise _fail(
                "ADDRESS_BAD_HEADER",
                f"{what} is not 'name=value'",
                text,
                pos + 1,
                "write headers as ?name=value&name=value",
            )
        name = _decode(text, pos + 1, eq, allowed, what, iri=False)
        value = _decode(text, eq + 1, nxt, allowed, what, iri=False)
        headers.append((name, value))
        pos = nxt
    return tuple(headers)


def _parse_im(text: str, scheme: str, start: int) -> Address:
    """RFC 3860 §3.2 / RFC 3859 §3.2: ``im:[local@]domain[?hname=hvalue&...]`` where the
    local part is an RFC 2822 local-part, percent-encoded where the URI needs it."""
    if "#" in text:
        raise _fail(
            "ADDRESS_BAD_CHAR",
            "fragment in an im:/pres: URI",
            text,
            text.index("#"),
            "percent-encode '#' as %23",
        )
    q = text.find("?", start)
    end = q if q >= 0 else len(text)
    at = text.find("@", start, end)
    user: str | None = None
    host_start = start
    if at >= 0:
        if at == start:
            raise _fail(
                "ADDRESS_BAD_USER", "empty user part before '@'", text, at, "remove the '@'"
            )
        user = _decode(text, start, at, _PCHAR_NO_AT, f"{scheme}: user part", iri=True)
        host_start = at + 1
    if host_start == end:
        raise _fail(
            "ADDRESS_NO_HOST", f"the {scheme}: URI has no domain", text, host_start, "add '@domain'"
        )
    host, _ = _split_host_port(text, host_start, end, port_ok=False)
    _check_uri_host(host, text, host_start)
    headers = _parse_headers(text, end, _PCHAR_NO_AT | frozenset("@/?"), f"{scheme}: header")
    return Address(scheme, user, host, headers=headers)  # type: ignore[arg-type]


def _check_xmpp_target(text: str, start: int, *, fragment_hint: str) -> None:
    """RFC 5122 §2.2: an ``xmpp:`` URI (scheme ending before ``start``) names only its
    target: an authority (``xmpp://account@host/...``, the account to act as) or a fragment
    is refused with ParseError ``ADDRESS_UNSUPPORTED``; ``fragment_hint`` is the fix the
    fragment's error gives."""
    if text.startswith("//", start):
        raise _fail(
            "ADDRESS_UNSUPPORTED",
            "xmpp: URI with an authority component (the account to act as)",
            text,
            start,
            "give only the target: xmpp:node@host/resource",
        )
    if "#" in text:
        raise _fail(
            "ADDRESS_UNSUPPORTED", "xmpp: URI with a fragment", text, text.index("#"), fragment_hint
        )


def _parse_xmpp(text: str, start: int) -> Address:
    """RFC 5122 §2.2: ``xmpp:[node@]host[/resource][?querytype[;key=value]*]``."""
    _check_xmpp_target(
        text, start, fragment_hint="remove the '#fragment' (or percent-encode '#' as %23)"
    )
    q = text.find("?", start)
    end = q if q >= 0 else len(text)
    slash = text.find("/", start, end)
    path_end = slash if slash >= 0 else end
    at = text.find("@", start, path_end)
    user: str | None = None
    host_start = start
    if at >= 0:
        user = _decode(text, start, at, _XMPP_NODE, "xmpp: node", iri=True)
        if user == text[start:at]:
            _check_jid_local(user, text, start)  # offsets point at the faulty character
        else:
            try:
                _check_jid_local(user)
            except ParseError as err:
                err.offset = _offset(text, start)
                raise
        host_start = at + 1
    host = _decode(
        text, host_start, path_end, _XMPP_HOST | frozenset("[]:"), "xmpp: host", iri=True
    )
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    if ":" in host and not host.startswith("["):
        raise _fail(
            "ADDRESS_BAD_PORT",
            "xmpp: URIs have no port",
            text,
            host_start + host.index(":"),
            "remove the ':port'",
        )
    _check_jid_domain(host, text, host_start)
    resource: str | None = None
    if slash >= 0:
        resource = _decode(
            text, slash + 1, end, _XMPP_RES | frozenset("/@"), "xmpp: resource", iri=True
        )
        _check_resource(resource, text, slash + 1)
    params: list[tuple[str, str | None]] = []
    if q >= 0:
        parts = text[q + 1 :].split(";")
        pos = q + 1
        params.append(
            (
                _decode(text, pos, pos + len(parts[0]), _URI_UNRESERVED, "xmpp: query", iri=True),
                None,
            )
        )
        pos += len(parts[0]) + 1
        for part in parts[1:]:
            eq = part.find("=")
            if eq <= 0:
                raise _fail(
                    "ADDRESS_BAD_PARAM",
                    "xmpp: query pair is not 'key=value'",
                    text,
                    pos,
                    "write ?querytype;key=value (RFC 5122 §2.2)",
                )
            key = _decode(text, pos, pos + eq, _URI_UNRESERVED, "xmpp: query", iri=True)
            value = _decode(
                text, pos + eq + 1, pos + len(part), _URI_UNRESERVED, "xmpp: query", iri=True
            )
            params.append((key, value))
            pos += len(part) + 1
    return Address("xmpp", user, host, None, resource, tuple(params))
