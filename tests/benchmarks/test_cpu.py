"""benchmarks.cpu: the per-part CPU accounting of the end-to-end benchmark, read from the
real ``/proc`` of this machine (proc(5))."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import cpu

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    # a command name may hold ") " and digits (proc(5): field 2 is "(comm)")
    line = "4242 (evil) 1 2 3) S 1 777 777 0 -1 4194560 10 0 0 0 120 30 7 3 20 0 1 0"
    assert cpu.stat_times(line) == (777, 150, 10)


def test_this_process_is_read_as_the_kernel_bills_it() -> None:
    times = os.times()
    pgrp, own, reaped = cpu.stat_times(Path("/proc/self/stat").read_text())
    hz = os.sysconf("SC_CLK_TCK")
    assert pgrp == os.getpgrp()
    assert abs(own - (times.user + times.system) * hz) <= 2
    assert abs(reaped - (times.children_user + times.children_system) * hz) <= 2


def test_busy_counts_user_nice_system_irq_softirq_only() -> None:
    text = "cpu  100 20 30 5000 70 4 6 900 0 0\ncpu0 50 10 15 2500 35 2 3 450 0 0\n"
    assert cpu.busy_ticks(text) == 100 + 20 + 30 + 4 + 6  # not idle, iowait or steal
    assert cpu.busy_ticks("intr 1 2 3\n") == 0


def test_a_reaped_child_is_billed_to_the_load_generators() -> None:
    """A child spins for about 0.6 s and is reaped: its CPU counts for the benchmark
    process (:data:`cpu.GENERATORS`, as the SIPp UACs do), and the machine's busy time
    covers it."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.process_time()\n"
         "while time.process_time() - t < 0.6: pass"],
        start_new_session=True,
    )  # fmt: skip
    groups = {"spinner": frozenset({child.pid})}
    before = cpu.snapshot(groups)
    child.wait(30)
    # reaped, the child's time is in this process's children's columns: the benchmark
    # bills its SIPp UACs (children it reaps) to the load generators this way
    after = cpu.snapshot(groups)
    costs = cpu.per_message(before, after, 1)
    assert costs[cpu.GENERATORS] >= 0.3e6  # µs: the spin, billed through the reaping parent
    assert after.busy - before.busy >= 0.3 * os.sysconf("SC_CLK_TCK")


def test_a_running_group_is_read_while_it_runs() -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        groups = {"spinner": frozenset({child.pid})}
        before = cpu.snapshot(groups)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = cpu.snapshot(groups)
            if now.parts["spinner"] - before.parts["spinner"] >= 20:  # ticks
                break
            time.sleep(0.05)
        costs = cpu.per_message(before, now, 1)
        assert costs["spinner"] > 0
        assert set(costs) == {"spinner", cpu.GENERATORS, cpu.OTHER}
    finally:
        child.kill()
        child.wait()


def test_per_message_and_capacity() -> None:
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    before = cpu.Snapshot({"gw": 100, cpu.GENERATORS: 0}, busy=1_000)
    after = cpu.Snapshot({"gw": 300, cpu.GENERATORS: 100}, busy=1_500)
    costs = cpu.per_message(before, after, 100)
    assert costs == pytest.approx({"gw": 2 * tick, cpu.GENERATORS: tick, cpu.OTHER: 2 * tick})
    # 500 µs per message on 2 cores: 4,000 messages per second at most
    assert cpu.capacity({"a": 300.0, "b": 200.0}, 2) == pytest.approx(4_000)
    assert cpu.capacity({}, 2) == 0.0
    assert "2 cores carry 4,000/s" in cpu.line({"a": 300.0, "b": 200.0}, 2)
