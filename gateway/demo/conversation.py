"""The demo: Alice on XMPP and Bob on SIP talk through cpimgw, on this machine.

1. Prepare a scratch folder: test certificates (a CA, a signer for each user), Alice's XMPP
   account, and ``gateway.toml`` — the operators' example ``examples/gateway.toml`` with
   only the ports, paths and secret of this run changed.
2. Start Prosody (``examples/prosody.cfg.lua``), Kamailio (``examples/kamailio.cfg``) and
   ``cpimgw run -c gateway.toml``, all on 127.0.0.1.
3. Alice logs in with an XMPP client (slixmpp); Bob's SIP phone (cpimgw's own SIP stack as a
   client) registers with Kamailio. They exchange messages both ways (non-ASCII text,
   subjects in two languages), signed messages verified at the far end, presence both
   ways, and messages to users who do not exist.
4. Print the summary table and stop everything started — also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import logging
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.sip.codec import Request
from canonical import cpim, smime
from canonical.envelope import Payload
from canonical.presence import parse_pidf
from gateway.demo import servers
from gateway.demo.certificates import Authority, Signer, make_authority, make_signer
from gateway.demo.client import XmppClient, bare_from, children, find, local_name
from gateway.demo.phone import SipPhone
from gateway.demo.template import TomlValue, render_example
from gateway.demo.terminal import StepResult, Terminal

XMPP_DOMAIN = "xmpp.example.com"  # Alice's XMPP server
COMPONENT = "sip.example.com"  # the gateway's component: bob@sip.example.com is Bob
SIP_DOMAIN = "example.net"  # Bob's SIP network
ALICE = f"alice@{XMPP_DOMAIN}"
BOB_JID = f"bob@{COMPONENT}"
BOB_SIP = f"sip:bob@{SIP_DOMAIN}"
ALICE_SIP = f"sip:alice@{XMPP_DOMAIN}"
CARRIAGE_NS = "urn:cpimgw:carriage:0"
E2E_NS = "urn:ietf:params:xml:ns:xmpp-e2e"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
STEP_TIMEOUT = 20.0


class StepError(Exception):
    """A step did not see what it expected; the text says what."""


@dataclass
class Demo:
    """Everything one run starts, so that all of it can be stopped."""

    folder: Path
    term: Terminal
    verbose: bool
    services: list[servers.Service] = field(default_factory=list)
    authority: Authority | None = None
    alice_signer: Signer | None = None
    bob_signer: Signer | None = None
    alice: XmppClient | None = None
    bob: SipPhone | None = None
    c2s_port: int = 0
    kamailio_port: int = 0
    sip_port: int = 0
    metrics_port: int = 0
    password: str = ""
    results: list[StepResult] = field(default_factory=list)

    # --------------------------------------------------------------------- set-up

    def prepare(self) -> tuple[dict[str, str], Path]:
        """Certificates, the XMPP account, the gateway config; returns Prosody's env."""
        now = dt.datetime.now(dt.UTC)
        certs = self.folder / "certs"
        self.authority = make_authority(certs, "cpimgw demo CA", now=now)
        self.alice_signer = make_signer(
            self.authority,
            certs,
            "alice",
            "Alice (XMPP user)",
            (f"im:{ALICE}", f"xmpp:{ALICE}"),
            now=now,
        )
        self.bob_signer = make_signer(
            self.authority,
            certs,
            "bob",
            "Bob (SIP user)",
            (BOB_SIP, f"im:bob@{SIP_DOMAIN}"),
            now=now,
        )
        self.term.said("certificates", f"CA and S/MIME signers for Alice and Bob in {certs}")
        secret = secrets.token_urlsafe(18)
        self.c2s_port = servers.free_port()
        component_port = servers.free_port()
        self.kamailio_port = servers.free_port("udp")
        self.sip_port = sip_port = servers.free_port("udp")
        self.metrics_port = servers.free_port()
        env = servers.prosody_env(
            self.folder / "prosody",
            domain=XMPP_DOMAIN,
            component=COMPONENT,
            secret=secret,
            c2s_port=self.c2s_port,
            component_port=component_port,
        )
        values: dict[str, TomlValue] = {
            "store.path": str(self.folder / "cpimgw.sqlite3"),
            "adapters.xmpp.port": component_port,
            "adapters.xmpp.secret": secret,
            "adapters.sip.listen": [{"transport": "udp", "host": "127.0.0.1", "port": sip_port}],
            "adapters.sip.proxy": f"sip:127.0.0.1:{self.kamailio_port};transport=udp",
            "presence.min_interval": "500ms",
            "metrics.listen": f"127.0.0.1:{self.metrics_port}",
        }
        config = self.folder / "gateway.toml"
        config.write_text(render_example(values))
        self.term.said(
            "gateway.toml",
            f"{config}: examples/gateway.toml with {len(values)} values changed "
            "(ports, store path, component secret, presence pacing)",
        )
        return env, config

    async def start(self) -> None:
        env, config = self.prepare()
        self.password = secrets.token_urlsafe(12)
        await asyncio.to_thread(servers.prosody_register, env, "alice", XMPP_DOMAIN, self.password)
        self.term.said("prosody", f"account {ALICE} created with prosodyctl")
        prosody = servers.prosody(self.folder / "prosody", env)
        kamailio = servers.kamailio(
            self.folder / "kamailio",
            port=self.kamailio_port,
            sip_domain=SIP_DOMAIN,
            gateway_domain=XMPP_DOMAIN,
            gateway=f"sip:127.0.0.1:{self.sip_port};transport=udp",
        )
        gateway = servers.gateway(self.folder, config, metrics_port=self.metrics_port)
        for service, what in (
            (prosody, f"XMPP server for {XMPP_DOMAIN}, c2s on 127.0.0.1:{self.c2s_port}"),
            (kamailio, f"SIP proxy for {SIP_DOMAIN}, on 127.0.0.1:{self.kamailio_port}"),
            (gateway, f"cpimgw run -c {config.name}, metrics on 127.0.0.1:{self.metrics_port}"),
        ):
            began = time.monotonic()
            self.services.append(service)
            await asyncio.to_thread(service.start)
            self.term.ok(
                f"{service.name:<9} pid {service.pid:<7} {what} "
                + self.term.dim(f"({time.monotonic() - began:.1f}s)")
            )

    async def meet_users(self) -> None:
        alice = XmppClient(ALICE, self.password)
        self.alice = alice
        await alice.login(self.c2s_port)
        self.term.ok(f"Alice logged in to Prosody as {alice.boundjid.full}")
        bob = SipPhone("bob", SIP_DOMAIN, ("127.0.0.1", self.kamailio_port), display="Bob")
        self.bob = bob
        await bob.start()
        answer = await bob.register()
        if answer.status != 200:
            raise StepError(f"Kamailio answered Bob's REGISTER with {answer.status}")
        self.term.ok(f"Bob's SIP phone registered with Kamailio as {BOB_SIP}")

    async def stop(self) -> None:
        """Stop whatever was started, in reverse order; never raises."""
        if self.alice is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.alice.logout(), 6)
        if self.bob is not None:
            with contextlib.suppress(Exception):
                await self.bob.close()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(service.stop)

    # --------------------------------------------------------------------- steps

    async def step(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        number = len(self.results) + 1
        self.term.step(number, what)
        began = time.monotonic()
        ok, detail = True, ""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await run()
        except TimeoutError:
            ok, detail = False, f"nothing arrived within {STEP_TIMEOUT:.0f}s"
        except StepError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:
            if self.verbose:
                logging.getLogger("cpimgw.demo").exception("step %d failed", number)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - began
        if not ok:
            self.term.fail(detail)
        self.results.append(StepResult(number, what, ok, seconds, detail))

    def _users(self) -> tuple[XmppClient, SipPhone]:
        assert self.alice is not None
        assert self.bob is not None
        return self.alice, self.bob

    async def text_xmpp_to_sip(self) -> None:
        alice, bob = self._users()
        text = "Hello Bob! Grüße aus Köln — ça va? 😀"
        subjects = [("en", "Lunch on Friday?"), ("de", "Mittagessen am Freitag?")]
        subject_xml = "".join(
            f"<subject xml:lang='{lang}'>{escape(value)}</subject>" for lang, value in subjects
        )
        mark = len(bob.received)
        alice.send_raw(
            f"<message to='{BOB_JID}' type='chat' id='demo-1' xml:lang='en'>{subject_xml}"
            f"<body>{escape(text)}</body></message>"
        )
        self.term.said("Alice", f"(XMPP) to {BOB_JID}: “{text}”")
        for lang, value in subjects:
            self.term.detail(f"subject [{lang}] {value}")
        got = await bob.wait_for(lambda r: r.method == "MESSAGE", after=mark)
        message = cpim.parse_body(got.body)
        self.term.said(
            "Bob's phone",
            f"(SIP) MESSAGE from {got.from_.uri.text}, Content-Type {got.get('Content-Type')}",
        )
        for subject in message.subjects:
            self.term.detail(f"Subject;lang={subject.lang}: {subject.text}")
        self.term.detail(f"text: {message.body.decode()}")
        if message.body.decode() != text:
            raise StepError(f"Bob read {message.body!r}, Alice wrote {text!r}")
        if [(s.lang, s.text) for s in message.subjects] != subjects:
            raise StepError(f"the subjects arrived as {message.subjects}")
        self.term.ok("text and both subjects arrived unchanged")

    async def text_sip_to_xmpp(self) -> None:
        alice, bob = self._users()
        text = "Friday works — à vendredi ! 金曜日に会いましょう ✓"
        subjects = [("fr", "Re : déjeuner"), ("ja", "Re: 昼食")]
        body = bytes(
            cpim.build(
                sender=BOB_SIP,
                to=[ALICE_SIP],
                datetime=utc_now(),
                subjects=subjects,
                content_type="text/plain; charset=utf-8",
                body=text.encode(),
            )
        )
        mark = len(alice.received)
        answer = await bob.message(ALICE_SIP, body, "message/cpim")
        self.term.said("Bob", f"(SIP) MESSAGE to {ALICE_SIP} (message/cpim): “{text}”")
        for lang, value in subjects:
            self.term.detail(f"Subject;lang={lang}: {value}")
        self.term.detail(f"SIP answer: {answer.status} {answer.reason}")
        if answer.status != 202:
            raise StepError(f"the gateway answered {answer.status} {answer.reason}")
        stanza = await alice.wait_for(
            lambda s: is_message_from(s, BOB_JID) and bool(children(s, "body")), after=mark
        )
        got_subjects = [(e.get(XML_LANG, ""), e.text or "") for e in children(stanza, "subject")]
        got_text = children(stanza, "body")[0].text or ""
        self.term.said("Alice's client", f"(XMPP) message from {stanza.get('from')}")
        for got_lang, value in got_subjects:
            self.term.detail(f"<subject xml:lang='{got_lang}'>{value}")
        self.term.detail(f"<body>{got_text}")
        if got_text != text or got_subjects != subjects:
            raise StepError(f"Alice read {got_subjects} {got_text!r}")
        self.term.ok("text and both subjects arrived unchanged")

    def _verify(self, payload: Payload, sender: str, who: str) -> None:
        """Check a signed object as the receiving user would: openssl, then cpimgw."""
        assert self.authority is not None
        check = self.folder / f"verify-{who}"
        check.mkdir(exist_ok=True)
        ok, verdict = openssl_verify(payload, self.authority.cert_file, check)
        self.term.detail(f"openssl cms -verify -binary on the exact bytes: {verdict}")
        if not ok:
            raise StepError(f"openssl refused the signature: {verdict}")
        result = smime.verify(
            payload,
            [self.authority.cert],
            now=dt.datetime.now(dt.UTC),
            expected_sender=sender,
        )
        if not result.valid:
            raise StepError(f"cpimgw's verifier refused it: {result.error}")
        self.term.ok(
            f"signature valid; signed by {result.signer_subject} "
            f"({', '.join(result.signer_uris)}), matching the sender {sender}"
        )

    def _signed(self, signer: Signer, sender: str, recipient: str, text: str) -> Payload:
        entity = bytes(
            cpim.build(
                sender=sender,
                to=[recipient],
                datetime=utc_now(),
                subjects=[("en", "Signed"), ("de", "Signiert")],
                content_type="text/plain; charset=utf-8",
                body=text.encode(),
                form="entity",
            )
        )
        return smime.sign(entity, signer.cert, signer.key)

    async def signed_xmpp_to_sip(self) -> None:
        alice, bob = self._users()
        assert self.alice_signer is not None
        text = "This one is signed by me — Alice ✓"
        signed = self._signed(self.alice_signer, f"im:{ALICE}", BOB_SIP, text)
        mime = f"Content-Type: {signed.content_type}\r\n\r\n".encode() + signed.body
        mark = len(bob.received)
        # RFC 3923 §4: the S/MIME entity in <e2e/>, CRs as character references
        alice.send_raw(
            f"<message to='{BOB_JID}' type='chat' id='demo-signed-1'>"
            f"<e2e xmlns='{E2E_NS}'>{escape(mime.decode()).replace(chr(13), '&#13;')}</e2e>"
            "</message>"
        )
        self.term.said(
            "Alice", f"(XMPP) signs “{text}” (S/MIME, RFC 3923 <e2e/>), {len(signed.body)} bytes"
        )
        got = await bob.wait_for(lambda r: r.method == "MESSAGE", after=mark)
        received = Payload(got.get("Content-Type") or "", got.body)
        self.term.said(
            "Bob's phone",
            f"(SIP) MESSAGE, {received.media_type}, {len(received.body)} bytes"
            + (", identical to what Alice signed" if received == signed else ", CHANGED"),
        )
        if received != signed:
            raise StepError("the signed object changed on the way")
        self._verify(received, f"im:{ALICE}", "bob")

    async def signed_sip_to_xmpp(self) -> None:
        alice, bob = self._users()
        assert self.bob_signer is not None
        text = "Signed reply from Bob — ✓ confirmed"
        signed = self._signed(self.bob_signer, BOB_SIP, ALICE_SIP, text)
        mark = len(alice.received)
        answer = await bob.message(ALICE_SIP, signed.body, signed.content_type)
        self.term.said(
            "Bob",
            f"(SIP) signs “{text}” (multipart/signed), answer {answer.status} {answer.reason}",
        )
        if answer.status != 202:
            raise StepError(f"the gateway answered {answer.status} {answer.reason}")
        stanza = await alice.wait_for(lambda s: is_message_from(s, BOB_JID), after=mark)
        carriage = find(stanza, CARRIAGE_NS, "cpim")
        if carriage is None:
            raise StepError("the stanza has no exact copy (carriage element)")
        received = Payload(carriage.get("type", ""), decode64(carriage.text or ""))
        shown = children(stanza, "body")
        self.term.said(
            "Alice's client",
            f"(XMPP) message with <e2e/> and the exact copy, {len(received.body)} bytes"
            + (", identical to what Bob signed" if received == signed else ", CHANGED"),
        )
        if shown:
            self.term.detail(f"shown as: {(shown[0].text or '').splitlines()[0]}")
        if received != signed:
            raise StepError("the signed object changed on the way")
        self._verify(received, BOB_SIP, "alice")

    async def presence_sip_to_xmpp(self) -> None:
        alice, bob = self._users()
        await bob.publish(pidf(BOB_SIP, "open", "At my desk ☕"))
        self.term.said("Bob", "(SIP) publishes his presence: open, “At my desk ☕”")
        mark = len(alice.received)
        alice.send_raw(f"<presence to='{BOB_JID}' type='subscribe'/>")
        self.term.said("Alice", f"(XMPP) subscribes to {BOB_JID}")
        await alice.wait_for(
            lambda s: (
                local_name(s) == "presence"
                and bare_from(s) == BOB_JID
                and s.get("type") == "subscribed"
            ),
            after=mark,
        )
        self.term.said("Alice's client", "subscription approved")
        first = await alice.wait_for(presence_with(BOB_JID, "At my desk ☕"), after=mark)
        self.term.said("Alice's client", f"sees {first.get('from')}: {describe_presence(first)}")
        mark = len(alice.received)
        await bob.publish(pidf(BOB_SIP, "open", "In a meeting until 3 pm", away=True))
        self.term.said("Bob", "(SIP) changes it: away, “In a meeting until 3 pm”")
        update = await alice.wait_for(presence_with(BOB_JID, "In a meeting until 3 pm"), after=mark)
        self.term.said("Alice's client", f"sees {update.get('from')}: {describe_presence(update)}")
        self.term.ok("Bob's presence and its change reached Alice")

    async def presence_xmpp_to_sip(self) -> None:
        alice, bob = self._users()
        alice.send_raw("<presence><status>Writing the quarterly report</status></presence>")
        mark_alice, mark_bob = len(alice.received), len(bob.received)
        answer = await bob.subscribe(ALICE_SIP)
        self.term.said("Bob", f"(SIP) SUBSCRIBE to {ALICE_SIP}: {answer.status} {answer.reason}")
        if answer.status >= 300:
            raise StepError(f"the gateway answered {answer.status} {answer.reason}")
        request = await alice.wait_for(
            lambda s: (
                local_name(s) == "presence"
                and s.get("type") == "subscribe"
                and bare_from(s) == BOB_JID
            ),
            after=mark_alice,
        )
        self.term.said("Alice's client", f"asks: may {request.get('from')} see your presence? yes")
        alice.send_raw(f"<presence to='{BOB_JID}' type='subscribed'/>")
        first = await bob.wait_for(notify_with("Writing the quarterly report"), after=mark_bob)
        self.term.said(
            "Bob's phone", f"NOTIFY ({first.get('Subscription-State')}): {describe_pidf(first)}"
        )
        mark_bob = len(bob.received)
        alice.send_raw("<presence><show>away</show><status>Out for lunch</status></presence>")
        self.term.said("Alice", "(XMPP) goes away: “Out for lunch”")
        update = await bob.wait_for(notify_with("Out for lunch"), after=mark_bob)
        self.term.said(
            "Bob's phone", f"NOTIFY ({update.get('Subscription-State')}): {describe_pidf(update)}"
        )
        await bob.unsubscribe(ALICE_SIP)
        self.term.ok("Alice's presence and its change reached Bob")

    async def unknown_sip_user(self) -> None:
        alice, _ = self._users()
        nobody = f"nobody@{COMPONENT}"
        mark = len(alice.received)
        alice.send_raw(
            f"<message to='{nobody}' type='chat' id='demo-lost'>"
            "<body>Anyone there?</body></message>"
        )
        self.term.said("Alice", f"(XMPP) writes to {nobody}, who does not exist on the SIP side")
        error = await alice.wait_for(
            lambda s: is_message_from(s, nobody) and s.get("type") == "error", after=mark
        )
        condition, text = stanza_error(error)
        self.term.said("Alice's client", f"gets an XMPP error: <{condition}/> “{text}”")
        if condition != "item-not-found":
            raise StepError(f"expected item-not-found, got {condition}")
        self.term.ok("the failure came back to Alice as an XMPP error")

    async def unknown_xmpp_user(self) -> None:
        _, bob = self._users()
        nobody = f"sip:nobody@{XMPP_DOMAIN}"
        mark = len(bob.received)
        answer = await bob.message(nobody, b"Anyone there?", "text/plain;charset=UTF-8")
        self.term.said(
            "Bob",
            f"(SIP) MESSAGE to {nobody}, who has no XMPP account: {answer.status} {answer.reason}",
        )
        notice = await bob.wait_for(lambda r: r.method == "MESSAGE", after=mark)
        self.term.said("Bob's phone", f"(SIP) MESSAGE from {notice.from_.uri.text}:")
        self.term.detail(notice.body.decode("utf-8", "replace").splitlines()[0])
        if notice.get("Reason"):
            self.term.detail(f"Reason: {notice.get('Reason')}")
        if "could not be delivered" not in notice.body.decode("utf-8", "replace"):
            raise StepError("the notice does not say the message was not delivered")
        self.term.ok("the failure came back to Bob as a SIP message")

    async def counters(self) -> None:
        text = await asyncio.to_thread(servers.http_text, self.metrics_port, "/metrics")
        totals: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("cpimgw_messages_in_total", "cpimgw_messages_out_total"):
                if line.startswith(name + "{") and 'operation="message"' in line:
                    totals[name] = totals.get(name, 0) + float(line.rsplit(" ", 1)[1])
        self.term.detail(
            f"cpimgw /metrics: {totals.get('cpimgw_messages_in_total', 0):.0f} messages "
            f"accepted, {totals.get('cpimgw_messages_out_total', 0):.0f} delivered"
        )


# ------------------------------------------------------------------------- helpers


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def decode64(text: str) -> bytes:
    return base64.b64decode(text)


def is_message_from(stanza: ET.Element, sender: str) -> bool:
    return local_name(stanza) == "message" and bare_from(stanza) == sender


def presence_with(sender: str, status: str) -> Callable[[ET.Element], bool]:
    def match(stanza: ET.Element) -> bool:
        if local_name(stanza) != "presence" or bare_from(stanza) != sender:
            return False
        return any((s.text or "") == status for s in children(stanza, "status"))

    return match


def describe_presence(stanza: ET.Element) -> str:
    kind = stanza.get("type") or "available"
    show = next((s.text for s in children(stanza, "show")), None)
    status = next((s.text for s in children(stanza, "status")), None)
    return kind + (f" ({show})" if show else "") + (f", “{status}”" if status else "")


def notify_with(note: str) -> Callable[[Request], bool]:
    def match(request: Request) -> bool:
        if request.method != "NOTIFY" or not request.body:
            return False
        try:
            document = parse_pidf(request.body)
        except ValueError:
            return False
        return any(n.text == note for t in document.tuples for n in t.notes)

    return match


def describe_pidf(request: Request) -> str:
    document = parse_pidf(request.body)
    notes = [n.text for t in document.tuples for n in t.notes]
    return f"{document.entity} is {document.basic}" + (f", “{notes[0]}”" if notes else "")


def pidf(entity: str, basic: str, note: str, *, away: bool = False) -> bytes:
    person = (
        "<dm:person id='p1'><rpid:activities><rpid:away/></rpid:activities></dm:person>"
        if away
        else ""
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<presence xmlns='urn:ietf:params:xml:ns:pidf' "
        "xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' "
        f"xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='{entity}'>"
        f"<tuple id='phone'><status><basic>{basic}</basic></status>"
        f"<note xml:lang='en'>{escape(note)}</note></tuple>{person}</presence>"
    ).encode()


def stanza_error(stanza: ET.Element) -> tuple[str, str]:
    for error in children(stanza, "error"):
        condition, text = "", ""
        for element in error:
            if element.tag.startswith(f"{{{STANZAS_NS}}}"):
                if local_name(element) == "text":
                    text = element.text or ""
                else:
                    condition = local_name(element)
        return condition, text
    return "", ""


def openssl_verify(payload: Payload, ca_file: Path, folder: Path) -> tuple[bool, str]:
    """``openssl cms -verify`` on the exact bytes: part 1 as is, the signature as DER
    (canonical/vectors/README.md); whether it verified, and openssl's first line."""
    match = re.search(r'boundary="?([^";]+)"?', payload.content_type)
    if match is None:
        return False, "no boundary in the Content-Type"
    dash = b"--" + match.group(1).encode()
    body = payload.body
    start = body.index(dash + b"\r\n") + len(dash) + 2
    end = body.index(b"\r\n" + dash, start)
    second = end + 2 + len(dash) + 2
    part2 = body[second : body.index(b"\r\n" + dash, second)]
    (folder / "part1.bin").write_bytes(body[start:end])
    (folder / "sig.der").write_bytes(base64.b64decode(part2.partition(b"\r\n\r\n")[2]))
    done = subprocess.run(  # noqa: S603 - fixed binary, our files
        [
            servers.find_binary("openssl", "openssl"),
            "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(folder / "sig.der"), "-content", str(folder / "part1.bin"),
            "-CAfile", str(ca_file), "-purpose", "any", "-out", str(folder / "content.bin"),
        ],
        capture_output=True,
        check=False,
        timeout=30,
    )  # fmt: skip
    lines = (done.stderr + done.stdout).decode("utf-8", "replace").strip().splitlines()
    return done.returncode == 0, lines[0] if lines else f"exit status {done.returncode}"


# ------------------------------------------------------------------------- main


async def play(demo: Demo) -> int:
    term = demo.term
    term.title("cpimgw demo: an XMPP user and a SIP user talk through the gateway")
    term.line(
        term.dim(
            f"Alice uses XMPP ({ALICE}); Bob uses SIP ({BOB_SIP}). Everything runs on 127.0.0.1."
        )
    )
    term.section(f"Setting up in {demo.folder}")
    await demo.start()
    term.section("The users")
    await demo.meet_users()
    await demo.step(
        "Alice (XMPP) -> Bob (SIP): text, subjects in 2 languages", demo.text_xmpp_to_sip
    )
    await demo.step(
        "Bob (SIP) -> Alice (XMPP): text, subjects in 2 languages", demo.text_sip_to_xmpp
    )
    await demo.step("Alice -> Bob: signed, verified by Bob", demo.signed_xmpp_to_sip)
    await demo.step("Bob -> Alice: signed, verified by Alice", demo.signed_sip_to_xmpp)
    await demo.step("Presence: Alice watches Bob", demo.presence_sip_to_xmpp)
    await demo.step("Presence: Bob watches Alice", demo.presence_xmpp_to_sip)
    await demo.step("Alice -> unknown SIP user: XMPP error", demo.unknown_sip_user)
    await demo.step("Bob -> unknown XMPP user: SIP notice", demo.unknown_xmpp_user)
    return 0 if all(r.ok for r in demo.results) else 1


async def run(options: argparse.Namespace) -> int:
    term = Terminal()
    folder = Path(tempfile.mkdtemp(prefix="cpimgw-demo-"))
    demo = Demo(folder, term, options.verbose)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    status = 1
    began = time.monotonic()
    try:
        status = await play(demo)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        term.line()
        term.fail("interrupted")
        status = 130
    except (servers.ServiceError, StepError, RuntimeError, OSError, ValueError) as exc:
        if options.verbose:
            logging.getLogger("cpimgw.demo").exception("the demo stopped")
        term.line()
        term.fail(f"the demo could not go on: {first_lines(str(exc))}")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        # a second Ctrl-C while stopping is ignored: everything started must be stopped
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if demo.results:
                term.section("Summary")
                term.table(demo.results)
                passed = sum(r.ok for r in demo.results)
                term.line(
                    f"  {passed} of {len(demo.results)} steps passed, "
                    f"{time.monotonic() - began:.1f}s in all"
                )
                if demo.services and demo.services[-1].alive():
                    await demo.counters()
            term.section("Stopping")
            await demo.stop()
            stopped = ", ".join(f"{s.name} (pid {s.pid})" for s in reversed(demo.services))
            term.ok(f"stopped {stopped or 'nothing (nothing was running)'}")
            if status != 0 or options.keep:
                term.line(f"  logs and files are kept in {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
                term.line(term.dim("  scratch folder removed (keep it with --keep)"))
        finally:
            signal.signal(signal.SIGINT, previous)
    return status


def first_lines(text: str, count: int = 12) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:count]) + ("\n..." if len(lines) > count else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo",
        description="Play a conversation between an XMPP user and a SIP user through cpimgw, "
        "with real Prosody and Kamailio on 127.0.0.1 (make demo).",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
