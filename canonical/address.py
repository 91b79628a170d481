"""Addresses: im:, pres: (RFC 3860/3859), sip:/sips: (RFC 3261 §19.1), xmpp: URIs and
JIDs (RFC 7622), XEP-0106 / RFC 7247 §6 escaping.  INTERFACE STUB — being implemented."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scheme = Literal["im", "pres", "sip", "sips", "xmpp"]


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address. ``user`` is the decoded local part (None for a bare domain),
    ``resource`` an XMPP resource, ``params`` SIP URI parameters in order (name, value|None),
    ``headers`` SIP URI headers. ``Address.parse(str(a)) == a``."""

    scheme: Scheme
    user: str | None
    host: str
    port: int | None = None
    resource: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse a URI (``im:``, ``pres:``, ``sip:``, ``sips:``, ``xmpp:``); a bare or full JID
        without scheme is read as ``xmpp:``. ValueError (ParseError) says why."""
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError

    @property
    def bare(self) -> Address:
        """Without resource, port, params and headers."""
        raise NotImplementedError

    def with_scheme(self, scheme: Scheme) -> Address:
        """The same user@host under another scheme (RFC 7247 §6; XEP-0106 for xmpp)."""
        raise NotImplementedError

    @property
    def jid(self) -> str:
        """``local@domain[/resource]`` with XEP-0106 escaping of the local part."""
        raise NotImplementedError


def escape_localpart(text: str) -> str:
    """XEP-0106 §4.2 escaping of a JID local part."""
    raise NotImplementedError


def unescape_localpart(text: str) -> str:
    """XEP-0106 §4.3 unescaping."""
    raise NotImplementedError
