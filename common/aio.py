"""asyncio helpers the daemons share."""

import asyncio


async def wait_event(event, timeout_s):
    """Until ``event`` is set or ``timeout_s`` passes; True if it was set. Not asyncio.wait_for:
    on Python 3.11 it can swallow a cancellation that comes as the event is set, and the
    waiting task would then never end."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
    finally:
        waiter.cancel()
    return event.is_set()


async def wait_notified(condition, timeout_s):
    """Wait on ``condition`` (held by the caller, and held again on return) until it is
    notified or ``timeout_s`` passes; True if notified. asyncio.timeout rather than wait_for,
    for the reason given at wait_event: a cancellation that comes with the timeout still
    cancels."""
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await condition.wait()
    except TimeoutError:
        return False
    return True
