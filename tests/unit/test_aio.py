"""common/aio.py: bounded waits on an event and on a condition that end on the signal, on the
deadline, and on a cancellation (which they must never swallow)."""

import asyncio
import time

import pytest

from common.aio import wait_event, wait_notified


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_wait_event_is_true_when_set_and_false_at_the_deadline():
    async def main():
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.02, event.set)
        assert await wait_event(event, 5) is True
        started = time.monotonic()
        assert await wait_event(asyncio.Event(), 0.05) is False
        assert 0.04 < time.monotonic() - started < 2
    run(main())


def test_wait_notified_is_true_when_notified_and_false_at_the_deadline():
    async def main():
        condition = asyncio.Condition()

        async def notify():
            async with condition:
                condition.notify_all()
        async with condition:
            asyncio.get_running_loop().call_later(
                0.02, lambda: asyncio.ensure_future(notify()))
            assert await wait_notified(condition, 5) is True
            assert condition.locked()            # held again on return
            started = time.monotonic()
            assert await wait_notified(condition, 0.05) is False
            assert 0.04 < time.monotonic() - started < 2
            assert condition.locked()
    run(main())


@pytest.mark.parametrize("helper", ["event", "condition"])
def test_a_cancellation_is_never_swallowed(helper):
    """Cancelled at the moment its deadline falls (the case asyncio.wait_for loses on 3.11),
    and while waiting: the waiting task ends cancelled either way."""
    async def waiter(timeout_s):
        if helper == "event":
            await wait_event(asyncio.Event(), timeout_s)
        else:
            condition = asyncio.Condition()
            async with condition:
                await wait_notified(condition, timeout_s)
        return "returned"

    async def main():
        for timeout_s, cancel_after_s in ((0.05, 0.05), (5, 0.02)):
            task = asyncio.ensure_future(waiter(timeout_s))
            await asyncio.sleep(cancel_after_s)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=3)
            assert done, "the waiting task did not end"
            # at the deadline the wait may have ended just before the cancel came; then the
            # task returned normally, which is fine: what must not happen is a task that
            # neither ends nor reports the cancellation
            assert task.cancelled() or task.result() == "returned"
            if cancel_after_s < timeout_s:
                assert task.cancelled()
    run(main())
