"""Seed material for the fuzz targets, built from what the project ships and tests with:
the message/cpim vectors (both forms), the signed vectors, the PIDF cases of the
conformance kit, and native messages made by the adapters' own mappers from them (a SIP
MESSAGE, an XMPP stanza, an HTTP request per vector), so every harness starts from inputs
its parser accepts and from the project's known-bad ones."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files

from canonical import vectorset
from canonical.envelope import CPIM, PIDF, Envelope, Operation, Origin, Payload, identity_of

#: The shipped MIME header of the entity form (RFC 3862 §2).
_ENTITY_PREFIX = b"Content-type: Message/CPIM\r\n\r\n"


def cpim_entities() -> Iterator[bytes]:
    """Every message/cpim vector file as it is (entity form), valid and invalid."""
    for vector in (*vectorset.valid_vectors(), *vectorset.invalid_vectors()):
        yield vector.read_bytes()


def cpim_bodies() -> Iterator[bytes]:
    """The vectors in body form (what a SIP MESSAGE, MSRP or HTTP body carries)."""
    for data in cpim_entities():
        _head, sep, rest = data.partition(b"\r\n\r\n")
        yield rest if sep else data


def signed_objects() -> Iterator[bytes]:
    """The signed vectors (multipart/signed entities and RFC 3923 XML carriage)."""
    for item in vectorset.signed_files():
        yield item.read_bytes()


def pidf_documents() -> Iterator[bytes]:
    """The conformance kit's PIDF documents."""
    folder = files("adapters.conformance") / "cases" / "pidf"
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        if item.name.endswith(".xml"):
            yield item.read_bytes()


def envelopes(sender: str, recipient: str) -> Iterator[Envelope]:
    """A MESSAGE per valid vector body, a NOTIFY per PIDF document, and the bodyless
    presence operations, from ``sender`` to ``recipient`` (gateway-wide addresses)."""
    origin = Origin(adapter="seed")
    for n, body in enumerate(cpim_bodies()):
        yield Envelope(
            Operation.MESSAGE,
            sender,
            recipient,
            Payload(CPIM, body),
            identity_of("m", str(n)),
            origin,
        )
    for n, doc in enumerate(pidf_documents()):
        yield Envelope(
            Operation.NOTIFY,
            sender,
            recipient,
            Payload(PIDF, doc),
            identity_of("p", str(n)),
            origin,
            attributes={"subscription.state": "active"},
        )
    yield Envelope(Operation.SUBSCRIBE, sender, recipient, None, "s1", origin, duration=3600)
    yield Envelope(Operation.SUBSCRIBE, sender, recipient, None, "s2", origin, duration=0)
    yield Envelope(Operation.UNSUBSCRIBE, sender, recipient, None, "s3", origin)
    yield Envelope(Operation.AUTHORIZE, sender, recipient, None, "a1", origin, granted=True)
    yield Envelope(Operation.AUTHORIZE, sender, recipient, None, "a2", origin, granted=False)
