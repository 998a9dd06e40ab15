"""Writing results in OpenAI Batch output format.

One line per job, in input order:
    {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null,
     "batchrun": {"endpoint", "model_requested", "model_sent", "model_served", "fallback", "dropped_parameters", "attempts", "key",
                  "finish_reason", "truncated", "unverified", "cost"}}
`truncated` marks a result the model cut off at `max_tokens` (finish_reason `length`); `unverified` one
that came without the provider's `request_id`; `fallback` says why another model was used (or null);
`cost` is in USD from the catalogue's prices (null when unknown); `endpoint` is the URL the request
went to. The provider's body is written as it sent it, never parsed again: a million 20 KB embeddings
stream through in chunks with flat memory.
Failed jobs (in the errors file) carry `"error": {"code", "message"}` and, where the provider
answered, the last HTTP status and body under `response`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from typing import IO, Any, Iterator

import orjson

from batchrun.records import ExportRow


def result_line(row: ExportRow) -> bytes:
    record = {
        "id": f"batch_req_{row.job_id}",
        "custom_id": row.custom_id,
        "response": {
            "status_code": row.status_code,
            "request_id": row.request_id,
            # Stored verbatim as the provider sent it: embedded without a parse/serialise round trip.
            "body": orjson.Fragment(row.response or "null"),
        },
        "error": None,
        "batchrun": _extras(row),
    }
    return orjson.dumps(record) + b"\n"


def error_line(row: ExportRow) -> bytes:
    response = None
    if row.status_code is not None or row.response is not None:
        response = {"status_code": row.status_code, "request_id": None, "body": _body(row.response)}
    record = {
        "id": f"batch_req_{row.job_id}",
        "custom_id": row.custom_id,
        "response": response,
        "error": {"code": row.error_code or "unknown", "message": row.error_message or ""},
        "batchrun": _extras(row),
    }
    return orjson.dumps(record) + b"\n"


def write_lines(rows: Iterable[ExportRow], out: IO[bytes], error: bool) -> int:
    format_line = error_line if error else result_line
    count = 0
    for row in rows:
        out.write(format_line(row))
        count += 1
    return count


@contextmanager
def atomic_output(path: str) -> Iterator[IO[bytes]]:
    """A file that appears complete at `path` or not at all (a crash never leaves half an export)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix=".batchrun-export-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _extras(row: ExportRow) -> dict[str, Any]:
    succeeded = row.state == "succeeded"
    return {
        "endpoint": row.endpoint,
        "model_requested": row.model or None,  # a moderation may leave the model to the provider
        "model_sent": row.model_sent,
        "model_served": row.model_served,
        "fallback": row.fallback_reason,
        "dropped_parameters": row.dropped_parameters.split(",") if row.dropped_parameters else [],
        "attempts": row.attempts,
        "key": row.key_id,
        "finish_reason": row.finish_reason,
        "truncated": succeeded and row.finish_reason == "length",
        "unverified": succeeded and not row.request_id,
        "cost": row.cost,
    }


def _body(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
