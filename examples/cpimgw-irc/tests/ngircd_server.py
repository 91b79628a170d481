"""A real ngIRCd for the tests: a foreground child on 127.0.0.1, a free port, its own
config and log in a temporary folder, stopped by PID even when a test fails.

This is a small copy of the pattern of cpimgw's ``tests/servers/process.py`` (which is
not part of the installed cpimgw): a plugin's tests must run from the plugin alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NGIRCD = "/usr/sbin/ngircd"
CONFIG = """[Global]
\tName = {name}
\tInfo = cpimgw-irc test server
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "cpimgw-irc test server"
\tAdminInfo1 = cpimgw tests
\tAdminInfo2 = loopback only
\tAdminEMail = nobody@example.org
[Limits]
\tMaxConnectionsIP = 0
\tMaxPenaltyTime = 0
\tPingTimeout = 120
\tPongTimeout = 20
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tIncludeDir = {confd}
"""
TLS = """[SSL]
\tCertFile = {cert}
\tKeyFile = {key}
\tPorts = {port}
"""


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (the tests' trust root too)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irc.example.org")])
    now = dt.datetime.now(dt.UTC)
    addresses: list[x509.GeneralName] = [
        x509.DNSName("irc.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(addresses), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ircd.crt", folder / "ircd.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o644)  # ngIRCd reads it as "nobody"; a throw-away test key
    return cert_path, key_path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ircd:
    """A running ngIRCd: where it listens and its log (shown when a test fails)."""

    port: int
    name: str
    log_path: Path
    process: subprocess.Popen[bytes]
    tls_port: int | None = None
    certificate: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def running_ircd(
    workdir: Path, name: str = "irc.example.org", port: int | None = None, *, tls: bool = False
) -> Iterator[Ircd]:
    """Start ngIRCd (``ngircd -n -f CONFIG``), wait until it accepts connections, stop it."""
    binary = shutil.which("ngircd") or (NGIRCD if os.path.exists(NGIRCD) else None)
    if binary is None:
        pytest.fail("ngircd not found: install the Debian package ngircd")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "conf.d").mkdir(exist_ok=True)
    port = port or free_port()
    config = workdir / "ngircd.conf"
    text = CONFIG.format(name=name, port=port, confd=workdir / "conf.d")
    tls_port, certificate = None, None
    if tls:
        tls_port = free_port()
        certificate, key = write_certificate(workdir)
        text += TLS.format(cert=certificate, key=key, port=tls_port)
    config.write_text(text)
    config.chmod(0o644)
    workdir.chmod(0o755)
    log_path = workdir / "ngircd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "-n", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ircd = Ircd(port, name, log_path, process, tls_port, certificate)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"ngircd exited with {process.returncode}:\n{ircd.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ngircd not listening after 20 s:\n{ircd.log()}")
                time.sleep(0.05)
        yield ircd
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
