"""Structured logs: one line per delivery outcome, as text or JSON.

DESIGN.md "What travels": logs never contain message bodies unless the operator turns
on tracing for an address (``[logging] trace = ["sip:bob@example.net"]``); then the
payload of envelopes from or to that address is logged too (base64, so any bytes fit
on one line). Every outcome line carries the envelope identity, the one name a message
keeps across resends and hops, so an operator can follow a message through the log of
every gateway it crossed.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

from canonical.envelope import Envelope
from gateway.routing import bare

LogFormat = Literal["text", "json"]

#: Logger names: outcomes, and everything else the runner says.
OUTCOMES = "cpimgw.delivery"
RUNNER = "cpimgw.gateway"

#: Fields of ``LogRecord`` that are not extras.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with values quoted when needed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={_quote(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(
    *, fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send cpimgw's logs to ``stream`` (stderr) in ``fmt``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("cpimgw")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


class OutcomeLog:
    """Writes the one line per outcome; knows which addresses are traced."""

    def __init__(self, trace: Iterable[str] = (), logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(OUTCOMES)
        self.trace = frozenset(bare(a) for a in trace)

    def traced(self, envelope: Envelope) -> bool:
        if not self.trace:
            return False
        try:
            return bare(envelope.sender) in self.trace or bare(envelope.recipient) in self.trace
        except ValueError:
            return False

    def outcome(
        self,
        event: str,
        envelope: Envelope,
        *,
        level: int = logging.INFO,
        **fields: Any,
    ) -> None:
        """Log ``event`` (accepted, delivered, retry, failed, refused, duplicate, ...)."""
        if not self.logger.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "event": event,
            "identity": envelope.identity,
            "operation": envelope.operation.value,
            "sender": envelope.sender,
            "recipient": envelope.recipient,
            "origin": envelope.origin.adapter,
        }
        extra.update({k: v for k, v in fields.items() if v is not None})
        if envelope.payload is not None:
            extra["content_type"] = envelope.payload.media_type
            extra["size"] = len(envelope.payload.body)
            if self.traced(envelope):
                extra["body_b64"] = base64.b64encode(envelope.payload.body).decode("ascii")
        self.logger.log(level, event, extra=extra)


def fields_of(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Extras for a plain (non-outcome) log line."""
    return {k: v for k, v in mapping.items() if v is not None}
