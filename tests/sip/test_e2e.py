"""The SIP adapter against a real Kamailio (registrar, proxy, presence server) and SIPp UAs.

Flows: SIP UA -> Kamailio -> gateway MESSAGE (message/cpim and signed, bytes identical at
the canonical layer); gateway -> Kamailio -> SIP UA MESSAGE (bytes identical at the UA,
read from SIPp's trace); digest challenges answered (MD5, SHA-256); UDP loss recovered by
retransmission (through a lossy relay of the tests' own); TLS with verification;
SUBSCRIBE/NOTIFY both ways with PIDF; 415 fallback; 413 for oversize; failure reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.sip.codec import Request, Response, parse
from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from canonical.errors import DeliveryError, GatewayError, Reason
from canonical.presence import parse_pidf
from tests.servers.kamailio import GW_PASSWORD, GW_USER
from tests.servers.sipp import SippUas, run_sipp, sipp_uas
from tests.sip.conftest import Stack, _stack, running
from tests.sip.relay import LossyUdpRelay

pytestmark = pytest.mark.e2e

VECTORS = Path(__file__).resolve().parents[2] / "canonical" / "vectors"
CPIM_BODY = (
    "From: Alice <sip:alice@sip.test>\r\nTo: Carol <sip:carol@xmpp.test>\r\n"
    "DateTime: 2024-05-01T12:00:00Z\r\nNS: ext <urn:example:ext>\r\next.Note: kept\r\n\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nHällo ✓ 😀 <&>\r\n\tend"
).encode()
PIDF = (
    "<?xml version='1.0' encoding='UTF-8'?>\n<presence xmlns='urn:ietf:params:xml:ns:pidf' "
    "entity='sip:carol@xmpp.test'><tuple id='t1'><status><basic>open</basic></status>"
    "<note>Grüße ✓</note></tuple></presence>\n"
).encode()


def sipp_file(directory: Path, name: str, body: bytes) -> Path:
    """SIPp appends CRLF after an inserted file, so the file holds the body minus it."""
    assert body.endswith(b"\r\n")
    path = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body[:-2])
    return path


def statuses(messages: list[bytes]) -> list[int]:
    out = []
    for data in messages:
        msg = parse(data)
        if isinstance(msg, Response):
            out.append(msg.status)
    return out


def requests(messages: list[bytes], method: str) -> list[Request]:
    out = []
    for data in messages:
        msg = parse(data)
        if isinstance(msg, Request) and msg.method == method:
            out.append(msg)
    return out


async def uac(stack: Stack, scenario: str, name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(
        run_sipp,
        scenario,
        stack.workdir / name,
        remote=f"127.0.0.1:{stack.kamailio.port}",
        name=name,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def registered(
    stack: Stack, user: str, *, scenario: str = "uas_message.xml", calls: int = 1
) -> AsyncIterator[SippUas]:
    """A SIPp UAS registered as ``user@sip.test``; it exits after ``calls`` calls."""
    with sipp_uas(scenario, stack.workdir / user, name=user, calls=calls) as uas:
        reg = await uac(
            stack,
            "register.xml",
            f"{user}-register",
            service=user,
            keys={"contact_port": str(uas.port), "expires": "600"},
        )
        assert reg.returncode == 0, reg.output
        yield uas


async def finished(uas: SippUas, within: float = 15.0) -> list[bytes]:
    """Wait for the UAS to exit (it flushes its trace then) and return what it received."""
    assert uas.process.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(uas.process.proc.wait, within)
    return uas.received()


def outbound(payload: Payload, recipient: str, *, identity: str = "a" * 32) -> Envelope:
    return Envelope(
        Operation.MESSAGE,
        sender="xmpp:alice@xmpp.test/phone",
        recipient=recipient,
        payload=payload,
        identity=identity,
        origin=Origin("xmpp", reply_to="xmpp:alice@xmpp.test/phone"),
    )


# ------------------------------------------------------------------- SIP UA -> gateway


async def test_sip_ua_message_cpim_reaches_the_gateway_byte_for_byte(stack: Stack) -> None:
    body = CPIM_BODY + b"\r\n"
    body_file = sipp_file(stack.workdir / "in-cpim", "body.txt", body)
    async with running(stack.config()) as gw:
        run = await uac(
            stack,
            "uac_message.xml",
            "in-cpim",
            service="carol",
            keys={"dest_domain": "xmpp.test", "ctype": "message/cpim", "body_file": str(body_file)},
        )
        assert run.returncode == 0, run.output
        assert statuses(run.received()) == [202]
        env = gw.recorder.envelopes[0]
        assert env.payload == Payload("message/cpim", body)
        assert (env.sender, env.recipient) == ("sip:alice@sip.test", "sip:carol@xmpp.test")
        assert env.max_forwards == 69  # Kamailio's hop
        assert cpim.parse_body(env.payload.body).body.endswith(b"\tend\r\n")


async def test_signed_body_reaches_the_gateway_untouched(stack: Stack) -> None:
    data = (VECTORS / "signed" / "s01-multipart-signed.mime").read_bytes()
    head, body = data.split(b"\r\n\r\n", 1)
    content_type = head.decode().split(":", 1)[1].strip()
    body_file = sipp_file(stack.workdir / "in-signed", "signed.txt", body)
    async with running(stack.config()) as gw:
        run = await uac(
            stack,
            "uac_message.xml",
            "in-signed",
            service="carol",
            keys={"dest_domain": "xmpp.test", "ctype": content_type, "body_file": str(body_file)},
        )
        assert run.returncode == 0, run.output
        assert statuses(run.received()) == [202]
        env = gw.recorder.envelopes[0]
        assert env.payload is not None
        assert env.payload.body == body
        assert env.payload.content_type == content_type
        assert env.payload.is_signed


async def test_refusal_by_the_core_becomes_the_mapped_sip_status(stack: Stack) -> None:
    body_file = sipp_file(stack.workdir / "in-refused", "body.txt", b"hello\r\n")
    async with running(stack.config()) as gw:
        gw.recorder.refuse = GatewayError("no such user", reason=Reason.UNKNOWN_DESTINATION)
        run = await uac(
            stack,
            "uac_message.xml",
            "in-refused",
            service="nobody",
            keys={"dest_domain": "xmpp.test", "ctype": "text/plain", "body_file": str(body_file)},
        )
        assert run.returncode == 0, run.output
        assert statuses(run.received()) == [404]


async def test_oversized_inbound_message_gets_413(stack: Stack) -> None:
    body_file = sipp_file(stack.workdir / "in-413", "big.txt", b"x" * 3000 + b"\r\n")
    async with running(stack.config(max_message_size=2000)) as gw:
        run = await uac(
            stack,
            "uac_message.xml",
            "in-413",
            service="carol",
            transport="TCP",
            keys={"dest_domain": "xmpp.test", "ctype": "text/plain", "body_file": str(body_file)},
        )
        assert run.returncode == 0, run.output
        assert statuses(run.received()) == [413]
        assert gw.recorder.envelopes == []


# ------------------------------------------------------------------- gateway -> SIP UA


async def test_gateway_message_reaches_the_ua_byte_for_byte(stack: Stack) -> None:
    async with running(stack.config()) as gw, registered(stack, "bob1") as uas:
        sent = await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:bob1@sip.test"))
        assert sent.detail.startswith("200")
        got = requests(await finished(uas), "MESSAGE")
        assert len(got) == 1
        assert got[0].body == CPIM_BODY
        assert got[0].get("Content-Type") == "message/cpim"
        assert got[0].call_id == f"{'a' * 32}@gw-test"


async def test_large_message_goes_over_tcp_and_arrives_whole(stack: Stack) -> None:
    body = cpim.build(
        sender="sip:alice@xmpp.test",
        to=["sip:bob2@sip.test"],
        content_type="text/plain; charset=utf-8",
        body=("ü" * 2500).encode(),
    )
    async with running(stack.config()) as gw, registered(stack, "bob2") as uas:
        await gw.adapter.send(outbound(Payload(CPIM, bytes(body)), "sip:bob2@sip.test"))
        got = requests(await finished(uas), "MESSAGE")
        assert got[0].body == bytes(body)
        assert gw.metrics.counts.get("sip_udp_oversize_total") == 1


async def test_oversize_without_tcp_fallback_fails_as_413(stack: Stack) -> None:
    async with running(stack.config(tcp_fallback=False)) as gw:
        with pytest.raises(DeliveryError) as err:
            await gw.adapter.send(outbound(Payload(CPIM, b"x" * 2000), "sip:bob@sip.test"))
        assert err.value.reason is Reason.TOO_LARGE
        assert not err.value.retryable
        assert err.value.status == "413 Request Entity Too Large"


async def test_unknown_sip_user_is_a_permanent_failure(stack: Stack) -> None:
    async with running(stack.config()) as gw:
        with pytest.raises(DeliveryError) as err:
            await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:ghost@sip.test"))
        assert (err.value.reason, err.value.retryable) == (Reason.UNKNOWN_DESTINATION, False)
        assert err.value.status == "404 Not Found"


async def test_udp_loss_is_recovered_by_retransmission(stack: Stack) -> None:
    relay = LossyUdpRelay(
        ("127.0.0.1", stack.kamailio.port),
        lambda i, data, direction: i == 0 and (direction == "down" or b"MESSAGE" in data[:8]),
    )
    port = await relay.start()
    config = stack.config(proxy=f"sip:127.0.0.1:{port};transport=udp")
    try:
        async with running(config) as gw, registered(stack, "bob3") as uas:
            await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:bob3@sip.test"))
            got = requests(await finished(uas), "MESSAGE")
            assert [m.body for m in got] == [CPIM_BODY]  # delivered once
            assert [d for d, _ in relay.log.dropped] == ["up", "down"]
    finally:
        relay.close()


async def test_415_gets_one_text_retry_for_unsigned_objects(stack: Stack) -> None:
    async with (
        running(stack.config()) as gw,
        registered(stack, "dave", scenario="uas_message_415.xml") as uas,
    ):
        sent = await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:dave@sip.test"))
        assert sent.detail.startswith("200")
        got = requests(await finished(uas), "MESSAGE")
        assert [m.get("Content-Type") for m in got] == ["message/cpim", "text/plain;charset=UTF-8"]
        assert got[1].body == "Hällo ✓ 😀 <&>\r\n\tend".encode()
        assert got[0].call_id == got[1].call_id
        assert got[1].cseq.number == got[0].cseq.number + 1
        assert gw.metrics.counts["sip_text_fallbacks_total"] == 1


async def test_415_for_a_signed_object_fails_clearly(stack: Stack) -> None:
    data = (VECTORS / "signed" / "s01-multipart-signed.mime").read_bytes()
    head, body = data.split(b"\r\n\r\n", 1)
    payload = Payload(head.decode().split(":", 1)[1].strip(), body)
    async with (
        running(stack.config()) as gw,
        registered(stack, "erin", scenario="uas_message_415.xml") as uas,
    ):
        with pytest.raises(DeliveryError) as err:
            await gw.adapter.send(outbound(payload, "sip:erin@sip.test"))
        assert (err.value.reason, err.value.retryable) == (Reason.UNSUPPORTED_MEDIA, False)
        assert "signature" in str(err.value)
        uas.process.stop()
        got = requests(uas.received(), "MESSAGE")
        assert len(got) == 1
        assert got[0].body == body


async def test_failure_report_reaches_the_sip_sender(stack: Stack) -> None:
    failed = outbound(Payload(CPIM, CPIM_BODY), "xmpp:nobody@xmpp.test").replace(
        sender="sip:frank@sip.test", origin=Origin("sip", reply_to="sip:frank@sip.test")
    )
    async with running(stack.config()) as gw, registered(stack, "frank") as uas:
        await gw.adapter.report(
            failed, GatewayError("no such user", reason=Reason.UNKNOWN_DESTINATION)
        )
        got = requests(await finished(uas), "MESSAGE")
        assert len(got) == 1
        notice = gw.adapter.mapper.error_from_native(got[0])
        assert notice is not None
        assert notice.reason is Reason.UNKNOWN_DESTINATION
        assert "could not be delivered" in got[0].body.decode()


# ------------------------------------------------------------------------ digest, TLS


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_digest_challenge_from_kamailio_is_answered(tmp_path: Path, algorithm: str) -> None:
    with _stack(tmp_path, auth_algorithm=algorithm) as stack:
        good = stack.config(credentials=[{"username": GW_USER, "password": GW_PASSWORD}])
        async with running(good) as gw, registered(stack, "gina") as uas:
            await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:gina@sip.test"))
            got = requests(await finished(uas), "MESSAGE")
            assert [m.body for m in got] == [CPIM_BODY]
            assert gw.metrics.counts["sip_auth_answers_total{status=407}"] == 1
        assert "authenticated gateway for MESSAGE" in stack.kamailio.log
        bad = stack.config(credentials=[{"username": GW_USER, "password": "wrong"}])
        async with running(bad) as gw:
            with pytest.raises(DeliveryError) as err:
                await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:gina@sip.test"))
            assert (err.value.reason, err.value.retryable) == (Reason.UNAUTHENTICATED, False)


async def test_tls_to_the_proxy_verifies_its_certificate(stack: Stack) -> None:
    tls = f"sip:127.0.0.1:{stack.kamailio.tls_port};transport=tls"
    trusted = stack.config(proxy=tls, tls_ca_file=str(stack.kamailio.ca_file))
    async with running(trusted) as gw, registered(stack, "hank") as uas:
        await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:hank@sip.test"))
        got = requests(await finished(uas), "MESSAGE")
        assert [m.body for m in got] == [CPIM_BODY]
    async with running(stack.config(proxy=tls)) as gw:  # system trust roots: refused
        with pytest.raises(DeliveryError) as err:
            await gw.adapter.send(outbound(Payload(CPIM, CPIM_BODY), "sip:hank@sip.test"))
        assert "not trusted" in str(err.value)
        assert err.value.retryable


# --------------------------------------------------------------------------- presence


async def test_sip_watcher_subscribes_to_a_gateway_user_and_gets_pidf(stack: Stack) -> None:
    async with running(stack.config()) as gw:
        watcher = asyncio.create_task(
            uac(
                stack,
                "subscribe_watcher.xml",
                "watcher",
                service="carol",
                keys={"dest_domain": "xmpp.test"},
                timeout=30.0,
            )
        )
        sub = await gw.recorder.wait_for(lambda e: e.operation is Operation.SUBSCRIBE)
        assert (sub.sender, sub.recipient, sub.duration) == (
            "sip:watcher@sip.test",
            "sip:carol@xmpp.test",
            600,
        )
        base = Envelope(
            Operation.AUTHORIZE,
            sender="sip:carol@xmpp.test",
            recipient="sip:watcher@sip.test",
            payload=None,
            identity="b" * 32,
            origin=Origin("xmpp"),
            granted=True,
        )
        await gw.adapter.send(base)
        await gw.adapter.send(
            base.replace(
                operation=Operation.NOTIFY,
                granted=None,
                payload=Payload("application/pidf+xml", PIDF),
                attributes={"subscription.state": "active"},
            )
        )
        run = await watcher
        assert run.returncode == 0, run.output
        notifies = requests(run.received(), "NOTIFY")
        states = [n.get("Subscription-State") or "" for n in notifies]
        assert states[0].startswith("pending")
        assert states[1].startswith("active")
        assert notifies[2].body == PIDF
        assert states[3].startswith("terminated")
        await gw.recorder.wait_for(lambda e: e.operation is Operation.UNSUBSCRIBE)


async def test_gateway_user_watches_a_sip_user_through_kamailio(stack: Stack) -> None:
    pidf = stack.workdir / "ivan.pidf"
    pidf.write_bytes(PIDF.replace(b"carol@xmpp.test", b"ivan@sip.test").rstrip(b"\n"))
    published = await uac(
        stack, "publish_presence.xml", "publish", service="ivan", keys={"body_file": str(pidf)}
    )
    assert published.returncode == 0, published.output
    async with running(stack.config(subscription_expires=60)) as gw:
        gw.adapter.settings = gw.adapter.settings.model_copy(update={"subscription_expires": 60})
        sub = Envelope(
            Operation.SUBSCRIBE,
            sender="xmpp:alice@xmpp.test",
            recipient="sip:ivan@sip.test",
            payload=None,
            identity="c" * 32,
            origin=Origin("xmpp"),
            duration=8,
        )
        sent = await gw.adapter.send(sub)
        assert sent.detail.startswith("20")
        granted = await gw.recorder.wait_for(lambda e: e.operation is Operation.AUTHORIZE)
        assert granted.granted is True
        assert (granted.sender, granted.recipient) == ("sip:ivan@sip.test", "xmpp:alice@xmpp.test")
        state = await gw.recorder.wait_for(
            lambda e: e.operation is Operation.NOTIFY and e.payload is not None
        )
        assert state.payload is not None
        document = parse_pidf(state.payload.body)
        assert document.basic == "open"
        assert [n.text for t in document.tuples for n in t.notes] == ["Grüße ✓"]
        # the 8 s subscription is refreshed (at half time) before it expires: Kamailio
        # NOTIFYs again
        count = sum(1 for e in gw.recorder.envelopes if e.operation is Operation.NOTIFY)
        await gw.recorder.wait_for(
            lambda e: (
                sum(1 for x in gw.recorder.envelopes if x.operation is Operation.NOTIFY) > count
            ),
            within=16,
        )
        assert gw.metrics.counts.get("sip_resubscribes_total", 0) == 0
        left = await gw.adapter.send(sub.replace(operation=Operation.UNSUBSCRIBE, duration=None))
        assert left.detail.startswith("20")
