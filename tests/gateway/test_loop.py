"""Two gateways in one event loop that route a domain to each other (a configuration
mistake): the message stops within the hop budget, its sender gets one clear error,
no storm, no duplicate delivery."""

from __future__ import annotations

import itertools

import pytest

from adapters.memory import REPORT_REASON
from gateway.core import Gateway
from gateway.routing import Route
from gateway.security import Rules
from tests.gateway.network import adapter, build, memory
from tests.gateway.samples import message

_links = itertools.count()


def pair(*, seen_window: float = 30.0, **link: object) -> tuple[Gateway, Gateway]:
    """gw-a serves example.com users and sends the rest to gw-b; gw-b sends everything
    back to gw-a. Each trusts the other to carry any domain (``peers``)."""
    wire = f"loop-{next(_links)}"
    rules = Rules(rate=0, peers={"peer": ("*",)})
    a = build(
        (Route("example.com", "users"), Route("*", "peer")),
        gateway_id="gw-a",
        adapters={
            "users": memory("users", "gw-a"),
            "peer": memory("peer", "gw-a", link=wire, **link),
        },
        rules=rules,
        seen_window=seen_window,
    )
    b = build(
        (Route("*", "peer"),),
        gateway_id="gw-b",
        adapters={"peer": memory("peer", "gw-b", link=wire, **link)},
        rules=rules,
        seen_window=seen_window,
    )
    return a, b


async def run_loop(a: Gateway, b: Gateway, max_forwards: int = 70) -> None:
    async with a, b:
        await adapter(b, "peer").started()
        env = message(
            "xmpp:u@example.com/pc",
            "sip:x@remote.example",
            adapter="users",
            max_forwards=max_forwards,
        )
        await adapter(a, "users").inject(env)
        await adapter(a, "users").wait_sent(1)
        await a.settle()
        await b.settle()


def check_one_clear_error(a: Gateway, b: Gateway, expected: str) -> None:
    users = adapter(a, "users")
    [report] = users.sent  # exactly one thing reached a user: the error report
    assert report.recipient == "xmpp:u@example.com/pc" or report.recipient.startswith(
        "xmpp:u@example.com"
    )
    assert report.attributes[REPORT_REASON] == "loop"
    assert expected in report.attributes["report.message"]
    assert a.counters.retried == b.counters.retried == 0


async def test_own_id_in_the_trace_stops_the_loop_at_the_first_return() -> None:
    a, b = pair()
    await run_loop(a, b)
    check_one_clear_error(a, b, "came back to gateway gw-a")
    assert adapter(a, "peer").attempts == 1
    assert adapter(b, "peer").attempts == 1


async def test_lost_history_is_caught_by_the_payload_seen_set() -> None:
    a, b = pair(forget_trace=True, renew_identity=True)
    await run_loop(a, b)
    check_one_clear_error(a, b, "re-entered")
    assert adapter(a, "peer").attempts + adapter(b, "peer").attempts <= 3


@pytest.mark.parametrize("budget", [5, 12])
async def test_hop_budget_bounds_the_loop_when_nothing_else_can(budget: int) -> None:
    a, b = pair(forget_trace=True, renew_identity=True, seen_window=0.0)
    await run_loop(a, b, max_forwards=budget)
    check_one_clear_error(a, b, "hop budget exhausted")
    hops = adapter(a, "peer").attempts + adapter(b, "peer").attempts
    # the loop hops are the budget; the error report takes at most two more
    assert budget <= hops <= budget + 2
