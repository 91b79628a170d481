"""Who may use the API: bearer tokens and peer certificates bound to address patterns.

A *principal* is an authenticated caller: an application (bearer token, RFC 6750 §2.1)
or a peer gateway (mutual TLS, its certificate's DNS name). Each is bound to the address
patterns it may **send as** and, for applications, the ones it may **watch** (receive
messages and notifications for). A caller can never send as an address it does not own:
the shell checks the envelope sender *and* the From inside the CPIM object against
``send_as`` (RFC 3862 §2.2, RFC 3860 §4: the gateway vouches for the sender's domain).

Tokens are kept as SHA-256 digests only ("hashes at rest"); a presented token is hashed
and compared with every known digest using :func:`hmac.compare_digest`, always all of
them, so the time taken says nothing about which digest or how many bytes matched.
Pure: no I/O (the shell reads tokens from the environment before building these).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from canonical.address import Address, domain_matches
from canonical.errors import ConfigError, ParseError

Kind = Literal["client", "peer"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: An INSTANT INBOX and a PRESENTITY of one user share the address (RFC 3860 App. A,
#: RFC 3859 App. A): ``im:`` and ``pres:`` patterns match both.
_SAME = {"pres": "im"}


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """``[scheme:]user@domain-glob``; ``*`` as the user (or no ``user@``) means any user,
    the domain glob is ``example.com``, ``*.example.com`` or ``*``
    (:func:`canonical.address.domain_matches`). Without a scheme any scheme matches;
    ``im:`` and ``pres:`` match each other."""

    scheme: str | None
    user: str | None
    domain: str

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        body = text.strip()
        scheme: str | None = None
        head, colon, rest = body.partition(":")
        if colon and "@" not in head and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head):
            scheme, body = head.lower(), rest
        user, at, domain = body.rpartition("@")
        if not at:
            user, domain = "*", body
        pattern = cls(scheme, None if user in ("", "*") else user, domain.strip().lower())
        try:
            domain_matches("example.invalid", pattern.domain)
        except ParseError as exc:
            raise ConfigError(
                f"{text!r} is not an address pattern: {exc.message}",
                hint="use [scheme:]user@example.com, *@example.com or *@*.example.com",
            ) from exc
        return pattern

    def matches(self, address: str) -> bool:
        """Whether ``address`` (a URI or JID) falls under this pattern."""
        parts = _parts(address)
        if parts is None:
            return False
        scheme, user, domain = parts
        if self.scheme is not None and scheme != _SAME.get(self.scheme, self.scheme):
            return False
        if self.user is not None and user != self.user:
            return False
        return domain_matches(domain, self.domain)

    def __str__(self) -> str:
        scheme = f"{self.scheme}:" if self.scheme else ""
        return f"{scheme}{self.user or '*'}@{self.domain}"


@functools.lru_cache(maxsize=4096)
def _parts(address: str) -> tuple[str, str | None, str] | None:
    """(scheme with pres: read as im:, user, routing domain) of an address, or None when
    it does not parse. A gateway-wide ``xmpp:`` address is read as the JID it names
    (:meth:`Address.from_gateway`). Cached: callers send from a few addresses over and over."""
    try:
        parsed = Address.from_gateway(address)
    except (ParseError, TypeError):
        return None
    return _SAME.get(parsed.scheme, parsed.scheme), parsed.user, parsed.domain


def patterns(texts: Iterable[str]) -> tuple[AddressPattern, ...]:
    """Parse several patterns (ConfigError names the bad one)."""
    return tuple(AddressPattern.parse(t) for t in texts)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and what it may do."""

    name: str
    kind: Kind
    send_as: tuple[AddressPattern, ...]
    watch: tuple[AddressPattern, ...] = ()
    rate: float = 0.0  # operations per second (0: no limit of its own)
    burst: float = 20.0

    def may_send_as(self, address: str) -> bool:
        return any(p.matches(address) for p in self.send_as)

    def may_watch(self, address: str) -> bool:
        return any(p.matches(address) for p in self.watch)


def digest(token: str) -> str:
    """The SHA-256 hex digest kept at rest for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_digest(text: str, *, key: str) -> str:
    """A configured digest: 64 lower-case hex digits (``sha256:`` prefix allowed)."""
    value = text.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(value):
        raise ConfigError(
            "not a SHA-256 hex digest",
            key=key,
            hint="store sha256(token) as 64 hex digits (printf %s TOKEN | sha256sum)",
        )
    return value


class TokenBook:
    """Bearer token digests -> principals; peer certificate names -> principals."""

    def __init__(
        self,
        clients: Sequence[tuple[str, Principal]] = (),
        peers: Sequence[tuple[str, Principal]] = (),
    ) -> None:
        self._clients = [(bytes.fromhex(d), p) for d, p in clients]
        self._peers = {name.lower(): p for name, p in peers}
        self.principals = {p.name: p for _, p in (*clients, *peers)}

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer <token>`` value, or None.

        Compares the presented token's digest with every stored digest in constant time
        (no early exit), RFC 6750 §5.3 ("validate tokens").
        """
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for stored, principal in self._clients:
            if hmac.compare_digest(presented, stored) and found is None:
                found = principal
        return found

    def peer(self, names: Iterable[str]) -> Principal | None:
        """The peer gateway whose configured name is among a verified certificate's names
        (subjectAltName DNS entries, then the subject CN)."""
        for name in names:
            found = self._peers.get(name.lower())
            if found is not None:
                return found
        return None

    def watchers(self, address: str) -> list[Principal]:
        """Every application principal that watches ``address``."""
        return [p for p in self.principals.values() if p.kind == "client" and p.may_watch(address)]


class RateBook:
    """Token buckets per principal (pure: the time is passed in): ``burst`` tokens,
    refilled at ``rate`` per second; :meth:`take` gives 0.0 or the seconds to wait."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}

    def take(self, key: str, *, rate: float, burst: float, now: float) -> float:
        if rate <= 0:
            return 0.0
        tokens, stamp = self._levels.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
        if tokens >= 1.0:
            self._levels[key] = (tokens - 1.0, now)
            return 0.0
        self._levels[key] = (tokens, now)
        return (1.0 - tokens) / rate


def certificate_names(peercert: dict[str, object] | None) -> list[str]:
    """DNS names of a verified peer certificate as ``ssl.SSLSocket.getpeercert()`` gives
    them: subjectAltName DNS entries first, then the subject commonName."""
    if not peercert:
        return []
    names: list[str] = []
    alt = peercert.get("subjectAltName")
    if isinstance(alt, tuple | list):
        names += [str(v) for k, v in alt if k == "DNS"]
    subject = peercert.get("subject")
    if isinstance(subject, tuple | list):
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    names.append(str(value))
    return names


__all__ = [
    "AddressPattern",
    "Principal",
    "RateBook",
    "TokenBook",
    "certificate_names",
    "check_digest",
    "digest",
    "patterns",
]
