"""The message/cpim laws both CPIM harnesses check on every input (docs/cpim.md).

- only :class:`~canonical.errors.ParseError` may come out of ``parse``/``parse_body``, in
  either mode and with or without the MSRP profile;
- ``bytes(msg) == data`` for every accepted input ("Bytes are the truth");
- every input strict mode accepts, lenient mode accepts without defects other than
  warnings, and when strict mode raises a code, lenient mode raises a fatal code or
  records that code ("Strict and lenient");
- the views never raise on an accepted message (they are read from kept bytes).
"""

from __future__ import annotations

from collections.abc import Callable

from canonical import cpim
from canonical.errors import ParseError
from canonical.policy import Policy

Parser = Callable[..., cpim.CpimMessage]

#: Small limits, so the policy checks are reached by short inputs too.
TIGHT = Policy(max_line_length=256, max_message_size=4096, max_headers=16)


def read_views(msg: cpim.CpimMessage) -> None:
    """Touch every view and header field (each must work on an accepted message)."""
    msg.defects  # noqa: B018 - computing defects runs the lazy value checks
    msg.sender  # noqa: B018
    msg.to  # noqa: B018
    msg.cc  # noqa: B018
    msg.datetime  # noqa: B018
    msg.subjects  # noqa: B018
    msg.subject("en")
    msg.namespaces  # noqa: B018
    msg.requirements  # noqa: B018
    msg.require  # noqa: B018
    msg.content_type  # noqa: B018
    msg.dispositions  # noqa: B018
    msg.entity_headers  # noqa: B018
    msg.mime_headers  # noqa: B018
    msg.body  # noqa: B018
    for header in msg.headers:
        _ = (header.name, header.prefix, header.local, header.namespace, header.value)
        _ = (header.params, header.lang, header.raw, header.line, header.offset)
    if msg.datetime is not None:
        msg.datetime.timestamp()
    cpim.describe(msg)
    msg.find("From")


def check(parser: Parser, data: bytes) -> None:
    """Apply the laws to ``data`` through ``parser`` (``cpim.parse`` or ``cpim.parse_body``)."""
    for profile in (None, "msrp"):
        strict_error: ParseError | None = None
        try:
            strict = parser(data, strict=True, profile=profile)
        except ParseError as exc:
            strict_error = exc
        else:
            assert bytes(strict) == data, "strict parse changed the bytes"
            read_views(strict)
        lenient_error: ParseError | None = None
        try:
            lenient = parser(data, strict=False, profile=profile)
        except ParseError as exc:
            lenient_error = exc
        if lenient_error is not None:
            code = lenient_error.code
            assert code in cpim.FATAL_CODES, f"lenient raised non-fatal {code}"
            assert strict_error is not None, f"strict accepted what lenient refused ({code})"
            continue
        assert bytes(lenient) == data, "lenient parse changed the bytes"
        read_views(lenient)
        codes = {d.code for d in lenient.defects}
        if strict_error is None:
            assert codes <= set(cpim.WARNING_CODES), f"strict accepted, lenient found {codes}"
        else:
            assert strict_error.code in codes or strict_error.code in cpim.FATAL_CODES, (
                f"strict raised {strict_error.code}, lenient recorded only {codes}"
            )
    try:
        tight = parser(data, policy=TIGHT)
    except ParseError:
        return
    assert bytes(tight) == data
