"""Structured logs: one line per delivery outcome, as text or JSON.

DESIGN.md "What travels": logs never contain message bodies unless the operator turns
on tracing for an address (``[logging] trace = ["sip:bob@example.net"]``); then the
payload of envelopes from or to that address is logged too (base64, so any bytes fit
on one line). Every outcome line carries the envelope identity, the one name a message
keeps across resends and hops, so an operator can follow a message through the log of
every gateway it crossed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
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
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)

    def line(self, created: float, level: int, name: str, event: str, fields: Fields) -> str:
        """What :meth:`format` writes for a record of ``event`` with ``fields`` as extras,
        without building the record."""
        out: dict[str, Any] = {
            "time": _utc(created),
            "level": _level_name(level).lower(),
            "logger": name,
            "message": event,
        }
        out.update(fields)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with values quoted when needed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={_quote(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line

    def line(self, created: float, level: int, name: str, event: str, fields: Fields) -> str:
        """What :meth:`format` writes for a record of ``event`` with ``fields`` as extras,
        without building the record (the local time is formatted once per second)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
        msecs = int((created - second) * 1000)
        extras = " ".join([f"{key}={_quote(value)}" for key, value in fields.items()])
        head = f"{self._stamp},{msecs:03d} {_level_name(level)} {name} {event}"
        return f"{head} {extras}" if extras else head


Fields = dict[str, Any]
_LEVELS = {n: logging.getLevelName(n) for n in (10, 20, 30, 40, 50)}
_NEEDS_QUOTES = re.compile(r'[ "=\n\t]')


def _level_name(level: int) -> str:
    return _LEVELS.get(level) or logging.getLevelName(level)


def _utc(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int((created - int(created)) * 1000):03d}Z"
    )


def _quote(value: object) -> str:
    if type(value) is str:
        found = _QUOTED.get(value)
        if found is not None:
            return found
    text = str(value)
    quoted = (
        json.dumps(text, ensure_ascii=False) if not text or _NEEDS_QUOTES.search(text) else text
    )
    if type(value) is str and len(value) <= 256:
        if len(_QUOTED) >= 4096:
            _QUOTED.clear()
        _QUOTED[value] = quoted
    return quoted


#: Text values as written, for the values that recur (addresses, adapter names, ...).
_QUOTED: dict[str, str] = {}


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs: a stream handler that can also take lines
    formatted elsewhere (the outcome lines, see :class:`OutcomeLog`). On an event loop
    those are written together once per loop turn (one write and flush for all the lines
    of the turn instead of one each); a record through :meth:`emit`, a :meth:`flush` or
    the end of the turn writes what waits first, so the order of lines is kept."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []

    def write_line(self, line: str) -> None:
        """Write one formatted line, as :meth:`emit` writes a record."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]
            self._waiting.append(line)
            if len(self._waiting) > 1:
                return  # the turn's write is already due
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def _write_waiting(self) -> None:
        lines, self._waiting = self._waiting, []
        if lines:
            try:
                self.stream.write(self.terminator.join(lines) + self.terminator)
            except Exception:  # noqa: BLE001 - as logging.Handler: never raise from a log line
                self.handleError(logging.makeLogRecord({"msg": lines[0]}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_waiting()
        super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self._waiting:
            with self.lock:  # type: ignore[union-attr]
                self._write_waiting()
        super().emit(record)


def configure(
    *, fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send cpimgw's logs to ``stream`` (stderr) in ``fmt``; returns the handler."""
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("cpimgw")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


class OutcomeLog:
    """Writes the one line per outcome; knows which addresses are traced.

    When logging is set up by :func:`configure` and nobody added handlers or filters on
    the way, the line is formatted here and written to that handler directly: the same
    text, without building a ``LogRecord`` (the outcome lines are the gateway's most
    frequent, two per message). Otherwise it goes through ``logging`` as any record."""

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

    def _direct(self, level: int) -> LineHandler | None:
        """The handler to write to directly, when that gives what ``logging`` would."""
        logger = self.logger
        parent = logger.parent
        if logger.handlers or logger.filters or not logger.propagate or parent is None:
            return None
        handlers = parent.handlers
        if len(handlers) != 1 or parent.propagate or parent.filters or parent.parent is None:
            return None
        handler = handlers[0]
        if type(handler) is not LineHandler or handler.filters or level < handler.level:
            return None
        return handler

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
        payload = envelope.payload
        if payload is not None:
            extra["content_type"] = payload.media_type
            extra["size"] = len(payload.body)
            if self.trace and self.traced(envelope):
                extra["body_b64"] = base64.b64encode(payload.body).decode("ascii")
        handler = self._direct(level)
        formatter = handler.formatter if handler is not None else None
        if handler is None or not isinstance(formatter, TextFormatter | JsonFormatter):
            self.logger.log(level, event, extra=extra)
            return
        handler.write_line(formatter.line(time.time(), level, self.logger.name, event, extra))


def fields_of(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Extras for a plain (non-outcome) log line."""
    return {k: v for k, v in mapping.items() if v is not None}
