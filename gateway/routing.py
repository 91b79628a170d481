"""Routing (pure): which adapter a recipient's domain belongs to, how the transport
address is rewritten on the way, and loop prevention.

RFC 3862 §2.2: a gateway rewrites only *transport* addresses; the CPIM object (its From,
To, every byte) is never touched. The core routes by the recipient's domain, scheme-
agnostic, to one adapter instance (DESIGN.md "Addresses in envelopes"); the same table
says which adapter *owns* a domain, which is what anti-spoofing checks a sender against.

Loop prevention (RFC 3860 §3.4.2): MaxForwards is spent at every hop and an object
arriving with none left is refused; each gateway adds its id to the transport history
(``Envelope.trace``), and an object that already carries ours is a loop; a short-lived
seen-set by payload bytes catches objects that come back with their history lost.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, cast

from canonical.address import Address, Scheme
from canonical.envelope import Envelope, Operation
from canonical.errors import ConfigError, ParseError, Reason, RoutingError

SignaturePolicy = Literal["off", "verify", "require"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL = r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)"
_PATTERN = re.compile(rf"^(?:\*|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])$")


@dataclass(frozen=True, slots=True)
class AddressParts:
    """A transport address split for routing: ``scheme:user@host`` plus the ``rest``
    exactly as written (``:port``, ``/resource``, ``;params``, ``?headers``)."""

    scheme: str
    user: str | None
    host: str
    rest: str

    @property
    def domain(self) -> str:
        """The host in lower case (without brackets' content changes), used for routing."""
        return self.host.lower()

    @property
    def bare(self) -> str:
        """``scheme:user@domain``: the address without resource, port or parameters."""
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.domain}"

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.host}{self.rest}"


@lru_cache(maxsize=65536)
def split_address(address: str) -> AddressParts:
    """Split a URI (``im:``, ``pres:``, ``sip:``, ``sips:``, ``xmpp:``, ...) or a bare JID.

    A text without a scheme is read as a JID (``xmpp:``). For JIDs the user part ends at
    the last ``@`` before the resource (a resource may contain ``@``, RFC 7622 §3.4); for
    ``im:``/``pres:`` the resource starts at the first ``/`` after the first ``@`` (the
    local part of a mailbox may contain ``/``, RFC 3860 §3 / RFC 5322 §3.2.3).
    Raises RoutingError (BAD_REQUEST) for an address without a host.
    """
    text = address.strip()
    match = _SCHEME.match(text)
    if match is not None and "@" not in text[: match.end()]:
        scheme, rest = match.group(1).lower(), text[match.end() :]
    else:
        scheme, rest = "xmpp", text
    if scheme == "xmpp":
        rest = rest.removeprefix("//")  # RFC 5122 §2.2 authority; a SIP user may begin "//"
    if scheme == "xmpp":
        head_end = rest.find("/")  # a JID localpart has no "/" (RFC 7622 §3.3.1)
    elif scheme in ("im", "pres"):
        # a mailbox's local part may hold "/" (RFC 5322 §3.2.3 atext): a resource starts
        # only after the "@" (im:a/b@x is the user a/b; im:a@x/phone has a resource)
        at_sign = rest.find("@")
        head_end = rest.find("/", at_sign + 1) if at_sign >= 0 else rest.find("/")
    else:
        head_end = -1
    head = rest if head_end < 0 else rest[:head_end]
    at = head.rfind("@")
    user = head[:at] if at >= 0 else None
    hostpart = rest[at + 1 :]
    if hostpart.startswith("["):
        close = hostpart.find("]")
        end = close + 1 if close > 0 else len(hostpart)
    else:
        end = len(hostpart)
        for stop in ":;?/>":
            pos = hostpart.find(stop)
            if 0 <= pos < end:
                end = pos
    host = hostpart[:end]
    if not host:
        raise RoutingError(
            f"address {address!r} has no domain",
            reason=Reason.BAD_REQUEST,
            hint="use a URI such as sip:user@example.net or xmpp:user@example.com",
        )
    return AddressParts(scheme=scheme, user=user or None, host=host, rest=hostpart[end:])


@lru_cache(maxsize=65536)
def bare(address: str) -> str:
    """``scheme:user@domain`` of an address (see :class:`AddressParts`)."""
    return split_address(address).bare


def check_pattern(pattern: str) -> str:
    """Validate a domain pattern: ``example.com``, ``*.example.com`` (any subdomain, not the
    domain itself) or ``*`` (everything). Returns it in lower case."""
    lowered = pattern.strip().lower()
    if not _PATTERN.match(lowered):
        raise ConfigError(
            f"{pattern!r} is not a domain pattern",
            hint="use example.com, *.example.com (subdomains) or * (everything)",
        )
    return lowered


def pattern_matches(pattern: str, domain: str) -> bool:
    """Whether a (validated, lower-case) domain pattern matches a lower-case domain."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def _specificity(pattern: str) -> tuple[int, int]:
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*."):
        return (1, len(pattern))
    return (2, len(pattern))


@dataclass(frozen=True, slots=True)
class Route:
    """One line of the routing table.

    - ``pattern``: the recipient domains it catches (see :func:`check_pattern`).
    - ``adapter``: the adapter instance that delivers them (and owns those domains).
    - ``scheme`` / ``domain``: optional rewriting of the transport address on the way.
    - ``signatures``: the signature policy for objects taking this route.
    - ``honours``: CPIM header names (RFC 3862 §3.5 ``Require``) the target honours on
      top of the ones its capabilities imply; ``"*"`` means every name.
    """

    pattern: str
    adapter: str
    scheme: str | None = None
    domain: str | None = None
    signatures: SignaturePolicy = "off"
    honours: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where an envelope goes: the route taken and the rewritten recipient."""

    route: Route
    recipient: str

    @property
    def adapter(self) -> str:
        return self.route.adapter


def rewrite(address: str, *, scheme: str | None, domain: str | None) -> str:
    """The transport address under another scheme and/or domain (RFC 7247 §6).

    Under the same scheme only the host is replaced: the rest of the text (user, port,
    resource, parameters) stays byte for byte. When the scheme changes, the user is
    converted as docs/addresses.md "Conversion between schemes" says (XEP-0106 §4.2
    escaping into XMPP and unescaping out of it, percent-encoding as the target scheme
    requires: ``sip:d'artagnan@x`` -> ``xmpp:d\\27artagnan@x``, ``sip:o%27neil@x`` ->
    ``xmpp:o\\27neil@x``), and what only made sense under the old scheme (an XMPP resource,
    SIP parameters and port) is left behind. An ``xmpp:`` address is read and written in
    the gateway-wide form (:meth:`canonical.address.Address.from_gateway`). A user the
    target scheme cannot hold raises RoutingError (BAD_REQUEST) naming it and the rule.
    """
    if scheme is None and domain is None:
        return address
    parts = split_address(address)
    if scheme is None or scheme.lower() == parts.scheme:
        user = f"{parts.user}@" if parts.user is not None else ""
        return f"{parts.scheme}:{user}{domain or parts.host}{parts.rest}"
    return _convert(address, scheme.lower(), domain)


@lru_cache(maxsize=65536)
def _convert(address: str, scheme: str, domain: str | None) -> str:
    """``address`` under another scheme (see :func:`rewrite`). Cached: a route rewrites the
    same few addresses over and over; refusals raise every time."""
    try:
        source = Address.from_gateway(address)
        if domain is not None:
            source = replace(source, host=domain)
        # an unknown scheme is refused by with_scheme (ADDRESS_BAD_SCHEME)
        return source.bare.with_scheme(cast("Scheme", scheme)).to_gateway()
    except ParseError as exc:
        raise RoutingError(
            f"{address!r} cannot be rewritten to the route's scheme {scheme!r}"
            f"{f' and domain {domain!r}' if domain else ''}: {exc.message} [{exc.code}]",
            reason=Reason.BAD_REQUEST,
            hint=exc.hint or "the user part must be representable under the route's scheme",
        ) from None


class RoutingTable:
    """Address patterns -> adapter instances. The most specific pattern wins: an exact
    domain, then the longest ``*.`` suffix, then ``*``."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._ordered = sorted(
            self.routes, key=lambda r: _specificity(r.pattern), reverse=True
        )  # stable: among equals, the first configured wins
        self._exact = {r.pattern: r for r in reversed(self.routes) if "*" not in r.pattern}

    def match(self, domain: str) -> Route | None:
        """The route for a domain, or None."""
        lowered = domain.lower()
        exact = self._exact.get(lowered)
        if exact is not None:
            return exact
        for route in self._ordered:
            if pattern_matches(route.pattern, lowered):
                return route
        return None

    def resolve(self, recipient: str) -> Resolution:
        """Where ``recipient`` goes. RoutingError(UNKNOWN_DESTINATION) when no route
        matches: the adapter answers SIP 404 / XMPP item-not-found."""
        parts = split_address(recipient)
        route = self.match(parts.domain)
        if route is None:
            raise RoutingError(
                f"no route to {parts.domain} (recipient {recipient})",
                reason=Reason.UNKNOWN_DESTINATION,
                hint="the gateway serves only the domains in its [[routes]]",
            )
        return Resolution(route, rewrite(recipient, scheme=route.scheme, domain=route.domain))

    def owner(self, address: str) -> str | None:
        """The adapter that owns the address's domain (anti-spoofing), or None."""
        route = self.match(split_address(address).domain)
        return None if route is None else route.adapter

    def adapters(self) -> set[str]:
        return {r.adapter for r in self.routes}


# -- loop prevention -------------------------------------------------------------------


def check_hops(envelope: Envelope, gateway_id: str) -> None:
    """Refuse an envelope that has no hop left or that already passed this gateway.

    RFC 3860 §3.4.2: an object arriving with MaxForwards 0 is not forwarded and the
    sender gets a failure (SIP 483); our id in the transport history means it came
    round (SIP 482). Both carry :attr:`Reason.LOOP`.
    """
    if gateway_id in envelope.trace:
        path = " -> ".join((*envelope.trace, gateway_id))
        raise RoutingError(
            f"loop: {envelope.identity} came back to gateway {gateway_id} (path {path})",
            reason=Reason.LOOP,
            hint="two gateways route this domain to each other; fix their [[routes]]",
        )
    if envelope.max_forwards <= 0:
        raise RoutingError(
            f"hop budget exhausted for {envelope.identity} after {len(envelope.trace)} gateways"
            f" ({' -> '.join(envelope.trace) or 'no history'})",
            reason=Reason.LOOP,
            hint="the destination is too many gateways away, or gateways route in a circle",
        )


class SeenSet:
    """Payload bytes seen recently, per recipient (pure; time passed in; bounded).

    Catches an object that re-enters with its transport history lost (a hop that does not
    carry ``Cpimgw-Trace``): the same bytes to the same recipient within ``window`` seconds
    under a *different* identity, or arriving on a *different* adapter, is a loop. The same
    identity again on the same adapter is an ordinary resend, left to the store's dedup.
    """

    def __init__(self, *, window: float, capacity: int = 100_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[bytes, tuple[str, str, float]] = OrderedDict()

    @staticmethod
    def key(envelope: Envelope) -> bytes | None:
        """The key of a message envelope (payload digest + bare recipient), or None."""
        if envelope.operation is not Operation.MESSAGE or envelope.payload is None:
            return None
        digest = hashlib.sha256(envelope.payload.body)
        digest.update(b"\0" + bare(envelope.recipient).encode())
        return digest.digest()

    def check(self, envelope: Envelope, now: float) -> None:
        """Record the envelope; RoutingError(LOOP) when it re-entered under a new identity."""
        if self.window <= 0:
            return
        key = self.key(envelope)
        if key is None:
            return
        seen = self._seen.get(key)
        mark = (envelope.identity, envelope.origin.adapter)
        if seen is not None and now - seen[2] < self.window and seen[:2] != mark:
            how = (
                f"under a new identity ({envelope.identity}, first {seen[0]})"
                if seen[0] != envelope.identity
                else f"on adapter {mark[1]!r} (first on {seen[1]!r})"
            )
            raise RoutingError(
                f"loop: the same object to {envelope.recipient} re-entered within"
                f" {self.window:g}s {how}",
                reason=Reason.LOOP,
                hint="a gateway on the path drops the transport history; fix the routes",
            )
        if seen is None or seen[:2] != mark or now - seen[2] >= self.window:
            self._seen[key] = (*mark, now)
            self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._seen:
            _, (_, _, at) = next(iter(self._seen.items()))
            if now - at < self.window:
                return
            self._seen.popitem(last=False)


def duplicate_patterns(routes: Sequence[Route]) -> list[str]:
    """Patterns configured more than once (a config error: which one wins is unclear)."""
    seen: set[str] = set()
    dups: list[str] = []
    for route in routes:
        if route.pattern in seen and route.pattern not in dups:
            dups.append(route.pattern)
        seen.add(route.pattern)
    return dups
