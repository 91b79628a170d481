"""SIP side benchmark, every figure next to a baseline measured in the same run.

1. Codec: parse + serialise of a typical MESSAGE with cpimgw's byte-keeping codec, against a
   naive split parser (split head/body, split lines at the first colon, join back) — the
   cheapest thing that could possibly work, and loses order, case, folding and duplicates.
2. Network: MESSAGE transactions per second from the SIP adapter over loopback UDP through
   a real Kamailio to a SIPp UAS, spread over many destination users (RFC 3428 §8 allows
   one outstanding MESSAGE per destination), next to SIPp -> Kamailio -> SIPp with the same
   users, message size and window, measured in the same run as the ceiling.

Run: ``python -m benchmarks.sip [--messages N] [--users U] [--window W]``. Kamailio runs with
``-m 1024`` (a finished MESSAGE transaction lives about 5 s in its wait timer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adapters.contract import AdapterContext, Receipt
from adapters.sip.adapter import SipAdapter, SipConfig
from adapters.sip.codec import parse
from adapters.sip.mapping import SipMapper
from canonical import cpim
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload
from tests.servers.kamailio import kamailio
from tests.servers.process import free_port
from tests.servers.sipp import run_sipp, sipp_uas

CPIM_BODY = bytes(
    cpim.build(
        sender="sip:alice@xmpp.test",
        to=["sip:bob@sip.test"],
        datetime="2024-05-01T12:00:00Z",
        content_type="text/plain;charset=utf-8",
        body="load test message Grüße ✓".encode(),
    )
)
MESSAGE = (
    "MESSAGE sip:bob@sip.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-bench-1;rport;received=127.0.0.1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-7721;rport=5070\r\n"
    'From: "Alice" <sip:alice@xmpp.test>;tag=8f2a\r\n'
    "To: <sip:bob@sip.test>\r\n"
    "Call-ID: 5d1c9e0a2b@cpimgw\r\n"
    "CSeq: 1 MESSAGE\r\n"
    "Max-Forwards: 69\r\n"
    "Cpimgw-Trace: gw1\r\n"
    "Content-Type: message/cpim\r\n"
    f"Content-Length: {len(CPIM_BODY)}\r\n\r\n"
).encode() + CPIM_BODY


def rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def naive() -> bytes:
    """The baseline: split at the blank line, split lines at the first colon, join back."""
    head, body = MESSAGE.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = [line.split(b":", 1) for line in lines[1:]]
    out = [lines[0]] + [k + b":" + v for k, v in headers]
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def ours() -> bytes:
    """cpimgw: parse keeping every line, serialise (unmodified: the kept bytes)."""
    return bytes(parse(MESSAGE))


def ours_edit() -> bytes:
    """cpimgw as a relay hop: parse, replace Max-Forwards (that line only), serialise."""
    return bytes(parse(MESSAGE).with_replaced("Max-Forwards", "68"))


def ours_views() -> object:
    """cpimgw reading what a UAS reads: Call-ID, CSeq, From, To, every Via, Content-Type."""
    msg = parse(MESSAGE)
    return (msg.call_id, msg.cseq, msg.from_, msg.to, msg.vias, msg.content_type)


MAPPER = SipMapper()


def ours_canonical() -> object:
    """cpimgw inbound: bytes -> request -> canonical envelope."""
    return MAPPER.to_canonical(MAPPER.decode(MESSAGE), origin=Origin("sip"), received_at=0.0)


def codec() -> dict[str, float]:
    assert naive() == MESSAGE  # the baseline works on this input (no folding, no compact)
    assert ours() == MESSAGE
    results = {
        "naive split + join (baseline)": rate(naive),
        "parse + serialise (unmodified)": rate(ours),
        "parse + edit Max-Forwards + serialise": rate(ours_edit),
        "parse + typed views (Call-ID, CSeq, From, To, Via, Content-Type)": rate(ours_views),
        "parse + map to canonical envelope": rate(ours_canonical),
    }
    base = results["naive split + join (baseline)"]
    print(f"\ncodec ({len(MESSAGE)}-byte MESSAGE)")
    for name, value in results.items():
        print(f"  {name:<66} {value:>10,.0f}/s  x{value / base:.2f}")
    return results


async def _bench_gateway(
    work: Path, proxy_port: int, users: int, messages: int, window: int
) -> tuple[float, int]:
    port = free_port("udp")
    config = SipConfig.model_validate(
        {
            "listen": [{"transport": "udp", "port": port}, {"transport": "tcp", "port": port}],
            "proxy": f"sip:127.0.0.1:{proxy_port};transport=udp",
            "domains": ["xmpp.test"],
        }
    )
    logging.getLogger("cpimgw.bench").setLevel(logging.ERROR)
    adapter = SipAdapter("sip", config, AdapterContext(logger=logging.getLogger("cpimgw.bench")))

    async def deliver(envelope: Envelope) -> Receipt:
        return Receipt(envelope.identity)

    task = asyncio.create_task(adapter.run(deliver))
    await adapter.started()
    gate = asyncio.Semaphore(window)
    run_id = f"{int(time.time() * 1000) % 16**8:08x}"
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        env = Envelope(
            Operation.MESSAGE,
            sender="xmpp:alice@xmpp.test",
            recipient=f"sip:sink{i % users}@sip.test",
            payload=Payload(CPIM, CPIM_BODY),
            identity=f"{run_id}{i:024x}",
            origin=Origin("xmpp"),
        )
        async with gate:
            try:
                await adapter.send(env)
            except Exception:  # counted, not raised: the figure says how many failed
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(messages)))
    elapsed = time.perf_counter() - start
    await adapter.stop()
    await task
    return messages / elapsed, failures


_SUCCESS = re.compile(r"Successful call\s+\|[^|]*\|\s+(\d+)")


def network(users: int, messages: int, window: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cpimgw-sip-bench-") as tmp:
        work = Path(tmp)
        sink = free_port("udp")
        users_file = work / "users.csv"
        users_file.write_text("SEQUENTIAL\n" + "".join(f"sink{i}\n" for i in range(users)))
        with (
            sipp_uas("uas_message.xml", work / "uas", port=sink, timeout=600) as _uas,
            kamailio(
                work / "kamailio",
                gateway="sip:127.0.0.1:9;transport=udp",
                sink_port=sink,
                shm_mb=1024,
            ) as k,
        ):
            start = time.perf_counter()
            run = run_sipp(
                "uac_message_rate.xml",
                work / "uac",
                remote=f"127.0.0.1:{k.port}",
                keys={"dest_domain": "sip.test"},
                calls=messages,
                rate=100_000,
                timeout=300,
                extra=["-l", str(window), "-inf", str(users_file)],
            )
            wall = time.perf_counter() - start
            ok = _SUCCESS.findall(run.output)
            delivered = int(ok[-1]) if ok else 0
            sipp_rate = delivered / wall  # wall time: SIPp's own screen resets its clock
            sipp_failed = messages - delivered
            time.sleep(6)  # let Kamailio's wait timer drain the ceiling run's transactions
            gw_rate, gw_failed = asyncio.run(_bench_gateway(work, k.port, users, messages, window))
    print(
        f"\nMESSAGE through Kamailio over loopback UDP ({messages} messages, {users} users, "
        f"window {window})"
    )
    print(
        f"  {'SIPp -> Kamailio -> SIPp (ceiling)':<40} {sipp_rate:>10,.0f}/s  failed {sipp_failed}"
    )
    print(
        f"  {'cpimgw SipAdapter.send -> Kamailio -> SIPp':<40} {gw_rate:>10,.0f}/s  "
        f"failed {gw_failed}  x{gw_rate / sipp_rate:.2f} of the ceiling"
    )
    return {"sipp": sipp_rate, "gateway": gw_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--codec-only", action="store_true")
    args = parser.parse_args()
    codec()
    if not args.codec_only:
        network(args.users, args.messages, args.window)


if __name__ == "__main__":
    main()
