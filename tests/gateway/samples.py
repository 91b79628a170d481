"""Envelopes for the gateway tests, built the way adapters build them."""

from __future__ import annotations

from canonical.envelope import CPIM, Envelope, Operation, Origin, Payload, identity_of


def cpim_body(sender: str, recipient: str, text: str, *, extra: str = "") -> bytes:
    """A message/cpim body form (RFC 3862 §2), the bytes a SIP MESSAGE would carry."""
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n{extra}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


def message(
    sender: str = "xmpp:alice@xmpp.example.com/phone",
    recipient: str = "sip:bob@sip.example.net",
    text: str = "hello",
    *,
    adapter: str = "xmpp",
    native_id: str | None = None,
    received_at: float = 1000.0,
    **changes: object,
) -> Envelope:
    native = native_id if native_id is not None else f"{sender}|{recipient}|{text}"
    env = Envelope(
        operation=Operation.MESSAGE,
        sender=sender,
        recipient=recipient,
        payload=Payload(CPIM, cpim_body(sender, recipient, text)),
        identity=identity_of(adapter, native),
        origin=Origin(adapter=adapter, native_id=native, reply_to=sender),
        received_at=received_at,
    )
    return env.replace(**changes) if changes else env
