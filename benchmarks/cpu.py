"""Where a benchmark's CPU went: per part of the deployment, from ``/proc``.

The end-to-end benchmark shares two cores among the gateway, the XMPP server, Kamailio,
SIPp and its own load generators. Whether a rate can be carried at all depends on all of
them, not on the gateway alone, so each step reports the CPU every part used per
delivered message and what the machine's cores could carry at that mix
(:func:`capacity`). A part is a set of process groups (each server the benchmark starts
runs in a session of its own); the benchmark process itself is the load generators,
together with the children it started and reaped during the step (the SIPp UACs);
``other`` is the rest of the machine's busy time (the kernel's own threads, interrupts,
other jobs on a shared machine).

Linux only (``/proc``); elsewhere every figure is 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The part of the benchmark process and the children it reaped.
GENERATORS = "load generators"
#: Busy time of the machine that no named part used.
OTHER = "other"


def stat_times(text: str) -> tuple[int, int, int]:
    """``(pgrp, own CPU ticks, reaped children's CPU ticks)`` of one ``/proc/PID/stat``
    line (proc(5): the command name, field 2, is in parentheses and may hold any
    character, so the fields are counted from the last ``)``)."""
    fields = text.rsplit(")", 1)[1].split()
    # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime
    return int(fields[2]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def busy_ticks(text: str) -> int:
    """Busy CPU ticks of this machine from ``/proc/stat``'s ``cpu`` line: user, nice,
    system, irq and softirq (proc(5); guest time is already in user; idle, iowait and
    steal, the time the hypervisor gave to others, are not this machine's work)."""
    for row in text.splitlines():
        if row.startswith("cpu "):
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in row.split()[1:8])
            return user + nice + system + irq + softirq
    return 0


@dataclass(frozen=True)
class Snapshot:
    """CPU ticks so far per part, and the machine's busy ticks."""

    parts: Mapping[str, int]
    busy: int


def snapshot(groups: Mapping[str, frozenset[int]], proc: Path = Path("/proc")) -> Snapshot:
    """CPU ticks so far of each part (``groups``: part -> process groups), of the calling
    process with its reaped children (:data:`GENERATORS`), and of the whole machine."""
    totals = dict.fromkeys(groups, 0)
    owner = {pgrp: name for name, pgrps in groups.items() for pgrp in pgrps}
    me = os.getpid()
    generators = 0
    try:
        entries = list(proc.iterdir())
        busy = busy_ticks((proc / "stat").read_text())
    except OSError:
        return Snapshot({**totals, GENERATORS: 0}, 0)
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            pgrp, own, reaped = stat_times((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(entry.name) == me:
            generators = own + reaped
        elif pgrp in owner:
            totals[owner[pgrp]] += own
    return Snapshot({**totals, GENERATORS: generators}, busy)


def per_message(before: Snapshot, after: Snapshot, messages: int) -> dict[str, float]:
    """Microseconds of CPU per delivered message of each part between two snapshots,
    with :data:`OTHER` (busy time no part accounts for, never below 0)."""
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    count = max(messages, 1)
    out = {
        name: (after.parts.get(name, 0) - before.parts.get(name, 0)) * tick / count
        for name in after.parts
    }
    named = sum(out.values())
    out[OTHER] = max(0.0, (after.busy - before.busy) * tick / count - named)
    return out


def capacity(costs: Mapping[str, float], cores: int) -> float:
    """Messages per second ``cores`` CPUs carry at these per-message costs (µs): the
    bound the machine puts on the deployment as a whole, whatever the gateway does."""
    total = sum(costs.values())
    return cores * 1e6 / total if total > 0 else 0.0


def line(costs: Mapping[str, float], cores: int) -> str:
    """``CPU µs/msg: cpimgw 350 · Prosody 120 · ... = 760 -> 2 cores carry 2,630/s``
    (parts that used nothing left out)."""
    parts = " · ".join(f"{name} {value:.0f}" for name, value in costs.items() if value >= 0.5)
    carry = capacity(costs, cores)
    return f"CPU µs/msg: {parts} = {sum(costs.values()):.0f} -> {cores} cores carry {carry:,.0f}/s"
