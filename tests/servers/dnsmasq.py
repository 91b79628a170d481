"""dnsmasq (Debian ``dnsmasq-base``) as the DNS server of the tests, on loopback.

It answers only what the test gives it — SRV records (``--srv-host``) and address
records (``--host-record``) — and nothing else: no upstream servers (``--no-resolv``),
no ``/etc/hosts``, no config file. Tests point their resolver at it explicitly and
never query the system's resolver.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.servers.process import ServerProcess, free_port, require_binary


@dataclass(frozen=True)
class Srv:
    """One SRV record: ``name`` (``_im._cpimgw-http.example.com``) -> ``target:port``."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0


def _answers(port: int) -> bool:
    query = dns.message.make_query("ready.invalid.", "A")
    try:
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
    except (OSError, dns.exception.Timeout):
        return False
    return response.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR, dns.rcode.REFUSED)


class DnsmasqServer(ServerProcess):
    """A dnsmasq serving ``srv`` and ``hosts`` (name -> IPv4/IPv6) on 127.0.0.1, and
    the only authority for the ``local`` domains (use names under ``.test``)."""

    def __init__(
        self,
        workdir: Path,
        *,
        srv: Sequence[Srv] = (),
        hosts: dict[str, Sequence[str]] | None = None,
        port: int | None = None,
        local: Sequence[str] = ("test", "example", "invalid"),
    ) -> None:
        binary = require_binary("dnsmasq", "dnsmasq-base")
        self.port = port or free_port("udp")
        argv = [
            binary,
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--user=",
            "--log-queries",
            "--log-facility=-",
        ]
        # Answer NXDOMAIN/NODATA (not REFUSED) for unknown names in these domains.
        argv += [f"--local=/{domain}/" for domain in local]
        for record in srv:
            argv.append(
                f"--srv-host={record.name},{record.target},{record.port},"
                f"{record.priority},{record.weight}"
            )
        for name, addresses in (hosts or {}).items():
            argv.append(f"--host-record={name},{','.join(addresses)}")
        super().__init__("dnsmasq", argv, workdir=workdir, ready=lambda _: _answers(self.port))

    @property
    def nameserver(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
