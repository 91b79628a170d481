"""RFC 3261 §17 transactions as pure state machines: ``(event, now) -> actions``.

- :class:`ClientTransaction`: non-INVITE client (§17.1.2), timers E, F, K.
- :class:`ServerTransaction`: non-INVITE server (§17.2.2), timer J; absorbs retransmitted
  requests by resending the last response.
- :class:`InviteServerTransaction`: INVITE server (§17.2.1), timers G, H, I; the gateway
  only ever rejects INVITE, so this is what keeps that rejection reliable over UDP.

No clock and no socket: every method takes ``now`` (seconds, any monotonic origin) and
returns actions (:class:`Transmit`, :class:`PassUp`, :class:`Timeout`,
:class:`Terminated`); :attr:`deadline` says when :meth:`expire` must be called next. The
shell (``adapters.sip.endpoint``) owns the sockets and the timers.

Matching (§17.1.3, §17.2.3) is by :func:`client_key` and :func:`server_key`; requests
without the ``z9hG4bK`` magic cookie (RFC 2543 peers, RFC 4475 §3.1.3.1) are matched on
the older tuple of Request-URI, tags, Call-ID, CSeq and top Via.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from adapters.sip.codec import Message, Packed, Request, Response


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17.1.1.1 / Table 4: T1 (RTT estimate), T2 (cap for non-INVITE
    retransmissions), T4 (how long a message stays in the network). Tests use a small T1."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H and J."""
        return 64 * self.t1


DEFAULT_TIMERS = Timers()


class State(StrEnum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send this message to the transaction's peer (again)."""

    message: Message


@dataclass(frozen=True, slots=True)
class PassUp:
    """Hand this response to the transaction user."""

    response: Response


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer ``timer`` fired before a final response (F) or an ACK (H)."""

    timer: str


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; the shell forgets it."""


Action = Transmit | PassUp | Timeout | Terminated

ClientKey = tuple[str, str]
ServerKey = tuple[str, ...]


def client_key(message: Message) -> ClientKey:
    """(branch, CSeq method) of a request we sent or a response to it (§17.1.3)."""
    branch = message.top_via.branch or ""
    return (branch, message.cseq.method)


def server_key(request: Request) -> ServerKey:
    """The key of the server transaction ``request`` belongs to (§17.2.3).

    ACK matches the INVITE transaction it acknowledges.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if via.has_cookie:
        return (via.branch or "", via.sent_by.lower(), method)
    # RFC 2543 matching (§17.2.3, second half): no To tag, since an ACK carries ours.
    return (
        "2543",
        request.uri,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        str(via),
        method,
    )


class ClientTransaction:
    """Non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6)."""

    __slots__ = (
        "_e_at",
        "_e_interval",
        "_f_at",
        "_k_at",
        "key",
        "reliable",
        "request",
        "state",
        "timers",
    )

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timers: Timers = DEFAULT_TIMERS,
        key: ClientKey | None = None,
    ) -> None:
        """``key``: :func:`client_key` of ``request`` when the caller knows it already (it
        chose the branch), which saves reading the Via back."""
        if request.method in ("INVITE", "ACK"):
            raise ValueError("ClientTransaction is the non-INVITE client transaction")
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.key = client_key(request) if key is None else key
        self.state = State.TRYING
        self._e_at: float | None = None
        self._e_interval = timers.t1
        self._f_at: float | None = None
        self._k_at: float | None = None

    def start(self, now: float) -> list[Action]:
        """Send the request; start timer F and, over UDP, timer E (§17.1.2.2)."""
        self._f_at = now + self.timers.timeout
        if not self.reliable:
            self._e_at = now + self._e_interval
        return [Transmit(self.request)]

    @property
    def deadline(self) -> float | None:
        pending = [t for t in (self._e_at, self._f_at, self._k_at) if t is not None]
        return min(pending) if pending else None

    def receive(self, response: Response, now: float) -> list[Action]:
        """A response matched this transaction."""
        if self.state in (State.TRYING, State.PROCEEDING):
            if response.status < 200:
                self.state = State.PROCEEDING
                return [PassUp(response)]
            self._e_at = self._f_at = None
            if self.reliable:
                self.state = State.TERMINATED
                return [PassUp(response), Terminated()]
            self.state = State.COMPLETED
            self._k_at = now + self.timers.t4
            return [PassUp(response)]
        return []  # Completed: retransmitted finals are absorbed

    def expire(self, now: float) -> list[Action]:
        """Fire every timer that is due at ``now``."""
        actions: list[Action] = []
        if (
            self._f_at is not None
            and now >= self._f_at
            and self.state
            in (
                State.TRYING,
                State.PROCEEDING,
            )
        ):
            self.state = State.TERMINATED
            self._e_at = self._f_at = None
            return [Timeout("F"), Terminated()]
        if self._e_at is not None and now >= self._e_at:
            if self.state == State.TRYING:
                self._e_interval = min(2 * self._e_interval, self.timers.t2)
            else:
                self._e_interval = self.timers.t2
            self._e_at = now + self._e_interval
            actions.append(Transmit(self.request))
        if self._k_at is not None and now >= self._k_at and self.state == State.COMPLETED:
            self.state = State.TERMINATED
            self._k_at = None
            actions.append(Terminated())
        return actions

    def transport_error(self) -> list[Action]:
        """The transport could not send (§17.1.4): the TU sees a 503-like failure."""
        self.state = State.TERMINATED
        self._e_at = self._f_at = self._k_at = None
        return [Timeout("transport"), Terminated()]


class ServerTransaction:
    """Non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8)."""

    __slots__ = ("_j_at", "key", "last", "reliable", "request", "state", "timers")

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        self.request: Message = request
        self.reliable = reliable
        self.timers = timers
        self.key = server_key(request)
        self.state = State.TRYING
        self.last: Message | None = None
        self._j_at: float | None = None

    @property
    def deadline(self) -> float | None:
        return self._j_at

    def receive(self, request: Request, now: float) -> list[Action]:
        """A retransmission of the request: absorbed, or answered with the last response."""
        return self.retransmitted()

    def retransmitted(self) -> list[Action]:
        """What a retransmission of the request gets (§17.2.2): nothing while the TU has
        not answered, else the last response again. The request itself is not needed."""
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last is not None:
            return [Transmit(self.last)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        """The TU answers. Finals after the first are discarded (§17.2.2)."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        self.last = response
        if response.status < 200:
            self.state = State.PROCEEDING
            return [Transmit(response)]
        if self.reliable:
            self.state = State.TERMINATED
            return [Transmit(response), Terminated()]
        self.state = State.COMPLETED
        self._j_at = now + self.timers.timeout
        # only the bytes are needed from now on (Timer J holds this for 64*T1)
        self.last = Packed(bytes(response))
        self.request = Packed(bytes(self.request))
        return [Transmit(response)]

    def expire(self, now: float) -> list[Action]:
        if self._j_at is not None and now >= self._j_at:
            self._j_at = None
            self.state = State.TERMINATED
            return [Terminated()]
        return []

    def transport_error(self) -> list[Action]:
        self.state = State.TERMINATED
        self._j_at = None
        return [Terminated()]


class InviteServerTransaction:
    """INVITE server transaction (RFC 3261 §17.2.1, Figure 7), used to reject INVITEs."""

    __slots__ = (
        "_g_at",
        "_g_interval",
        "_h_at",
        "_i_at",
        "key",
        "last",
        "reliable",
        "request",
        "state",
        "timers",
    )

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.key = server_key(request)
        self.state = State.PROCEEDING
        self.last: Message | None = None
        self._g_at: float | None = None
        self._g_interval = timers.t1
        self._h_at: float | None = None
        self._i_at: float | None = None

    @property
    def deadline(self) -> float | None:
        pending = [t for t in (self._g_at, self._h_at, self._i_at) if t is not None]
        return min(pending) if pending else None

    def receive(self, request: Request, now: float) -> list[Action]:
        if request.method == "ACK":
            if self.state == State.COMPLETED:
                self.state = State.CONFIRMED
                self._g_at = self._h_at = None
                if self.reliable:
                    self.state = State.TERMINATED
                    return [Terminated()]
                self._i_at = now + self.timers.t4
            return []
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last is not None:
            return [Transmit(self.last)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        if self.state != State.PROCEEDING:
            return []
        self.last = response
        if response.status < 200:
            return [Transmit(response)]
        if response.status < 300:
            self.state = State.TERMINATED
            return [Transmit(response), Terminated()]
        self.state = State.COMPLETED
        self._h_at = now + self.timers.timeout
        if not self.reliable:
            self._g_at = now + self._g_interval
        return [Transmit(response)]

    def expire(self, now: float) -> list[Action]:
        if self._h_at is not None and now >= self._h_at and self.state == State.COMPLETED:
            self.state = State.TERMINATED
            self._g_at = self._h_at = None
            return [Timeout("H"), Terminated()]
        actions: list[Action] = []
        if self._g_at is not None and now >= self._g_at and self.last is not None:
            self._g_interval = min(2 * self._g_interval, self.timers.t2)
            self._g_at = now + self._g_interval
            actions.append(Transmit(self.last))
        if self._i_at is not None and now >= self._i_at:
            self.state = State.TERMINATED
            self._i_at = None
            actions.append(Terminated())
        return actions

    def transport_error(self) -> list[Action]:
        self.state = State.TERMINATED
        self._g_at = self._h_at = self._i_at = None
        return [Terminated()]
