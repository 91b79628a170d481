"""Native JIDs <-> gateway-wide transport addresses (docs/architecture.md "Addresses").

The component serves one domain (say ``sip.example.com``). Three kinds of JID meet it:

- JIDs of the XMPP server's own users (``alice@xmpp.example.com/phone``): gateway-wide
  ``xmpp:alice@xmpp.example.com/phone``, resource kept (RFC 7622 §3; RFC 5122 URI form).
- ``bob@sip.example.com`` where the domain map says ``sip.example.com = "sip:example.net"``:
  ``sip:bob@example.net`` (RFC 7247 §6: the local part is the SIP user part).
- ``bob\\40example.net@sip.example.com``, a XEP-0106 §4 escaped foreign address: the
  unescaped local part is the whole address, ``im:bob@example.net`` (home network not known).

The other way, ``sip:bob@example.net`` becomes ``bob@sip.example.com`` through the map, and
any other foreign address ``scheme:user@host`` becomes ``user\\40host@<component>``. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from canonical.address import escape_localpart, unescape_localpart
from canonical.errors import ParseError, Reason, RoutingError

#: RFC 7622 §3.1-3.4: each part is at most 1023 octets.
MAX_PART = 1023
_FORBIDDEN_LOCAL = frozenset("\"&'/:<>@ \t\r\n\x00")


@dataclass(frozen=True, slots=True)
class Jid:
    """A split JID: local part (None for a domain JID), domain, resource."""

    local: str | None
    domain: str
    resource: str | None = None

    @classmethod
    def parse(cls, text: str) -> Jid:
        """Split ``[local@]domain[/resource]`` (RFC 7622 §3.1). ParseError ``JID_MALFORMED``
        names what is wrong; no stringprep/PRECIS folding is applied (the server did it)."""
        if not text or len(text.encode("utf-8")) > 3 * MAX_PART + 2:
            raise _malformed(text, "empty or longer than RFC 7622 allows")
        bare, slash, resource = text.partition("/")
        local, at, domain = bare.rpartition("@")
        if not at:
            local, domain = "", bare
        if not domain or any(c in domain for c in " @/\t\r\n\x00") or domain.endswith("."):
            raise _malformed(text, "the domain part is empty or has a forbidden character")
        if at and (not local or any(c in _FORBIDDEN_LOCAL for c in local)):
            raise _malformed(text, "the local part is empty or has a character RFC 7622 forbids")
        if slash and not resource:
            raise _malformed(text, "the resource part after '/' is empty")
        for part in (local, domain, resource):
            if len(part.encode("utf-8")) > MAX_PART:
                raise _malformed(text, "a part is longer than 1023 octets")
        return cls(local or None, domain.lower(), resource or None)

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}" if self.local else self.domain

    def __str__(self) -> str:
        return f"{self.bare}/{self.resource}" if self.resource else self.bare


def _malformed(text: str, why: str) -> ParseError:
    return ParseError(
        "JID_MALFORMED",
        f"malformed JID {text[:80]!r}: {why}",
        hint="use local@domain/resource as RFC 7622 §3 defines",
    )


@dataclass(frozen=True, slots=True)
class ForeignUri:
    """``scheme:user@host`` split, user percent-decoded (RFC 3261 §19.1.2, RFC 3860 §3)."""

    scheme: str
    user: str | None
    host: str

    @classmethod
    def parse(cls, uri: str) -> ForeignUri:
        scheme, colon, rest = uri.partition(":")
        if not colon or not scheme or not rest:
            raise ParseError(
                "URI_MALFORMED", f"not a URI: {uri[:80]!r}", hint="write scheme:user@host"
            )
        rest = rest.removeprefix("//")
        for stop in (";", "?", ">"):
            rest = rest.split(stop, 1)[0]
        user, at, host = rest.rpartition("@")
        host = host.split(":", 1)[0] if not host.startswith("[") else host
        if not host:
            raise ParseError("URI_MALFORMED", f"no host in {uri[:80]!r}", hint="add @host")
        return cls(scheme.lower(), unquote(user) if at else None, host.lower())


@dataclass(frozen=True, slots=True)
class AddressMap:
    """The component's address rules: its domain, the domain map, the XMPP domains served.

    ``domain_map`` maps a JID domain handled by this component to the foreign
    ``scheme:host`` it stands for (``{"sip.example.com": "sip:example.net"}``).
    """

    component: str
    domain_map: Mapping[str, str] = field(default_factory=dict)
    served: frozenset[str] = frozenset()
    #: Translations already made (both ways), bounded: every stanza names two addresses,
    #: and the same few recur. Refusals are not remembered; they raise every time.
    _uris: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _jids: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def owns(self, jid: Jid) -> bool:
        """True for JIDs that stand for foreign entities (served by this component)."""
        return jid.domain == self.component or jid.domain in self.domain_map

    def to_uri(self, text: str) -> str:
        """A native JID -> a gateway-wide address (resource kept for XMPP users)."""
        uri = self._uris.get(text)
        if uri is None:
            uri = self._to_uri(text)
            _remember(self._uris, text, uri)
        return uri

    def to_jid(self, uri: str) -> str:
        """A gateway-wide address -> the JID that stands for it on the XMPP side."""
        jid = self._jids.get(uri)
        if jid is None:
            jid = self._to_jid(uri)
            _remember(self._jids, uri, jid)
        return jid

    def _to_uri(self, text: str) -> str:
        jid = Jid.parse(text)
        if not self.owns(jid):
            return f"xmpp:{jid}"
        if jid.local is None:
            raise RoutingError(
                f"{text!r} is the gateway component itself, not a foreign address",
                reason=Reason.UNKNOWN_DESTINATION,
                hint="write to user@domain on the component",
            )
        unescaped = unescape_localpart(jid.local)
        if "@" in unescaped:
            user, _, host = unescaped.rpartition("@")
            if not user or not host:
                # XEP-0106 §4: the escaped local part is a whole foreign address, user@host
                raise ParseError(
                    "JID_MALFORMED",
                    f"malformed JID {text[:80]!r}: the escaped foreign address "
                    f"{unescaped[:80]!r} has no user or no host",
                    hint=f"write the foreign address as user\\40host@{jid.domain} (XEP-0106 §4)",
                )
            return f"im:{unescaped}"
        target = self.domain_map.get(jid.domain)
        if target is None:
            raise RoutingError(
                f"no foreign domain is mapped for {jid.bare!r}",
                reason=Reason.UNKNOWN_DESTINATION,
                hint=f"write to user\\40host@{self.component} or add a domain_map entry",
            )
        scheme, _, host = target.partition(":")
        return f"{scheme}:{unescaped}@{host}"

    def _to_jid(self, uri: str) -> str:
        if uri.startswith("xmpp:"):
            return str(Jid.parse(uri[5:].removeprefix("//").split("?", 1)[0]))
        foreign = ForeignUri.parse(uri)
        if foreign.user is None:
            raise RoutingError(
                f"{uri!r} has no user part", reason=Reason.UNKNOWN_DESTINATION, hint="add user@"
            )
        if foreign.host in self.served:
            # a user of the XMPP server under another scheme (a SIP Request-URI
            # sip:alice@xmpp.example.com, docs/architecture.md "Addresses"): that user's JID
            return str(Jid.parse(f"{foreign.user}@{foreign.host}"))
        for jid_domain, target in self.domain_map.items():
            if target.partition(":")[2].lower() == foreign.host:
                return f"{escape_localpart(foreign.user)}@{jid_domain}"
        return f"{escape_localpart(f'{foreign.user}@{foreign.host}')}@{self.component}"


#: Entries an address cache keeps before it starts afresh (input-fed: bounded).
CACHE_SIZE = 4096


def _remember(cache: dict[str, str], key: str, value: str) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
