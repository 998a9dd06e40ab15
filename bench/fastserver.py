"""A minimal OpenAI-compatible server for the throughput benchmarks: never the bottleneck.

`batchrun simulate` behaves like a provider (limits, faults, real answers) and costs ≈ 0.2 ms of CPU a
request for it; at a few thousand requests a second it measures itself as much as the client. This
server does only what a client needs to finish a job — a raw asyncio Protocol on uvloop, HTTP/1.1
keep-alive, a canned answer — at ≈ 15–30 µs of CPU a request (half of it the kernel's), so one core
serves 30,000–65,000 requests a second:

    python bench/fastserver.py --port 0 --latency 0      # prints `listening on http://127.0.0.1:PORT/v1`

* `GET /v1/models`: the simulator's text models with their context windows, parameters and prices
  (`sim-small` alias `fast`, `sim-large`, `sim-embed`), so a client does the same prechecks and cost
  accounting per job as against the simulator;
* `POST /v1/chat/completions`: a canned answer with `id`, `request_id` and `usage` (nothing echoed);
* `POST /v1/embeddings`: one small vector per input (the body is parsed for the input count);
* answers after `--latency` ms (`loop.call_later`), in request order on each connection (pipelining-safe);
* `GET /_fast/stats` (counters, in-flight peak, duplicated bodies, its own CPU seconds), `POST /_fast/reset`.

Only what a benchmark client sends is parsed: the request line, `Content-Length` and `Connection: close`;
a chunked body gets a 411 and the connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

#: the catalogue of `GET /v1/models`: the simulator's entries for the models the bench job files use
_PARAMETERS = ["max_tokens", "temperature", "top_p", "stop", "seed", "response_format", "presence_penalty",
               "frequency_penalty", "n", "user", "tools", "tool_choice", "logprobs", "stream"]
MODELS: list[dict[str, Any]] = [
    {"id": "sim-small", "object": "model", "owned_by": "bench-fastserver", "context_length": 8192,
     "supported_parameters": _PARAMETERS, "capabilities": {"response_format": True},
     "pricing": {"prompt": 0.10e-6, "completion": 0.40e-6}, "aliases": ["fast"]},
    {"id": "sim-large", "object": "model", "owned_by": "bench-fastserver", "context_length": 32768,
     "supported_parameters": _PARAMETERS, "capabilities": {"response_format": True},
     "pricing": {"prompt": 1.00e-6, "completion": 4.00e-6}, "aliases": ["reasoning"]},
    {"id": "sim-embed", "object": "model", "owned_by": "bench-fastserver", "context_length": 8192,
     "supported_parameters": ["model", "input", "dimensions", "encoding_format", "user"],
     "pricing": {"prompt": 0.02e-6, "completion": 0.0}, "endpoints": ["embeddings"], "aliases": ["embed"]},
]
#: the chat answer: `%010d` twice, the answer's number as its `id` and `request_id` (a fixed width, so the
#: Content-Length is a constant too)
_CHAT_BODY = (b'{"id":"chatcmpl-%010d","request_id":"req_%010d","object":"chat.completion","created":1700000000,'
              b'"model":"sim-small","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
              b'"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":1,"total_tokens":25}}')
EMBEDDING_DIMENSIONS = 16  # when the request names none
_STATUS = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found", 411: b"411 Length Required"}


def response(status: int, body: bytes, close: bool = False) -> bytes:
    return b"".join((b"HTTP/1.1 ", _STATUS[status], b"\r\nContent-Type: application/json\r\nContent-Length: ",
                     str(len(body)).encode(), b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n", body))


def error(status: int, message: str, close: bool = False) -> bytes:
    return response(status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}}), close)


_CHAT_ANSWER = response(200, _CHAT_BODY % (0, 0))[:-len(_CHAT_BODY % (0, 0))] + _CHAT_BODY


class Counters:
    """What the bench reads back through `GET /_fast/stats`."""

    __slots__ = ("requests_total", "by_status", "completions_ok", "embeddings_ok", "models_requests",
                 "duplicates", "bodies", "in_flight", "max_in_flight", "connections", "max_connections",
                 "resets")

    def __init__(self, resets: int = 0, connections: int = 0) -> None:
        self.requests_total = 0  # requests to the API (/v1/...), answered or not yet; not the /_fast calls
        self.by_status: dict[int, int] = {}
        self.completions_ok = 0
        self.embeddings_ok = 0
        self.models_requests = 0
        self.duplicates = 0  # a request body answered before: a job sent twice
        self.bodies: set[int] = set()  # hashes of the bodies answered
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = self.max_connections = connections  # those still open at a reset count on
        self.resets = resets

    def shown(self) -> dict[str, Any]:
        return {"requests_total": self.requests_total,
                "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
                "completions_ok": self.completions_ok, "embeddings_ok": self.embeddings_ok,
                "models_requests": self.models_requests, "duplicates": self.duplicates,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "connections": self.connections, "max_connections": self.max_connections,
                "resets": self.resets, "cpu_seconds": time.process_time()}


Handler = Callable[[bytes], bytes]


class Server:
    """What every connection shares: the latency, the counters, the routes and their canned answers."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.counters = Counters()
        self.answered = 0  # numbers the answers' ids; never reset, so ids stay unique
        self.loop = asyncio.get_running_loop()
        self.catalogue = response(200, orjson.dumps({"object": "list", "data": MODELS}))
        #: (method, path) -> handler of the body; the API's answers wait for the latency, the others do not
        self.api: dict[tuple[bytes, bytes], Handler] = {
            (b"POST", b"/v1/chat/completions"): self.chat,
            (b"POST", b"/v1/embeddings"): self.embeddings,
        }
        self.control: dict[tuple[bytes, bytes], Handler] = {
            (b"GET", b"/v1/models"): self.models,
            (b"GET", b"/_fast/stats"): lambda _: response(200, orjson.dumps(self.counters.shown())),
            (b"POST", b"/_fast/reset"): self.reset,
        }

    def reset(self, _: bytes) -> bytes:
        self.counters = Counters(self.counters.resets + 1, self.counters.connections)
        return response(200, b'{"reset":true}')

    def models(self, _: bytes) -> bytes:
        counters = self.counters
        counters.requests_total += 1
        counters.models_requests += 1
        counters.by_status[200] = counters.by_status.get(200, 0) + 1
        return self.catalogue

    def chat(self, body: bytes) -> bytes:
        self.answered += 1
        counters = self.counters
        counters.completions_ok += 1
        counters.by_status[200] = counters.by_status.get(200, 0) + 1
        self._seen(body)
        return _CHAT_ANSWER % (self.answered, self.answered)

    def embeddings(self, body: bytes) -> bytes:
        try:
            request = orjson.loads(body)
            items = request["input"]
            count = len(items) if isinstance(items, list) and items and not isinstance(items[0], int) else 1
            dimensions = int(request.get("dimensions") or EMBEDDING_DIMENSIONS)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return self.refuse(400, "the body is not an embeddings request")
        if request.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *([0.125] * dimensions))).decode()
        else:
            vector = [0.125] * dimensions
        self.answered += 1
        counters = self.counters
        counters.embeddings_ok += 1
        counters.by_status[200] = counters.by_status.get(200, 0) + 1
        self._seen(body)
        return response(200, orjson.dumps({
            "object": "list", "model": request.get("model"), "request_id": f"req_{self.answered}",
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
            "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count}}))

    def refuse(self, status: int, message: str, close: bool = False) -> bytes:
        self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1
        return error(status, message, close)

    def _seen(self, body: bytes) -> None:
        key = hash(body)
        if key in self.counters.bodies:
            self.counters.duplicates += 1
        else:
            self.counters.bodies.add(key)


class Connection(asyncio.Protocol):
    """One client connection: cuts the byte stream into requests, answers them in order."""

    __slots__ = ("server", "transport", "rest", "queue", "closing")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.rest = b""  # the start of a request whose head or body is still on its way
        # answers not yet written, oldest first, each a one-item list: None while its latency runs
        self.queue: deque[list[bytes | None]] = deque()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        counters = self.server.counters
        counters.connections += 1
        counters.max_connections = max(counters.max_connections, counters.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        counters = self.server.counters
        counters.connections -= 1
        counters.in_flight -= sum(1 for slot in self.queue if slot[0] is None)
        self.queue.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data, self.rest = self.rest + data, b""
        start, size, ready = 0, len(data), []
        while start < size and not self.closing:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                break
            line_end = data.find(b"\r\n", start, end + 2)
            # the header as clients send it; any other spelling through the slower lower-case search
            found = data.find(b"\r\nContent-Length:", line_end, end)
            if found >= 0:
                length = int(data[found + 17:data.find(b"\r\n", found + 17, end + 2)])
            else:
                head = data[line_end:end].lower()
                found = head.find(b"\r\ncontent-length:")
                if found >= 0:
                    value_end = head.find(b"\r\n", found + 17)
                    length = int(head[found + 17:value_end if value_end >= 0 else len(head)])
                elif b"\r\ntransfer-encoding:" in head:
                    ready.append(self.server.refuse(411, "send a Content-Length body, not a chunked one", close=True))
                    self.closing = True
                    break
                else:
                    length = 0
            body_end = end + 4 + length
            if body_end > size:
                break  # the body is still on its way
            method, target, _ = data[start:line_end].split(b" ", 2)
            path = target.partition(b"?")[0]
            body = data[end + 4:body_end]
            if data.find(b"onnection: close", line_end, end) >= 0:  # Connection or connection
                self.closing = True
            start = body_end
            answer = self.handle(method, path, body)
            if answer is None:  # answered after the latency: its slot keeps the order
                slot: list[bytes | None] = [None]
                self.queue.append(slot)
                self.server.loop.call_later(self.server.latency, self.answer_later, slot, method, path, body)
            elif self.queue:
                self.queue.append([answer])
            else:
                ready.append(answer)
        if start < size:
            self.rest = data[start:]
        if self.transport is not None:
            if ready:
                self.transport.write(b"".join(ready) if len(ready) > 1 else ready[0])
            if self.closing and not self.queue:
                self.transport.close()

    def handle(self, method: bytes, path: bytes, body: bytes) -> bytes | None:
        """The answer to one request, or None if it is an API call to answer after the latency."""
        server = self.server
        handler = server.api.get((method, path))
        if handler is None:
            control = server.control.get((method, path))
            if control is not None:
                return control(body)
            server.counters.requests_total += 1
            return server.refuse(404, f"no {method.decode()} {path.decode()} here")
        counters = server.counters
        counters.requests_total += 1
        if server.latency > 0:
            counters.in_flight += 1
            if counters.in_flight > counters.max_in_flight:
                counters.max_in_flight = counters.in_flight
            return None
        return handler(body)

    def answer_later(self, slot: list[bytes | None], method: bytes, path: bytes, body: bytes) -> None:
        if self.transport is None:
            return  # the client went away; connection_lost has counted it out
        self.server.counters.in_flight -= 1
        slot[0] = self.server.api[method, path](body)
        queue, ready = self.queue, []
        while queue and queue[0][0] is not None:
            ready.append(queue.popleft()[0])
        if ready:
            self.transport.write(b"".join(ready))  # type: ignore[arg-type]
        if self.closing and not queue:
            self.transport.close()


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's, or (with a warning) asyncio's own."""
    try:
        import uvloop
    except ImportError:
        print("fastserver: warning: uvloop is not installed (pip install uvloop): using asyncio's default loop; "
              "the figures measured against this server are not the reference set-up", file=sys.stderr, flush=True)
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def serve(host: str, port: int, latency: float) -> None:
    server = Server(latency)
    listener = await asyncio.get_running_loop().create_server(lambda: Connection(server), host, port,
                                                              backlog=4096, reuse_address=True)
    bound = listener.sockets[0].getsockname()[1]
    print(f"bench fastserver listening on http://{host}:{bound}/v1", flush=True)
    await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the line printed says which)")
    parser.add_argument("--latency", type=float, default=0.0, help="ms before each API answer (default 0)")
    args = parser.parse_args(argv)
    loop = event_loop()
    try:
        loop.run_until_complete(serve(args.host, args.port, args.latency / 1000))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
