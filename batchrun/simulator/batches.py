"""The Batches API of the simulator: batch objects, their input files' rules, and their processing.

    POST /v1/batches              `{input_file_id, endpoint, completion_window: "24h", metadata?}` → a batch
    GET  /v1/batches              newest first, `?limit=` (1-100, default 20) and `?after=<batch id>`
    GET  /v1/batches/{id}         the batch object (openai-python `types/batch.py`)
    POST /v1/batches/{id}/cancel  → cancelling, then cancelled; the lines already done keep their answers

A batch moves validating → in_progress → finalizing → completed over
`SimulatorConfig.batch_processing_seconds` (a tenth validating, eight tenths answering its lines one
after another, so a poll sees `request_counts` grow, a tenth finalizing), on the event loop's clock:
one task per batch that sleeps between lines and never blocks the loop (a line costs about 0.1 ms of
CPU, so 50,000 lines take some seconds whatever the setting). Each line is answered by the
endpoint module the live route uses, through `Gateway.answer_batch_line`: the same schema, catalogue,
model rules and budgets, none of the live per-key limits, faults or latency. A 200 goes to the output
file; anything else (a 400 the endpoint gives, a 500 of `batch_line_fail_rate`) to the error file as
`{id, custom_id, response: {status_code, request_id, body: {error: {...}}}, error: null}`, the shape
OpenAI writes (openai-openapi #302).

The input file is checked while the batch is validating, as OpenAI does: every line JSON
`{custom_id, method: "POST", url: <the batch's endpoint>, body: {...}}`, custom_ids unique, one model
for the whole file, at most `batch_max_requests` lines. A file that breaks a rule makes the batch
`failed` with `errors.data[]` entries `{code, message, param, line}` (codes `invalid_json_line`,
`missing_required_parameter`, `invalid_method`, `url_mismatch`, `duplicate_custom_id`, `model_mismatch`,
`empty_file`, `too_many_tasks`). What the create call itself refuses (400): a missing or unknown input
file, one not uploaded with purpose `batch`, an endpoint the simulator does not serve, a window other
than `24h`, bad metadata.

A batch not finished `batch_expire_after` seconds after its creation (24 h when unset) becomes
`expired`: its answered lines stay in the output and error files, and each unanswered line gets an
error-file line `{id, custom_id, response: null, error: {code: "batch_expired", message}}` and counts
as failed. A cancelled batch writes the lines it answered and nothing for the others. The output file
exists once the batch completes, or when it stops with at least one answer; the error file only when
there is an error line. Batches, like files, are shared by every key and live in memory only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from batchrun.simulator.endpoint import Endpoint
from batchrun.simulator.files import FileStore
from batchrun.simulator.gateway import Gateway, Refused, answers_refusals, read_json
from batchrun.simulator.state import BatchLedger

__all__ = ["Batch", "BatchLine", "BatchRoutes", "EXPIRED_MESSAGE", "parse_input"]

log = logging.getLogger(__name__)

#: the completion windows OpenAI accepts
COMPLETION_WINDOWS = frozenset({"24h"})
#: what the completion window is when `batch_expire_after` is unset
_DEFAULT_WINDOW_SECONDS = 24 * 3600
#: the message of an unanswered line of an expired batch (OpenAI's guide, "Batch expiration")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
#: at most this many validation errors are reported, as a provider caps them
_MAX_ERRORS = 100
#: the slices of the processing time: validating, answering, finalizing
_VALIDATING, _ANSWERING, _FINALIZING = 0.1, 0.8, 0.1
#: lines due closer together than this are answered without a sleep between them
_MIN_SLEEP = 0.005
#: lines answered between two yields to the loop when no sleep separates them
_LINES_PER_YIELD = 200
#: statuses a batch can still be cancelled from
_CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})
_METADATA_KEYS, _METADATA_KEY_LENGTH, _METADATA_VALUE_LENGTH = 16, 64, 512


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of an input file that passed validation: its 1-based line number, custom_id and body."""

    number: int
    custom_id: str
    body: dict[str, Any]


def parse_input(data: bytes, endpoint: str, max_requests: int) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """The requests of a batch input file, and the `errors.data` entries that fail the batch (empty if none).

    Blank lines are skipped. One model per file: the first line's `body.model` (absent counts as a
    value) is the one every other line must name.
    """
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: Any = _UNSET
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            item = None
        if not isinstance(item, dict):
            errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        problem = _line_problem(item, endpoint, number)
        if problem is not None:
            errors.append(problem)
            continue
        custom_id, body = item["custom_id"], item["body"]
        if custom_id in seen:
            errors.append(_error(
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' is a duplicate of another request's. The custom_id parameter "
                "must be unique for each request in a batch.",
                number,
                "custom_id",
            ))
            continue
        seen.add(custom_id)
        if model is _UNSET:
            model = body.get("model")
        elif body.get("model") != model:
            errors.append(_error(
                "model_mismatch",
                f"The model '{body.get('model')}' does not match the model '{model}' of the file's first "
                "request: every request in a batch must use the same model.",
                number,
                "body.model",
            ))
            continue
        lines.append(BatchLine(number, custom_id, body))
    if not lines and not errors:
        errors.append(_error("empty_file", "The batch input file is empty: it holds no request.", None))
    if len(lines) > max_requests:
        errors.append(_error(
            "too_many_tasks",
            f"The batch input file holds {len(lines)} requests; a batch may hold at most {max_requests}. "
            "Split it into several batches.",
            None,
        ))
    return lines, errors[:_MAX_ERRORS]


_UNSET = object()


def _line_problem(item: Mapping[str, Any], endpoint: str, number: int) -> dict[str, Any] | None:
    for name in ("custom_id", "method", "url", "body"):
        if name not in item:
            return _error("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
    if not isinstance(item["custom_id"], str) or not item["custom_id"]:
        return _error("invalid_value", "The custom_id must be a non-empty string.", number, "custom_id")
    if item["method"] != "POST":
        return _error("invalid_method", f"The method must be 'POST', not {item['method']!r}.", number, "method")
    if item["url"] != endpoint:
        return _error(
            "url_mismatch",
            f"The url '{item['url']}' does not match the batch's endpoint '{endpoint}': every request in a "
            "batch must use the batch's endpoint.",
            number,
            "url",
        )
    if not isinstance(item["body"], dict):
        return _error("invalid_value", "The body must be a JSON object.", number, "body")
    return None


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


@dataclass
class Batch:
    """One batch: what the batch object shows, and what its processing task keeps."""

    id: str
    key: str  # the public id of the key that created it: its lines spend that key's budget
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    processing_seconds: float
    deadline: float  # the event loop's time at which it expires
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    times: dict[str, int] = field(default_factory=dict)  # status -> when it began, for the *_at fields
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    pending: deque[BatchLine] = field(default_factory=deque)  # validated lines not yet answered
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def to_object(self) -> dict[str, Any]:
        """The batch object, with the fields of openai-python's `Batch`."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.times.get("in_progress"),
            "expires_at": self.expires_at,
            "finalizing_at": self.times.get("finalizing"),
            "completed_at": self.times.get("completed"),
            "failed_at": self.times.get("failed"),
            "expired_at": self.times.get("expired"),
            "cancelling_at": self.times.get("cancelling"),
            "cancelled_at": self.times.get("cancelled"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }

    def enter(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())


class BatchRoutes:
    """The handlers of the Batches API and the processing tasks of its batches."""

    def __init__(self, gateway: Gateway, files: FileStore, ledger: BatchLedger,
                 endpoints: Sequence[Endpoint]) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.files = files
        self.ledger = ledger
        self.endpoints = {endpoint.path: endpoint for endpoint in endpoints}
        self._batches: dict[str, Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self.retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self.cancel)
        app.on_cleanup.append(self._close)

    # -- routes ---------------------------------------------------------------------------------

    @answers_refusals
    async def create(self, request: web.Request) -> web.StreamResponse:
        key = self.gateway.authorise(request)
        batch, data = self._new_batch(await read_json(request), key)
        self._batches[batch.id] = batch
        self.ledger.created(batch.id, batch.input_file_id, batch.endpoint)
        task = asyncio.get_running_loop().create_task(self._process(batch, data), name=batch.id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("batch %s created key=%s endpoint=%s file=%s", batch.id, key, batch.endpoint, batch.input_file_id)
        return web.json_response(batch.to_object())

    @answers_refusals
    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._batch(request).to_object())

    @answers_refusals
    async def cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._batch(request)
        if batch.status == "cancelling":
            return web.json_response(batch.to_object())
        if batch.status not in _CANCELLABLE:
            raise Refused.error(400, "invalid_state", f"Cannot cancel a batch with status '{batch.status}'.")
        batch.enter("cancelling")
        batch.cancel_requested.set()
        self._changed(batch)
        return web.json_response(batch.to_object())

    @answers_refusals
    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self.gateway.authorise(request)
        limit = _limit(request.query.get("limit"))
        newest_first = list(reversed(self._batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [batch.id for batch in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = newest_first[:limit]
        return web.json_response({
            "object": "list",
            "data": [batch.to_object() for batch in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(newest_first) > limit,
        })

    def _batch(self, request: web.Request) -> Batch:
        self.gateway.authorise(request)
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            raise Refused.error(404, "batch_not_found", f"No batch found with id '{batch_id}'.")
        return batch

    def _new_batch(self, params: Any, key: str) -> tuple[Batch, bytes]:
        """The new batch and its input file's bytes (kept: deleting the file later changes nothing), or a 400."""
        if not isinstance(params, dict):
            raise Refused.error(400, "invalid_request", "The body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(params.get(name), str):
                raise Refused.error(400, "missing_required_parameter", f"Missing required parameter: '{name}'.")
        endpoint, window = params["endpoint"], params["completion_window"]
        if endpoint not in self.endpoints:
            raise Refused.error(
                400,
                "invalid_value",
                f"Invalid value for 'endpoint': '{endpoint}'. Supported values are: {', '.join(self.endpoints)}.",
            )
        if window not in COMPLETION_WINDOWS:
            raise Refused.error(
                400, "invalid_value", f"Invalid value for 'completion_window': '{window}'. Supported values are: 24h."
            )
        metadata = _metadata(params.get("metadata"))
        stored = self.files.get(params["input_file_id"])
        if stored is None:
            raise Refused.error(400, "file_not_found", f"No such File object: {params['input_file_id']}")
        if stored.purpose != "batch":
            raise Refused.error(
                400,
                "invalid_value",
                f"The input file {stored.id} has purpose '{stored.purpose}'; a batch's input file must be "
                "uploaded with purpose 'batch'.",
            )
        window_seconds = self.config.batch_expire_after
        if window_seconds is None:
            window_seconds = _DEFAULT_WINDOW_SECONDS
        now = time.time()
        batch = Batch(
            id=f"batch_{secrets.token_hex(12)}",
            key=key,
            endpoint=endpoint,
            input_file_id=stored.id,
            completion_window=window,
            metadata=metadata,
            created_at=int(now),
            expires_at=int(now) + math.ceil(window_seconds),
            processing_seconds=self.config.batch_processing_seconds,
            deadline=asyncio.get_running_loop().time() + window_seconds,
        )
        return batch, stored.data

    # -- processing -----------------------------------------------------------------------------

    async def _process(self, batch: Batch, data: bytes) -> None:
        try:
            await self._run(batch, data)
        except Exception:  # a bug of the simulator: say so on the batch rather than leave it in progress
            log.exception("batch %s: processing failed", batch.id)
            batch.errors = [_error("server_error", "The simulator failed while processing this batch.", None)]
            batch.enter("failed")
            self._changed(batch)

    async def _run(self, batch: Batch, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        # pure work on bytes, off the loop: 50,000 lines take a few tenths of a second to parse
        lines, errors = await asyncio.to_thread(parse_input, data, batch.endpoint, self.config.batch_max_requests)
        if not errors:  # known at once, reported when validating ends
            model = lines[0].body.get("model")
            batch.model = model if isinstance(model, str) else None
            batch.total = len(lines)
            batch.pending.extend(lines)
            self.ledger.validated(batch.id, batch.model, [line.custom_id for line in lines])
            self._changed(batch)
        if not await self._wait(batch, batch.processing_seconds * _VALIDATING, can_expire=not errors):
            return
        if errors:
            batch.errors = errors
            batch.enter("failed")
            self._changed(batch)
            log.info("batch %s failed validation: %d error(s)", batch.id, len(errors))
            return
        batch.enter("in_progress")
        self._changed(batch)
        start, span = loop.time(), batch.processing_seconds * _ANSWERING
        for index in range(len(lines)):
            wait = start + span * (index + 1) / len(lines) - loop.time()
            if wait > _MIN_SLEEP or index % _LINES_PER_YIELD == _LINES_PER_YIELD - 1:
                if not await self._wait(batch, max(0.0, wait)):
                    return
            self._answer(batch, batch.pending.popleft())
        batch.enter("finalizing")
        self._changed(batch)
        # all lines are answered: nothing left to expire; a cancel now still ends it cancelled
        if not await self._wait(batch, batch.processing_seconds * _FINALIZING, can_expire=False):
            return
        self._finish(batch, "completed")

    async def _wait(self, batch: Batch, seconds: float, *, can_expire: bool = True) -> bool:
        """Sleep `seconds` on the loop's clock; False (the batch stopped) if it was cancelled or expired meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if can_expire:
            until = min(until, batch.deadline)
        try:
            await asyncio.wait_for(batch.cancel_requested.wait(), max(0.0, until - loop.time()))
        except TimeoutError:
            pass
        if batch.cancel_requested.is_set():
            self._finish(batch, "cancelled")
            return False
        if can_expire and loop.time() >= batch.deadline:
            self._finish(batch, "expired")
            return False
        return True

    def _answer(self, batch: Batch, line: BatchLine) -> None:
        endpoint = self.endpoints[batch.endpoint]
        rate = self.config.batch_line_fail_rate
        try:
            if rate > 0 and self.gateway.random.random() < rate:
                raise Refused.error(
                    500, "server_error", "The server had an error while processing your request. Sorry about that!"
                )
            body = self.gateway.answer_batch_line(endpoint, line.body, batch.key)
        except Refused as refused:
            status, error_body = _line_error(refused)
            batch.error_lines.append(_result_line(line.custom_id, status, f"req_{uuid.uuid4().hex}", error_body))
            batch.failed += 1
        else:
            request_id = body.get("request_id") or f"req_{uuid.uuid4().hex}"
            batch.output.append(_result_line(line.custom_id, 200, request_id, body))
            batch.completed += 1
            used = body.get("usage") or {}
            batch.input_tokens += used.get("prompt_tokens", used.get("input_tokens", 0))
            batch.output_tokens += used.get("completion_tokens", used.get("output_tokens", 0))
            self.ledger.answered(batch.id, line.custom_id)
        self._changed(batch)

    def _finish(self, batch: Batch, status: str) -> None:
        """End the batch: `expired` writes a batch_expired line for each unanswered line; then the files."""
        if status == "expired":
            for line in batch.pending:
                batch.error_lines.append(orjson.dumps({
                    "id": _request_line_id(),
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE},
                }))
            batch.failed += len(batch.pending)
        batch.pending.clear()
        if batch.output or status == "completed":
            batch.output_file_id = self._write(f"{batch.id}_output.jsonl", batch.output)
        if batch.error_lines:
            batch.error_file_id = self._write(f"{batch.id}_error.jsonl", batch.error_lines)
        batch.output, batch.error_lines = [], []
        batch.enter(status)
        self._changed(batch)
        log.info("batch %s %s: %d completed, %d failed of %d", batch.id, status, batch.completed, batch.failed,
                 batch.total)

    def _write(self, filename: str, lines: list[bytes]) -> str:
        return self.files.add(filename, "batch_output", b"".join(line + b"\n" for line in lines)).id

    def _changed(self, batch: Batch) -> None:
        self.ledger.progress(batch.id, batch.status, batch.total, batch.completed, batch.failed)

    async def _close(self, app: web.Application) -> None:
        """Stop every processing task when the server shuts down (a batch in progress stays so)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _request_line_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def _result_line(custom_id: str, status: int, request_id: str, body: Any) -> bytes:
    """An output or error file line for an answered request: `error` null, the answer in `response`."""
    return orjson.dumps({
        "id": _request_line_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    })


def _line_error(refused: Refused) -> tuple[int, Any]:
    """The status and body a refused batch line gets: the live answer, except a schema 422 is OpenAI's 400."""
    if refused.status != 422:
        return refused.status, refused.body
    problems = refused.body.get("detail", [])
    where = "; ".join(f"{'.'.join(str(part) for part in p['loc'])}: {p['msg']}" for p in problems)
    first = problems[0]["loc"][1:] if problems and len(problems[0]["loc"]) > 1 else []
    return 400, {"error": {
        "message": f"Invalid request body: {where}",
        "type": "invalid_request_error",
        "param": ".".join(str(part) for part in first) or None,
        "code": "invalid_request_body",
    }}


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise Refused.error(400, "invalid_value", f"Invalid value for 'limit': '{value}'; it is 1 to 100.")
    return int(value)


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > _METADATA_KEYS
        or not all(isinstance(k, str) and len(k) <= _METADATA_KEY_LENGTH for k in value)
        or not all(isinstance(v, str) and len(v) <= _METADATA_VALUE_LENGTH for v in value.values())
    ):
        raise Refused.error(
            400,
            "invalid_value",
            f"Invalid 'metadata': at most {_METADATA_KEYS} pairs, keys strings of at most {_METADATA_KEY_LENGTH} "
            f"characters, values strings of at most {_METADATA_VALUE_LENGTH}.",
        )
    return dict(value)
