"""Finding a peer gateway for a domain: RFC 3861 SRV lookups with an explicit resolver.

RFC 3861 §3-§6: the owner name is ``_im._<label>.<domain>`` for the message operation
and ``_pres._<label>.<domain>`` for presence, where ``<label>`` names the protocol. This
transport's label is ``_cpimgw-http`` (cpimgw's CPIM operations over HTTPS,
docs/http-api.md; not IANA-registered). SRV records are ordered by RFC 2782 (lowest
priority first, weighted random within a priority); with no SRV record but an address
record, the domain itself is used on the default port, as if an SRV record of priority
0 pointed at it (§4); a target of ``.`` means the service is not offered there.

The DNS server is always named explicitly (dnspython, ``configure=False``): the
operator's configured servers, or in tests the dnsmasq the test runs on loopback. The
same resolver answers the address lookups of the HTTP client (:class:`HostResolver`),
so the TLS name checked is the SRV target while its address comes from that server.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from canonical.errors import DeliveryError, Reason

#: The protocol label of this transport in ``_im._<label>`` / ``_pres._<label>``.
LABEL = "_cpimgw-http"
#: The port used when a domain has an address record but no SRV record (RFC 3861 §4).
DEFAULT_PORT = 443

Service = Literal["_im", "_pres"]


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV answer (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect: the host name (checked against the TLS certificate) and port."""

    host: str
    port: int


def owner_name(service: Service, domain: str, label: str = LABEL) -> str:
    """``_im._cpimgw-http.example.com.`` (RFC 3861 §3)."""
    return f"{service}.{label}.{domain.rstrip('.')}."


def order(records: Sequence[SrvRecord], draw: Callable[[], float]) -> list[SrvRecord]:
    """RFC 2782 order: by priority; within one, repeatedly pick a record with
    probability proportional to its weight (zero-weight records get a small chance,
    placed first per the RFC's running-sum rule). ``draw`` gives numbers in [0, 1)."""
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            point = min(total, int(draw() * (total + 1)))  # uniform in 0..total
            running = 0
            chosen = group[-1]
            for record in group:
                running += record.weight
                if running >= point:
                    chosen = record
                    break
            out.append(chosen)
            group.remove(chosen)
    return out


class SrvResolver:
    """RFC 3861 lookups against the named DNS servers only."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        *,
        label: str = LABEL,
        timeout: float = 3.0,
        default_port: int = DEFAULT_PORT,
        rng: random.Random | None = None,
    ) -> None:
        if not nameservers:
            raise ValueError("name at least one DNS server (host, port)")
        ports = {port for _, port in nameservers}
        if len(ports) != 1:
            raise ValueError("all DNS servers of one resolver use the same port")
        self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.resolver.nameservers = [host for host, _ in nameservers]
        self.resolver.port = ports.pop()
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        self.label = label
        self.default_port = default_port
        self.rng = rng or random.Random()

    async def targets(self, service: Service, domain: str) -> list[Target]:
        """The ordered targets for ``domain`` (RFC 3861 §4-§6).

        Raises DeliveryError: UNKNOWN_DESTINATION (not retryable) when the domain has
        neither SRV nor address records, UNAVAILABLE (retryable) when DNS fails.
        """
        name = owner_name(service, domain, self.label)
        try:
            answer = await self.resolver.resolve(name, "SRV", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            answer = None
        except (dns.exception.DNSException, OSError) as exc:
            raise DeliveryError(
                f"DNS lookup of {name} failed: {exc}",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="check the DNS servers configured for the HTTP adapter",
            ) from exc
        records = [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text().rstrip("."))
            for r in (answer or [])
            if r.rdtype == dns.rdatatype.SRV
        ]
        if records:
            usable = [r for r in records if r.target not in ("", ".")]
            if not usable:
                raise DeliveryError(
                    f"{domain} says it offers no {service} service over {self.label} ({name})",
                    retryable=False,
                    reason=Reason.UNKNOWN_DESTINATION,
                )
            return [Target(r.target, r.port) for r in order(usable, self.rng.random)]
        if await self.addresses(domain):
            return [Target(domain.rstrip("."), self.default_port)]
        raise DeliveryError(
            f"no peer gateway found for {domain}: no SRV record {name} and no address record",
            retryable=False,
            reason=Reason.UNKNOWN_DESTINATION,
            hint="publish the SRV record, or configure the peer's URL",
        )

    async def addresses(self, host: str) -> list[tuple[str, int]]:
        """IPv4 then IPv6 addresses of ``host`` as (address, family)."""
        found: list[tuple[str, int]] = []
        for rdtype, family in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                answer = await self.resolver.resolve(
                    host.rstrip(".") + ".", rdtype, raise_on_no_answer=False
                )
            except dns.resolver.NXDOMAIN:
                return found
            except (dns.exception.DNSException, OSError):
                continue
            found += [(r.to_text(), int(family)) for r in answer]
        return found


class HostResolver(AbstractResolver):
    """aiohttp's resolver interface answered by an :class:`SrvResolver`'s DNS servers;
    literal IP addresses are returned as they are."""

    def __init__(self, srv: SrvResolver) -> None:
        self.srv = srv

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = _literal(host)
        pairs = [(host, literal)] if literal is not None else await self.srv.addresses(host)
        wanted = [
            (a, f) for a, f in pairs if family in (socket.AF_UNSPEC, f) or literal is not None
        ]
        if not wanted:
            raise OSError(f"{host} has no address at the configured DNS servers")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address, fam in wanted
        ]

    async def close(self) -> None:
        return None


def _literal(host: str) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.strip("[]"))
        except OSError:
            continue
        return int(family)
    return None


__all__ = [
    "DEFAULT_PORT",
    "LABEL",
    "HostResolver",
    "SrvRecord",
    "SrvResolver",
    "Target",
    "order",
    "owner_name",
]
