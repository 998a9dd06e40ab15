"""A chaos proxy for tests: a real HTTP reverse proxy that spoils some 200 answers on purpose.

It stands in front of any OpenAI-compatible upstream (the bundled simulator, llmock, ...). Each request
goes through unchanged: method, path, query, headers (Authorization too) and body. Each answer comes back
with its status, its headers (less the hop-by-hop ones, Content-Length and Content-Encoding: the proxy
sends the decoded body and frames it itself) and its body. The exception is a 200 answer on a path that
a `Fault` picks. That answer is spoiled in a way no transport error reveals, so a test can prove that
the client never takes a cut or short answer for a result:

| kind           | what the client gets                                                          |
|----------------|-------------------------------------------------------------------------------|
| `cut`          | the first half of the body as a complete response (Content-Length fits it)   |
| `truncate`     | the network cuts it: Content-Length of the whole body, half of it, then EOF  |
| `drop_last`    | embeddings: `data` without its last item (one embedding fewer than inputs)   |
| `short_vector` | embeddings: the last item's `embedding` cut to half its length               |
| `empty_data`   | embeddings: `data: []`                                                        |
| `no_choices`   | completions / chat completions: no `choices`                                 |
| `no_output`    | responses: no `output`                                                        |

Which answers are spoiled is set per path and is deterministic: the first N 200s (`first=N`), every
k-th (`every=k`), or a rate drawn from the proxy's seeded generator (`rate=p`), at most `limit` in all.
The JSON kinds are pure functions of the body (`spoil`), so they can be tested without a server.

    with SimulatorThread(SimulatorConfig(seed=1)) as sim, ChaosProxy(sim.base_url, [
        Fault("/v1/chat/completions", "cut", every=3),
    ]) as proxy:
        ...  # point the client at proxy.base_url
        record = proxy.record("/v1/chat/completions")
        assert record.faults == {"cut": 5}

The proxy keeps a record of what it did on each path: answers forwarded, 200s among them, faults
injected by kind, rules that did not fit the body (`skipped`), upstream failures. It also keeps one
`FaultEvent` per spoiled answer, holding the request body, so a test can tell which job got it. When the
upstream drops a connection, the proxy drops the client's connection too: that is a transport error,
and the client should see it as one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from batchrun.simulator.server_thread import ServerThread

__all__ = ["ChaosProxy", "Fault", "FaultEvent", "FaultKind", "NotApplicable", "PathRecord", "spoil"]

FaultKind = Literal["cut", "truncate", "drop_last", "short_vector", "empty_data", "no_choices", "no_output"]

# RFC 9110 §7.6.1 hop-by-hop headers, plus those the proxy must recompute for the body it sends
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
_NOT_FORWARDED_REQUEST = _HOP_BY_HOP | {"host", "content-length"}
_NOT_FORWARDED_RESPONSE = _HOP_BY_HOP | {"content-length", "content-encoding"}


class NotApplicable(ValueError):
    """The body does not have what this fault changes (not JSON, or no `data` / `choices` / `output`)."""


# -- the spoiling itself: pure functions of the body -------------------------------------------------


def spoil(kind: FaultKind, body: bytes) -> bytes:
    """The body that `kind` makes of a 200 answer's `body`; raises NotApplicable if it does not fit."""
    if kind in ("cut", "truncate"):
        if len(body) < 2:
            raise NotApplicable(f"a body of {len(body)} bytes has no proper prefix to cut to")
        return body[: len(body) // 2]
    return _JSON_FAULTS[kind](_json_object(body))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError alike
        raise NotApplicable("the body is not JSON") from exc
    if not isinstance(parsed, dict):
        raise NotApplicable("the body is not a JSON object")
    return parsed


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def _data_list(obj: dict[str, Any]) -> list[Any]:
    data = obj.get("data")
    if not isinstance(data, list) or not data:
        raise NotApplicable("the body has no non-empty `data` list")
    return data


def _drop_last(obj: dict[str, Any]) -> bytes:
    obj["data"] = _data_list(obj)[:-1]
    return _dumps(obj)


def _short_vector(obj: dict[str, Any]) -> bytes:
    item = _data_list(obj)[-1]
    vector = item.get("embedding") if isinstance(item, dict) else None
    if isinstance(vector, list) and len(vector) >= 2:
        item["embedding"] = vector[: len(vector) // 2]
    elif isinstance(vector, str):  # encoding_format "base64": little-endian float32s
        raw = base64.b64decode(vector)
        floats = len(raw) // 4
        if floats < 2:
            raise NotApplicable("the last embedding has fewer than 2 values")
        item["embedding"] = base64.b64encode(raw[: (floats // 2) * 4]).decode()
    else:
        raise NotApplicable("the last `data` item has no embedding of at least 2 values")
    return _dumps(obj)


def _empty_data(obj: dict[str, Any]) -> bytes:
    if "data" not in obj:
        raise NotApplicable("the body has no `data`")
    obj["data"] = []
    return _dumps(obj)


def _without(name: str) -> Callable[[dict[str, Any]], bytes]:
    def remove(obj: dict[str, Any]) -> bytes:
        if name not in obj:
            raise NotApplicable(f"the body has no `{name}`")
        del obj[name]
        return _dumps(obj)

    return remove


_JSON_FAULTS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "drop_last": _drop_last,
    "short_vector": _short_vector,
    "empty_data": _empty_data,
    "no_choices": _without("choices"),
    "no_output": _without("output"),
}
_KINDS = frozenset(_JSON_FAULTS) | {"cut", "truncate"}


# -- which answers to spoil --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """Spoil 200 answers on `path` (e.g. "/v1/chat/completions") with `kind`.

    Set exactly one of `first` (the first N 200s on the path), `every` (the k-th, 2k-th, ... 200) and
    `rate` (each 200 with this probability, drawn from the proxy's seeded generator). `limit` caps how
    many answers this rule spoils. Several rules may name one path: the first that fires wins.
    """

    path: str
    kind: FaultKind
    first: int | None = None
    every: int | None = None
    rate: float | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(sorted(_KINDS))}")
        chosen = [name for name in ("first", "every", "rate") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of first, every, rate (got {chosen or 'none'})")
        if self.first is not None and self.first < 0:
            raise ValueError("first must be ≥ 0")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be ≥ 1")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be ≥ 0")

    def fires(self, nth_ok: int, spoiled_so_far: int, rng: random.Random) -> bool:
        """Whether the `nth_ok` 200 answer on the path (1-based) is to be spoiled by this rule."""
        if self.limit is not None and spoiled_so_far >= self.limit:
            return False
        if self.first is not None:
            return nth_ok <= self.first
        if self.every is not None:
            return nth_ok % self.every == 0
        assert self.rate is not None
        return rng.random() < self.rate


# -- what the proxy did -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultEvent:
    """One spoiled answer: on `path`, the `nth_ok` 200 there, spoiled with `kind`."""

    path: str
    nth_ok: int
    kind: FaultKind
    request_body: bytes
    original_size: int
    sent_size: int


@dataclass(frozen=True)
class PathRecord:
    """What the proxy did on one path, at the moment it was asked."""

    forwarded: int = 0  # answers sent back to the client (spoiled ones included)
    ok: int = 0  # 200s among them, as the upstream answered
    faults: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # kind -> count
    skipped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # rule fired, body unfit
    upstream_errors: int = 0  # upstream unreachable or dropped: the client's connection was dropped too

    @property
    def injected(self) -> int:
        return sum(self.faults.values())


@dataclass
class _PathState:
    forwarded: int = 0
    ok: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    spoiled_by_rule: Counter[int] = field(default_factory=Counter)
    upstream_errors: int = 0

    def snapshot(self) -> PathRecord:
        return PathRecord(self.forwarded, self.ok, MappingProxyType(dict(self.faults)),
                          MappingProxyType(dict(self.skipped)), self.upstream_errors)


# -- the proxy ----------------------------------------------------------------------------------------


class ChaosProxy(ServerThread):
    """The proxy on a background thread with its own event loop, listening on `host`:`port` (0: any free).

    `with ChaosProxy(upstream_base_url, faults, seed=0) as proxy:` returns once it listens. Closing it
    stops the server and joins the thread. `proxy.base_url` mirrors the upstream's path, so an upstream
    at http://127.0.0.1:8787/v1 is reached at http://127.0.0.1:PORT/v1. Every other upstream path
    (`/_sim/stats`, `/_llmock/requests`, ...) goes through as well. Records and faults may be read and
    replaced from any thread.
    """

    thread_name = "chaos-proxy"

    def __init__(self, upstream: str, faults: Iterable[Fault] = (), *, seed: int = 0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be an http(s) base URL, got {upstream!r}")
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self.host = host
        self.port = port
        self._faults: tuple[Fault, ...] = tuple(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._paths: dict[str, _PathState] = {}
        self._events: list[FaultEvent] = []
        self._bound_port: int | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- configuration and records, from any thread

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("the proxy is not listening")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self._bound_port}{self._prefix}"

    @property
    def faults(self) -> tuple[Fault, ...]:
        with self._lock:
            return self._faults

    @faults.setter
    def faults(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._faults = tuple(faults)

    def record(self, path: str) -> PathRecord:
        """What the proxy did on `path` so far (an empty record if nothing came by)."""
        with self._lock:
            state = self._paths.get(path)
            return state.snapshot() if state is not None else PathRecord()

    def records(self) -> dict[str, PathRecord]:
        with self._lock:
            return {path: state.snapshot() for path, state in self._paths.items()}

    def events(self, path: str | None = None) -> list[FaultEvent]:
        """Every spoiled answer, in the order they were sent (on `path` alone, if given)."""
        with self._lock:
            return [e for e in self._events if path is None or e.path == path]

    # -- lifecycle

    def __enter__(self) -> ChaosProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    async def _serve(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        # no pool limit: the proxy must not throttle a client's concurrency; no timeout of its own:
        # the client's timeout is the one under test
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                         auto_decompress=True, skip_auto_headers=("User-Agent",)) as session:
            app = web.Application(client_max_size=1 << 30)
            self._session = session
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port).start()
                self._bound_port = runner.addresses[0][1]
                ready()
                await stop.wait()
            finally:
                await runner.cleanup()

    # -- one request

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session, path = self._session, request.path
        assert session is not None
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED_REQUEST]
        try:
            async with session.request(request.method, self.upstream_origin + request.path_qs,
                                       headers=headers, data=body, allow_redirects=False) as upstream:
                status, reason = upstream.status, upstream.reason
                answer_headers = [(k, v) for k, v in upstream.headers.items()
                                  if k.lower() not in _NOT_FORWARDED_RESPONSE]
                answer = await upstream.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            with self._lock:
                self._path(path).upstream_errors += 1
            return _drop(request)
        sent, kind = self._maybe_spoil(path, status, answer, body)
        if kind == "truncate":
            return await _truncate(request, status, answer_headers, answer, sent)
        return web.Response(status=status, reason=reason, body=sent, headers=CIMultiDict(answer_headers))

    def _path(self, path: str) -> _PathState:
        state = self._paths.get(path)
        if state is None:
            state = self._paths[path] = _PathState()
        return state

    def _maybe_spoil(self, path: str, status: int, answer: bytes,
                     request_body: bytes) -> tuple[bytes, FaultKind | None]:
        with self._lock:
            state = self._path(path)
            state.forwarded += 1
            if status != 200:
                return answer, None
            state.ok += 1
            for index, fault in enumerate(self._faults):
                if fault.path != path or not fault.fires(state.ok, state.spoiled_by_rule[index], self._rng):
                    continue
                try:
                    sent = spoil(fault.kind, answer)
                except NotApplicable:
                    state.skipped[fault.kind] += 1
                    return answer, None
                state.faults[fault.kind] += 1
                state.spoiled_by_rule[index] += 1
                self._events.append(FaultEvent(path, state.ok, fault.kind, request_body, len(answer), len(sent)))
                return sent, fault.kind
            return answer, None


async def _truncate(request: web.Request, status: int, headers: list[tuple[str, str]], whole: bytes,
                    part: bytes) -> web.StreamResponse:
    """Start the whole answer (its Content-Length), send `part` of it, then close the connection."""
    response = web.StreamResponse(status=status, headers=CIMultiDict(headers))
    response.content_length = len(whole)
    await response.prepare(request)
    await response.write(part)
    if request.transport is not None:
        request.transport.close()  # after the buffered part is flushed: the client reads it, then EOF
    return response


def _drop(request: web.Request) -> web.Response:
    """Close the client's connection without an answer, as the upstream closed ours."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=502)  # never sent: the transport is gone
