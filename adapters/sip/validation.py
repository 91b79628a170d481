"""What a UAS checks before it acts on a request, and a UAC before it trusts a response.

RFC 3261 §8.2 (method, headers, URI scheme, Require, content) in the order §8.2 gives,
with the version check of §8.1.3.2/§21.5.7, the Max-Forwards rule of §16.3 step 3 (the
gateway relays into another network, so it answers 483 at zero, RFC 3860 §3.4.2), and
the RFC 4475 semantics: overlarge scalars (§3.1.2.4-5), method mismatches (§3.1.2.16-17),
unknown schemes (§3.3.2-3), doubled single-value fields (§3.3.8-9). Pure: a refusal is a
value the shell turns into a response.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.sip import header as hdr
from adapters.sip.codec import Request, Response
from canonical.errors import ParseError

#: Methods RFC 3261 and its extensions define (a method not in here gets 501, §8.2.1).
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "REGISTER",
        "OPTIONS",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)

#: Header fields that may occur once only (RFC 3261 §20, table 2/3; RFC 4475 §3.3.8).
SINGLE_VALUED = ("To", "From", "CSeq", "Call-ID", "Max-Forwards", "Content-Length", "Content-Type")
REQUIRED = ("To", "From", "CSeq", "Call-ID", "Via")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the UAS answers with ``status`` without handing it to the application."""

    status: int
    reason: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


def _bad(detail: str) -> Refusal:
    return Refusal(400, "Bad Request", detail)


def check_request(
    request: Request,
    *,
    methods: frozenset[str],
    extensions: frozenset[str] = frozenset(),
    schemes: frozenset[str] = frozenset({"sip", "sips"}),
) -> Refusal | None:
    """None when ``request`` may go to the application, else the response to send.

    ``methods`` are those the application handles (405 with Allow for other known
    methods, 501 for unknown ones); ``extensions`` are the option tags it supports
    (420 otherwise).
    """
    if request.version.upper() != "SIP/2.0":
        return Refusal(505, "Version Not Supported", f"{request.version} is not SIP/2.0")
    count = request.count
    for name in REQUIRED:
        if not count(name):
            return Refusal(400, f"Missing {name}", f"the request has no {name} header")
    for name in SINGLE_VALUED:
        if count(name) > 1:
            return _bad(f"{name} occurs more than once (RFC 4475 §3.3.8)")
    name = "Via"
    try:
        request.vias  # noqa: B018 - every Via element parses
        name = "From"
        request.from_  # noqa: B018 - a missing From tag is accepted (RFC 2543 peers)
        name = "To"
        request.to  # noqa: B018
        name = "CSeq"
        request.cseq  # noqa: B018
        name = "Max-Forwards"
        request.max_forwards  # noqa: B018
        name = "Content-Type"
        request.content_type  # noqa: B018
    except ParseError as exc:
        return _bad(f"{name} header value: {exc}")
    if not _call_id_ok(request.call_id):
        return _bad("Call-ID is not word[@word] (RFC 3261 §25.1)")
    cseq = request.cseq
    max_forwards = request.max_forwards
    if cseq.method != request.method:
        return _bad(f"CSeq method {cseq.method} does not match the request method {request.method}")
    if max_forwards == 0 and request.method != "OPTIONS":
        return Refusal(483, "Too Many Hops", "Max-Forwards is 0")
    try:
        uri = request.request_uri
    except ParseError as exc:
        return _bad(f"Request-URI: {exc}")
    if uri.scheme not in schemes:
        return Refusal(416, "Unsupported URI Scheme", f"scheme {uri.scheme}: is not served")
    if uri.headers:
        return _bad("a Request-URI cannot carry headers (RFC 3261 §19.1.5, RFC 4475 §3.1.2.10)")
    if request.method not in methods:
        if request.method in KNOWN_METHODS:
            return Refusal(
                405,
                "Method Not Allowed",
                f"{request.method} is not served here",
                (("Allow", ", ".join(sorted(methods))),),
            )
        return Refusal(501, "Not Implemented", f"method {request.method} is unknown")
    unsupported = [tag for tag in request.values("Require") if tag and tag not in extensions]
    if unsupported and request.method not in ("ACK", "CANCEL"):
        return Refusal(
            420,
            "Bad Extension",
            f"unsupported extensions: {', '.join(unsupported)}",
            (("Unsupported", ", ".join(unsupported)),),
        )
    encodings = [e.lower() for e in request.values("Content-Encoding") if e]
    if any(e != "identity" for e in encodings):
        return Refusal(
            415,
            "Unsupported Media Type",
            f"content coding {', '.join(encodings)} is not supported",
            (("Accept-Encoding", "identity"),),
        )
    return None


def _call_id_ok(value: str) -> bool:
    left, at, right = value.partition("@")
    return hdr.is_word(left) and (not at or hdr.is_word(right))


def check_response(response: Response) -> str | None:
    """None when a response is well-formed enough to act on, else why it is dropped.

    A response cannot be refused, only discarded (RFC 4475 §3.1.2.5, §3.1.2.19).
    """
    count = response.count
    for name in ("Via", "From", "To", "CSeq", "Call-ID"):
        if not count(name):
            return f"response has no {name}"
    try:
        response.top_via  # noqa: B018 - needed to match the transaction
        response.cseq  # noqa: B018
        value = response.get("Retry-After")
        if value is not None:
            hdr.parse_retry_after(value)
    except ParseError as exc:
        return str(exc)
    for warning in response.values("Warning"):
        code = warning.split(" ", 1)[0]
        if len(code) != 3 or not code.isdigit():
            return f"Warning code {code!r} is not three digits"
    return None
