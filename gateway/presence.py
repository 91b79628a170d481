"""The presence book (pure): subscriptions, last known presence, fan-out, coalescing.

RFC 3859 §3 (CPP subscribe/notify) and RFC 3922 §6 / RFC 8048 §5 (how XMPP and SIP
subscriptions map onto it). Placeholder: the book is added in the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from canonical.envelope import Payload


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
