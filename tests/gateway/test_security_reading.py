"""The verdict reads a payload's CPIM object once and every check uses that reading.

The author check (RFC 3862 §2.2), the Require check (§3.5) and the signature policy
(RFC 3862 §5.2, RFC 3923 §6.9) each saw their own parse before; these pin that sharing
one reading changed none of their answers, whichever check reads first.
"""

from __future__ import annotations

from canonical.envelope import CPIM, Operation, Payload
from canonical.errors import Reason
from gateway.security import AUTHOR_MISMATCH, Rules
from tests.gateway.samples import cpim_body, message
from tests.gateway.test_security import CA, verdict

#: A bare LF ends a CPIM header line: fatal in every mode (RFC 3862 §2.2).
UNREADABLE = (
    b"From: <im:alice@xmpp.example.com>\nTo: <im:bob@x>\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
)


def test_an_unreadable_message_is_refused_where_signatures_are_required() -> None:
    env = message(recipient="sip:bob@signed.example.net", payload=Payload(CPIM, UNREADABLE))
    result = verdict(env)
    assert result.reason is Reason.BAD_REQUEST
    assert result.message.startswith("unreadable CPIM object: ")
    assert "BARE_LF" in result.message
    assert "line 1, byte 33" in result.message


def test_an_unreadable_message_names_no_author_and_passes_where_nothing_is_checked() -> None:
    env = message(recipient="sip:bob@sip.example.net", payload=Payload(CPIM, UNREADABLE))
    result = verdict(env)
    assert result.allowed, result.message
    assert result.attributes == {}


def test_an_unreadable_notify_is_refused_where_signatures_are_required() -> None:
    # NOTIFY is not author-checked: the signature policy is the first to read the object
    env = message(recipient="sip:bob@signed.example.net", payload=Payload(CPIM, UNREADABLE))
    result = verdict(env.replace(operation=Operation.NOTIFY))
    assert result.reason is Reason.BAD_REQUEST
    assert result.message.startswith("unreadable CPIM object: ")


def test_the_author_reading_also_answers_require() -> None:
    body = cpim_body(
        "im:mallory@xmpp.example.com", "im:bob@sip.example.net", "x", extra="Require: Subject\r\n"
    )
    env = message(payload=Payload(CPIM, body))
    off = Rules(trust=(CA.cert,), author="off")
    result = verdict(env, off)
    assert result.reason is Reason.UNSUPPORTED_FEATURE, result.message
    honoured = verdict(env.replace(recipient="im:bob@cpim.example.org"), off)
    assert honoured.allowed, honoured.message
    assert honoured.attributes == {AUTHOR_MISMATCH: "im:mallory@xmpp.example.com"}
    assert verdict(env).reason is Reason.FORBIDDEN  # author = "match" refuses it first
