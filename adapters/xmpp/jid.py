"""Native JIDs <-> gateway-wide transport addresses (docs/architecture.md "Addresses").

The component serves one domain (say ``sip.example.com``). Three kinds of JID meet it:

- JIDs of the XMPP server's own users (``alice@xmpp.example.com/phone``): gateway-wide
  ``xmpp:alice@xmpp.example.com/phone``, resource kept, the JID as stamped with only ``%``,
  ``?`` and ``#`` percent-encoded (RFC 7622 §3; RFC 5122 §2.2 delimiters;
  :func:`canonical.address.gateway_xmpp`).
- ``bob@sip.example.com`` where the domain map says ``sip.example.com = "sip:example.net"``:
  ``sip:bob@example.net`` (RFC 7247 §6: the local part is the SIP user part).
- ``bob\\40example.net@sip.example.com``, a XEP-0106 §4 escaped foreign address: the
  unescaped local part is the whole address, ``im:bob@example.net`` (home network not known).

The other way, ``sip:bob@example.net`` becomes ``bob@sip.example.com`` through the map, and
any other foreign address ``scheme:user@host`` becomes ``user\\40host@<component>``. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from canonical.address import (
    Address,
    escape_localpart,
    gateway_jid,
    gateway_xmpp,
    is_canonical_localpart,
    unescape_localpart,
)
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


def _malformed(
    text: str, why: str, hint: str = "use local@domain/resource as RFC 7622 §3 defines"
) -> ParseError:
    return ParseError("JID_MALFORMED", f"malformed JID {text[:80]!r}: {why}", hint=hint)


#: Schemes a ``domain_map`` entry may name (the foreign side of the component's domains).
_FOREIGN_SCHEMES = ("sip", "sips", "im", "pres")


@dataclass(frozen=True, slots=True)
class AddressMap:
    """The component's address rules: its domain, the domain map, the XMPP domains served.

    ``domain_map`` maps a JID domain handled by this component to the foreign
    ``scheme:host`` it stands for (``{"sip.example.com": "sip:example.net"}``).

    The user part crosses the boundary as docs/addresses.md "Conversion between schemes"
    says: out of XMPP the localpart is XEP-0106-unescaped and the URI percent-encodes what its
    scheme reserves (UTF-8 octets as ``%HH``, RFC 3986 §2.1, RFC 3261 §25.1: ``a\\3a`` ->
    ``sip:a%3A@...``, ``jürgen`` -> ``sip:j%C3%BCrgen@...``); into XMPP the URI user is
    percent-decoded and XEP-0106-escaped (§4.2). Both ways go through
    :class:`canonical.address.Address`, so ``to_jid(to_uri(j)) == j`` for every JID of the
    component that maps at all; what cannot map is refused with ``JID_MALFORMED``.
    """

    component: str
    domain_map: Mapping[str, str] = field(default_factory=dict)
    served: frozenset[str] = frozenset()
    #: Translations already made (both ways), bounded: every stanza names two addresses,
    #: and the same few recur. Refusals are not remembered; they raise every time.
    _uris: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _jids: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: ``domain_map`` read once: JID domain (lower case) -> the foreign domain address.
    _targets: dict[str, Address] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for jid_domain, target in self.domain_map.items():
            try:
                address = Address.parse(target)
            except ParseError as exc:
                raise ParseError(
                    "DOMAIN_MAP",
                    f"domain_map entry {jid_domain!r} = {target!r} is not a URI: {exc.message}",
                    hint='write the foreign domain as "sip:example.net"',
                ) from None
            if address.user is not None or address.scheme not in _FOREIGN_SCHEMES:
                raise ParseError(
                    "DOMAIN_MAP",
                    f"domain_map entry {jid_domain!r} = {target!r} must name a foreign "
                    "domain without a user",
                    hint='write "sip:example.net" (or sips:, im:, pres:)',
                )
            self._targets[jid_domain.lower()] = address

    def owns(self, jid: Jid) -> bool:
        """True for JIDs that stand for foreign entities (served by this component)."""
        return jid.domain == self.component or jid.domain in self._targets

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

    # ------------------------------------------------------------------ JID -> URI
    def _to_uri(self, text: str) -> str:
        jid = Jid.parse(text)
        if not self.owns(jid):
            # the JID as stamped, '%', '?' and '#' percent-encoded (RFC 5122 §2.2 reads them
            # as escape, query and fragment): docs/addresses.md "XMPP users seen from ..."
            return gateway_xmpp(str(jid))
        if jid.local is None:
            raise RoutingError(
                f"{text!r} is the gateway component itself, not a foreign address",
                reason=Reason.UNKNOWN_DESTINATION,
                hint="write to user@domain on the component",
            )
        try:
            Address("xmpp", jid.local, jid.domain)  # RFC 7622 §3.3 localpart characters
        except ParseError as exc:
            raise _malformed(
                text,
                exc.message,
                hint="XMPP localparts are letters, digits and ASCII punctuation; escape "
                "the characters XEP-0106 lists (RFC 7622 §3.3)",
            ) from None
        if not is_canonical_localpart(jid.local):
            # XEP-0106 §7: foo\5cbar unescapes to foo\bar, itself another JID; mapping
            # both onto one URI would make the way back pick one of them
            raise _malformed(
                text,
                f"the local part {jid.local!r} is not canonically escaped: it unescapes to "
                f"{unescape_localpart(jid.local)!r}, which escapes back differently "
                "(XEP-0106 §4.2-4.4)",
                hint="write a backslash as \\5c only before one of the ten escape codes, "
                "and no \\20 at the start or end",
            )
        unescaped = unescape_localpart(jid.local)
        if "@" in unescaped:
            user, _, host = unescaped.rpartition("@")
            if not user or not host:
                # XEP-0106 §4: the escaped local part is a whole foreign address, user@host
                raise _malformed(
                    text,
                    f"the escaped foreign address {unescaped[:80]!r} has no user or no host",
                    hint=f"write the foreign address as user\\40host@{jid.domain} (XEP-0106 §4)",
                )
            return str(_foreign(text, "im", user, host=host))
        target = self._targets.get(jid.domain)
        if target is None:
            raise RoutingError(
                f"no foreign domain is mapped for {jid.bare!r}",
                reason=Reason.UNKNOWN_DESTINATION,
                hint=f"write to user\\40host@{self.component} or add a domain_map entry",
            )
        return str(_foreign(text, target.scheme, unescaped, base=target))

    # ------------------------------------------------------------------ URI -> JID
    def _to_jid(self, uri: str) -> str:
        if uri[:5].lower() == "xmpp:":
            try:
                # the parts percent-decoded, an RFC 5122 query dropped: the inverse of to_uri
                text = gateway_jid(uri)
            except ParseError as exc:
                raise _uri_malformed(uri, exc) from None
            return str(Jid.parse(text))
        try:
            address = Address.parse(uri).bare
        except ParseError as exc:
            raise _uri_malformed(uri, exc) from None
        if address.user is None:
            raise RoutingError(
                f"{uri!r} has no user part", reason=Reason.UNKNOWN_DESTINATION, hint="add user@"
            )
        try:
            # XEP-0106 §4.2 escaping, RFC 7622 §3.3 localpart check, §3.2 U-labels
            native = address.with_scheme("xmpp")
        except ParseError as exc:
            raise ParseError(
                "JID_MALFORMED",
                f"{uri[:80]!r} cannot be an XMPP address: its user {address.user!r} {_why(exc)}",
                hint="XMPP localparts are letters, digits and ASCII punctuation "
                "(RFC 7622 §3.3), without a leading or trailing space",
            ) from None
        local = native.user or ""
        if address.domain in self.served:
            # a user of the XMPP server under another scheme (a SIP Request-URI
            # sip:alice@xmpp.example.com, docs/architecture.md "Addresses"): that user's JID
            return f"{local}@{native.host.lower()}"
        for jid_domain, target in self._targets.items():
            if target.domain == address.domain:
                return f"{local}@{jid_domain}"
        escaped = escape_localpart(f"{address.user}@{native.host.lower()}")
        try:
            Address("xmpp", escaped, self.component)
        except ParseError as exc:
            raise ParseError(
                "JID_MALFORMED",
                f"{uri[:80]!r} cannot be an XMPP address on {self.component}: {_why(exc)}",
                hint="a JID part is at most 1023 octets (RFC 7622 §3.3.1)",
            ) from None
        return f"{escaped}@{self.component}"


def _foreign(
    text: str, scheme: str, user: str, *, host: str | None = None, base: Address | None = None
) -> Address:
    """The foreign address for ``user`` (decoded; ``str()`` percent-encodes it): ``base``
    (a ``domain_map`` target) with that user, or ``scheme:user@host`` for a ``host`` read
    from an escaped local part (a JID-style domain: U-labels become A-labels, RFC 5891 §4,
    as a URI host needs)."""
    try:
        if base is not None:
            return replace(base, user=user)
        ascii_host = Address("xmpp", None, host or "").with_scheme("im").host.lower()
        return Address(scheme, user, ascii_host)  # type: ignore[arg-type]
    except ParseError as exc:
        raise _malformed(
            text,
            f"{user!r}@{host or (base and base.host)} is not a valid {scheme}: address "
            f"({exc.message})",
            hint="the escaped foreign address needs a host name, an IPv4 or an [IPv6] host",
        ) from None


def _uri_malformed(uri: str, exc: ParseError) -> ParseError:
    return ParseError(
        "URI_MALFORMED",
        f"{uri[:80]!r} is not a gateway address: {exc.message} [{exc.code}]",
        offset=exc.offset,
        hint=exc.hint or "write scheme:user@host",
    )


def _why(exc: ParseError) -> str:
    return f"is refused: {exc.message} [{exc.code}]"


#: Entries an address cache keeps before it starts afresh (input-fed: bounded).
CACHE_SIZE = 4096


def _remember(cache: dict[str, str], key: str, value: str) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
