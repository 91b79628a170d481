"""Admission control for inbound SIP requests: refuse new work the gateway cannot answer
in time, at once, instead of accepting it late (sans-I/O: the caller passes the time).

Why (RFC 6357 §3, RFC 3261 §17.1.2.2): over UDP a proxy retransmits a MESSAGE from T1
(500 ms) until it gets a final response, and answers its sender 408 after Timer F or its
own ``fr_timer``. A gateway whose 202s come later than T1 gets retransmissions on top of
the load that made it late, and past the proxy's timer the sender is told "failed" for
messages the gateway may still accept and deliver: a resend then duplicates, and the
work was wasted. Refusing *new* requests with ``503 Service Unavailable`` and
``Retry-After`` (RFC 3261 §21.5.4) while overloaded tells the sender at once, costs a
fraction of accepting, and keeps the answers to what was accepted within T1.

The signal is what the sender waits for: how long the core takes to take a request
(``deliver`` until it returns: the store write, RFC 3428 §7's 202 comes right after),
measured on the requests themselves, no timer:

- ``delay`` — how long the request answered last waited. One slow request does not
  refuse the others for long: the next answer replaces it.
- the expected wait — ``pending`` × the core's busy time per answer (a moving average
  of the time between answers while something waited, or of an answer's own wait after
  idle: the inverse of the core's throughput, also when it answers in batches, as a
  group commit does). It sees a burst coming before any of it is answered late.
- the stall — requests wait and none was answered for a while (a stuck store): the wait
  of the first request handed in since the last answer. A request stuck on its own
  while others are answered does not count (their answers clear it).
- ``pending`` — requests handed to the core and not answered yet (a hard bound: memory,
  and Little's law: pending = rate × delay).

Overloaded means: something is pending and either pending ≥ ``max_pending`` or the
largest of ``delay``, the expected wait and the stall is over ``max_delay``. With
nothing pending the gateway is never overloaded, so after a burst the next request is
admitted as a probe; its answer replaces the old ``delay``. Under sustained overload
this admits about what the core can answer within ``max_delay`` and refuses the rest
(no hysteresis needed: the decision is per request, and refused requests cost little).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds between two log lines about refused requests (a flood logs a line, not one each).
LOG_INTERVAL = 10.0
#: Weight of the newest sample in the moving average of the core's busy time per answer
#: (the first samples are averaged plainly). Small: answers come in batches (a group
#: commit answers dozens at once after a gap), so single samples swing widely.
WEIGHT = 1 / 64


@dataclass(slots=True)
class Admission:
    """The overload state of one adapter's inbound side.

    ``max_pending`` 0 turns the count bound off, ``max_delay`` 0 the delay bound; both
    0 admit everything. Call :meth:`begin` when a request is handed to the core and
    :meth:`end` (with what :meth:`begin` returned) when the core answered, whatever it
    answered; :meth:`overloaded` before handing in a request that would create work.
    """

    max_pending: int = 1000
    max_delay: float = 0.3
    pending: int = 0
    #: how long the request answered last waited for the core, seconds
    delay: float = 0.0
    #: moving average of the core's busy seconds per answer (1 / throughput)
    per_answer: float = 0.0
    #: when the first request handed in since the last answer was (None: none since)
    _waiting: float | None = None
    #: when the last answer came, and how many came (up to 1 / WEIGHT)
    _answered: float = 0.0
    _answers: int = 0
    #: requests refused since the last log line, and when that line was written
    refused: int = 0
    _logged: float | None = None

    def overloaded(self, now: float) -> bool:
        """Whether a new request arriving at ``now`` should be refused."""
        if self.pending == 0:
            return False
        if self.max_pending and self.pending >= self.max_pending:
            return True
        if not self.max_delay:
            return False
        if self.delay > self.max_delay or self.pending * self.per_answer > self.max_delay:
            return True
        return self._waiting is not None and now - self._waiting > self.max_delay

    def begin(self, now: float) -> float:
        """A request handed to the core at ``now``; returns the token for :meth:`end`."""
        if self._waiting is None:
            self._waiting = now  # a stall is measured from here until the next answer
        self.pending += 1
        return now

    def end(self, began: float, now: float) -> None:
        """The core answered the request handed in at ``began``."""
        self.pending -= 1
        self.delay = now - began
        busy = now - max(began, self._answered)  # since this one came or the last answer
        if self.max_delay:
            # a stall is the delay bound's to see; capped, it does not keep the average
            # pessimistic for dozens of answers after the store is back
            busy = min(busy, self.max_delay)
        if self._answers < 1 / WEIGHT:
            self._answers += 1
        self.per_answer += max(WEIGHT, 1 / self._answers) * (busy - self.per_answer)
        self._answered = now
        self._waiting = None

    def refuse(self, now: float) -> int:
        """Record one refused request; returns how many were refused since the last log
        line when a line is due now (at most one per :data:`LOG_INTERVAL`), else 0."""
        self.refused += 1
        if self._logged is not None and now - self._logged < LOG_INTERVAL:
            return 0
        self._logged = now
        count, self.refused = self.refused, 0
        return count
