"""The XMPP adapter's I/O shell: a slixmpp ``ComponentXMPP`` (XEP-0114) connection.

Inbound: every ``<message/>`` and ``<presence/>`` addressed to the component domain is
checked (size), mapped (:mod:`adapters.xmpp.mapping`) and handed to ``deliver``, many at
once but in arrival order between each sender and recipient; a refusal goes back to the
sender as a stanza error (RFC 6120 §8.3).

Outbound: :meth:`XmppAdapter.send` queues the stanzas of an envelope; one writer task
writes them and then sends a XEP-0199 ping to the XMPP server as a *barrier*. XEP-0114
streams have no acknowledgements (XEP-0198 is not offered to components), but a server
handles the stanzas of one stream in order, so when the ping's result arrives every
stanza written before it has been accepted and routed, and any error the server bounced
for them (unknown user, offline user without storage) has arrived first. Only then does
``send`` report success; a bounced error becomes a :class:`DeliveryError`. A connection
lost before the barrier returns puts the stanzas back at the head of the queue, to be
written again after reconnecting with the same ids (derived from the envelope identity),
so receivers can drop the duplicate. The stream is cleartext: keep it on loopback or a
private link (docs/xmpp.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, SecretStr
from slixmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from adapters.contract import (
    FULL_FIDELITY,
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Sample,
    Sent,
)
from adapters.xmpp.errors import error_element, read_error
from adapters.xmpp.jid import AddressMap, Jid
from adapters.xmpp.mapping import XmppMapper
from adapters.xmpp.stanza import (
    COMPONENT_NS,
    PING_NS,
    local,
    register_plugins,
    serialize,
    wire_size,
)
from canonical.envelope import Envelope, Origin
from canonical.errors import DeliveryError, GatewayError, ParseError, Reason
from canonical.policy import KIB, Policy

#: Inbound stanzas with the core at once; each waits for the store commit holding its
#: envelope, so this many can share one commit.
INBOUND_LIMIT = 1024

#: Stream errors with which a server refuses the component's handshake (XEP-0114 §3,
#: RFC 6120 §4.9.3): configuration to fix on one side or the other, each with its fix.
REFUSALS = {
    "not-authorized": (
        "the secrets differ: check the component secret in [adapters.{name}] (secret, or "
        "CPIMGW_ADAPTERS__{upper}__SECRET) and the Component entry in prosody.cfg.lua "
        '(Component "{component}" with component_secret; ejabberd: the password of '
        '"{component}" under the ejabberd_service listener\'s hosts in ejabberd.yml)'
    ),
    "host-unknown": (
        "the server has no component {component}: add the Component entry to prosody.cfg.lua "
        '(Component "{component}" with component_secret; ejabberd: "{component}" under the '
        "ejabberd_service listener's hosts in ejabberd.yml), or fix component in "
        "[adapters.{name}]"
    ),
    "conflict": (
        "another connection holds component {component}: a second cpimgw node (list the "
        "adapter in [cluster] exclusive), or the server has not seen the old connection "
        "close yet"
    ),
    "improper-addressing": "set component in [adapters.{name}]",
}


class XmppConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``kind = "xmpp"`` (docs/xmpp.md lists every key)."""

    host: str = "127.0.0.1"
    port: int = Field(default=5347, ge=1, le=65535)
    component: str = Field(min_length=1, description="the component domain, e.g. sip.example.com")
    secret: SecretStr = Field(description="XEP-0114 shared secret (env-overridable)")
    domain_map: dict[str, str] = Field(
        default_factory=dict,
        description='JID domain -> "scheme:host", e.g. {"sip.example.com": "sip:example.net"}',
    )
    domains: list[str] = Field(
        default_factory=list, description="the XMPP server domains whose users this gateway serves"
    )
    ping_target: str | None = Field(
        default=None, description="JID pinged as the write barrier; default: the first domain"
    )
    max_stanza_size: int = Field(default=256 * KIB, ge=1024)
    connect_timeout: float = Field(
        default=10.0, gt=0, description="seconds from connecting to the session (handshake)"
    )
    reconnect_initial: float = Field(default=0.5, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)
    inbound_pending_max: int = Field(
        default=4096,
        ge=1,
        description="inbound stanzas read and not yet taken by the core above which the "
        "adapter stops reading the stream (the server holds the rest); reading resumes at half",
    )
    send_timeout: float = Field(default=15.0, gt=0)
    barrier_timeout: float = Field(default=10.0, gt=0)


@dataclass
class _Outgoing:
    stanzas: list[ET.Element]
    done: asyncio.Future[Sent]
    ids: tuple[str, ...] = ()
    wire: bytes = b""
    deadline: float | None = None  # loop time by which send() gives up waiting
    detached: bool = False  # nobody awaits it (an error report, stop()'s presence)


@dataclass(slots=True)
class _Lane:
    """The stanzas of one sender (bare JID) not yet with the core, and what is."""

    sender: str
    finished: Callable[[object], None] = lambda _task: None
    waiting: collections.deque[ET.Element] = field(default_factory=collections.deque)
    running: int = 0
    exclusive: bool = False  # a presence stanza is with the core


@dataclass
class _Barrier:
    ping_id: str
    items: list[_Outgoing]
    answered: asyncio.Future[bool]
    errors: dict[str, GatewayError] = field(default_factory=dict)


def shape_fault(element: ET.Element, policy: Policy) -> ParseError | None:
    """The stanza against the policy's XML bounds (depth, elements, attributes per element)
    that ``canonical.xmldoc`` applies to every document cpimgw parses itself: stanzas come
    from slixmpp's parser, which has none, and the mapping writes nested elements back
    recursively. Walked without recursion; None when the stanza is within the bounds."""
    pending = [(element, 1)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if depth > policy.max_xml_depth:
            return ParseError(
                "XML_TOO_DEEP",
                f"elements nested deeper than {policy.max_xml_depth} levels",
                hint="send a flatter stanza (Policy.max_xml_depth)",
            )
        if count > policy.max_xml_elements:
            return ParseError(
                "XML_TOO_MANY_ELEMENTS",
                f"more than {policy.max_xml_elements} elements",
                hint="send a smaller stanza (Policy.max_xml_elements)",
            )
        if len(item.attrib) > policy.max_xml_attributes:
            return ParseError(
                "XML_TOO_MANY_ATTRIBUTES",
                f"an element with more than {policy.max_xml_attributes} attributes",
                hint="send fewer attributes (Policy.max_xml_attributes)",
            )
        pending.extend((child, depth + 1) for child in item)
    return None


class _Component(ComponentXMPP):
    """ComponentXMPP without slixmpp's own presence/roster automation: every stanza goes to
    the adapter as it is. slixmpp answers probes with ``unsubscribed`` when its in-memory
    roster lacks a subscription, which would cancel the user's real subscription."""

    def __init__(self, config: XmppConfig, on_stanza: Callable[[ET.Element], object]) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            config.component, config.secret.get_secret_value(), config.host, config.port
        )
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        for name in ("IM", "IMError", "Presence"):
            self.remove_handler(name)
        self.del_event_handler("presence_probe", self._handle_probe)
        ns = self.default_ns
        self._on_element = on_stanza
        self._direct = frozenset(f"{{{ns}}}{name}" for name in ("message", "presence", "iq"))
        for name in ("message", "presence", "iq"):
            self.register_handler(
                Callback(f"cpimgw-{name}", MatchXPath(f"{{{ns}}}{name}"), self._stanza(on_stanza))
            )

    def _spawn_event(self, xml: ET.Element) -> None:
        """Stanzas go to the adapter as the parser built them: slixmpp's stanza objects and
        handler matching, which cost about as much as cpimgw's whole mapping, are skipped
        for the three stanza kinds; stream-level elements (handshake, stream errors) take
        slixmpp's way. The handlers above stay as the path for a slixmpp without this hook."""
        if xml.tag in self._direct:
            self._on_element(xml)
        else:
            super()._spawn_event(xml)

    @staticmethod
    def _stanza(on_stanza: Callable[[ET.Element], object]) -> Callable[[Any], None]:
        def handle(stanza: Any) -> None:
            on_stanza(stanza.xml)

        return handle


class XmppAdapter(Adapter):
    """cpimgw's XMPP side: an external component serving one domain (XEP-0114)."""

    kind: ClassVar[str] = "xmpp"
    capabilities: ClassVar[frozenset[Capability]] = FULL_FIDELITY
    config_model: ClassVar[type[AdapterConfig]] = XmppConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        if not isinstance(config, XmppConfig):
            config = XmppConfig.model_validate(config.model_dump())
        super().__init__(name, config, context)
        self.settings: XmppConfig = config
        self._mapper = XmppMapper(
            AddressMap(
                config.component,
                dict(config.domain_map),
                frozenset(d.lower() for d in config.domains),
            ),
            adapter=name,
            stanza_ns=COMPONENT_NS,
            policy=context.policy,
        )
        self._origin = Origin(adapter=name, peer=config.component)
        self._xmpp: _Component | None = None
        self._inbound: asyncio.Queue[ET.Element | None] = asyncio.Queue()
        self._lanes: dict[str, _Lane] = {}
        self._in_flight = 0
        self._room = asyncio.Event()
        self._deliver: Deliver | None = None
        self._outbound: list[_Outgoing] = []
        self._outbound_ready = asyncio.Event()
        self._session = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._barrier: _Barrier | None = None
        self._overdue_check: asyncio.TimerHandle | None = None
        self._ping_ids = itertools.count(1)
        self._available: dict[tuple[str, str], ET.Element] = {}
        self._wake = asyncio.Event()  # stop() ends a reconnect backoff at once
        # why the XMPP side is down (/readyz); None while a session is up
        self._problem: str | None = "not connected yet"
        self._refused: str | None = None  # the stream error that refused the last handshake
        self._stream_error: str | None = None  # the last stream error, with its text
        self._connect_error: str | None = None  # why the last TCP connect failed
        self._unavailable_since: float | None = None  # loop time the session was lost
        # inbound backpressure: stanzas read and not yet taken by the core (queued or in
        # flight), and the transport whose reading is paused because of them
        self._pending = 0
        self._paused: asyncio.Transport | None = None
        self._pauses = 0
        register_plugins()

    @classmethod
    def sample(cls) -> Sample:
        return Sample(
            config=XmppConfig(
                component="sip.example.com",
                secret=SecretStr("sample-secret"),
                domain_map={"sip.example.com": "sip:example.net"},
                domains=["xmpp.example.com"],
            ),
            local="xmpp:charles@xmpp.example.com",
            remote="sip:ada@example.net",
        )

    @property
    def mapper(self) -> XmppMapper:
        return self._mapper

    def ready(self) -> bool:
        return self._session.is_set()

    def not_ready_reason(self) -> str | None:
        """Why the XMPP side is down, with the likely fix (``/readyz``); None while the
        component session is up."""
        return None if self._session.is_set() else self._problem

    @property
    def inbound_pending(self) -> int:
        """Inbound stanzas read from the stream and not yet taken (stored or refused) by
        the core."""
        return self._pending

    @property
    def reading_paused(self) -> bool:
        """True while the adapter does not read the stream because too many inbound
        stanzas wait for the core (``inbound_pending_max``)."""
        return self._paused is not None

    # ------------------------------------------------------------------ connection
    def _connect_component(self) -> _Component:
        xmpp = _Component(self.settings, self._on_stanza)
        xmpp.add_event_handler("session_start", self._on_session)
        xmpp.add_event_handler("disconnected", self._on_lost)
        xmpp.add_event_handler("connection_failed", self._on_connect_failed)
        xmpp.add_event_handler("stream_error", self._on_stream_error)
        return xmpp

    @property
    def _address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _on_session(self, _event: object) -> None:
        self._lost.clear()
        self._session.set()
        self._problem = None
        self._refused = None
        self._unavailable_since = None
        self.context.logger.info(
            "xmpp %s: component %s connected to %s",
            self.name,
            self.settings.component,
            self._address,
        )
        self.context.count("xmpp_connected", adapter=self.name)

    def _on_lost(self, _event: object) -> None:
        if self._session.is_set():
            self._unavailable_since = asyncio.get_running_loop().time()
            self._problem = "connection lost; reconnecting"  # run() says more once it knows
        self._session.clear()
        self._lost.set()
        self._paused = None  # that transport is gone; the next one starts reading
        barrier = self._barrier
        if barrier is not None and not barrier.answered.done():
            barrier.answered.set_result(False)

    def _on_connect_failed(self, error: object) -> None:
        self._connect_error = str(error)
        self._on_lost(error)

    def _on_stream_error(self, error: Any) -> None:
        condition = str(error["condition"]) if error is not None else ""
        text = str(error["text"]) if error is not None else ""
        self._stream_error = f"{condition}: {text}" if text else condition
        if not self._session.is_set() and condition in REFUSALS:
            self._refused = condition  # run() logs it as an error, with the fix
            return
        self.context.logger.warning(
            "xmpp %s: stream error from %s: %s", self.name, self._address, self._stream_error
        )

    def _refusal(self, condition: str) -> str:
        """The operator's line for a refused handshake: who, where, why, and the fix."""
        fix = REFUSALS[condition].format(
            name=self.name, upper=self.name.upper(), component=self.settings.component
        )
        return (
            f"the XMPP server at {self._address} refused component {self.settings.component} "
            f"({self._stream_error or condition}); {fix}"
        )

    async def run(self, deliver: Deliver) -> None:
        """Connect, serve, and reconnect with capped exponential backoff (doubling from
        ``reconnect_initial`` to ``reconnect_max``, ±20 % jitter) until :meth:`stop` —
        after a lost connection, a failed connect, a handshake that never completes and a
        handshake the server refuses alike (docs/xmpp.md "When the XMPP side is down")."""
        worker = asyncio.create_task(self._serve_inbound(deliver))
        writer = asyncio.create_task(self._write_loop())
        loop = asyncio.get_running_loop()
        delay = self.settings.reconnect_initial
        self._unavailable_since = loop.time()
        try:
            while not self._stopping:
                xmpp = self._xmpp = self._connect_component()
                self._lost.clear()
                self._refused = self._stream_error = self._connect_error = None
                xmpp.connect()
                await self._first_of(self._session, self._lost, self.settings.connect_timeout)
                if self._session.is_set():
                    began = loop.time()
                    await self._lost.wait()
                    if loop.time() - began >= delay:  # a session that flaps keeps backing off
                        delay = self.settings.reconnect_initial
                    self._problem = "connection lost" + (
                        f" ({self._stream_error})" if self._stream_error else ""
                    )
                    level = logging.WARNING
                elif self._refused is not None:
                    self._problem = self._refusal(self._refused)
                    level = logging.ERROR
                    self.context.count("xmpp_refused_handshakes", adapter=self.name)
                elif self._connect_error is not None:
                    self._problem = (
                        f"cannot connect to the XMPP server's component port {self._address}: "
                        f"{self._connect_error}; check that the server runs and listens there "
                        "(Prosody: component_ports and component_interfaces)"
                    )
                    level = logging.WARNING
                elif not self._lost.is_set():
                    # a server that accepts TCP and never completes the XEP-0114 handshake:
                    # give that connection up and try a new one (with backoff)
                    self._problem = (
                        f"no component session with {self._address} within "
                        f"{self.settings.connect_timeout:g}s (connect_timeout)"
                    )
                    level = logging.WARNING
                    self.context.count("xmpp_connect_timeouts", adapter=self.name)
                else:
                    self._problem = f"the XMPP server at {self._address} closed the stream" + (
                        f" ({self._stream_error})" if self._stream_error else ""
                    )
                    level = logging.WARNING
                self._discard(xmpp)
                if self._stopping:
                    break
                if self._refused is not None or self._down_long():
                    self._shed_waiting()
                wait = delay * random.uniform(0.8, 1.2)
                self.context.logger.log(
                    level, "xmpp %s: %s; reconnecting in %.3gs", self.name, self._problem, wait
                )
                self.context.count("xmpp_reconnects", adapter=self.name)
                await self._first_of(self._wake, None, wait)
                delay = min(delay * 2, self.settings.reconnect_max)
        finally:
            self._inbound.put_nowait(None)
            if self._xmpp is not None:
                self._discard(self._xmpp)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker, 10)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._fail_pending()
            self._stopped.set()

    @staticmethod
    async def _first_of(first: asyncio.Event, second: asyncio.Event | None, within: float) -> None:
        """Wait until either event is set or ``within`` seconds pass. The waiters are cancelled
        either way (no task left behind, nothing to retrieve)."""
        waiters = {asyncio.ensure_future(first.wait())}
        if second is not None:
            waiters.add(asyncio.ensure_future(second.wait()))
        try:
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _discard(self, xmpp: _Component) -> None:
        """Close a component connection for good: the socket, slixmpp's own reconnect
        attempt, and the send-queue task each instance starts (it would otherwise live on,
        holding the instance, one per reconnect)."""
        xmpp.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            xmpp.abort()
        task = getattr(xmpp, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    def _down_long(self) -> bool:
        """True when the XMPP side cannot take a send now: the server refused the
        handshake, or no session has been up for ``send_timeout``."""
        if self._session.is_set():
            return False
        if self._refused is not None:
            return True
        since = self._unavailable_since
        return since is not None and (
            asyncio.get_running_loop().time() - since >= self.settings.send_timeout
        )

    def _down_error(self) -> DeliveryError:
        return DeliveryError(
            f"the XMPP side is down: {self._problem}",
            retryable=True,
            reason=Reason.UNAVAILABLE,
            hint="the gateway keeps it queued and retries; the adapter reconnects on its own",
        )

    def _shed_waiting(self) -> None:
        """The side is down for longer than a send waits: answer the waiting sends now
        (retryable: the core keeps their envelopes and sends them again) and drop their
        stanzas and those of sends already answered, so a long outage does not pile up
        copies to write at reconnection. Error reports and the unavailable presence of
        :meth:`stop`, which nobody retries, stay queued."""
        kept: list[_Outgoing] = []
        for item in self._outbound:
            if item.detached:
                kept.append(item)
                continue
            if not item.done.done():
                item.done.set_exception(self._down_error())
        self._outbound[:] = kept

    async def stop(self) -> None:
        """Tell every XMPP user that the foreign contacts shown available are gone, finish
        the queued work, then close the stream."""
        if self._stopping:
            return
        for (frm, to), _ in list(self._available.items()):
            stanza = ET.Element(
                f"{{{COMPONENT_NS}}}presence", {"from": frm, "to": to, "type": "unavailable"}
            )
            self._queue([stanza], detached=True)
        if self._session.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain(), self.settings.send_timeout)
        self._stopping = True
        self._wake.set()
        xmpp = self._xmpp
        if xmpp is not None:
            xmpp.cancel_connection_attempt()
            with contextlib.suppress(Exception):
                closing = xmpp.disconnect(wait=1.0)
                await asyncio.wait({closing}, timeout=2.0)
                if closing.done() and not closing.cancelled():
                    closing.exception()  # retrieved: a failed close is no news at stop
        self._lost.set()

    async def _drain(self) -> None:
        """Wait for everything queued and everything written but not yet confirmed (the
        writer may have taken the last items into a batch whose barrier is pending)."""
        barrier = self._barrier
        written = barrier.items if barrier is not None else []
        pending = [item.done for item in (*written, *self._outbound)]
        if pending:
            await asyncio.wait(pending)

    def _fail_pending(self) -> None:
        """Answer every send still waiting when the adapter stops (retryable: the core
        keeps the envelopes queued for the next start)."""
        for item in self._outbound:
            if not item.done.done():
                item.done.set_exception(
                    DeliveryError(
                        "the XMPP adapter stopped before sending",
                        retryable=True,
                        reason=Reason.UNAVAILABLE,
                    )
                )
        self._outbound.clear()

    # ------------------------------------------------------------------ inbound
    def _on_stanza(self, element: ET.Element) -> None:
        name = local(element.tag)
        if name == "iq":
            self._on_iq(element)
        else:
            self._inbound.put_nowait(element)
            self._pending += 1
            if self._pending >= self.settings.inbound_pending_max and self._paused is None:
                self._pause_reading()

    def _pause_reading(self) -> None:
        """Too many stanzas wait for the core: stop reading the stream, so the XMPP server
        (and the sockets' buffers) hold the rest instead of this process. What the parser
        already has from the last read is still handed in; then nothing more until
        :meth:`_resume_reading`."""
        transport = self._xmpp.transport if self._xmpp is not None else None
        if transport is None:
            return
        with contextlib.suppress(Exception):  # a transport closing under us reads no more
            transport.pause_reading()
        self._paused = transport
        self._pauses += 1
        self.context.count("xmpp_reading_paused", adapter=self.name)
        self.context.logger.debug(
            "xmpp %s: %d stanzas wait for the core; reading paused", self.name, self._pending
        )

    def _resume_reading(self) -> None:
        transport, self._paused = self._paused, None
        current = self._xmpp.transport if self._xmpp is not None else None
        if transport is None or current is not transport:
            return  # that connection is gone; a new one reads from the start
        with contextlib.suppress(Exception):
            transport.resume_reading()
        self.context.logger.debug("xmpp %s: reading resumed", self.name)

    def _on_iq(self, iq: ET.Element) -> None:
        kind = iq.get("type")
        barrier = self._barrier
        if kind in ("result", "error"):
            ours = barrier is not None and iq.get("id") == barrier.ping_id
            if ours and barrier is not None and not barrier.answered.done():
                barrier.answered.set_result(True)
            return
        # RFC 6120 §8.3.3.19: an IQ nobody here handles gets service-unavailable.
        reply = ET.Element(
            iq.tag,
            {
                "type": "error",
                "id": iq.get("id", ""),
                "from": iq.get("to", ""),
                "to": iq.get("from", ""),
            },
        )
        error = ET.SubElement(reply, f"{{{COMPONENT_NS}}}error", {"type": "cancel"})
        ET.SubElement(error, "{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable")
        self._write(reply)

    async def _serve_inbound(self, deliver: Deliver) -> None:
        """Hand stanzas to the core with many in flight: each ``deliver`` waits for the
        store commit holding its envelope, so one at a time would allow one stanza per
        commit. Order is kept per sender (bare JID), in a :class:`_Lane`: the sender's
        messages are handed over in arrival order without waiting for each other (the
        core stores ``deliver`` calls of messages in the order they were made), and a
        presence stanza waits for everything before it and holds back everything after
        it, so the core's presence book sees each user's presence changes in order
        (RFC 6120 §10.1: a server delivers one entity's stanzas in order). At most
        ``INBOUND_LIMIT`` stanzas are with the core at once."""
        self._deliver = deliver
        while True:
            element = await self._inbound.get()
            if element is None:
                break
            while self._in_flight >= INBOUND_LIMIT:
                self._room.clear()
                await self._room.wait()
            sender = element.get("from", "").partition("/")[0]
            lane = self._lanes.get(sender)
            if lane is None:
                lane = self._lanes[sender] = _Lane(sender)
                lane.finished = functools.partial(self._finished, lane)
            lane.waiting.append(element)
            self._advance(lane)
        while self._lanes:  # what was received is delivered or refused, never dropped
            self._room.clear()
            await self._room.wait()

    def _advance(self, lane: _Lane) -> None:
        """Start what the lane's order allows: messages while no presence stanza is in
        flight, a presence stanza once nothing is."""
        waiting = lane.waiting
        while waiting and not lane.exclusive:
            element = waiting[0]
            exclusive = local(element.tag) != "message"
            if exclusive and lane.running:
                return
            waiting.popleft()
            lane.exclusive = exclusive
            lane.running += 1
            self._in_flight += 1
            task = asyncio.create_task(self._serve_one(element))
            task.add_done_callback(lane.finished)

    def _finished(self, lane: _Lane, _task: object) -> None:
        self._in_flight -= 1
        self._pending -= 1
        if self._paused is not None and self._pending <= self.settings.inbound_pending_max // 2:
            self._resume_reading()
        lane.running -= 1
        if not lane.running:
            lane.exclusive = False
        self._advance(lane)
        if not lane.running and not lane.waiting:
            del self._lanes[lane.sender]
        self._room.set()

    async def _serve_one(self, element: ET.Element) -> None:
        assert self._deliver is not None
        try:
            await self._handle_inbound(element, self._deliver)
        except Exception:
            self.context.logger.exception("xmpp %s: inbound stanza failed", self.name)
            self.context.count("xmpp_inbound_failures", adapter=self.name)

    async def _handle_inbound(self, element: ET.Element, deliver: Deliver) -> None:
        envelope = self._map_inbound(element)
        if envelope is None:
            return
        try:
            await deliver(envelope)
        except GatewayError as exc:
            self.context.count("xmpp_refused", adapter=self.name, reason=exc.reason.value)
            self._reply_error(element, exc)

    def _map_inbound(self, element: ET.Element) -> Envelope | None:
        """One received stanza as an envelope for the core, or None when it was an error
        report or has been refused (the stanza error is already written back)."""
        if element.get("type") == "error":
            self._on_error_stanza(element)
            return None
        size = wire_size(element)
        if size > self.settings.max_stanza_size:
            self._reply_error(
                element,
                GatewayError(
                    f"stanza of at least {size} characters exceeds the gateway's limit of "
                    f"{self.settings.max_stanza_size}",
                    reason=Reason.TOO_LARGE,
                    hint="send a smaller message",
                ),
            )
            return None
        shape = shape_fault(element, self.context.policy)
        if shape is not None:
            self.context.count("xmpp_refused", adapter=self.name, reason=shape.reason.value)
            self._reply_error(element, shape)
            return None
        try:
            mapped = self._mapper.to_canonical(
                element, origin=self._origin, received_at=self.context.clock()
            )
        except GatewayError as exc:
            self.context.count("xmpp_refused", adapter=self.name, reason=exc.reason.value)
            self._reply_error(element, exc)
            return None
        for loss in mapped.losses:
            self.context.logger.info("xmpp %s: loss %s: %s", self.name, loss.field, loss.detail)
            self.context.count("xmpp_losses", adapter=self.name, field=loss.field)
        return mapped.value

    def _reply_error(self, element: ET.Element, error: GatewayError) -> None:
        """RFC 6120 §8.3.1: the error goes back to the sender with the same id; never an
        error about an error, and none for unavailable presence."""
        kind = element.get("type", "")
        if kind == "error" or (local(element.tag) == "presence" and kind == "unavailable"):
            return
        attrs = {"from": element.get("to", ""), "to": element.get("from", ""), "type": "error"}
        if element.get("id"):
            attrs["id"] = element.get("id", "")
        reply = ET.Element(element.tag, attrs)
        condition = (
            "jid-malformed"
            if isinstance(error, ParseError) and error.code == "JID_MALFORMED"
            else None
        )
        reply.append(error_element(COMPONENT_NS, error.reason, str(error), condition=condition))
        self._write(reply)

    def _on_error_stanza(self, element: ET.Element) -> None:
        found = read_error(element)
        barrier = self._barrier
        stanza_id = element.get("id", "")
        if found is None:
            return
        reason, kind, condition, text = found
        error = DeliveryError(
            f"XMPP {condition} ({kind}) from {element.get('from')}{': ' + text if text else ''}",
            retryable=kind == "wait",
            reason=reason,
            status=condition,
            hint="the XMPP server or client refused the stanza",
        )
        if barrier is not None and stanza_id:
            barrier.errors[stanza_id] = error
            return
        self.context.logger.info("xmpp %s: late error for %s: %s", self.name, stanza_id, error)
        self.context.count("xmpp_late_errors", adapter=self.name, condition=condition)

    # ------------------------------------------------------------------ outbound
    async def send(self, envelope: Envelope) -> Sent:
        mapped = self._mapper.stanzas(envelope)
        for loss in mapped.losses:
            self.context.count("xmpp_losses", adapter=self.name, field=loss.field)
        if not self._session.is_set() and self._down_long():
            raise self._down_error()  # not queued: the core keeps it and tries again
        item = self._queue(mapped.value)
        loop = asyncio.get_running_loop()
        item.deadline = loop.time() + self.settings.send_timeout
        if self._overdue_check is None:
            self._overdue_check = loop.call_later(1.0, self._give_up_overdue)
        return await item.done

    def _give_up_overdue(self) -> None:
        """Answer the sends whose stanzas were not confirmed within ``send_timeout`` (checked
        once a second while any wait; one timer for all instead of one per send): they fail
        as timeouts, and the stanzas stay queued, written after reconnecting."""
        self._overdue_check = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        barrier = self._barrier
        waiting = False
        for item in (*self._outbound, *(barrier.items if barrier is not None else ())):
            if item.deadline is None or item.done.done():
                continue
            if now < item.deadline:
                waiting = True
                continue
            item.done.set_exception(
                DeliveryError(
                    f"XMPP server did not confirm within {self.settings.send_timeout}s",
                    retryable=True,
                    reason=Reason.TIMEOUT,
                    hint="the stanza stays queued and is written after reconnecting",
                )
            )
        if waiting:
            self._overdue_check = loop.call_later(1.0, self._give_up_overdue)

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        """The final failure of an envelope that came from XMPP, as a stanza error."""
        stanza = self._mapper.error_to_native(envelope, error)
        self._queue([stanza], detached=True)

    def _queue(self, stanzas: list[ET.Element], *, detached: bool = False) -> _Outgoing:
        """Queue stanzas for the writer, serialised now: a stanza that cannot be written
        raises MappingError here, to the caller, instead of failing a whole batch later.
        A ``detached`` item has no caller waiting: its outcome is retrieved here (a
        bounced error report is logged by :meth:`_settle_detached`), never left for
        asyncio to complain about."""
        wire = b"".join(serialize(s) for s in stanzas)
        loop = asyncio.get_running_loop()
        ids = tuple(s.get("id", "") for s in stanzas)
        item = _Outgoing(stanzas, loop.create_future(), ids, wire, detached=detached)
        if detached:
            item.done.add_done_callback(self._settle_detached)
        self._outbound.append(item)
        self._outbound_ready.set()
        return item

    def _settle_detached(self, done: asyncio.Future[Sent]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self.context.logger.info(
                "xmpp %s: a stanza of its own was not sent: %s", self.name, error
            )

    def _write(self, stanza: ET.Element) -> bool:
        return self._write_bytes(serialize(stanza))

    def _write_bytes(self, data: bytes) -> bool:
        xmpp = self._xmpp
        if xmpp is None or not self._session.is_set():
            return False
        try:
            xmpp.send_raw(data)
        except Exception:  # noqa: BLE001 - NotConnectedError and transport faults alike
            return False
        return True

    def _track(self, stanza: ET.Element) -> None:
        """Remember which foreign contacts XMPP users see available (for stop())."""
        if local(stanza.tag) != "presence":
            return
        kind = stanza.get("type")
        key = (stanza.get("from", ""), stanza.get("to", ""))
        if kind is None:
            self._available[key] = stanza
        elif kind == "unavailable":
            if Jid.parse(key[0]).resource is None:
                for other in [
                    k for k in self._available if k[1] == key[1] and k[0].split("/")[0] == key[0]
                ]:
                    del self._available[other]
            self._available.pop(key, None)

    async def _write_loop(self) -> None:
        # Python 3.11's wait_for can swallow a cancellation that races with the barrier's
        # answer (gh-86296); stopping is checked here so a lost cancel cannot hang run()
        while not self._stopping:
            await self._outbound_ready.wait()
            if not self._outbound:
                self._outbound_ready.clear()
                continue
            await self._session.wait()
            batch = self._outbound[:256]
            del self._outbound[: len(batch)]
            loop = asyncio.get_running_loop()
            barrier = _Barrier(f"cpimgw-ping-{next(self._ping_ids)}", batch, loop.create_future())
            self._barrier = barrier
            target = self.settings.ping_target or (
                self.settings.domains[0] if self.settings.domains else self.settings.component
            )
            ping = ET.Element(
                f"{{{COMPONENT_NS}}}iq",
                {
                    "type": "get",
                    "id": barrier.ping_id,
                    "from": self.settings.component,
                    "to": target,
                },
            )
            ET.SubElement(ping, f"{{{PING_NS}}}ping")
            # the batch and its barrier in one write: one system call, not one per stanza
            written = self._write_bytes(b"".join([*(i.wire for i in batch), serialize(ping)]))
            answered = False
            pauses = self._pauses
            while written:
                try:
                    answered = await asyncio.wait_for(
                        asyncio.shield(barrier.answered), self.settings.barrier_timeout
                    )
                    break
                except TimeoutError:
                    # the answer may wait unread while reading is paused for the core:
                    # only a stream silent while read is dead
                    if self._paused is None and self._pauses == pauses:
                        break
                    pauses = self._pauses
            self._barrier = None
            if not answered:
                # not confirmed: back to the head of the queue, same ids on the rewrite
                self._outbound[:0] = [i for i in batch if not i.done.done()]
                if self._session.is_set() and self._xmpp is not None:
                    self._xmpp.abort()  # a stream that does not answer pings is dead
                continue
            for item in batch:
                failures = [barrier.errors[i] for i in item.ids if i in barrier.errors]
                for stanza in item.stanzas:
                    self._track(stanza)
                if item.done.done():
                    continue
                if failures:
                    item.done.set_exception(failures[0])
                else:
                    item.done.set_result(Sent(native_id=item.ids[0] if item.ids else None))
