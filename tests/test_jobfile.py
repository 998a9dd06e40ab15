"""Unit tests of the job file parser: both line forms, every kind of bad line, streaming, files."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import InputError
from batchrun.jobfile import BadLine, JobSpec, batch_name_for, open_job_file, parse_line, read_jobs

USER = {"role": "user", "content": "Say hi"}
BODY: dict[str, Any] = {"model": "fast", "messages": [USER]}


def line_of(obj: Any) -> bytes:
    return orjson.dumps(obj)


def batch(body: Any, **envelope: Any) -> bytes:
    return line_of({"custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions", **envelope, "body": body})


def bare(**fields: Any) -> bytes:
    return line_of({**BODY, **fields})


def with_messages(*messages: Any) -> bytes:
    return line_of({"model": "fast", "messages": list(messages)})


def parsed_job(text: str | bytes, line: int = 1) -> JobSpec:
    result = parse_line(text, line)
    assert isinstance(result, JobSpec), result
    return result


def parsed_bad(text: str | bytes, line: int = 1) -> BadLine:
    result = parse_line(text, line)
    assert isinstance(result, BadLine), result
    return result


# -- good lines ------------------------------------------------------------------------------------------


def test_batch_form_gives_a_job_with_its_custom_id_and_body() -> None:
    body = {"model": "fast", "messages": [{"role": "system", "content": "Be brief"}, USER], "max_tokens": 64}

    job = parsed_job(batch(body, custom_id="q-7"), line=3)

    assert job.line == 3
    assert job.custom_id == "q-7"
    assert job.model == "fast"
    assert orjson.loads(job.body_json) == body
    assert job.body_hash == hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert job.input_tokens == -(-(len("Be brief") + len("Say hi")) // 4)  # ASCII: 4 characters a token
    assert job.max_tokens == 64


def test_batch_form_accepts_method_in_any_case() -> None:
    assert parsed_job(batch(BODY, method="post")).custom_id == "q-1"


def test_batch_form_without_custom_id_gets_a_derived_one() -> None:
    job = parsed_job(line_of({"method": "POST", "url": "/v1/chat/completions", "body": BODY}))

    assert job.custom_id == "auto-" + job.body_hash[:16]


def test_bare_form_takes_custom_id_out_of_the_body() -> None:
    job = parsed_job(bare(custom_id="q-9", temperature=0.5))

    assert job.custom_id == "q-9"
    assert orjson.loads(job.body_json) == {**BODY, "temperature": 0.5}
    assert "custom_id" not in job.body_json


def test_body_json_is_compact_and_keeps_the_file_key_order() -> None:
    text = '{ "model" : "fast",  "messages": [ {"role": "user", "content": "Say hi"} ], "max_tokens": 5 }'

    job = parsed_job(text)

    assert job.body_json == '{"model":"fast","messages":[{"role":"user","content":"Say hi"}],"max_tokens":5}'


def test_same_body_in_another_key_order_gets_the_same_hash_and_custom_id() -> None:
    one = parsed_job('{"model": "fast", "messages": [{"role": "user", "content": "Say hi"}], "n": {"a": 1, "b": 2}}')
    two = parsed_job('{"n": {"b": 2, "a": 1}, "messages": [{"content": "Say hi", "role": "user"}], "model": "fast"}')

    assert one.body_hash == two.body_hash
    assert one.custom_id == two.custom_id
    assert one.custom_id.startswith("auto-") and len(one.custom_id) == len("auto-") + 16


def test_derived_custom_id_is_the_same_for_both_forms() -> None:
    batch_line = line_of({"url": "/v1/chat/completions", "method": "POST", "body": BODY})

    assert parsed_job(bare()).custom_id == parsed_job(batch_line).custom_id


def test_a_different_body_gets_a_different_hash_and_custom_id() -> None:
    one = parsed_job(bare())
    two = parsed_job(bare(temperature=0))

    assert one.body_hash != two.body_hash
    assert one.custom_id != two.custom_id


def test_explicit_custom_id_does_not_change_the_hash() -> None:
    assert parsed_job(bare(custom_id="a")).body_hash == parsed_job(bare()).body_hash


def test_a_parsed_job_is_an_immutable_job_spec() -> None:
    job = parsed_job(bare(custom_id="q-1", max_tokens=8), line=2)
    expected = JobSpec(2, "q-1", "fast", job.body_json, job.body_hash, 2, 8, "/v1/chat/completions")

    assert type(job) is JobSpec
    assert job == expected and hash(job) == hash(expected)
    with pytest.raises(AttributeError):
        job.line = 3  # type: ignore[misc]


def test_input_tokens_count_text_parts_only() -> None:
    content = [
        {"type": "text", "text": "abc"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "de"},
    ]

    assert parsed_job(with_messages({"role": "user", "content": content})).input_tokens == 2  # "abc" + "de": 5 characters


def test_a_list_content_with_only_an_image_is_not_empty() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}

    assert parsed_job(with_messages({"role": "user", "content": [image]})).input_tokens == 0


@pytest.mark.parametrize(
    "assistant",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
    ],
    ids=["null-content", "no-content"],
)
def test_an_assistant_message_with_tool_calls_may_have_no_content(assistant: dict[str, Any]) -> None:
    tool = {"role": "tool", "tool_call_id": "c1", "content": "42"}

    assert parsed_job(with_messages(USER, assistant, tool)).input_tokens == 2  # "Say hi" + "42"


def test_system_and_developer_messages_may_come_before_the_first_user_message() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "developer", "content": "d"}, USER]

    assert parsed_job(with_messages(*messages)).input_tokens == 2  # "s" + "d" + "Say hi"


def test_max_completion_tokens_is_the_cap_when_max_tokens_is_absent() -> None:
    assert parsed_job(bare(max_completion_tokens=99)).max_tokens == 99
    assert parsed_job(bare()).max_tokens is None


def test_null_and_false_options_are_accepted() -> None:
    job = parsed_job(bare(max_tokens=None, temperature=None, stream=False))

    assert job.max_tokens is None


def test_a_line_may_be_given_as_str_and_end_with_crlf() -> None:
    assert parsed_job(bare().decode() + "\r\n").model == "fast"


# -- blank and bad lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"", b"\n", b"   \t\r\n", "  \n"])
def test_a_blank_line_gives_none(text: str | bytes) -> None:
    assert parse_line(text, 1) is None


def test_not_json_is_reported_with_orjsons_message() -> None:
    bad = parsed_bad(b'{"model": "fast",', line=4)

    assert (bad.line, bad.field) == (4, None)
    assert bad.reason.startswith("not valid JSON: ")
    assert "line 1 column" in bad.reason


def test_invalid_utf8_is_reported_as_such() -> None:
    bad = parsed_bad(b'{"model": "fa\xffst", "messages": []}')

    assert (bad.field, bad.reason) == (None, "not valid UTF-8")


def test_a_str_with_lone_surrogates_is_not_valid_utf8() -> None:
    assert parsed_bad(b'{"model": "fa\xffst"}'.decode("utf-8", "surrogateescape")).reason == "not valid UTF-8"


@pytest.mark.parametrize(("text", "kind"), [(b"[1, 2]", "array"), (b'"hi"', "string"), (b"3", "number")])
def test_not_an_object(text: bytes, kind: str) -> None:
    bad = parsed_bad(text)

    assert (bad.field, bad.reason) == (None, f"not a JSON object (got {kind})")


def test_a_body_too_deep_to_serialise_is_bad() -> None:
    deep = b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 300 + b"]" * 300 + b"}"

    bad = parsed_bad(deep)

    assert bad.field is None
    assert bad.reason.startswith("cannot be serialised as JSON")


BAD_LINES = [
    # (line, expected field, a recognisable part of the reason)
    pytest.param(batch(BODY, method="GET"), "method", "unsupported method 'GET' (expected 'POST')", id="method"),
    pytest.param(line_of({"url": "/v1/chat/completions", "body": BODY}), "method", "missing method", id="no-method"),
    pytest.param(batch(BODY, url="/chat/completions"), "url", "unsupported url '/chat/completions'", id="url"),
    pytest.param(line_of({"method": "POST", "body": BODY}), "url", "missing url", id="no-url"),
    pytest.param(line_of({"method": "POST", "url": "/v1/chat/completions"}), "body", "missing body", id="no-body"),
    pytest.param(batch([BODY]), "body", "body must be a JSON object (got array)", id="body-not-object"),
    pytest.param(batch(BODY, bdy=1), "bdy", "unknown key in a batch line", id="unknown-envelope-key"),
    pytest.param(batch(BODY, custom_id=""), "custom_id", "empty custom_id", id="custom-id-empty"),
    pytest.param(bare(custom_id="  "), "custom_id", "empty custom_id", id="custom-id-blank"),
    pytest.param(bare(custom_id=7), "custom_id", "custom_id must be a non-empty string (got 7)", id="custom-id-number"),
    pytest.param(bare(custom_id=None), "custom_id", "(got null)", id="custom-id-null"),
    pytest.param(batch(BODY, custom_id="a\tb"), "custom_id", "control character", id="custom-id-control"),
    pytest.param(line_of({"messages": [USER]}), "model", "missing model", id="no-model"),
    pytest.param(batch({"model": "", "messages": [USER]}), "body.model", "empty model", id="model-empty"),
    pytest.param(bare(model=["fast"]), "model", "model must be a non-empty string (got array)", id="model-list"),
    pytest.param(line_of({"model": "fast"}), "messages", "missing messages", id="no-messages"),
    pytest.param(bare(messages="hi"), "messages", "messages must be a list (got string)", id="messages-str"),
    pytest.param(batch({"model": "fast", "messages": []}), "body.messages", "empty messages", id="messages-empty"),
    pytest.param(with_messages(USER, "hi"), "messages[1]", "message must be an object (got string)", id="msg-str"),
    pytest.param(with_messages({"content": "hi"}), "messages[0].role", "missing role", id="no-role"),
    pytest.param(with_messages({"role": 1, "content": "x"}), "messages[0].role", "role must be a string", id="role-num"),
    pytest.param(
        with_messages({"role": "bot", "content": "hi"}),
        "messages[0].role",
        "unknown role 'bot' (expected one of: system, developer, user, assistant, tool, function)",
        id="unknown-role",
    ),
    pytest.param(with_messages({"role": "user"}), "messages[0].content", "missing content", id="no-content"),
    pytest.param(with_messages({"role": "user", "content": None}), "messages[0].content", "content is null",
                 id="null-content"),
    pytest.param(batch({"model": "m", "messages": [USER, {"role": "assistant", "content": ""}]}),
                 "body.messages[1].content", "empty content", id="empty-content"),
    pytest.param(with_messages({"role": "user", "content": " \n "}), "messages[0].content", "empty content",
                 id="blank-content"),
    pytest.param(with_messages({"role": "user", "content": []}), "messages[0].content", "empty content",
                 id="empty-list-content"),
    pytest.param(
        with_messages({"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": " "}]}),
        "messages[0].content",
        "empty content",
        id="empty-text-parts",
    ),
    pytest.param(with_messages({"role": "user", "content": 5}), "messages[0].content",
                 "content must be a string or a list of parts (got number)", id="content-number"),
    pytest.param(with_messages({"role": "user", "content": ["hi"]}), "messages[0].content[0]",
                 "content part must be an object (got string)", id="part-str"),
    pytest.param(with_messages({"role": "user", "content": [{"text": "hi"}]}), "messages[0].content[0].type",
                 "missing type", id="part-no-type"),
    pytest.param(with_messages({"role": "user", "content": [{"type": "text", "text": 3}]}),
                 "messages[0].content[0].text", "text must be a string (got 3)", id="part-text-number"),
    pytest.param(with_messages(USER, {"role": "assistant", "content": None}), "messages[1].content",
                 "content is null", id="assistant-null-content-without-tool-calls"),
    pytest.param(
        with_messages({"role": "system", "content": "s"}, {"role": "assistant", "content": "Hello"}, USER),
        "messages[1].role",
        "conversation starts with an assistant message",
        id="starts-with-assistant",
    ),
    pytest.param(bare(max_tokens=0), "max_tokens", "max_tokens must be a positive integer (got 0)", id="max-tokens-0"),
    pytest.param(bare(max_tokens="100"), "max_tokens", "(got '100')", id="max-tokens-str"),
    pytest.param(bare(max_tokens=1.5), "max_tokens", "(got 1.5)", id="max-tokens-float"),
    pytest.param(bare(max_tokens=True), "max_tokens", "(got true)", id="max-tokens-bool"),
    pytest.param(bare(max_completion_tokens=-1), "max_completion_tokens", "positive integer (got -1)",
                 id="max-completion-tokens"),
    pytest.param(batch({**BODY, "temperature": "0.7"}), "body.temperature", "temperature must be a number (got '0.7')",
                 id="temperature-str"),
    pytest.param(bare(temperature=False), "temperature", "temperature must be a number (got false)", id="temp-bool"),
    pytest.param(bare(stream=True), "stream", "stream must be false or absent", id="stream"),
]


@pytest.mark.parametrize(("text", "field", "reason"), BAD_LINES)
def test_bad_line(text: bytes, field: str, reason: str) -> None:
    bad = parsed_bad(text, line=5)

    assert bad.line == 5
    assert bad.field == field
    assert reason in bad.reason


def test_a_long_value_is_shortened_in_the_reason() -> None:
    bad = parsed_bad(batch(BODY, url="/" + "x" * 500))

    assert bad.field == "url"
    assert len(bad.reason) < 200  # the value shown takes 40 characters, the endpoints batchrun sends the rest
    assert "x" * 50 not in bad.reason and "..." in bad.reason


def test_the_first_problem_of_a_line_is_reported() -> None:
    assert parsed_bad(with_messages({"role": "bot"}, {"role": "user"})).field == "messages[0].role"


# -- BadLine.format ------------------------------------------------------------------------------------


def test_bad_line_format_with_a_field() -> None:
    bad = BadLine(12, "body.messages[1].content", "empty content")

    assert bad.format("jobs/a.jsonl") == "jobs/a.jsonl:12: body.messages[1].content: empty content"


def test_bad_line_format_without_a_field() -> None:
    assert BadLine(3, None, "not valid UTF-8").format("<stdin>") == "<stdin>:3: not valid UTF-8"


# -- read_jobs -------------------------------------------------------------------------------------------


def test_read_jobs_yields_jobs_and_bad_lines_with_their_line_numbers() -> None:
    data = b"\n".join([bare(custom_id="a"), b"", b"not json", b"   ", batch(BODY, custom_id="b"),
                       with_messages({"role": "bot", "content": "x"}), b"\xff\xfe", bare(custom_id="c")]) + b"\n\n"

    results = list(read_jobs(io.BytesIO(data), "jobs.jsonl"))

    summary = [(r.line, r.custom_id if isinstance(r, JobSpec) else r.field) for r in results]
    assert summary == [(1, "a"), (3, None), (5, "b"), (6, "messages[0].role"), (7, None), (8, "c")]
    assert [type(r) for r in results] == [JobSpec, BadLine, JobSpec, BadLine, BadLine, JobSpec]


def test_read_jobs_counts_blank_lines_before_the_first_job() -> None:
    (job,) = read_jobs(io.BytesIO(b"\n\r\n  \n" + bare()), "x")

    assert job.line == 4


def test_read_jobs_ignores_a_byte_order_mark_at_the_start() -> None:
    (job,) = read_jobs(io.BytesIO(b"\xef\xbb\xbf" + bare(custom_id="a")), "x")

    assert isinstance(job, JobSpec) and job.custom_id == "a"


def test_read_jobs_of_an_empty_file_yields_nothing() -> None:
    assert list(read_jobs(io.BytesIO(b""), "x")) == []


class CountingLines:
    """A binary stream that records how many lines were taken from it."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.lines:
            self.taken += 1
            yield line


def test_read_jobs_streams_one_line_at_a_time() -> None:
    stream = CountingLines([bare(custom_id=str(i)) + b"\n" for i in range(1000)])

    jobs = read_jobs(stream, "x")  # type: ignore[arg-type]
    first = next(jobs)

    assert isinstance(first, JobSpec) and first.custom_id == "0"
    assert stream.taken == 1


class FailingStream:
    def __iter__(self) -> Iterator[bytes]:
        yield bare()
        raise OSError(5, "Input/output error")


def test_a_read_error_becomes_an_input_error_naming_the_file() -> None:
    jobs = read_jobs(FailingStream(), "jobs/a.jsonl")  # type: ignore[arg-type]

    assert isinstance(next(jobs), JobSpec)
    with pytest.raises(InputError, match=r"cannot read job file jobs/a\.jsonl: Input/output error"):
        next(jobs)


# -- open_job_file and batch_name_for --------------------------------------------------------------------


def test_open_job_file_opens_a_file_in_binary_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(bare(custom_id="a") + b"\n")

    with open_job_file(str(path)) as (stream, name):
        jobs = list(read_jobs(stream, name))
    assert name == str(path)
    assert [j.custom_id for j in jobs if isinstance(j, JobSpec)] == ["a"]
    assert stream.closed


def test_open_job_file_of_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"

    with pytest.raises(InputError, match=r"cannot read job file .*nope\.jsonl: No such file or directory") as info:
        with open_job_file(str(path)):
            pass  # pragma: no cover
    assert info.value.exit_code == 2


def test_open_job_file_of_a_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"cannot read job file {re.escape(str(tmp_path))}: "):
        with open_job_file(str(tmp_path)):
            pass  # pragma: no cover


def test_open_job_file_does_not_hide_errors_raised_inside(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"")

    with pytest.raises(KeyError):
        with open_job_file(str(path)):
            raise KeyError("mine")


def test_open_job_file_dash_is_stdin_and_is_left_open(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.BytesIO(bare(custom_id="s") + b"\n")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdin))

    with open_job_file("-") as (stream, name):
        jobs = list(read_jobs(stream, name))
    assert name == "<stdin>"
    assert [j.custom_id for j in jobs if isinstance(j, JobSpec)] == ["s"]
    assert not stdin.closed


@pytest.mark.parametrize(
    ("path", "name"),
    [("jobs/example.jsonl", "example"), ("example.jsonl", "example"), ("/tmp/a.b.jsonl", "a.b"), ("-", "stdin")],
)
def test_batch_name_for(path: str, name: str) -> None:
    assert batch_name_for(path) == name


# -- endpoints ---------------------------------------------------------------------------------------------


def test_each_batch_line_goes_to_the_endpoint_its_url_names() -> None:
    lines = {
        "/v1/chat/completions": BODY,
        "/v1/embeddings": {"model": "embed", "input": ["one", "two"]},
        "/v1/completions": {"model": "fast", "prompt": "Once upon", "max_tokens": 7},
        "/v1/responses": {"model": "fast", "input": "Say hi", "max_output_tokens": 9},
        "/v1/moderations": {"input": "is this fine?"},
    }
    jobs = {url: parsed_job(batch(body, url=url)) for url, body in lines.items()}
    assert {url: job.endpoint for url, job in jobs.items()} == {url: url for url in lines}
    assert jobs["/v1/embeddings"].max_tokens is None
    assert jobs["/v1/completions"].max_tokens == 7
    assert jobs["/v1/responses"].max_tokens == 9
    assert jobs["/v1/moderations"].model == ""  # the provider picks its moderation model
    assert jobs["/v1/embeddings"].input_tokens == 2  # "one" + "two": 6 characters


def test_a_bare_line_is_chat_unless_the_caller_names_the_endpoint() -> None:
    from batchrun.endpoints.embeddings import EMBEDDINGS

    embedding = line_of({"model": "embed", "input": "hello"})
    assert parse_line(embedding, 1, EMBEDDINGS).endpoint == "/v1/embeddings"  # type: ignore[union-attr]
    as_chat = parsed_bad(embedding)
    assert (as_chat.field, as_chat.reason) == ("messages", "missing messages")


def test_the_same_body_at_another_endpoint_is_another_job() -> None:
    body = {"model": "m", "input": "hello"}
    embedding = parsed_job(batch(body, url="/v1/embeddings", custom_id=None) .replace(b'"custom_id":null,', b""))
    moderation = parsed_job(batch(body, url="/v1/moderations", custom_id=None).replace(b'"custom_id":null,', b""))
    assert embedding.body_hash != moderation.body_hash
    assert embedding.custom_id != moderation.custom_id
    # chat keeps the hash of its body alone, so queues from before endpoints stay idempotent
    chat = parsed_job(bare())
    assert chat.body_hash == hashlib.sha256(orjson.dumps(BODY, option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.mark.parametrize(("url", "body", "field", "reason"), [
    ("/v1/embeddings", {"model": "e", "input": ["a", ""]}, "body.input[1]", "empty input"),
    ("/v1/embeddings", {"model": "e"}, "body.input", "missing input"),
    ("/v1/completions", {"model": "m"}, "body.prompt", "missing prompt"),
    ("/v1/responses", {"model": "m", "input": []}, "body.input", "empty input"),
    ("/v1/moderations", {"model": "m", "input": 5}, "body.input", "input must be a string or a list of strings"),
    ("/v1/embeddings", {"input": "x"}, "body.model", "missing model"),
    ("/v1/images/generations", {"model": "m", "prompt": "a cat"}, "url",
     "unsupported url '/v1/images/generations' (expected one of: '/v1/chat/completions', '/v1/embeddings', "
     "'/v1/completions', '/v1/responses', '/v1/moderations')"),
])
def test_each_endpoint_names_what_is_wrong_with_its_body(url: str, body: dict[str, Any], field: str,
                                                         reason: str) -> None:
    problem = parsed_bad(batch(body, url=url), line=12)
    assert problem.field == field
    assert reason in problem.reason
    assert problem.format("corpus.jsonl").startswith(f"corpus.jsonl:12: {field}: ")
