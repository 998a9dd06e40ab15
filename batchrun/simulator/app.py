"""The simulator's HTTP server: its routes, and the ways to run it (in a loop, on a thread, until a signal).

    GET  /v1/models              the catalogue (models and aliases), auth required
    POST /v1/chat/completions    chat.py
    POST /v1/completions         completions.py
    POST /v1/responses           responses.py
    POST /v1/embeddings          embeddings.py
    POST /v1/moderations         moderations.py
    POST /v1/files  GET /v1/files[/{id}[/content]]  DELETE /v1/files/{id}       files.py
    POST /v1/batches  GET /v1/batches[/{id}]  POST /v1/batches/{id}/cancel     batches.py
    GET  /_sim/stats             the counters (`SimulatorState.snapshot()`) as JSON
    POST /_sim/config            change the configuration of a running simulator
    POST /_sim/reset             zero the counters (files and batches stay)

Every `POST /v1/...` endpoint route goes through the one `Gateway` (gateway.py) with its endpoint
module; a batch answers its lines with the same modules, through the same gateway.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from aiohttp import web

from batchrun.errors import ConfigError
from batchrun.simulator.batches import BatchRoutes
from batchrun.simulator.catalog import catalogue_entries
from batchrun.simulator.chat import CHAT
from batchrun.simulator.completions import COMPLETIONS
from batchrun.simulator.config import SimulatorConfig, apply_config_changes
from batchrun.simulator.embeddings import EMBEDDINGS
from batchrun.simulator.endpoint import Endpoint
from batchrun.simulator.files import FileRoutes, FileStore
from batchrun.simulator.gateway import Gateway, Refused, read_json
from batchrun.simulator.moderations import MODERATIONS
from batchrun.simulator.responses import RESPONSES
from batchrun.simulator.server_thread import ServerThread
from batchrun.simulator.state import SimulatorState

__all__ = ["CONFIG_KEY", "ENDPOINTS", "STATE_KEY", "RunningSimulator", "SimulatorThread", "create_app",
           "running_simulator", "serve"]

log = logging.getLogger(__name__)

#: how long shutdown waits for in-flight handlers (e.g. ones sleeping a long latency) before
#: cancelling them; a simulator has no work worth waiting for
_SHUTDOWN_TIMEOUT = 0.5

#: the endpoints served under /v1, one module each
ENDPOINTS: tuple[Endpoint, ...] = (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, MODERATIONS)

STATE_KEY = web.AppKey("batchrun_simulator_state", SimulatorState)
CONFIG_KEY = web.AppKey("batchrun_simulator_config", SimulatorConfig)

#: catalogue fields left out when the config says the provider publishes no metadata
_METADATA = ("context_length", "supported_parameters", "capabilities", "pricing")


class _Handlers:
    """The routes that are not endpoints: the catalogue and the `/_sim` controls."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.state = gateway.state

    async def models(self, request: web.Request) -> web.Response:
        self.state.count_models_request()
        config = self.config
        if config.models_failures:  # a blip (or an outage) on the catalogue, scripted by a test
            status = config.models_failures.pop(0)
            if status == 0:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)  # never sent: the connection is gone
            return web.json_response({"error": {"message": f"catalogue unavailable ({status})",
                                                "code": "server_error"}}, status=status)
        try:
            self.gateway.authorise(request)
        except Refused as refused:
            return refused.response()
        entries = catalogue_entries(list(config.models), dict(config.aliases))
        if not config.publish_metadata:
            entries = [{k: v for k, v in entry.items() if k not in _METADATA} for entry in entries]
        return web.json_response({"object": "list", "data": entries})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def change_config(self, request: web.Request) -> web.Response:
        try:
            apply_config_changes(self.config, await read_json(request))
        except ValueError as exc:
            return web.json_response({"error": {"message": str(exc), "code": "invalid_config"}}, status=400)
        except Refused as refused:
            return refused.response()
        return web.json_response({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"ok": True})


def _route(gateway: Gateway, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await gateway.handle(request, endpoint)

    return handle


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application; its counters are `app[STATE_KEY]`."""
    state = SimulatorState()
    gateway = Gateway(config, state)
    handlers = _Handlers(gateway)
    app = web.Application()
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_get("/v1/models", handlers.models)
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, _route(gateway, endpoint))
    files = FileStore()
    FileRoutes(gateway, files, state.batches).add_to(app)
    BatchRoutes(gateway, files, state.batches, ENDPOINTS).add_to(app)
    app.router.add_get("/_sim/stats", handlers.stats)
    app.router.add_post("/_sim/config", handlers.change_config)
    app.router.add_post("/_sim/reset", handlers.reset)
    return app


@dataclass
class RunningSimulator:
    """A listening simulator: where to send requests, and the live config and counters."""

    base_url: str  # "http://127.0.0.1:PORT/v1"
    config: SimulatorConfig
    state: SimulatorState
    host: str
    port: int


@asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator in the caller's event loop for the length of the block (port 0: any free);
    over TLS (an https:// base URL) when given `ssl_context`."""
    config = config if config is not None else SimulatorConfig()
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # with port 0 each address gets its own free port; the first one is the one we report
        bound_port = runner.addresses[0][1] if port == 0 else port
        yield RunningSimulator(_base_url(host, bound_port, "https" if ssl_context else "http"), config,
                               app[STATE_KEY], host, bound_port)
    finally:
        await runner.cleanup()


def _base_url(host: str, port: int, scheme: str = "http") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/v1"


class SimulatorThread(ServerThread):
    """The simulator on a background thread with its own event loop.

    For tests that drive the batchrun CLI as a subprocess (or any synchronous code): `with
    SimulatorThread(config) as sim:` returns once the server listens and stops it, joining the
    thread, on exit. Reading `sim.state` from the calling thread is safe.
    """

    thread_name = "batchrun-simulator"

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SimulatorConfig()
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._running: RunningSimulator | None = None

    def __enter__(self) -> RunningSimulator:
        self.start()
        assert self._running is not None
        return self._running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        async with running_simulator(self.config, self.host, self.port, self.ssl_context) as running:
            self._running = running
            ready()
            await stop.wait()


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8787, *, out: TextIO | None = None) -> None:
    """Serve until SIGINT or SIGTERM; print `batchrun simulator listening on <base url>` once listening."""
    try:
        asyncio.run(_serve_until_signalled(config, host, port, out if out is not None else sys.stdout))
    except KeyboardInterrupt:  # where signal handlers cannot be installed (e.g. Windows)
        pass


async def _serve_until_signalled(config: SimulatorConfig, host: str, port: int, out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        async with running_simulator(config, host, port) as running:
            print(f"batchrun simulator listening on {running.base_url}", file=out, flush=True)
            log.info("simulator serving %d model(s) on %s", len(config.models), running.base_url)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
