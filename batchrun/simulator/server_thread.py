"""A server on a background thread with its own event loop, for synchronous callers (tests that drive
the batchrun CLI as a subprocess): `start` returns once it listens (or re-raises why it could not),
`stop` stops it and joins the thread. The simulator's `SimulatorThread` is one; so is the tests' chaos
proxy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["ServerThread"]


class ServerThread:
    """Subclasses serve in `_serve`: call `ready()` once listening, then return when `stop` is set."""

    thread_name = "server"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()

    async def _serve(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the starting thread, which re-raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._serve(self._ready.set, self._stop)
