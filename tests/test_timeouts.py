"""`RequestTimeouts`: the per-request timeout of a run, one periodic check for all requests in flight.

The timeout's effect through the CLI (the job fails as `timeout`, with its message) is in
test_failure_modes.py; here, what the owner of a request sees: a late request cancelled and marked
expired, a prompt one untouched, and a cancellation from elsewhere never swallowed.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from batchrun.timeouts import RequestTimeouts

pytestmark = pytest.mark.asyncio


async def request(timeouts: RequestTimeouts, seconds: float) -> str:
    """What ProviderClient._send does around a request that takes `seconds`."""
    task = timeouts.enter()
    assert task is not None
    try:
        await asyncio.sleep(seconds)
        return "answered"
    except asyncio.CancelledError:
        if timeouts.leave(task) and not task.cancelling():
            return "timed out"
        raise
    finally:
        timeouts.leave(task)


async def test_a_request_past_its_timeout_is_cancelled_within_a_period_and_reported_expired() -> None:
    timeouts = RequestTimeouts(0.2)
    started = time.monotonic()
    try:
        assert await request(timeouts, 30.0) == "timed out"
        took = time.monotonic() - started
    finally:
        await timeouts.close()
    assert 0.2 <= took < 5.0  # (late by up to a period, 10 ms here, and whatever a busy machine adds)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_requests_that_answer_in_time_are_left_alone_beside_one_that_does_not() -> None:
    timeouts = RequestTimeouts(2.0)  # (far above the prompt ones' 0–50 ms, however busy the machine)
    try:
        results = await asyncio.gather(request(timeouts, 0.0), request(timeouts, 0.05), request(timeouts, 30.0),
                                       *(request(timeouts, 0.01) for _ in range(50)))
    finally:
        await timeouts.close()
    assert results[:2] == ["answered", "answered"] and results[2] == "timed out"
    assert results[3:] == ["answered"] * 50


async def test_a_cancellation_from_elsewhere_goes_through_even_when_the_timeout_strikes_too() -> None:
    timeouts = RequestTimeouts(60.0)  # (its checker finds nothing on its own during the test)
    task = asyncio.create_task(request(timeouts, 30.0))
    try:
        await asyncio.sleep(0.05)
        task.cancel()  # the run shuts down while the request waits...
        timeouts._expire(time.monotonic() + 61.0)  # ...and, in the same turn, the check finds it late
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await timeouts.close()


async def test_a_shutdown_cancellation_alone_is_not_taken_for_a_timeout() -> None:
    timeouts = RequestTimeouts(60.0)
    task = asyncio.create_task(request(timeouts, 30.0))
    try:
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await timeouts.close()
