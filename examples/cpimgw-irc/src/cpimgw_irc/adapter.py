"""The IRC adapter's shell: one client connection (RFC 2812 §3.1 registration) as a relay
bot, reading PRIVMSG/NOTICE for the gateway and writing what the gateway sends.

- Registration: ``PASS`` (if configured), ``NICK``, ``USER``; a taken nick (433) gets
  ``_``/a digit appended; after ``001`` the bot joins the bridged channels.
- Inbound: a PRIVMSG to the bot or in a bridged channel is mapped and handed to
  ``deliver``; a refusal is answered with a NOTICE to its author (never to a NOTICE:
  RFC 2812 §3.3.2 forbids automatic replies to it).
- Outbound: :meth:`IrcAdapter.send` writes the lines, then ``PING :token`` and waits for
  the ``PONG``: the server handles a client's lines in order, so an error reply for the
  target (401 no such nick, 404 cannot send to channel, ...) arrives before the PONG and
  fails the send; the PONG alone means the server routed every line.
- IRC has no message identity: a message resent after a crash reaches IRC users twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from typing import ClassVar, cast

from pydantic import Field, SecretStr

from adapters.contract import (
    Adapter,
    AdapterConfig,
    AdapterContext,
    Capability,
    Deliver,
    Sample,
    Sent,
)
from canonical.envelope import Envelope, Origin
from canonical.errors import DeliveryError, GatewayError, Reason
from cpimgw_irc.line import Line, fold, parse_line
from cpimgw_irc.mapping import CHANNEL_PREFIXES, NUMERIC_REASONS, IrcMapper, IrcMessage

#: Failures worth retrying later (the rest are final for this envelope).
RETRYABLE = {Reason.UNAVAILABLE, Reason.RATE_LIMITED, Reason.TIMEOUT}


class IrcConfig(AdapterConfig):
    """``[adapters.NAME]`` for ``kind = "irc"``.

    - ``host``/``port``/``tls``: the IRC server. With ``tls`` its certificate is verified
      against ``ca_file`` (PEM trust roots; default: the system store) for the name
      ``server_name`` (default: ``host``).
    - ``nick``/``username``/``realname``/``password``: the relay bot's registration.
    - ``network``: the host part of IRC users' gateway-wide addresses
      (``im:NICK@NETWORK``); routes send that domain to this adapter.
    - ``channels``: bridged channels, ``{"#lab": "xmpp:lab@conference.example.com"}``.
    - ``max_text``: bytes of text per PRIVMSG (the relayed line must stay under 512).
    - ``send_timeout``: seconds to wait for the server to route what was sent.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=6667, ge=1, le=65535)
    tls: bool = False
    ca_file: str | None = None
    server_name: str | None = None
    nick: str = Field(default="cpimgw", min_length=1, max_length=30)
    username: str = "cpimgw"
    realname: str = "cpimgw gateway"
    password: SecretStr | None = None
    network: str = "irc.example.org"
    channels: dict[str, str] = Field(default_factory=dict)
    max_text: int = Field(default=350, ge=64, le=450)
    send_timeout: float = Field(default=10.0, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)


class IrcAdapter(Adapter):
    """IRC (RFC 1459/2812) through a relay bot. Messages only; failures as NOTICE."""

    kind: ClassVar[str] = "irc"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.MESSAGE, Capability.NON_ASCII, Capability.ERRORS}
    )
    config_model: ClassVar[type[AdapterConfig]] = IrcConfig

    def __init__(self, name: str, config: AdapterConfig, context: AdapterContext) -> None:
        super().__init__(name, config, context)
        self.settings = cast(IrcConfig, config)
        self._mapper = IrcMapper(
            network=self.settings.network,
            nick=self.settings.nick,
            channels=self.settings.channels,
            max_text=self.settings.max_text,
        )
        self._writer: asyncio.StreamWriter | None = None
        self._registered = asyncio.Event()
        self._stopping = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._failures: list[tuple[str, GatewayError]] = []
        self._tokens = itertools.count(1)
        self.nick = self.settings.nick

    @classmethod
    def sample(cls) -> Sample:
        return Sample(
            config=IrcConfig(channels={"#lab": "xmpp:lab@conference.example.com"}),
            local="im:charles@irc.example.org",
            remote="im:ada@example.com",
        )

    @property
    def mapper(self) -> IrcMapper:
        return self._mapper

    def ready(self) -> bool:
        return self._registered.is_set() and self._writer is not None

    # --- connection -----------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        """Connect, register, serve; reconnect with backoff until :meth:`stop`."""
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                await self._session(deliver)
                backoff = 1.0
            except (OSError, asyncio.IncompleteReadError) as exc:
                if not self._stopping.is_set():
                    self.context.logger.warning(
                        "irc %s: connection to %s:%s failed or lost: %s",
                        self.name,
                        self.settings.host,
                        self.settings.port,
                        exc,
                    )
            finally:
                self._disconnected()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.settings.reconnect_max)

    async def _session(self, deliver: Deliver) -> None:
        settings = self.settings
        context = ssl.create_default_context(cafile=settings.ca_file) if settings.tls else None
        reader, writer = await asyncio.open_connection(
            settings.host,
            settings.port,
            ssl=context,
            server_hostname=(settings.server_name or settings.host) if context else None,
        )
        self._writer = writer
        self.nick = self.settings.nick
        if self.settings.password is not None:
            await self._write(Line("PASS", (self.settings.password.get_secret_value(),)))
        await self._write(Line("NICK", (self.nick,)))
        user = (self.settings.username, "0", "*", self.settings.realname)
        await self._write(Line("USER", user, trailing=True))
        while not self._stopping.is_set():
            raw = await reader.readline()
            if not raw:
                raise ConnectionResetError("the IRC server closed the connection")
            data = raw.rstrip(b"\r\n")
            if not data:
                continue
            try:
                line = parse_line(data)
            except GatewayError as exc:
                self.context.logger.warning("irc %s: unreadable line skipped: %s", self.name, exc)
                continue
            if line.command == "ERROR":
                raise ConnectionResetError(f"the IRC server closed the link: {line.text}")
            await self._handle(line, deliver)

    def _disconnected(self) -> None:
        self._registered.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for future in self._pongs.values():
            if not future.done():
                future.set_exception(ConnectionResetError("connection lost"))
        self._pongs.clear()

    async def _write(self, line: Line) -> None:
        if self._writer is None:
            raise ConnectionResetError("not connected")
        self._writer.write(line.to_bytes())
        await self._writer.drain()

    # --- what the server says -----------------------------------------------------------

    async def _handle(self, line: Line, deliver: Deliver) -> None:
        command = line.command
        if command == "PING":
            await self._write(Line("PONG", line.params, trailing=line.trailing))
        elif command == "001":
            self.nick = line.params[0] if line.params else self.nick
            if self.settings.channels:
                await self._write(Line("JOIN", (",".join(self.settings.channels),)))
            self._registered.set()
        elif command in {"432", "433", "436", "437"} and not self._registered.is_set():
            self.nick = self._next_nick(self.nick)
            await self._write(Line("NICK", (self.nick,)))
        elif command == "PONG":
            future = self._pongs.pop(line.text, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif command in NUMERIC_REASONS and len(line.params) >= 2:
            self._failures.append(
                (fold(line.params[1]), GatewayError(line.text, reason=NUMERIC_REASONS[command]))
            )
        elif command in {"PRIVMSG", "NOTICE"} and len(line.params) == 2:
            target = line.params[0]
            ours = fold(target) == fold(self.nick) or (
                target[:1] in CHANNEL_PREFIXES and fold(target) in self._mapper.channels
            )
            if ours and line.nick is not None and fold(line.nick) != fold(self.nick):
                await self._inbound(line, deliver)

    def _next_nick(self, nick: str) -> str:
        base = self.settings.nick[:8]
        if nick == base + "_" or nick[-1:].isdigit():
            digit = int(nick[-1]) + 1 if nick[-1:].isdigit() else 1
            return f"{base[:7]}{digit % 10}"
        return base + "_"

    async def _inbound(self, line: Line, deliver: Deliver) -> None:
        author = line.nick or ""
        try:
            mapped = self._mapper.to_canonical(
                IrcMessage((line,)),
                origin=Origin(adapter=self.name, peer=f"{self.settings.host}:{self.settings.port}"),
                received_at=self.context.clock(),
            )
            await deliver(mapped.value)
        except GatewayError as exc:
            self.context.logger.info("irc %s: refused from %s: %s", self.name, author, exc)
            if line.command == "NOTICE":
                return  # RFC 2812 §3.3.2: never answer a NOTICE automatically
            text = " ".join(f"cpimgw: {exc.reason.value}: {exc}".split())
            await self._write(
                Line("NOTICE", (author, text[: self.settings.max_text]), trailing=True)
            )

    # --- what the gateway asks ----------------------------------------------------------

    async def send(self, envelope: Envelope) -> Sent:
        """Write the PRIVMSG lines; succeed once the server has routed all of them."""
        native = self._mapper.from_canonical(envelope).value
        await self._routed(native)
        return Sent(detail=f"{len(native.lines)} IRC line(s) routed by the server")

    async def report(self, envelope: Envelope, error: GatewayError) -> None:
        """A NOTICE to the IRC user whose message finally failed."""
        await self._routed(self._mapper.error_to_native(envelope, error))

    async def _routed(self, native: IrcMessage) -> None:
        if not self.ready():
            raise DeliveryError(
                "not connected to the IRC server", retryable=True, reason=Reason.UNAVAILABLE
            )
        targets = {fold(line.params[0]) for line in native.lines if line.params}
        async with self._send_lock:
            self._failures.clear()
            token = f"cpimgw-{next(self._tokens)}"
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pongs[token] = future
            try:
                for line in native.lines:
                    await self._write(Line(line.command, line.params, None, line.trailing))
                await self._write(Line("PING", (token,), trailing=True))
                await asyncio.wait_for(future, self.settings.send_timeout)
            except TimeoutError as exc:
                raise DeliveryError(
                    f"the IRC server did not answer within {self.settings.send_timeout} s",
                    retryable=True,
                    reason=Reason.TIMEOUT,
                ) from exc
            except (OSError, ConnectionError) as exc:
                raise DeliveryError(
                    f"IRC connection lost while sending: {exc}",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                ) from exc
            finally:
                self._pongs.pop(token, None)
            for target, failure in self._failures:
                if target in targets:
                    raise DeliveryError(
                        f"IRC server refused: {failure.message}",
                        retryable=failure.reason in RETRYABLE,
                        reason=failure.reason,
                        status=failure.message,
                    )

    async def stop(self) -> None:
        """Say QUIT and close; :meth:`run` returns."""
        self._stopping.set()
        if self._writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await self._write(Line("QUIT", ("cpimgw stopping",), trailing=True))
            self._writer.close()
