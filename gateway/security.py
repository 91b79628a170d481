"""Access control (pure): one :class:`Verdict` per inbound envelope, time passed in.

What is checked, in order, and why:

1. **Size** (``max_size``): an object larger than the policy allows is refused whole
   (RFC 7573 §8 asks a gateway to refuse what it cannot carry, not to cut it). A PIDF,
   isComposing or IMDN document with a DTD (alone or as an unsigned CPIM object's entity)
   is refused too: cpimgw reads those without DTDs and does not pass the attack on.
2. **Anti-spoofing**: the sender's domain must be owned by the adapter the envelope
   arrived on (the routing table says who owns what), or be listed for that adapter in
   ``peers`` (a trusted peer gateway carries other domains' users). A message's CPIM From
   (unsigned, or inside its signature) must name that sender too — same user and host,
   across im:/pres:/sip:/xmpp: (RFC 3862 §2.2) — or a CPIM-aware receiver would show an
   author the network never authenticated. ``author`` sets how strict that is:
   ``match`` (the default) refuses every other From; ``signed`` also lets a From through
   when the object's S/MIME signature, checked under the route's ``verify``/``require``
   policy, is valid and by that author (RFC 3862 §5.2: a store-and-forward service
   relaying someone else's signed message); ``off`` only records it: the envelope is
   annotated ``author.mismatch`` (the From it names) for the logs and the receivers'
   adapters. The same rule stops
   anyone from subscribing or unsubscribing on someone else's behalf: the watcher is
   the sender (RFC 3859 §3.2).
3. **Deny and allow lists** by address pattern, applied to sender and recipient.
4. **Require** (RFC 3862 §3.5): a CPIM ``Require`` naming a header the target cannot
   honour is refused with an error to the sender rather than delivered half-understood.
5. **Signature policy** of the route (``off`` / ``verify`` / ``require``) with
   ``canonical.smime.verify``; under ``verify`` and ``require`` a signed object's CPIM
   DateTime must lie within the freshness window (RFC 3923 §6.9: 10 minutes by default,
   plus the allowed clock skew) against replay.
6. **Rate limit**: the verdict names the token bucket (per sender); the core takes the
   token from the store (one node: memory; several nodes: the shared store).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from adapters.contract import Capability
from canonical import cpim, smime
from canonical.envelope import CPIM, IMDN, ISCOMPOSING, PIDF, Envelope, Operation, Payload
from canonical.errors import ConfigError, GatewayError, ParseError, Reason, SecurityError
from canonical.xmldoc import parse_xml
from gateway.routing import Route, RoutingTable, check_pattern, pattern_matches, split_address

SignatureState = Literal["unchecked", "none", "valid", "invalid"]
AuthorRule = Literal["match", "signed", "off"]

#: Envelope attribute naming a CPIM From that is not the sender (``author = "off"``).
AUTHOR_MISMATCH = "author.mismatch"

#: CPIM headers every adapter carries in its native form (RFC 3862 §4; RFC 7247 §5).
ALWAYS_HONOURED = frozenset({"From", "To", "cc", "DateTime", "NS", "Require"})


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """``user@domain-pattern``, ``*@domain-pattern`` or ``domain-pattern`` (any user);
    scheme-agnostic. Domain patterns as in :func:`gateway.routing.check_pattern`."""

    user: str | None
    domain: str

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        body = text.strip()
        if ":" in body.split("@", 1)[0]:
            body = body.split(":", 1)[1]
        user, _, domain = body.rpartition("@")
        return cls(None if user in ("", "*") else user, check_pattern(domain))

    def matches(self, address: str) -> bool:
        parts = split_address(address)
        if self.user is not None and parts.user != self.user:
            return False
        return pattern_matches(self.domain, parts.domain)

    def __str__(self) -> str:
        return f"{self.user or '*'}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Rules:
    """The access rules (reloaded with SIGHUP). Times in seconds, sizes in bytes."""

    allow: tuple[AddressPattern, ...] = ()
    deny: tuple[AddressPattern, ...] = ()
    peers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_size: int = 1024 * 1024
    rate: float = 20.0
    burst: float = 40.0
    freshness: float = 600.0
    skew: float = 60.0
    trust: tuple[x509.Certificate, ...] = ()
    author: AuthorRule = "match"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one envelope. ``signature`` records what the signature check
    found (for logs and metrics under ``verify``); ``rate_key`` names the sender's bucket;
    ``attributes`` are annotations the core adds to the envelope it stores
    (:data:`AUTHOR_MISMATCH` under ``author = "off"``)."""

    allowed: bool
    reason: Reason | None = None
    message: str = ""
    hint: str = ""
    signature: SignatureState = "unchecked"
    rate_key: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def error(self) -> SecurityError:
        """The error the sender gets for a refusal."""
        return SecurityError(self.message, reason=self.reason or Reason.FORBIDDEN, hint=self.hint)


def _refuse(
    reason: Reason, message: str, hint: str, *, signature: SignatureState = "unchecked"
) -> Verdict:
    return Verdict(False, reason, message, hint, signature=signature)


def honoured(route: Route, capabilities: frozenset[Capability]) -> frozenset[str] | None:
    """CPIM header names the route's target honours; None means every name."""
    if "*" in route.honours:
        return None
    names = set(ALWAYS_HONOURED | route.honours)
    if Capability.SUBJECT in capabilities:
        names.add("Subject")
    return frozenset(names)


#: XML documents cpimgw knows and reads itself (never with a DTD: ``canonical.xmldoc``).
KNOWN_XML = frozenset({PIDF, ISCOMPOSING, IMDN})


def xml_fault(payload: Payload) -> ParseError | None:
    """The fault of a PIDF, isComposing or IMDN document in ``payload`` (itself, or the
    entity of an unsigned message/cpim object) read as ``canonical.xmldoc`` reads it: a
    DTD (billion laughs, external entities), too deep, too many attributes. Relaying such a
    document would hand the attack to the receiver's parser (RFC 3470 §4.14); other XML
    types and signed or encrypted objects are relayed as they are. None when it is clean."""
    body = payload.body
    media = payload.media_type
    if media == CPIM:
        try:
            message = cpim.parse_body(body)
        except ParseError:
            return None  # not this check's business: the adapters and routes decide
        entity = (message.content_type or "").split(";", 1)[0].strip().lower()
        if entity not in KNOWN_XML:
            return None
        body = message.body
    elif media not in KNOWN_XML:
        return None
    try:
        parse_xml(body)
    except ParseError as exc:
        return exc
    return None


def _read_cpim(payload: Payload) -> tuple[cpim.CpimMessage | None, GatewayError | None]:
    """:func:`_cpim_message`, or why it cannot be read: the verdict reads a payload once
    and both the author check and the signature and Require checks use that reading."""
    try:
        return _cpim_message(payload), None
    except GatewayError as exc:
        return None, exc


def _cpim_message(payload: Payload) -> cpim.CpimMessage | None:
    """The CPIM object inside a payload (unsigned body form, or the signed entity)."""
    if payload.media_type == CPIM:
        return cpim.parse_body(payload.body)
    if payload.is_signed:
        content = smime.signed_content(payload)
        if content is not None and content.lower().startswith(b"content-type: message/cpim"):
            return cpim.parse(content)
    return None


def judge(
    envelope: Envelope,
    *,
    rules: Rules,
    routing: RoutingTable,
    route: Route | None,
    capabilities: frozenset[Capability],
    now: float,
) -> Verdict:
    """Decide on an inbound envelope (pure: no I/O, the time is ``now``).

    ``route`` is the route the envelope will take (None when it is for the gateway's own
    presence book only) and ``capabilities`` its target adapter's.
    """
    payload = envelope.payload
    size = 0 if payload is None else len(payload.body)
    if size > rules.max_size:
        return _refuse(
            Reason.TOO_LARGE,
            f"{size} bytes is more than this gateway accepts ({rules.max_size})",
            "send a smaller object, or ask the operator to raise [security] max_size",
        )

    origin = envelope.origin.adapter
    owner = routing.owner(envelope.sender)
    if owner != origin and not any(
        pattern_matches(check_pattern(p), split_address(envelope.sender).domain)
        for p in rules.peers.get(origin, ())
    ):
        where = f"belongs to adapter {owner!r}" if owner else "is not served by this gateway"
        return _refuse(
            Reason.FORBIDDEN,
            f"sender {envelope.sender} arrived on adapter {origin!r} but its domain {where}",
            "a sender must belong to the network it arrives from (anti-spoofing); "
            f"list its domain under [security.peers] {origin} if that peer may carry it",
        )

    # The CPIM From of a message's object (unsigned, or read inside its signature); None
    # when there is none to read: encrypted, not CPIM, unreadable (the adapters and the
    # route's signature policy deal with those). The object is read once per verdict.
    message: cpim.CpimMessage | None = None
    unreadable: GatewayError | None = None
    read = False
    author: str | None = None
    if (
        envelope.operation is Operation.MESSAGE
        and payload is not None
        and (payload.media_type == CPIM or payload.is_signed)
    ):
        message, unreadable = _read_cpim(payload)
        read = True
        written = None if message is None else message.sender
        author = None if written is None else written.uri
    other = author if author is not None and not _names(envelope.sender, author) else None
    if other is not None and rules.author != "off":
        signed_route = route is not None and route.signatures != "off"
        if rules.author == "match" or not (signed_route and payload and payload.is_signed):
            return _refuse(
                Reason.FORBIDDEN,
                f"the object's From {other} is not its sender {envelope.sender}",
                "RFC 3862 §2.2: the CPIM From names the originator, whom the network it came "
                "from authenticated; send as yourself"
                + (
                    " (a valid signature by the named author is accepted on routes with "
                    "signatures = verify or require)"
                    if rules.author == "signed"
                    else ' ([security] author = "signed" accepts a valid signature by the '
                    "named author)"
                ),
            )

    if payload is not None and b"<!DOCTYPE" in payload.body and not payload.is_secured:
        fault = xml_fault(payload)
        if fault is not None:
            return _refuse(
                fault.reason,
                f"the {fault.code} document is not relayed: {fault.message}",
                "send PIDF, isComposing and IMDN documents without a DTD (cpimgw reads "
                "them without one, and so should every receiver)",
            )

    for party in (envelope.sender, envelope.recipient):
        for pattern in rules.deny:
            if pattern.matches(party):
                return _refuse(
                    Reason.FORBIDDEN,
                    f"{party} is denied by pattern {pattern}",
                    "contact the operator",
                )
        if rules.allow and not any(p.matches(party) for p in rules.allow):
            return _refuse(
                Reason.FORBIDDEN,
                f"{party} is not in the gateway's allow list",
                "contact the operator",
            )

    signature: SignatureState = "unchecked"
    if (
        payload is not None
        and route is not None
        and envelope.operation in (Operation.MESSAGE, Operation.NOTIFY)
        # Parsing is skipped when nothing needs it: no signature policy, and no Require
        # header anywhere in the bytes (a cheap scan keeps the hot path fast).
        and (route.signatures != "off" or b"Require:" in payload.body)
    ):
        if not read:
            message, unreadable = _read_cpim(payload)
        if unreadable is not None and route.signatures == "require":
            return _refuse(
                Reason.BAD_REQUEST, f"unreadable CPIM object: {unreadable}", "fix the sender"
            )
        if message is not None and message.require:
            allowed = honoured(route, capabilities)
            missing = [n for n in message.require if allowed is not None and n not in allowed]
            if missing:
                return _refuse(
                    Reason.UNSUPPORTED_FEATURE,
                    f"Require names {', '.join(missing)}, which {route.adapter!r} cannot honour",
                    "RFC 3862 §3.5: send without Require, or to a CPIM-aware destination",
                )
        if route.signatures != "off":
            verdict = _check_signature(payload, message, route.signatures, rules, now)
            if not verdict.allowed:
                return verdict
            signature = verdict.signature

    if other is not None and rules.author == "signed" and signature != "valid":
        # a valid signature here is one whose signer is the CPIM From (_check_signature)
        return _refuse(
            Reason.FORBIDDEN,
            f"the object's From {other} is not its sender {envelope.sender}, and its "
            f"signature does not prove that {other} wrote it ({signature})",
            "relay only objects signed by their author with a certificate this gateway "
            "trusts ([security] trust)",
            signature=signature,
        )
    return Verdict(
        True,
        signature=signature,
        rate_key=f"sender:{split_address(envelope.sender).bare}",
        attributes={AUTHOR_MISMATCH: other} if other is not None and rules.author == "off" else {},
    )


def _names(sender: str, author: str) -> bool:
    """Whether the CPIM From ``author`` names ``sender`` (same user@host across
    im:/pres:/sip:/sips:/xmpp:, RFC 3862 §2.2)."""
    return smime.match_sender(sender, [author]) is not None


def _check_signature(
    payload: Payload,
    message: cpim.CpimMessage | None,
    policy: Literal["verify", "require"],
    rules: Rules,
    now: float,
) -> Verdict:
    if not payload.is_signed:
        if policy == "require":
            return _refuse(
                Reason.SIGNATURE_INVALID,
                "this route requires a signed object (S/MIME, RFC 3862 §5.2) and it is unsigned",
                "sign the message with your S/MIME certificate",
                signature="none",
            )
        return Verdict(True, signature="none")
    expected = None if message is None or message.sender is None else message.sender.uri
    when = _dt.datetime.fromtimestamp(now, tz=_dt.UTC)
    try:
        checked = smime.verify(payload, rules.trust, now=when, expected_sender=expected)
        good = checked.valid and checked.matches_sender is not False
        problem = checked.error or ("signer is not the sender" if checked.valid else "invalid")
    except (GatewayError, ValueError) as exc:
        good, problem = False, str(exc)
    if not good:
        if policy == "require":
            return _refuse(
                Reason.SIGNATURE_INVALID,
                f"the signature does not verify: {problem}",
                "the object was changed on the way, or the signer is not trusted here",
                signature="invalid",
            )
        return Verdict(True, signature="invalid")
    stamp = None if message is None or message.datetime is None else message.datetime.timestamp()
    if stamp is None:
        return _refuse(
            Reason.STALE,
            "a signed object needs a CPIM DateTime here (replay protection, RFC 3923 §6.9)",
            "add a DateTime header inside the signed object",
            signature="valid",
        )
    if stamp < now - rules.freshness - rules.skew or stamp > now + rules.skew:
        return _refuse(
            Reason.STALE,
            f"DateTime {message.datetime.text if message and message.datetime else ''} is outside"
            f" the freshness window ({rules.freshness:g}s, skew {rules.skew:g}s)",
            "RFC 3923 §6.9: check the sender's clock; replayed objects are refused",
            signature="valid",
        )
    return Verdict(True, signature="valid")


def parse_patterns(texts: Sequence[str], *, key: str) -> tuple[AddressPattern, ...]:
    """Address patterns from config; ConfigError names the key."""
    out = []
    for text in texts:
        try:
            out.append(AddressPattern.parse(text))
        except ConfigError as exc:
            raise ConfigError(exc.message, key=key, hint=exc.hint) from exc
    return tuple(out)


@dataclass(slots=True)
class Buckets:
    """Token buckets keyed by sender (pure: the time is passed in).

    Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second;
    :meth:`take` returns 0.0 when a token was taken, else the seconds until one is there.
    Buckets that have refilled completely are forgotten by :meth:`prune`.
    """

    levels: dict[str, tuple[float, float]]

    def __init__(self) -> None:
        self.levels = {}

    def take(self, key: str, *, rate: float, burst: float, now: float) -> float:
        tokens, stamp = self.levels.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
        if tokens >= 1.0:
            self.levels[key] = (tokens - 1.0, now)
            return 0.0
        self.levels[key] = (tokens, now)
        return (1.0 - tokens) / rate if rate > 0 else float("inf")

    def prune(self, *, rate: float, burst: float, now: float) -> None:
        full = [k for k, (t, s) in self.levels.items() if t + (now - s) * rate >= burst]
        for key in full:
            del self.levels[key]
