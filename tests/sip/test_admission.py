"""The laws of SIP admission control (adapters/sip/admission.py), on made-up clocks."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from adapters.sip.admission import LOG_INTERVAL, Admission

#: a run of events: ("begin",), ("end", index of a pending request), ("tick", seconds)
events = st.lists(
    st.one_of(
        st.just(("begin", 0.0)),
        st.tuples(st.just("end"), st.floats(0, 1)),
        st.tuples(st.just("tick"), st.floats(0, 5)),
    ),
    max_size=60,
)


def play(admission: Admission, run: list[tuple[str, float]]) -> list[tuple[float, bool]]:
    """Apply ``run``; returns (time, overloaded) seen before each begin."""
    now, pending, seen = 0.0, [], []
    for kind, value in run:
        if kind == "begin":
            seen.append((now, admission.overloaded(now)))
            pending.append(admission.begin(now))
        elif kind == "end" and pending:
            admission.end(pending.pop(int(value * (len(pending) - 1))), now)
        elif kind == "tick":
            now += value
    return seen


@given(events, st.integers(0, 5), st.floats(0, 1))
def test_nothing_pending_is_never_overloaded(
    run: list[tuple[str, float]], max_pending: int, max_delay: float
) -> None:
    admission = Admission(max_pending=max_pending, max_delay=max_delay)
    play(admission, run)
    assert admission.pending >= 0
    if admission.pending == 0:
        for later in (0.0, 1.0, 1e6):
            assert not admission.overloaded(later)


@given(events)
def test_both_bounds_off_admit_everything(run: list[tuple[str, float]]) -> None:
    assert not any(over for _, over in play(Admission(max_pending=0, max_delay=0), run))


@given(events, st.integers(1, 5))
def test_pending_at_the_bound_is_overloaded(run: list[tuple[str, float]], bound: int) -> None:
    admission = Admission(max_pending=bound, max_delay=0)
    play(admission, run)
    assert admission.overloaded(0.0) == (admission.pending >= bound)


@given(st.lists(st.floats(0, 30), max_size=50))
def test_refusals_are_all_logged_at_most_once_per_interval(gaps: list[float]) -> None:
    admission, now, lines = Admission(), 0.0, []
    for gap in gaps:
        now += gap
        count = admission.refuse(now)
        if count:
            lines.append((now, count))
    assert sum(count for _, count in lines) + admission.refused == len(gaps)
    assert all(b - a >= LOG_INTERVAL for (a, _), (b, _) in itertools.pairwise(lines))
    if gaps:
        assert lines[0][0] == gaps[0]  # the first refusal is logged at once


def test_a_stalled_core_refuses_new_requests_after_max_delay() -> None:
    admission = Admission(max_pending=100, max_delay=0.2)
    first = admission.begin(0.0)
    assert not admission.overloaded(0.1)
    admission.begin(0.1)
    assert admission.overloaded(0.21)  # nothing answered since the first came
    admission.end(first, 0.3)
    assert admission.overloaded(0.3)  # its wait was over the bound


def test_a_burst_is_refused_before_any_of_it_is_answered_late() -> None:
    admission = Admission(max_pending=1000, max_delay=0.2)
    now = 0.0
    for _ in range(20):  # the core answers one in 50 ms: a throughput of 20/s
        admission.end(admission.begin(now), now + 0.05)
        now += 0.1
    admitted = 0
    while not admission.overloaded(now):  # then a burst, all at once
        admission.begin(now)
        admitted += 1
    assert 3 <= admitted <= 6  # about 0.2 s of the core's work, not the whole burst


def test_one_stuck_request_does_not_refuse_the_others() -> None:
    admission = Admission(max_pending=100, max_delay=0.2)
    admission.begin(0.0)  # never answered
    now = 0.01
    for _ in range(50):  # one a second, each answered in 10 ms
        assert not admission.overloaded(now)
        admission.end(admission.begin(now), now + 0.01)
        now += 1.0


def test_after_the_core_is_back_one_probe_ends_the_overload() -> None:
    admission = Admission(max_pending=100, max_delay=0.2)
    now = 0.0
    for _ in range(100):  # a while at 100/s, each answered in 1 ms
        admission.end(admission.begin(now), now + 0.001)
        now += 0.01
    stuck = [admission.begin(now) for _ in range(5)]
    now += 3.0
    for began in stuck:
        admission.end(began, now)  # a 3 s stall, then all answered
    assert not admission.overloaded(now)  # nothing pending: the next one is the probe
    admission.end(admission.begin(now), now + 0.001)
    now += 0.001
    for _ in range(10):  # a handful at once are taken again at once
        assert not admission.overloaded(now)
        admission.begin(now)
