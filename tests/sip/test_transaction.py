"""RFC 3261 §17 transactions as pure state machines, driven with an explicit clock."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sip.codec import Request, reply
from adapters.sip.transaction import (
    ClientTransaction,
    InviteServerTransaction,
    PassUp,
    ServerTransaction,
    State,
    Terminated,
    Timeout,
    Timers,
    Transmit,
    client_key,
    server_key,
)

T = Timers(t1=0.5, t2=4.0, t4=5.0)


def message_request(method: str = "MESSAGE", branch: str = "z9hG4bKabc") -> Request:
    return Request.build(
        method,
        "sip:bob@example.org",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
            ("From", "<sip:alice@example.org>;tag=1"),
            ("To", "<sip:bob@example.org>"),
            ("Call-ID", "c1@example.org"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
        b"hello",
    )


def run_until(tx: ClientTransaction, end: float) -> list[float]:
    """Fire timers up to ``end``; return the times of retransmissions."""
    times: list[float] = []
    while tx.deadline is not None and tx.deadline <= end:
        now = tx.deadline
        for action in tx.expire(now):
            if isinstance(action, Transmit):
                times.append(now)
    return times


def test_timer_e_doubles_up_to_t2_then_timer_f_times_out() -> None:
    tx = ClientTransaction(message_request(), reliable=False, timers=T)
    assert [type(a) for a in tx.start(0.0)] == [Transmit]
    retransmits = run_until(tx, 31.9)
    gaps = [round(b - a, 3) for a, b in zip([0.0, *retransmits], retransmits, strict=False)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(gaps[4:]) == {4.0}
    actions = tx.expire(32.0)
    assert actions == [Timeout("F"), Terminated()]
    assert tx.state == State.TERMINATED
    assert tx.deadline is None


def test_provisional_response_moves_e_to_t2() -> None:
    tx = ClientTransaction(message_request(), reliable=False, timers=T)
    tx.start(0.0)
    trying = reply(tx.request, 100, "Trying")
    assert tx.receive(trying, 0.2) == [PassUp(trying)]
    assert tx.state == State.PROCEEDING
    first = run_until(tx, 10.0)
    assert first[0] == 0.5  # E already armed at T1
    assert [round(b - a, 3) for a, b in itertools.pairwise(first)] == [4.0, 4.0]


def test_final_response_completes_and_absorbs_duplicates_until_timer_k() -> None:
    tx = ClientTransaction(message_request(), reliable=False, timers=T)
    tx.start(0.0)
    final = reply(tx.request, 202, "Accepted", to_tag="x")
    assert tx.receive(final, 0.1) == [PassUp(final)]
    assert tx.state == State.COMPLETED
    assert tx.receive(final, 0.2) == []  # retransmitted final: absorbed
    assert tx.deadline == 0.1 + T.t4
    assert tx.expire(5.1) == [Terminated()]


def test_reliable_transport_has_no_retransmissions_and_no_timer_k() -> None:
    tx = ClientTransaction(message_request(), reliable=True, timers=T)
    tx.start(0.0)
    assert tx.deadline == 32.0  # only F
    final = reply(tx.request, 200, "OK", to_tag="x")
    assert tx.receive(final, 1.0) == [PassUp(final), Terminated()]


def test_server_absorbs_retransmissions_and_replays_the_final_response() -> None:
    request = message_request()
    tx = ServerTransaction(request, reliable=False, timers=T)
    assert tx.receive(request, 0.1) == []  # Trying: absorbed silently
    final = reply(request, 202, "Accepted", to_tag="t")
    assert tx.respond(final, 0.2) == [Transmit(final)]
    assert tx.receive(request, 0.3) == [Transmit(final)]
    assert tx.respond(reply(request, 500, "Oops"), 0.4) == []  # later finals discarded
    assert tx.deadline == 0.2 + 64 * T.t1
    assert tx.expire(32.2) == [Terminated()]


def test_invite_rejection_is_retransmitted_until_ack() -> None:
    invite = message_request("INVITE")
    tx = InviteServerTransaction(invite, reliable=False, timers=T)
    final = reply(invite, 405, "Method Not Allowed", to_tag="t")
    assert tx.respond(final, 0.0) == [Transmit(final)]
    assert tx.expire(0.5) == [Transmit(final)]  # Timer G
    assert tx.expire(1.5) == [Transmit(final)]  # G doubled
    ack = Request.build(
        "ACK", invite.uri, [(h.name, h.value) for h in invite.headers[:4]] + [("CSeq", "1 ACK")]
    )
    assert tx.receive(ack, 1.6) == []
    assert tx.state == State.CONFIRMED
    assert tx.expire(1.6 + T.t4) == [Terminated()]


def test_invite_rejection_without_ack_times_out_with_timer_h() -> None:
    invite = message_request("INVITE")
    tx = InviteServerTransaction(invite, reliable=True, timers=T)
    tx.respond(reply(invite, 488, "Not Acceptable Here", to_tag="t"), 0.0)
    assert tx.expire(32.0) == [Timeout("H"), Terminated()]


def test_keys_match_responses_and_retransmissions() -> None:
    request = message_request()
    response = reply(request, 200, "OK")
    assert client_key(request) == client_key(response) == ("z9hG4bKabc", "MESSAGE")
    ack = message_request("ACK")
    assert server_key(ack) == server_key(message_request("INVITE"))


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(["tick", "100", "200", "503"]), st.floats(0.01, 3.0)),
        max_size=40,
    ),
    st.booleans(),
)
def test_client_transaction_never_acts_after_termination(
    events: list[tuple[str, float]], reliable: bool
) -> None:
    tx = ClientTransaction(message_request(), reliable=reliable, timers=T)
    now = 0.0
    tx.start(now)
    finals = 0
    terminated_at: float | None = None
    for kind, step in events:
        now += step
        if kind == "tick":
            actions = tx.expire(now)
        else:
            actions = tx.receive(reply(tx.request, int(kind), "X", to_tag="t"), now)
        if terminated_at is not None:
            assert actions == []
        finals += sum(1 for a in actions if isinstance(a, PassUp) and a.response.status >= 200)
        if any(isinstance(a, Terminated) for a in actions):
            terminated_at = now
        if reliable:
            assert not any(isinstance(a, Transmit) for a in actions)
    assert finals <= 1  # the TU sees at most one final response
