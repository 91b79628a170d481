"""Webhooks: the client's outbox POSTed to its URL, signed, retried from the ledger.

Each event is one ``POST`` with the JSON event as the body (the same object a stream
carries, :func:`adapters.cpim.mapping.event_of`) and these headers:

- ``Cpimgw-Event-Id``: the event's cursor (a receiver drops an id it has seen);
- ``Cpimgw-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is
  HMAC-SHA256(secret, ``"<t>." + body``) (RFC 2104); the receiver recomputes it with
  the shared secret, compares in constant time, and refuses old timestamps (replay).

Events go out in order, one at a time per client. A 2xx answer removes the event; any
other answer or a network failure is retried with exponential backoff (honouring
``Retry-After``), and the backoff state is in the ledger, so a restart resumes it.
Events nobody takes are dropped only by the retention rule, with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Callable

import aiohttp

from adapters.cpim.ledger import Event, Ledger
from adapters.cpim.mapping import event_of, retry_after_of

SIGNATURE = "Cpimgw-Signature"
EVENT_ID = "Cpimgw-Event-Id"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Cpimgw-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: bytes, header: str | None, body: bytes, *, now: float, tolerance: float) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of
    ``now`` (constant-time comparison). Receivers use this; so do the tests."""
    if not header:
        return False
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    expected = sign(secret, int(stamp), body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, given)


def backoff(attempts: int, *, initial: float, maximum: float, retry_after: float | None) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from ``initial``, capped at
    ``maximum``, never sooner than the receiver's ``Retry-After``."""
    delay = min(maximum, initial * 2.0 ** max(0, attempts - 1))
    return max(delay, retry_after or 0.0)


def render(event: Event) -> bytes:
    """The webhook body of an outbox event."""
    data = event_of(event.envelope, seq=event.seq, kind=event.kind)
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


class Webhook:
    """Delivers one client's outbox to its URL until stopped."""

    def __init__(
        self,
        *,
        principal: str,
        url: str,
        secret: bytes,
        ledger: Ledger,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        logger: logging.Logger,
        count: Callable[..., None],
        initial_backoff: float = 1.0,
        max_backoff: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self.principal = principal
        self.url = url
        self.secret = secret
        self.ledger = ledger
        self.session = session
        self.clock = clock
        self.log = logger
        self.count = count
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    async def run(self) -> None:
        while True:
            attempts, next_at, _ = await self.ledger.hook_state(self.principal)
            wait = next_at - self.clock()
            if wait > 0:
                await asyncio.sleep(min(wait, self.max_backoff))
                continue
            self._wake.clear()
            events = await self.ledger.events(self.principal, after=0, limit=1)
            if not events:
                await self._pause(30.0)
                continue
            event = events[0]
            error, retry_after = await self._post(event)
            if error is None:
                await self.ledger.remove(event.seq)
                self.delivered += 1
                self.count("http_webhook_delivered", client=self.principal)
                continue
            attempts += 1
            self.failures += 1
            delay = backoff(
                attempts,
                initial=self.initial_backoff,
                maximum=self.max_backoff,
                retry_after=retry_after,
            )
            self.log.warning(
                "webhook of %s: event %d failed (%s), attempt %d, next in %.1fs",
                self.principal,
                event.seq,
                error,
                attempts,
                delay,
            )
            self.count("http_webhook_retries", client=self.principal)
            await self.ledger.hook_retry(
                self.principal, attempts=attempts, next_at=self.clock() + delay, error=error
            )

    async def _post(self, event: Event) -> tuple[str | None, float | None]:
        body = render(event)
        headers = {
            "Content-Type": "application/json",
            EVENT_ID: str(event.seq),
            SIGNATURE: sign(self.secret, int(self.clock()), body),
        }
        try:
            async with self.session().post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None, None
                return (
                    f"HTTP {response.status}",
                    retry_after_of(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}", None


__all__ = ["EVENT_ID", "SIGNATURE", "Webhook", "backoff", "render", "sign", "verify"]
