"""The presence book (pure): subscriptions, last known presence, fan-out, coalescing.

RFC 3859 §3 (CPP subscribe/notify) and RFC 3922 §6 / RFC 8048 §5 (how XMPP and SIP
subscriptions map onto it). The book decides; the core commits what it decides to the
store (:class:`Effects`) and only then applies it to the book (:meth:`PresenceBook.apply`),
so memory never runs ahead of the disk. No I/O, no clock: the time is passed in.

Rules it keeps (DESIGN.md "Operations"):

- A subscription needs the presentity's approval: SUBSCRIBE makes it *pending*, the
  presentity's AUTHORIZE (granted) makes it *active*; a refusal ends it (RFC 3859 §3.2,
  RFC 6121 §3.1). Only active watchers get NOTIFYs.
- Nobody subscribes, unsubscribes or answers on someone else's behalf: the watcher is
  the sender of SUBSCRIBE/UNSUBSCRIBE, the presentity the sender of AUTHORIZE, and each
  must come from the adapter recorded in the subscription (anti-spoofing has already
  checked that the sender belongs to the adapter it arrived on).
- A duration-0 SUBSCRIBE (XMPP probe, SIP fetch, RFC 3856 §6.4 polling) from an active
  watcher is answered from the last known presence.
- Fan-out: a NOTIFY addressed to the presentity itself or to a bare domain goes to every
  active watcher; a NOTIFY addressed to one watcher goes to it if it is authorised.
- Coalescing and per-watcher rate limit: one watcher gets at most one NOTIFY per
  presentity per ``min_interval``, and at most ``watcher_rate`` per second overall; what
  arrives meanwhile replaces the held one (the latest state wins), so a flapping client
  cannot flood the other network. Held NOTIFYs are state, not messages: a stop or crash
  loses at most the held ones, the last presence itself is stored, and the next start
  restates it to every active watcher (:meth:`PresenceBook.restate`).
- Presence documents, signed ones included (RFC 3923 §4), pass byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from canonical.envelope import Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import Reason, SecurityError
from gateway.routing import bare, split_address
from gateway.security import Buckets

#: The envelope attribute carrying RFC 6665 §4.1.3 Subscription-State for NOTIFYs.
STATE = "subscription.state"


class SubscriptionState(StrEnum):
    """RFC 6665 §4.1.3 Subscription-State values; XMPP ``none+pending-out`` is PENDING."""

    PENDING = "pending"
    ACTIVE = "active"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Subscription:
    """One watcher's subscription to one presentity (both bare addresses)."""

    watcher: str
    presentity: str
    state: SubscriptionState
    watcher_adapter: str
    presentity_adapter: str
    expires_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class LastPresence:
    """The last presence document a presentity published, kept byte for byte."""

    presentity: str
    payload: Payload
    at: float
    identity: str


@dataclass(frozen=True, slots=True)
class Effects:
    """What one presence operation changes: envelopes to route and queue, subscriptions
    to write or end, the new last presence; ``note`` says what happened (for the log)."""

    send: tuple[Envelope, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    ended: tuple[tuple[str, str], ...] = ()
    presence: LastPresence | None = None
    note: str = ""
    dropped: int = 0


@dataclass(slots=True)
class _Pace:
    """Coalescing state (memory only): when each pair last got a NOTIFY, what is held."""

    last: dict[tuple[str, str], float] = field(default_factory=dict)
    held: dict[tuple[str, str], Envelope] = field(default_factory=dict)


class PresenceBook:
    """Subscriptions by (watcher, presentity), both bare addresses; last presence."""

    def __init__(
        self,
        *,
        min_interval: float = 5.0,
        watcher_rate: float = 2.0,
        watcher_burst: float = 20.0,
    ) -> None:
        self.min_interval = min_interval
        self.watcher_rate = watcher_rate
        self.watcher_burst = watcher_burst
        self._subs: dict[tuple[str, str], Subscription] = {}
        self._by_presentity: dict[str, set[str]] = {}
        self._presence: dict[str, LastPresence] = {}
        self._pace = _Pace()
        self._buckets = Buckets()

    # -- state ----------------------------------------------------------------------

    def load(
        self, subscriptions: Iterable[Subscription], presences: Iterable[LastPresence]
    ) -> None:
        """Rebuild the book from the store (at start)."""
        for sub in subscriptions:
            self._put(sub)
        for pres in presences:
            self._presence[pres.presentity] = pres

    def _put(self, sub: Subscription) -> None:
        self._subs[(sub.watcher, sub.presentity)] = sub
        self._by_presentity.setdefault(sub.presentity, set()).add(sub.watcher)

    def _end(self, key: tuple[str, str]) -> None:
        if self._subs.pop(key, None) is not None:
            watchers = self._by_presentity.get(key[1])
            if watchers is not None:
                watchers.discard(key[0])
                if not watchers:
                    del self._by_presentity[key[1]]
        self._pace.held.pop(key, None)
        self._pace.last.pop(key, None)

    def apply(self, effects: Effects) -> None:
        """Make committed effects the book's state."""
        for sub in effects.subscriptions:
            self._put(sub)
        for key in effects.ended:
            self._end(key)
        if effects.presence is not None:
            self._presence[effects.presence.presentity] = effects.presence

    def subscription(self, watcher: str, presentity: str) -> Subscription | None:
        return self._subs.get((bare(watcher), bare(presentity)))

    def subscriptions(self) -> list[Subscription]:
        return sorted(self._subs.values(), key=lambda s: (s.presentity, s.watcher))

    def last(self, presentity: str) -> LastPresence | None:
        return self._presence.get(bare(presentity))

    def counts(self) -> dict[SubscriptionState, int]:
        counts = dict.fromkeys(SubscriptionState, 0)
        for sub in self._subs.values():
            counts[sub.state] += 1
        return counts

    def _active(self, sub: Subscription | None, now: float) -> bool:
        return (
            sub is not None
            and sub.state is SubscriptionState.ACTIVE
            and (sub.expires_at is None or sub.expires_at > now)
        )

    # -- operations -----------------------------------------------------------------

    def subscribe(
        self, envelope: Envelope, *, presentity: str, presentity_adapter: str, now: float
    ) -> Effects:
        """SUBSCRIBE from a watcher (RFC 3859 §3.2). ``presentity`` is the routed recipient."""
        watcher, target = bare(envelope.sender), bare(presentity)
        key = (watcher, target)
        sub = self._subs.get(key)
        forward = envelope.replace(recipient=presentity)
        last = self._presence.get(target)
        if envelope.duration == 0:
            if self._active(sub, now) and last is not None:
                answer = self._notification(last, envelope.sender, envelope, now)
                return Effects(send=(answer,), note="fetch answered from the last known presence")
            return Effects(send=(forward,), note="fetch forwarded to the presentity's network")
        expires = None if envelope.duration is None else now + envelope.duration
        if sub is not None and self._active(sub, now):
            refreshed = _with(sub, expires_at=expires, updated_at=now)
            sent = (self._notification(last, envelope.sender, envelope, now),) if last else ()
            return Effects(send=sent, subscriptions=(refreshed,), note="subscription refreshed")
        pending = Subscription(
            watcher=watcher,
            presentity=target,
            state=SubscriptionState.PENDING,
            watcher_adapter=envelope.origin.adapter,
            presentity_adapter=presentity_adapter,
            expires_at=expires,
            created_at=now if sub is None else sub.created_at,
            updated_at=now,
        )
        return Effects(
            send=(forward,), subscriptions=(pending,), note="pending the presentity's approval"
        )

    def unsubscribe(self, envelope: Envelope, *, presentity: str, now: float) -> Effects:
        """UNSUBSCRIBE from the watcher itself (RFC 3859 §3.2 with duration 0)."""
        key = (bare(envelope.sender), bare(presentity))
        sub = self._subs.get(key)
        if sub is not None and sub.watcher_adapter != envelope.origin.adapter:
            raise SecurityError(
                f"{envelope.sender} cannot end the subscription of {sub.watcher} from adapter"
                f" {envelope.origin.adapter!r} (it was made on {sub.watcher_adapter!r})",
                reason=Reason.FORBIDDEN,
                hint="only the watcher, on its own network, can unsubscribe",
            )
        forward = envelope.replace(recipient=presentity)
        ended = (key,) if sub is not None else ()
        return Effects(send=(forward,), ended=ended, note="subscription ended by the watcher")

    def authorize(self, envelope: Envelope, *, watcher: str, now: float) -> Effects:
        """AUTHORIZE from the presentity: grant or refuse a watcher (RFC 6121 §3.1.3)."""
        key = (bare(watcher), bare(envelope.sender))
        sub = self._subs.get(key)
        if sub is not None and sub.presentity_adapter != envelope.origin.adapter:
            raise SecurityError(
                f"{envelope.sender} cannot answer for {sub.presentity} from adapter"
                f" {envelope.origin.adapter!r} (the request went to {sub.presentity_adapter!r})",
                reason=Reason.FORBIDDEN,
                hint="only the presentity, on its own network, can authorize its watchers",
            )
        forward = envelope.replace(recipient=watcher)
        if not envelope.granted:
            ended = (key,) if sub is not None else ()
            return Effects(send=(forward,), ended=ended, note="subscription refused")
        if sub is None:
            return Effects(send=(forward,), note="approval without a request passed on")
        active = _with(sub, state=SubscriptionState.ACTIVE, updated_at=now)
        last = self._presence.get(key[1])
        sends = [forward]
        if last is not None:
            sends.append(self._notification(last, sub.watcher, envelope, now))
        return Effects(send=tuple(sends), subscriptions=(active,), note="subscription approved")

    def notify(self, envelope: Envelope, *, now: float) -> Effects:
        """NOTIFY from a presentity: remember it, fan it out to authorised watchers."""
        presentity = bare(envelope.sender)
        last = (
            None
            if envelope.payload is None
            else LastPresence(presentity, envelope.payload, now, envelope.identity)
        )
        recipient = split_address(envelope.recipient)
        state = envelope.attributes.get(STATE, "")
        if state.startswith("terminated") and recipient.user is not None:
            key = (recipient.bare, presentity)
            ended = (key,) if key in self._subs else ()
            return Effects(send=(envelope,), ended=ended, presence=last, note="ended by presentity")
        if recipient.user is None or recipient.bare == presentity:
            targets = [
                self._subs[(w, presentity)].watcher for w in self._by_presentity.get(presentity, ())
            ]
            targets = [w for w in targets if self._active(self._subs[(w, presentity)], now)]
            targets.sort()
        elif self._active(self._subs.get((recipient.bare, presentity)), now):
            targets = [envelope.recipient]
        else:
            return Effects(
                presence=last,
                dropped=1,
                note=f"not passed on: {recipient.bare} has no authorised subscription",
            )
        sends = []
        held = 0
        for watcher in targets:
            out = self._fan_out(envelope, watcher, len(targets) > 1)
            if self._pass(out, (bare(watcher), presentity), now):
                sends.append(out)
            else:
                held += 1
        note = f"to {len(sends)} watcher(s)" + (f", {held} held (coalescing)" if held else "")
        return Effects(send=tuple(sends), presence=last, note=note)

    # -- pacing ---------------------------------------------------------------------

    def _fan_out(self, envelope: Envelope, watcher: str, many: bool) -> Envelope:
        attributes = {**envelope.attributes, STATE: envelope.attributes.get(STATE, "active")}
        return envelope.replace(
            recipient=watcher,
            identity=identity_of(envelope.identity, watcher) if many else envelope.identity,
            attributes=attributes,
        )

    def _notification(
        self, last: LastPresence, watcher: str, cause: Envelope, now: float
    ) -> Envelope:
        """A NOTIFY of the last known presence, answering ``cause``."""
        return Envelope(
            operation=Operation.NOTIFY,
            sender=last.presentity,
            recipient=watcher,
            payload=last.payload,
            identity=identity_of("presence", last.identity, cause.identity, watcher),
            origin=Origin(adapter=cause.origin.adapter, peer="cpimgw", reply_to=watcher),
            received_at=now,
            attributes={STATE: "active"},
        )

    def _pass(self, out: Envelope, key: tuple[str, str], now: float) -> bool:
        """Send now, or hold (replacing what was held) until the pair's interval passed."""
        pace = self._pace
        last = pace.last.get(key)
        if key not in pace.held and (last is None or now - last >= self.min_interval):
            wait = self._buckets.take(
                key[0], rate=self.watcher_rate, burst=self.watcher_burst, now=now
            )
            if wait == 0.0:
                pace.last[key] = now
                return True
        pace.held[key] = out
        return False

    def next_flush(self) -> float | None:
        """When a held NOTIFY may go (None: nothing held)."""
        pace = self._pace
        if not pace.held:
            return None
        return min(pace.last.get(k, 0.0) + self.min_interval for k in pace.held)

    def flush(self, now: float) -> Effects:
        """Release held NOTIFYs whose interval passed; end expired subscriptions."""
        pace = self._pace
        sends = []
        for key in sorted(pace.held):
            last = pace.last.get(key)
            if last is not None and now - last < self.min_interval:
                continue
            wait = self._buckets.take(
                key[0], rate=self.watcher_rate, burst=self.watcher_burst, now=now
            )
            if wait > 0.0:
                continue
            sends.append(pace.held.pop(key))
            pace.last[key] = now
        expired = tuple(
            k for k, s in self._subs.items() if s.expires_at is not None and s.expires_at <= now
        )
        return Effects(send=tuple(sends), ended=expired, note="flush")

    def restate(self, now: float) -> Effects:
        """NOTIFYs of the stored last presence of each presentity to each of its active
        watchers, after a start. What coalescing held was in memory only and is gone
        with the process that held it, while the store has that latest document; a
        presentity whose network owes the gateway's re-subscription no fresh NOTIFY
        would leave the watcher with an older status until its next change. A new
        subscription starts with the current state (RFC 6665 §4.2.1.2,
        RFC 6121 §4.3.2), so the watcher gets it again: paced like any NOTIFY (a
        change right after it is held; a watcher over its rate gets the rest at the
        next flush), one identity per document and watcher."""
        sends = []
        for sub in self.subscriptions():
            last = self._presence.get(sub.presentity)
            if last is None or not self._active(sub, now):
                continue
            out = Envelope(
                operation=Operation.NOTIFY,
                sender=last.presentity,
                recipient=sub.watcher,
                payload=last.payload,
                identity=identity_of("presence", last.identity, "restart", sub.watcher),
                origin=Origin(adapter=sub.presentity_adapter, peer="cpimgw"),
                received_at=now,
                attributes={STATE: "active"},
            )
            if self._pass(out, (sub.watcher, sub.presentity), now):
                sends.append(out)
        return Effects(send=tuple(sends), note="last known presence restated after a start")

    def resubscribe(self, now: float) -> tuple[tuple[str, Envelope], ...]:
        """SUBSCRIBEs that re-establish every live subscription on the presentities'
        networks after a restart (the adapters' native dialogs did not survive it);
        each paired with the adapter to send it to."""
        out = []
        for sub in self.subscriptions():
            if sub.state is SubscriptionState.TERMINATED:
                continue
            if sub.expires_at is not None and sub.expires_at <= now:
                continue
            remaining = None if sub.expires_at is None else max(1, int(sub.expires_at - now))
            out.append(
                (
                    sub.presentity_adapter,
                    Envelope(
                        operation=Operation.SUBSCRIBE,
                        sender=sub.watcher,
                        recipient=sub.presentity,
                        payload=None,
                        identity=identity_of("resubscribe", sub.watcher, sub.presentity, str(now)),
                        origin=Origin(adapter=sub.watcher_adapter, peer="cpimgw"),
                        received_at=now,
                        duration=remaining,
                        attributes={"subscription.refresh": "restart"},
                    ),
                )
            )
        return tuple(out)


def _with(sub: Subscription, **changes: Any) -> Subscription:
    return replace(sub, **changes)
