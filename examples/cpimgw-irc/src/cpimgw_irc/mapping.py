"""IRC <-> canonical mapping (pure, sans-I/O): PRIVMSG/NOTICE lines and CPIM messages.

Addressing (documented for users in the package README):

- An IRC user ``alice`` on the network configured as ``irc.example.org`` is the
  gateway-wide address ``im:alice@irc.example.org``; a bridged channel ``#lab`` is the
  address configured for it in ``channels`` (and, going out, ``im:%23lab@irc.example.org``
  reaches it too).
- An IRC user writes to someone on another network by sending the relay bot a private
  message that *starts with the address*: ``/msg cpimgw sip:ada@example.com hello``
  (``<sip:ada@example.com> hello`` works too). A message in a bridged channel goes to the
  channel's configured address.
- Messages from other networks arrive as PRIVMSG from the bot, each line led by the
  sender's address: ``<sip:ada@example.com> hello``.

Canonical objects built here (RFC 3862) carry the IRC-only fields as extension headers in
the namespace ``urn:cpimgw:irc:0`` (command, target, prefix, the address as written), so
a message that came from IRC maps back to equal lines (law L2) without side state, and
the object maps to itself (law L1 for objects this adapter builds). A message from
another network loses what IRC cannot show — and every such loss is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from adapters.contract import Mapped
from canonical import cpim
from canonical.address import Address
from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of
from canonical.errors import GatewayError, Loss, MappingError, Reason
from cpimgw_irc.line import Line, bytes_of, fold, parse_lines, text_of

#: The namespace of IRC-only fields in canonical objects (DESIGN.md "Native-only fields").
IRC_NS = "urn:cpimgw:irc:0"
TEXT_UTF8 = "text/plain; charset=utf-8"
#: RFC 1428: text in an unknown 8-bit character set (IRC is a byte protocol).
TEXT_8BIT = "text/plain; charset=unknown-8bit"
#: RFC 2812 §1.3: channel names start with one of these.
CHANNEL_PREFIXES = "#&+!"
#: How failures appear in a NOTICE: ``cpimgw: REASON: text``.
NOTICE_TAG = "cpimgw: "
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")

#: IRC numeric error replies (RFC 2812 §5.2) a PRIVMSG can earn, as failure reasons.
NUMERIC_REASONS = {
    "401": Reason.UNKNOWN_DESTINATION,  # ERR_NOSUCHNICK
    "402": Reason.UNKNOWN_DESTINATION,  # ERR_NOSUCHSERVER
    "403": Reason.UNKNOWN_DESTINATION,  # ERR_NOSUCHCHANNEL
    "404": Reason.FORBIDDEN,  # ERR_CANNOTSENDTOCHAN
    "407": Reason.BAD_REQUEST,  # ERR_TOOMANYTARGETS
    "411": Reason.BAD_REQUEST,  # ERR_NORECIPIENT
    "412": Reason.BAD_REQUEST,  # ERR_NOTEXTTOSEND
    "421": Reason.UNSUPPORTED_FEATURE,  # ERR_UNKNOWNCOMMAND
    "437": Reason.UNAVAILABLE,  # ERR_UNAVAILRESOURCE
    "451": Reason.UNAUTHENTICATED,  # ERR_NOTREGISTERED
    "263": Reason.RATE_LIMITED,  # RPL_TRYAGAIN
}


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One logical message: the IRC lines it takes (a long or multi-line text takes
    several PRIVMSGs, RFC 2812 §2.3)."""

    lines: tuple[Line, ...]


def _utf8_chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes, never splitting a UTF-8 sequence and
    never ending a piece in white space (servers strip it from the end of a line; moved
    to the start of the next piece, it survives)."""
    chunks = []
    while len(data) > size:
        cut = size
        while cut > 0 and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        while cut > 0 and data[cut - 1 : cut] in {b" ", b"\t"}:
            cut -= 1
        cut = cut or size
        chunks.append(data[:cut])
        data = data[cut:]
    chunks.append(data)
    return chunks


def _lead(text: str) -> tuple[str, str, str] | None:
    """``(token as written, URI, rest)`` when ``text`` starts with an address."""
    token, space, rest = text.partition(" ")
    uri = token[1:-1] if token.startswith("<") and token.endswith(">") else token
    if not space or not _URI.fullmatch(uri):
        return None
    return token, uri, rest


class IrcMapper:
    """The pure mapper of the IRC adapter.

    ``network`` is the host part of IRC users' gateway-wide addresses, ``nick`` the relay
    bot's nickname, ``channels`` maps bridged channel names to gateway-wide addresses,
    ``max_text`` bounds the text of one PRIVMSG so the relayed line stays within 512 bytes
    (RFC 2812 §2.3) whatever prefix the server puts in front.
    """

    def __init__(
        self,
        *,
        network: str,
        nick: str,
        channels: Mapping[str, str] | None = None,
        max_text: int = 350,
    ) -> None:
        self.network = network
        self.nick = nick
        self.channels = {fold(k): v for k, v in (channels or {}).items()}
        self.max_text = max_text

    # --- addresses ------------------------------------------------------------------

    def address_of(self, name: str) -> str:
        """The gateway-wide address of an IRC nick or channel on this network."""
        return str(Address(scheme="im", user=name, host=self.network))

    def target_of(self, uri: str) -> str:
        """The IRC nick or channel a gateway-wide address names (MappingError if none)."""
        for channel, bridged in self.channels.items():
            if bridged == uri:
                return channel
        try:
            address = Address.parse(uri)
        except ValueError as exc:
            raise MappingError(
                f"{uri!r} is not an address", reason=Reason.UNKNOWN_DESTINATION
            ) from exc
        if address.host.lower() != self.network.lower() or not address.user:
            raise MappingError(
                f"{uri} is not on the IRC network {self.network}",
                reason=Reason.UNKNOWN_DESTINATION,
                hint=f"address IRC users as im:NICK@{self.network}",
            )
        return address.user

    # --- IRC -> canonical ---------------------------------------------------------------

    def to_canonical(
        self, native: IrcMessage, *, origin: Origin, received_at: float
    ) -> Mapped[Envelope]:
        """PRIVMSG/NOTICE lines -> a MESSAGE envelope with a CPIM payload built by
        :func:`canonical.cpim.build` (deterministic; IRC-only fields as ``irc.*``)."""
        lines = native.lines
        first = lines[0]
        if first.command not in {"PRIVMSG", "NOTICE"}:
            raise MappingError(
                f"IRC {first.command} is not a message", reason=Reason.UNSUPPORTED_FEATURE
            )
        for line in lines:
            if len(line.params) != 2:
                raise MappingError(
                    f"{line.command} needs a target and a text, got {len(line.params)} parameters",
                    reason=Reason.BAD_REQUEST,
                )
            same = line.command == first.command and line.prefix == first.prefix
            if not same or fold(line.params[0]) != fold(first.params[0]):
                raise MappingError(
                    "one message's lines must share command, sender and target",
                    reason=Reason.BAD_REQUEST,
                    hint="map each line on its own",
                )
        target = first.params[0]
        texts = [line.text for line in lines]
        extensions = [("irc.Command", first.command), ("irc.Target", target)]
        if first.prefix is not None:
            extensions.append(("irc.Prefix", first.prefix))
        if target[:1] in CHANNEL_PREFIXES:
            recipient = self.channels.get(fold(target))
            if recipient is None:
                raise MappingError(
                    f"channel {target} is not bridged",
                    reason=Reason.UNKNOWN_DESTINATION,
                    hint="add it to the adapter's 'channels' table",
                )
        else:
            lead = _lead(texts[0])
            if lead is None:
                raise MappingError(
                    "the message does not start with the recipient's address",
                    reason=Reason.BAD_REQUEST,
                    hint="write e.g. 'sip:ada@example.com hello' to the relay bot",
                )
            token, recipient, rest = lead
            marker = token + " "
            later = [t.startswith(marker) for t in texts[1:]]
            if later and all(later):
                texts = [t[len(marker) :] for t in texts]
                extensions.append(("irc.Lead", "each"))
            elif any(later):
                raise MappingError(
                    "only some lines start with the address", reason=Reason.BAD_REQUEST
                )
            else:
                texts[0] = rest
            extensions.append(("irc.Address", token))
        body = b"\n".join(bytes_of(t) for t in texts)
        try:
            body.decode("utf-8")
            content_type = TEXT_UTF8
        except UnicodeDecodeError:
            content_type = TEXT_8BIT
        nick = first.nick or self.nick
        sender = self.address_of(nick)
        try:
            message = cpim.build(
                sender=sender,
                to=[recipient],
                namespaces=[("irc", IRC_NS)],
                extensions=extensions,
                content_type=content_type,
                body=body,
            )
        except ValueError as exc:
            raise MappingError(
                f"cannot express this IRC message as CPIM: {exc}", reason=Reason.BAD_REQUEST
            ) from exc
        envelope = Envelope(
            operation=Operation.MESSAGE,
            sender=sender,
            recipient=recipient,
            payload=Payload(CPIM, message.raw),
            identity=identity_of("irc", self.network, first.prefix, target, body, str(received_at)),
            origin=replace(origin, reply_to=sender, context={"irc.nick": nick}),
            received_at=received_at,
        )
        return Mapped(envelope)

    # --- canonical -> IRC ---------------------------------------------------------------

    def from_canonical(self, envelope: Envelope) -> Mapped[IrcMessage]:
        """A MESSAGE envelope -> PRIVMSG lines. What IRC cannot show is recorded as a loss;
        what it cannot carry without damage (signed, encrypted, binary, required
        extensions) is refused with a MappingError naming the reason."""
        if envelope.operation is not Operation.MESSAGE:
            raise MappingError(
                f"IRC has no {envelope.operation.value} operation (messages only)",
                reason=Reason.UNSUPPORTED_FEATURE,
            )
        payload = envelope.payload
        if payload is None:
            raise MappingError("a message without payload", reason=Reason.BAD_REQUEST)
        if payload.is_secured:
            raise MappingError(
                "IRC cannot carry a signed or encrypted object without breaking it",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="the object is refused rather than stripped of its signature",
            )
        if payload.media_type == CPIM:
            message = cpim.parse_body(payload.body)
            if message.find("Command", IRC_NS):
                return self._from_irc(message)
            return self._from_elsewhere(envelope, message)
        if payload.media_type.startswith("text/"):
            return self._lines(envelope, payload.content_type, payload.body, [])
        raise MappingError(
            f"IRC carries text, not {payload.media_type}", reason=Reason.UNSUPPORTED_MEDIA
        )

    @staticmethod
    def _irc_field(message: cpim.CpimMessage, local: str) -> str | None:
        found = message.find(local, IRC_NS)
        return found[0].value if found else None

    def _from_irc(self, message: cpim.CpimMessage) -> Mapped[IrcMessage]:
        """Rebuild the lines of a message that came from IRC (its ``irc.*`` headers)."""
        command = self._irc_field(message, "Command") or "PRIVMSG"
        target = self._irc_field(message, "Target")
        if target is None:
            raise MappingError("irc.Command without irc.Target", reason=Reason.BAD_REQUEST)
        prefix = self._irc_field(message, "Prefix")
        token = self._irc_field(message, "Address")
        each = self._irc_field(message, "Lead") == "each"
        texts = [text_of(part) for part in message.body.split(b"\n")]
        if token is not None:
            texts = [
                f"{token} {text}" if index == 0 or each else text
                for index, text in enumerate(texts)
            ]
        lines = tuple(Line(command, (target, text), prefix, trailing=True) for text in texts)
        losses = tuple(
            Loss(h.name, "no IRC equivalent")
            for h in message.headers
            if h.namespace != IRC_NS and h.local not in {"From", "To", "NS"}
        )
        return Mapped(IrcMessage(lines), losses)

    def _from_elsewhere(self, envelope: Envelope, message: cpim.CpimMessage) -> Mapped[IrcMessage]:
        if message.require:
            raise MappingError(
                f"Require: {', '.join(message.require)} cannot be honoured over IRC",
                reason=Reason.UNSUPPORTED_FEATURE,
                hint="RFC 3862 §3.5: a receiver that cannot honour Require refuses",
            )
        losses = [
            Loss(
                "message/cpim",
                "IRC carries the text only: the CPIM object is not carried, so it cannot "
                "be rebuilt byte for byte",
            )
        ]
        sender = message.sender
        if sender is not None and sender.formal_name:
            losses.append(Loss("From", f"formal name {sender.formal_name!r} not shown"))
        for header in message.headers:
            if header.namespace == cpim.CPIM_NS and header.local in {"From", "To", "NS"}:
                continue
            losses.append(Loss(header.name, f"not shown on IRC ({header.value[:60]!r})"))
        for name, value in message.entity_headers:
            if name.lower() != "content-type":
                losses.append(Loss(name, f"entity header not carried ({value.strip()[:60]!r})"))
        content_type = message.content_type or "text/plain"
        return self._lines(envelope, content_type, message.body, losses)

    def _lines(
        self, envelope: Envelope, content_type: str, body: bytes, losses: list[Loss]
    ) -> Mapped[IrcMessage]:
        """Text -> PRIVMSG lines to the recipient, each led by the sender's address."""
        media = content_type.split(";", 1)[0].strip().lower()
        if not media.startswith("text/"):
            raise MappingError(
                f"IRC carries text, not {media}",
                reason=Reason.UNSUPPORTED_MEDIA,
                hint="send the file as a link, or to a network that carries files",
            )
        if media != "text/plain":
            losses.append(Loss("Content-Type", f"{media} shown as plain text"))
        charset = "utf-8"
        match = re.search(r"charset\s*=\s*\"?([^\";\s]+)", content_type, re.IGNORECASE)
        if match:
            charset = match.group(1).lower()
        if charset not in {"utf-8", "utf8", "us-ascii", "unknown-8bit"}:
            try:
                body = body.decode(charset).encode("utf-8")
            except (LookupError, UnicodeDecodeError) as exc:
                raise MappingError(
                    f"cannot read {charset} text: {exc}", reason=Reason.UNSUPPORTED_MEDIA
                ) from exc
            losses.append(Loss("charset", f"{charset} text sent as UTF-8"))
        if b"\x00" in body:
            body = body.replace(b"\x00", "\u2400".encode())
            losses.append(Loss("body", "NUL bytes (never allowed on IRC) shown as U+2400"))
        target = self.target_of(envelope.recipient)
        lead = bytes_of(f"<{envelope.sender}> ")
        room = self.max_text - len(lead)
        if room < 16:
            raise MappingError(
                f"sender address {envelope.sender!r} too long for an IRC line",
                reason=Reason.TOO_LARGE,
            )
        physical = re.split(rb"\r\n|\n|\r", body)
        if len(physical) > 1:
            losses.append(Loss("body", "line ends not carried: each line is its own PRIVMSG"))
        chunks: list[bytes] = []
        for part in physical:
            pieces = _utf8_chunks(part, room)
            if len(pieces) > 1:
                losses.append(Loss("body", f"a line over {room} bytes split into {len(pieces)}"))
            if part.endswith((b" ", b"\t")):
                losses.append(
                    Loss("body", "white space at the end of a line (IRC servers strip it)")
                )
            chunks.extend(pieces)
        lines = tuple(
            Line("PRIVMSG", (target, text_of(lead + chunk)), trailing=True) for chunk in chunks
        )
        return Mapped(IrcMessage(lines), tuple(dict.fromkeys(losses)))

    # --- wire ---------------------------------------------------------------------------

    def encode(self, native: IrcMessage) -> bytes:
        """The lines as sent, each ending in CR LF."""
        return b"".join(line.to_bytes() for line in native.lines)

    def decode(self, data: bytes) -> IrcMessage:
        """Lines from the wire (ParseError with the byte offset on malformed input)."""
        return IrcMessage(parse_lines(data))

    def equal(self, a: IrcMessage, b: IrcMessage) -> bool:
        """Equal as IRC sees it, line by line (:meth:`Line.same_as`)."""
        return len(a.lines) == len(b.lines) and all(
            x.same_as(y) for x, y in zip(a.lines, b.lines, strict=True)
        )

    # --- failures (adapters.contract.ErrorMapper) -----------------------------------

    def error_to_native(self, envelope: Envelope, error: GatewayError) -> IrcMessage:
        """A NOTICE to the IRC user who sent ``envelope`` (RFC 2812 §3.3.2: NOTICE, so no
        client ever answers it automatically): ``cpimgw: REASON: text``."""
        nick = envelope.origin.context.get("irc.nick")
        if nick is None:
            nick = self.target_of(envelope.origin.reply_to or envelope.sender)
        text = " ".join(f"{NOTICE_TAG}{error.reason.value}: {error}".split())
        data = bytes_of(text)[: self.max_text]
        return IrcMessage((Line("NOTICE", (nick, text_of(data)), trailing=True),))

    def error_from_native(self, native: IrcMessage) -> GatewayError | None:
        """The failure a NOTICE from the gateway or a numeric error reply reports."""
        first = native.lines[0]
        if first.command in NUMERIC_REASONS:
            return GatewayError(first.text, reason=NUMERIC_REASONS[first.command])
        if first.command != "NOTICE" or not first.text.startswith(NOTICE_TAG):
            return None
        reason_text, _, message = first.text[len(NOTICE_TAG) :].partition(": ")
        try:
            reason = Reason(reason_text)
        except ValueError:
            return GatewayError(first.text[len(NOTICE_TAG) :], reason=Reason.INTERNAL)
        return GatewayError(message, reason=reason)
