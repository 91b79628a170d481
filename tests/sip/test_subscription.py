"""RFC 6665 subscriptions, both sides, as pure state machines with an explicit clock."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sip.codec import Request, reply
from adapters.sip.subscription import Authorized, Ended, Notifier, Presence, Subscriber

PIDF = b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@sip.test'/>"


def subscriber(expires: int = 600) -> Subscriber:
    return Subscriber(
        watcher="sip:alice@xmpp.test",
        presentity="sip:bob@sip.test",
        call_id="sub1@gw",
        local_tag="lt",
        contact="<sip:cpimgw@127.0.0.1:5070>",
        expires=expires,
    )


def notify(
    sub: Subscriber, state: str, *, cseq: int, body: bytes = b"", contact: str | None = None
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKn" + str(cseq)),
        ("From", "<sip:bob@sip.test>;tag=rt"),
        ("To", f"<sip:alice@xmpp.test>;tag={sub.local_tag}"),
        ("Call-ID", sub.call_id),
        ("CSeq", f"{cseq} NOTIFY"),
        ("Event", "presence"),
        ("Subscription-State", state),
        ("Contact", contact or "<sip:127.0.0.1:5060>"),
    ]
    if body:
        headers.append(("Content-Type", "application/pidf+xml"))
    return Request.build("NOTIFY", "sip:cpimgw@127.0.0.1:5070", headers, body)


def test_initial_subscribe_asks_for_presence_with_expires() -> None:
    request = subscriber(300).initial_request()
    assert request.method == "SUBSCRIBE"
    assert request.uri == "sip:bob@sip.test"
    assert (request.get("Event"), request.get("Expires")) == ("presence", "300")
    assert request.from_.tag == "lt"
    assert request.to.tag is None
    assert request.get("Contact") == "<sip:cpimgw@127.0.0.1:5070>"


def test_2xx_creates_the_dialog_and_schedules_refresh_before_expiry() -> None:
    sub = subscriber(600)
    request = sub.initial_request()
    ok = reply(
        request,
        200,
        "OK",
        to_tag="rt",
        extra=[
            ("Expires", "400"),
            ("Contact", "<sip:ps@127.0.0.1:5060>"),
            ("Record-Route", "<sip:p1;lr>, <sip:p2;lr>"),
        ],
    )
    assert sub.on_response(ok, 100.0) == []
    assert sub.dialog is not None
    assert sub.dialog.remote_tag == "rt"
    assert sub.dialog.remote_target == "sip:ps@127.0.0.1:5060"
    assert sub.dialog.route_set == ("<sip:p2;lr>", "<sip:p1;lr>")  # reversed for the UAC
    assert sub.expires_at == 500.0
    assert sub.refresh_at is not None
    assert 100.0 < sub.refresh_at <= 500.0 - 60
    refresh = sub.refresh_request()
    assert refresh is not None
    assert refresh.uri == "sip:ps@127.0.0.1:5060"
    assert refresh.cseq.number == request.cseq.number + 1
    assert refresh.to.tag == "rt"
    assert refresh.get_all("Route") == ["<sip:p2;lr>", "<sip:p1;lr>"]


def test_cseq_after_an_authenticated_initial_request_keeps_increasing() -> None:
    sub = subscriber()
    request = sub.initial_request()
    authed = request.with_replaced("CSeq", "2 SUBSCRIBE")  # the endpoint's digest retry
    sub.on_response(reply(authed, 202, "Accepted", to_tag="rt", extra=[("Expires", "600")]), 0.0)
    refresh = sub.refresh_request()
    assert refresh is not None
    assert refresh.cseq.number == 3


def test_notify_before_the_2xx_creates_the_dialog() -> None:
    sub = subscriber()
    sub.initial_request()
    status, events = sub.on_notify(notify(sub, "active;expires=600", cseq=1, body=PIDF), 1.0)
    assert status == 200
    assert events == [Authorized(True), Presence("application/pidf+xml", PIDF, "active", None)]
    assert sub.dialog is not None
    assert sub.dialog.remote_tag == "rt"


def test_out_of_order_notify_is_refused() -> None:
    sub = subscriber()
    sub.initial_request()
    assert sub.on_notify(notify(sub, "active", cseq=5), 1.0)[0] == 200
    assert sub.on_notify(notify(sub, "active", cseq=4), 1.1)[0] == 500


def test_rejection_ends_without_retry_and_timeout_retries() -> None:
    sub = subscriber()
    sub.initial_request()
    _, events = sub.on_notify(notify(sub, "terminated;reason=rejected", cseq=1), 1.0)
    assert events == [Authorized(False), Ended("rejected", None)]
    again = subscriber()
    again.initial_request()
    _, events = again.on_notify(notify(again, "terminated;reason=timeout", cseq=1), 2.0)
    assert events == [Ended("timeout", 2.0)]
    later = subscriber()
    later.initial_request()
    state = "terminated;reason=probation;retry-after=30"
    _, events = later.on_notify(notify(later, state, cseq=1), 3.0)
    assert events == [Ended("probation", 33.0)]


def test_unsubscribe_sends_expires_zero_and_waits_for_the_final_notify() -> None:
    sub = subscriber()
    request = sub.initial_request()
    sub.on_response(reply(request, 200, "OK", to_tag="rt", extra=[("Expires", "600")]), 0.0)
    leave = sub.unsubscribe_request()
    assert leave is not None
    assert leave.get("Expires") == "0"
    sub.on_response(reply(leave, 200, "OK", extra=[("Expires", "0")]), 1.0)
    assert sub.refresh_at is None
    _, events = sub.on_notify(notify(sub, "terminated;reason=timeout", cseq=9), 1.2)
    assert events == [Ended("unsubscribed", None)]


def test_refusal_of_the_subscription_is_an_authorization_refusal() -> None:
    sub = subscriber()
    request = sub.initial_request()
    events = sub.on_response(reply(request, 403, "Forbidden"), 0.0)
    assert events == [Authorized(False), Ended("rejected", None)]


def watcher_subscribe(expires: str = "600") -> Request:
    return Request.build(
        "SUBSCRIBE",
        "sip:carol@xmpp.test",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKw"),
            ("Record-Route", "<sip:127.0.0.1:5060;lr>"),
            ("From", "<sip:watcher@sip.test>;tag=wt"),
            ("To", "<sip:carol@xmpp.test>"),
            ("Call-ID", "w1@sip.test"),
            ("CSeq", "1 SUBSCRIBE"),
            ("Contact", "<sip:watcher@127.0.0.1:6000>"),
            ("Event", "presence"),
            ("Expires", expires),
        ],
    )


def test_notifier_accepts_caps_expires_and_notifies_pending_then_active() -> None:
    notifier, granted = Notifier.accept(
        watcher_subscribe("7200"), local_tag="gt", contact="<sip:gw@1.2.3.4>", now=0.0
    )
    assert granted == 3600
    assert (notifier.watcher, notifier.presentity) == (
        "sip:watcher@sip.test",
        "sip:carol@xmpp.test",
    )
    first = notifier.notify(10.0)
    assert first.uri == "sip:watcher@127.0.0.1:6000"
    assert first.get("Route") == "<sip:127.0.0.1:5060;lr>"
    assert first.get("Subscription-State") == "pending;expires=3590"
    assert first.from_.tag == "gt"
    assert first.to.tag == "wt"
    active = notifier.notify(20.0, state="active", content_type="application/pidf+xml", body=PIDF)
    assert active.get("Subscription-State") == "active;expires=3580"
    assert active.body == PIDF
    assert active.cseq.number == first.cseq.number + 1
    assert notifier.dialog.next_hop().host == "127.0.0.1"


def test_notifier_refresh_and_expiry() -> None:
    notifier, _ = Notifier.accept(watcher_subscribe("60"), local_tag="gt", contact="", now=0.0)
    assert notifier.refresh(watcher_subscribe("120"), 50.0) == 120
    assert notifier.remaining(60.0) == 110
    final = notifier.notify(171.0)
    assert final.get("Subscription-State") == "terminated;reason=timeout"
    assert notifier.terminated


def test_fetch_is_a_zero_expires_subscription() -> None:
    notifier, granted = Notifier.accept(watcher_subscribe("0"), local_tag="t", contact="", now=0.0)
    assert (granted, notifier.fetch) == (0, True)


@settings(max_examples=100)
@given(
    st.lists(
        st.sampled_from(
            ["active", "pending", "terminated;reason=timeout", "terminated;reason=rejected"]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_authorization_events_are_emitted_only_on_change(states: list[str]) -> None:
    sub = subscriber()
    sub.initial_request()
    grants: list[bool] = []
    for cseq, state in enumerate(states, start=1):
        _, events = sub.on_notify(notify(sub, state, cseq=cseq), float(cseq))
        grants += [e.granted for e in events if isinstance(e, Authorized)]
    assert all(a != b for a, b in itertools.pairwise(grants))
