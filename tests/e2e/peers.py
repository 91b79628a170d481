"""The users at both ends of the end-to-end tests, and the checks made on what they receive.

- SIP users are SIPp processes on Kamailio: a UAS registered as ``user@sip.test`` that
  answers every MESSAGE (its trace gives the exact bytes received), UACs that send one
  MESSAGE, publish presence or watch a gateway user.
- XMPP users are slixmpp clients (``tests/xmpp/users.py``) on the XMPP server; they send
  raw stanzas so a test writes exactly what a client would.
- Signatures are checked by ``openssl cms -verify`` on the exact bytes received, with the
  byte-exact detached-DER command of ``canonical/vectors/README.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.sip.codec import Request, Response, parse
from canonical.envelope import Payload
from tests.e2e.stack import XMPP_DOMAIN, Stack
from tests.servers.sipp import SippRun, SippUas, run_sipp, sipp_uas

SCENARIOS = Path(__file__).resolve().parent / "sipp"
CARRIAGE_NS = "urn:cpimgw:carriage:0"
E2E_NS = "urn:ietf:params:xml:ns:xmpp-e2e"
RECEIPTS_NS = "urn:xmpp:receipts"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def scenario(name: str) -> str:
    """Our scenarios by absolute path; the fixtures' own (``register.xml``) by name."""
    ours = SCENARIOS / name
    return str(ours) if ours.exists() else name


def body_file(directory: Path, name: str, body: bytes) -> Path:
    """A SIPp body file: SIPp appends CRLF after an inserted file, so the file holds the
    body without it."""
    if not body.endswith(b"\r\n"):
        raise ValueError("a SIPp-sent body must end with CRLF (SIPp adds it after the file)")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(body[:-2])
    return path


def statuses(run: SippRun) -> list[int]:
    return [m.status for m in map(parse, run.received()) if isinstance(m, Response)]


def requests(messages: list[bytes], method: str = "MESSAGE") -> list[Request]:
    return [m for m in map(parse, messages) if isinstance(m, Request) and m.method == method]


async def sip_send(
    stack: Stack,
    *,
    sender: str,
    to: str,
    content_type: str,
    body: bytes,
    domain: str = XMPP_DOMAIN,
    call_id: str | None = None,
    name: str | None = None,
) -> SippRun:
    """SIP user ``sender``@sip.test sends one MESSAGE to ``to``@``domain`` through Kamailio.
    ``call_id`` fixes the Call-ID (a resend of the same message)."""
    tag = name or f"{sender}-to-{to}-{abs(hash(body)) % 10**8}"
    folder = stack.workdir / "sipp" / tag
    extra = ["-cid_str", call_id] if call_id is not None else []
    return await asyncio.to_thread(
        run_sipp,
        scenario("uac_message.xml"),
        folder,
        remote=stack.proxy,
        name=tag,
        service=to,
        keys={
            "from": sender,
            "dest_domain": domain,
            "ctype": content_type,
            "body_file": str(body_file(folder, "body", body)),
        },
        extra=extra,
    )


@dataclass
class SipUser:
    """A registered SIPp UAS: ``user``@sip.test."""

    name: str
    uas: SippUas

    async def messages(self, within: float = 15.0) -> list[Request]:
        """The MESSAGEs received, once the UAS has taken its calls (or ``within`` passed)."""
        assert self.uas.process.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.uas.process.proc.wait, within)
        self.uas.process.stop()
        return requests(self.uas.received())


@contextlib.asynccontextmanager
async def sip_user(
    stack: Stack, user: str, *, calls: int = 1, scenario_name: str = "uas_message.xml"
) -> AsyncIterator[SipUser]:
    """A SIP user ``user``@sip.test registered with Kamailio, taking ``calls`` MESSAGEs."""
    folder = stack.workdir / "sipp" / user
    with sipp_uas(scenario(scenario_name), folder, name=user, calls=calls, timeout=60) as uas:
        reg = await asyncio.to_thread(
            run_sipp,
            "register.xml",
            folder,
            remote=stack.proxy,
            name=f"{user}-register",
            service=user,
            keys={"contact_port": str(uas.port), "expires": "600"},
        )
        assert reg.returncode == 0, reg.output
        yield SipUser(user, uas)


async def sip_publish(
    stack: Stack, user: str, first: bytes, update: bytes, *, wait_ms: int
) -> asyncio.Task[SippRun]:
    """``user``@sip.test publishes ``first``, then ``update`` after ``wait_ms`` (background)."""
    folder = stack.workdir / "sipp" / f"{user}-publish"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "first.xml").write_bytes(first)
    (folder / "update.xml").write_bytes(update)
    return asyncio.create_task(
        asyncio.to_thread(
            run_sipp,
            scenario("publish_update.xml"),
            folder,
            remote=stack.proxy,
            name=f"{user}-publish",
            service=user,
            keys={
                "body_file": str(folder / "first.xml"),
                "update_file": str(folder / "update.xml"),
            },
            timeout=wait_ms / 1000 + 20,
            extra=["-d", str(wait_ms)],
        )
    )


def sip_watch(stack: Stack, watcher: str, presentity: str) -> asyncio.Task[SippRun]:
    """SIP user ``watcher`` subscribes to ``presentity``@xmpp.test and takes NOTIFYs until
    none came for 10 s; then unsubscribes (background task)."""
    folder = stack.workdir / "sipp" / f"{watcher}-watch"
    return asyncio.create_task(
        asyncio.to_thread(
            run_sipp,
            scenario("watcher.xml"),
            folder,
            remote=stack.proxy,
            name=f"{watcher}-watch",
            service=presentity,
            keys={"from": watcher, "dest_domain": XMPP_DOMAIN},
            timeout=60,
        )
    )


# ------------------------------------------------------------------------- XMPP side


def xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def child(stanza: Any, namespace: str, name: str) -> ET.Element | None:
    found: ET.Element | None = stanza.xml.find(f"{{{namespace}}}{name}")
    return found


def carried(stanza: Any) -> Payload | None:
    """The exact payload of cpimgw's carriage element, if the stanza has one."""
    element = child(stanza, CARRIAGE_NS, "cpim")
    if element is None:
        return None
    return Payload(element.get("type", ""), base64.b64decode(element.text or ""))


def error_condition(stanza: Any) -> str | None:
    """The RFC 6120 §8.3.3 condition of an error stanza."""
    for error in stanza.xml:
        if error.tag.endswith("}error"):
            for cond in error:
                if cond.tag.startswith(f"{{{STANZAS_NS}}}") and not cond.tag.endswith("}text"):
                    return str(cond.tag.rsplit("}", 1)[1])
    return None


def is_message(stanza: Any, *, sender: str | None = None, kind: str | None = None) -> bool:
    if stanza.name != "message":
        return False
    if sender is not None and str(stanza["from"]).split("/")[0] != sender:
        return False
    return kind is None or stanza.xml.get("type", "normal") == kind


# -------------------------------------------------------------------------- S/MIME


def split_signed(payload: Payload) -> tuple[bytes, bytes]:
    """(first part, DER signature) of a multipart/signed body, split byte-exactly:
    the CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1)."""
    match = re.search(r'boundary="?([^";]+)"?', payload.content_type)
    assert match is not None, payload.content_type
    dash = b"--" + match.group(1).encode()
    body = payload.body
    start = body.index(dash + b"\r\n") + len(dash) + 2
    end = body.index(b"\r\n" + dash, start)
    second = end + 2 + len(dash) + 2
    close = body.index(b"\r\n" + dash, second)
    part2 = body[second:close]
    head, _, b64 = part2.partition(b"\r\n\r\n")
    assert b"pkcs7-signature" in head.lower(), head
    return body[start:end], base64.b64decode(b64)


@dataclass(frozen=True)
class OpensslVerdict:
    ok: bool
    signer: str
    output: str


def openssl_verify(payload: Payload, ca_file: Path, workdir: Path) -> OpensslVerdict:
    """``openssl cms -verify -binary -inform DER`` on the exact bytes (vectors/README.md)."""
    workdir.mkdir(parents=True, exist_ok=True)
    content, der = split_signed(payload)
    (workdir / "part1.bin").write_bytes(content)
    (workdir / "sig.der").write_bytes(der)
    done = subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(workdir / "sig.der"), "-content", str(workdir / "part1.bin"),
            "-CAfile", str(ca_file), "-purpose", "any",
            "-signer", str(workdir / "signer.pem"), "-out", str(workdir / "content.bin"),
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip
    signer = ""
    if done.returncode == 0:
        subject = subprocess.run(
            ["openssl", "x509", "-noout", "-subject", "-in", str(workdir / "signer.pem")],
            capture_output=True,
            check=True,
        )
        signer = subject.stdout.decode().strip()
    return OpensslVerdict(done.returncode == 0, signer, (done.stdout + done.stderr).decode())


def openssl_decrypt(body: bytes, cert: Path, key: Path, workdir: Path) -> bytes:
    """``openssl cms -decrypt`` of an enveloped-data DER body; the decrypted bytes."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "enc.der").write_bytes(body)
    done = subprocess.run(
        [
            "openssl", "cms", "-decrypt", "-binary", "-inform", "DER",
            "-in", str(workdir / "enc.der"), "-recip", str(cert), "-inkey", str(key),
            "-out", str(workdir / "plain.bin"),
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return (workdir / "plain.bin").read_bytes()
