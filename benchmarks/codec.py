"""message/cpim codec throughput against two baselines measured in the same run.

What is measured, per input set (the shipped valid vectors, and a typical 400-byte IM):

- ``naive split``: ``bytes.partition``/``bytes.split`` on CRLF and ``": "``, the From/To
  values cut out between ``<`` and ``>``, and the bytes joined back together. It checks
  nothing: the practical ceiling for a Python parser. It splits the MIME block, the CPIM
  header lines into name and value, the entity's header block and the body apart, as
  cpimgw does before a view is read (cpimgw splits the entity's header lines on first
  use of ``entity_headers``/``content_type``, which neither side reads here).
- ``cpimgw lenient``: :func:`canonical.cpim.parse` (the relaying default), the ``sender``
  and ``to`` views, and ``bytes(msg)``.
- ``cpimgw strict``: the same with ``strict=True`` (full RFC 3862 §3.6 validation).
- ``stdlib email``: ``BytesParser(policy=email.policy.SMTP).parsebytes`` and
  ``as_bytes()`` — what a user would otherwise reach for (it does not even give the bytes
  back: see the "exact" column).

Run: ``python -m benchmarks.codec`` (``--markdown`` for the table in docs/performance.md,
``--seconds`` to change the time spent per measurement, ``--clock wall`` to time with the
wall clock instead of the thread's CPU time).
"""

from __future__ import annotations

import argparse
import email.policy
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from email.parser import BytesParser

from canonical import cpim, vectorset

#: A typical instant message as a SIP MESSAGE carries it inside a signed part: sender,
#: recipient, time, an IMDN request, a short UTF-8 text (400 bytes in all).
TYPICAL_IM = (
    b"Content-type: Message/CPIM\r\n"
    b"\r\n"
    b"From: Ada Lovelace <im:ada@example.com>\r\n"
    b"To: Charles Babbage <im:charles@example.net>\r\n"
    b"DateTime: 2024-03-05T14:05:00.250Z\r\n"
    b"NS: imdn <urn:ietf:params:imdn>\r\n"
    b"imdn.Message-ID: Qz7pLw2xV9kR\r\n"
    b"imdn.Disposition-Notification: positive-delivery, display\r\n"
    b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-ID: <im-7f3a22@example.com>\r\n"
    b"\r\n" + "Dear Charles, table is ready \u2014 Thursday?".encode()
)
assert len(TYPICAL_IM) == 400


def naive_round_trip(data: bytes) -> bytes:
    """The naive split parser: structure by ``partition``/``split``, From/To cut out."""
    mime, _, rest = data.partition(b"\r\n\r\n")
    head, _, entity = rest.partition(b"\r\n\r\n")
    entity_head, _, body = entity.partition(b"\r\n\r\n")
    headers = [line.split(b": ", 1) for line in head.split(b"\r\n")]
    sender = None
    to = []
    for pair in headers:
        if pair[0] == b"From":
            value = pair[1]
            sender = value[value.find(b"<") + 1 : -1].decode()
        elif pair[0] == b"To":
            value = pair[1]
            to.append(value[value.find(b"<") + 1 : -1].decode())
    _ = (sender, to)
    return b"\r\n\r\n".join((mime, b"\r\n".join(b": ".join(p) for p in headers), entity_head, body))


def unchecked_records_round_trip(data: bytes) -> bytes:
    """Reference, not a parser: the per-header records cpimgw keeps (name, prefix, local
    name, namespace resolved through NS, value) and the From/To parties, built with plain
    string operations and no checking at all. It shows what the record-building itself
    costs in CPython, i.e. how close to the naive split a parser of this shape can get."""
    mime, _, rest = data.partition(b"\r\n\r\n")
    head, _, entity = rest.partition(b"\r\n\r\n")
    entity_head, _, body = entity.partition(b"\r\n\r\n")
    records = []
    default = cpim.CPIM_NS
    bindings: dict[str, str] = {}
    for line in head.decode("utf-8").split("\r\n") if head else ():
        name_params, _, value = line.partition(" ")
        name = name_params.partition(":")[0]
        prefix, dot, local = name.partition(".")
        namespace = bindings.get(prefix) if dot else default
        if local == "NS" and namespace == cpim.CPIM_NS:
            bound, _, uri = value.rpartition("<")
            if bound:
                bindings[bound.strip()] = uri[:-1]
            else:
                default = uri[:-1]
        records.append((name, prefix if dot else None, local, namespace, value))
    entity_headers = [line.partition(":") for line in entity_head.decode("utf-8").split("\r\n")]
    parties = []
    for _name, _prefix, local, namespace, value in records:
        if local in ("From", "To") and namespace == cpim.CPIM_NS:
            formal, _, uri = value.rpartition("<")
            parties.append(cpim.Party(formal.rstrip() or None, uri[:-1]))
    _ = (mime, entity_headers, body, parties)
    return data


def cpimgw_lenient_round_trip(data: bytes) -> bytes:
    """canonical.cpim, lenient: parse, From and To views, bytes back."""
    msg = cpim.parse(data)
    _ = (msg.sender, msg.to)
    return bytes(msg)


def cpimgw_strict_round_trip(data: bytes) -> bytes:
    """canonical.cpim, strict: parse with full validation, From and To views, bytes back."""
    msg = cpim.parse(data, strict=True)
    _ = (msg.sender, msg.to)
    return bytes(msg)


_EMAIL_PARSER = BytesParser(policy=email.policy.SMTP)


def email_round_trip(data: bytes) -> bytes:
    """The stdlib ``email`` package: parse and serialise (policy SMTP, CRLF)."""
    return _EMAIL_PARSER.parsebytes(data).as_bytes()


CODECS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    ("naive split", naive_round_trip),
    ("unchecked records", unchecked_records_round_trip),
    ("cpimgw lenient", cpimgw_lenient_round_trip),
    ("cpimgw strict", cpimgw_strict_round_trip),
    ("stdlib email", email_round_trip),
)


def calibrate(func: Callable[[bytes], bytes], inputs: Sequence[bytes], batch: float) -> int:
    """How many passes over ``inputs`` take about ``batch`` seconds."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            for data in inputs:
                func(data)
        if time.perf_counter() - start >= batch:
            return loops
        loops *= 2


#: The clocks a measurement can use: the CPU time of this thread (the default: time spent
#: while other processes run on the core is not counted, which keeps the figures steady on
#: a machine shared with other work), or the wall clock.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}


def measure(
    codecs: Sequence[tuple[str, Callable[[bytes], bytes]]],
    inputs: Sequence[bytes],
    seconds: float,
    clock: Callable[[], float] = time.thread_time,
) -> dict[str, float]:
    """Best time in seconds for one pass over ``inputs``, per codec.

    The codecs are timed round-robin, batch after batch, and the best batch counts: a
    machine shared with other work slows every codec alike instead of whichever happened
    to run during a busy spell, so the ratios stay meaningful.
    """
    rounds = 15
    batch = seconds / rounds / len(codecs)
    loops = {name: calibrate(func, inputs, batch) for name, func in codecs}
    best = {name: float("inf") for name, _ in codecs}
    for _ in range(rounds):
        for name, func in codecs:
            count = loops[name]
            start = clock()
            for _ in range(count):
                for data in inputs:
                    func(data)
            best[name] = min(best[name], (clock() - start) / count)
    return best


def machine() -> str:
    """CPU model, cores, Python version and platform, for the record."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def run(seconds: float, clock: Callable[[], float] = time.thread_time) -> list[dict[str, object]]:
    """Measure every codec on both input sets; rows carry times and ratios."""
    sets = {
        f"{len(vectorset.valid_vectors())} valid vectors": [
            v.read_bytes() for v in vectorset.valid_vectors()
        ],
        f"typical IM ({len(TYPICAL_IM)} bytes)": [TYPICAL_IM],
    }
    rows: list[dict[str, object]] = []
    for set_name, inputs in sets.items():
        size = sum(len(d) for d in inputs)
        times = measure(CODECS, inputs, seconds, clock)
        for name, func in CODECS:
            exact = all(func(d) == d for d in inputs)
            took = times[name]
            rows.append(
                {
                    "set": set_name,
                    "codec": name,
                    "us_per_message": took / len(inputs) * 1e6,
                    "mb_per_s": size / took / 1e6,
                    "vs_naive": times["naive split"] / took,
                    "vs_email": times["stdlib email"] / took,
                    "exact": exact,
                }
            )
    return rows


def render(rows: list[dict[str, object]], markdown: bool) -> str:
    """The rows as a plain or markdown table."""
    head = ("input", "codec", "µs/message", "MB/s", "× naive", "× email", "bytes exact")
    body = [
        (
            str(r["set"]),
            str(r["codec"]),
            f"{r['us_per_message']:.2f}",
            f"{r['mb_per_s']:.1f}",
            f"{r['vs_naive']:.2f}",
            f"{r['vs_email']:.1f}",
            "yes" if r["exact"] else "no",
        )
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (head, *body)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the targets (lenient parse with From/To views >= 0.5x
    the naive split, strict >= 0.2x, both ahead of stdlib email)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codec", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="time spent per input set (all codecs)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this thread's CPU time (default); wall: the wall clock",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is not met (default: report)"
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"clock: {args.clock}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = run(args.seconds, CLOCKS[args.clock])
    print(render(rows, args.markdown))
    targets = {"cpimgw lenient": 0.5, "cpimgw strict": 0.2}
    failed = False
    for r in rows:
        target = targets.get(str(r["codec"]))
        if target is None:
            continue
        ratio = float(str(r["vs_naive"]))
        ok = ratio >= target and float(str(r["vs_email"])) > 1
        failed = failed or not ok
        print(
            f"{r['set']}: {r['codec']} at {ratio:.2f}x naive (target >= {target}x), "
            f"{float(str(r['vs_email'])):.1f}x stdlib email: {'met' if ok else 'NOT MET'}"
        )
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
