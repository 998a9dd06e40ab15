"""Waiting on an asyncio event with a timeout, in the one way that never swallows a cancellation."""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout: float, clear: bool = True) -> None:
    """Wait for `event` or `timeout`, then clear it (unless `clear` is False: a stop flag).

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that races with the event
    being set, and a loop cancelled at shutdown would then go on forever (seen as a run that did
    not exit after SIGTERM). `asyncio.wait` always lets the cancellation through.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    if clear:
        event.clear()
