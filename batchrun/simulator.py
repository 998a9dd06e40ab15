"""A provider simulator: an aiohttp server that speaks the OpenAI-compatible provider API.

It exists so users can rehearse a job file offline (`batchrun simulate`) and so batchrun's tests
and benchmarks have a provider that misbehaves on demand, exactly the way the provider pages say
real ones do: 401 for missing, malformed, revoked or expired keys; 402 for a spent key or org
budget; 403 for a model a key may not use; 429 with `Retry-After` on per-key sliding windows of
requests and of tokens, and random 429s no client rate causes (an overloaded model); 400/404 for unknown models; 422 with a FastAPI `detail`; 503 when no node is free; dropped
connections; and a `request_id` on every success.

    GET  /v1/models              the catalogue (models and aliases), auth required
    POST /v1/chat/completions    a deterministic echo completion, after the checks below
    GET  /_sim/stats             the counters (`SimulatorState.snapshot()`) as JSON
    POST /_sim/config            change the configuration of a running simulator
    POST /_sim/reset             zero the counters

A completion is checked in the order a provider gateway would: key, budgets, random 429s, rate
limit, body schema, model, token limit, random faults, the model's own limits; then it waits the
configured latency. A random 429 is decided before the rate limiter, so it uses no quota.
The counters record what a client did, so a test can prove it never broke a limit or redid work.

The catalogue and the request rules are in `simulator_catalog`, the counters in `simulator_state`;
both are re-exported here, the one import the rest of batchrun needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from aiohttp import web

from batchrun.errors import ConfigError
from batchrun.keyid import key_id as public_key_id
from batchrun.simulator_catalog import (
    ModelSpec,
    Refusal,
    Reply,
    catalogue_entries,
    check_request,
    compose_reply,
    default_aliases,
    default_models,
    resolve_model,
    validate_body,
)
from batchrun.simulator_state import KeyStats, SimulatorState, SlidingWindow
from batchrun.units import Rate, parse_duration, parse_rate

__all__ = [
    "CONFIG_KEY",
    "STATE_KEY",
    "KeyStats",
    "ModelSpec",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "SimulatorThread",
    "SlidingWindow",
    "apply_config_changes",
    "create_app",
    "running_simulator",
    "serve",
    "validate_body",
]

log = logging.getLogger(__name__)

#: how long shutdown waits for in-flight handlers (e.g. ones sleeping a long latency) before
#: cancelling them; a simulator has no work worth waiting for
_SHUTDOWN_TIMEOUT = 0.5

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Handlers read it on every request, so changing it mid-run works."""

    models: list[ModelSpec] = field(default_factory=default_models)
    aliases: dict[str, str] = field(default_factory=default_aliases)
    latency: float = 0.0  # seconds before answering a completion
    latency_jitter: float = 0.0  # plus uniform(0, jitter)
    fail_rate: float = 0.0  # probability of 503 no nodes available
    reset_rate: float = 0.0  # probability the connection is dropped with no response
    rate_limit: Rate | None = None  # per key sliding window of requests
    # per key sliding window of tokens: prompt + completion tokens of the answer the simulator gives
    token_limit: Rate | None = None
    random_429_rate: float = 0.0  # probability of a 429 model_overloaded, before (and outside) the limits
    random_429_retry_after: float = 1.0  # its Retry-After, in seconds (fractions allowed)
    revoked: set[str] = field(default_factory=set)  # key ids answered 401 key_revoked
    expired: set[str] = field(default_factory=set)  # key ids answered 401 key_expired
    accepted_keys: set[str] | None = None  # if set, any other key id is 401 invalid_api_key
    require_key_format: bool = False  # tokens must look like `id:secret`
    key_budgets: dict[str, int] = field(default_factory=dict)  # key id -> successful completions allowed
    org_budget: int | None = None  # successful completions allowed across all keys
    revoke_after: dict[str, int] = field(default_factory=dict)  # key id -> requests before revocation
    forbidden: dict[str, set[str]] = field(default_factory=dict)  # key id -> model ids it may not use
    unknown_model_status: int = 404  # 404 (Pinaivu) or 400 (PrivateMind)
    omit_request_id: bool = False
    # False: no x-ratelimit-* headers (providers that send none); the limits still hold, with 429s
    rate_headers: bool = True
    # False: the catalogue leaves out context length, parameters, capabilities and prices (as some real
    # providers do) while the models still enforce them, so clients meet the provider's own 400s
    publish_metadata: bool = True
    seed: int | None = None


def apply_config_changes(config: SimulatorConfig, changes: Any) -> None:
    """Apply a `POST /_sim/config` object to `config`: all of it, or nothing if any part is bad.

    Keys: remove_models, add_models, aliases (merged; null removes one), revoke, expire, fail_rate,
    reset_rate, random_429_rate, random_429_retry_after, latency, latency_jitter, rate_limit and
    token_limit ("20/1s" or null), org_budget, key_budgets (merged). Raises ValueError naming the
    problem.
    """
    if not isinstance(changes, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(changes) - set(_CONFIG_CHANGES))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(_CONFIG_CHANGES)}")
    # validate everything first so a bad key cannot leave a half-applied change behind
    steps = [_CONFIG_CHANGES[name](value) for name, value in changes.items()]
    for step in steps:
        step(config)


_Step = Callable[[SimulatorConfig], None]


def _remove_models(value: Any) -> _Step:
    ids = set(_string_list(value, "remove_models"))

    def step(config: SimulatorConfig) -> None:
        config.models[:] = [model for model in config.models if model.id not in ids]

    return step


def _add_models(value: Any) -> _Step:
    if not isinstance(value, list):
        raise ValueError("add_models must be a list of model objects")
    specs = [ModelSpec.from_dict(item) for item in value]

    def step(config: SimulatorConfig) -> None:
        new_ids = {spec.id for spec in specs}
        config.models[:] = [model for model in config.models if model.id not in new_ids] + specs

    return step


def _aliases(value: Any) -> _Step:
    if not isinstance(value, dict) or not all(v is None or isinstance(v, str) for v in value.values()):
        raise ValueError("aliases must be an object of alias -> model id (null removes an alias)")

    def step(config: SimulatorConfig) -> None:
        for alias, target in value.items():
            if target is None:
                config.aliases.pop(alias, None)
            else:
                config.aliases[alias] = target

    return step


def _add_to(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        ids = _string_list(value, attribute)
        return lambda config: getattr(config, attribute).update(ids)

    return parse


def _probability(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{attribute} must be a number between 0 and 1")
        return lambda config: setattr(config, attribute, float(value))

    return parse


def _seconds(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        try:
            seconds = parse_duration(value, field=attribute)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return lambda config: setattr(config, attribute, seconds)

    return parse


def _rate(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        try:
            rate = None if value is None else parse_rate(str(value), field=attribute)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return lambda config: setattr(config, attribute, rate)

    return parse


def _org_budget(value: Any) -> _Step:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError("org_budget must be a non-negative integer or null")
    return lambda config: setattr(config, "org_budget", value)


def _key_budgets(value: Any) -> _Step:
    if not isinstance(value, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()
    ):
        raise ValueError("key_budgets must be an object of key id -> non-negative integer")
    return lambda config: config.key_budgets.update(value)


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a list of strings")
    return value


_CONFIG_CHANGES: dict[str, Callable[[Any], _Step]] = {
    "remove_models": _remove_models,
    "add_models": _add_models,
    "aliases": _aliases,
    "revoke": _add_to("revoked"),
    "expire": _add_to("expired"),
    "fail_rate": _probability("fail_rate"),
    "reset_rate": _probability("reset_rate"),
    "random_429_rate": _probability("random_429_rate"),
    "random_429_retry_after": _seconds("random_429_retry_after"),
    "latency": _seconds("latency"),
    "latency_jitter": _seconds("latency_jitter"),
    "rate_limit": _rate("rate_limit"),
    "token_limit": _rate("token_limit"),
    "org_budget": _org_budget,
    "key_budgets": _key_budgets,
}


# -- the server -------------------------------------------------------------------------------

STATE_KEY = web.AppKey("batchrun_simulator_state", SimulatorState)
CONFIG_KEY = web.AppKey("batchrun_simulator_config", SimulatorConfig)


class _Refused(Exception):
    """A finished error response, raised from deep inside a check so the handler has one exit."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> _Refused:
        """The OpenAI-style `{"error": {...}}` answer."""
        body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "code": code}}
        return cls(status, body, headers)

    @classmethod
    def over_limit(cls, code: str, limit: str, key: str, wait: float) -> _Refused:
        """A 429 of a key's sliding window, with the honest wait rounded up to whole seconds (never 0)."""
        return cls.error(
            429,
            code,
            f"Rate limit exceeded for key {key}: {limit}. Retry after the Retry-After header's seconds.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    @classmethod
    def refusal(cls, status: int, refusal: Refusal) -> _Refused:
        return cls.error(status, refusal.code, refusal.message)

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


class _Dropped(Exception):
    """The simulated fault of a connection that dies without an answer."""


class _Handlers:
    """The HTTP endpoints, bound to one config, one state and one seeded random source."""

    def __init__(self, config: SimulatorConfig, state: SimulatorState) -> None:
        self.config = config
        self.state = state
        self.random = random.Random(config.seed)

    # -- /v1 ----------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        self.state.count_models_request()
        try:
            token, key = self._identify(request)
            self._check_key(token, key)
        except _Refused as refused:
            return refused.response()
        config = self.config
        entries = catalogue_entries(list(config.models), dict(config.aliases))
        if not config.publish_metadata:
            hidden = ("context_length", "supported_parameters", "capabilities", "pricing")
            entries = [{k: v for k, v in entry.items() if k not in hidden} for entry in entries]
        return web.json_response({"object": "list", "data": entries})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.state.begin_completion()
        key: str | None = None
        try:
            try:
                token, key = self._identify(request)
                response = await self._complete(request, token, key)
            except _Refused as refused:
                response = refused.response()
            except _Dropped:
                return self._drop(request, key)
            requests, tokens = self.config.rate_limit, self.config.token_limit
            if key is not None and self.config.rate_headers and (requests is not None or tokens is not None):
                response.headers.update(self.state.rate_headers(key, requests, tokens))
            self.state.record_status(key, response.status)
            log.info("completion key=%s status=%s", key or "-", response.status)
            return response
        finally:
            self.state.end_completion()

    async def _complete(self, request: web.Request, token: str, key: str) -> web.Response:
        config, state = self.config, self.state
        requests_from_key = state.count_key_request(key)
        limit = config.revoke_after.get(key)
        if limit is not None and requests_from_key > limit:
            config.revoked.add(key)
        self._check_key(token, key)
        self._check_budgets(key)
        if self._happens(config.random_429_rate):
            state.count_random_429(key)
            raise _Refused.error(
                429,
                "model_overloaded",
                "The model is currently overloaded with other requests. Retry after the Retry-After "
                "header's seconds.",
                headers=_retry_after_headers(config.random_429_retry_after),
            )
        if config.rate_limit is not None:
            wait = state.admit(key, config.rate_limit)
            if wait is not None:
                raise _Refused.over_limit("rate_limit_exceeded", f"{config.rate_limit} requests", key, wait)
        body = await _read_json(request)
        detail = validate_body(body)
        if detail:
            raise _Refused(422, {"detail": detail})
        model = self._resolve(body["model"], key)
        reply = compose_reply(body)
        if config.token_limit is not None:
            self._admit_tokens(key, config.token_limit, reply.total_tokens)
        if self._happens(config.reset_rate):
            await self._wait_latency()
            raise _Dropped
        if self._happens(config.fail_rate):
            await self._wait_latency()
            raise _Refused.error(503, "no_nodes_available", "No nodes available: all GPU nodes are at capacity")
        refusal = check_request(model, body)
        if refusal is not None:
            raise _Refused.refusal(400, refusal)
        await self._wait_latency()
        # budgets again, with no await before the success is counted: concurrent requests that
        # all passed the first check must not overspend a budget
        self._check_budgets(key)
        return self._success(key, model, body, reply)

    def _admit_tokens(self, key: str, limit: Rate, tokens: int) -> None:
        wait = self.state.admit_tokens(key, limit, tokens)
        if wait is None:
            return
        if math.isinf(wait):
            raise _Refused.error(
                429,
                "request_too_large",
                f"Request too large for key {key}: it needs {tokens} tokens, more than the limit of "
                f"{limit} tokens allows. Reduce the prompt or max_tokens.",
            )
        needs = f"{limit} tokens; this request needs {tokens}"
        raise _Refused.over_limit("tokens_rate_limit_exceeded", needs, key, wait)

    def _success(self, key: str, model: ModelSpec, body: dict[str, Any], reply: Reply) -> web.Response:
        number = self.state.record_success(key, body["messages"])
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
        }
        if not self.config.omit_request_id:
            answer["request_id"] = f"req_{uuid.uuid4().hex}"
        answer["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
            }
        ]
        answer["usage"] = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.total_tokens,
        }
        return web.json_response(answer)

    def _identify(self, request: web.Request) -> tuple[str, str]:
        """The bearer token and its public key id; never log the token."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused.error(
                401,
                "missing_api_key",
                "Missing API key: send the header `Authorization: Bearer $KEY` on every request, "
                "not just the first one",
            )
        return token, public_key_id(token)

    def _check_key(self, token: str, key: str) -> None:
        config = self.config
        if config.require_key_format and not _well_formed(token):
            raise _Refused.error(
                401,
                "invalid_key_format",
                "Wrong key format: the full token is `<access_key_id>:<secret>`, including the colon, "
                "with no whitespace",
            )
        if config.accepted_keys is not None and key not in config.accepted_keys:
            raise _Refused.error(401, "invalid_api_key", f"Invalid API key {key}")
        if key in config.revoked:
            raise _Refused.error(401, "key_revoked", "API key revoked")
        if key in config.expired:
            raise _Refused.error(401, "key_expired", "API key expired")

    def _check_budgets(self, key: str) -> None:
        config = self.config
        total, of_key = self.state.successes(key)
        if config.org_budget is not None and total >= config.org_budget:
            raise _Refused.error(
                402,
                "org_budget_exhausted",
                "Budget exhausted: your organisation has spent its monthly budget. Talk to your org admin.",
            )
        budget = config.key_budgets.get(key)
        if budget is not None and of_key >= budget:
            raise _Refused.error(
                402,
                "key_budget_exhausted",
                f"Budget exhausted for key {key}: raise the key's budget cap in Settings → API Keys",
            )

    def _resolve(self, name: str, key: str) -> ModelSpec:
        config = self.config
        model = resolve_model(name, list(config.models), dict(config.aliases))
        if model is None:
            raise _Refused.error(
                config.unknown_model_status,
                "model_not_found",
                f"The model '{name}' does not exist or is not available",
            )
        forbidden = config.forbidden.get(key, set())
        if model.id in forbidden or name in forbidden:
            raise _Refused.error(
                403, "model_not_allowed", f"The model '{model.id}' is not in the allowed list for key {key}"
            )
        return model

    def _happens(self, probability: float) -> bool:
        # draw only when the fault is configured, so a seed replays the same faults
        return probability > 0 and self.random.random() < probability

    async def _wait_latency(self) -> None:
        delay = self.config.latency
        if self.config.latency_jitter > 0:
            delay += self.random.uniform(0, self.config.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    def _drop(self, request: web.Request, key: str | None) -> web.Response:
        """Close the connection without answering; the client sees a disconnect, not a status."""
        self.state.count_reset()
        log.info("completion key=%s dropped", key or "-")
        if request.transport is not None:
            request.transport.abort()
        # never sent: writing to the aborted transport fails and aiohttp drops it quietly
        return web.Response(status=500)

    # -- /_sim --------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def change_config(self, request: web.Request) -> web.Response:
        try:
            apply_config_changes(self.config, await _read_json(request))
        except ValueError as exc:
            return web.json_response({"error": {"message": str(exc), "code": "invalid_config"}}, status=400)
        except _Refused as refused:
            return refused.response()
        return web.json_response({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"ok": True})


def _retry_after_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds when `seconds` is whole (else as a decimal), and `retry-after-ms`."""
    text = str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0")
    return {"Retry-After": text, "retry-after-ms": str(round(seconds * 1000))}


def _well_formed(token: str) -> bool:
    access_id, sep, secret = token.partition(":")
    return bool(sep and access_id and secret) and not any(char.isspace() for char in token)


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise _Refused.error(400, "invalid_json", f"JSON parse error: body is not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise _Refused.error(
            400, "invalid_json", f"JSON parse error: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application; its counters are `app[STATE_KEY]`."""
    state = SimulatorState()
    handlers = _Handlers(config, state)
    app = web.Application()
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
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
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator in the caller's event loop for the length of the block (port 0: any free)."""
    config = config if config is not None else SimulatorConfig()
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # with port 0 each address gets its own free port; the first one is the one we report
        bound_port = runner.addresses[0][1] if port == 0 else port
        yield RunningSimulator(_base_url(host, bound_port), config, app[STATE_KEY], host, bound_port)
    finally:
        await runner.cleanup()


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class SimulatorThread:
    """The simulator on a background thread with its own event loop.

    For tests that drive the batchrun CLI as a subprocess (or any synchronous code): `with
    SimulatorThread(config) as sim:` returns once the server listens and stops it, joining the
    thread, on exit. Reading `sim.state` from the calling thread is safe.
    """

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._running: RunningSimulator | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> RunningSimulator:
        self._thread = threading.Thread(target=self._run, name="batchrun-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self._running is not None
        return self._running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to the starting thread, which re-raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_simulator(self.config, self.host, self.port) as running:
            self._running = running
            self._ready.set()
            await self._stop.wait()


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
