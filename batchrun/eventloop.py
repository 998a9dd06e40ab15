"""The event loop a command runs on: uvloop where it is installed (Linux and macOS), else asyncio's own.

uvloop's loop, transports and timers are written in C: against a server that answers at once it takes
≈ 10–15 % of the client's CPU per request away (the loop's turns, `create_task`, `call_soon`, socket reads
and writes), so a run gets that much further on one core before it is the bottleneck (bench 1–2).
``BATCHRUN_EVENT_LOOP=asyncio`` runs on asyncio's loop instead (for a comparison, or a platform where
uvloop misbehaves).

The cyclic garbage collector is set for a long run of many short-lived objects (`quiet_gc`).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_name", "quiet_gc", "GC_THRESHOLDS"]

#: the collector's thresholds during a run: a young collection per 100,000 container objects allocated
#: (Python's default is 700), an older one per 20 of those
GC_THRESHOLDS = (100_000, 20, 20)

T = TypeVar("T")


def loop_name() -> str:
    """`uvloop` or `asyncio`: the loop `run` uses here."""
    if os.environ.get("BATCHRUN_EVENT_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401  (only whether it imports)
    except ImportError:
        return "asyncio"
    return "uvloop"


def quiet_gc() -> None:
    """Keep the cyclic garbage collector from costing a run its dispatch rate.

    A run allocates a hundred or more container objects per request (aiohttp's request and response,
    their headers, futures, tasks, the outcome); at Python's default threshold that is a young
    collection every few requests, each walking every young object still alive — with thousands of
    requests in flight, hundreds of thousands — and every older one walks the ≈ 60,000 objects the
    imports made (SQLAlchemy, aiohttp). Measured (bench 1–2, 2026-12-07): at 0 ms and 64 in flight
    the collector took 0.26–0.6 s of a 20,000-request run's 4 s of CPU; at 2 s and 4,000 in flight
    8.2 s of 15.5 s. So: what exists when the run starts is frozen (left out of every collection:
    modules, classes, settings; never garbage), and a young collection comes per 100,000 allocations
    instead of 700 (0.03 s and 0.8 s then). Memory does not grow by it: reference counting still frees
    everything at once but cycles, and a run makes ≈ 1,500 cyclic garbage objects in 20,000 requests.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop's loop when `loop_name` says so, with `quiet_gc`."""
    quiet_gc()
    if loop_name() == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
