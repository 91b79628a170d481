"""A CPIM header block read through a remembered skeleton reads as the general reader.

The lean front of ``canonical.cpim`` remembers, per sequence of heads (``Name:params``
before each line's first SP), each line's head parts and namespace, the NS values those
depend on and where the core From/To/cc are; a later block with the same heads only has
its values split off. These tests pin that a remembered skeleton never changes what a
message says: same heads with other values (NS values included), same heads after a
different NS declaration, and that the memory stays bounded (RFC 3862 §3.4 for NS).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canonical import cpim
from canonical.policy import Policy
from tests.canonical.test_cpim_fast_paths import (
    DEADLINE_MS,
    PARTIES,
    POLICIES,
    _observe,
    mutated_vectors,
)

VALUES = st.sampled_from(
    [
        "",
        "x",
        "<im:a@b>",
        "Ada <im:a@b>",
        '"Ada"<im:a@b>',
        "p <urn:x>",
        "q <urn:y>",
        "<urn:x>",
        "<urn:ietf:params:cpim-headers:>",
        "p <urn:ietf:params:cpim-headers:>",
        "2024-03-05T09:30:12Z",
        "a\\tb",
        "é",
        " x",
        "x ",
    ]
)


def _revalue(data: bytes, values: list[str]) -> bytes:
    """``data`` with the value of each CPIM header line (after its first SP) replaced in
    turn by ``values``; the heads and every other byte stay."""
    h0 = 30 if data.startswith(cpim.MIME_HEADER + b"\r\n") else 0
    h_end = data.find(b"\r\n\r\n", h0)
    if h_end <= h0:
        return data
    lines = data[h0:h_end].split(b"\r\n")
    for i, line in enumerate(lines):
        head, sp, _ = line.partition(b" ")
        if sp and values:
            lines[i] = head + b" " + values[i % len(values)].encode()
    return data[:h0] + b"\r\n".join(lines) + data[h_end:]


@settings(deadline=DEADLINE_MS, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vectors(), st.lists(VALUES, max_size=6), st.sampled_from(POLICIES))
def test_same_heads_with_other_values_read_as_the_general_reader(
    data: bytes, values: list[str], policy: Policy
) -> None:
    first = _observe(cpim._parse, data, "entity", policy)  # remembers the skeleton
    assert first == _observe(cpim._parse_general, data, "entity", policy)
    again = _revalue(data, values)
    assert _observe(cpim._parse, again, "entity", policy) == _observe(
        cpim._parse_general, again, "entity", policy
    )


def _message(ns_value: str, *headers: str) -> bytes:
    lines = [f"NS: {ns_value}", *headers]
    return (
        cpim.MIME_HEADER
        + b"\r\n"
        + "\r\n".join(lines).encode()
        + b"\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
    )


def test_prefix_resolves_through_the_ns_value_of_each_message() -> None:
    a = cpim.parse(_message("p <urn:a>", "From: <im:x@y>", "p.Key: 1"))
    b = cpim.parse(_message("p <urn:b>", "From: <im:x@y>", "p.Key: 1"))
    assert a.headers[2].namespace == "urn:a"
    assert b.headers[2].namespace == "urn:b"
    assert [h.namespace for h in cpim.parse(bytes(a)).headers] == [
        cpim.CPIM_NS,
        cpim.CPIM_NS,
        "urn:a",
    ]


def test_from_after_a_new_default_namespace_is_not_the_sender() -> None:
    core = cpim.parse(_message("p <urn:x>", "From: <im:x@y>", "To: <im:z@y>"))
    assert core.sender == cpim.Party(None, "im:x@y")
    assert core.to == (cpim.Party(None, "im:z@y"),)
    moved = cpim.parse(_message("<urn:x>", "From: <im:x@y>", "To: <im:z@y>"))
    assert moved.sender is None
    assert moved.to == ()
    assert [h.namespace for h in moved.headers] == [cpim.CPIM_NS, "urn:x", "urn:x"]
    again = cpim.parse(_message("p <urn:x>", "From: <im:x@y>", "To: <im:z@y>"))
    assert again.sender == core.sender


def test_several_to_and_cc_keep_their_order_through_a_skeleton() -> None:
    heads = ("From: <im:f@x>", "To: <im:a@x>", "cc: <im:c@x>", "To: B <im:b@x>", "cc: <im:d@x>")
    for _ in range(2):  # read, then through the remembered skeleton
        msg = cpim.parse(_message("p <urn:x>", *heads))
        assert [p.uri for p in msg.to] == ["im:a@x", "im:b@x"]
        assert [p.uri for p in msg.cc] == ["im:c@x", "im:d@x"]
        assert msg.to[1].formal_name == "B"


def test_remembered_skeletons_are_bounded() -> None:
    saved = dict(cpim._SKELETONS)
    try:
        for n in range(cpim._SKELETONS_MAX + 50):
            cpim.parse(_message("p <urn:x>", "From: <im:x@y>", f"p.K{n}: v"))
        assert len(cpim._SKELETONS) <= cpim._SKELETONS_MAX
        # beyond the bound a new block is still read right, just not remembered
        msg = cpim.parse(_message("p <urn:x>", "From: <im:x@y>", "p.Beyond: v"))
        assert msg.headers[2].namespace == "urn:x"
        assert msg.sender == cpim.Party(None, "im:x@y")
    finally:  # the other tests read through skeletons again
        cpim._SKELETONS.clear()
        cpim._SKELETONS.update(saved)


@settings(deadline=DEADLINE_MS, max_examples=3000)
@given(PARTIES)
def test_fast_party_reading_of_party_shaped_values_equals_the_general_one(value: str) -> None:
    if value:
        assert cpim._party_of(value) == cpim._read_party(value)


def test_a_quoted_parameter_holding_sp_is_read_per_message() -> None:
    def message(head: str, value: str) -> bytes:
        return _message("Feat <urn:f>", "From: <im:a@b>", f"{head} {value}")

    one = cpim.parse(message('Feat.Label:;name="Top secret"', "one"))
    two = cpim.parse(message('Feat.Label:;name="Top secret"', "two words"))
    other = cpim.parse(message('Feat.Label:;name="Top dog"', "three"))
    assert one.headers[2].value == "one"
    assert two.headers[2].value == "two words"
    assert other.headers[2].params == (("name", "Top dog"),)
    assert other.headers[2].value == "three"
    for msg in (one, two, other):
        data = bytes(msg)
        assert _observe(cpim._parse, data, "entity", Policy()) == _observe(
            cpim._parse_general, data, "entity", Policy()
        )
