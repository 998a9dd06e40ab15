"""The event loop a command runs on: uvloop where it is installed (Linux and macOS), else asyncio's own.

uvloop's loop, transports and timers are written in C: against a server that answers at once it takes
≈ 10–15 % of the client's CPU per request away (the loop's turns, `create_task`, `call_soon`, socket reads
and writes), so a run gets that much further on one core before it is the bottleneck (bench 1–2).
``BATCHRUN_EVENT_LOOP=asyncio`` runs on asyncio's loop instead (for a comparison, or a platform where
uvloop misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_name"]

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


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop's loop when `loop_name` says so."""
    if loop_name() == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
