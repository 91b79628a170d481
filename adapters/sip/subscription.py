"""SIP event subscriptions (RFC 6665) for the presence package (RFC 3856), both sides, pure.

- :class:`Dialog`: the dialog state of RFC 3261 §12 (Call-ID, tags, CSeq, remote target,
  route set) and the in-dialog requests it builds (§12.2.1.1: Request-URI = remote target,
  Route = route set, loose routing).
- :class:`Subscriber`: a subscription the gateway holds for one of its users watching a SIP
  presentity (RFC 6665 §4.1): initial SUBSCRIBE, dialog from the 2xx or from a NOTIFY that
  overtakes it (§4.1.2.4), refresh before expiry, unsubscribe with ``Expires: 0``, and the
  §4.1.3 reactions to ``terminated`` (retry for deactivated/timeout/probation/giveup, stop for
  rejected/noresource/invariant).
- :class:`Notifier`: a SIP watcher's subscription to a presentity the gateway fronts (RFC
  6665 §4.2): accept with a granted Expires, NOTIFY at once and on every change with
  ``Subscription-State`` (``expires`` counting down), refresh, unsubscribe, expiry.

No clock and no socket: ``now`` is passed in; the adapter shell sends what these build.
A :class:`Notifier` also has a JSON form (:meth:`Notifier.to_json`), so the nodes of a
cluster can keep a watcher's dialog in a shared store and any of them can notify it.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from adapters.sip import header as hdr
from adapters.sip.codec import Request, Response

#: RFC 3856 §6.4: the default duration of a presence subscription.
DEFAULT_EXPIRES = 3600
#: RFC 6665 §4.1.3: reasons after which a subscriber may subscribe again.
RETRY_REASONS = frozenset({"deactivated", "timeout", "probation", "giveup", None})


class SubState(StrEnum):
    INIT = "init"
    PENDING = "pending"
    ACTIVE = "active"
    TERMINATED = "terminated"


@dataclass(slots=True)
class Dialog:
    """RFC 3261 §12 dialog state, seen from our side."""

    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    remote_tag: str | None = None
    route_set: tuple[str, ...] = ()
    local_cseq: int = 0
    remote_cseq: int | None = None
    contact: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): what identifies an in-dialog request to us."""
        return (self.call_id, self.local_tag, self.remote_tag or "")

    def request(
        self,
        method: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        max_forwards: int = 70,
    ) -> Request:
        """An in-dialog request (§12.2.1.1) with the next local CSeq."""
        self.local_cseq += 1
        remote = f"<{self.remote_uri}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")
        lines: list[tuple[str, str]] = [
            ("From", f"<{self.local_uri}>;tag={self.local_tag}"),
            ("To", remote),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_cseq} {method}"),
            ("Max-Forwards", str(max_forwards)),
        ]
        lines += [("Route", route) for route in self.route_set]
        if self.contact:
            lines.append(("Contact", self.contact))
        lines += list(headers)
        return Request.build(method, self.remote_target, lines, body)

    def next_hop(self) -> hdr.Uri:
        """Where an in-dialog request goes first: the top Route, else the remote target."""
        if self.route_set:
            return hdr.parse_name_addr(self.route_set[0]).uri
        return hdr.parse_uri(self.remote_target)

    def accept_remote(self, request: Request) -> bool:
        """Check a remote in-dialog CSeq (§12.2.2): lower than the last one is refused."""
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True


def _route_set(routes: Sequence[hdr.NameAddr], *, reverse: bool) -> tuple[str, ...]:
    values = [f"<{r.uri.text}>" + hdr.format_params(r.params) for r in routes]
    return tuple(reversed(values) if reverse else values)


# --------------------------------------------------------------------------- subscriber


@dataclass(frozen=True, slots=True)
class Authorized:
    """The presentity's answer changed: ``granted`` True (active) or False (rejected)."""

    granted: bool


@dataclass(frozen=True, slots=True)
class Presence:
    """A NOTIFY carried a state: content type and body (None: no body, state unknown)."""

    content_type: str | None
    body: bytes | None
    state: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The subscription is over; ``retry_at`` says when to subscribe again (None: never)."""

    reason: str | None
    retry_at: float | None


SubscriberEvent = Authorized | Presence | Ended


@dataclass(slots=True)
class Subscriber:
    """A subscription we hold to ``presentity`` for ``watcher`` (RFC 6665 §4.1)."""

    watcher: str
    presentity: str
    call_id: str
    local_tag: str
    contact: str
    expires: int = DEFAULT_EXPIRES
    #: the watcher's gateway-wide address (``xmpp:...``) for the envelopes this produces
    owner: str = ""
    state: SubState = SubState.INIT
    dialog: Dialog | None = None
    expires_at: float | None = None
    refresh_at: float | None = None
    authorized: bool | None = None
    unsubscribing: bool = False
    _cseq: int = 0
    events: list[SubscriberEvent] = field(default_factory=list)

    def _new_dialog(self) -> Dialog:
        return Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            local_uri=self.watcher,
            remote_uri=self.presentity,
            remote_target=self.presentity,
            contact=self.contact,
        )

    def initial_request(self, *, max_forwards: int = 70) -> Request:
        """The initial SUBSCRIBE (out of dialog; RFC 3856 §6.1, Accept PIDF)."""
        dialog = self._new_dialog()
        dialog.local_cseq = self._cseq
        request = dialog.request(
            "SUBSCRIBE",
            [
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", str(self.expires)),
            ],
            max_forwards=max_forwards,
        )
        self._cseq = dialog.local_cseq
        return request

    def _schedule(self, expires: int, now: float) -> None:
        self.expires_at = now + expires
        # refresh well before expiry: at half time, but no later than 60 s before it
        margin = max(expires / 2, expires - 60) if expires > 0 else 0
        self.refresh_at = now + margin if expires > 0 else None

    def on_response(self, response: Response, now: float) -> list[SubscriberEvent]:
        """The final response to our initial SUBSCRIBE or a refresh (RFC 6665 §4.1.2.1).

        The response's CSeq may be above ours when the endpoint answered a digest challenge
        (§22.2: the retry takes the next CSeq); later requests continue from it.
        """
        self._cseq = max(self._cseq, response.cseq.number)
        if self.dialog is not None:
            self.dialog.local_cseq = max(self.dialog.local_cseq, response.cseq.number)
        if 200 <= response.status < 300:
            if self.dialog is None:
                self.dialog = self._dialog_from(response, reverse=True)
                self.dialog.local_cseq = self._cseq
            elif self.dialog.remote_tag is None:
                self.dialog.remote_tag = response.to.tag
            granted = response.expires
            if granted is None:
                granted = self.expires
            if self.unsubscribing or granted == 0:
                self.refresh_at = None
                self.expires_at = now + 32  # wait for the final NOTIFY (§4.1.2.3)
                return []
            if self.state is SubState.INIT:
                self.state = SubState.PENDING
            self._schedule(granted, now)
            return []
        if response.status in (423,) and response.get("Min-Expires"):
            with contextlib.suppress(ValueError):
                self.expires = hdr.parse_expires(response.get("Min-Expires") or "")
            return [Ended("interval-too-brief", now)]
        self.state = SubState.TERMINATED
        self.refresh_at = None
        if response.status == 481:
            return [Ended("gone", now)]  # refresh of a lost subscription: start over
        if response.status in (403, 489, 603):
            return [Authorized(False), Ended("rejected", None)]  # RFC 8048 §5.2.2
        retry = response.get("Retry-After")
        retry_at = now + int(retry) if retry and retry.strip().isdigit() else None
        return [Ended(f"status-{response.status}", retry_at)]

    def _dialog_from(self, message: Request | Response, *, reverse: bool) -> Dialog:
        dialog = self._new_dialog()
        contact = message.contact
        if isinstance(message, Response):
            dialog.remote_tag = message.to.tag
        else:
            dialog.remote_tag = message.from_.tag
        if contact is not None:
            dialog.remote_target = contact.uri.text
        dialog.route_set = _route_set(message.record_routes, reverse=reverse)
        return dialog

    def matches(self, request: Request) -> bool:
        """A NOTIFY for this subscription: our Call-ID and our tag as its To tag."""
        return request.call_id == self.call_id and request.to.tag == self.local_tag

    def on_notify(self, request: Request, now: float) -> tuple[int, list[SubscriberEvent]]:
        """(status to answer, events) for a NOTIFY in this subscription (RFC 6665 §4.1.3)."""
        if self.dialog is None:
            # the NOTIFY overtook the 2xx: it creates the dialog (§4.1.2.4)
            self.dialog = self._dialog_from(request, reverse=False)
            self.dialog.local_cseq = self._cseq
        elif self.dialog.remote_tag is None:
            self.dialog.remote_tag = request.from_.tag
        if not self.dialog.accept_remote(request):
            return 500, []  # out of order (RFC 3261 §12.2.2)
        contact = request.contact
        if contact is not None:
            self.dialog.remote_target = contact.uri.text
        state = request.subscription_state
        if state is None:
            return 400, []
        events: list[SubscriberEvent] = []
        body = request.body or None
        content_type = request.get("Content-Type") if body else None
        if state.state == "active":
            if self.authorized is not True:
                self.authorized = True
                events.append(Authorized(True))
            self.state = SubState.ACTIVE
            if state.expires is not None and not self.unsubscribing:
                self._schedule(state.expires, now)
            events.append(Presence(content_type, body, "active", None))
        elif state.state == "pending":
            self.state = SubState.PENDING
            if state.expires is not None and not self.unsubscribing:
                self._schedule(state.expires, now)
            if body is not None:
                events.append(Presence(content_type, body, "pending", None))
        elif state.state == "terminated":
            reason = state.reason
            self.state = SubState.TERMINATED
            self.refresh_at = None
            self.expires_at = None
            if body is not None:
                events.append(Presence(content_type, body, "terminated", reason))
            if self.unsubscribing:
                events.append(Ended("unsubscribed", None))
            elif reason == "rejected":
                if self.authorized is not False:
                    self.authorized = False
                    events.append(Authorized(False))
                events.append(Ended(reason, None))
            elif reason in RETRY_REASONS:
                wait = state.retry_after
                if wait is None and reason in ("probation", "giveup"):
                    wait = 60
                events.append(Ended(reason, now + (wait or 0)))
            else:
                events.append(Ended(reason, None))
        else:
            return 400, []
        return 200, events

    def refresh_request(self, *, max_forwards: int = 70) -> Request | None:
        """An in-dialog SUBSCRIBE with the same Expires (RFC 6665 §4.1.2.2)."""
        if self.dialog is None or self.state is SubState.TERMINATED:
            return None
        self.refresh_at = None
        return self.dialog.request(
            "SUBSCRIBE",
            [
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", str(self.expires)),
            ],
            max_forwards=max_forwards,
        )

    def unsubscribe_request(self, *, max_forwards: int = 70) -> Request | None:
        """``Expires: 0`` in the dialog (RFC 6665 §4.1.2.3); None when there is no dialog."""
        self.unsubscribing = True
        self.refresh_at = None
        if self.dialog is None or self.state is SubState.TERMINATED:
            return None
        return self.dialog.request(
            "SUBSCRIBE", [("Event", "presence"), ("Expires", "0")], max_forwards=max_forwards
        )

    def expire(self, now: float) -> list[SubscriberEvent]:
        """The subscription ran out without a refresh answer or final NOTIFY (§4.1.2.2)."""
        if self.expires_at is not None and now >= self.expires_at:
            self.state = SubState.TERMINATED
            self.expires_at = self.refresh_at = None
            return [Ended("expired", None if self.unsubscribing else now)]
        return []


# ----------------------------------------------------------------------------- notifier


@dataclass(slots=True)
class Notifier:
    """A SIP watcher's subscription to a presentity we front (RFC 6665 §4.2)."""

    watcher: str
    presentity: str
    dialog: Dialog
    expires_at: float
    state: SubState = SubState.PENDING
    last_content_type: str | None = None
    last_body: bytes | None = None
    fetch: bool = False

    @classmethod
    def accept(
        cls,
        request: Request,
        *,
        local_tag: str,
        contact: str,
        now: float,
        max_expires: int = DEFAULT_EXPIRES,
    ) -> tuple[Notifier, int]:
        """A new subscription from an initial SUBSCRIBE; returns it and the granted Expires
        (the request's, capped at ``max_expires``; 0 for a fetch, §4.4.3)."""
        asked = request.expires
        granted = min(DEFAULT_EXPIRES if asked is None else asked, max_expires)
        from_ = request.from_
        dialog = Dialog(
            call_id=request.call_id,
            local_tag=local_tag,
            local_uri=request.to.uri.text,
            remote_uri=from_.uri.text,
            remote_target=(request.contact.uri.text if request.contact else from_.uri.text),
            remote_tag=from_.tag,
            route_set=_route_set(request.record_routes, reverse=False),
            remote_cseq=request.cseq.number,
            contact=contact,
        )
        notifier = cls(
            watcher=from_.uri.address_of_record,
            presentity=request.to.uri.address_of_record,
            dialog=dialog,
            expires_at=now + granted,
            fetch=granted == 0,
        )
        return notifier, granted

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def refresh(self, request: Request, now: float, *, max_expires: int = DEFAULT_EXPIRES) -> int:
        """An in-dialog SUBSCRIBE: the new granted Expires (0 ends the subscription)."""
        asked = request.expires
        granted = min(DEFAULT_EXPIRES if asked is None else asked, max_expires)
        contact = request.contact
        if contact is not None:
            self.dialog.remote_target = contact.uri.text
        self.expires_at = now + granted
        return granted

    def notify(
        self,
        now: float,
        *,
        state: str | None = None,
        reason: str | None = None,
        content_type: str | None = None,
        body: bytes | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """A NOTIFY with Subscription-State (RFC 6665 §4.2.2, §8.2.3). ``state`` changes the
        subscription state (``active``, ``pending``, ``terminated``); a body becomes the new
        last-known state sent on refreshes."""
        if state is not None:
            self.state = SubState(state)
        if body is not None:
            self.last_content_type, self.last_body = content_type, body
        remaining = self.remaining(now)
        if self.state is SubState.TERMINATED or remaining == 0:
            self.state = SubState.TERMINATED
            value = "terminated;reason=" + (reason or "timeout")
        else:
            value = f"{self.state.value};expires={remaining}"
        headers = [("Event", "presence"), ("Subscription-State", value)]
        send_body = b""
        if self.last_body is not None and self.state is not SubState.PENDING:
            headers.append(("Content-Type", self.last_content_type or "application/pidf+xml"))
            send_body = self.last_body
        return self.dialog.request("NOTIFY", headers, send_body, max_forwards=max_forwards)

    @property
    def terminated(self) -> bool:
        return self.state is SubState.TERMINATED

    def to_json(self) -> str:
        """Everything but the local CSeq (kept apart, so nodes can take CSeqs atomically):
        the dialog (RFC 3261 §12), the subscription state, expiry and last state sent."""
        d = self.dialog
        body = None if self.last_body is None else base64.b64encode(self.last_body).decode()
        return json.dumps(
            {
                "w": self.watcher,
                "p": self.presentity,
                "x": self.expires_at,
                "s": self.state.value,
                "t": self.last_content_type,
                "b": body,
                "f": self.fetch,
                "d": [
                    d.call_id,
                    d.local_tag,
                    d.local_uri,
                    d.remote_uri,
                    d.remote_target,
                    d.remote_tag,
                    list(d.route_set),
                    d.remote_cseq,
                    d.contact,
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, local_cseq: int) -> Notifier:
        """The notifier :meth:`to_json` wrote, its next local CSeq above ``local_cseq``."""
        data = json.loads(text)
        (call_id, local_tag, local_uri, remote_uri, target, remote_tag, routes, rcseq, contact) = (
            data["d"]
        )
        dialog = Dialog(
            call_id=call_id,
            local_tag=local_tag,
            local_uri=local_uri,
            remote_uri=remote_uri,
            remote_target=target,
            remote_tag=remote_tag,
            route_set=tuple(routes),
            local_cseq=local_cseq,
            remote_cseq=rcseq,
            contact=contact,
        )
        body = data["b"]
        return cls(
            watcher=data["w"],
            presentity=data["p"],
            dialog=dialog,
            expires_at=float(data["x"]),
            state=SubState(data["s"]),
            last_content_type=data["t"],
            last_body=None if body is None else base64.b64decode(body),
            fetch=bool(data["f"]),
        )
