"""A programming error in the dispatch loop (not a store outage) is logged with its
traceback, counted as an internal error — not as a store error, and readiness does not
blame the store — and dispatching resumes: the message is delivered."""

from __future__ import annotations

import logging

import pytest

from gateway.store import Entry
from gateway.store.memory import MemoryStore
from tests.gateway.network import adapter, build, until
from tests.gateway.samples import message


class BuggyOnce(MemoryStore):
    """A store whose first ``claim`` hits a bug (a TypeError), as a regression would."""

    def __init__(self) -> None:
        super().__init__()
        self.bugs = 1

    async def claim(self, now: float, limit: int) -> list[Entry]:
        if self.bugs:
            self.bugs -= 1
            raise TypeError("unsupported operand type(s) for +: 'float' and 'NoneType'")
        return await super().claim(now, limit)


def sample(gw: object, name: str, labels: dict[str, str]) -> float:
    value = gw.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return float(value or 0.0)


async def test_a_bug_in_the_dispatch_loop_is_logged_counted_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BuggyOnce()
    caplog.set_level(logging.ERROR)
    async with build(store=store) as gw:
        await until(lambda: store.bugs == 0)
        await adapter(gw, "xmpp").inject(message(text="after the bug"))
        await adapter(gw, "sip").wait_sent(1)
        assert sample(gw, "cpimgw_internal_errors_total", {"where": "dispatch"}) == 1.0
        assert sample(gw, "cpimgw_store_errors_total", {"operation": "dispatch"}) == 0.0
        assert gw.ready()["store"] is True
    [record] = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.exc_info is not None
    assert record.exc_info[0] is TypeError
