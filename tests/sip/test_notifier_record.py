"""A SIP watcher's subscription written for the cluster's shared store reads back the same
(adapters/sip/subscription.py, Notifier.to_json / from_json)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.sip.subscription import Dialog, Notifier, SubState

text = st.text(min_size=1, max_size=30)


@st.composite
def notifiers(draw: st.DrawFn) -> Notifier:
    dialog = Dialog(
        call_id=draw(text),
        local_tag=draw(text),
        local_uri=draw(text),
        remote_uri=draw(text),
        remote_target=draw(text),
        remote_tag=draw(st.none() | text),
        route_set=tuple(draw(st.lists(text, max_size=3))),
        local_cseq=draw(st.integers(0, 2**31)),
        remote_cseq=draw(st.none() | st.integers(0, 2**31)),
        contact=draw(st.text(max_size=30)),
    )
    return Notifier(
        watcher=draw(text),
        presentity=draw(text),
        dialog=dialog,
        expires_at=draw(st.floats(0, 2e9, allow_nan=False)),
        state=draw(st.sampled_from(list(SubState))),
        last_content_type=draw(st.none() | text),
        last_body=draw(st.none() | st.binary(max_size=200)),
        fetch=draw(st.booleans()),
    )


@given(notifiers())
def test_a_stored_notifier_reads_back_equal_with_its_cseq_kept_apart(notifier: Notifier) -> None:
    back = Notifier.from_json(notifier.to_json(), local_cseq=notifier.dialog.local_cseq)
    assert back == notifier
    other = Notifier.from_json(notifier.to_json().encode(), local_cseq=7)
    assert other.dialog.local_cseq == 7
