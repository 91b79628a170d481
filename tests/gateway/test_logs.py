"""Outcome lines written directly are the lines ``logging`` would write for them."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.logs import JsonFormatter, OutcomeLog, TextFormatter, configure
from tests.gateway.samples import message

values = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda k: (
        k[0] != "_"
        and k not in logging.makeLogRecord({}).__dict__
        and k not in ("message", "asctime")
    )
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("cpimgw")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


@given(
    fields=st.dictionaries(keys, values, max_size=8),
    created=st.floats(min_value=0, max_value=4e9),
    level=st.sampled_from([logging.INFO, logging.WARNING, logging.ERROR]),
    event=st.text(max_size=20),
)
def test_a_direct_line_is_the_line_the_formatter_writes(
    fields: dict[str, object], created: float, level: int, event: str
) -> None:
    record = logging.getLogger("cpimgw.delivery").makeRecord(
        "cpimgw.delivery", level, "f", 1, event, (), None, extra=fields
    )
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    for formatter in (TextFormatter(), JsonFormatter()):
        direct = formatter.line(created, level, "cpimgw.delivery", event, fields)
        assert direct == formatter.format(record)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_outcome_lines_are_the_same_written_directly_or_through_logging(fmt: str) -> None:
    direct, through = io.StringIO(), io.StringIO()
    env = message(text="hello")
    configure(fmt=fmt, level="info", stream=direct)  # type: ignore[arg-type]
    OutcomeLog().outcome("delivered", env, target="sip", attempts=1, note=None)
    handler = configure(fmt=fmt, level="info", stream=through)  # type: ignore[arg-type]
    handler.addFilter(lambda _record: True)  # a filter: the lines go through logging
    OutcomeLog().outcome("delivered", env, target="sip", attempts=1, note=None)
    cut = 23 if fmt == "text" else 37  # the times differ
    assert direct.getvalue()[cut:] == through.getvalue()[cut:]
    assert direct.getvalue().count("\n") == 1


def test_a_handler_added_elsewhere_still_gets_the_outcome_lines() -> None:
    configure(fmt="text", level="info", stream=io.StringIO())
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger("cpimgw.delivery").addHandler(keep := Keep())
    try:
        OutcomeLog().outcome("accepted", message())
    finally:
        logging.getLogger("cpimgw.delivery").removeHandler(keep)
    assert [r.getMessage() for r in seen] == ["accepted"]


async def test_lines_of_one_loop_turn_are_written_together_and_in_order() -> None:
    stream = io.StringIO()
    configure(fmt="text", level="info", stream=stream)  # type: ignore[arg-type]
    OutcomeLog().outcome("accepted", message(text="one"))
    OutcomeLog().outcome("delivered", message(text="one"))
    assert stream.getvalue() == ""  # due at the end of the turn
    logging.getLogger("cpimgw.gateway").warning("between")
    OutcomeLog().outcome("failed", message(text="two"))
    await asyncio.sleep(0)
    events = [line.split(" ")[4] for line in stream.getvalue().splitlines()]
    assert events == ["accepted", "delivered", "between", "failed"]
