"""The store's commit thread: answers in order, and a cancelled caller goes on only once
the thread is done with the call (nobody may touch the connection while it runs)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.store.sqlite import _Committer


async def test_calls_run_in_the_thread_and_answer_in_order() -> None:
    committer = _Committer()
    committer.start()
    try:
        names = await asyncio.gather(
            *(committer.run(lambda i=i: (i, threading.current_thread().name)) for i in range(50))
        )
        assert [i for i, _ in names] == list(range(50))
        assert {name for _, name in names} == {"cpimgw-store-commit"}
        with pytest.raises(ZeroDivisionError):
            await committer.run(lambda: 1 / 0)
    finally:
        committer.stop()


async def test_a_cancelled_caller_waits_for_the_call_to_finish() -> None:
    committer = _Committer()
    committer.start()
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    try:
        call = asyncio.create_task(committer.run(slow))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert finished.is_set()
    finally:
        committer.stop()
