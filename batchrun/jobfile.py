"""Reading and validating a job file: one request a line, to any endpoint batchrun sends, streamed.

A job file is JSONL. Blank lines are ignored; every other line is one request, in either of two forms:

* **Batch form**, the OpenAI Batch API input format. A line is in this form when it has any of the keys
  ``body``, ``method`` or ``url``::

      {"custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",
       "body": {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}}

  ``method`` must be ``POST`` (any case), ``url`` one of the endpoints of `batchrun.endpoints`
  (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/completions``, ``/v1/responses``,
  ``/v1/moderations``; a file may mix them), ``body`` must be an object and no other key may appear.
  ``custom_id`` is optional. The endpoint validates the body and weighs it in tokens.

* **Bare form**: the request body itself, with an optional ``custom_id`` key that is taken out of the body
  before it is stored or sent::

      {"custom_id": "q-1", "model": "fast", "messages": [{"role": "user", "content": "Hi"}]}

  A bare line goes to chat completions unless the caller names another endpoint
  (``submit --endpoint /v1/embeddings``).

A line without a ``custom_id`` gets ``"auto-" + body_hash[:16]``, where ``body_hash`` is the SHA-256 of the
body serialised with sorted keys (preceded by the endpoint's URL, but for chat): loading the same file twice yields the same ids, so a resubmission is
idempotent.

A line that cannot be sent as it is becomes a `BadLine` (its line number, the dotted path of the offending
field, and a short reason) instead of a `JobSpec`; the caller reports it and goes on. Field paths of the
batch form start with ``body.`` (``body.messages[1].content``); those of the bare form do not
(``messages[1].content``).

`parse_line` is the hot path: a million-line file must load in seconds, so it uses orjson and plain type
checks, builds no field path or message unless a line is bad, and reports the first problem it meets. The
usual shapes (the envelope, a conversation of plain text messages) pass a quick check first; anything else
goes to the thorough validators, which accept the same lines and name what is wrong.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import PurePath
from typing import IO, Any, Final, NamedTuple

import orjson

from batchrun.endpoints import DEFAULT, ENDPOINTS, Endpoint, InvalidField, endpoint_for, known_urls
from batchrun.endpoints.base import MISSING, json_type, show
from batchrun.errors import InputError
from batchrun.tokens import tokens_for_units

__all__ = ["BadLine", "JobSpec", "LineChunk", "batch_name_for", "open_job_file", "parse_line", "read_jobs",
           "read_line_chunks"]

_ENVELOPE_KEYS: Final = ("custom_id", "method", "url", "body")
_ENVELOPE_KEY_SET: Final = frozenset(_ENVELOPE_KEYS)
_BOM: Final = b"\xef\xbb\xbf"

_loads = orjson.loads
_dumps = orjson.dumps
_sha256 = hashlib.sha256
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


class JobSpec(NamedTuple):
    """One valid request line, ready to be stored and sent.

    A NamedTuple rather than a frozen dataclass: just as immutable, and several times cheaper to build,
    which matters on the hot path of a million-line file.
    """

    line: int  # 1-based line number in the file
    custom_id: str
    model: str  # "" for a moderation that leaves the model to the provider
    body_json: str  # the body serialised compactly, keys in the file's order: what is stored and sent
    body_hash: str  # sha256 hex of the body serialised with sorted keys (and the endpoint, but for chat)
    input_tokens: int  # the estimate of the request's input tokens (`batchrun.tokens`)
    max_tokens: int | None  # the body's output cap, by whatever name its endpoint gives it; None: none
    endpoint: str = DEFAULT.url  # the endpoint's URL, e.g. "/v1/embeddings"


_new_job = partial(tuple.__new__, JobSpec)  # the NamedTuple's own __new__ is a Python function


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be sent as it is: where, which field, and why."""

    line: int
    field: str | None  # dotted path, e.g. "body.messages[1].content"; None when the line is not an object
    reason: str

    def format(self, filename: str) -> str:
        """``FILE:LINE: FIELD: REASON``, or ``FILE:LINE: REASON`` when no field is to blame."""
        if self.field is None:
            return f"{filename}:{self.line}: {self.reason}"
        return f"{filename}:{self.line}: {self.field}: {self.reason}"


# -- parsing --------------------------------------------------------------------------------------------


def parse_line(text: str | bytes, line: int, bare: Endpoint = DEFAULT) -> JobSpec | BadLine | None:
    """Parse one line of a job file: a `JobSpec`, a `BadLine`, or None for a blank line.

    `bare` is the endpoint of a line in bare form (chat unless `submit --endpoint` says otherwise).
    """
    try:
        obj = _loads(text)
    except orjson.JSONDecodeError as exc:
        return _undecodable(text, line, exc)
    if type(obj) is not dict:
        return BadLine(line, None, f"not a JSON object (got {json_type(obj)})")

    try:
        if "body" in obj or "method" in obj or "url" in obj:
            custom_id, body, endpoint = _unwrap_batch_line(obj)
            prefix = "body."
        else:
            custom_id, body, endpoint = obj.pop("custom_id", MISSING), obj, bare
            prefix = ""
        if custom_id is not MISSING and not (type(custom_id) is str and custom_id.isprintable() and custom_id
                                             and not custom_id.isspace()):
            _check_custom_id(custom_id)
    except InvalidField as bad:
        return BadLine(line, bad.field, bad.reason)

    try:
        model = body.get("model")
        if type(model) is not str or not model or model.isspace():
            model = _check_model(body, endpoint)
        units, max_tokens = endpoint.check_body(body)
    except InvalidField as bad:
        return BadLine(line, prefix + bad.field, bad.reason)

    try:
        body_bytes = _dumps(body)
        canonical = _dumps(body, option=_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. nesting deeper than orjson writes (254 levels)
        return BadLine(line, prefix[:-1] or None, f"cannot be serialised as JSON: {exc}")
    if endpoint is not DEFAULT:  # the same body sent elsewhere is another request (chat keeps its old hashes)
        canonical = endpoint.url.encode() + b"\n" + canonical
    body_hash = _sha256(canonical).hexdigest()
    if custom_id is MISSING:
        custom_id = "auto-" + body_hash[:16]
    return _new_job((line, custom_id, model, body_bytes.decode(), body_hash, tokens_for_units(units), max_tokens,
                     endpoint.url))


def _undecodable(text: str | bytes, line: int, exc: orjson.JSONDecodeError) -> BadLine | None:
    """The slow path for a line orjson refused: blank, not UTF-8, or not JSON."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return BadLine(line, None, "not valid UTF-8")
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a surrogateescape decode
            return BadLine(line, None, "not valid UTF-8")
    if not text or text.isspace():
        return None
    return BadLine(line, None, f"not valid JSON: {exc}")


_CHAT_URL: Final = DEFAULT.url
_ENDPOINTS: Final = ENDPOINTS


def _unwrap_batch_line(obj: dict[str, Any]) -> tuple[Any, dict[str, Any], Endpoint]:
    """(custom_id or MISSING, body, endpoint) of a batch-form line, whose envelope is checked here."""
    body = obj.get("body")
    if (type(body) is dict and obj.get("method") == "POST"
            and (len(obj) == 3 or (len(obj) == 4 and "custom_id" in obj))):
        url = obj.get("url")
        endpoint = DEFAULT if url == _CHAT_URL else _ENDPOINTS.get(url) if type(url) is str else None
        if endpoint is not None:
            return obj.get("custom_id", MISSING), body, endpoint  # the usual envelope, exactly
    return _check_envelope(obj)


def _check_envelope(obj: dict[str, Any]) -> tuple[Any, dict[str, Any], Endpoint]:
    """`_unwrap_batch_line`, thoroughly."""
    if not _ENVELOPE_KEY_SET.issuperset(obj):
        key = next(key for key in obj if key not in _ENVELOPE_KEY_SET)
        raise InvalidField(key, f"unknown key in a batch line (expected: {', '.join(_ENVELOPE_KEYS)})")
    method = obj.get("method", MISSING)
    if method is MISSING:
        raise InvalidField("method", "missing method (expected 'POST')")
    if type(method) is not str or method.upper() != "POST":
        raise InvalidField("method", f"unsupported method {show(method)} (expected 'POST')")
    url = obj.get("url", MISSING)
    if url is MISSING:
        raise InvalidField("url", f"missing url (expected one of: {known_urls()})")
    endpoint = endpoint_for(url) if type(url) is str else None
    if endpoint is None:
        raise InvalidField("url", f"unsupported url {show(url)} (expected one of: {known_urls()})")
    body = obj.get("body", MISSING)
    if body is MISSING:
        raise InvalidField("body", "missing body")
    if type(body) is not dict:
        raise InvalidField("body", f"body must be a JSON object (got {json_type(body)})")
    return obj.get("custom_id", MISSING), body, endpoint


# -- checks: each raises InvalidField with a field path relative to the body (or the line, for custom_id) -


def _check_custom_id(custom_id: Any) -> None:
    if type(custom_id) is not str:
        raise InvalidField("custom_id", f"custom_id must be a non-empty string (got {show(custom_id)})")
    if not custom_id or custom_id.isspace():
        raise InvalidField("custom_id", "empty custom_id")
    # isprintable() is a fast C scan; it is also False for harmless characters such as a no-break space,
    # so only then look for a real control character (Unicode category Cc).
    if not custom_id.isprintable() and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in custom_id):
        raise InvalidField("custom_id", "custom_id contains a control character")


def _check_model(body: dict[str, Any], endpoint: Endpoint) -> str:
    model = body.get("model", MISSING)
    if type(model) is str and model and not model.isspace():
        return model
    if model is MISSING:
        if not endpoint.model_required:
            return ""  # the provider picks its default model
        raise InvalidField("model", "missing model")
    if type(model) is str:
        raise InvalidField("model", "empty model")
    raise InvalidField("model", f"model must be a non-empty string (got {show(model)})")


# -- files ----------------------------------------------------------------------------------------------


def read_jobs(stream: IO[bytes], filename: str, bare: Endpoint = DEFAULT) -> Iterator[JobSpec | BadLine]:
    """Parse a binary job file line by line, lazily; blank lines are skipped but still counted.

    A UTF-8 byte order mark at the start of the file is ignored. A read error becomes an `InputError`.
    """
    lines = iter(stream)
    try:
        first = next(lines, None)
        if first is None:
            return
        if first.startswith(_BOM):
            first = first[len(_BOM) :]
        result = parse_line(first, 1, bare)
        if result is not None:
            yield result
        for number, text in enumerate(lines, 2):
            result = parse_line(text, number, bare)
            if result is not None:
                yield result
    except OSError as exc:
        raise InputError(f"cannot read job file {filename}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class LineChunk:
    """`line_count` consecutive raw lines of a job file, the first of them numbered `first_line`."""

    first_line: int
    line_count: int
    data: bytes  # the lines as they are in the file, each ending in a newline but perhaps the file's last
    offset: int = 0  # where `data` starts in the file

    @property
    def digest(self) -> str:
        """sha256 of the raw bytes: the same lines at the same place are the same jobs."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def lines(self) -> list[bytes]:
        """The lines, without their newlines."""
        lines = self.data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # what follows the last newline: nothing (or, in an empty chunk, the only element)
        return lines

    def parse(self, bare: Endpoint = DEFAULT) -> tuple[list[JobSpec], list[BadLine]]:
        """The jobs and the bad lines of the chunk, each in file order (blank lines left out); `bare` is
        the endpoint of bare-form lines."""
        jobs: list[JobSpec] = []
        bad: list[BadLine] = []
        for number, text in enumerate(self.lines, self.first_line):
            result = parse_line(text, number, bare)
            if type(result) is JobSpec:
                jobs.append(result)
            elif result is not None:
                bad.append(result)  # type: ignore[arg-type]
        return jobs, bad


def read_line_chunks(stream: IO[bytes], filename: str, size: int, block: int = 1 << 20) -> Iterator[LineChunk]:
    """The raw lines of a job file in chunks of `size` lines (a leading UTF-8 byte order mark removed).

    Read in blocks of `block` bytes and cut at newlines found by `bytes.find`: no Python object per
    line, so a chunk costs little more than its copy.
    """
    first_line = 1
    offset = 0  # where the next chunk starts in the file
    parts: list[bytes] = []  # the start of the next chunk: `count` complete lines, perhaps a partial one
    count = 0
    try:
        data = stream.read(block)
        while 0 < len(data) < len(_BOM) and (more := stream.read(block)):
            data += more
        if data.startswith(_BOM):
            offset = len(_BOM)
            data = data[len(_BOM):] or stream.read(block)
        while data:
            newlines = data.count(b"\n")
            start = 0
            while count + newlines >= size:  # the chunk ends in this block
                end = start
                for _ in range(size - count):
                    end = data.find(b"\n", end) + 1
                parts.append(data[start:end])
                chunk = b"".join(parts)
                yield LineChunk(first_line, size, chunk, offset)
                first_line += size
                offset += len(chunk)
                newlines -= size - count
                parts, count, start = [], 0, end
            if start < len(data):
                parts.append(data[start:] if start else data)
            count += newlines
            data = stream.read(block)
    except OSError as exc:
        raise InputError(f"cannot read job file {filename}: {exc.strerror or exc}") from exc
    if parts:
        rest = b"".join(parts)
        yield LineChunk(first_line, count + (not rest.endswith(b"\n")), rest, offset)


@contextmanager
def open_job_file(path: str) -> Iterator[tuple[IO[bytes], str]]:
    """Open a job file for `read_jobs`: yields (binary stream, display name); ``-`` is standard input."""
    if path == "-":
        yield sys.stdin.buffer, "<stdin>"  # not ours to close
        return
    try:
        stream = open(path, "rb", buffering=1 << 20)
    except OSError as exc:
        raise InputError(f"cannot read job file {path}: {exc.strerror or exc}") from exc
    with stream:
        yield stream, path


def batch_name_for(path: str) -> str:
    """The default batch name for a job file: its stem (``jobs/example.jsonl`` -> ``example``)."""
    if path == "-":
        return "stdin"
    return PurePath(path).stem or "jobs"
