"""Reading and validating a job file: one chat-completion request a line, streamed.

A job file is JSONL. Blank lines are ignored; every other line is one request, in either of two forms:

* **Batch form**, the OpenAI Batch API input format. A line is in this form when it has any of the keys
  ``body``, ``method`` or ``url``::

      {"custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",
       "body": {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}}

  ``method`` must be ``POST`` (any case), ``url`` must be ``/v1/chat/completions``, ``body`` must be an
  object and no other key may appear. ``custom_id`` is optional.

* **Bare form**: the request body itself, with an optional ``custom_id`` key that is taken out of the body
  before it is stored or sent::

      {"custom_id": "q-1", "model": "fast", "messages": [{"role": "user", "content": "Hi"}]}

A line without a ``custom_id`` gets ``"auto-" + body_hash[:16]``, where ``body_hash`` is the SHA-256 of the
body serialised with sorted keys: loading the same file twice yields the same ids, so a resubmission is
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
from typing import IO, Any, Final, NamedTuple, NoReturn

import orjson

from batchrun.errors import InputError

__all__ = ["BadLine", "JobSpec", "LineChunk", "batch_name_for", "open_job_file", "parse_line", "read_jobs",
           "read_line_chunks"]

CHAT_COMPLETIONS_URL: Final = "/v1/chat/completions"
KNOWN_ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")

_ROLES: Final = frozenset(KNOWN_ROLES)
#: roles that may come before the conversation proper, which must not open with the assistant
_PREAMBLE_ROLES: Final = frozenset(("system", "developer"))
_ENVELOPE_KEYS: Final = ("custom_id", "method", "url", "body")
_ENVELOPE_KEY_SET: Final = frozenset(_ENVELOPE_KEYS)
_BOM: Final = b"\xef\xbb\xbf"
_MISSING: Final[Any] = object()
_JSON_TYPES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

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
    model: str
    body_json: str  # the body serialised compactly, keys in the file's order: what is stored and sent
    body_hash: str  # sha256 hex of the body serialised with sorted keys: same body, same hash
    prompt_chars: int  # characters of all text content in the messages, for token estimates
    max_tokens: int | None  # max_tokens, else max_completion_tokens, else None


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


class _Invalid(Exception):
    """Raised inside the validators, turned into a `BadLine` by `parse_line`: keeps each check small."""

    __slots__ = ("field", "reason")

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


# -- parsing --------------------------------------------------------------------------------------------


def parse_line(text: str | bytes, line: int) -> JobSpec | BadLine | None:
    """Parse one line of a job file: a `JobSpec`, a `BadLine`, or None for a blank line."""
    try:
        obj = _loads(text)
    except orjson.JSONDecodeError as exc:
        return _undecodable(text, line, exc)
    if type(obj) is not dict:
        return BadLine(line, None, f"not a JSON object (got {_json_type(obj)})")

    try:
        if "body" in obj or "method" in obj or "url" in obj:
            custom_id, body = _unwrap_batch_line(obj)
            prefix = "body."
        else:
            custom_id, body = obj.pop("custom_id", _MISSING), obj
            prefix = ""
        if custom_id is not _MISSING and not (type(custom_id) is str and custom_id.isprintable() and custom_id
                                              and not custom_id.isspace()):
            _check_custom_id(custom_id)
    except _Invalid as bad:
        return BadLine(line, bad.field, bad.reason)

    try:
        model = body.get("model")
        if type(model) is not str or not model or model.isspace():
            model = _check_model(body)
        prompt_chars = _check_messages(body.get("messages", _MISSING))
        max_tokens = _check_options(body)
    except _Invalid as bad:
        return BadLine(line, prefix + bad.field, bad.reason)

    try:
        body_bytes = _dumps(body)
        canonical = _dumps(body, option=_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. nesting deeper than orjson writes (254 levels)
        return BadLine(line, prefix[:-1] or None, f"cannot be serialised as JSON: {exc}")
    body_hash = _sha256(canonical).hexdigest()
    if custom_id is _MISSING:
        custom_id = "auto-" + body_hash[:16]
    return _new_job((line, custom_id, model, body_bytes.decode(), body_hash, prompt_chars, max_tokens))


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


def _unwrap_batch_line(obj: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(custom_id or _MISSING, body) of a batch-form line, whose envelope is checked here."""
    body = obj.get("body")
    if (type(body) is dict and obj.get("method") == "POST" and obj.get("url") == CHAT_COMPLETIONS_URL
            and (len(obj) == 3 or (len(obj) == 4 and "custom_id" in obj))):
        return obj.get("custom_id", _MISSING), body  # the usual envelope, exactly
    return _check_envelope(obj)


def _check_envelope(obj: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`_unwrap_batch_line`, thoroughly."""
    if not _ENVELOPE_KEY_SET.issuperset(obj):
        key = next(key for key in obj if key not in _ENVELOPE_KEY_SET)
        raise _Invalid(key, f"unknown key in a batch line (expected: {', '.join(_ENVELOPE_KEYS)})")
    method = obj.get("method", _MISSING)
    if method is _MISSING:
        raise _Invalid("method", "missing method (expected 'POST')")
    if type(method) is not str or method.upper() != "POST":
        raise _Invalid("method", f"unsupported method {_show(method)} (expected 'POST')")
    url = obj.get("url", _MISSING)
    if url is _MISSING:
        raise _Invalid("url", f"missing url (expected {CHAT_COMPLETIONS_URL!r})")
    if url != CHAT_COMPLETIONS_URL:
        raise _Invalid("url", f"unsupported url {_show(url)} (expected {CHAT_COMPLETIONS_URL!r})")
    body = obj.get("body", _MISSING)
    if body is _MISSING:
        raise _Invalid("body", "missing body")
    if type(body) is not dict:
        raise _Invalid("body", f"body must be a JSON object (got {_json_type(body)})")
    return obj.get("custom_id", _MISSING), body


# -- checks: each raises _Invalid with a field path relative to the body (or the line, for custom_id) ---


def _check_custom_id(custom_id: Any) -> None:
    if type(custom_id) is not str:
        raise _Invalid("custom_id", f"custom_id must be a non-empty string (got {_show(custom_id)})")
    if not custom_id or custom_id.isspace():
        raise _Invalid("custom_id", "empty custom_id")
    # isprintable() is a fast C scan; it is also False for harmless characters such as a no-break space,
    # so only then look for a real control character (Unicode category Cc).
    if not custom_id.isprintable() and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in custom_id):
        raise _Invalid("custom_id", "custom_id contains a control character")


def _check_model(body: dict[str, Any]) -> str:
    model = body.get("model", _MISSING)
    if type(model) is str and model and not model.isspace():
        return model
    if model is _MISSING:
        raise _Invalid("model", "missing model")
    if type(model) is str:
        raise _Invalid("model", "empty model")
    raise _Invalid("model", f"model must be a non-empty string (got {_show(model)})")


def _check_messages(messages: Any) -> int:
    """Validate the conversation; return the number of characters of text content in it.

    The usual conversation (known roles, non-blank string contents, not opening with the assistant) is
    counted in one quick pass; anything else is left to `_check_conversation`, which names what is wrong.
    """
    if type(messages) is list:
        chars = 0
        opening = True  # no message other than system/developer seen yet
        for message in messages:
            if type(message) is not dict:
                break
            role = message.get("role")
            content = message.get("content")
            if (type(role) is not str or type(content) is not str or role not in _ROLES or not content
                    or content.isspace()):
                break
            if opening and role not in _PREAMBLE_ROLES:
                if role == "assistant":
                    break
                opening = False
            chars += len(content)
        else:
            if messages:
                return chars
    return _check_conversation(messages)


def _check_conversation(messages: Any) -> int:
    """`_check_messages`, thoroughly."""
    if type(messages) is not list:
        if messages is _MISSING:
            raise _Invalid("messages", "missing messages")
        raise _Invalid("messages", f"messages must be a list (got {_json_type(messages)})")
    if not messages:
        raise _Invalid("messages", "empty messages")
    chars = 0
    started = False  # has a message other than system/developer been seen?
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise _Invalid(f"messages[{i}]", f"message must be an object (got {_json_type(message)})")
        role = message.get("role", _MISSING)
        if type(role) is not str or role not in _ROLES:
            _bad_role(role, i)
        if not started and role not in _PREAMBLE_ROLES:
            if role == "assistant":
                raise _Invalid(f"messages[{i}].role", "conversation starts with an assistant message")
            started = True
        content = message.get("content", _MISSING)
        if type(content) is str and content and not content.isspace():
            chars += len(content)  # the common case, kept inline
        else:
            chars += _other_content(message, role, content, i)
    return chars


def _bad_role(role: Any, i: int) -> NoReturn:
    field = f"messages[{i}].role"
    if role is _MISSING:
        raise _Invalid(field, "missing role")
    if type(role) is not str:
        raise _Invalid(field, f"role must be a string (got {_show(role)})")
    raise _Invalid(field, f"unknown role {_show(role)} (expected one of: {', '.join(KNOWN_ROLES)})")


def _other_content(message: dict[str, Any], role: str, content: Any, i: int) -> int:
    """Characters of a content that is not a plain non-blank string: null, blank, a list of parts."""
    field = f"messages[{i}].content"
    # An assistant turn that calls tools carries its payload in tool_calls (or the legacy function_call),
    # so it may have no text at all.
    calls_tools = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
    if type(content) is str:
        if calls_tools:
            return len(content)
        raise _Invalid(field, "empty content")
    if type(content) is list:
        chars, has_content = _content_parts(content, field)
        if has_content or calls_tools:
            return chars
        raise _Invalid(field, "empty content")
    if calls_tools and (content is None or content is _MISSING):
        return 0
    if content is _MISSING:
        raise _Invalid(field, "missing content")
    if content is None:
        raise _Invalid(field, "content is null")
    raise _Invalid(field, f"content must be a string or a list of parts (got {_json_type(content)})")


def _content_parts(parts: list[Any], field: str) -> tuple[int, bool]:
    """(characters of text, whether any part carries something) of a list of content parts."""
    chars = 0
    has_content = False
    for j, part in enumerate(parts):
        if type(part) is not dict:
            raise _Invalid(f"{field}[{j}]", f"content part must be an object (got {_json_type(part)})")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text", _MISSING)
            if type(text) is not str:
                what = "missing text" if text is _MISSING else f"text must be a string (got {_show(text)})"
                raise _Invalid(f"{field}[{j}].text", what)
            chars += len(text)
            if text and not text.isspace():
                has_content = True
        elif type(kind) is str and kind:
            has_content = True  # an image, audio clip or file: not ours to look into
        else:
            what = "missing type" if kind is None else f"type must be a non-empty string (got {_show(kind)})"
            raise _Invalid(f"{field}[{j}].type", what)
    return chars, has_content


def _check_options(body: dict[str, Any]) -> int | None:
    """Check the parameters whose wrong type would only waste a request; return the output token cap."""
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens <= 0):
        _not_positive_int("max_tokens", max_tokens)
    completion_tokens = body.get("max_completion_tokens")  # the newer name of the same cap
    if completion_tokens is not None and (type(completion_tokens) is not int or completion_tokens <= 0):
        _not_positive_int("max_completion_tokens", completion_tokens)
    temperature = body.get("temperature")
    if temperature is not None and type(temperature) is not float and type(temperature) is not int:
        raise _Invalid("temperature", f"temperature must be a number (got {_show(temperature)})")
    stream = body.get("stream")
    if stream is not None and stream is not False:
        raise _Invalid("stream", "stream must be false or absent")
    return max_tokens if max_tokens is not None else completion_tokens


def _not_positive_int(name: str, value: Any) -> NoReturn:
    raise _Invalid(name, f"{name} must be a positive integer (got {_show(value)})")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A short rendering of a user's value for a reason: a literal for scalars, a type for containers."""
    if value is None or type(value) in (bool, int, float):
        return _dumps(value).decode()
    if type(value) is str:
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return _json_type(value)


# -- files ----------------------------------------------------------------------------------------------


def read_jobs(stream: IO[bytes], filename: str) -> Iterator[JobSpec | BadLine]:
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
        result = parse_line(first, 1)
        if result is not None:
            yield result
        for number, text in enumerate(lines, 2):
            result = parse_line(text, number)
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

    def parse(self) -> tuple[list[JobSpec], list[BadLine]]:
        """The jobs and the bad lines of the chunk, each in file order (blank lines left out)."""
        jobs: list[JobSpec] = []
        bad: list[BadLine] = []
        for number, text in enumerate(self.lines, self.first_line):
            result = parse_line(text, number)
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
